"""zipjax.parallel: mesh from config, regex sharding rules, global batches, and a real two-process start-up
(localhost coordinator, gloo CPU collectives, 4 CPU devices per process)."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from zipjax import parallel
from zipjax.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_mesh_shape():
  assert parallel.mesh_shape([("data", -1)], 8) == (("data",), (8,))
  assert parallel.mesh_shape([("data", -1), ("model", 2)], 8) == (("data", "model"), (4, 2))
  assert parallel.mesh_shape([("data", 2), ("model", 4)], 8) == (("data", "model"), (2, 4))
  for bad, msg in [([("model", -1)], "'data' axis"), ([("data", -1), ("model", -1)], "at most one -1"),
                   ([("data", -1), ("model", 3)], "not divisible"), ([("data", 4)], "needs 4 devices"),
                   ([("data", 0)], "positive"), ([("data", -1), ("data", 1)], "repeated"), ("data", "pairs")]:
    with pytest.raises(InputError, match=msg):
      parallel.mesh_shape(bad, 8)


def test_create_mesh():
  mesh = parallel.create_mesh([("data", -1), ("model", 2)])
  assert mesh.axis_names == ("data", "model") and mesh.devices.shape == (4, 2)
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
  assert parallel.data_size(mesh) == parallel.local_data_size(mesh) == 4
  one = parallel.create_mesh([("data", -1)], jax.devices()[:1])
  assert one.devices.shape == (1,) and parallel.local_data_size(one) == 1


def test_create_mesh_explicit_smaller_takes_the_first_devices_and_bad_specs_refused():
  m = parallel.create_mesh([("data", 2), ("model", -1)])
  assert dict(m.shape) == {"data": 2, "model": 4}
  m = parallel.create_mesh([("data", 1)])  # explicit and smaller: the first device
  assert m.devices.size == 1 and m.devices.ravel()[0] == jax.devices()[0]
  m = parallel.create_mesh([("data", 2), ("model", 2)])
  assert [d.id for d in m.devices.flat] == sorted(d.id for d in jax.devices()[:4])
  for bad in ([("data", 3), ("x", -1)], [("a", -1), ("b", -1)], [], [("data", 16)], [("d", 2), ("d", 4)],
              [("model", 2)]):
    with pytest.raises(InputError):
      parallel.create_mesh(bad)


def test_fsdp_rules():
  """FSDP is a rule kind: the largest dimension divisible by the axis size (ties: the last), leaves of at least
  fsdp_min_size elements; 'replicate' and unmatched leaves are replicated; works on ShapeDtypeStructs."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  mesh = parallel.create_mesh([("data", -1)])
  tree = {"backbone": {"k": jax.ShapeDtypeStruct((24, 64), jnp.float32),   # 64 divisible by 8 -> dim 1
                       "odd": jax.ShapeDtypeStruct((9, 7), jnp.float32),   # no divisible dim -> replicated
                       "b": jax.ShapeDtypeStruct((64,), jnp.float32)},     # too small -> replicated
          "head": {"k": jax.ShapeDtypeStruct((64, 16), jnp.float32),       # tie 64 vs 16: largest (dim 0)
                   "e": jax.ShapeDtypeStruct((16, 16), jnp.float32)}}      # equal sizes: last divisible dim
  rules = [("^head/k$", "replicate"), (".*", "fsdp")]
  sh = parallel.param_shardings(tree, mesh, rules, fsdp_min_size=100)
  assert sh["backbone"]["k"].spec == P(None, "data")
  assert sh["backbone"]["odd"].spec == P()
  assert sh["backbone"]["b"].spec == P()
  assert sh["head"]["k"].spec == P()
  assert sh["head"]["e"].spec == P(None, "data")
  sh = parallel.param_shardings(tree, mesh, [("^head/", "fsdp")])
  assert sh["head"]["k"].spec == P("data", None) and sh["backbone"]["k"].spec == P()  # unmatched: replicated
  assert parallel.param_specs(tree, parallel.create_mesh([("data", 1)]), [(".*", "fsdp")])["head"]["k"] == P()
  # fsdp over another axis, and spec-tuple rules and fsdp rules in one list (first match wins)
  mesh2 = parallel.create_mesh([("data", -1), ("model", 2)])
  specs = parallel.param_specs(tree, mesh2, [("^head/k$", (None, "model")), ("^head/", "fsdp:model"),
                                             (".*", "fsdp")])
  assert specs["head"]["k"] == P(None, "model") and specs["head"]["e"] == P(None, "model")
  assert specs["backbone"]["k"] == P(None, "data")  # 64 % 4 == 0
  with pytest.raises(InputError, match="action"):
    parallel.param_specs(tree, mesh, [(".*", "shard")])
  with pytest.raises(InputError, match="FSDP axis 'model' is not in the mesh"):
    parallel.param_specs(tree, mesh, [(".*", "fsdp:model")])
  with pytest.raises(InputError, match="bad regex"):
    parallel.param_specs(tree, mesh, [("(", "fsdp")])


