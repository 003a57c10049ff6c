"""Pieces of the engine's device step (zipjax/pipeline/step.py) against NumPy: the selection (min score,
per-class mask NMS as one NMS with cross-class IoU zeroed, top-k), the present-class slots and their bound, and
the whole step on a batch with a valid=False padding row (nothing of it kept)."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.reference.zip_host import select_numpy
from zipjax import configs
from zipjax.pipeline import step


def _spec(max_present=None, **groups):
  """The zip preset's spec with fields of its groups changed: `_spec(scoring={"nms": False})`."""
  spec = step.StepSpec.from_config(configs.zip(), (32, 32), 5)
  changes = {g: dataclasses.replace(getattr(spec, g), **kw) for g, kw in groups.items()}
  return dataclasses.replace(spec, **changes, **({} if max_present is None else {"max_present": max_present}))


def test_select_candidates_matches_numpy():
  rng = np.random.default_rng(3)
  for trial in range(6):
    m = 12
    cats = rng.integers(0, 3, m)
    scores = np.round(rng.random(m), 1).astype(np.float32)  # ties on purpose
    valid = rng.random(m) < 0.8
    masks = np.zeros((m, 24, 24), bool)
    for i in range(m):
      r, c = rng.integers(0, 14, 2)
      masks[i, r:r + int(rng.integers(4, 10)), c:c + int(rng.integers(4, 10))] = True
    flat = masks.reshape(m, -1).astype(np.float64)
    inter = flat @ flat.T
    area = flat.sum(1)
    iou = inter / np.maximum(area[:, None] + area[None] - inter, 1)
    for nms in (False, True):
      spec = _spec(scoring=dict(min_score=0.2, nms=nms, nms_threshold=0.3, max_per_image=5),
                   sam=dict(enabled=True, max_boxes=m))
      idx, ok = jax.jit(lambda c, s, v, u: step.select_candidates(c, s, v, u, spec))(
          jnp.asarray(cats), jnp.asarray(scores), jnp.asarray(valid), jnp.asarray(iou, jnp.float32))
      got = np.asarray(idx)[np.asarray(ok)].tolist()
      keep = np.nonzero(valid)[0]
      want = select_numpy(cats[keep], scores[keep], [masks[i] for i in keep], 0.2, nms, 0.3, 5)
      assert got == keep[want].tolist(), trial


def test_max_present_classes():
  config = configs.zip()  # classification first, presence threshold 0.1: at most 10 classes reach it
  assert step.max_present_classes(config, 80) == 10
  assert step.max_present_classes(config, 3) == 3
  config.scoring.max_present_classes = 4
  assert step.max_present_classes(config, 80) == 4
  ref = configs.reference()  # every class goes to discovery
  assert step.max_present_classes(ref, 80) == 80


def test_spec_holds_only_what_the_step_reads():
  """Fields the step does not read leave the spec (the compile key) unchanged; a field it reads changes it."""
  base = step.StepSpec.from_config(configs.zip(), (32, 32), 5)
  for group, fields in step.UNREAD.items():
    for name in fields:
      config = configs.zip().unlock()
      value = config[group][name]  # + 16: max_present_classes 16 still bounds P at the 5 classes
      config[group][name] = {bool: lambda v: not v, int: lambda v: v + 16, str: lambda v: "sam2"}[type(value)](value)
      assert step.StepSpec.from_config(config, (32, 32), 5) == base, f"{group}.{name}"
  config = configs.zip().unlock()
  config.sam.multimask = not config.sam.multimask
  assert step.StepSpec.from_config(config, (32, 32), 5) != base
  known = {f.name for f in dataclasses.fields(step.StepSpec)}
  assert set(step.UNREAD) <= known


def test_select_classes():
  spec = _spec(max_present=3)
  probs = jnp.asarray([0.05, 0.3, 0.02, 0.4, 0.23], jnp.float32)
  cls, ok = step._select_classes(probs, spec)
  assert np.asarray(cls)[np.asarray(ok)].tolist() == [1, 3, 4]  # present, in class order
  cls, ok = step._select_classes(probs, dataclasses.replace(spec, max_present=2))
  assert np.asarray(cls)[np.asarray(ok)].tolist() == [1, 3]  # the two most probable, in class order
  cls, ok = step._select_classes(probs, _spec(5, scoring=dict(classification_first=False)))
  assert np.asarray(cls).tolist() == [0, 1, 2, 3, 4] and np.asarray(ok).all()
  cls, ok = step._select_classes(probs, _spec(scoring=dict(presence_threshold=0.5)))
  assert not np.asarray(ok).any()


