"""The one training loop: 1…R runs, resume, progress bar, metrics, one NaN policy, checkpoints.

    state_R = fit_runs(loss_fn, params, data, hparams_R, optimizer=..., n_steps=...,
                       run_dirs=[...], configs=[...], seeds=[...], ref_params=None, ...)
    state = fit(loss_fn, params, batch_at, optimizer=..., n_steps=..., run_dir=..., config=...)
    state = loop(step_fn, state, feed_at, n_steps=..., run_dirs=[run_dir], configs=[...])

- `loss_fn(params, batch, hparams) -> (loss_sum, metrics)`: any stage's loss
  (`train/step.py`). `hparams` holds traced scalars only (β, α, the learning rate); the frozen
  reference, where a loss runs it per batch, arrives as `hparams['ref_params']` from the
  explicit `ref_params=` argument, shared (not vmapped) by every run.
- `data`: a `RunBatches(arrays, batch_size, seeds)` — every run r reads the batches
  `ArrayBatches(arrays, batch_size, seed=seeds[r])` would give it, gathered inside the
  program from arrays put on the devices once —, a `GrainBatches` with the same arguments
  (the same gathering, each run's order read from a grain iterator whose state is saved with
  the checkpoints), or a callable `batch_at(step) -> dict` whose batch every run shares.
- R runs that differ only in scalar hyperparameters and seeds train as ONE compiled program,
  `jax.vmap` (or `lax.map` over chunks) over a leading run axis of (state, hparams); the
  result of each run equals the same run trained alone (tests/test_sweep.py, ≤ 1e-5).

Batches are a pure function of the step and the RNG lives in the state, so a run resumed from
its checkpoint at step N replays exactly what an uninterrupted run does from N.

Several processes (`alignlab/distributed.py`): every process runs the loop over one mesh of
all their devices; each holds the whole host batch and places its own devices' shards
(`distributed.put`), metrics are gathered before they are read (`distributed.to_host`), and
process 0 alone writes the run dirs' files and shows the progress bar; checkpoints are
orbax's multi-host saves, which every process takes part in.

The NaN policy (one for every stage and method): a run whose loss or gradient norm turns
non-finite, or whose evaluation does, FAILS. It stops being saved and evaluated, `failed.json`
in its run dir records the step and the reason, and its newest checkpoint stays the last state
that was finite (a save also checks the parameters). The other runs of the program go on.
`fit` (one run) raises `TrainingDiverged` when its run fails.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from alignlab import distributed, sharding
from alignlab.checkpoint import Checkpointer
from alignlab.config import OptimizerConfig, to_dict
from alignlab.train.batches import ArrayBatches, GrainBatches
from alignlab.train.optim import make_optimizer
from alignlab.train.step import init_state, make_train_step

FAILED = 'failed.json'
STOPPED = 'stopped.json'
# Evaluation keys whose non-finite value fails a run: a point computed from a NaN policy.
EVAL_FINITE_KEYS = ('gold_reward', 'kl', 'objective')


class TrainingDiverged(RuntimeError):
  """A run's loss, gradients, parameters or evaluation became non-finite."""


class RunBatches:
  """Per-run data order over one set of in-memory arrays: `indices(step)` is (R, B) int32,
  row r equal to `ArrayBatches(arrays, batch_size, seed=seeds[r]).indices(step)`."""

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seeds: Sequence[int], *,
               shuffle: bool = True):
    self.arrays, self.batch_size = arrays, batch_size
    self.seeds = [int(s) for s in seeds]
    self.per_run = [ArrayBatches(arrays, batch_size, seed=s, shuffle=shuffle) for s in self.seeds]

  @property
  def n_runs(self) -> int:
    return len(self.per_run)

  def indices(self, step: int) -> np.ndarray:
    return np.stack([b.indices(step) for b in self.per_run]).astype(np.int32)


# ----------------------------------------------------------------------------- run axis


