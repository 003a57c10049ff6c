"""`python tests/jobs/label_runner.py label ARGS...`: the real `zipjax label` CLI, job and writer with the fake engine
of tests/jobs/fake_engine.py (instant, deterministic), for tests that kill whole runs many times."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.jobs import fake_engine  # noqa: E402
from zipjax import cli  # noqa: E402
from zipjax.jobs import label as label_job  # noqa: E402

label_job.default_engine = fake_engine.factory(local_batch=int(os.environ.get("ZIPJAX_FAKE_BATCH", "2")))

if __name__ == "__main__":
  sys.exit(cli.main(sys.argv[1:]))
