"""zipjax.io.lock: a second holder is refused with a clear error, killed holders' locks are taken over (flock and
lock-file modes), several processes of one machine see each other's locks."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from zipjax.io import lock as lock_lib
from zipjax.io.lock import DirLock, LockedError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _dead_pid() -> int:
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def test_second_holder_refused_then_free_after_release(tmp_path):
  path = tmp_path / ".zipjax" / "lock"
  a = DirLock(path, "zipjax label").acquire()
  assert a.mode == "flock" and a.stale is None
  holder = json.loads(path.read_text())
  assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
  with pytest.raises(LockedError, match=rf"in use by zipjax label \(pid {os.getpid()} on"):
    DirLock(path).acquire()
  a.release()
  assert not path.exists()
  with DirLock(path) as b:
    assert b.stale is None
  assert not path.exists()


def test_lock_held_by_another_process_and_taken_over_after_sigkill(tmp_path):
  path = tmp_path / "lock"
  code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from zipjax.io.lock import DirLock; "
          "DirLock(sys.argv[1], 'holder').acquire(); print('locked', flush=True); time.sleep(60)")
  p = subprocess.Popen([sys.executable, "-c", code, str(path), ROOT], stdout=subprocess.PIPE, text=True)
  try:
    assert p.stdout.readline().strip() == "locked"
    with pytest.raises(LockedError, match=f"pid {p.pid}"):
      DirLock(path).acquire()
  finally:
    p.kill()
    p.wait()
  lk = DirLock(path).acquire()  # the kernel dropped the dead holder's flock; its line is reported as stale
  assert lk.stale["pid"] == p.pid and lk.stale["command"] == "holder"
  lk.release()


def test_file_mode_stale_pid_taken_over_live_pid_refused(tmp_path, monkeypatch):
  path = tmp_path / "lock"
  monkeypatch.setattr(DirLock, "_acquire_flock", lambda self, fcntl: False)  # a filesystem without flock
  dead = {"host": socket.gethostname(), "pid": _dead_pid(), "started": time.time(), "boot": lock_lib._boot_id()}
  path.write_text(json.dumps(dead) + "\n")
  lk = DirLock(path).acquire()
  assert lk.mode == "file" and lk.stale["pid"] == dead["pid"]
  assert json.loads(path.read_text())["pid"] == os.getpid()
  with pytest.raises(LockedError):  # held by a live pid (ours)
    DirLock(path).acquire()
  lk.release()
  assert not path.exists()
  other = {"host": "some-other-host", "pid": 1, "started": time.time()}
  path.write_text(json.dumps(other))
  with pytest.raises(LockedError, match="some-other-host.*remove"):  # another host's holder is trusted
    DirLock(path).acquire()
  rebooted = dict(dead, pid=os.getppid(), boot="an-older-boot")  # a live pid, but from before a reboot
  path.write_text(json.dumps(rebooted))
  with DirLock(path) as lk:
    assert lk.stale["boot"] == "an-older-boot"


def test_pid_alive():
  assert lock_lib.pid_alive(os.getpid())
  assert not lock_lib.pid_alive(_dead_pid())
  assert not lock_lib.pid_alive(0)
