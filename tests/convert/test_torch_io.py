"""zipjax.convert.torch_io: checkpoints are read as data. TorchScript archives give exactly the state dict of
torch.jit.load (which zipjax never calls) and a hostile one never runs; torch.save files give torch.load's
tensors; each way a file can fail says what happened in one line (permission denied, unsafe pickle, truncated
zip or pickle, corrupt archive, empty, FIFO), and an unsafe pickle never runs."""
import os
import pickle
import shutil
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from tests.convert import malicious
from tests.unprivileged import run_unprivileged, shared_tmp
from zipjax.convert.torch_io import read_checkpoint
from zipjax.errors import CheckpointError


class _Payload:
  """Unpickling this would create the file `marker` (it must never happen)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


def _message(path) -> str:
  with pytest.raises(CheckpointError) as e:
    read_checkpoint(path)
  assert str(path) in str(e.value)
  return str(e.value)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "raw-pickle"])
def test_unsafe_pickle_is_refused_as_unsafe_and_never_runs(tmp_path, legacy):
  marker = str(tmp_path / "pwned")
  path = tmp_path / "evil.pt"
  obj = {"w": torch.zeros(2), "x": _Payload(marker)}
  if legacy:
    with open(path, "wb") as f:
      pickle.dump({"x": _Payload(marker)}, f)
  else:
    torch.save(obj, path)
  msg = _message(path)
  assert "refused as unsafe" in msg and "mkdir" in msg and "truncated" not in msg, msg
  assert not os.path.exists(marker)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_is_called_truncated(tmp_path, legacy):
  full = tmp_path / "full.pt"
  torch.save({"w": torch.arange(1000, dtype=torch.float32)}, full, _use_new_zipfile_serialization=not legacy)
  data = full.read_bytes()
  for cut in (len(data) // 2, 40):
    path = tmp_path / f"cut{cut}.pt"
    path.write_bytes(data[:cut])
    msg = _message(path)
    assert "truncated or corrupt file" in msg and "unsafe" not in msg, msg


def test_empty_fifo_and_good(tmp_path):
  (tmp_path / "empty.pt").write_bytes(b"")
  assert "file is empty" in _message(tmp_path / "empty.pt")
  os.mkfifo(tmp_path / "pipe.pt")
  box = {}
  t = threading.Thread(target=lambda: box.setdefault("msg", _message(tmp_path / "pipe.pt")), daemon=True)
  t.start()
  t.join(10)
  assert not t.is_alive() and "not a regular file" in box["msg"]
  torch.save({"w": torch.ones(3)}, tmp_path / "ok.pt")
  assert read_checkpoint(tmp_path / "ok.pt").tensors["w"].tolist() == [1.0, 1.0, 1.0]


def test_permission_denied_is_not_called_corrupt():
  base = shared_tmp()
  try:
    path = os.path.join(base, "secret.pt")
    torch.save({"w": torch.ones(3)}, path)
    os.chmod(path, 0o000)
    code = ("from zipjax.convert.torch_io import read_checkpoint\nfrom zipjax.errors import CheckpointError\n"
            f"try:\n  read_checkpoint({path!r})\nexcept CheckpointError as e:\n  print(e)\n")
    out = run_unprivileged(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{path}: permission denied (the file cannot be read)"
  finally:
    shutil.rmtree(base)


# ------------------------------------------------------------------------------- archives read as data
@pytest.fixture(scope="module")
def clip_archives(tmp_path_factory):
  """OpenAI-format TorchScript archives (traced, fp16) of the parity tests' random ViT and ResNet CLIPs."""
  from tests.convert.test_clip_convert import SMALL_RN, SMALL_VIT, _fp16_model, _save_torchscript
  d = tmp_path_factory.mktemp("archives")
  out = {}
  for name, arch in (("vit", SMALL_VIT), ("resnet", SMALL_RN)):
    model, _ = _fp16_model(arch)
    _save_torchscript(model, d / f"{name}.pt", arch["image_resolution"])
    out[name] = (d / f"{name}.pt", model)
  return out