@jax.jit
def _take(tree: Any, r: jax.Array) -> Any:
  return jax.tree.map(lambda x: x[r], tree)


def run_state(state_R: Any, r: int) -> Any:
  """Run r's slice of a stacked state (or params); one compiled program for every r."""
  return _take(state_R, jnp.int32(r))


def stack_hparams(rows: Sequence[dict[str, float]]) -> dict[str, jax.Array]:
  """[{'beta': 0.1}, {'beta': 1.0}] -> {'beta': (R,)}."""
  names = sorted(rows[0])
  if any(sorted(row) != names for row in rows):
    raise ValueError(f'every run needs the same hyperparameter names; got {[sorted(r) for r in rows]}')
  return {k: jnp.asarray([row[k] for row in rows], jnp.float32) for k in names}


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


def make_runs_step(step: Callable, *, gather: bool, runs_per_chunk: int | None = None) -> Callable:
  """Vectorizes `step(state, batch, hparams)` over a leading run axis.

  gather=True: `(state_R, data, indices_RxB, hparams_R, shared)`, each run's batch gathered
  from the shared `data` arrays inside the program. gather=False: `(state_R, batch,
  hparams_R, shared)` with one batch shared by every run. runs_per_chunk=None vmaps every run
  at once; k runs `lax.map` over chunks of k vmapped runs (still one program)."""

  # The map over runs is spelled out in each `runs_step`, not a helper: a helper would be one
  # more frame between the CLI and the loss (tests/test_call_depth.py).
  if gather:
    def runs_step(state_R, data, indices_RxB, hparams_R, shared):
      def one(xs):
        state, indices_B, hp = xs
        return step(state, jax.tree.map(lambda x: jnp.take(x, indices_B, axis=0), data),
                    {**hp, **shared})
      xs = (state_R, indices_RxB, hparams_R)
      return (jax.vmap(one)(xs) if runs_per_chunk is None
              else jax.lax.map(one, xs, batch_size=runs_per_chunk))
  else:
    def runs_step(state_R, batch, hparams_R, shared):
      def one(xs):
        state, hp = xs
        return step(state, batch, {**hp, **shared})
      xs = (state_R, hparams_R)
      return (jax.vmap(one)(xs) if runs_per_chunk is None
              else jax.lax.map(one, xs, batch_size=runs_per_chunk))
  return runs_step


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


def init_runs_state(params: Any, optimizer, seeds: Sequence[int], mesh) -> tuple[dict, Any, Any]:
  """(state_R, its shardings, one run's state as a template): every run starts from `params`
  with a fresh optimizer state and the RNG key `jax.random.key(seed)` (seeds in [0, 2**32))."""
  single = init_state(params, optimizer, jax.random.key(0))
  axis = run_axis(mesh, len(seeds))
  shardings = jax.tree.map(lambda x: _stacked_sharding(x, mesh, axis), single)
  state_R = distributed.reshard(_stack(single, jnp.asarray(seeds, jnp.uint32), len(seeds)),
                                shardings)
  return state_R, shardings, single


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.inexact)]))


# ----------------------------------------------------------------------------- the loop


def truncate_jsonl(path: Path, last_step: int) -> None:
  """Drops records past `last_step` (written after the checkpoint we resume from)."""
  if not path.exists() or not distributed.is_writer():
    return
  keep = [line for line in path.read_text().splitlines()
          if line.strip() and json.loads(line).get('step', 0) <= last_step]
  path.write_text(''.join(line + '\n' for line in keep))


def read_last(path: Path) -> dict | None:
  """The last record of a jsonl file, or None."""
  if not path.exists():
    return None
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  return json.loads(lines[-1]) if lines else None


