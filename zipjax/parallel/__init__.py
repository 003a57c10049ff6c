"""Device mesh, parameter sharding rules, global batches and multi-host start-up (big_vision style).

- `create_mesh(spec, devices=None)`: `config.mesh`, a list of (axis name, size) pairs with at most one -1 (the
  remaining devices), e.g. `[("data", -1)]` or `[("data", -1), ("model", 2)]` -> `jax.sharding.Mesh` over all
  devices (or `devices`), laid out by `jax.experimental.mesh_utils.create_device_mesh`.
- `param_shardings(params, mesh, rules)`: `config.sharding_rules`, a list of (regex, spec) pairs; a parameter's
  path ('sam/params/image_encoder/blocks_0/mlp/lin1/kernel') is matched with `re.search` against each regex
  in turn and the first match gives its PartitionSpec, a tuple with one entry per leading dimension: None, a
  mesh axis name or a tuple of names (shorter tuples leave the remaining dimensions unsharded). A dimension
  that the named axes do not divide stays unsharded (so one rule can cover kernels of several shapes);
  unmatched parameters are replicated. Rules live in configs, never in model code.
- `place(tree, shardings)`: host arrays -> global device arrays with those shardings (each process supplies
  the same full values; works across processes).
- `global_batch(local, mesh)`: a process-local batch (leading axis = this process's part of the global batch)
  -> global arrays sharded over the `data` axis (`jax.make_array_from_process_local_data`); `local_numpy(x)`
  is the inverse for outputs: this process's rows as numpy, in order.
- `initialize(coordinator=None, num_processes=None, process_id=None)`: `jax.distributed.initialize` from the
  arguments or the environment (ZIPJAX_COORDINATOR, ZIPJAX_NUM_PROCESSES, ZIPJAX_PROCESS_ID; automatic on
  multi-worker TPU VMs), skipped on a plain single host. On the CPU platform it first switches the CPU
  collectives to gloo, which cross-process CPU computations need.
"""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zipjax.errors import InputError

DATA_AXIS = "data"
MODEL_AXIS = "model"


