"""Vectorized sweeps: runs that differ only in scalar hyperparameters (β, α, learning rate,
seed) and share shapes train as ONE compiled program, `jax.vmap` over a leading run axis of
(state, hparams) around `train/step.py`'s step (DESIGN.md §5).

API
---
    state_R = fit_sweep(loss_fn, params, batches, hparams, *, optimizer, n_steps, run_dirs,
                        configs, seeds=None, shared=None, mesh=None, eval_fn=None,
                        eval_every=0, save_every=0, progress=True, stop_after=None,
                        runs_per_chunk='auto')

- `loss_fn(params, batch, hparams) -> (loss_sum, metrics)`: any stage's loss (as for `fit`).
- `params`: the initial params, shared by every run (e.g. π_ref's).
- `hparams`: {name: (R,) array}, one value per run; `learning_rate` defaults to
  `optimizer.learning_rate` for every run. `shared`: extras every run sees unbatched
  (`ref_params` for losses that run the reference per batch).
- `batches`: a `SweepBatches(arrays, batch_size, seeds)` (per-run data order: each run r reads
  the batches `ArrayBatches(arrays, batch_size, seed=seeds[r])` would give it; the arrays are
  put on the devices once and every run's batch is gathered inside the step), or a callable
  `batch_at(step) -> dict` whose batch every run shares.
- `seeds` (R,): each run's RNG key is `jax.random.key(seeds[r])`, as `fit(seed=...)` makes it;
  default: the seeds of a `SweepBatches`, else 0.
- `run_dirs`, `configs`: one per run. Each run dir gets what `train_loop` writes for a single
  run: `metrics.jsonl`, `eval.jsonl` and `checkpoints/` holding that run's own state, so a run
  of a sweep and the same run trained alone by `fit` have interchangeable checkpoints.
- `eval_fn(state_R, step) -> list of R dicts` (one per run) every `eval_every` steps, at step
  0 and at the end.
- `runs_per_chunk`: None vmaps all R runs at once; k maps over chunks of k vmapped runs
  inside the same program; 'auto' (default) is None on GPU/TPU and 1 on XLA:CPU, where a
  vmapped transformer step measured slower than its runs one by one (see
  `resolve_runs_per_chunk`). Either way the sweep is one compiled program.
- Returns the final state, every leaf with a leading run axis R; `run_state(state_R, r)`
  takes one run out.

The result of each run equals the same run trained alone (tests/test_sweep.py, ≤ 1e-5).
The run axis is sharded over the mesh's 'data' axis when that axis has more than one
device and divides R; each run's parameters keep their own ('fsdp', 'tensor') specs.
A run whose loss turns non-finite is reported (once) and keeps going with NaNs; it cannot
touch the other runs, and stopping every run for one bad learning rate would waste the rest.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from alignlab import sharding
from alignlab.checkpoint import Checkpointer
from alignlab.config import OptimizerConfig, to_dict
from alignlab.train.batches import ArrayBatches
from alignlab.train.loop import truncate_jsonl
from alignlab.train.optim import make_optimizer
from alignlab.train.step import init_state, make_train_step


class SweepBatches:
  """Per-run data order over one set of in-memory arrays: `indices(step)` is (R, B) int32,
  row r equal to `ArrayBatches(arrays, batch_size, seed=seeds[r]).indices(step)`."""

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seeds: Sequence[int], *,
               shuffle: bool = True):
    self.arrays = arrays
    self.seeds = [int(s) for s in seeds]
    self.per_run = [ArrayBatches(arrays, batch_size, seed=s, shuffle=shuffle) for s in self.seeds]

  @property
  def n_runs(self) -> int:
    return len(self.per_run)

  def indices(self, step: int) -> np.ndarray:
    return np.stack([b.indices(step) for b in self.per_run]).astype(np.int32)


@jax.jit
def _take(tree: Any, r: jax.Array) -> Any:
  return jax.tree.map(lambda x: x[r], tree)


def run_state(state_R: Any, r: int) -> Any:
  """Run r's slice of a stacked state (or params); one compiled program for every r."""
  return _take(state_R, jnp.int32(r))