def eval_schedule(n_steps: int, points: int) -> list[int]:
  """Up to `points` evaluation steps in (0, n_steps], each twice the one before and the last at
  n_steps (…, n/4, n/2, n): a policy moves most early on, and a path drawn on a log scale of
  steps is evenly sampled. Step 0 is evaluated apart."""
  if n_steps <= 0 or points <= 0:
    return []
  grid = np.round(n_steps / 2.0 ** np.arange(points)[::-1]).astype(int)
  return sorted(set(np.clip(grid, 1, n_steps).tolist()))


def _record_at(path: Path, step: int) -> dict | None:
  """The last record of `step` in a jsonl file, or None."""
  rows = [json.loads(line) for line in path.read_text().splitlines()
          if line.strip()] if path.exists() else []
  return next((row for row in reversed(rows) if row.get('step') == step), None)


def _append(path: Path, step: int, row: dict) -> None:
  if not distributed.is_writer():
    return
  with path.open('a') as f:
    f.write(json.dumps({'step': step, **row}) + '\n')


def _common_step(ckpts: list[Checkpointer]) -> int:
  """The newest step every run has saved (0 if some run has none): runs of one program save
  together, so they only differ if it was killed between two runs' saves."""
  common = None
  for c in ckpts:
    steps = set(c.all_steps())
    common = steps if common is None else common & steps
  return max(common) if common else 0


def mark_failed(run_dir: Path, record: dict) -> None:
  if distributed.is_writer():
    (Path(run_dir) / FAILED).write_text(json.dumps(record))


def diverged_message(desc: str, record: dict, run_dir: str | Path) -> str:
  return (f'{desc}: {record["reason"]} at step {record["step"]}; the last finite checkpoint is '
          f'step {record["last_checkpoint"]} in {Path(run_dir) / "checkpoints"}')


def failure(run_dir: str | Path) -> dict | None:
  """The failure record of a run dir, or None."""
  path = Path(run_dir) / FAILED
  return json.loads(path.read_text()) if path.exists() else None


def _host(metrics: dict) -> dict[str, np.ndarray]:
  return {k: np.atleast_1d(np.asarray(v, np.float64))
          for k, v in distributed.to_host(metrics).items()}


