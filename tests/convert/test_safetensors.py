"""safetensors: single files and sharded (index json) checkpoints read without pickle, strict header checks,
and `zipjax convert --format safetensors` exports that load back bit for bit."""
import json
import os
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as st_load_numpy
from safetensors.torch import save_file as st_save_torch

import zipjax
from tests.reference.clip_ref import TINY_TEXT, make_clip, nchw, rel_err
from zipjax.cli import main as cli_main
from zipjax.models.tree import flatten
from zipjax.convert.torch_io import read_checkpoint
from zipjax.errors import CheckpointError

SMALL_VIT = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=16,
                 **TINY_TEXT)
torch.set_grad_enabled(False)


@pytest.fixture(scope="module")
def clip_model():
  return make_clip(seed=3, **SMALL_VIT)


def _message(path) -> str:
  with pytest.raises(CheckpointError) as e:
    read_checkpoint(path)
  return str(e.value)


def _raw(path, header: dict, data: bytes):
  h = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(h)) + h + data)
  return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_single_file_matches_the_library(tmp_path, dtype):
  sd = {"a.weight": torch.randn(3, 4).to(dtype), "b": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "empty": torch.zeros(0, 5), "flag": torch.tensor([True, False])}
  st_save_torch(sd, str(tmp_path / "m.safetensors"), metadata={"k": "v"})
  ck = read_checkpoint(tmp_path / "m.safetensors")
  assert ck.format == "safetensors" and ck.metadata == {"k": "v"} and set(ck.tensors) == set(sd)
  for k, v in sd.items():
    want = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
    assert ck.tensors[k].dtype == want.dtype and np.array_equal(ck.tensors[k], want), k


def test_sharded_index_as_huggingface_hub_writes_it(tmp_path, clip_model):
  from huggingface_hub import save_torch_state_dict  # pylint: disable=import-outside-toplevel
  sd = {k: v.contiguous() for k, v in clip_model.state_dict().items()}
  save_torch_state_dict(sd, str(tmp_path), max_shard_size=200_000)
  index = tmp_path / "model.safetensors.index.json"
  shards = sorted(p for p in os.listdir(tmp_path) if p.endswith(".safetensors"))
  assert index.is_file() and len(shards) > 1
  ck = read_checkpoint(index)
  assert ck.format == "safetensors-sharded" and set(ck.tensors) == set(sd)
  assert all(np.array_equal(ck.tensors[k], v.numpy()) for k, v in sd.items())
  # and the model loads from it (OpenAI layout), with parity against the torch model
  clip = zipjax.load_clip(index)
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  assert rel_err(clip.encode_image(x), clip_model.encode_image(nchw(x)).numpy()) < 1e-5


def test_sharded_index_refuses_paths_and_missing_shards(tmp_path):
  st_save_torch({"w": torch.ones(2)}, str(tmp_path / "s1.safetensors"))
  for shard, want in (("../s1.safetensors", "not a plain file name"), ("/etc/passwd", "not a plain file name"),
                      ("sub/s1.safetensors", "not a plain file name"), ("s2.safetensors", "is missing")):
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    msg = _message(tmp_path / "m.safetensors.index.json")
    assert want in msg and "\n" not in msg, msg
  (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "s1.safetensors",
                                                                               "v": "s1.safetensors"}}))
  assert "does not hold the keys its index assigns" in _message(tmp_path / "m.safetensors.index.json")
  (tmp_path / "m.safetensors.index.json").write_text("{}")
  assert "without a safetensors 'weight_map'" in _message(tmp_path / "m.safetensors.index.json")


