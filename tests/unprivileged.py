"""Running a snippet as an unprivileged user, for permission tests (root ignores permission bits).

`run_unprivileged(code)` runs `python -c code` with this worktree's zipjax as uid/gid 65534 (nobody) when the
tests run as root, or as the current user otherwise. `shared_tmp()` makes a folder that user can enter
(pytest's tmp_path is private to its owner); the caller removes it.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = 65534


def shared_tmp() -> str:
  path = tempfile.mkdtemp(prefix="zipjax-perm-")
  os.chmod(path, 0o777)
  return path


def run_unprivileged(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
  """As root, util-linux `setpriv` switches to uid/gid 65534 (no groups, no capabilities left after exec)."""
  cmd = [sys.executable, "-c", "import os\nassert os.geteuid() != 0, 'still root'\n" + code]
  if os.geteuid() == 0:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
      pytest.skip("running as root without setpriv: cannot test as an unprivileged user")
    cmd = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] + cmd
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="", HOME="/tmp")
  return subprocess.run(cmd, cwd="/", env=env, capture_output=True, text=True, timeout=timeout)
