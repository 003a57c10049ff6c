"""`python tests/jobs/label_runner.py label ARGS...`: the real `zipjax label` CLI, job and writer with the fake engine
of tests/jobs/fake_engine.py (instant, deterministic), for tests that kill whole runs many times.

`ZIPJAX_TEST_TORN_SHARD=<n>`: the n-th file opened for writing in a `.zipjax/shards/` folder with `.jsonl` in its
name gets the first half of the first bytes written to it (flushed and fsynced), then the process SIGKILLs
itself: a kill in the middle of writing a shard. The hook sits under every way Python opens a file
(`builtins.open`, `io.open`, hence `os.fdopen` and `pathlib`), not in zipjax, so it tears whatever writer
zipjax uses: an atomic writer tears its temporary file, a plain `open(final, "wb")` the shard itself.
"""
import builtins
import io
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.jobs import fake_engine  # noqa: E402
from zipjax import cli  # noqa: E402
from zipjax.jobs import label as label_job  # noqa: E402

label_job.default_engine = fake_engine.factory(local_batch=int(os.environ.get("ZIPJAX_FAKE_BATCH", "2")))


def _is_shard_file(file) -> bool:
  try:
    path = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else os.path.abspath(os.fspath(file))
  except (OSError, TypeError):
    return False
  parent = os.path.dirname(path)
  return (os.path.basename(parent) == "shards" and os.path.basename(os.path.dirname(parent)) == ".zipjax"
          and ".jsonl" in os.path.basename(path))


class _TornFile:
  """A file whose first write stops halfway: half the bytes reach the disk, then SIGKILL."""

  def __init__(self, f):
    self._f = f

  def write(self, data):
    self._f.write(data[:len(data) // 2])
    self._f.flush()
    os.fsync(self._f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

  def __getattr__(self, name):
    return getattr(self._f, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return self._f.__exit__(*exc)


def tear_shard_write(nth: int) -> None:
  real_open, count = io.open, [0]

  def open_(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    if any(c in mode for c in "wax+") and _is_shard_file(file):
      count[0] += 1
      if count[0] == nth:
        return _TornFile(f)
    return f

  io.open = builtins.open = open_


if os.environ.get("ZIPJAX_TEST_TORN_SHARD"):
  tear_shard_write(int(os.environ["ZIPJAX_TEST_TORN_SHARD"]))

if __name__ == "__main__":
  sys.exit(cli.main(sys.argv[1:]))
