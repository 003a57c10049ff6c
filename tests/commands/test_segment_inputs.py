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