def _same_as(ck, ref):
  assert list(ck.tensors) == list(ref)  # keys and order of the state dict
  for k, v in ref.items():
    want = (v.float() if v.dtype == torch.bfloat16 else v).detach().numpy()
    got = ck.tensors[k]
    assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), k


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_torchscript_archive_reads_like_jit_load(clip_archives, name):
  from zipjax.convert.clip import convert_state_dict, load_file
  path, model = clip_archives[name]
  ck = read_checkpoint(path)
  assert ck.format == "torchscript"
  _same_as(ck, torch.jit.load(str(path)).state_dict())  # the test's own trusted file
  # the converted arrays are those of the module's state dict (bit for bit)
  _, want = convert_state_dict({k: v.numpy() for k, v in model.state_dict().items()}, source="sd")
  _, got = load_file(path)
  flat = lambda t, p="": {k2: v2 for k, v in t.items() for k2, v2 in (  # noqa: E731
      flat(v, f"{p}{k}/").items() if isinstance(v, dict) else [(p + k, v)])}
  want, got = flat(want), flat(got)
  assert list(want) == list(got) and all(np.array_equal(want[k], got[k]) for k in want)


def test_scripted_module_keys_follow_its_declarations(tmp_path):
  """Parameters, then buffers (non-persistent ones too, as torch.jit.load keeps them), then submodules; a
  plain tensor attribute and a None bias are not in the state dict."""

  class M(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.lin = torch.nn.Linear(3, 4, bias=False)
      self.seq = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2))
      self.register_buffer("buf", torch.arange(2.0))
      self.register_buffer("np_buf", torch.ones(3, dtype=torch.bfloat16), persistent=False)
      self.plain = torch.ones(5)
      self.p = torch.nn.Parameter(torch.randn(2, 3).t())

    def forward(self, x):
      return self.lin(x) + self.plain.sum() + self.buf.sum() + self.np_buf.float().sum() + self.p.sum()

  torch.jit.script(M()).save(str(tmp_path / "m.pt"))
  ref = torch.jit.load(str(tmp_path / "m.pt")).state_dict()
  assert list(ref)[:3] == ["p", "buf", "np_buf"] and "plain" not in ref
  _same_as(read_checkpoint(tmp_path / "m.pt"), ref)


