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
  args = build_parser().parse_args(argv)
  try:
    return int(args._run(args) or 0)
  except ZipjaxError as e:
    print(f"zipjax {args.command}: error: {e}", file=sys.stderr)
    return 2
