"""zipjax.io.atomic.atomic_write_many: several files, complete-or-old each, one sync, no temporaries left."""
import os

import pytest

from zipjax.io.atomic import atomic_write_bytes, atomic_write_many


def test_writes_all_keeps_modes_and_syncs_once(tmp_path, monkeypatch):
  old = tmp_path / "a" / "x.bin"
  atomic_write_bytes(old, b"old")
  os.chmod(old, 0o600)
  syncs, fsyncs = [], []
  real_fsync = os.fsync
  monkeypatch.setattr(os, "sync", lambda: syncs.append(1))
  monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
  files = [(old, b"new"), (tmp_path / "a" / "y.bin", b"y" * 10000), (tmp_path / "b" / "c" / "z.html", b"<p>")]
  out = atomic_write_many(files)
  assert out == [os.path.abspath(p) for p, _ in files]
  for p, data in files:
    assert p.read_bytes() == data
  assert (os.stat(old).st_mode & 0o777) == 0o600
  assert len(syncs) == 1 and len(fsyncs) == 2  # one sync; one fsync per parent folder (a, b/c)
  assert sorted(os.listdir(tmp_path / "a")) == ["x.bin", "y.bin"]


def test_failure_before_the_renames_leaves_old_files_and_no_temporaries(tmp_path, monkeypatch):
  p = tmp_path / "x.bin"
  atomic_write_bytes(p, b"old")

  def boom():
    raise OSError("sync failed")

  monkeypatch.setattr(os, "sync", boom)
  with pytest.raises(OSError, match="sync failed"):
    atomic_write_many([(p, b"new"), (tmp_path / "y.bin", b"y")])
  assert p.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["x.bin"]


def test_empty_batch_touches_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(os, "sync", lambda: pytest.fail("no sync for an empty batch"))
  assert atomic_write_many([]) == []