def test_torch_save_views_and_dtypes(tmp_path):
  w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
  sd = {"a": w, "b": w[:, 1:3], "c": torch.nn.Parameter(torch.randn(2).bfloat16()), "d": w.t(),
        "e": torch.tensor(3), "f": torch.zeros(0, 5, dtype=torch.float16), "g": torch.tensor([True, False]),
        "h": w[1], "i": torch.arange(4, dtype=torch.int32)[::2]}
  torch.save(sd, tmp_path / "new.pt")
  torch.save(sd, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
  for name, fmt in (("new.pt", "torch-zip"), ("old.pt", "torch-legacy")):
    ck = read_checkpoint(tmp_path / name)
    assert ck.format == fmt
    _same_as(ck, sd)
  torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.pt")
  _same_as(read_checkpoint(tmp_path / "wrapped.pt"), sd)


def test_zip_archives_need_no_torch(clip_archives, tmp_path):
  path, _ = clip_archives["vit"]
  torch.save({"w": torch.ones(2)}, tmp_path / "sd.pt")
  code = ("import sys; sys.modules['torch'] = None\n"
          "from zipjax.convert.torch_io import read_checkpoint\n"
          f"a = read_checkpoint({str(path)!r}); b = read_checkpoint({str(tmp_path / 'sd.pt')!r})\n"
          "print(a.format, len(a.tensors), b.format, b.tensors['w'].tolist())\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr
  assert out.stdout.split()[0] == "torchscript" and out.stdout.split()[2:] == ["torch-zip", "[1.0,", "1.0]"]


def test_malicious_torchscript_archive_is_never_run(tmp_path):
  marker = tmp_path / "written-by-the-archive"
  path = tmp_path / "evil.pt"
  malicious.torchscript_archive(path, marker)
  msg = _message(path)
  assert "\n" not in msg and "__setstate__" in msg and "never runs" in msg, msg
  assert not marker.exists()
  # the archive is hostile indeed: torch.jit.load (what zipjax used to call) creates the file
  other = tmp_path / "evil2.pt"
  malicious.torchscript_archive(other, tmp_path / "jit-marker")
  torch.jit.load(str(other))
  assert (tmp_path / "jit-marker").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickles_are_refused(tmp_path):
  for name, make in (("sys.pt", malicious.reduce_pickle), ("open.pt", malicious.reduce_torch_save)):
    marker = tmp_path / f"marker-{name}"
    make(tmp_path / name, marker)
    msg = _message(tmp_path / name)
    assert "\n" not in msg and "refused as unsafe" in msg and ("system" in msg or "open" in msg), msg
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_corrupt_archives_are_refused_in_bounded_memory(tmp_path):
  f4 = torch.FloatStorage
  cases = {
      # a view beyond its storage; more elements than the storage holds (zero strides)
      "beyond": ({"w": malicious.tensor(malicious.StorageRef("0", f4, 4), 2, (4,), (1,))}, {"0": b"\0" * 16},
                 "does not fit in its storage"),
      "expand": ({"w": malicious.tensor(malicious.StorageRef("0", f4, 1), 0, (1 << 20, 1 << 20), (0, 0))},
                 {"0": b"\0" * 4}, "does not fit in its storage"),
      # a storage that holds fewer bytes than its header says
      "short": ({"w": malicious.tensor(malicious.StorageRef("0", f4, 1 << 30), 0, (4,), (1,))},
                {"0": b"\0" * 16}, "holds 16 bytes, its tensors say 4294967296"),
      "missing": ({"w": malicious.tensor(malicious.StorageRef("7", f4, 4), 0, (4,), (1,))}, {},
                  "'missing/data/7' is missing"),
      "negative": ({"w": malicious.tensor(malicious.StorageRef("0", f4, 4), 0, (2,), (-1,))}, {"0": b"\0" * 16},
                   "negative"),
      "notdict": ([1, 2], {}, "holds a list, not a state dict"),
  }
  for name, (root, storages, want) in cases.items():
    malicious.archive(tmp_path / f"{name}.pt", root, storages)
    msg = _message(tmp_path / f"{name}.pt")
    assert want in msg and "\n" not in msg, (name, msg)
  # torch objects that are not dense tensors are named, not called unsafe
  torch.save({"q": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)}, tmp_path / "q.pt")
  msg = _message(tmp_path / "q.pt")
  assert "_rebuild_qtensor" in msg and "does not read" in msg, msg
  # a zip member that claims more bytes than the file holds is refused before anything is allocated
  torch.save({"w": torch.ones(4)}, tmp_path / "big.pt")
  data = bytearray((tmp_path / "big.pt").read_bytes())
  name = b"big/data.pkl"
  for sig, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header and central directory entry
    pos = data.find(sig)
    while pos >= 0:
      n = struct.unpack("<H", data[pos + (26 if sig == b"PK\x03\x04" else 28):][:2])[0]
      start = pos + (30 if sig == b"PK\x03\x04" else 46)
      if data[start:start + n] == name:
        data[pos + size_at:pos + size_at + 4] = struct.pack("<I", 0xFFFFFFF0)
      pos = data.find(sig, pos + 4)
  (tmp_path / "big.pt").write_bytes(bytes(data))
  msg = _message(tmp_path / "big.pt")
  assert "claims 4294967280 bytes, more than the archive can hold" in msg, msg
  # a zip archive that is no checkpoint
  np.savez(tmp_path / "arrays.npz", w=np.ones(2))
  assert "without data.pkl" in _message(tmp_path / "arrays.npz")
