"""optax optimizers from `OptimizerConfig`, with the learning rate kept outside.

The transformation built here stops short of the final `× −lr`: the train step multiplies by
the learning rate itself (`apply_updates`). That keeps the learning rate a traced value, so
a vectorized sweep (`jax.vmap` over a run axis, `sweep.py`) can give every run its own rate
while sharing one compiled program. The schedule (warmup, decay) is a unit-peak factor
applied inside the transformation.
"""

from __future__ import annotations

import jax
import optax

from alignlab.config import ConfigError, OptimizerConfig


def unit_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """Multiplier of the peak learning rate at each step: linear warmup, then constant,
  cosine or linear decay to 0 at `total_steps`."""
  warmup = max(cfg.warmup_steps, 0)
  if cfg.schedule == 'constant':
    decay = optax.constant_schedule(1.0)
  elif cfg.schedule in ('cosine', 'linear'):
    if cfg.total_steps <= warmup:
      raise ConfigError(f'optimizer.schedule={cfg.schedule!r} needs optimizer.total_steps > '
                        f'warmup_steps ({cfg.total_steps} ≤ {warmup})')
    n = cfg.total_steps - warmup
    decay = (optax.cosine_decay_schedule(1.0, n) if cfg.schedule == 'cosine'
             else optax.linear_schedule(1.0, 0.0, n))
  else:
    raise ConfigError(f'optimizer.schedule={cfg.schedule!r}; expected constant, cosine or linear')
  if not warmup:
    return decay
  # Warmup from 1/warmup (not 0) so that the first step already moves, as PyTorch's LambdaLR
  # warmup in the DPO reference code does with (step + 1) / warmup.
  return optax.join_schedules([optax.linear_schedule(1.0 / warmup, 1.0, warmup - 1), decay],
                              [warmup - 1])


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  """Clip → preconditioner → (decoupled weight decay) → unit schedule. Multiply by −lr after."""
  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  if cfg.name in ('adamw', 'adam'):
    parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
  elif cfg.name == 'rmsprop':
    # PyTorch's RMSprop (used by the DPO paper, App. B): eps outside the square root.
    parts.append(optax.scale_by_rms(decay=cfg.rms_decay, eps=cfg.eps, eps_in_sqrt=False,
                                    bias_correction=False))
  elif cfg.name == 'sgd':
    pass
  else:
    raise ConfigError(f'optimizer.name={cfg.name!r}; expected adamw, adam, rmsprop or sgd')
  if cfg.weight_decay and cfg.name != 'adam':
    parts.append(optax.add_decayed_weights(cfg.weight_decay))
  parts.append(optax.scale_by_schedule(unit_schedule(cfg)))
  return optax.chain(*parts)


def apply_updates(params, updates, learning_rate):
  return jax.tree.map(lambda p, u: (p - learning_rate * u).astype(p.dtype), params, updates)


def global_norm(tree) -> jax.Array:
  return optax.global_norm(tree)
