"""Device mesh, parameter sharding rules, global batches and multi-host start-up (big_vision style), for the
labelling engine (`zipjax.engine`) and the detector trainer (`zipjax.train`) alike.

- `create_mesh(spec, devices=None)`: `config.mesh`, a list of (axis name, size) pairs with a `data` axis and at
  most one -1 (the remaining devices), e.g. `[("data", -1)]` or `[("data", -1), ("model", 2)]` ->
  `jax.sharding.Mesh` over all devices (or `devices`), laid out by
  `jax.experimental.mesh_utils.create_device_mesh`. When every size is explicit and their product is smaller
  than the number of devices, the mesh takes the first devices (e.g. `[("data", 1)]`: one device).
- `param_specs(params, mesh, rules, fsdp_min_size=0)`: `config.sharding_rules`, a list of (regex, action)
  pairs. A leaf's path is its keys joined by '/' (`path_name`: 'sam/params/image_encoder/blocks_0/mlp/lin1/
  kernel'; optimizer-state leaves carry the parameter path inside theirs, e.g. '1/inner_states/backbone/0/mu/
  backbone/...'); it is matched with `re.search` against each regex in turn and the first match decides. The
  action is one of
    - a PartitionSpec as a tuple with one entry per leading dimension: None, a mesh axis name or a tuple of
      names (shorter tuples leave the remaining dimensions unsharded); a dimension that the named axes do not
      divide stays unsharded, so one rule can cover kernels of several shapes (tensor / model parallelism);
    - "fsdp" or "fsdp:AXIS" (default axis `data`): FSDP, the largest dimension divisible by the axis size is
      sharded over it (ties: the last such dimension), for leaves of at least `fsdp_min_size` elements; smaller
      leaves and leaves without a divisible dimension are replicated;
    - "replicate" or None: replicated.
  Unmatched leaves are replicated. With one device every leaf is effectively replicated, so a config runs
  unchanged on 1 or N devices. Rules live in configs, never in model code. Works on arrays and on
  `jax.ShapeDtypeStruct` trees (shardings inferred before anything is allocated).
- `place(tree, shardings)`: host arrays -> global device arrays with those shardings (each process supplies
  the same full values; works across processes).
- `batch_sharding(mesh, axes=("data",))`: the leading (example) axis split over `axes`, replicated over the
  others (the engine: `data`; the trainer, which treats every device as data-parallel: all mesh axes).
- `global_batch(local, mesh_or_sharding)`: a process-local batch (leading axis = this process's part of the
  global batch) -> global arrays (`jax.make_array_from_process_local_data`; a Mesh means
  `batch_sharding(mesh)`); `local_numpy(x)` is the inverse for outputs: this process's rows as numpy, in order.
  A `model` axis should stay within a process (host), so that each data-parallel group's rows come from one
  process.
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
from jax.experimental import mesh_utils
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
  """A `Mesh` of `config.mesh` over `devices` (default: all devices of all processes); explicit sizes whose
  product is smaller than the number of devices take the first devices."""
  devices = list(jax.devices() if devices is None else devices)
  try:
    sizes = [int(size) for _, size in spec]
  except (TypeError, ValueError):
    sizes = []  # mesh_shape says what is wrong
  if sizes and all(s > 0 for s in sizes) and int(np.prod(sizes)) < len(devices):
    devices = devices[:int(np.prod(sizes))]
  names, sizes = mesh_shape(spec, len(devices))
  try:
    arr = mesh_utils.create_device_mesh(sizes, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):  # CPU / odd counts: plain order
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
def path_name(path) -> str:
  """A jax key path -> 'a/b/0/c' (dict keys, attribute names and sequence indices)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _tuple_spec(shape: tuple[int, ...], spec, mesh: Mesh) -> PartitionSpec:
  spec = tuple(spec)
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


def _fsdp_spec(shape: tuple[int, ...], axis: str, mesh: Mesh, min_size: int) -> PartitionSpec:
  n = mesh.shape[axis]
  if n == 1 or int(np.prod(shape, dtype=np.int64)) < int(min_size):
    return PartitionSpec()
  best = None
  for d, size in enumerate(shape):
    if size % n == 0 and (best is None or size >= shape[best]):
      best = d
  if best is None:
    return PartitionSpec()
  spec = [None] * len(shape)
  spec[best] = axis
  return PartitionSpec(*spec)


