"""zipjax.io.outdir and the commands that use it: an unusable output location is a one-line error (exit 2)
found before any model is loaded or any evaluation runs."""
import json
import os
import shutil

import pytest

from tests.unprivileged import run_unprivileged, shared_tmp
from zipjax import cli
from zipjax.errors import InputError
from zipjax.io.outdir import check_output_dir, check_output_parent

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "configs", "smoke.py")


def _bad_locations(tmp_path):
  (tmp_path / "file").write_text("x")
  os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
  return {
      "file": (str(tmp_path / "file"), "is an existing file"),
      "below_file": (str(tmp_path / "file" / "sub" / "dir"), "is a file, not a directory"),
      "dangling": (str(tmp_path / "dangling"), "broken symbolic link"),
      "proc_new": ("/proc/zipjax-test-out", "cannot create"),
      "proc": ("/proc", "not writable"),
  }


@pytest.mark.parametrize("create", [True, False])
def test_check_output_dir_refuses(tmp_path, create):
  for key, (path, msg) in _bad_locations(tmp_path).items():
    if key == "proc_new" and not create:
      msg = "cannot create anything in /proc"
    with pytest.raises(InputError, match=msg):
      check_output_dir(path, "--out", create=create)


def test_check_output_dir_creates_or_not_and_leaves_no_probe(tmp_path):
  target = tmp_path / "a" / "b"
  assert check_output_dir(target, create=False) == str(target)
  assert not (tmp_path / "a").exists() and os.listdir(tmp_path) == []
  assert check_output_dir(target) == str(target)
  assert target.is_dir() and os.listdir(target) == []
  (target / "keep.json").write_text("{}")
  check_output_dir(target)
  assert os.listdir(target) == ["keep.json"]


def test_check_output_parent(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(InputError, match="is a file, not a directory"):
    check_output_parent(tmp_path / "file" / "dst")
  with pytest.raises(InputError, match="is an existing file"):
    check_output_parent(tmp_path / "file")
  with pytest.raises(InputError, match="cannot create anything in /proc"):
    check_output_parent("/proc/zipjax-dst")
  assert check_output_parent(tmp_path / "new" / "dst") == str(tmp_path / "new" / "dst")
  assert os.listdir(tmp_path) == ["file"]


def test_read_only_directory_as_unprivileged_user():
  """Permission bits bind only a non-root user: checked in a subprocess as uid 65534 when run as root."""
  base = shared_tmp()
  try:
    ro = os.path.join(base, "ro")
    os.mkdir(ro)
    os.chmod(ro, 0o555)
    code = ("from zipjax.io.outdir import check_output_dir\nfrom zipjax.errors import InputError\n"
            "for path, create in ((%r, True), (%r, True), (%r, False)):\n"
            "  try:\n    check_output_dir(path, create=create)\n    print('accepted', path)\n"
            "  except InputError as e:\n    print('refused', e)\n") % (ro, os.path.join(ro, "sub"),
                                                                        os.path.join(ro, "sub"))
    out = run_unprivileged(code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and all(ln.startswith("refused") for ln in lines), lines
    assert "not writable (Permission denied)" in lines[0]
    assert "cannot create the directory (Permission denied)" in lines[1]
    assert "cannot create anything in" in lines[2]
  finally:
    os.chmod(os.path.join(base, "ro"), 0o755)
    shutil.rmtree(base)


@pytest.mark.parametrize("key", ["file", "below_file", "dangling", "proc_new", "proc"])
def test_segment_bad_out_exits_2_before_models(tmp_path, monkeypatch, capsys, key):
  import zipjax.commands.segment as segment_cmd  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(segment_cmd, "build_engine", lambda *a, **k: pytest.fail("models were built"))
  path, msg = _bad_locations(tmp_path)[key]
  rc = cli.main(["segment", os.path.join(ROOT, "examples", "oranges.png"), "--classes", "orange",
                 "--random-init", "--config", SMOKE, "--out", path])
  err = capsys.readouterr().err
  assert rc == 2 and err.startswith(f"zipjax segment: error: --out {path}: ") and msg in err, err


def test_eval_out_is_a_file_exits_2_before_evaluating(tmp_path, monkeypatch, capsys):
  import zipjax.eval.coco as coco_eval  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(coco_eval, "compare", lambda *a, **k: pytest.fail("evaluated"))
  gt = tmp_path / "gt.json"
  gt.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
  (tmp_path / "report").write_text("not a folder")
  rc = cli.main(["eval", "--gt", str(gt), "--pred", str(gt), "--out", str(tmp_path / "report")])
  err = capsys.readouterr().err
  assert rc == 2 and "--out " in err and "is an existing file" in err, err
  assert (tmp_path / "report").read_text() == "not a folder"


def test_convert_destination_below_a_file_exits_2(tmp_path, capsys):
  (tmp_path / "file").write_text("x")
  src = tmp_path / "model.pt"
  src.write_bytes(b"\0" * 16)
  rc = cli.main(["convert", "sam", str(src), str(tmp_path / "file" / "converted")])
  err = capsys.readouterr().err
  assert rc == 2 and "zipjax convert: error: DST " in err and "is a file, not a directory" in err, err
