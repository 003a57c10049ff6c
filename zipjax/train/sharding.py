"""Mesh and parameter sharding for the trainer, from config (big_vision style: rules in configs, never in models).

- `make_mesh(spec)`: `config.mesh = [("data", -1)]` -> a `jax.sharding.Mesh` over all devices (-1: the
  remaining devices; explicit sizes whose product is smaller take the first devices), in
  `jax.experimental.mesh_utils.create_device_mesh` order. One flat device order serves
  data parallelism and FSDP.
- `infer_shardings(tree, rules, mesh, min_size)`: one `NamedSharding` per leaf of a (shape) pytree. A leaf's
  path is its keys joined by "/" (e.g. `backbone/transformer/resblocks_0/mlp/c_fc/kernel`; optimizer-state
  leaves carry the parameter path inside theirs, e.g. `1/inner_states/backbone/0/mu/backbone/...`). The first
  rule whose regex matches the path (`re.search`) decides:
    - `"fsdp"` or `"fsdp:AXIS"` (default axis "data"): shard the largest dimension divisible by the axis size
      over that axis (ties: the last such dimension), when the leaf has at least `min_size` elements; smaller
      leaves, and leaves without a divisible dimension, are replicated;
    - `"replicate"`: replicated.
  Leaves no rule matches are replicated. With one device every leaf is effectively replicated, so a config
  runs unchanged on 1 or N devices.
- `batch_sharding(mesh)`: examples split over every mesh axis (the leading dimension).
- `global_batch(local, sharding)`: this process's rows -> global `jax.Array`s
  (`jax.make_array_from_process_local_data`).
"""
from __future__ import annotations

import re
from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from zipjax.errors import InputError


def make_mesh(spec: Sequence, devices: Sequence | None = None) -> Mesh:
  """`[(axis_name, size), ...]` -> Mesh over `devices` (default: all devices).

  One size may be -1 (the remaining devices). When every size is given and their product is smaller than the
  number of devices, the mesh takes the first devices (e.g. `[("data", 1)]`: one device).
  """
  devices = list(jax.devices() if devices is None else devices)
  spec = [(str(name), int(size)) for name, size in spec]
  if spec and all(s > 0 for _, s in spec) and int(np.prod([s for _, s in spec])) < len(devices):
    devices = devices[:int(np.prod([s for _, s in spec]))]
  if not spec:
    raise InputError("config.mesh is empty; use e.g. [('data', -1)]")
  names = [n for n, _ in spec]
  if len(set(names)) != len(names):
    raise InputError(f"config.mesh repeats an axis name: {names}")
  sizes = [s for _, s in spec]
  if sizes.count(-1) > 1:
    raise InputError(f"config.mesh: at most one axis may be -1, got {spec}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
    raise InputError(f"config.mesh {spec} does not fit {len(devices)} devices")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise InputError(f"config.mesh {spec} uses {int(np.prod(sizes))} devices, {len(devices)} are available")
  try:
    arr = mesh_utils.create_device_mesh(sizes, devices=devices)
  except (ValueError, AssertionError, NotImplementedError):  # CPU / odd counts: plain order
    arr = np.asarray(devices, dtype=object).reshape(sizes)
  return Mesh(arr, tuple(names))


def path_name(path) -> str:
  """A jax key path -> 'a/b/0/c'."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def named_leaves(tree) -> list:
  """[(path name, leaf)] in tree order."""
  return [(path_name(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _parse_rule(action: str):
  action = str(action).strip()
  if action == "replicate":
    return ("replicate", None)
  if action == "fsdp":
    return ("fsdp", "data")
  if action.startswith("fsdp:") and action[5:]:
    return ("fsdp", action[5:])
  raise InputError(f"sharding rule action must be 'fsdp', 'fsdp:AXIS' or 'replicate', got {action!r}")


def leaf_spec(name: str, shape: tuple, rules: Sequence, mesh: Mesh, min_size: int) -> P:
  """PartitionSpec of one leaf (see the module docstring)."""
  for pattern, action in rules:
    if re.search(pattern, name):
      kind, axis = _parse_rule(action)
      if kind == "replicate":
        return P()
      if axis not in mesh.shape:
        raise InputError(f"sharding rule {pattern!r}: axis {axis!r} is not in the mesh {dict(mesh.shape)}")
      n = mesh.shape[axis]
      if n == 1 or int(np.prod(shape, dtype=np.int64)) < int(min_size):
        return P()
      best = None
      for d, size in enumerate(shape):
        if size % n == 0 and (best is None or size >= shape[best]):
          best = d
      if best is None:
        return P()
      spec = [None] * len(shape)
      spec[best] = axis
      return P(*spec)
  return P()


def infer_shardings(tree, rules: Sequence, mesh: Mesh, min_size: int = 0):
  """A pytree of NamedSharding matching `tree` (arrays or ShapeDtypeStructs)."""
  rules = [(str(p), str(a)) for p, a in rules]
  for p, a in rules:
    try:
      re.compile(p)
    except re.error as e:
      raise InputError(f"sharding rule {p!r}: bad regex ({e})") from None
    _parse_rule(a)
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  out = [NamedSharding(mesh, leaf_spec(path_name(p), tuple(x.shape), rules, mesh, min_size)) for p, x in flat]
  return jax.tree_util.tree_unflatten(treedef, out)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) dimension split over all mesh axes."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def global_batch(local: dict, sharding: NamedSharding) -> dict:
  """Process-local numpy rows -> global jax.Arrays (rows of process p follow those of process p - 1)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def describe(tree, shardings) -> str:
  """One line per sharded leaf ('path shape -> spec'), for logs."""
  lines = []
  for (name, x), (_, s) in zip(named_leaves(tree), named_leaves(shardings)):
    if any(a is not None for a in s.spec):
      lines.append(f"{name} {tuple(x.shape)} -> {s.spec}")
  return "\n".join(lines)


__all__ = ["make_mesh", "path_name", "named_leaves", "leaf_spec", "infer_shardings", "replicated",
           "batch_sharding", "global_batch", "describe"]
