"""`fit`: the glue every stage shares — optimizer, state, jitted sharded step, loop."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

from alignlab import sharding
from alignlab.config import OptimizerConfig
from alignlab.train.loop import train_loop
from alignlab.train.optim import make_optimizer
from alignlab.train.step import init_state, jit_step, make_train_step


_STEPS: collections.OrderedDict = collections.OrderedDict()  # a few recent jitted steps
_MAX_STEPS = 8


def _jitted_step(loss_fn: Callable, optimizer: OptimizerConfig, tx, grad_accum: int, state, mesh):
  """The jitted step for this (loss, optimizer, state layout), reused across `fit` calls in one
  process: R runs of a sweep done one after another compile once, not R times."""
  # The learning rate is a traced hparam, not part of the program: runs that differ only in it
  # share one.
  key = (loss_fn, dataclasses.replace(optimizer, learning_rate=0.0), grad_accum, mesh,
         jax.tree.structure(state),
         tuple((x.shape, x.dtype, x.sharding) for x in jax.tree.leaves(state)))
  if key not in _STEPS:
    _STEPS[key] = jit_step(make_train_step(loss_fn, tx, grad_accum=grad_accum), state, mesh)
    if len(_STEPS) > _MAX_STEPS:
      _STEPS.popitem(last=False)
  _STEPS.move_to_end(key)
  return _STEPS[key]


def fit(loss_fn: Callable, params: Any, batch_at: Callable[[int], dict], *, optimizer: OptimizerConfig,
        n_steps: int, run_dir: str | Path, config: Any, mesh=None, hparams: dict | None = None,
        grad_accum: int = 1, seed: int = 0, save_every: int = 0,
        eval_fn: Callable | None = None, eval_every: int = 0, desc: str = 'train',
        progress: bool = True, stop_after: int | None = None) -> dict:
  """Trains `params` with `loss_fn` for `n_steps` (resuming from `run_dir` if it holds a
  checkpoint) and returns the final state. `hparams` are traced scalars passed to the loss;
  the learning rate is added from `optimizer`."""
  mesh = mesh if mesh is not None else sharding.make_mesh()
  tx = make_optimizer(optimizer)
  # Copy: the step donates its state, and the caller may still need `params`.
  state = init_state(jax.tree.map(jnp.copy, params), tx, jax.random.key(seed))
  # Leaves made without a mesh (optimizer counts, step, rng) would get the mesh only as step
  # outputs, so the second call would see new input types and compile the step again.
  state = jax.tree.map(lambda x: x if isinstance(x.sharding, jax.sharding.NamedSharding)
                       else jax.device_put(x, sharding.replicated(mesh)), state)
  step = _jitted_step(loss_fn, optimizer, tx, grad_accum, state, mesh)
  hp = {'learning_rate': jnp.asarray(optimizer.learning_rate, jnp.float32)}
  for k, v in (hparams or {}).items():
    hp[k] = v if k == 'ref_params' else jnp.asarray(v, jnp.float32)

  def sharded_batch_at(i):
    return sharding.shard_batch(batch_at(i), mesh)

  with sharding.use_mesh(mesh):
    return train_loop(step, state, sharded_batch_at, hp, n_steps=n_steps, run_dir=run_dir,
                      config=config, save_every=save_every, eval_fn=eval_fn,
                      eval_every=eval_every, desc=desc, progress=progress, stop_after=stop_after)
