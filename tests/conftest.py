"""Test-wide settings: 8 simulated CPU devices and float32 matmuls at highest precision."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402  (after the environment is set)

jax.config.update("jax_default_matmul_precision", "highest")

# `zipjax segment` persists XLA executables in its cache; in-process tests keep jax's global config untouched
# (tests/commands/test_segment.py checks the cache in a subprocess).
os.environ.setdefault("ZIPJAX_XLA_CACHE", "0")

# The quick tier (`bash scripts/test.sh -m quick`, under 3 minutes on 2 cores): the unit tests of the kernels,
# io, data, evaluation, config, gallery and trainer parts; the files below hold no model-family parity, no
# end-to-end CLI runs and no training runs (their slow cases stay slow).
QUICK = (
    "tests/io/test_geometry.py", "tests/io/test_atomic_many.py", "tests/test_manifest.py",
    "tests/train/test_trainer_predict.py", "tests/eval/test_atomic.py", "tests/convert/test_store.py",
    "tests/gallery/test_match.py", "tests/io/test_bucket_paths.py", "tests/commands/test_self_train.py",
    "tests/io/test_lock.py", "tests/io/test_images.py", "tests/commands/test_train.py",
    "tests/io/test_scan_inputs.py", "tests/io/test_outdir.py", "tests/eval/test_inputs.py", "tests/io/test_paths.py",
    "tests/io/test_shards.py", "tests/data/test_self_labels.py", "tests/test_weights.py", "tests/eval/test_bounds.py",
    "tests/data/test_synthetic.py", "tests/io/test_text_cache.py", "tests/gallery/test_source.py",
    "tests/data/test_sources.py", "tests/eval/test_cli.py", "tests/tpu/test_scripts.py",
    "tests/train/test_trainer_parts.py", "tests/eval/test_metrics.py", "tests/pipeline/test_post.py",
    "tests/models/test_tokenizer.py", "tests/tpu/test_train_scripts.py", "tests/test_preprocess.py",
    "tests/test_config_check.py", "tests/parallel/test_parallel.py", "tests/ops/test_nms.py",
    "tests/ops/test_box_ops.py", "tests/gallery/test_build.py", "tests/convert/test_torch_io.py",
    "tests/test_schema.py",
    "tests/convert/test_safetensors.py", "tests/train/test_matcher.py", "tests/ops/test_kmeans.py",
)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
  missing = [f for f in QUICK if not os.path.isfile(os.path.join(_ROOT, f))]
  if missing:  # a renamed or deleted file must leave the list too, or the tier would shrink unseen
    raise RuntimeError(f"tests/conftest.py QUICK names missing files: {missing}")


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  import pytest  # pylint: disable=import-outside-toplevel
  quick = set(QUICK)
  for item in items:
    if os.path.relpath(str(item.fspath), _ROOT) in quick and "slow" not in item.keywords:
      item.add_marker(pytest.mark.quick)
