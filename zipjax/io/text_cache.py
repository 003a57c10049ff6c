"""Package prompt templates and the on-disk cache of prompt-ensemble text features.

The cache holds one `.npz` per (text model, templates): `names` (str [n]) and `features` (float32 [n, D]).
Classes already in the file are reused; new ones are appended and the file is rewritten atomically, so a
vocabulary that changes by one class costs one class. The key hashes the model's identity (`model_key`) and
the template list.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from importlib import resources

import numpy as np

from zipjax.io.atomic import atomic_write_bytes


def prompt_templates() -> list[str]:
  """The 85 prompt templates (80 CLIP ImageNet + 5 scene) shipped in zipjax/assets/prompt_templates.json."""
  text = resources.files("zipjax").joinpath("assets/prompt_templates.json").read_text(encoding="utf-8")
  return list(json.loads(text)["templates"])


def cache_dir() -> str:
  """`$ZIPJAX_CACHE` or ~/.cache/zipjax."""
  return os.environ.get("ZIPJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "zipjax")


def model_key(name: str, config: dict) -> str:
  """Identity of a text model: its source (with size and mtime when it is a file or directory) + config."""
  ident = {"name": name, "config": config}
  if name and os.path.exists(name):
    st = os.stat(name)
    ident.update(path=os.path.abspath(name), size=st.st_size, mtime=st.st_mtime_ns)
  return json.dumps(ident, sort_keys=True, default=str)


class TextFeatureCache:
  """Text features per (model, templates) on disk.

  Attributes:
    path: the .npz file.
  """

  def __init__(self, model: str, templates: list[str], directory: str | None = None):
    h = hashlib.sha256((model + "\0" + "\0".join(templates)).encode("utf-8")).hexdigest()[:24]
    self.path = os.path.join(directory or os.path.join(cache_dir(), "text"), f"{h}.npz")

  def load(self) -> dict[str, np.ndarray]:
    """name -> float32 [D]; an unreadable file counts as empty (it is rewritten on the next store)."""
    try:
      with np.load(self.path, allow_pickle=False) as z:
        return {str(n): f for n, f in zip(z["names"], z["features"])}
    except (OSError, ValueError, KeyError):
      return {}

  def store(self, features: dict[str, np.ndarray]) -> None:
    names = list(features)
    buf = io.BytesIO()
    np.savez(buf, names=np.array(names, dtype=str),
             features=np.stack([np.asarray(features[n], np.float32) for n in names]))
    atomic_write_bytes(self.path, buf.getvalue())


__all__ = ["prompt_templates", "cache_dir", "model_key", "TextFeatureCache"]
