"""The device mesh ('data', 'fsdp', 'tensor'), parameter shardings, batch shardings and the
one activation-constraint helper.

The same code runs on 1 device, on 8 fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`) and on GPU/TPU clusters
(`distributed.initialize` first, as the CLI does; the mesh then spans every process's devices,
and `shard_batch` builds global arrays from the batch every process holds).
Parameters declare their partition specs where they are created (`model.py`); batches are
split over ('data', 'fsdp') on their leading axis; everything else is left to XLA's SPMD
partitioner. Shape problems are reported here, before anything compiles.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alignlab import distributed
from alignlab.config import ConfigError, MeshConfig

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')
_LOGICAL = {'batch': BATCH_AXES}


def _mesh_keys(shape) -> str:
  return ' × '.join(f'mesh.{a}={s}' for a, s in zip(AXES, shape))


def resolve_mesh_shape(cfg: MeshConfig, n_devices: int, where: str = '') -> tuple[int, int, int]:
  """The (data, fsdp, tensor) sizes of `cfg` over `n_devices` (one -1 takes the rest); a
  ConfigError naming the `mesh.*` keys and the device count when they do not fit. `where`
  says where the devices are (e.g. '2 processes × 4 local')."""
  shape = [cfg.data, cfg.fsdp, cfg.tensor]
  where = f' ({where})' if where else ''
  if shape.count(-1) > 1:
    raise ConfigError(f'{_mesh_keys(shape)}: at most one axis may be -1')
  if any(s == 0 or s < -1 for s in shape):
    raise ConfigError(f'{_mesh_keys(shape)}: axis sizes must be positive (or -1 to fill)')
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if n_devices % known:
      raise ConfigError(f'{_mesh_keys(shape)} cannot fill {n_devices} devices{where}: '
                        f'{n_devices} is not divisible by {known}')
    shape[shape.index(-1)] = n_devices // known
  if math.prod(shape) != n_devices:
    raise ConfigError(f'{_mesh_keys(shape)} needs {math.prod(shape)} devices, but {n_devices} '
                      f'are available{where}; make their product {n_devices}, or set one of '
                      'them to -1 to take the rest')
  return tuple(shape)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: list | None = None) -> Mesh:
  """The ('data', 'fsdp', 'tensor') mesh of `cfg` over `devices`, by default every device of
  every process (`jax.make_mesh`: the accelerators' topology decides the order)."""
  if devices is not None:
    devices = list(devices)
    return Mesh(np.asarray(devices).reshape(resolve_mesh_shape(cfg, len(devices))), AXES)
  n = jax.device_count()
  processes = distributed.process_count()
  where = f'{processes} processes × {jax.local_device_count()} local' if processes > 1 else ''
  shape = resolve_mesh_shape(cfg, n, where)
  try:
    return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))
  except (ValueError, NotImplementedError):  # a shape the topology helper cannot lay out
    return Mesh(np.asarray(jax.devices()).reshape(shape), AXES)


@contextlib.contextmanager
def use_mesh(mesh: Mesh):
  """Makes `mesh` the context for `constrain` (and JAX's sharding-in-types) inside."""
  with jax.set_mesh(mesh):
    yield mesh


def _physical(spec: tuple) -> P:
  return P(*(_LOGICAL.get(a, a) if isinstance(a, str) else a for a in spec))


def constrain(x: jax.Array, spec: tuple) -> jax.Array:
  """Constrains an activation's sharding; 'batch' stands for ('data', 'fsdp'). A no-op
  outside a mesh context or on one device."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, _physical(spec))


def _axis_size(mesh: Mesh, axes: Any) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return math.prod(mesh.shape[a] for a in axes)


def check_divisible(path: str, shape: tuple[int, ...], spec: P, mesh: Mesh) -> None:
  for dim, (size, axes) in enumerate(zip(shape, tuple(spec) + (None,) * len(shape))):
    n = _axis_size(mesh, axes)
    if size % n:
      raise ConfigError(f'{path}: dimension {dim} of shape {shape} has size {size}, which is not '
                        f'divisible by mesh axis {axes!r} of size {n}')


def _path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def param_specs(abstract_state) -> Any:
  """Partition specs (a pure dict of `PartitionSpec`) of an NNX state, as declared."""
  return nnx.to_pure_dict(nnx.get_partition_spec(abstract_state))


def param_shardings(specs, shapes, mesh: Mesh):
  """NamedShardings for a pure dict of specs, after checking every dimension divides."""
  def one(path, spec, shape):
    check_divisible(_path_str(path), tuple(shape.shape), spec, mesh)
    return NamedSharding(mesh, spec)
  return jax.tree_util.tree_map_with_path(one, specs, shapes,
                                          is_leaf=lambda x: isinstance(x, P))


def abstract_model(model_fn: Callable[[nnx.Rngs], nnx.Module]):
  """(graphdef, abstract params as a pure dict, specs) without allocating anything."""
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: model_fn(nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state), param_specs(state)


def init_params(model_fn: Callable[[nnx.Rngs], nnx.Module], mesh: Mesh, key: jax.Array):
  """Builds a model's parameters directly into their declared shardings.

  Returns `(graphdef, params)`; params are a pure dict of arrays (`nnx.merge(graphdef,
  params)` rebuilds the module), which optax, orbax and `jax.vmap` take as they are.
  """
  graphdef, shapes, specs = abstract_model(model_fn)
  shardings = param_shardings(specs, shapes, mesh)

  def make(key):
    with nnx.use_eager_sharding(False):
      return nnx.to_pure_dict(nnx.split(model_fn(nnx.Rngs(key)))[1])

  params = jax.jit(make, out_shardings=shardings)(key)
  return graphdef, params


def shardings_of(tree) -> Any:
  return jax.tree.map(lambda x: x.sharding, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Puts a host batch onto the mesh, split over ('data', 'fsdp'); checks divisibility. Of
  several processes, each holds the whole batch and places its own devices' shards."""
  n = _axis_size(mesh, BATCH_AXES)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.ndim == 0:
      out[key] = distributed.put(value, replicated(mesh))
      continue
    if value.shape[0] % n:
      raise ConfigError(f'batch[{key!r}] has {value.shape[0]} rows, not divisible by the '
                        f'{n} data-parallel shards of mesh {dict(mesh.shape)}')
    out[key] = distributed.put(value, batch_sharding(mesh))
  return out


def matmul_flops_per_s(n: int = 1024, repeats: int = 5) -> float:
  """The FLOP/s of an n×n float32 matmul on the default device (the best of `repeats`): the
  rate `pipeline.plan` states its lower bounds at."""
  import time
  x = jax.numpy.ones((n, n), jax.numpy.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best
