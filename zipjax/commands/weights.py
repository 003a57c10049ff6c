"""`zipjax weights list | download NAME... | verify [NAME...]`: the models of checkpoints/manifest.json.

`list`: each model, where it comes from (original URL, Hub repositories), whether it is downloaded / in the
Hugging Face cache / converted, and the size of what is cached. `download`: fetches (with progress bars,
verifying the manifest's sha256) and converts each NAME (manifest names or hf:ORG/REPO[@REVISION] with
--family), reporting each and going on after a failure. `verify`: sha256 of what is cached.
"""
from __future__ import annotations

import json
import sys

from zipjax import weights
from zipjax.errors import CheckpointError


def add_parser(sub):
  p = sub.add_parser("weights", help="list, download or verify the models of the manifest", description=__doc__)
  ws = p.add_subparsers(dest="action", required=True)
  ls = ws.add_parser("list", help="each model: sources, cached or not, size")
  ls.add_argument("--json", action="store_true", help="one JSON object per line")
  dl = ws.add_parser("download", help="download (verified) and convert models into the cache")
  dl.add_argument("names", nargs="*", metavar="NAME", help="manifest names or hf:ORG/REPO[@REVISION]")
  dl.add_argument("--all", action="store_true", help="every model of the manifest")
  dl.add_argument("--preset", choices=("reference", "zip"), help="the models that preset's config names")
  dl.add_argument("--config", metavar="FILE", help="the models a config file (get_config()) names")
  dl.add_argument("--family", choices=("clip", "sam", "sam2"),
                  help="model family of hf: names (default: from the name: 'sam2' when it contains 'sam2', "
                       "'sam' when it contains 'sam', else clip)")
  vf = ws.add_parser("verify", help="sha256 of the cached files")
  vf.add_argument("names", nargs="*", metavar="NAME", help="manifest names (default: all)")
  return p


def config_models(config) -> list[tuple[str, str]]:
  """(checkpoint name, family) of the models a pipeline config uses (SAM only when enabled)."""
  m = config.models
  need = [(str(m.semantic.checkpoint), "clip"), (str(m.boundary.checkpoint), "clip")]
  if config.sam.enabled:
    need.append((str(m.sam.checkpoint), str(config.sam.get("family", "sam"))))
  return need


def hub_family(name: str) -> str:
  """The family of an hf: name without --family: 'sam2' / 'sam' when its name says so, else 'clip'."""
  low = name.lower()
  return "sam2" if "sam2" in low else "sam" if "sam" in low else "clip"


def _entries(names):
  if not names:
    return weights.manifest()
  return [weights.lookup(n) for n in names]


def _mb(n: int) -> str:
  return f"{n / 1e6:.0f} MB" if n else "-"


def run(args) -> int:
  if args.action == "list":
    for e in weights.manifest():
      st = weights.status(e)
      if args.json:
        print(json.dumps(st, sort_keys=True))
        continue
      where = ("converted" if st["converted"] else "downloaded" if st["downloaded"] else
               "in the Hugging Face cache" if st["hub_cached"] else "not cached")
      print(f"{st['name']:<20} {st['family']:<5} {where:<26} {_mb(st['size']):>9}  from {st['url']}"
            + (f" or {', '.join(st['hub'])}" if st["hub"] else ""))
    return 0
  if args.action == "download":
    items = [(e["name"], e["family"]) for e in weights.manifest()] if args.all else \
        [(n, None) for n in args.names]
    if args.preset or args.config:
      from zipjax import configs  # pylint: disable=import-outside-toplevel
      from zipjax.commands.common import load_config_file  # pylint: disable=import-outside-toplevel
      items += config_models(load_config_file(args.config) if args.config else configs.get_preset(args.preset))
    if not items:
      raise CheckpointError("weights download: name at least one model (or --all, --preset, --config); see "
                            "`zipjax weights list`")
    failed = 0
    for name, family in items:
      try:
        if family is None:
          family = args.family or hub_family(name) if weights.is_hub_name(name) else weights.lookup(name)["family"]
        out = weights.resolve(name, family)
        print(f"{name}: {out}")
      except CheckpointError as e:
        failed += 1
        print(f"{name}: error: {e}", file=sys.stderr)
    return 1 if failed else 0
  # verify
  bad = 0
  for e in _entries(args.names):
    checks = weights.verify(e)
    if not checks:
      print(f"{e['name']}: nothing cached")
    for path, state, detail in checks:
      bad += state == "MISMATCH"
      print(f"{e['name']}: {state}: {path} ({detail})")
  return 1 if bad else 0
