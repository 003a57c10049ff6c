"""`discover` vs the NumPy/skimage reference of the released algorithm; batched + sharded form; presets."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import zipjax
from tests.reference import zip_discover as ref
from tests.reference import zip_host
from zipjax import configs
from zipjax.errors import InputError
from zipjax.ops import kmeans as km
from zipjax.pipeline import discover as disc


@st.composite
def scenes(draw, activation=st.sampled_from(["planted", "planted", "loose", "empty", "full"])):
  seed = draw(st.integers(0, 2**31 - 1))
  kwargs = dict(n_objects=draw(st.integers(1, 5)), touching=draw(st.booleans()),
                noise=draw(st.sampled_from([0.0, 0.02, 0.08])), activation=draw(activation))
  return ref.synthetic_scene(np.random.default_rng(seed), **kwargs)


@settings(max_examples=25, deadline=None)
@given(scenes())
def test_reference_preset_matches_released_algorithm(scene):
  feat, act = scene
  out = zipjax.discover_instances(feat, act)
  ref_labels, ref_ids = ref.discover_reference(feat, act)
  np.testing.assert_array_equal(np.asarray(out["cluster_ids"]), ref_ids)
  # identical labels, numbering included (raster order of the first cell)
  np.testing.assert_array_equal(np.asarray(out["labels"]), ref_labels)
  np.testing.assert_array_equal(np.asarray(zipjax.discover(feat, act)), ref_labels)
  n = int(out["num_instances"])
  assert n == ref_labels.max()
  if act.sum() == 0:
    assert n == 0


def test_planted_touching_instances_are_found():
  # a hand-checked case: two touching target objects split by their boundary band, one other-class object
  found = 0
  for seed in range(6):
    feat, act = ref.synthetic_scene(np.random.default_rng(seed), n_objects=2, touching=True, noise=0.0)
    labels = np.asarray(zipjax.discover(feat, act))
    ref_labels, _ = ref.discover_reference(feat, act)
    np.testing.assert_array_equal(labels, ref_labels)
    found += labels.max()
  assert found >= 6  # not a degenerate comparison of empty maps


def test_instance_outputs_are_consistent():
  feat, act = ref.synthetic_scene(np.random.default_rng(3), n_objects=4, noise=0.02)
  out = zipjax.discover_instances(feat, act)
  labels = np.asarray(out["labels"])
  n = int(out["num_instances"])
  assert n == labels.max() > 0
  for i in range(n):
    rr, cc = np.nonzero(labels == i + 1)
    assert out["valid"][i] and out["areas"][i] == len(rr) >= 100
    assert tuple(np.asarray(out["bboxes"][i])) == (rr.min(), cc.min(), rr.max() + 1, cc.max() + 1)
  assert not np.asarray(out["valid"])[n:].any()
  # instances lie inside the union of kept fragments
  fmask = np.asarray(out["fragment_mask"])
  assert not (labels > 0)[~fmask].any()
  # the padded fragment list: components of whole clusters, in raster order, covering the union exactly
  from skimage import measure
  ids = np.asarray(out["cluster_ids"])
  frags = {k: np.asarray(v) for k, v in out["fragments"].items()}
  roots = frags["root"][frags["valid"]]
  assert len(roots) > 0 and np.all(np.diff(roots) > 0) and not frags["valid"][len(roots):].any()
  covered = np.zeros(ids.shape, bool)
  for root, area, bbox in zip(roots, frags["area"], frags["bbox"]):
    r, c = divmod(int(root), ids.shape[1])
    comp = measure.label(ids == ids[r, c], connectivity=1)
    comp = comp == comp[r, c]
    rr, cc = np.nonzero(comp)
    assert (rr[0], cc[0]) == (r, c) and area == comp.sum()
    assert tuple(bbox) == (rr.min(), cc.min(), rr.max() + 1, cc.max() + 1)
    covered |= comp
  np.testing.assert_array_equal(covered, fmask)


@settings(max_examples=6, deadline=None)  # each example compiles new shapes
@given(scenes(activation=st.sampled_from(["planted", "loose"])), st.booleans(), st.sampled_from([4, 8]),
       st.integers(5, 20))
def test_configured_variants_match_reference(scene, count_bg, connectivity, top_k):
  feat, act = scene
  config = configs.reference()
  d = config.discover
  d.count_background_in_top_k = count_bg
  d.connectivity = connectivity
  d.top_k_clusters = top_k
  d.min_instance_cells = 30
  d.min_activated_fraction = 0.5
  labels = np.asarray(zipjax.discover(feat, act, config))
  ref_labels, _ = ref.discover_reference(
      feat, act, top_k=top_k, count_background_in_top_k=count_bg, min_activated_fraction=0.5,
      min_instance_cells=30, connectivity=1 if connectivity == 4 else 2)
  np.testing.assert_array_equal(labels, ref_labels)


@settings(max_examples=8, deadline=None)
@given(scenes(activation=st.sampled_from(["planted", "loose", "full", "empty"])))
def test_zip_preset_is_the_reference_algorithm_from_semantic_seeds(scene):
  feat, act = scene
  config = configs.zip()
  d = config.discover
  h, w, c = feat.shape
  x = feat.reshape(h * w, c)  # [h*w, C]
  init, valid = km.semantic_init(jnp.asarray(x), jnp.asarray(act.reshape(-1)), d.num_clusters,
                                 min_foreground_clusters=d.semantic.min_foreground_clusters,
                                 cells_per_cluster=d.semantic.cells_per_cluster,
                                 background_clusters=d.semantic.background_clusters)
  k_eff = int(np.asarray(valid).sum())
  assert np.asarray(valid)[:k_eff].all()
  ids, _ = ref.kmeans_numpy(x, None, k_eff, init=np.asarray(init)[:k_eff])
  ref_labels = ref.select_and_build(ids.reshape(h, w) + 1, act, top_k=d.top_k_clusters,
                                    count_background_in_top_k=False)
  out = zipjax.discover_instances(feat, act, config)
  np.testing.assert_array_equal(np.asarray(out["cluster_ids"]), ids.reshape(h, w) + 1)
  np.testing.assert_array_equal(np.asarray(out["labels"]), ref_labels)


def test_candidate_clusters_follow_counter_most_common():
  from collections import Counter
  rng = np.random.default_rng(0)
  p = configs.Discover.from_config(configs.reference())
  for trial in range(30):
    ids = rng.integers(1, 21, (12, 15))
    act = rng.random((12, 15)) < rng.random()
    for count_bg, top_k in ((True, 20), (True, 5), (False, 20), (False, 3)):
      q = dataclasses.replace(p, count_background_in_top_k=count_bg, top_k_clusters=top_k)
      got = np.nonzero(np.asarray(disc.candidate_clusters(jnp.asarray(ids), jnp.asarray(act), q)))[0]
      counter = Counter((ids * act).flatten().tolist())
      if not count_bg:
        counter.pop(0, None)
      want = sorted(v for v, _ in counter.most_common(top_k) if v != 0)
      np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")


def test_batched_sharded_equals_single_image():
  devices = np.array(jax.devices()[:8])
  assert len(devices) == 8
  mesh = Mesh(devices, ("data",))
  rng = np.random.default_rng(7)
  feats, acts = [], []
  for b in range(8):
    f, a = ref.synthetic_scene(rng, h=40, w=48, c=8, n_objects=3, noise=0.02)
    f2, a2 = ref.synthetic_scene(rng, h=40, w=48, c=8, n_objects=2, activation="loose")
    feats.append(f)
    acts.append(np.stack([a, a2]))  # class 2 uses another scene's activation on this image
  feats, acts = np.stack(feats), np.stack(acts)  # [8, h, w, C], [8, 2, h, w]
  for config in (configs.reference(), configs.zip()):
    f_sh = jax.device_put(feats, NamedSharding(mesh, P("data")))
    a_sh = jax.device_put(acts, NamedSharding(mesh, P("data")))
    fn = jax.jit(disc.discover_batch_fn(config), out_shardings=NamedSharding(mesh, P("data")))
    out = fn(f_sh, a_sh)
    assert out.shape == (8, 2, 40, 48) and out.sharding.spec == P("data")
    out = np.asarray(out)
    np.testing.assert_array_equal(out, np.asarray(zipjax.discover_batch(feats, acts, config)))
    total = 0
    for b in range(8):
      for k in range(2):
        single = np.asarray(zipjax.discover(feats[b], acts[b, k], config))
        np.testing.assert_array_equal(out[b, k], single)
        total += single.max()
    assert total > 0


def test_slots_discover_only_the_counted_classes():
  """`discover_slots_fn`: the first count[b] slots equal single-image discovery, the rest are 0."""
  rng = np.random.default_rng(11)
  feats, acts = [], []
  for _ in range(3):
    f, a = ref.synthetic_scene(rng, h=32, w=40, c=8, n_objects=3, noise=0.02)
    _, a2 = ref.synthetic_scene(rng, h=32, w=40, c=8, n_objects=2, activation="loose")
    feats.append(f)
    acts.append(np.stack([a, a2, a]))
  feats, acts = np.stack(feats), np.stack(acts)  # [3, h, w, C], [3, 3, h, w]
  count = np.array([2, 0, 1], np.int32)
  for config in (configs.reference(), configs.zip()):
    out = np.asarray(jax.jit(disc.discover_slots_fn(config))(feats, acts, count))
    assert out.shape == (3, 3, 32, 40)
    total = 0
    for b in range(3):
      for k in range(3):
        want = np.asarray(zipjax.discover(feats[b], acts[b, k], config)) if k < count[b] else 0
        np.testing.assert_array_equal(out[b, k], want)
        total += np.max(want)
    assert total > 0


def test_config_forms_and_files():
  from configs import reference as ref_file, zip as zip_file
  assert ref_file.get_config() == configs.reference()
  assert zip_file.get_config() == configs.zip()
  full = configs.Discover.from_config(configs.reference())
  assert configs.Discover.from_config(configs.reference().discover) == full == configs.Discover.from_config(None)
  assert full == configs.Discover()  # the typed group's defaults are the reference preset's
  z = configs.Discover.from_config(configs.zip())
  assert z.init == "semantic" and not z.count_background_in_top_k and z.semantic.background_clusters == 6
  bad = configs.reference()
  bad.discover.init = "random"
  with pytest.raises(InputError, match="discover.init = 'random': must be one of 'linspace', 'semantic'"):
    configs.Discover.from_config(bad)
  bad = configs.zip()
  bad.discover.semantic.background_clusters = 24
  with pytest.raises(InputError, match="background_clusters = 24 must be smaller than discover.num_clusters = 24"):
    disc.discover(np.zeros((8, 8, 4), np.float32), np.zeros((8, 8), bool), bad)


def test_input_errors():
  f = np.zeros((8, 9, 4), np.float32)
  with pytest.raises(InputError):
    zipjax.discover(f, np.zeros((8, 8), bool))
  with pytest.raises(InputError):
    zipjax.discover(f[0], np.zeros((9,), bool))
  with pytest.raises(InputError):
    zipjax.discover(np.zeros((4, 4, 2), np.float32), np.zeros((4, 4), bool))  # 16 cells < K = 20
  with pytest.raises(InputError):
    zipjax.discover_batch(np.zeros((2, 8, 9, 4), np.float32), np.zeros((3, 1, 8, 9), bool))


def test_activation_from_similarity_matches_torch_nearest():
  import torch
  import torch.nn.functional as F
  rng = np.random.default_rng(0)
  sim = rng.random((2, 61, 83)).astype(np.float32)
  got = np.asarray(disc.activation_from_similarity(sim, (17, 23)))
  for k in range(2):
    t = np.mean(sim[k]) * np.float32(0.7)
    small = F.interpolate(torch.tensor(sim[k])[None, None], size=(17, 23), mode="nearest")[0, 0].numpy()
    np.testing.assert_array_equal(got[k], small > t)


def test_oracle_grid_boxes_to_image():
  """The box scaling of the host oracle (tests/reference/zip_host.py), with and without the released quirk."""
  b = np.array([[2, 3, 10, 12]])  # rows 2..10, cols 3..12 on a 16 x 20 grid; image 480 x 640
  swapped = zip_host.grid_boxes_to_image(b, (16, 20), (480, 640), swap_box_scale=True)
  np.testing.assert_allclose(swapped, [[3 * 480 / 16, 2 * 640 / 20, 12 * 480 / 16, 10 * 640 / 20]])
  fixed = zip_host.grid_boxes_to_image(b, (16, 20), (480, 640), swap_box_scale=False)  # the zip preset
  np.testing.assert_allclose(fixed, [[3 * 640 / 20, 2 * 480 / 16, 12 * 640 / 20, 10 * 480 / 16]])
