"""zipjax.io.atomic: complete-or-nothing writes."""
import json
import os

import pytest

from zipjax.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text


def test_writes_replace_and_keep_mode(tmp_path):
  p = tmp_path / "sub" / "a.txt"
  atomic_write_text(p, "one")
  assert p.read_text() == "one"
  os.chmod(p, 0o600)
  atomic_write_bytes(p, b"two")
  assert p.read_bytes() == b"two"
  assert (os.stat(p).st_mode & 0o777) == 0o600
  assert os.listdir(p.parent) == ["a.txt"]


def test_json_roundtrip_and_nan_refused_before_touching_disk(tmp_path):
  p = tmp_path / "m.json"
  atomic_write_json(p, {"ap": 0.5, "none": None})
  assert json.loads(p.read_text()) == {"ap": 0.5, "none": None}
  with pytest.raises(ValueError):
    atomic_write_json(p, {"ap": float("nan")})
  assert json.loads(p.read_text()) == {"ap": 0.5, "none": None}
  assert os.listdir(tmp_path) == ["m.json"]


def test_failure_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
  p = tmp_path / "x.bin"
  atomic_write_bytes(p, b"old")

  def boom(fd):
    raise OSError("fsync failed")

  monkeypatch.setattr(os, "fsync", boom)
  with pytest.raises(OSError, match="fsync failed"):
    atomic_write_bytes(p, b"new")
  assert p.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["x.bin"]
