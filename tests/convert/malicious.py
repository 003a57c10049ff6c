"""Hostile checkpoint files for the tests: each would create its `marker` file if it were ever executed.

- `torchscript_archive(path, marker)`: a scripted module whose TorchScript `__setstate__` calls
  `torch.from_file(marker, True, n)`, which creates (or overwrites) the file: `torch.jit.load` runs it.
- `reduce_pickle(path, marker)`: a plain pickle whose `__reduce__` calls `os.system("touch marker")`.
- `reduce_torch_save(path, marker)`: a `torch.save` zip file whose `__reduce__` calls `builtins.open(marker, "w")`.
- `make_all(folder)`: the three, as {"torchscript" | "system" | "open": path} (markers `folder/MARKER_<kind>`).
- `run_cli(cases, tmp)`: runs `zipjax.cli.main(argv)` for each `(name, argv)` in ONE subprocess (one interpreter
  start for all the commands) -> {name: {"rc", "err"}}; `failures(cases, results, evil)`: the cases that did not
  exit 2 with exactly one error line naming the hostile file and saying it was refused.
- `archive(path, root, storages)`: a torch-style zip archive with a hand-made data.pkl, for corrupt variants.
"""
from __future__ import annotations

import builtins
import collections
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile

import torch


def torchscript_archive(path, marker) -> None:
  target = str(marker)

  class Evil(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.weight = torch.nn.Parameter(torch.ones(2))
      self.target = target

    @torch.jit.export
    def __getstate__(self):
      return (self.weight, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]):
      self.target = state[1]
      self.training = state[2]
      # used, so that the TorchScript compiler keeps the call
      self.weight = state[0] + torch.from_file(self.target, True, 2, dtype=torch.float32)

    def forward(self, x):
      return x * self.weight

  torch.jit.script(Evil()).save(str(path))


class _System:
  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.system, (f"touch '{self.marker}'",))


class _Open:
  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (builtins.open, (self.marker, "w"))


def reduce_pickle(path, marker) -> None:
  with open(path, "wb") as f:
    pickle.dump({"visual.conv1.weight": _System(marker)}, f)


def reduce_torch_save(path, marker) -> None:
  torch.save({"w": torch.zeros(2), "x": _Open(marker)}, str(path))


class StorageRef:
  """A storage in `archive`'s data.pkl: persistent id ('storage', torch.<kind>, key, 'cpu', numel)."""

  def __init__(self, key: str, kind, numel: int):
    self.key, self.kind, self.numel = key, kind, numel


def tensor(storage: StorageRef, offset: int, size: tuple, stride: tuple):
  """A `torch._utils._rebuild_tensor_v2` call on `storage`, as torch pickles tensors."""
  return _Reduce(torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, collections.OrderedDict()))


class _Reduce:
  def __init__(self, fn, args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return (self.fn, self.args)


class _Pickler(pickle.Pickler):
  def persistent_id(self, obj):
    if isinstance(obj, StorageRef):
      return ("storage", obj.kind, obj.key, "cpu", obj.numel)
    return None


def archive(path, root, storages: dict) -> None:
  """A zip archive `name/data.pkl` (pickling `root`) with `name/data/<key>` = bytes, like torch.save's."""
  buf = io.BytesIO()
  _Pickler(buf, protocol=2).dump(root)
  name = os.path.splitext(os.path.basename(str(path)))[0]
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr(f"{name}/data.pkl", buf.getvalue())
    z.writestr(f"{name}/byteorder", "little")
    for key, data in storages.items():
      z.writestr(f"{name}/data/{key}", data)
    z.writestr(f"{name}/version", "3\n")


KINDS = ("torchscript", "system", "open")


def make_all(folder) -> dict:
  evil = {}
  for kind, make in zip(KINDS, (torchscript_archive, reduce_pickle, reduce_torch_save)):
    evil[kind] = folder / f"evil_{kind}.pt"
    make(evil[kind], folder / f"MARKER_{kind}")
  return evil


def markers(folder) -> list:
  return sorted(p.name for p in folder.iterdir() if p.name.startswith("MARKER"))


_DRIVER = r"""
import contextlib, io, json, sys, traceback
from zipjax import cli
cases = json.load(open(sys.argv[1]))
out = {}
for name, argv in cases:
  err, std = io.StringIO(), io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
    try:
      rc = cli.main(argv)
    except BaseException as e:  # a traceback the CLI let through
      rc = repr(e)
      err.write(traceback.format_exc())
  out[name] = {"rc": rc, "err": err.getvalue()}
json.dump(out, open(sys.argv[2], "w"))
"""


def run_cli(cases: list, tmp) -> dict:
  (tmp / "cases.json").write_text(json.dumps(cases))
  env = dict(os.environ, JAX_PLATFORMS="cpu", ZIPJAX_OFFLINE="1", ZIPJAX_XLA_CACHE="0",
             ZIPJAX_CACHE=str(tmp / "cache"), XLA_FLAGS="")
  proc = subprocess.run([sys.executable, "-c", _DRIVER, str(tmp / "cases.json"), str(tmp / "results.json")],
                        capture_output=True, text=True, timeout=600, env=env, cwd=os.getcwd())
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((tmp / "results.json").read_text())


def failures(cases: list, results: dict, evil: dict) -> list:
  bad = []
  for name, argv in cases:
    kind = name.split()[-1]
    r = results[name]
    lines = [ln for ln in r["err"].splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "Traceback" in ln]
    said = "never runs" if kind == "torchscript" else "refused as unsafe"
    if not (r["rc"] == 2 and len(errors) == 1 and errors[0].startswith(f"zipjax {argv[0]}: error: {evil[kind]}: ")
            and said in errors[0]):
      bad.append(f"{name}: rc {r['rc']}: {r['err'][-600:]}")
  return bad
