"""`python tests/commands/segment_runner.py segment ARGS...`: `zipjax segment` (the real CLI and writer) with a fast
deterministic stand-in for the models (tests/jobs/fake_engine.expected_instances), for tests that kill or race
whole runs. ZIPJAX_FAKE_SLEEP=seconds makes every batch that slow."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.jobs import fake_engine  # noqa: E402
from zipjax import cli  # noqa: E402
from zipjax.commands import segment as segment_cmd  # noqa: E402


class FakeEngine:
  def __init__(self, names):
    self.timings = {"fake": 0.0}
    self.names = list(names)

  def segment(self, images):
    time.sleep(float(os.environ.get("ZIPJAX_FAKE_SLEEP", "0")))
    return [{"instances": fake_engine.expected_instances(im, len(self.names)), "probs": None} for im in images]


segment_cmd.build_engine = lambda config, names, random_init=False: FakeEngine(names)

if __name__ == "__main__":
  sys.exit(cli.main(sys.argv[1:]))