@pytest.mark.slow  # bf16 towers; the float32 towers are checked against the old path by tests/test_engine.py
def test_image_towers_run_in_the_config_dtype():
  """The engine's standalone image towers (ResNet variables pruned after the stage) run bf16 matmuls when the
  config says so, within bf16 rounding of their float32 result (tests/test_engine.py checks the float32 towers
  against the old path's CLIP calls)."""
  from zipjax.clip import ClipModel  # pylint: disable=import-outside-toplevel
  from zipjax.models.clip_resnet import ModifiedResNet  # pylint: disable=import-outside-toplevel
  from zipjax.models.clip_vit import VisionTransformer  # pylint: disable=import-outside-toplevel
  text = dict(context_length=77, vocab_size=49408, transformer_width=32, transformer_heads=1, transformer_layers=1)
  vit = ClipModel.random(step.CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64,
                                         vision_patch_size=16, surgery_depth=1, **text), 0)
  rn = ClipModel.random(step.CLIPConfig(embed_dim=32, image_resolution=64, vision_layers=(1, 1, 1, 1),
                                        vision_width=16, vision_patch_size=None, **text), 1)
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  rn_vars = step.visual_variables(rn.variables, False, 3)
  assert "layer4_0" not in rn_vars["params"] and "attnpool" not in rn_vars["params"]
  cases = [(vit, step.visual_variables(vit.variables, True),
            lambda m, v: m.apply(v, x, 1, method=VisionTransformer.surgery)),
           (rn, rn_vars, lambda m, v: m.apply(v, x, 3, method=ModifiedResNet.trunk))]
  for model, variables, run in cases:
    want = np.asarray(run(step.vision_module(model.config), variables), np.float32)
    bf16 = step.vision_module(model.config.replace(dtype="bfloat16"))
    jaxpr = str(jax.make_jaxpr(lambda v: run(bf16, v))(variables))
    assert re.search(r"bf16\[[\d,]*\] = (dot_general|conv_general_dilated)", jaxpr)
    got = np.asarray(run(bf16, variables), np.float32)
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()



def test_padding_rows_keep_nothing():
  """A batch row with valid=False (the engine pads a local batch with such rows) keeps no instance, even when its
  pixels are those of a real image whose own row keeps some: row 1 is an exact copy of row 0 except `valid`.
  The step without SAM (the mask is applied after either branch; tests/test_engine.py checks the SAM step the
  same way on its compiled program)."""
  from tests.pipeline.test_zip_pipeline import scene  # pylint: disable=import-outside-toplevel
  from tests.test_engine import NAMES, _config  # pylint: disable=import-outside-toplevel
  from zipjax import parallel  # pylint: disable=import-outside-toplevel
  from zipjax.engine import Engine, prepare  # pylint: disable=import-outside-toplevel
  config = _config()
  config.sam.enabled = False
  config.micro_batch = 0  # the rows vmapped together: the padding row is computed, only the mask drops it
  config.semantic.input_size = 64  # 4 x 4 tokens and a 128 px boundary input: the smoke models, small inputs
  config.boundary.input_size = 128
  config.boundary.size_multiple = 32
  eng = Engine(config, random_init=True, mesh=parallel.create_mesh([("data", -1)], jax.devices()[:1]),
               text_cache=None)
  eng.set_classes(NAMES)
  item = prepare(scene(0, 150, 200), eng.spec)
  batch = {k: np.stack([v, v]) for k, v in item.arrays.items()}
  batch["valid"] = np.asarray([True, False])
  fn = step.make_step(eng.step_spec, eng.semantic_cfg, eng.boundary_cfg, eng.sam_cfg)
  out = jax.jit(fn)(eng.params, eng.text, batch)
  keep = np.asarray(out["keep_valid"])
  assert keep.shape[0] == 2
  assert keep[0].any(), "the real row keeps nothing: the test could not see a padding row's instances"
  for k in ("keep_category", "keep_score", "keep_box"):  # the padding row computed the same instances ...
    np.testing.assert_array_equal(np.asarray(out[k])[0], np.asarray(out[k])[1])
  assert not keep[1].any(), "instances of a valid=False padding row are kept"  # ... and keeps none of them
  # micro-batches of one image: the padding row's micro-batch is skipped (zeros); the real row is what the
  # same step gives it alone (bit for bit)
  fn1 = jax.jit(step.make_step(dataclasses.replace(eng.step_spec, micro_batch=1), eng.semantic_cfg, eng.boundary_cfg,
                               eng.sam_cfg))
  out1 = fn1(eng.params, eng.text, batch)
  alone = fn1(eng.params, eng.text, {k: v[:1] for k, v in batch.items()})
  assert not np.asarray(out1["keep_valid"])[1].any() and not np.asarray(out1["keep_score"])[1].any()
  for k in ("keep_valid", "keep_category", "keep_score", "keep_box", "labels", "probs"):
    np.testing.assert_array_equal(np.asarray(out1[k])[0], np.asarray(alone[k])[0])
