"""One thin loop for every stage: resume, progress bar, metrics.jsonl, NaN guard, checkpoints.

Batches are a pure function of the step number (`batch_at(step)`), and the RNG lives in the
state, so a run resumed from a checkpoint at step N replays exactly what an uninterrupted
run does from N (bitwise on CPU).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from alignlab.checkpoint import Checkpointer


class TrainingDiverged(RuntimeError):
  """A non-finite loss; the last good checkpoint is kept."""


def _to_host(metrics: dict) -> dict:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


def truncate_jsonl(path: Path, last_step: int) -> None:
  """Drops records past `last_step` (written after the checkpoint we resume from)."""
  if not path.exists():
    return
  keep = [line for line in path.read_text().splitlines()
          if line.strip() and json.loads(line).get('step', 0) <= last_step]
  path.write_text(''.join(line + '\n' for line in keep))


def train_loop(step_fn: Callable, state: dict, batch_at: Callable[[int], Any], hparams: dict, *,
               n_steps: int, run_dir: str | Path, config: Any, save_every: int = 0,
               eval_fn: Callable[[dict, int], dict] | None = None, eval_every: int = 0,
               desc: str = 'train', log_every: int = 1, progress: bool = True,
               stop_after: int | None = None) -> dict:
  """Runs `step_fn` from the latest checkpoint in `run_dir/checkpoints` (or from `state`) to
  `n_steps`. `stop_after` ends early after that many steps (to simulate an interruption)."""
  run_dir = Path(run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  ckpt = Checkpointer(run_dir / 'checkpoints', config, max_to_keep=2)
  metrics_path, eval_path = run_dir / 'metrics.jsonl', run_dir / 'eval.jsonl'
  start = ckpt.latest_step() or 0
  if start:
    state = ckpt.restore(state, start)
  truncate_jsonl(metrics_path, start)
  truncate_jsonl(eval_path, start)
  if eval_fn is not None and start == 0 and eval_every and not eval_path.exists():
    with eval_path.open('a') as f:
      f.write(json.dumps({'step': 0, **eval_fn(state, 0)}) + '\n')
  end = n_steps if stop_after is None else min(n_steps, start + stop_after)
  bar = tqdm(total=n_steps, initial=start, desc=desc, disable=not progress, dynamic_ncols=True)
  with metrics_path.open('a') as mf:
    for step in range(start, end):
      state, metrics = step_fn(state, batch_at(step), hparams)
      done = step + 1
      if done % log_every == 0 or done == end:
        host = _to_host(metrics)
        if not math.isfinite(host['loss']):
          ckpt.wait()
          raise TrainingDiverged(
              f'{desc}: loss is {host["loss"]} at step {done}; stopped. The last good checkpoint '
              f'is step {ckpt.latest_step()} in {run_dir / "checkpoints"}')
        mf.write(json.dumps({'step': done, **host}) + '\n')
        mf.flush()
        bar.set_postfix(loss=f'{host["loss"]:.4f}')
      bar.update(1)
      if save_every and done % save_every == 0 and done != end:
        ckpt.save(done, state)
      if eval_fn is not None and eval_every and (done % eval_every == 0 or done == n_steps):
        with eval_path.open('a') as f:
          f.write(json.dumps({'step': done, **eval_fn(state, done)}) + '\n')
  bar.close()
  if end > start:
    ckpt.save(end, state, force=True)
  ckpt.close()
  return state