def stack_hparams(rows: Sequence[dict[str, float]]) -> dict[str, jax.Array]:
  """[{'beta': 0.1, 'learning_rate': 1e-3}, ...] -> {'beta': (R,), 'learning_rate': (R,)}."""
  names = sorted(rows[0])
  if any(sorted(row) != names for row in rows):
    raise ValueError(f'every run needs the same hyperparameter names; got {[sorted(r) for r in rows]}')
  return {k: jnp.asarray([row[k] for row in rows], jnp.float32) for k in names}


# ----------------------------------------------------------------------------- the program


def run_axis(mesh, n_runs: int) -> str | None:
  """'data' when the mesh has several 'data' devices and they divide the runs, else None."""
  size = mesh.shape['data']
  return 'data' if size > 1 and n_runs % size == 0 else None


def _stacked_sharding(leaf, mesh, axis: str | None) -> NamedSharding:
  spec = leaf.sharding.spec if isinstance(getattr(leaf, 'sharding', None), NamedSharding) else P()
  inner = tuple(None if a == axis else a for a in tuple(spec) + (None,) * (leaf.ndim - len(spec)))
  return NamedSharding(mesh, P(axis, *inner))


def _batch_axes(axis: str | None) -> tuple[str, ...]:
  return tuple(a for a in sharding.BATCH_AXES if a != axis)


def make_sweep_step(step: Callable, *, gather: bool, runs_per_chunk: int | None = None) -> Callable:
  """Vectorizes `step(state, batch, hparams)` over a leading run axis.

  gather=True: `(state_R, data, indices_RxB, hparams_R, shared)`, each run's batch gathered
  from the shared `data` arrays inside the program. gather=False: `(state_R, batch,
  hparams_R, shared)` with one batch shared by every run. runs_per_chunk=None vmaps every run
  at once; k runs `lax.map` over chunks of k vmapped runs (still one program)."""

  def over_runs(fn, *xs):
    if runs_per_chunk is None:
      return jax.vmap(fn)(*xs)
    return jax.lax.map(lambda args: fn(*args), xs, batch_size=runs_per_chunk)

  if gather:
    def sweep_step(state_R, data, indices_RxB, hparams_R, shared):
      def one(state, indices_B, hp):
        batch = jax.tree.map(lambda x: jnp.take(x, indices_B, axis=0), data)
        return step(state, batch, {**hp, **shared})
      return over_runs(one, state_R, indices_RxB, hparams_R)
  else:
    def sweep_step(state_R, batch, hparams_R, shared):
      return over_runs(lambda s, hp: step(s, batch, {**hp, **shared}), state_R, hparams_R)
  return sweep_step


def resolve_runs_per_chunk(runs_per_chunk: int | str | None, axis: str | None) -> int | None:
  """'auto': every run in one vmap on GPU/TPU or when the run axis is sharded; on XLA:CPU one
  run at a time inside the program, because there the batched matmuls of a vmapped
  transformer step ran slower than R unbatched ones (benchmarks/sweep_speed.py)."""
  if runs_per_chunk != 'auto':
    return runs_per_chunk
  return 1 if jax.default_backend() == 'cpu' and axis is None else None


@functools.partial(jax.jit, static_argnums=(2,))
def _stack(single: dict, seeds_R: jax.Array, n_runs: int) -> dict:
  state_R = jax.tree.map(lambda x: jnp.broadcast_to(x, (n_runs,) + x.shape),
                         {k: v for k, v in single.items() if k != 'rng'})
  state_R['rng'] = jax.vmap(jax.random.key)(seeds_R)
  return state_R