# ------------------------------------------------------------------------------------------------------ mesh
def mesh_shape(spec: Sequence, num_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """(axis names, sizes) of `config.mesh` for `num_devices` devices (one -1 takes the rest)."""
  try:
    pairs = [(str(name), int(size)) for name, size in spec]
  except (TypeError, ValueError) as e:
    raise InputError(f"config.mesh must be a list of (axis name, size) pairs, got {spec!r}") from e
  if not pairs:
    raise InputError("config.mesh is empty")
  names = [n for n, _ in pairs]
  if len(set(names)) != len(names):
    raise InputError(f"config.mesh has repeated axis names: {names}")
  if DATA_AXIS not in names:
    raise InputError(f"config.mesh needs a '{DATA_AXIS}' axis, got {names}")
  sizes = [s for _, s in pairs]
  if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise InputError(f"config.mesh sizes must be positive, with at most one -1: {spec!r}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise InputError(f"config.mesh {spec!r}: {num_devices} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise InputError(f"config.mesh {spec!r} needs {int(np.prod(sizes))} devices, {num_devices} are used")
  return tuple(names), tuple(sizes)


def create_mesh(spec: Sequence = ((DATA_AXIS, -1),), devices: Sequence | None = None) -> Mesh:
  """A `Mesh` of `config.mesh` over `devices` (default: all devices of all processes)."""
  from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
  devices = list(jax.devices() if devices is None else devices)
  names, sizes = mesh_shape(spec, len(devices))
  try:
    arr = mesh_utils.create_device_mesh(sizes, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    arr = np.asarray(devices, dtype=object).reshape(sizes)
  return Mesh(arr, names)


def data_size(mesh: Mesh) -> int:
  """Number of data-parallel groups (the `data` axis size)."""
  return int(mesh.shape[DATA_AXIS])


def local_data_size(mesh: Mesh) -> int:
  """Number of data-parallel groups with a device in this process."""
  pi = jax.process_index()
  axis = mesh.axis_names.index(DATA_AXIS)
  arr = np.moveaxis(mesh.devices, axis, 0).reshape(mesh.devices.shape[axis], -1)  # [data, rest]
  return int(sum(any(d.process_index == pi for d in row) for row in arr))


# --------------------------------------------------------------------------------------------------- sharding
def _path_str(path) -> str:
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
  return "/".join(parts)


def _spec_for(shape: tuple[int, ...], spec, mesh: Mesh) -> PartitionSpec:
  spec = tuple(spec) if spec is not None else ()
  if len(spec) > len(shape):
    raise InputError(f"sharding rule spec {spec} has more entries than the parameter's {len(shape)} dims")
  out = []
  for dim, axes in zip(shape, spec):
    names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    for n in names:
      if n not in mesh.axis_names:
        raise InputError(f"sharding rule names mesh axis {n!r}; the mesh has {mesh.axis_names}")
    size = int(np.prod([mesh.shape[n] for n in names])) if names else 1
    out.append(None if not names or dim % size else (names[0] if len(names) == 1 else names))
  return PartitionSpec(*out)


def param_specs(params, mesh: Mesh, rules: Sequence = ()) -> Any:
  """PartitionSpec per leaf of `params` from `config.sharding_rules` (see the module docstring)."""
  compiled = []
  for rule in rules:
    try:
      regex, spec = rule
      compiled.append((re.compile(str(regex)), spec))
    except (TypeError, ValueError, re.error) as e:
      raise InputError(f"bad sharding rule {rule!r}: want (regex, spec tuple) ({e})") from e

  def one(path, leaf):
    name = _path_str(path)
    for regex, spec in compiled:
      if regex.search(name):
        return _spec_for(tuple(np.shape(leaf)), spec, mesh)
    return PartitionSpec()

  return jax.tree_util.tree_map_with_path(one, params)


def param_shardings(params, mesh: Mesh, rules: Sequence = ()) -> Any:
  """`NamedSharding` per leaf of `params` (see `param_specs`)."""
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), param_specs(params, mesh, rules),
                                is_leaf=lambda x: isinstance(x, PartitionSpec))


def place(tree, shardings) -> Any:
  """Host (or single-device) arrays -> global arrays with `shardings`; every process passes the same values."""
  def one(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree_util.tree_map(one, tree, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis over `data`, replicated over the other axes."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Process-local numpy arrays (leading axis: this process's rows) -> global arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def local_numpy(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order, as numpy (replicas read once)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  seen = {}
  for shard in x.addressable_shards:
    start = (shard.index[0].start or 0) if shard.index else 0
    if start not in seen:
      seen[start] = np.asarray(shard.data)
  return np.concatenate([seen[k] for k in sorted(seen)], axis=0)


# ------------------------------------------------------------------------------------------------ multi-host
def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts JAX's distributed runtime when this is a multi-process run; returns whether it did.

  Arguments override the environment (ZIPJAX_COORDINATOR 'host:port', ZIPJAX_NUM_PROCESSES,
  ZIPJAX_PROCESS_ID). Without either, a multi-worker TPU VM (TPU_WORKER_HOSTNAMES lists several workers) is
  initialised automatically; anything else is a single-host run and nothing happens. Must run before any other
  JAX call that touches devices. On the CPU platform gloo collectives are enabled first.
  """
  if jax.distributed.is_initialized():
    return True
  env = os.environ
  coordinator = coordinator or env.get("ZIPJAX_COORDINATOR") or None
  if num_processes is None and env.get("ZIPJAX_NUM_PROCESSES"):
    num_processes = int(env["ZIPJAX_NUM_PROCESSES"])
  if process_id is None and env.get("ZIPJAX_PROCESS_ID"):
    process_id = int(env["ZIPJAX_PROCESS_ID"])
  explicit = coordinator is not None or num_processes is not None or process_id is not None
  tpu_pod = len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
  if not explicit and not tpu_pod:
    return False
  if explicit and (coordinator is None or num_processes is None or process_id is None):
    raise InputError("multi-process start needs all of coordinator, num_processes and process_id "
                     f"(got {coordinator!r}, {num_processes!r}, {process_id!r})")
  platforms = (env.get("JAX_PLATFORMS") or str(jax.config.jax_platforms or "")).lower()
  if platforms.startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=int(num_processes),
                               process_id=int(process_id))
  else:
    jax.distributed.initialize()
  return True


__all__ = ["DATA_AXIS", "MODEL_AXIS", "mesh_shape", "create_mesh", "data_size", "local_data_size",
           "param_specs", "param_shardings", "place", "batch_sharding", "global_batch", "local_numpy",
           "initialize"]