def loop(step_fn: Callable, state: Any, feed_at: Callable[[int], tuple], *, n_steps: int,
         run_dirs: Sequence[str | Path], configs: Sequence[Any],
         take: Callable[[Any, int], Any] | None = None,
         stack: Callable[[list], Any] | None = None,
         save_every: int = 0, eval_fn: Callable[[Any, int], list[dict]] | None = None,
         eval_every: int = 0, log_every: int = 1, desc: str = 'train', progress: bool = True,
         stop_after: int | None = None, eval_steps: Sequence[int] | None = None,
         stop_fn: Callable[[dict], str | None] | None = None,
         freeze: Callable[[int], None] | None = None,
         cost_per_step: dict[str, float] | None = None,
         data_state: GrainBatches | None = None) -> tuple[Any, list[dict | None]]:
  """Runs `step_fn(state, *feed_at(step)) -> (state, metrics)` from the newest checkpoint all
  runs have saved (or from `state`) to `n_steps`; returns (state, failures), one failure
  record (or None) per run.

  One run: `take`/`stack` None, metrics scalars, `eval_fn(state, step) -> [row]`. R runs: the
  state is stacked (`take(state, r)` gives run r's, `stack(states)` the inverse), metrics
  have a leading run axis and `eval_fn` returns R rows. Every run logs into its own run dir:
  `metrics.jsonl`, `eval.jsonl`, `checkpoints/`. `stop_after` ends early after that many
  steps (to simulate an interruption).

  The protocol of a frontier (docs/design.md §6): evaluations at step 0 and at `eval_steps`
  (e.g. `eval_schedule`'s geometric grid; else every `eval_every`), and a stopping rule:
  `stop_fn(row) -> reason | None` on each evaluation (a KL cap). A run that stops is frozen
  (`freeze(r)`: its learning rate set to 0, so its parameters stay those evaluated last),
  is neither evaluated nor logged again, and records `stopped.json`; the loop ends when every
  run has stopped or failed. Each evaluation row gets its cost: `wall_s` and, per
  `cost_per_step`, e.g. `train_tokens` and `train_flops` times the steps taken.

  `data_state`: the `GrainBatches` that `feed_at` reads; its iterators' states are saved with
  every checkpoint (`data_state.jsonl` of each run dir, at the checkpoint's step) and set back
  on resume, so the resumed run reads the batches the uninterrupted one would have."""
  run_dirs = [Path(d) for d in run_dirs]
  n_runs = len(run_dirs)
  take = take or (lambda s, r: s)
  stack = stack or (lambda states: states[0])
  writer = distributed.is_writer()  # the others compute with it and write nothing
  for d in run_dirs:
    if writer:
      d.mkdir(parents=True, exist_ok=True)
  ckpts = [Checkpointer(d / 'checkpoints', to_dict(c), max_to_keep=2)
           for d, c in zip(run_dirs, configs)]
  try:
    start = _common_step(ckpts)
    if start:
      slices = []
      for c in ckpts:
        for extra in [s for s in c.all_steps() if s > start]:
          c.manager.delete(extra)  # ahead of the others: replayed, so saved again
        slices.append(c.restore(take(state, 0), start))
      state = stack(slices)
    metrics_paths = [d / 'metrics.jsonl' for d in run_dirs]
    eval_paths = [d / 'eval.jsonl' for d in run_dirs]
    data_paths = [d / 'data_state.jsonl' for d in run_dirs]
    for path in metrics_paths + eval_paths + data_paths:
      truncate_jsonl(path, start)
    if data_state is not None and start:
      saved = [_record_at(p, start) for p in data_paths]
      if any(row is None for row in saved):
        raise ValueError(f'{desc}: no data iterator state at step {start} beside the checkpoint '
                         f'({", ".join(str(p) for p in data_paths)})')
      data_state.set_state([row['state'] for row in saved], start)
    failed: list[dict | None] = [None] * n_runs
    for d in run_dirs:
      if writer:
        (d / FAILED).unlink(missing_ok=True)  # a rerun starts from the last finite checkpoint
    stopped: list[dict | None] = [None] * n_runs
    for r, d in enumerate(run_dirs):
      record = json.loads((d / STOPPED).read_text()) if (d / STOPPED).exists() else None
      if record is not None and record['step'] <= start:
        stopped[r] = record  # stopped before the step we resume from: frozen again
        if freeze is not None:
          freeze(r)
      elif writer:
        (d / STOPPED).unlink(missing_ok=True)  # replayed: it stops again where it did
    last_rows = [read_last(p) for p in eval_paths]
    wall0 = [row.get('wall_s', 0.0) if row else 0.0 for row in last_rows]
    t_start = time.perf_counter()
    eval_at = set(eval_steps) if eval_steps is not None else None

    def fail(r: int, step: int, reason: str) -> None:
      if failed[r] is None:
        ckpts[r].wait()
        failed[r] = {'step': step, 'reason': reason, 'last_checkpoint': ckpts[r].latest_step()}
        mark_failed(run_dirs[r], failed[r])
        if writer:
          tqdm.write(f'{desc}: run {run_dirs[r].name} failed at step {step}: {reason}')

    def evaluate(step):
      rows = eval_fn(state, step)
      if len(rows) != n_runs:
        raise ValueError(f'eval_fn returned {len(rows)} rows for {n_runs} runs')
      for r, (path, row) in enumerate(zip(eval_paths, rows)):
        if failed[r] is not None or stopped[r] is not None:
          continue
        bad = [k for k in EVAL_FINITE_KEYS if k in row and not math.isfinite(row[k])]
        if bad:
          fail(r, step, f'non-finite evaluation ({", ".join(f"{k}={row[k]}" for k in bad)})')
          continue
        row = {**row, 'wall_s': wall0[r] + time.perf_counter() - t_start,
               **{k: v * step for k, v in (cost_per_step or {}).items()}}
        _append(path, step, row)
        reason = stop_fn(row) if stop_fn is not None else None
        if reason is not None:
          stopped[r] = {'step': step, 'reason': reason}
          if writer:
            (run_dirs[r] / STOPPED).write_text(json.dumps(stopped[r]))
          if freeze is not None:
            freeze(r)

    def save(step):
      states = data_state.get_state() if data_state is not None else None
      for r, c in enumerate(ckpts):
        if failed[r] is None:
          run = take(state, r)
          if bool(_all_finite(run)):
            c.save(step, run, force=True)
            if states is not None:
              _append(data_paths[r], step, {'state': states[r]})
          else:
            fail(r, step, 'non-finite parameters')

    if eval_fn is not None and (eval_every or eval_at) and start == 0:
      for path in eval_paths:
        if writer:
          path.unlink(missing_ok=True)
      evaluate(0)
    end = n_steps if stop_after is None else min(n_steps, start + stop_after)
    finite_R = None
    bar = tqdm(total=n_steps, initial=start, desc=desc, disable=not (progress and writer),
               dynamic_ncols=True)
    for step in range(start, end):
      state, metrics = step_fn(state, *feed_at(step))
      done = step + 1
      ok = metrics.pop('finite', None)
      if ok is not None:  # accumulated on the device: no host sync per step
        finite_R = ok if finite_R is None else finite_R & ok
      checkpoint = save_every and done % save_every == 0 and done != end
      evaluation = eval_fn is not None and (
          done in eval_at if eval_at is not None else
          bool(eval_every) and (done % eval_every == 0 or done == n_steps))
      if done % log_every == 0 or done == end or checkpoint or evaluation:
        host = _host(metrics)
        oks = (np.atleast_1d(np.asarray(distributed.to_host(finite_R)))
               if finite_R is not None else None)
        for r, path in enumerate(metrics_paths):
          if failed[r] is not None or stopped[r] is not None:
            continue
          row = {k: float(v[r]) for k, v in host.items()}
          if (oks is not None and not oks[r]) or not math.isfinite(row['loss']):
            fail(r, done, f'non-finite loss or gradient (loss {row["loss"]})')
          else:
            _append(path, done, row)
        finite_loss = host['loss'][np.isfinite(host['loss'])]
        if finite_loss.size:
          bar.set_postfix(loss=f'{finite_loss.mean():.4f}')
      bar.update(1)
      if all(f is not None or t is not None for f, t in zip(failed, stopped)):
        end = done  # every run has stopped or failed: nothing left to train
        break
      if checkpoint:
        save(done)
      if evaluation:
        evaluate(done)
    bar.close()
    if end > start and not all(f is not None for f in failed):
      save(end)
    for c in ckpts:
      c.wait()
    distributed.sync('alignlab.fit.loop')  # what process 0 wrote is there for every process
    return state, failed
  finally:
    for c in ckpts:
      c.close()


