"""One program on many processes (JAX's multi-controller runtime, `jax.distributed`).

    distributed.initialize(coordinator, num_processes, process_id)   # first, before any JAX work
    distributed.is_writer()        # process 0: the one that writes results, logs, run dirs
    distributed.to_host(tree)      # numpy copies of (possibly cross-process) sharded arrays
    distributed.put_rows(host, like)  # host rows (B, ...) split over the batch as `like` is
    distributed.put(host, sharding)  # a global array from the whole host value, on any mesh
    distributed.reshard(tree, shardings)  # `jax.device_put`, for arrays across processes too
    distributed.agree(flag)        # process 0's bool, the same on every process
    distributed.same_everywhere(s)  # whether every process was given the same s
    distributed.sync(name)         # a barrier across processes (a no-op on one)

Every process runs the same program: the same config, the same data on the host, the same
jitted steps over one mesh that spans all processes' devices (`sharding.make_mesh`). Each
process holds the whole host batch and places only its own devices' shards (`put`), so a
step sees the numbers one process would. Process 0 alone writes files (`is_writer`); the
others compute with it and read what it wrote, so the out dir and the cache must be on a
file system every process sees (as orbax's multi-host checkpoints require). docs/multihost.md
has the launch commands.
"""

from __future__ import annotations

import faulthandler
import os
from typing import Any

import jax
import numpy as np


def _cluster_detected() -> bool:
  """Whether this is a multi-process job of the kinds `jax.distributed.initialize()`
  bootstraps from with no arguments: a SLURM job of several tasks, a Cloud TPU pod slice."""
  if 'SLURM_JOB_ID' in os.environ and int(os.environ.get('SLURM_NTASKS', '1') or 1) > 1:
    return True
  try:
    from jax._src import clusters  # private, but it is what jax.distributed consults
  except ImportError:  # a JAX without it: only the explicit flags start several processes
    return False
  for env in clusters.ClusterEnv._cluster_types:  # noqa: SLF001
    if 'Tpu' not in env.__name__:
      continue
    try:
      if env.is_env_present():
        return True
    except Exception:  # noqa: BLE001 (a probe that cannot answer is not a pod)
      continue
  return False


HEARTBEAT_ENV = 'ALIGNLAB_HEARTBEAT_TIMEOUT'


def _timeouts() -> dict:
  """How long the others wait for a process that died. JAX's coordination service declares a
  process dead once it has sent no heartbeat for `heartbeat_timeout_seconds` (100 by default)
  and then aborts every other process ("Terminating process because the JAX distributed
  service detected fatal errors ... another task died"), whatever collective it waits in; so
  that bound is the whole wait. $ALIGNLAB_HEARTBEAT_TIMEOUT (seconds) sets it: shorter ends a
  dead job sooner, but a process stalled longer than that (swapping, a long host pause) is
  then taken for dead."""
  value = os.environ.get(HEARTBEAT_ENV)
  if not value:
    return {}
  try:
    seconds = int(value)
  except ValueError:
    seconds = 0
  if seconds < 1:
    raise ValueError(f'${HEARTBEAT_ENV}={value!r}: expected a whole number of seconds ≥ 1')
  return {'heartbeat_timeout_seconds': seconds}


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins the processes of one program; returns whether this process is one of several.

  With `coordinator` (HOST:PORT of process 0), `num_processes` and `process_id` all given and
  `num_processes` > 1: `jax.distributed.initialize` with them. With none given and a cluster
  JAX detects (SLURM with several tasks, a TPU pod slice): `jax.distributed.initialize()`.
  Otherwise nothing (one process). On CPU it selects the gloo collectives, without which
  XLA:CPU cannot run a computation across processes. Must run before any JAX computation."""
  given = [coordinator is not None, num_processes is not None, process_id is not None]
  if any(given) and not all(given):
    raise ValueError('--coordinator, --num-processes and --process-id go together: give all '
                     'three (or none, to run as one process or as the cluster says)')
  if all(given):
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f'--process-id {process_id} is not in [0, --num-processes '
                       f'{num_processes})')
    if num_processes == 1:
      return False
    kwargs = {'coordinator_address': coordinator, 'num_processes': num_processes,
              'process_id': process_id}
  elif _cluster_detected():
    kwargs = {}
  else:
    return False
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  if 'jax_cpu_collectives_implementation' in jax.config.values:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs.update(_timeouts())
  jax.distributed.initialize(**kwargs)
  # JAX ends the survivors of a dead peer with abort(): print where each thread of this
  # process was then, so a hang's report shows the collective it hung in.
  faulthandler.enable()
  return jax.process_count() > 1


EXIT_WATCH_S = 120


def watch_exit(seconds: float = EXIT_WATCH_S) -> None:
  """After a command's work on one of several processes: if this process is still alive
  `seconds` later (JAX's shutdown barrier waits for every process; a peer stuck elsewhere
  holds it for `shutdown_timeout_seconds`, 300 s), print every thread's stack to stderr, so
  the report of such a hang names where each process was. A no-op on one process."""
  if process_count() > 1:
    faulthandler.dump_traceback_later(seconds, exit=False)


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # another JAX: ask it (this starts the backend)
    return True


def process_count() -> int:
  """`jax.process_count()`; 1 without starting JAX's backend where nothing has started it
  (a lock or a run dir written before any computation; `initialize` starts it when there
  are several processes)."""
  if not jax.distributed.is_initialized() and not _backend_started():
    return 1
  return jax.process_count()


def process_index() -> int:
  return 0 if process_count() == 1 else jax.process_index()


def is_writer() -> bool:
  """Whether this process writes the program's files: process 0 (the only one on one)."""
  return process_count() == 1 or jax.process_index() == 0


