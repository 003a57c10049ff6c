"""`zipjax convert FAMILY SRC DST [--format dir|safetensors]`: a checkpoint (PyTorch file, safetensors file or
sharded `*.safetensors.index.json`; OpenAI / open_clip / transformers layouts, detected and named) -> a
converted directory or safetensors file (no torch needed to load it)."""
from __future__ import annotations

from zipjax.convert import CONVERTERS, get_converter
from zipjax.convert.store import FORMATS


def add_parser(sub):
  p = sub.add_parser("convert", help="convert a PyTorch checkpoint to a zipjax directory",
                     description=__doc__)
  p.add_argument("family", choices=sorted(CONVERTERS), help="model family")
  p.add_argument("src", help="checkpoint: .pt/.pth/.bin (TorchScript archive or state dict), .safetensors, or "
                 "*.safetensors.index.json")
  p.add_argument("dst", help="output directory, or file with --format safetensors (written atomically)")
  p.add_argument("--format", dest="fmt", choices=FORMATS, default="dir",
                 help="dir: config.json + params.npz (default); safetensors: one .safetensors file")
  return p


def run(args) -> int:
  from zipjax.io.outdir import check_output_parent  # pylint: disable=import-outside-toplevel
  from zipjax.convert.store import check_destination  # pylint: disable=import-outside-toplevel
  check_output_parent(args.dst, "DST", file_ok=args.fmt == "safetensors")  # before the (possibly slow) checkpoint read
  check_destination(args.dst, args.family)
  dst, summary = get_converter(args.family)(args.src, args.dst, fmt=args.fmt)
  print(f"converted {args.src} -> {dst}: {summary}")
  return 0