# ----------------------------------------------------------------------------- fit


def fit_runs(loss_fn: Callable, params: Any,
             data: RunBatches | GrainBatches | Callable[[int], dict],
             hparams: dict[str, Any], *, optimizer: OptimizerConfig, n_steps: int,
             run_dirs: Sequence[str | Path], configs: Sequence[Any],
             seeds: Sequence[int] | None = None, ref_params: Any = None, mesh=None,
             grad_accum: int = 1, save_every: int = 0,
             eval_fn: Callable[[dict, int], list[dict]] | None = None, eval_every: int = 0,
             log_every: int = 1, desc: str = 'train', progress: bool = True,
             stop_after: int | None = None, eval_steps: Sequence[int] | None = None,
             stop_fn: Callable[[dict], str | None] | None = None,
             runs_per_chunk: int | str | None = 'auto') -> tuple[dict, list[dict | None]]:
  """Trains R runs as one program; returns (state_R, failures). See the module docstring and
  `loop` (the evaluation schedule and the stopping rule)."""
  mesh = mesh if mesh is not None else sharding.make_mesh()
  n_runs = len(run_dirs)
  if len(configs) != n_runs:
    raise ValueError(f'{len(configs)} configs for {n_runs} run dirs')
  gather = isinstance(data, (RunBatches, GrainBatches))
  if seeds is None:
    seeds = data.seeds if gather else [0] * n_runs
  if len(seeds) != n_runs or (gather and data.n_runs != n_runs):
    raise ValueError(f'{n_runs} run dirs, {len(seeds)} seeds'
                     + (f', {data.n_runs} data orders' if gather else ''))
  hp = {'learning_rate': jnp.full((n_runs,), optimizer.learning_rate, jnp.float32)}
  for k, v in hparams.items():
    v = jnp.asarray(v, jnp.float32)
    if v.shape != (n_runs,):
      raise ValueError(f'hparams[{k!r}] has shape {v.shape}; expected ({n_runs},), one per run')
    hp[k] = v
  tx = make_optimizer(optimizer)
  state_R, state_sh, _ = init_runs_state(params, tx, seeds, mesh)
  axis = run_axis(mesh, n_runs)
  runs_sh = NamedSharding(mesh, P(axis))
  hp = distributed.reshard(hp, jax.tree.map(lambda _: runs_sh, hp))
  shared = {} if ref_params is None else {'ref_params': ref_params}
  live = {'hp': hp}  # a stopped run trains on at learning rate 0: its parameters stay put

  def freeze(r: int) -> None:
    h = dict(live['hp'])
    h['learning_rate'] = distributed.reshard(h['learning_rate'].at[r].set(0.0), runs_sh)
    live['hp'] = h
  step = _runs_step(loss_fn, optimizer, tx, grad_accum, gather,
                    resolve_runs_per_chunk(runs_per_chunk, axis), state_sh, runs_sh, mesh, axis,
                    shared)
  # Every process holds the whole host data and places its own devices' shards
  # (`distributed.put`; `jax.device_put` on one process).
  if gather:
    arrays = {k: distributed.put(np.asarray(v), sharding.replicated(mesh))
              for k, v in data.arrays.items()}
    indices_sh = NamedSharding(mesh, P(axis, _batch_axes(axis)))

    next_indices = data.next_indices if isinstance(data, GrainBatches) else data.indices

    def feed_at(i):
      return arrays, distributed.put(next_indices(i), indices_sh), live['hp'], shared
  else:
    batch_sh = NamedSharding(mesh, P(_batch_axes(axis)))

    def feed_at(i):
      return ({k: distributed.put(np.asarray(v), batch_sh) for k, v in data(i).items()},
              live['hp'], shared)

  def stack(slices):
    return distributed.reshard(jax.tree.map(lambda *xs: jnp.stack(xs), *slices), state_sh)

  with sharding.use_mesh(mesh):
    return loop(step, state_R, feed_at, n_steps=n_steps, run_dirs=run_dirs, configs=configs,
                take=run_state, stack=stack, save_every=save_every, eval_fn=eval_fn,
                eval_every=eval_every, log_every=log_every, desc=desc, progress=progress,
                stop_after=stop_after, eval_steps=eval_steps, stop_fn=stop_fn, freeze=freeze,
                cost_per_step=step_cost(params, data, grad_accum),
                data_state=data if isinstance(data, GrainBatches) else None)