def init_sweep_state(params: Any, optimizer, seeds: Sequence[int], mesh) -> tuple[dict, Any, Any]:
  """(state_R, its shardings, one run's state as a template): every run starts from `params`
  with a fresh optimizer state and the RNG key `jax.random.key(seed)` (seeds in [0, 2**32))."""
  single = init_state(params, optimizer, jax.random.key(0))
  axis = run_axis(mesh, len(seeds))
  shardings = jax.tree.map(lambda x: _stacked_sharding(x, mesh, axis), single)
  state_R = jax.device_put(_stack(single, jnp.asarray(seeds, jnp.uint32), len(seeds)), shardings)
  return state_R, shardings, single


# ----------------------------------------------------------------------------- the loop


def _common_step(ckpts: list[Checkpointer]) -> int:
  """The newest step every run has saved (0 if some run has none): runs of one sweep save
  together, so they only differ if a sweep was killed between two runs' saves."""
  common = None
  for c in ckpts:
    steps = set(c.all_steps())
    common = steps if common is None else common & steps
  return max(common) if common else 0


def _append(path: Path, rows: list[tuple[int, dict]]) -> None:
  with path.open('a') as f:
    for step, row in rows:
      f.write(json.dumps({'step': step, **row}) + '\n')


def sweep_loop(step_fn: Callable, state_R: dict, feed_at: Callable[[int], tuple], *,
               n_steps: int, run_dirs: Sequence[Path], configs: Sequence[Any], template: dict,
               shardings: Any, save_every: int = 0,
               eval_fn: Callable[[dict, int], list[dict]] | None = None, eval_every: int = 0,
               log_every: int = 1, desc: str = 'sweep', progress: bool = True,
               stop_after: int | None = None) -> dict:
  """`train_loop` for R runs at once: `step_fn(state_R, *feed_at(step)) -> (state_R,
  metrics_R)`. Resumes every run from the newest step all of them have saved."""
  run_dirs = [Path(d) for d in run_dirs]
  n_runs = len(run_dirs)
  for d in run_dirs:
    d.mkdir(parents=True, exist_ok=True)
  ckpts = [Checkpointer(d / 'checkpoints', to_dict(c), max_to_keep=2)
           for d, c in zip(run_dirs, configs)]
  start = _common_step(ckpts)
  if start:
    slices = []
    for c in ckpts:
      for extra in [s for s in c.all_steps() if s > start]:
        c.manager.delete(extra)  # ahead of the others: replayed, so saved again
      slices.append(c.restore(template, start))
    state_R = jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *slices), shardings)
  metrics_paths = [d / 'metrics.jsonl' for d in run_dirs]
  eval_paths = [d / 'eval.jsonl' for d in run_dirs]
  for path in metrics_paths + eval_paths:
    truncate_jsonl(path, start)

  def evaluate(state, step):
    rows = eval_fn(state, step)
    if len(rows) != n_runs:
      raise ValueError(f'eval_fn returned {len(rows)} rows for {n_runs} runs')
    for path, row in zip(eval_paths, rows):
      _append(path, [(step, row)])

  if eval_fn is not None and eval_every and start == 0:
    for path in eval_paths:
      path.unlink(missing_ok=True)
    evaluate(state_R, 0)
  end = n_steps if stop_after is None else min(n_steps, start + stop_after)
  diverged: set[int] = set()
  bar = tqdm(total=n_steps, initial=start, desc=desc, disable=not progress, dynamic_ncols=True)
  for step in range(start, end):
    state_R, metrics_R = step_fn(state_R, *feed_at(step))
    done = step + 1
    if done % log_every == 0 or done == end:
      host = {k: np.asarray(v, np.float64) for k, v in jax.device_get(metrics_R).items()}
      for r, path in enumerate(metrics_paths):
        row = {k: float(v[r]) for k, v in host.items()}
        _append(path, [(done, row)])
        if not math.isfinite(row['loss']) and r not in diverged:
          diverged.add(r)
          print(f'{desc}: run {run_dirs[r].name} has loss {row["loss"]} at step {done}; '
                'it continues with non-finite values', file=sys.stderr)
      bar.set_postfix(loss=f'{np.nanmean(host["loss"]):.4f}')
    bar.update(1)
    if save_every and done % save_every == 0 and done != end:
      for r, c in enumerate(ckpts):
        c.save(done, run_state(state_R, r))
    if eval_fn is not None and eval_every and (done % eval_every == 0 or done == n_steps):
      evaluate(state_R, done)
  bar.close()
  if end > start:
    for r, c in enumerate(ckpts):
      c.save(end, run_state(state_R, r), force=True)
  for c in ckpts:
    c.close()
  return state_R