def sync(name: str) -> None:
  """Every process waits here for the others (a no-op on one process)."""
  if process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def agree(flag: bool) -> bool:
  """Process 0's `flag` on every process: a decision read from the shared file system
  (a cache entry exists, a run is complete) is taken once, so no process skips work the
  others do."""
  if process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(flag))))


def same_everywhere(text: str) -> bool:
  """Whether every process holds the same `text` (a config's hash): one given another config
  would compute another program and hang the others in a collective, so `pipeline.run`
  refuses it on every process at once."""
  if process_count() == 1:
    return True
  import hashlib

  from jax.experimental import multihost_utils
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], np.int32)
  every = np.asarray(multihost_utils.process_allgather(digest))
  return bool((every == every[:1]).all())


def put(value: Any, sharding) -> jax.Array:
  """A global array with `sharding` from `value`, which every process holds whole (the same
  on each): each process places the shards of its own devices. `jax.device_put` on one
  process."""
  if process_count() == 1 or sharding.is_fully_addressable:
    return jax.device_put(value, sharding)
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _is_global(x: Any) -> bool:
  return isinstance(x, jax.Array) and not x.is_fully_addressable


def reshard(tree: Any, shardings: Any) -> Any:
  """`jax.device_put(tree, shardings)`, also where `tree` holds arrays that span several
  processes (which `device_put` cannot move): those move inside one jitted identity, host
  values and this process's arrays through `put`."""
  if process_count() == 1:
    return jax.device_put(tree, shardings)
  leaves = jax.tree.leaves(tree)
  if leaves and all(_is_global(x) for x in leaves):
    return jax.jit(lambda t: t, out_shardings=shardings)(tree)
  return jax.tree.map(
      lambda x, s: jax.jit(lambda y: y, out_shardings=s)(x) if _is_global(x)
      else _put_local(x, s), tree, shardings)


def _put_local(x: Any, sharding) -> jax.Array:
  """`put` of a host value or of this process's array; a typed PRNG key (which NumPy cannot
  hold) through its raw key data."""
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = put(np.asarray(jax.random.key_data(x)), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  return put(np.asarray(x), sharding)


def _leaf_to_host(x: Any) -> Any:
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return jax.device_get(x)
  if x.is_fully_replicated:  # every process holds all of it
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def put_rows(value: Any, like: jax.Array) -> jax.Array:
  """The host array `value` (B, ...), which every process computed whole and the same (a gold
  reward of gathered samples), as a device array whose rows are split over the mesh as the
  rows of `like` (B, ...) are, so that it meets `like` in one program. On one process (or
  where `like` is this process's alone) `jnp.asarray`, as before there were several."""
  if process_count() == 1 or not _is_global(like):
    return jax.numpy.asarray(value)
  from jax.sharding import NamedSharding, PartitionSpec
  if not isinstance(like.sharding, NamedSharding):
    raise TypeError(f'put_rows needs an array laid out on a mesh, got {like.sharding}')
  spec = like.sharding.spec
  rows = PartitionSpec(spec[0] if len(spec) else None)
  return put(np.asarray(value), NamedSharding(like.sharding.mesh, rows))


def to_host(tree: Any) -> Any:
  """`jax.device_get(tree)`, also for arrays sharded over several processes' devices (their
  shards gathered: a collective, so every process calls it at the same point)."""
  if process_count() == 1:
    return jax.device_get(tree)
  return jax.tree.map(_leaf_to_host, tree)
