"""zipjax.models.storage: the engine holds only the variables its step uses, in their compute dtype, and computes
the same numbers as from the whole float32 model."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.pipeline.test_zip_pipeline import scene
from tests.test_engine import NAMES, _config
from zipjax import parallel
from zipjax.clip import ClipModel, load_clip
from zipjax.models.tree import flatten
from zipjax.convert.store import save_converted
from zipjax.engine import Engine, prepare
from zipjax.errors import InputError
from zipjax.models import storage
from zipjax.models.clip_net import CLIPConfig, variable_shapes
from zipjax.models.random_init import random_variables
from zipjax.pipeline import load

RN = CLIPConfig(embed_dim=64, image_resolution=64, vision_layers=(1, 2, 2, 1), vision_width=16,
                vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                transformer_heads=1, transformer_layers=1)


def test_trunk_filter_keeps_the_trunk_only_and_casts_kernels():
  f = storage.trunk_filter(3, "bfloat16")
  assert f.keeps("params/visual/layer3_1/conv2/kernel") and f.keeps("batch_stats/visual/bn1/mean")
  for dropped in ("params/visual/layer4_0/conv1/kernel", "params/visual/attnpool/q_proj/kernel",
                  "params/token_embedding/embedding", "params/transformer/resblocks_0/attn/in_proj_weight"):
    assert not f.keeps(dropped), dropped
  assert f("params/visual/layer1_0/conv1/kernel", np.ones((1, 1, 4, 4), np.float32)).dtype == jnp.bfloat16
  assert f("params/visual/layer1_0/bn1/scale", np.ones((4,), np.float32)).dtype == np.float32
  assert f("batch_stats/visual/layer1_0/bn1/var", np.ones((4,), np.float32)).dtype == np.float32
  sem = storage.LeafFilter(dtype="bfloat16", cast_prefixes=("params/visual/",))
  assert sem("params/transformer/resblocks_0/mlp/c_fc/kernel", np.ones((2, 2), np.float32)).dtype == np.float32
  assert sem("params/visual/transformer/resblocks_0/attn/in_proj_weight",
             np.ones((2, 6), np.float32)).dtype == jnp.bfloat16
  assert sem("params/visual/proj", np.ones((2, 2), np.float32)).dtype == np.float32  # used in float32


def test_resolve_dtype():
  assert storage.resolve_dtype("auto", "gpu") == "bfloat16" and storage.resolve_dtype("auto", "tpu") == "bfloat16"
  assert storage.resolve_dtype("auto", "cpu") == storage.AUTO_DTYPE["cpu"]
  assert storage.resolve_dtype("float32", "gpu") == "float32"
  with pytest.raises(InputError, match="float16"):
    storage.resolve_dtype("float16")


def test_filtered_random_draw_keeps_the_values_of_the_whole_draw():
  shapes = variable_shapes(RN)
  whole = flatten(random_variables(shapes, 3))
  f = storage.trunk_filter(2, None)
  part = flatten(random_variables(shapes, 3, leaf_filter=f))
  assert set(part) == {k for k in whole if f.keeps(k)} and len(part) < len(whole)
  for k, v in part.items():
    np.testing.assert_array_equal(v, whole[k])


def test_trunk_only_converted_checkpoint_gives_the_same_trunk(tmp_path):
  full = ClipModel.random(RN, 1)
  save_converted(tmp_path / "rn", "clip", RN.to_dict(), jax.tree_util.tree_map(np.asarray, full.variables))
  part = load_clip(str(tmp_path / "rn"), leaf_filter=storage.trunk_filter(3, None, device=True))
  kept = flatten(part.variables)
  assert all("/visual/" in k and "layer4_" not in k and "attnpool" not in k for k in kept)
  assert all(isinstance(v, jax.Array) for v in kept.values())
  x = np.random.default_rng(0).standard_normal((1, 64, 96, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(part.trunk_features(x, 3)), np.asarray(full.trunk_features(x, 3)))


def test_pre_cast_kernels_compute_the_same_step_as_float32_ones():
  """bf16 image towers: the engine's models (kernels held in bf16) and the whole float32 models (kernels cast
  by the modules) give bit-identical step outputs."""
  config = _config()
  config.batch_size = 1
  for m in (config.models.semantic, config.models.boundary, config.models.sam):
    m.dtype = "bfloat16"
  held = load.build_models(config, random_init=True)
  seed = int(config.models.seed)
  arch = lambda spec: load._arch(spec, CLIPConfig)  # noqa: E731  pylint: disable=protected-access
  whole = (ClipModel.random(arch(config.models.semantic.arch), seed),
           ClipModel.random(arch(config.models.boundary.arch), seed + 1),
           load.build_sam(config.models.sam, True, seed + 2))
  assert flatten(held[1].variables).keys() < flatten(whole[1].variables).keys()  # the trunk only
  assert any(v.dtype == jnp.bfloat16 for v in flatten(held[2].variables).values())
  mesh = parallel.create_mesh([("data", -1)], jax.devices()[:1])
  item = None
  outs = []
  for models in (held, whole):
    eng = Engine(config, models=models, mesh=mesh, text_cache=None)
    eng.set_classes(NAMES)
    item = prepare(scene(0, 180, 240), eng.spec) if item is None else item
    batch = parallel.global_batch({k: v[None] for k, v in item.arrays.items()}, eng.mesh)
    outs.append(jax.device_get(eng._program(item.bucket)(eng.params, eng.text, batch)))  # pylint: disable=protected-access
  assert outs[0]["keep_valid"].any()
  for k in outs[0]:
    np.testing.assert_array_equal(outs[0][k], outs[1][k], err_msg=k)
