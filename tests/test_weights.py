"""Weights resolver: manifest names -> cache, download (file:// URL here; no network in tests), sha256 check,
convert once, clear offline errors."""
import hashlib
import json
import os

import pytest

from tests.reference import clip_ref
from zipjax import weights
from zipjax.errors import CheckpointError


def _manifest(tmp_path, src, sha):
  m = tmp_path / "manifest.json"
  m.write_text(json.dumps({"checkpoints": [{"name": "tiny", "family": "clip", "arch": "x", "file": "tiny.pt",
                                            "url": src.as_uri(), "sha256": sha}]}))
  return m


@pytest.fixture
def tiny_pt(tmp_path):
  import torch  # pylint: disable=import-outside-toplevel
  model = clip_ref.make_clip(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64,
                             vision_patch_size=16, **clip_ref.TINY_TEXT)
  p = tmp_path / "src" / "tiny.pt"
  p.parent.mkdir()
  torch.save(model.state_dict(), p)
  return p


def test_download_verify_convert_once(tmp_path, tiny_pt, monkeypatch):
  sha = hashlib.sha256(tiny_pt.read_bytes()).hexdigest()
  monkeypatch.setenv("ZIPJAX_MANIFEST", str(_manifest(tmp_path, tiny_pt, sha)))
  monkeypatch.setenv("ZIPJAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.delenv("ZIPJAX_OFFLINE", raising=False)
  assert not weights.available("tiny", "clip")
  out = weights.resolve("tiny", "clip")
  assert out == str(tmp_path / "cache" / "converted" / "tiny")
  assert os.path.isfile(os.path.join(out, "config.json"))
  assert (tmp_path / "cache" / "downloads" / "tiny.pt").read_bytes() == tiny_pt.read_bytes()
  # second time: the converted directory is reused, nothing downloaded or converted
  calls = []
  monkeypatch.setattr("zipjax.convert.clip.convert_file", lambda *a: calls.append(a))
  assert weights.resolve("tiny", "clip", downloader=lambda *a: calls.append(a)) == out
  assert not calls and weights.available("tiny", "clip")
  import zipjax  # pylint: disable=import-outside-toplevel
  assert zipjax.load_clip(out).config.embed_dim == 32


def test_sha_mismatch(tmp_path, tiny_pt, monkeypatch):
  monkeypatch.setenv("ZIPJAX_MANIFEST", str(_manifest(tmp_path, tiny_pt, "0" * 64)))
  monkeypatch.setenv("ZIPJAX_CACHE", str(tmp_path / "cache"))
  with pytest.raises(CheckpointError, match="does not match the manifest"):
    weights.resolve("tiny", "clip")


def test_offline_error_names_file_and_place(tmp_path, tiny_pt, monkeypatch):
  monkeypatch.setenv("ZIPJAX_MANIFEST", str(_manifest(tmp_path, tiny_pt, None)))
  monkeypatch.setenv("ZIPJAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("ZIPJAX_OFFLINE", "1")
  with pytest.raises(CheckpointError) as e:
    weights.resolve("tiny", "clip")
  msg = str(e.value)
  assert tiny_pt.as_uri() in msg and str(tmp_path / "cache" / "downloads" / "tiny.pt") in msg
  monkeypatch.delenv("ZIPJAX_OFFLINE")

  def fail(url, dst):
    raise OSError("network unreachable")
  with pytest.raises(CheckpointError, match="cannot download.*network unreachable.*put it at"):
    weights.resolve("tiny", "clip", downloader=fail)


def test_unknown_name_and_existing_path(tmp_path, tiny_pt):
  with pytest.raises(CheckpointError, match="neither an existing file"):
    weights.resolve("no-such-model", "clip")
  assert weights.resolve(str(tiny_pt), "clip") == str(tiny_pt)


def test_manifest_sam_entries_have_no_invented_digest():
  sam = [e for e in weights.manifest() if e["family"] == "sam"]
  assert {e["arch"] for e in sam} == {"vit_b", "vit_l", "vit_h"}
  for e in sam:
    assert e["url"].startswith("https://dl.fbaipublicfiles.com/segment_anything/") and e["url"].endswith(e["file"])
    assert e["sha256"] is None
