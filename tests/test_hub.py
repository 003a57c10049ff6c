"""hf:ORG/REPO[@REVISION] names: resolved by huggingface_hub from a local Hub cache laid out as the library
lays it out (blobs/, refs/, snapshots/<commit>/ symlinks), offline; converted once into the zipjax cache."""
import hashlib
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import zipjax
from tests.reference.clip_ref import nchw, rel_err
from tests.reference.libraries import make_hf_clip, make_open_clip
from zipjax import weights
from zipjax.errors import CheckpointError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
torch.set_grad_enabled(False)


def hub_repo(cache, repo: str, files: dict, commit: str = COMMIT, ref: str = "main") -> str:
  """Writes `files` (name -> bytes) into `cache` as huggingface_hub caches a repository -> the snapshot dir."""
  root = cache / ("models--" + repo.replace("/", "--"))
  snap = root / "snapshots" / commit
  (root / "blobs").mkdir(parents=True, exist_ok=True)
  for name, data in files.items():
    blob = root / "blobs" / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    link = snap / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
  (root / "refs").mkdir(exist_ok=True)
  (root / "refs" / ref).write_text(commit)
  return str(snap)


def _safetensors_bytes(tmp_path, model) -> bytes:
  p = tmp_path / "w.safetensors"
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(p))
  data = p.read_bytes()
  p.unlink()
  return data