def test_corrupt_headers_are_refused_before_reading(tmp_path):
  f32 = lambda shape, a, b: {"dtype": "F32", "shape": shape, "data_offsets": [a, b]}
  cases = {
      "outside": ({"w": f32([4], 0, 16)}, b"\0" * 8, "lies outside the file"),
      "size": ({"w": f32([3], 0, 8)}, b"\0" * 8, "does not hold 8 bytes"),
      "overlap": ({"w": f32([2], 0, 8), "v": f32([2], 4, 12)}, b"\0" * 12, "overlaps"),
      "dtype": ({"w": {"dtype": "F8_E9", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "dtype 'F8_E9'"),
      "shape": ({"w": f32([-1], 0, 4)}, b"\0" * 4, "corrupt safetensors header entry"),
  }
  for name, (header, data, want) in cases.items():
    msg = _message(_raw(tmp_path / f"{name}.safetensors", header, data))
    assert want in msg and "\n" not in msg, (name, msg)
  bad = tmp_path / "json.safetensors"
  bad.write_bytes(struct.pack("<Q", 6) + b"{nope}" + b"\0" * 4)
  assert "corrupt safetensors header (not JSON" in _message(bad)


def test_convert_format_safetensors_loads_back_bit_for_bit(tmp_path, clip_model, capsys):
  src = tmp_path / "clip.pt"
  torch.save(clip_model.state_dict(), src)
  out_dir, out_st = str(tmp_path / "clip_dir"), str(tmp_path / "clip.safetensors")
  assert cli_main(["convert", "clip", str(src), out_dir]) == 0
  assert cli_main(["convert", "clip", str(src), out_st, "--format", "safetensors"]) == 0
  assert out_st in capsys.readouterr().out
  a, b = zipjax.load_clip(out_dir), zipjax.load_clip(out_st)
  fa, fb = flatten(a.variables), flatten(b.variables)
  assert a.config == b.config and set(fa) == set(fb)
  assert all(fa[k].dtype == np.asarray(fb[k]).dtype and np.array_equal(fa[k], np.asarray(fb[k])) for k in fa)
  # a plain safetensors file that the reference library reads too
  lib = st_load_numpy(out_st)
  assert set(lib) == set(fb) and all(np.array_equal(lib[k], np.asarray(fb[k])) for k in lib)
  # converting again replaces it; a foreign file or another family's export is refused
  assert cli_main(["convert", "clip", str(src), out_st, "--format", "safetensors"]) == 0
  foreign = tmp_path / "foreign.safetensors"
  st_save_torch({"w": torch.ones(1)}, str(foreign))
  capsys.readouterr()
  assert cli_main(["convert", "clip", str(src), str(foreign), "--format", "safetensors"]) == 2
  assert "not a zipjax converted checkpoint; refusing to overwrite" in capsys.readouterr().err
  assert cli_main(["convert", "clip", str(src), out_dir, "--format", "safetensors"]) == 2
  assert "in the other format (directory)" in capsys.readouterr().err
  with pytest.raises(CheckpointError, match="converted 'clip' checkpoint, expected 'sam'"):
    zipjax.load_sam(out_st)


def test_converted_safetensors_with_leaf_filter_reads_only_kept_leaves(tmp_path, clip_model):
  from zipjax.models.storage import LeafFilter  # pylint: disable=import-outside-toplevel
  src = tmp_path / "clip.pt"
  torch.save(clip_model.state_dict(), src)
  out = str(tmp_path / "c.safetensors")
  assert cli_main(["convert", "clip", str(src), out, "--format", "safetensors"]) == 0
  visual = zipjax.load_clip(out, leaf_filter=LeafFilter(keep_prefixes=("params/visual/",)))
  assert all(k.startswith("params/visual/") for k in flatten(visual.variables))


def test_safetensors_files_load_without_torch(tmp_path, clip_model):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  raw = tmp_path / "model.safetensors"
  st_save_torch({k: v.contiguous() for k, v in clip_model.state_dict().items()}, str(raw))
  out = tmp_path / "c.safetensors"
  assert cli_main(["convert", "clip", str(raw), str(out), "--format", "safetensors"]) == 0
  code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
          "import zipjax\n"
          f"a = zipjax.load_clip({str(raw)!r}); b = zipjax.load_clip({str(out)!r})\n"
          "print(a.config == b.config)\n")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300,
                     check=False)
  assert r.returncode == 0 and r.stdout.strip().endswith("True"), r.stderr[-2000:]