def fit_sweep(loss_fn: Callable, params: Any, batches: SweepBatches | Callable[[int], dict],
              hparams: dict[str, Any], *, optimizer: OptimizerConfig, n_steps: int,
              run_dirs: Sequence[str | Path], configs: Sequence[Any],
              seeds: Sequence[int] | None = None, shared: dict | None = None, mesh=None,
              grad_accum: int = 1, save_every: int = 0,
              eval_fn: Callable[[dict, int], list[dict]] | None = None, eval_every: int = 0,
              log_every: int = 1, desc: str = 'sweep', progress: bool = True,
              stop_after: int | None = None, runs_per_chunk: int | str | None = 'auto') -> dict:
  """Trains R runs as one vectorized program; see the module docstring."""
  mesh = mesh if mesh is not None else sharding.make_mesh()
  n_runs = len(run_dirs)
  if len(configs) != n_runs:
    raise ValueError(f'{len(configs)} configs for {n_runs} run dirs')
  gather = isinstance(batches, SweepBatches)
  if seeds is None:
    seeds = batches.seeds if gather else [0] * n_runs
  if len(seeds) != n_runs or (gather and batches.n_runs != n_runs):
    raise ValueError(f'{n_runs} run dirs, {len(seeds)} seeds'
                     + (f', {batches.n_runs} data orders' if gather else ''))
  hp = {'learning_rate': jnp.full((n_runs,), optimizer.learning_rate, jnp.float32)}
  for k, v in hparams.items():
    v = jnp.asarray(v, jnp.float32)
    if v.shape != (n_runs,):
      raise ValueError(f'hparams[{k!r}] has shape {v.shape}; expected ({n_runs},), one per run')
    hp[k] = v
  tx = make_optimizer(optimizer)
  state_R, state_sh, template = init_sweep_state(params, tx, seeds, mesh)
  axis = run_axis(mesh, n_runs)
  runs_sh = NamedSharding(mesh, P(axis))
  hp = jax.device_put(hp, runs_sh)
  shared = dict(shared or {})
  step = make_sweep_step(make_train_step(loss_fn, tx, grad_accum=grad_accum), gather=gather,
                         runs_per_chunk=resolve_runs_per_chunk(runs_per_chunk, axis))
  if gather:
    data = jax.device_put({k: np.asarray(v) for k, v in batches.arrays.items()},
                          sharding.replicated(mesh))
    indices_sh = NamedSharding(mesh, P(axis, _batch_axes(axis)))
    jitted = jax.jit(step, in_shardings=(state_sh, sharding.replicated(mesh), indices_sh, runs_sh, None),
                     out_shardings=(state_sh, runs_sh), donate_argnums=(0,))

    def feed_at(i):
      return data, jax.device_put(batches.indices(i), indices_sh), hp, shared
  else:
    batch_sh = NamedSharding(mesh, P(_batch_axes(axis)))
    jitted = jax.jit(step, in_shardings=(state_sh, batch_sh, runs_sh, None),
                     out_shardings=(state_sh, runs_sh), donate_argnums=(0,))

    def feed_at(i):
      return jax.device_put({k: np.asarray(v) for k, v in batches(i).items()}, batch_sh), hp, shared

  with sharding.use_mesh(mesh):
    return sweep_loop(jitted, state_R, feed_at, n_steps=n_steps, run_dirs=run_dirs,
                      configs=configs, template=template, shardings=state_sh,
                      save_every=save_every, eval_fn=eval_fn, eval_every=eval_every,
                      log_every=log_every, desc=desc, progress=progress, stop_after=stop_after)