@pytest.fixture
def env(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("ZIPJAX_CACHE", str(tmp_path / "zipjax"))
  return tmp_path


def test_open_clip_repo_resolves_offline_and_converts_once(env, monkeypatch):
  model = make_open_clip(embed_dim=32, image_size=32, layers=1, width=64, patch_size=16, text_layers=1, seed=7)
  data = _safetensors_bytes(env, model)
  hub_repo(env / "hub", "timm/tiny_clip.openai",
           {"open_clip_model.safetensors": data, "open_clip_config.json": b'{"model_cfg": {"quick_gelu": true}}'})
  assert weights.available("hf:timm/tiny_clip.openai", "clip")
  from zipjax.jobs.identity import checkpoint_identity  # pylint: disable=import-outside-toplevel
  assert checkpoint_identity("hf:timm/tiny_clip.openai", "clip") == {"name": "hf:timm/tiny_clip.openai",
                                                                     "commit": COMMIT}
  assert checkpoint_identity("hf:timm/absent", "clip") == {"name": "hf:timm/absent"}
  out = weights.resolve("hf:timm/tiny_clip.openai", "clip")
  assert out == str(env / "zipjax" / "converted" / "hf" / "timm--tiny_clip.openai" / COMMIT)
  clip = zipjax.load_clip(out)
  x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
  assert rel_err(clip.encode_image(x), model.encode_image(nchw(x)).numpy()) < 1e-5
  # pinned to the commit: the same; the second time nothing is converted again
  monkeypatch.setattr("zipjax.convert.clip.convert_file", lambda *a, **k: pytest.fail("converted twice"))
  assert weights.resolve(f"hf:timm/tiny_clip.openai@{COMMIT}", "clip") == out
  # the manifest's sha256 of the Hub file is checked
  sha = hashlib.sha256(data).hexdigest()
  assert weights.hub_download("hf:timm/tiny_clip.openai", "clip", sha256=sha).endswith(
      "open_clip_model.safetensors")
  with pytest.raises(CheckpointError, match="does not match the manifest"):
    weights.hub_download("hf:timm/tiny_clip.openai", "clip", sha256="0" * 64)


def test_transformers_repo_with_sharded_weights(env):
  from huggingface_hub import save_torch_state_dict  # pylint: disable=import-outside-toplevel
  model = make_hf_clip(layers=1, text_layers=1, seed=8)
  (env / "hf").mkdir()
  save_torch_state_dict({k: v.contiguous() for k, v in model.state_dict().items()}, str(env / "hf"),
                        max_shard_size=300_000)
  model.config.to_json_file(str(env / "hf" / "config.json"))
  files = {n: (env / "hf" / n).read_bytes() for n in os.listdir(env / "hf")}
  assert "model.safetensors.index.json" in files
  hub_repo(env / "hub", "openai/tiny-clip", files)
  clip = zipjax.load_clip(weights.resolve("hf:openai/tiny-clip", "clip"))
  x = np.random.default_rng(1).standard_normal((1, 32, 32, 3)).astype(np.float32)
  want = model.get_image_features(pixel_values=nchw(x))
  want = want if isinstance(want, torch.Tensor) else want.pooler_output
  assert rel_err(clip.encode_image(x), want.numpy()) < 1e-5


def test_offline_errors_say_what_to_do(env):
  hub_repo(env / "hub", "org/other", {"README.md": b"hi"})
  for spec, want in (("hf:org/missing", "not in the Hugging Face cache"),
                     ("hf:org/other", "not in the Hugging Face cache"),
                     (f"hf:org/other@{'f' * 40}", "not in the Hugging Face cache"),
                     ("hf:nope", "not a Hub name"), ("hf:org/repo/../x", "not a Hub name"),
                     ("hf:org/repo@", "not a Hub name")):
    with pytest.raises(CheckpointError, match=want) as e:
      weights.resolve(spec, "clip")
    assert "\n" not in str(e.value) and (want == "not a Hub name" or "hf download" in str(e.value)), str(e.value)
  assert not weights.available("hf:org/missing", "sam")


def test_zipjax_offline_keeps_hub_to_the_cache(env, monkeypatch):
  monkeypatch.delenv("HF_HUB_OFFLINE")
  monkeypatch.setenv("ZIPJAX_OFFLINE", "1")
  with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
    weights.resolve("hf:org/missing", "sam")


def _manifest(env, url, hub):
  import json  # pylint: disable=import-outside-toplevel
  m = env / "manifest.json"
  m.write_text(json.dumps({"checkpoints": [{"name": "tiny", "family": "clip", "arch": "x", "file": "tiny.pt",
                                            "url": url, "sha256": None, "hub": hub}]}))
  return str(m)


def test_manifest_entry_uses_its_hub_copy_from_the_cache(env, monkeypatch):
  model = make_open_clip(embed_dim=32, image_size=32, layers=1, width=64, patch_size=16, text_layers=1, seed=9)
  data = _safetensors_bytes(env, model)
  hub_repo(env / "hub", "timm/tiny_clip.openai", {"open_clip_model.safetensors": data})
  sha = hashlib.sha256(data).hexdigest()
  monkeypatch.setenv("ZIPJAX_MANIFEST", _manifest(env, (env / "nowhere.pt").as_uri(), [
      {"repo": "timm/tiny_clip.openai", "file": "open_clip_model.safetensors", "sha256": sha}]))
  assert weights.available("tiny", "clip")
  out = weights.resolve("tiny", "clip", downloader=lambda *a: pytest.fail("downloaded the original URL"))
  assert out.startswith(str(env / "zipjax" / "converted" / "hf" / "timm--tiny_clip.openai" / COMMIT))
  assert zipjax.load_clip(out).config.embed_dim == 32


def test_manifest_entry_falls_back_to_the_hub_when_the_url_fails(env, monkeypatch):
  model = make_open_clip(embed_dim=32, image_size=32, layers=1, width=64, patch_size=16, text_layers=1, seed=9)
  hub_repo(env / "hub", "timm/tiny_clip.openai", {"open_clip_model.safetensors": _safetensors_bytes(env, model)})
  monkeypatch.setenv("ZIPJAX_MANIFEST", _manifest(env, (env / "nowhere.pt").as_uri(), [
      {"repo": "timm/tiny_clip.openai", "file": "open_clip_model.safetensors", "sha256": None}]))
  monkeypatch.setattr("zipjax.weights._cached_hub_source", lambda *a: None)  # as if not cached before
  monkeypatch.delenv("HF_HUB_OFFLINE")
  calls = []

  def fake_hub(spec, family, local_only=None, sha256=None, _real=weights.hub_download):
    calls.append(spec)  # the "download" of the Hub copy: served by the local cache (no network in tests)
    return _real(spec, family, local_only=True, sha256=sha256)

  monkeypatch.setattr("zipjax.weights.hub_download", fake_hub)
  out = weights.resolve("tiny", "clip", downloader=lambda url, dst: (_ for _ in ()).throw(OSError("no route")))
  assert calls == ["hf:timm/tiny_clip.openai/open_clip_model.safetensors"] and os.path.isdir(out)
  # offline, the URL's failure is the answer (the Hub is not tried over the network)
  monkeypatch.setenv("ZIPJAX_OFFLINE", "1")
  monkeypatch.setenv("ZIPJAX_CACHE", str(env / "zipjax2"))
  with pytest.raises(CheckpointError, match="ZIPJAX_OFFLINE is set"):
    weights.resolve("tiny", "clip")


def test_manifest_hub_entries_are_well_formed():
  for e in weights.manifest():
    srcs = weights.hub_sources(e)
    assert srcs, e["name"]
    for spec, sha in srcs:
      weights.parse_hub_name(spec)
      assert sha is None or len(sha) == 64


def test_weights_command_list_download_verify(env, monkeypatch, capsys):
  import json  # pylint: disable=import-outside-toplevel
  from zipjax.cli import main as cli_main  # pylint: disable=import-outside-toplevel
  model = make_open_clip(embed_dim=32, image_size=32, layers=1, width=64, patch_size=16, text_layers=1, seed=9)
  data = _safetensors_bytes(env, model)
  snap = hub_repo(env / "hub", "timm/tiny_clip.openai", {"open_clip_model.safetensors": data})
  src = env / "tiny.pt"
  torch.save(model.state_dict(), src)
  sha = hashlib.sha256(src.read_bytes()).hexdigest()
  m = env / "manifest.json"
  m.write_text(json.dumps({"checkpoints": [
      {"name": "tiny", "family": "clip", "arch": "x", "file": "tiny.pt", "url": src.as_uri(), "sha256": sha,
       "hub": []},
      {"name": "tinyhub", "family": "clip", "arch": "x", "file": "tinyhub.pt", "url": (env / "no.pt").as_uri(),
       "sha256": None, "hub": [{"repo": "timm/tiny_clip.openai", "file": "open_clip_model.safetensors",
                                "sha256": None}]}]}))
  monkeypatch.setenv("ZIPJAX_MANIFEST", str(m))
  assert cli_main(["weights", "list"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert "not cached" in out[0] and "in the Hugging Face cache" in out[1] and "hf:timm/tiny_clip.openai" in out[1]
  assert cli_main(["weights", "download", "tiny", "nope", "tinyhub"]) == 1  # 'nope' fails, the others go on
  cap = capsys.readouterr()
  assert "tiny: " in cap.out and "tinyhub: " in cap.out and "nope: error:" in cap.err
  assert cli_main(["weights", "list", "--json"]) == 0
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert rows[0]["converted"] and rows[0]["downloaded"] and rows[0]["size"] > 0
  assert rows[1]["converted"] and rows[1]["hub_cached"].startswith(snap)
  assert cli_main(["weights", "verify"]) == 0
  out = capsys.readouterr().out
  assert out.count(": ok: ") == 2, out
  (env / "zipjax" / "downloads" / "tiny.pt").write_bytes(b"corrupt")
  assert cli_main(["weights", "verify", "tiny"]) == 1
  assert "MISMATCH" in capsys.readouterr().out


class _FakeHub:
  """A loopback stand-in for the Hub's file API as huggingface_hub uses it (HEAD/GET .../resolve/REV/FILE,
  X-Repo-Commit and ETag headers, X-Error-Code on 404)."""

  def __init__(self, repos: dict):
    import http.server  # pylint: disable=import-outside-toplevel
    import threading  # pylint: disable=import-outside-toplevel
    self.repos, self.gets = repos, []
    hub = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *a):
        pass

      def _find(self):
        m = __import__("re").fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
        if not m or m.group(1) not in hub.repos:
          return None, "RepoNotFound"
        files = hub.repos[m.group(1)]
        if m.group(2) not in ("main", COMMIT):
          return None, "RevisionNotFound"
        return (files.get(m.group(3)), "EntryNotFound")

      def _head(self, body):
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", '"' + hashlib.sha256(body).hexdigest() + '"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

      def _missing(self, code):
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

      def do_HEAD(self):  # noqa: N802
        body, code = self._find()
        self._head(body) if body is not None else self._missing(code)

      def do_GET(self):  # noqa: N802
        body, code = self._find()
        if body is None:
          return self._missing(code)
        hub.gets.append(self.path)
        self._head(body)
        self.wfile.write(body)
        return None

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=self.server.serve_forever, daemon=True).start()
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def test_download_from_a_fake_hub_endpoint_then_offline_from_the_cache(env, monkeypatch):
  model = make_open_clip(embed_dim=32, image_size=32, layers=1, width=64, patch_size=16, text_layers=1, seed=10)
  data = _safetensors_bytes(env, model)
  hub = _FakeHub({"timm/tiny_clip.openai": {"open_clip_model.safetensors": data,
                                            "open_clip_config.json": b'{"model_cfg": {"quick_gelu": true}}'}})
  try:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # huggingface_hub reads HF_HUB_OFFLINE once, at import (which the env fixture may have preceded)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    out = weights.resolve("hf:timm/tiny_clip.openai", "clip")
    assert [g.rsplit("/", 1)[1] for g in hub.gets] == ["open_clip_model.safetensors", "open_clip_config.json"]
    assert out.endswith(os.path.join("timm--tiny_clip.openai", COMMIT))
    snap = env / "hub" / "models--timm--tiny_clip.openai" / "snapshots" / COMMIT
    assert (snap / "open_clip_model.safetensors").read_bytes() == data
    with pytest.raises(CheckpointError, match="no Hub repository 'org/absent'"):
      weights.resolve("hf:org/absent", "clip")
    with pytest.raises(CheckpointError, match="has no revision 'v9'"):
      weights.resolve("hf:timm/tiny_clip.openai@v9", "clip")
    with pytest.raises(CheckpointError, match="holds none of the sam weight files"):
      weights.hub_download("hf:timm/tiny_clip.openai", "sam")
  finally:
    hub.server.shutdown()
  # afterwards, offline: the cached copy resolves without the endpoint
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  assert weights.hub_download("hf:timm/tiny_clip.openai", "clip").startswith(str(snap))
