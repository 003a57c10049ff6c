"""The demo's fetch path: with the network (a loopback file server standing in for the download), the models
a config names are downloaded with progress, sha256-checked, converted, and the real pipeline runs; offline
(ZIPJAX_OFFLINE=1) it falls back to random weights, saying so and how to get the real ones."""
import functools
import hashlib
import http.server
import json
import os
import subprocess
import threading

import pytest
import torch

from tests.models.sam_net.helpers import build_torch_sam
from tests.reference.clip_ref import TINY_TEXT, make_clip
from zipjax.cli import main as cli_main
from zipjax.commands.common import load_config_file
from zipjax.models.sam_net.model import SamConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "configs", "smoke.py")


@pytest.fixture
def served(tmp_path, monkeypatch):
  """Tiny checkpoints under the smoke config's (real) names, served on 127.0.0.1; a manifest pointing there."""
  cfg = load_config_file(SMOKE)
  m = cfg.models
  text = dict(TINY_TEXT, transformer_layers=1)
  files = tmp_path / "files"
  files.mkdir()
  vit = make_clip(embed_dim=64, image_resolution=64, vision_layers=2, vision_width=64, vision_patch_size=16,
                  **text)
  rn = make_clip(seed=1, embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16,
                 vision_patch_size=None, **text)
  sam = build_torch_sam(SamConfig(**{k: v for k, v in m.sam.arch.to_dict().items()}), seed=2)
  torch.save(vit.state_dict(), files / "vit.pt")
  torch.save(rn.state_dict(), files / "rn.pt")
  torch.save(sam.state_dict(), files / "sam.pth")
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(files))
  handler.log_message = lambda *a: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  base = f"http://127.0.0.1:{server.server_address[1]}"
  entries = []
  for name, family, fname in ((m.semantic.checkpoint, "clip", "vit.pt"), (m.boundary.checkpoint, "clip", "rn.pt"),
                              (m.sam.checkpoint, "sam", "sam.pth")):
    sha = hashlib.sha256((files / fname).read_bytes()).hexdigest()
    entries.append({"name": name, "family": family, "arch": "x", "file": fname, "url": f"{base}/{fname}",
                    "sha256": sha, "hub": []})
  (tmp_path / "manifest.json").write_text(json.dumps({"checkpoints": entries}))
  env = {"ZIPJAX_MANIFEST": str(tmp_path / "manifest.json"), "ZIPJAX_CACHE": str(tmp_path / "cache"),
         "HF_HUB_CACHE": str(tmp_path / "hub"), "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1"}
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.delenv("ZIPJAX_OFFLINE", raising=False)
  yield tmp_path, env, entries
  server.shutdown()


def test_download_for_a_config_verifies_and_converts(served, capsys):
  tmp_path, _, entries = served
  assert cli_main(["weights", "download", "--config", SMOKE]) == 0
  out = capsys.readouterr().out
  for e in entries:
    conv = tmp_path / "cache" / "converted" / os.path.splitext(e["file"])[0]
    assert (conv / "config.json").is_file() and str(conv) in out
  # a corrupted download is refused by its sha256
  (tmp_path / "files" / "vit.pt").write_bytes(b"not the model")
  (tmp_path / "cache" / "downloads" / "vit.pt").unlink()
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.rmtree(tmp_path / "cache" / "converted" / "vit")
  assert cli_main(["weights", "download", entries[0]["name"]]) == 1
  assert "does not match the manifest" in capsys.readouterr().err


def _demo(tmp_path, env, **extra):
  full = dict(os.environ, **env, ZIPJAX_DEMO_OUT=str(tmp_path / "out"), ZIPJAX_TEST_WORKERS="1", **extra)
  return subprocess.run(["bash", os.path.join(ROOT, "scripts", "demo.sh")], env=full, capture_output=True,
                        text=True, timeout=900, check=False)


@pytest.mark.slow
def test_demo_downloads_then_runs_the_real_pipeline(served):
  tmp_path, env, _ = served
  r = _demo(tmp_path, env, ZIPJAX_DEMO_CONFIG=SMOKE)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "downloading the real models" in r.stderr and "RANDOM" not in r.stderr
  info = json.loads((tmp_path / "out" / "annotations.json").read_text())["info"]
  assert not info.get("random_init"), info
  assert (tmp_path / "cache" / "converted" / "sam" / "config.json").is_file()


@pytest.mark.slow
def test_demo_offline_falls_back_to_random_weights_and_says_how(served):
  tmp_path, env, _ = served
  r = _demo(tmp_path, env, ZIPJAX_DEMO_CONFIG=SMOKE, ZIPJAX_OFFLINE="1")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "offline (ZIPJAX_OFFLINE is set)" in r.stderr and "RANDOM-weight" in r.stderr
  assert "zipjax weights download --config" in r.stderr
  assert not (tmp_path / "cache" / "downloads").exists()
  assert json.loads((tmp_path / "out" / "annotations.json").read_text())["info"]["random_init"]
