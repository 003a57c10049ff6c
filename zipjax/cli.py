"""`zipjax` / `python -m zipjax` entry point. Each subcommand lives in zipjax/commands/<name>.py and defines
`add_parser(subparsers)` and `run(args) -> int`.

Exit status (every subcommand):

- 0: success (for `zipjax segment`: at least one image was segmented; skipped files are listed in errors.json);
- 1: nothing could be processed (e.g. every input of `zipjax segment` was missing or bad), or a runtime
  failure (an unexpected exception, printed with its traceback);
- 2: a usage or input error (bad arguments, a bad config value, an unusable `--out`, a bad ground-truth or
  prediction file, an unreadable checkpoint), printed as one line `zipjax CMD: error: ...`;
- 130: interrupted (Ctrl-C), printed as one line `zipjax CMD: interrupted`;
- 141: the reader of stdout went away (`zipjax gallery ... | head`): no message, no traceback.

Messages go to stderr; stdout and stderr print file names that are not valid in their encoding with
backslash escapes instead of failing (`zipjax.io.paths.display`).
"""
from __future__ import annotations

import _thread
import argparse
import importlib
import os
import sys
import threading

from zipjax.errors import ZipjaxError

# subcommand name -> module under zipjax.commands
COMMANDS = {
    "convert": "convert",
    "embed": "embed",
    "eval": "eval",
    "gallery": "gallery",
    "label": "label",
    "segment": "segment",
    "train": "train",
    "detect": "detect",
    "self-train": "self_train",
    "weights": "weights",
}

EXIT_OK = 0
EXIT_FAILURE = 1      # nothing could be processed, or a runtime failure
EXIT_USAGE = 2        # usage / input error (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away (`zipjax ... | head`)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="zipjax", description=__doc__.splitlines()[0],
                                   epilog="exit status: 0 ok, 1 nothing processed or runtime failure, "
                                          "2 usage or input error, 130 interrupted")
  sub = parser.add_subparsers(dest="command", required=True)
  for name, mod in COMMANDS.items():
    module = importlib.import_module(f"zipjax.commands.{mod}")
    p = module.add_parser(sub)
    p.set_defaults(_run=module.run)
  return parser


def _tolerant_streams() -> None:
  """Characters stdout / stderr cannot encode (e.g. surrogate-escaped bytes of a non-UTF-8 file name under
  `PYTHONIOENCODING=utf-8:strict`) are written as backslash escapes instead of raising."""
  for stream in (sys.stdout, sys.stderr):
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
      try:
        reconfigure(errors="backslashreplace")
      except (ValueError, OSError, TypeError):  # a detached or exotic stream: leave it as it is
        pass


class _RedeliverSwallowedInterrupts:
  """Python drops an exception raised inside a garbage-collector callback or a `__del__` (it prints "Exception
  ignored in ..." through `sys.unraisablehook`). A Ctrl-C whose KeyboardInterrupt lands there (e.g. in jax's
  `_xla_gc_callback`) would be lost and the command would run on. While active, such a KeyboardInterrupt is
  delivered again to the main thread (`_thread.interrupt_main`, from a timer thread a moment later: raised inside
  the hook it would be dropped again; landing in such a callback again, it is delivered again). One still
  pending when the block ends is raised there. main's handler turns it into exit 130."""

  def __enter__(self):
    self._previous = sys.unraisablehook
    self._lock = threading.Lock()
    self._active, self._pending = True, []

    def deliver(timer):
      with self._lock:
        if self._active:
          self._pending.remove(timer)
          _thread.interrupt_main()

    def hook(unraisable):
      if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        timer = threading.Timer(0.05, lambda: deliver(timer))
        timer.daemon = True
        with self._lock:
          self._pending.append(timer)
        timer.start()
        return
      self._previous(unraisable)

    sys.unraisablehook = hook
    return self

  def __exit__(self, exc_type, exc, tb):
    sys.unraisablehook = self._previous
    with self._lock:
      self._active = False
      pending, self._pending = self._pending, []
    for timer in pending:
      timer.cancel()
    if pending and exc_type is None:
      raise KeyboardInterrupt
    return False


def _silence_stdout() -> None:
  """After a broken pipe: stdout goes to /dev/null, so that flushing it at exit prints nothing."""
  try:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
  except (OSError, ValueError):
    pass


def main(argv=None) -> int:
  _tolerant_streams()
  command = "?"
  try:
    with _RedeliverSwallowedInterrupts():
      parser = build_parser()
      args, extra = parser.parse_known_args(argv)
      command = args.command
      if extra:  # only commands that declare ACCEPTS_CONFIG_OVERRIDES take `--config.key=value` items
        module = importlib.import_module(f"zipjax.commands.{COMMANDS[args.command]}")
        if not getattr(module, "ACCEPTS_CONFIG_OVERRIDES", False) or not all(
            a.startswith("--config.") or not a.startswith("-") for a in extra):
          parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.config_overrides = extra
      rc = int(args._run(args) or 0)
      sys.stdout.flush()  # a closed pipe (`| head`) shows here, where it is handled, not at interpreter exit
      return rc
  except BrokenPipeError:
    _silence_stdout()
    return EXIT_BROKEN_PIPE
  except ZipjaxError as e:
    print(f"zipjax {command}: error: {e}", file=sys.stderr)
    return EXIT_USAGE
  except KeyboardInterrupt:
    print(f"\nzipjax {command}: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED
