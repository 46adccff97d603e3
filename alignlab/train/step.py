"""The one train step every stage uses: exact gradient accumulation, optimizer update.

A stage supplies `loss_fn(params, microbatch, hparams) -> (loss_sum, metrics)` where
`loss_sum` is the UNnormalized sum of per-example (or per-token) losses and
`metrics['count']` the number of terms. Gradients of `loss_sum` are summed over micro-batches
and divided by the total count once, so accumulating A micro-batches gives the full-batch
gradient exactly, whatever the padding (Σ loss_sum / Σ count, never a mean of means).

`hparams` are traced scalars (β, learning rate, ...), so `jax.vmap` over a leading run axis
of (state, hparams) trains a sweep as one program (`alignlab/train/fit.py`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from alignlab import sharding
from alignlab.train.optim import apply_updates

LossFn = Callable[[Any, dict, dict], tuple[jax.Array, dict]]


def init_state(params, optimizer: optax.GradientTransformation, key: jax.Array) -> dict:
  return {'params': params, 'opt_state': optimizer.init(params), 'step': jnp.zeros((), jnp.int32),
          'rng': key}


def _split_micro(batch: dict, accum: int) -> dict:
  def one(x):
    if x.shape[0] % accum:
      raise ValueError(f'batch of {x.shape[0]} rows does not split into {accum} micro-batches')
    return x.reshape(accum, x.shape[0] // accum, *x.shape[1:])
  return jax.tree.map(one, batch)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    grad_accum: int = 1) -> Callable:
  """(state, batch, hparams) -> (state, metrics); hparams must hold 'learning_rate'."""

  grads_of = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state, batch, hparams):
    params = state['params']
    if grad_accum == 1:
      (loss_sum, metrics), grads = grads_of(params, batch, hparams)
      count = metrics['count']
      weighted = {k: v * count for k, v in metrics.items() if k not in ('count', 'loss_sum')}
    else:
      micro = _split_micro(batch, grad_accum)

      def body(carry, mb):
        g_acc, l_acc, c_acc, w_acc = carry
        (l, m), g = grads_of(params, mb, hparams)
        c = m['count']
        w = {k: v * c for k, v in m.items() if k not in ('count', 'loss_sum')}
        return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, c_acc + c,
                jax.tree.map(jnp.add, w_acc, w)), None

      first = jax.tree.map(lambda x: x[0], micro)
      (_, m0), _ = jax.eval_shape(grads_of, params, first, hparams)
      zeros_w = {k: jnp.zeros(v.shape, v.dtype) for k, v in m0.items()
                 if k not in ('count', 'loss_sum')}
      init = (jax.tree.map(jnp.zeros_like, params), jnp.zeros(()), jnp.zeros(()), zeros_w)
      (grads, loss_sum, count, weighted), _ = jax.lax.scan(body, init, micro)
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, state['opt_state'], params)
    new_params = apply_updates(params, updates, hparams['learning_rate'])
    out = {k: v / denom for k, v in weighted.items()}
    grad_norm = optax.global_norm(grads)
    out.update({'loss': loss_sum / denom, 'count': count, 'grad_norm': grad_norm,
                # The NaN policy's signal (train/fit.py): this step's loss and update were finite.
                'finite': jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)})
    new_state = {**state, 'params': new_params, 'opt_state': opt_state, 'step': state['step'] + 1}
    return new_state, out

  return step


def jit_step(step: Callable, state: dict, mesh, *, donate: bool = True) -> Callable:
  """`jax.jit` with explicit shardings: state keeps its own, the batch is split over
  ('data', 'fsdp'), metrics are replicated; hparams keep the shardings they come with (they
  may carry frozen reference params); the old state is donated."""
  state_sh = sharding.shardings_of(state)
  return jax.jit(step, in_shardings=(state_sh, sharding.batch_sharding(mesh), None),
                 out_shardings=(state_sh, sharding.replicated(mesh)),
                 donate_argnums=(0,) if donate else ())
