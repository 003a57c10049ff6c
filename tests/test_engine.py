"""The labelling engine (zipjax/engine.py) on the smoke config with random weights.

One config for every test (the smoke preset with a single 4:3 bucket ratio, so landscape images of any size
share one program per mesh): agreement with the host oracle of the zip preset (tests/reference/zip_host.py),
bit-identical outputs on 8 devices vs 1 and alone vs in a batch, a bounded number of compiled programs over
many image sizes, model-axis parameter sharding vs unsharded, per-image errors, and the host memory of one
8192 x 8192 image.
"""
import os
import threading
import time

import jax
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.pipeline.test_zip_pipeline import scene
from tests.reference import zip_host
from zipjax import parallel
from zipjax.commands.segment import load_config_file
from zipjax.engine import Engine, prepare
from zipjax.errors import InputError
from zipjax.pipeline.load import build_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["orange", "table", "sky", "dog"]


def _config():
  config = load_config_file(os.path.join(ROOT, "configs", "smoke.py"))
  config.discover.min_instance_cells = 4
  config.semantic.prompt_ensemble = False  # random text tower: one template is enough
  config.boundary.bucket_ratios = (1.3333,)  # two buckets (4:3 landscape, 3:4 portrait)
  return config


@pytest.fixture(scope="module")
def models():
  return build_models(_config(), random_init=True)


@pytest.fixture(scope="module")
def one(models):
  eng = Engine(_config(), models=models, mesh=parallel.create_mesh([("data", -1)], jax.devices()[:1]),
               text_cache=None)
  eng.set_classes(NAMES)
  return eng


@pytest.fixture(scope="module")
def images():
  # 4:3 sizes: the boundary input of the host oracle (short side 384, long side rounded to 128) is the bucket's
  return [scene(s, 180, 240) for s in range(3)] + [scene(3, 150, 200), scene(4, 90, 120)]


@pytest.fixture(scope="module")
def reference(one, images):
  return one.segment(images, masks="rle")


def _decode(inst):
  m = inst["mask"]
  return mask_utils.decode({"size": m["size"], "counts": m["counts"].encode("ascii")}).astype(bool)


def _assert_identical(a, b):
  assert "error" not in a and "error" not in b
  np.testing.assert_array_equal(a["probs"], b["probs"])
  np.testing.assert_array_equal(a["labels"], b["labels"])
  assert len(a["instances"]) == len(b["instances"])
  for x, y in zip(a["instances"], b["instances"]):
    assert (x["category"], x["score"], x["box"], x["mask"]) == (y["category"], y["score"], y["box"], y["mask"])


def test_outputs_are_meaningful(reference, images):
  """The comparisons below mean something: instances exist, masks have the image size, RLE == area."""
  assert sum(len(o["instances"]) for o in reference) >= 5
  for out, im in zip(reference, images):
    assert out["grid"] == (24, 32)  # 384 x 512 boundary input, stride 16
    for inst in out["instances"]:
      m = _decode(inst)
      assert m.shape == im.shape[:2] and m.sum() == inst["area"]
      assert 0.0 <= inst["score"] <= 1.0
    scores = [i["score"] for i in out["instances"]]
    assert scores == sorted(scores, reverse=True)


