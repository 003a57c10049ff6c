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
  rc = _segment([tmp_path / "bad.png", tmp_path / "missing.png"], tmp_path / "out", "--config.sam.enabled=false",
                cache_dir=cache, monkeypatch=monkeypatch)
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



@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, cache):
  """One run over a folder holding two good images (one named with invalid UTF-8), a bad file named with
  invalid UTF-8, a broken link, a folder named *.jpg and a FIFO, plus the first image given again directly;
  stdout and stderr are strict UTF-8 streams. SAM is off (not what is tested; saves its compilation)."""
  import io  # pylint: disable=import-outside-toplevel
  import signal  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  base = tmp_path_factory.mktemp("mixed")
  d = base / "in"
  d.mkdir()
  dirb = os.fsencode(d)
  small = Image.open(ORANGES).convert("RGB").resize((96, 72))
  small.save(d / "a.png")
  small.transpose(Image.FLIP_LEFT_RIGHT).save(os.path.join(dirb, b"caf\xe9.png"), format="PNG")
  with open(os.path.join(dirb, b"bad\xff.png"), "wb") as f:
    f.write(b"not an image")
  os.symlink(d / "gone.png", d / "b.jpg")
  (d / "c.jpg").mkdir()
  os.mkfifo(d / "d.png")

  def alarm(*_):
    raise TimeoutError("segment blocked (a FIFO was opened)")
  stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
  stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
  old = signal.signal(signal.SIGALRM, alarm)
  signal.alarm(300)
  try:
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(sys, "stdout", stdout)
      mp.setattr(sys, "stderr", stderr)
      rc = _segment([d, d / "a.png"], base / "out", "--config.sam.enabled=false", cache_dir=cache, monkeypatch=mp)
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
  stdout.flush()
  stderr.flush()
  return rc, dirb, base / "out", stdout.buffer.getvalue(), stderr.buffer.getvalue()


def _errors(out):
  return {os.path.basename(e["path"]): e for e in json.loads((out / "errors.json").read_text())}


def test_refused_entries_listed_and_duplicates_processed_once(mixed_run):
  rc, _, out, _, err = mixed_run
  assert rc == 0, err
  errors = _errors(out)
  assert set(errors) == {"a.png", "b.jpg", "c.jpg", "d.png", "bad\\xff.png"}
  assert errors["a.png"]["reason"].startswith("duplicate") and "broken symbolic link" in errors["b.jpg"]["reason"]
  assert "directory" in errors["c.jpg"]["reason"] and "FIFO" in errors["d.png"]["reason"]
  assert "not an image" in errors["bad\\xff.png"]["reason"]
  run = json.loads((out / "run.json").read_text())
  assert (run["images"], run["segmented"], run["skipped"]) == (7, 2, 5)


def test_non_utf8_names_printed_and_stored_as_strict_utf8(mixed_run):
  """Exit 0 with strict UTF-8 stdout; the JSON files hold strict UTF-8 text (no lone surrogates) and flags;
  the stored names decode back to the file names' bytes."""
  from tests.io.test_paths import strict_json_strings  # pylint: disable=import-outside-toplevel
  from zipjax.io.paths import path_bytes  # pylint: disable=import-outside-toplevel
  rc, dirb, out, printed, err = mixed_run
  assert rc == 0, err
  assert "bad\\xff.png" in printed.decode("utf-8")
  for name in ("errors.json", "annotations.json", "results.json", "run.json"):
    strict_json_strings(json.loads((out / name).read_bytes().decode("utf-8")))
  bad = _errors(out)["bad\\xff.png"]
  assert bad["path_escaped"] is True and path_bytes(bad["path"], True) == os.path.join(dirb, b"bad\xff.png")
  assert "path_escaped" not in _errors(out)["b.jpg"]
  images = json.loads((out / "annotations.json").read_text())["images"]
  assert [os.path.basename(i["file_name"]) for i in images] == ["a.png", "caf\\xe9.png"]
  assert "file_name_escaped" not in images[0] and images[1]["file_name_escaped"] is True
  assert path_bytes(images[1]["file_name"], True) == os.path.join(dirb, b"caf\xe9.png")


def test_long_class_name_warns_and_new_classes_are_appended(tmp_path, monkeypatch):
  """A class name longer than CLIP's 77-token context warns (it used to be cut off silently); a changed
  vocabulary appends its new class to the text-feature cache file."""
  from zipjax.commands.segment import load_config_file  # pylint: disable=import-outside-toplevel
  from zipjax.pipeline.semantic import PromptTruncationWarning  # pylint: disable=import-outside-toplevel
  from zipjax.engine import Engine  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("ZIPJAX_CACHE", str(tmp_path))
  config = load_config_file(SMOKE)
  config.sam.enabled = False
  seg = Engine(config, random_init=True)
  long = "very " * 80 + "long name"
  with pytest.warns(PromptTruncationWarning, match=r"'very very .*\.\.\.' is too long for the text encoder: 85 of"):
    seg.set_classes(["cat", long])
  path = seg.text_cache.path
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read()
  import warnings  # pylint: disable=import-outside-toplevel
  with warnings.catch_warnings():
    warnings.simplefilter("error", PromptTruncationWarning)
    seg.set_classes(["cat", "dog"])
  dim = seg.text["text"].shape[1]
  assert os.path.getsize(path) == size + 12 + len("dog") + 4 * dim
  with open(path, "rb") as f:
    assert f.read(size) == head
