"""Output-directory lock: one zipjax run per output directory at a time; locks of killed runs are taken over.

`DirLock(path)` guards a lock file (e.g. `OUT/.zipjax/lock`). The file holds one JSON line naming its holder
`{host, pid, started, boot, command}`; `acquire()` raises `LockedError` (an `InputError`, so the CLI prints
`zipjax <cmd>: error: ...` and exits 2) when a live run holds it.

Two mechanisms, chosen by where the directory lives:

- local filesystems: `fcntl.flock` on the lock file. The kernel drops the lock when its process dies however
  it dies (SIGKILL included), so a killed run never blocks the next one; the holder line left behind by a dead
  run is reported as a stale lock taken over (`DirLock.stale`). After taking the lock the holder checks that
  the file it locked is still the one at the path (a releasing holder unlinks it), and retries otherwise.
- directories where flock is unavailable (buckets, filesystems that refuse it): the holder line itself is the
  lock, created exclusively. A holder on this host whose pid is gone (or whose boot id differs: the machine
  rebooted) is stale and its lock is taken over; a holder on another host is trusted until its file is
  removed (the error says which file to remove). In a bucket the create is check-then-write, so the guard is
  best effort there.

In a multi-process run only process 0 takes the lock (the job broadcasts the outcome), so several processes
of one run on one machine share the directory while a second run is refused.
"""
from __future__ import annotations

import json
import os
import socket
import time

try:
  import fcntl
except ImportError:  # not a POSIX system: the file mode only
  fcntl = None

from zipjax.errors import InputError
from zipjax.io import fs


class LockedError(InputError):
  """The directory is locked by another live run."""


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
      return f.read().strip()
  except OSError:
    return ""


def pid_alive(pid: int) -> bool:
  """Whether a process with this pid exists on this host (zombies count as dead)."""
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by someone else
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
      return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
  except OSError:
    return True


def describe(holder: dict | None) -> str:
  if not holder:
    return "an unknown process"
  when = holder.get("started")
  stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else "?"
  return (f"{holder.get('command') or 'zipjax'} (pid {holder.get('pid')} on {holder.get('host')}, "
          f"started {stamp})")


def _parse(data: bytes) -> dict | None:
  try:
    holder = json.loads(data.decode("utf-8").strip() or "null")
  except (UnicodeDecodeError, ValueError):
    return None
  return holder if isinstance(holder, dict) else None


class DirLock:
  """An exclusive lock on a directory, held through the lock file at `path`.

  Attributes:
    path: the lock file.
    command: what the holder runs (shown to a refused run).
    stale: the holder line of a dead run whose lock was taken over by `acquire()`, else None.
    mode: 'flock' or 'file' (see the module docstring), set by `acquire()`.
  """

  def __init__(self, path, command: str = "zipjax"):
    self.path = os.fspath(path)
    self.command = command
    self.stale: dict | None = None
    self.mode: str | None = None
    self._fd: int | None = None
    self._held = False

  def _me(self) -> bytes:
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": round(time.time(), 3), "boot": _boot_id(),
          "command": self.command}
    return (json.dumps(me) + "\n").encode("utf-8")

  def _refuse(self, holder):
    raise LockedError(f"{os.path.dirname(self.path) or '.'} is in use by {describe(holder)}: wait for it to "
                      f"finish or use another output directory (if no such run is alive, remove {self.path})")

  # ------------------------------------------------------------------------------------------------ acquire
  def acquire(self) -> "DirLock":
    """Takes the lock or raises `LockedError`; a dead holder's lock is taken over (see `stale`)."""
    if self._held:
      return self
    parent = os.path.dirname(self.path)
    if parent:
      fs.makedirs(parent)
    if fs.is_local(self.path):
      if fcntl is not None and self._acquire_flock(fcntl):
        return self
    self._acquire_file()
    return self

  def _acquire_flock(self, fcntl) -> bool:
    """True when locked; False when this filesystem refuses flock (the caller falls back to the file mode)."""
    for _ in range(100):
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _parse(os.pread(fd, 4096, 0))
        os.close(fd)
        self._refuse(holder)
      except OSError:
        os.close(fd)
        return False
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if not same:  # the previous holder unlinked the file between our open and flock: lock the new one
        os.close(fd)
        continue
      old = os.pread(fd, 4096, 0)
      self.stale = _parse(old) if old.strip() else None
      me = self._me()
      os.ftruncate(fd, 0)
      os.pwrite(fd, me, 0)
      os.fsync(fd)
      self._fd, self._held, self.mode = fd, True, "flock"
      return True
    raise LockedError(f"{self.path}: cannot take the lock (the file keeps being replaced)")

  def _acquire_file(self) -> None:
    me = self._me()
    for _ in range(3):
      if self._create_exclusive(me):
        self._held, self.mode = True, "file"
        return
      try:
        holder = _parse(fs.read_bytes(self.path))
      except FileNotFoundError:
        continue  # released meanwhile
      if not self._is_stale(holder):
        self._refuse(holder)
      # take over: move the stale file aside first, so that of two runs taking over only one wins the create
      aside = f"{self.path}.stale-{os.getpid()}"
      try:
        fs.move(self.path, aside)
      except FileNotFoundError:
        continue
      fs.remove(aside)
      self.stale = holder
    self._refuse(None)

  def _create_exclusive(self, data: bytes) -> bool:
    if fs.is_local(self.path):
      try:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        return False
      try:
        os.write(fd, data)
        os.fsync(fd)
      finally:
        os.close(fd)
      return True
    if fs.exists(self.path):
      return False
    fs.write_bytes(self.path, data)
    return True

  @staticmethod
  def _is_stale(holder: dict | None) -> bool:
    if holder is None:
      return True  # empty or unreadable: a holder killed while writing its line
    if holder.get("host") != socket.gethostname():
      return False
    if holder.get("boot") and _boot_id() and holder["boot"] != _boot_id():
      return True  # written before this machine rebooted
    return not pid_alive(int(holder.get("pid") or 0))

  # ------------------------------------------------------------------------------------------------ release
  def release(self) -> None:
    if not self._held:
      return
    self._held = False
    if self.mode == "flock":
      try:
        os.unlink(self.path)  # while still holding the flock: a waiter re-checks the inode and retries
      except FileNotFoundError:
        pass
      os.close(self._fd)
      self._fd = None
    else:
      fs.remove(self.path)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False


__all__ = ["DirLock", "LockedError", "pid_alive"]
