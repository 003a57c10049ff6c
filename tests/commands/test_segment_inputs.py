"""`zipjax segment` with bad inputs: exit statuses, errors.json entries, checks done before models are built.

Runs with --random-init and configs/smoke.py; the tests that get as far as building models share one
ZIPJAX_CACHE so the text features are computed once.
"""
import json
import os

import pytest
from PIL import Image

from zipjax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "configs", "smoke.py")
ORANGES = os.path.join(ROOT, "examples", "oranges.png")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


def _segment(inputs, out, *extra, cache_dir=None, monkeypatch=None):
  if monkeypatch is not None and cache_dir is not None:
    monkeypatch.setenv("ZIPJAX_CACHE", cache_dir)
  return cli.main(["segment", *map(str, inputs), "--classes", "orange", "--random-init", "--config", SMOKE,
                   "--out", str(out), "--no-overlays", *extra])


def test_nothing_segmented_exits_1(tmp_path, cache, monkeypatch, capsys):
  """Every input missing or bad: the outputs list them and the exit status is 1 (not 0)."""
  (tmp_path / "bad.png").write_text("not an image")
  rc = _segment([tmp_path / "bad.png", tmp_path / "missing.png"], tmp_path / "out", cache_dir=cache,
                monkeypatch=monkeypatch)
  assert rc == 1
  assert "no image could be segmented" in capsys.readouterr().err
  errors = json.loads((tmp_path / "out" / "errors.json").read_text())
  assert sorted(os.path.basename(e["path"]) for e in errors) == ["bad.png", "missing.png"]


@pytest.mark.parametrize("name,content,msg", [
    ("config.yaml", "batch_size: 2\n", "not a Python config file"),
    ("config.json", '{"batch_size": 2}', "not a Python config file"),
    ("noget.py", "x = 1\n", "defines no get_config()"),
    ("syntax.py", "def get_config(:\n", "fails to run (SyntaxError"),
    ("binary.py", b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "fails to run"),
    ("dict.py", "def get_config():\n  return {'batch_size': 2}\n", "returned a dict"),
    ("folder.py", None, "not a regular file"),
])
def test_bad_config_file_is_one_line_exit_2(tmp_path, capsys, name, content, msg):
  path = tmp_path / name
  if content is None:
    path.mkdir()
  elif isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content)
  rc = cli.main(["segment", ORANGES, "--classes", "orange", "--random-init", "--config", str(path), "--out",
                 str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert rc == 2, err
  assert err.startswith(f"zipjax segment: error: --config {path}: ") and msg in err and "Traceback" not in err


def test_refused_entries_listed_and_duplicates_processed_once(tmp_path, cache, monkeypatch):
  """A folder with a good image, a broken link, a folder named *.jpg and a FIFO, plus the same good image given
  again directly: one image segmented, the four others in errors.json with their reasons, exit 0."""
  import signal  # pylint: disable=import-outside-toplevel
  d = tmp_path / "in"
  d.mkdir()
  Image.open(ORANGES).convert("RGB").resize((96, 72)).save(d / "a.png")
  os.symlink(d / "gone.png", d / "b.jpg")
  (d / "c.jpg").mkdir()
  os.mkfifo(d / "d.png")

  def alarm(*_):
    raise TimeoutError("segment blocked (a FIFO was opened)")
  old = signal.signal(signal.SIGALRM, alarm)
  signal.alarm(120)
  try:
    rc = _segment([d, d / "a.png"], tmp_path / "out", cache_dir=cache, monkeypatch=monkeypatch)
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
  assert rc == 0
  out = tmp_path / "out"
  errors = {os.path.basename(e["path"]): e["reason"] for e in json.loads((out / "errors.json").read_text())}
  assert set(errors) == {"a.png", "b.jpg", "c.jpg", "d.png"}
  assert errors["a.png"].startswith("duplicate") and "broken symbolic link" in errors["b.jpg"]
  assert "directory" in errors["c.jpg"] and "FIFO" in errors["d.png"]
  images = json.loads((out / "annotations.json").read_text())["images"]
  assert [os.path.basename(i["file_name"]) for i in images] == ["a.png"]
  run = json.loads((out / "run.json").read_text())
  assert (run["images"], run["segmented"], run["skipped"]) == (5, 1, 4)