def test_matches_host_oracle(models, images, reference, one):
  """The host oracle, one image and stage at a time: same classes, label maps, instances; scores within 1e-5
  (SAM prompt boxes are scaled in float32 on device instead of float64 on the host); masks IoU >= 0.999
  (composed upsampling weights on the host)."""
  text = one.text_features(NAMES + [""])
  old = zip_host.segment(_config(), *models, text, images[:3])  # one size: the oracle compiles per size
  n = 0
  for a, b in zip(reference[:3], old):
    np.testing.assert_allclose(a["probs"], b["probs"], rtol=0, atol=1e-6)
    assert list(a["present"]) == list(b["present"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert [i["category"] for i in a["instances"]] == [i["category"] for i in b["instances"]]
    for x, y in zip(a["instances"], b["instances"]):
      assert abs(x["score"] - y["score"]) <= 1e-5
      m = _decode(x)
      iou = (m & y["mask"]).sum() / max((m | y["mask"]).sum(), 1)
      assert iou >= 0.999
      np.testing.assert_allclose(x["box"], y["box"], atol=1.0)
      n += 1
  assert n >= 5


def test_eight_devices_match_one_device(models, images, reference, one):
  eng = Engine(_config(), models=models, text_cache=None)  # config.mesh: all 8 devices
  assert eng.mesh.devices.size == 8 and eng.local_batch == 8 * one.local_batch
  eng.set_classes(NAMES)
  for a, b in zip(reference, eng.segment(images, masks="rle")):
    _assert_identical(a, b)


def test_alone_and_in_other_positions(one, images, reference):
  for i in (0, 3):
    _assert_identical(reference[i], one.segment([images[i]], masks="rle")[0])
  for a, b in zip(reference, one.segment(images[::-1], masks="rle")[::-1]):
    _assert_identical(a, b)


def test_padding_row_of_the_compiled_step_keeps_nothing(one, images):
  """The engine's compiled step (SAM on, the smoke config) on a local batch whose second row is a copy of the
  first with valid=False: that row computes the same instances and keeps none (tests/pipeline/test_step.py
  checks the step without SAM)."""
  item = prepare(images[0], one.spec)
  local = {k: np.stack([v] * one.local_batch) for k, v in item.arrays.items()}
  local["valid"] = np.arange(one.local_batch) == 0
  out = one._program(item.bucket)(one.params, one.text, parallel.global_batch(local, one.mesh))
  keep, score = (parallel.local_numpy(out[k]) for k in ("keep_valid", "keep_score"))
  assert keep[0].any(), "the real row keeps nothing: the test could not see a padding row's instances"
  np.testing.assert_array_equal(score[1:], np.broadcast_to(score[0], score[1:].shape))
  assert not keep[1:].any(), "instances of a valid=False padding row are kept"


def test_program_count_bounded(one):
  """Images of many sizes -> at most one program per bucket; nothing compiles per image size."""
  sizes = [(90, 120), (100, 100), (64, 200), (150, 170), (333, 500), (48, 64), (120, 400), (77, 91), (201, 203)]
  imgs = [scene(i, h, w) for i, (h, w) in enumerate(sizes)]
  buckets = {prepare(im, one.spec).bucket for im in imgs}
  assert len(buckets) == 1 and one.num_buckets == 2
  compiles = []

  def listener(event, *a, **k):
    if event.endswith("backend_compile_duration"):
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    outs = one.segment(imgs, masks="rle") + one.segment(imgs[:3], masks="rle")
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert all("error" not in o for o in outs)
  assert len(compiles) <= len(buckets)
  assert one.compiled_programs() <= one.num_buckets


def test_model_axis_sharding_matches_unsharded(models, images, reference):
  """4 data x 2 model: SAM and ResNet kernels split over `model`. Same instances; scores within 1e-5, masks
  IoU >= 0.99 (sharded matmuls may reorder float32 sums)."""
  config = _config()
  config.mesh = [("data", 4), ("model", 2)]
  config.sharding_rules = [("^sam/.*/kernel$", (None, "model")), ("^boundary/.*conv.*/kernel$", (None, None, None,
                                                                                                  "model"))]
  eng = Engine(config, models=models, text_cache=None)
  specs = jax.tree_util.tree_leaves(parallel.param_specs(eng.params, eng.mesh, eng.rules),
                                    is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert sum("model" in tuple(s) for s in specs) > 10
  leaf = eng.params["sam"]["params"]["image_encoder"]["blocks_0"]["mlp"]["lin1"]["kernel"]
  assert leaf.sharding.spec == jax.sharding.PartitionSpec(None, "model")
  assert eng.local_batch == 4 * eng.per_device_batch
  eng.set_classes(NAMES)
  for a, b in zip(reference, eng.segment(images, masks="rle")):
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-6)
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert [i["category"] for i in a["instances"]] == [i["category"] for i in b["instances"]]
    for x, y in zip(a["instances"], b["instances"]):
      assert abs(x["score"] - y["score"]) <= 1e-5
      mx, my = _decode(x), _decode(y)
      assert (mx & my).sum() / max((mx | my).sum(), 1) >= 0.99


def test_bad_items_are_reported_per_image(one, images, reference):
  items = [prepare(im, one.spec) for im in images[:2]]
  items[0].arrays["act_mean_rows"] = np.full_like(items[0].arrays["act_mean_rows"], np.nan)
  outs = one.run_local(items[0].bucket, items)
  assert "non-finite" in outs[0]["error"]
  _assert_identical(outs[1], reference[1])
  outs = one.segment([images[2], np.zeros((10, 10), np.float32)], masks="rle")
  assert "uint8" in outs[1]["error"]
  _assert_identical(outs[0], reference[2])
  assert one.run_local(items[1].bucket, []) == []  # a process with nothing to do still takes part
  with pytest.raises(InputError, match="bucket"):
    one.run_local(items[1].bucket + 1, items[1:])


def _rss() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_large_image_host_memory(one):
  """One 8192 x 8192 image: peak host RSS growth under 600 MB (the image itself, 200 MB, is allocated before;
  the pre-engine host loop took 5.6 GB): PIL copies once, masks are made and RLE-encoded one at a time."""
  one.segment([scene(7, 180, 240)], masks="rle")  # compiled and warm
  big = np.zeros((8192, 8192, 3), np.uint8)  # two halves and a rectangle: few instances, quick to post-process
  big[:, 4096:] = 200
  big[2000:3000, 1000:3000] = (30, 160, 60)
  base, peak, stop = _rss(), [0], threading.Event()

  def sample():
    while not stop.is_set():
      peak[0] = max(peak[0], _rss())
      time.sleep(0.002)

  th = threading.Thread(target=sample)
  th.start()
  try:
    out = one.segment([big], masks="rle")[0]
  finally:
    stop.set()
    th.join()
  assert "error" not in out and out["instances"]
  assert out["instances"][0]["mask"]["size"] == [8192, 8192]
  growth = peak[0] - base
  assert growth < 600e6, f"peak RSS growth {growth / 1e6:.0f} MB"


# ------------------------------------------------------------------------------------ SAM 2 as the refiner
def _config_sam2():
  """configs/smoke_sam2.py (sam.family = 'sam2', a tiny random SAM 2) with this module's settings."""
  config = load_config_file(os.path.join(ROOT, "configs", "smoke_sam2.py"))
  config.discover.min_instance_cells = 4
  config.semantic.prompt_ensemble = False
  config.boundary.bucket_ratios = (1.3333,)
  return config


@pytest.fixture(scope="module")
def sam2_one(images):
  models = build_models(_config_sam2(), random_init=True)
  eng = Engine(_config_sam2(), models=models, mesh=parallel.create_mesh([("data", -1)], jax.devices()[:1]),
               text_cache=None)
  eng.set_classes(NAMES)
  return models, eng, eng.segment(images, masks="rle")


def test_sam2_refiner_outputs(sam2_one, images, reference):
  """family 'sam2': a SAM 2 refines the boxes (its own square input, tables, postprocessing); the discovery
  before it is the same as with SAM (same CLIP models and seeds), the masks are SAM 2's."""
  models, eng, out = sam2_one
  assert type(eng.sam).__name__ == "Sam2Model" and eng.spec.sam_family == "sam2"
  item = prepare(images[0], eng.spec)
  assert item.arrays["sam"].shape == (256, 256, 3) and list(item.arrays["sam_size"]) == [256, 256]
  assert sum(len(o["instances"]) for o in out) >= 5
  for o, ref, im in zip(out, reference, images):
    np.testing.assert_array_equal(o["labels"], ref["labels"])
    for inst in o["instances"]:
      m = _decode(inst)
      assert m.shape == im.shape[:2] and m.sum() == inst["area"] and 0.0 <= inst["score"] <= 1.0
  assert any(x["mask"] != y["mask"] for o, r in zip(out, reference) for x, y in zip(o["instances"], r["instances"]))


def test_sam2_eight_devices_match_one_device(sam2_one, images):
  models, one, out = sam2_one
  eng = Engine(_config_sam2(), models=models, text_cache=None)
  assert eng.mesh.devices.size == 8
  eng.set_classes(NAMES)
  for a, b in zip(out, eng.segment(images, masks="rle")):
    _assert_identical(a, b)
  _assert_identical(out[3], one.segment([images[3]], masks="rle")[0])  # alone == in a batch


def test_sam2_matches_the_api_path(sam2_one, images):
  """The engine's SAM 2 stage (host resize, device tables, box scaling, direct mask resize on the host) ==
  the host oracle through the `Sam2Model` API (`tests/reference/zip_host.sam_masks`)."""
  models, eng, out = sam2_one
  old = zip_host.segment(_config_sam2(), *models, eng.text_features(NAMES + [""]), images[:1])
  a, b = out[0], old[0]
  assert [i["category"] for i in a["instances"]] == [i["category"] for i in b["instances"]] and a["instances"]
  for x, y in zip(a["instances"], b["instances"]):
    assert abs(x["score"] - y["score"]) <= 1e-5
    m = _decode(x)
    assert (m & y["mask"]).sum() / max((m | y["mask"]).sum(), 1) >= 0.999


def test_engine_refuses_a_model_of_the_other_family(models):
  config = _config_sam2()
  with pytest.raises(InputError, match="sam.family is 'sam2' but the SAM model given is a 'sam' one"):
    Engine(config, models=models, text_cache=None)