def _compile_rules(rules: Sequence, mesh: Mesh) -> list:
  """[(compiled regex, kind, payload)]: kind 'spec' (payload: the tuple), 'fsdp' (payload: the axis) or
  'replicate'; every rule is checked here, before any leaf is matched."""
  out = []
  for rule in rules:
    try:
      regex, action = rule
    except (TypeError, ValueError) as e:
      raise InputError(f"bad sharding rule {rule!r}: want (regex, action) ({e})") from e
    try:
      compiled = re.compile(str(regex))
    except re.error as e:
      raise InputError(f"bad sharding rule {rule!r}: bad regex ({e})") from e
    if action is None or action == "replicate":
      out.append((compiled, "replicate", None))
    elif isinstance(action, str):
      text = action.strip()
      axis = DATA_AXIS if text == "fsdp" else text[5:] if text.startswith("fsdp:") and text[5:] else None
      if axis is None:
        raise InputError(f"bad sharding rule {rule!r}: the action must be a PartitionSpec tuple, 'fsdp', "
                         f"'fsdp:AXIS' or 'replicate', got {action!r}")
      if axis not in mesh.axis_names:
        raise InputError(f"sharding rule {rule!r}: FSDP axis {axis!r} is not in the mesh {mesh.axis_names}")
      out.append((compiled, "fsdp", axis))
    elif isinstance(action, (tuple, list)):
      out.append((compiled, "spec", tuple(action)))
    else:
      raise InputError(f"bad sharding rule {rule!r}: the action must be a PartitionSpec tuple, 'fsdp', "
                       f"'fsdp:AXIS' or 'replicate'")
  return out


def param_specs(params, mesh: Mesh, rules: Sequence = (), fsdp_min_size: int = 0) -> Any:
  """PartitionSpec per leaf of `params` (arrays or ShapeDtypeStructs) from `config.sharding_rules` (see the
  module docstring)."""
  compiled = _compile_rules(rules, mesh)

  def one(path, leaf):
    name = path_name(path)
    shape = tuple(np.shape(leaf))
    for regex, kind, payload in compiled:
      if regex.search(name):
        if kind == "spec":
          return _tuple_spec(shape, payload, mesh)
        if kind == "fsdp":
          return _fsdp_spec(shape, payload, mesh, fsdp_min_size)
        return PartitionSpec()
    return PartitionSpec()

  return jax.tree_util.tree_map_with_path(one, params)


def param_shardings(params, mesh: Mesh, rules: Sequence = (), fsdp_min_size: int = 0) -> Any:
  """`NamedSharding` per leaf of `params` (see `param_specs`)."""
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), param_specs(params, mesh, rules, fsdp_min_size),
                                is_leaf=lambda x: isinstance(x, PartitionSpec))


def replicated(mesh: Mesh) -> NamedSharding:
  """Replicated over the whole mesh."""
  return NamedSharding(mesh, PartitionSpec())


def place(tree, shardings) -> Any:
  """Host (or single-device) arrays -> global arrays with `shardings`; every process passes the same values."""
  def one(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree_util.tree_map(one, tree, shardings)


def batch_sharding(mesh: Mesh, axes: Sequence[str] = (DATA_AXIS,)) -> NamedSharding:
  """Leading axis split over `axes` (default: `data`), replicated over the other axes."""
  axes = tuple(axes)
  return NamedSharding(mesh, PartitionSpec(axes[0] if len(axes) == 1 else axes))


def global_batch(local: dict, target) -> dict:
  """Process-local numpy arrays (leading axis: this process's rows) -> global arrays, sharded as `target` (a
  NamedSharding, or a Mesh for `batch_sharding(mesh)`); rows of process p follow those of process p - 1."""
  sharding = target if isinstance(target, NamedSharding) else batch_sharding(target)
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
               process_id: int | None = None, auto: bool = False) -> bool:
  """Starts JAX's distributed runtime when this is a multi-process run; returns whether it did.

  Arguments override the environment (ZIPJAX_COORDINATOR 'host:port', ZIPJAX_NUM_PROCESSES,
  ZIPJAX_PROCESS_ID). Without either, a multi-worker TPU VM (TPU_WORKER_HOSTNAMES lists several workers) is
  initialised automatically; anything else is a single-host run and nothing happens, unless `auto` (the
  trainer's `config.distributed=True`): then `jax.distributed.initialize()` detects the cluster itself (SLURM,
  Kubernetes, ...). Must run before any other JAX call that touches devices. On the CPU platform gloo
  collectives are enabled first. A start that fails is an InputError naming the coordinator and process.
  The one way every command starts multi-process runs (label, train, self-train).
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
  if not explicit and not tpu_pod and not auto:
    return False
  if explicit and (coordinator is None or num_processes is None or process_id is None):
    raise InputError("multi-process start needs all of coordinator, num_processes and process_id "
                     f"(got {coordinator!r}, {num_processes!r}, {process_id!r})")
  platforms = (env.get("JAX_PLATFORMS") or str(jax.config.jax_platforms or "")).lower()
  if platforms.startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    if explicit:
      jax.distributed.initialize(coordinator_address=coordinator, num_processes=int(num_processes),
                                 process_id=int(process_id))
    else:
      jax.distributed.initialize()
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(f"cannot start jax.distributed (coordinator {coordinator}, {num_processes} processes, "
                     f"process id {process_id}): {type(e).__name__}: {e}") from e
  return True


__all__ = ["DATA_AXIS", "MODEL_AXIS", "mesh_shape", "create_mesh", "data_size", "local_data_size", "path_name",
           "param_specs", "param_shardings", "replicated", "place", "batch_sharding", "global_batch", "local_numpy",
           "initialize"]