def n_params(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def step_cost(params: Any, data: RunBatches | Callable[[int], dict], grad_accum: int = 1) -> dict:
  """Per training step of one run: the token positions it runs forward and backward
  (`train_tokens`, padding included: what the device computes) and its model FLOPs,
  6 · parameters · tokens (forward + backward; Kaplan et al. 2020, arXiv 2001.08361 §2.1)."""
  del grad_accum  # accumulation splits a batch; the tokens of a step are the same
  gather = isinstance(data, (RunBatches, GrainBatches))
  batch = {k: v[:1] for k, v in data.arrays.items()} if gather else data(0)
  rows = data.batch_size if gather else None
  tokens = 0
  for key, value in batch.items():
    if key == 'tokens' or key.endswith('_tokens'):
      shape = np.shape(value)
      tokens += (rows if rows is not None else shape[0]) * int(np.prod(shape[1:]))
  return {'train_tokens': float(tokens), 'train_flops': 6.0 * n_params(params) * tokens}


_STEPS: collections.OrderedDict = collections.OrderedDict()  # a few recent jitted steps
_MAX_STEPS = 8


def _runs_step(loss_fn, optimizer, tx, grad_accum, gather, runs_per_chunk, state_sh, runs_sh,
               mesh, axis, shared):
  """The jitted program for this (loss, optimizer, layout), reused across calls in one
  process: runs of a sweep done one after another compile once, not R times. The learning
  rate is a traced hparam, not part of the program."""
  key = (loss_fn, dataclasses.replace(optimizer, learning_rate=0.0), grad_accum, gather,
         runs_per_chunk, mesh, axis, jax.tree.structure(state_sh), tuple(jax.tree.leaves(state_sh)),
         tuple(sorted(shared)))
  if key not in _STEPS:
    step = make_runs_step(make_train_step(loss_fn, tx, grad_accum=grad_accum), gather=gather,
                          runs_per_chunk=runs_per_chunk)
    if gather:
      in_sh = (state_sh, sharding.replicated(mesh), NamedSharding(mesh, P(axis, _batch_axes(axis))),
               runs_sh, None)
    else:
      in_sh = (state_sh, NamedSharding(mesh, P(_batch_axes(axis))), runs_sh, None)
    _STEPS[key] = jax.jit(step, in_shardings=in_sh, out_shardings=(state_sh, runs_sh),
                          donate_argnums=(0,))
    if len(_STEPS) > _MAX_STEPS:
      _STEPS.popitem(last=False)
  _STEPS.move_to_end(key)
  return _STEPS[key]


def fit(loss_fn: Callable, params: Any, batch_at: Callable[[int], dict], *,
        optimizer: OptimizerConfig, n_steps: int, run_dir: str | Path, config: Any, mesh=None,
        hparams: dict | None = None, ref_params: Any = None, grad_accum: int = 1, seed: int = 0,
        save_every: int = 0, eval_fn: Callable | None = None, eval_every: int = 0,
        log_every: int = 1, desc: str = 'train', progress: bool = True,
        stop_after: int | None = None) -> dict:
  """One run of `fit_runs`: trains `params` for `n_steps` (resuming from `run_dir`), returns
  its final state (no run axis); `eval_fn(state, step) -> dict`. An `ArrayBatches` is read
  inside the program like a `RunBatches`; any other `batch_at` is fed batch by batch."""
  if isinstance(batch_at, ArrayBatches):
    data: Any = RunBatches(batch_at.arrays, batch_at.batch_size, [batch_at.seed],
                           shuffle=batch_at.shuffle)
  else:
    data = batch_at
  def run_eval(state_R, step):
    return [eval_fn(run_state(state_R, 0), step)]

  state_R, failed = fit_runs(
      loss_fn, params, data, {k: [v] for k, v in (hparams or {}).items()}, optimizer=optimizer,
      n_steps=n_steps, run_dirs=[run_dir], configs=[config], seeds=[seed], ref_params=ref_params,
      mesh=mesh, grad_accum=grad_accum, save_every=save_every,
      eval_fn=None if eval_fn is None else run_eval,
      eval_every=eval_every, log_every=log_every, desc=desc, progress=progress,
      stop_after=stop_after)
  if failed[0] is not None:
    raise TrainingDiverged(diverged_message(desc, failed[0], run_dir))
  return run_state(state_R, 0)
