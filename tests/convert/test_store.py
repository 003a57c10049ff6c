"""zipjax.convert.store: a conversion never replaces a converted checkpoint of another family (nor anything
that is not a converted checkpoint); the same family is replaced atomically."""
import json
import os

import numpy as np
import pytest

from zipjax.cli import main as cli_main
from zipjax.convert.store import load_converted, save_converted
from zipjax.errors import CheckpointError

VARS = {"params": {"w": np.arange(4, dtype=np.float32)}}


def test_other_family_is_refused_and_left_intact(tmp_path):
  dst = tmp_path / "model"
  save_converted(dst, "clip", {"width": 1}, VARS)
  before = {n: (dst / n).read_bytes() for n in os.listdir(dst)}
  with pytest.raises(CheckpointError, match="holds a converted 'clip' checkpoint; refusing to replace it with a "
                                            "'sam' one"):
    save_converted(dst, "sam", {"width": 2}, VARS)
  assert {n: (dst / n).read_bytes() for n in os.listdir(dst)} == before
  assert sorted(os.listdir(tmp_path)) == ["model"]


def test_same_family_is_replaced(tmp_path):
  dst = tmp_path / "model"
  save_converted(dst, "sam", {"width": 1}, VARS)
  save_converted(dst, "sam", {"width": 2}, {"params": {"w": np.ones(3, np.float32)}})
  config, variables = load_converted(dst, "sam")
  assert config == {"width": 2}
  np.testing.assert_array_equal(variables["params"]["w"], np.ones(3, np.float32))
  assert sorted(os.listdir(tmp_path)) == ["model"]


def test_unreadable_family_is_refused(tmp_path):
  dst = tmp_path / "model"
  save_converted(dst, "clip", {}, VARS)
  (dst / "config.json").write_text("{not json")
  with pytest.raises(CheckpointError, match="cannot be read"):
    save_converted(dst, "clip", {}, VARS)


def test_cli_refuses_before_reading_the_source(tmp_path, capsys):
  """`zipjax convert sam SRC DST` with DST a converted CLIP model: exit 2 naming the family; SRC is not read
  (here it does not even exist)."""
  dst = tmp_path / "clip_model"
  save_converted(dst, "clip", {}, VARS)
  rc = cli_main(["convert", "sam", str(tmp_path / "missing.pth"), str(dst)])
  err = capsys.readouterr().err
  assert rc == 2 and "holds a converted 'clip' checkpoint" in err and "missing.pth" not in err, err
  assert json.loads((dst / "config.json").read_text())["family"] == "clip"
