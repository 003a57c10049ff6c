"""`zipjax` / `python -m zipjax` entry point. Each subcommand lives in zipjax/commands/<name>.py and defines
`add_parser(subparsers)` and `run(args) -> int`."""
from __future__ import annotations

import argparse
import importlib
import sys

from zipjax.errors import ZipjaxError

# subcommand name -> module under zipjax.commands
COMMANDS = {
    "convert": "convert",
    "embed": "embed",
    "eval": "eval",
    "label": "label",
    "segment": "segment",
    "train": "train",
    "detect": "detect",
    "self-train": "self_train",
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="zipjax", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  for name, mod in COMMANDS.items():
    module = importlib.import_module(f"zipjax.commands.{mod}")
    p = module.add_parser(sub)
    p.set_defaults(_run=module.run)
  return parser


def main(argv=None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if extra:  # only commands that declare ACCEPTS_CONFIG_OVERRIDES take `--config.key=value` items
    module = importlib.import_module(f"zipjax.commands.{COMMANDS[args.command]}")
    if not getattr(module, "ACCEPTS_CONFIG_OVERRIDES", False) or not all(
        a.startswith("--config.") or not a.startswith("-") for a in extra):
      parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.config_overrides = extra
  try:
    return int(args._run(args) or 0)
  except ZipjaxError as e:
    print(f"zipjax {args.command}: error: {e}", file=sys.stderr)
    return 2
