"""zipjax.convert.torch_io: each way a checkpoint file can fail says what happened (permission denied, unsafe
pickle, truncated zip or pickle, empty, FIFO), and an unsafe pickle never runs."""
import os
import pickle
import shutil
import threading

import pytest
import torch

from tests.unprivileged import run_unprivileged, shared_tmp
from zipjax.convert.torch_io import read_state_dict
from zipjax.errors import CheckpointError


class _Payload:
  """Unpickling this would create the file `marker` (it must never happen)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


def _message(path) -> str:
  with pytest.raises(CheckpointError) as e:
    read_state_dict(path)
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
  assert read_state_dict(tmp_path / "ok.pt")["w"].tolist() == [1.0, 1.0, 1.0]


def test_permission_denied_is_not_called_corrupt():
  base = shared_tmp()
  try:
    path = os.path.join(base, "secret.pt")
    torch.save({"w": torch.ones(3)}, path)
    os.chmod(path, 0o000)
    code = ("from zipjax.convert.torch_io import read_state_dict\nfrom zipjax.errors import CheckpointError\n"
            f"try:\n  read_state_dict({path!r})\nexcept CheckpointError as e:\n  print(e)\n")
    out = run_unprivileged(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{path}: permission denied (the file cannot be read)"
  finally:
    shutil.rmtree(base)
