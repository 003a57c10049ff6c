"""`python tests/commands/detect_runner.py detect ARGS...`: `zipjax detect` (the real CLI, run loop and writer) with
a fast deterministic stand-in for the trained detector (tests/jobs/fake_engine.expected_instances; checkpoint
step 6), for tests that kill or race whole runs. ZIPJAX_FAKE_SLEEP=seconds makes every batch that slow; the
workdir needs only a config.json."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.jobs import fake_engine  # noqa: E402
from zipjax import cli  # noqa: E402
from zipjax.commands import detect  # noqa: E402


class FakeDetector:
  batch_size = 2

  def __init__(self, names):
    self.names = list(names)
    self.timings = {"detect": 0.0}

  def segment(self, images):
    time.sleep(float(os.environ.get("ZIPJAX_FAKE_SLEEP", "0")))
    return [{"instances": fake_engine.expected_instances(im, len(self.names))} for im in images]


def install():
  detect.checkpoint_step = lambda workdir: 6
  detect.build_detector = lambda config, workdir, step, names: FakeDetector(names)


if __name__ == "__main__":
  install()
  sys.exit(cli.main(sys.argv[1:]))