def test_param_specs_rules():
  mesh = parallel.create_mesh([("data", -1), ("model", 2)])
  params = {"sam": {"a": {"kernel": np.zeros((4, 6))}, "b": {"kernel": np.zeros((4, 5)), "bias": np.zeros((6,))}},
            "boundary": {"conv": {"kernel": np.zeros((3, 3, 8, 16))}}}
  rules = [("^sam/a/", (None, ("data", "model"))), (r"^sam/.*kernel$", (None, "model")),
           (r"conv/kernel", (None, None, "model"))]
  specs = parallel.param_specs(params, mesh, rules)
  assert specs["sam"]["a"]["kernel"] == P(None, None)  # 6 is not divisible by 4 * 2 -> unsharded; first rule wins
  assert specs["sam"]["b"]["kernel"] == P(None, None)  # 5 is not divisible by 2
  assert specs["sam"]["b"]["bias"] == P()  # no rule matches: replicated
  assert specs["boundary"]["conv"]["kernel"] == P(None, None, "model")
  specs = parallel.param_specs(params, mesh, [(r"kernel$", (None, "model"))])
  assert specs["sam"]["a"]["kernel"] == P(None, "model")
  with pytest.raises(InputError, match="mesh axis 'tensor'"):
    parallel.param_specs(params, mesh, [("kernel", (None, "tensor"))])
  with pytest.raises(InputError, match="more entries"):
    parallel.param_specs(params, mesh, [("bias", (None, "model"))])
  with pytest.raises(InputError, match="bad sharding rule"):
    parallel.param_specs(params, mesh, [("(", None)])
  placed = parallel.place(params, parallel.param_shardings(params, mesh, rules))
  kernel = placed["boundary"]["conv"]["kernel"]
  assert kernel.sharding.spec == P(None, None, "model") and kernel.addressable_shards[0].data.shape == (3, 3, 4, 16)


def test_global_batch_round_trip():
  mesh = parallel.create_mesh([("data", -1), ("model", 2)])
  local = {"x": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "v": np.arange(8) % 3 == 0}
  g = parallel.global_batch(local, mesh)
  assert g["x"].shape == (8, 3) and g["x"].sharding.spec == P("data")
  y = jax.jit(lambda b: b["x"] * 2 + b["v"][:, None], out_shardings=parallel.batch_sharding(mesh))(g)
  np.testing.assert_array_equal(parallel.local_numpy(y), local["x"] * 2 + local["v"][:, None])


def test_initialize_single_host_is_a_no_op(monkeypatch):
  for k in ("ZIPJAX_COORDINATOR", "ZIPJAX_NUM_PROCESSES", "ZIPJAX_PROCESS_ID", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(k, raising=False)
  assert parallel.initialize() is False
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "only-one-worker")
  assert parallel.initialize() is False
  with pytest.raises(InputError, match="needs all of"):
    parallel.initialize(coordinator="localhost:1234")


WORKER = r"""
import json, sys
import numpy as np
pid = int(sys.argv[1])
from zipjax import parallel
assert parallel.initialize(coordinator=sys.argv[2], num_processes=2, process_id=pid)
import jax, jax.numpy as jnp
mesh = parallel.create_mesh([("data", -1)])
local = np.arange(4, dtype=np.float32) + 10 * pid  # this process's 4 rows
g = parallel.global_batch({"x": local}, mesh)["x"]
doubled = jax.jit(lambda x: x * 2, out_shardings=parallel.batch_sharding(mesh))(g)
total = jax.jit(jnp.sum, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))(g)
print(json.dumps({"devices": jax.device_count(), "local": jax.local_device_count(), "global_shape": list(g.shape),
                  "doubled": parallel.local_numpy(doubled).tolist(),
                  "total": float(total.addressable_shards[0].data)}))
"""


def test_two_processes_on_localhost(tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  script = tmp_path / "worker.py"
  script.write_text(WORKER)
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = [subprocess.Popen([sys.executable, str(script), str(pid), f"localhost:{port}"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err[-3000:]
    outs.append(json.loads(out.strip().splitlines()[-1]))
  for pid, o in enumerate(outs):
    assert (o["devices"], o["local"], o["global_shape"]) == (8, 4, [8])
    assert o["doubled"] == [2.0 * (v + 10 * pid) for v in range(4)]
    assert o["total"] == float(sum(range(4)) + sum(v + 10 for v in range(4)))
