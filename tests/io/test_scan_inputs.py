"""Input expansion and per-file reasons (zipjax/io/images.py): FIFOs are refused without being opened, folder
entries that are not usable image files are reported (not dropped), a file given twice is decoded once, and
each kind of unreadable file gets its own reason."""
import os
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from tests.unprivileged import run_unprivileged, shared_tmp
from zipjax.errors import InputError
from zipjax.io.images import file_problem, find_images, load_image, scan_inputs


def _png(path, seed=0):
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
  return str(path)


def _finishes(fn, timeout=10.0):
  """Runs fn in a daemon thread; returns (finished, result or exception). A blocked open() cannot hang pytest."""
  box = {}

  def target():
    try:
      box["result"] = fn()
    except Exception as e:  # pylint: disable=broad-except
      box["result"] = e
  t = threading.Thread(target=target, daemon=True)
  t.start()
  t.join(timeout)
  return not t.is_alive(), box.get("result")


def test_fifo_is_refused_without_opening_it(tmp_path):
  fifo = tmp_path / "pipe.png"
  os.mkfifo(fifo)
  done, result = _finishes(lambda: load_image(fifo))
  assert done, "load_image blocked on a FIFO"
  assert isinstance(result, InputError) and "not a regular file (a FIFO" in str(result)
  done, result = _finishes(lambda: scan_inputs([fifo]))
  assert done and result == ([], [{"path": str(fifo), "reason": str(file_problem(fifo))}])


@pytest.fixture
def folder(tmp_path):
  d = tmp_path / "in"
  d.mkdir()
  good = _png(d / "a_good.png")
  os.symlink(d / "gone.png", d / "b_dangling.jpg")
  (d / "c_folder.jpg").mkdir()
  os.mkfifo(d / "d_pipe.png")
  (d / "e_notes.txt").write_text("not an image and not an image name")
  os.symlink(good, d / "f_link.png")  # a working link to a_good.png: the same file
  return d, good


def test_folder_entries_are_reported_not_dropped(folder):
  d, good = folder
  done, result = _finishes(lambda: scan_inputs([d]))
  assert done
  paths, refused = result
  assert paths == [good]
  reasons = {os.path.basename(e["path"]): e["reason"] for e in refused}
  assert set(reasons) == {"b_dangling.jpg", "c_folder.jpg", "d_pipe.png", "f_link.png"}
  assert "broken symbolic link" in reasons["b_dangling.jpg"]
  assert "is a directory" in reasons["c_folder.jpg"]
  assert "FIFO" in reasons["d_pipe.png"]
  assert reasons["f_link.png"].startswith("duplicate: the same file as input") and good in reasons["f_link.png"]


def test_same_file_twice_is_processed_once(folder, tmp_path, monkeypatch):
  d, good = folder
  os.link(good, tmp_path / "hard.png")
  monkeypatch.chdir(d)
  paths, refused = scan_inputs([good, "a_good.png", "./a_good.png", str(tmp_path / "hard.png")])
  assert paths == [good]
  assert [e["path"] for e in refused] == ["a_good.png", "./a_good.png", str(tmp_path / "hard.png")]
  assert all(e["reason"].startswith("duplicate") for e in refused)
  missing = tmp_path / "missing.png"
  paths, refused = scan_inputs([missing, missing, good])
  assert paths == [good] and [e["reason"][:9] for e in refused] == ["file not ", "duplicate"]


def test_find_images_stays_compatible(folder):
  """Old callers: every candidate except duplicates, in order; load_image then names each problem."""
  d, good = folder
  assert [os.path.basename(p) for p in find_images([d])] == ["a_good.png", "b_dangling.jpg", "c_folder.jpg",
                                                              "d_pipe.png"]
  with pytest.raises(InputError, match="no input images"):
    find_images([d / "c_folder.jpg"])  # an empty folder
  with pytest.raises(InputError, match="no input images"):
    scan_inputs([d / "c_folder.jpg"])


def test_each_failure_has_its_own_reason(tmp_path):
  (tmp_path / "empty.png").write_bytes(b"")
  (tmp_path / "text.png").write_text("hello")
  good = _png(tmp_path / "t.png")
  data = open(good, "rb").read()
  (tmp_path / "trunc.png").write_bytes(data[:len(data) // 2])
  cases = {"empty.png": "empty file (0 bytes)", "text.png": "not an image", "trunc.png": "corrupt or truncated",
           "missing.png": "file not found"}
  for name, msg in cases.items():
    with pytest.raises(InputError) as e:
      load_image(tmp_path / name)
    assert msg in str(e.value), (name, str(e.value))


def test_permission_denied_is_not_called_corrupt():
  """As an unprivileged user (root reads anything): an unreadable image says permission denied."""
  base = shared_tmp()
  try:
    path = _png(os.path.join(base, "secret.png"))
    os.chmod(path, 0o000)
    code = ("from zipjax.io.images import load_image\nfrom zipjax.errors import InputError\n"
            f"try:\n  load_image({path!r})\nexcept InputError as e:\n  print(e)\n")
    out = run_unprivileged(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "permission denied (the file cannot be read)"
  finally:
    shutil.rmtree(base)

