"""The Bradley–Terry reward model: the shared transformer with a scalar head, read at the last
real token of prompt ⊕ response."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignlab import sharding
from alignlab.config import ModelConfig, OptimizerConfig
from alignlab.heads import ScalarModel, embedding_from_lm, last_token_value
from alignlab.losses.reward import bradley_terry
from alignlab.train.batches import ArrayBatches, fixed_batches
from alignlab.train.fit import fit


def pair_rewards(model, batch: dict):
  tokens = jnp.concatenate([batch['chosen_tokens'], batch['rejected_tokens']], 0)
  attn = jnp.concatenate([batch['chosen_attention_mask'], batch['rejected_attention_mask']], 0)
  rewards_2B = last_token_value(model(tokens, attn), attn)
  b = batch['chosen_tokens'].shape[0]
  return rewards_2B[:b], rewards_2B[b:]


def make_loss_fn(graphdef):

  def loss_fn(params, batch, hparams):
    del hparams
    chosen_B, rejected_B = pair_rewards(nnx.merge(graphdef, params), batch)
    _, metrics = bradley_terry(chosen_rewards=chosen_B, rejected_rewards=rejected_B,
                               example_mask=batch.get('example_mask'))
    return metrics['loss_sum'], metrics

  return loss_fn


@functools.partial(jax.jit, static_argnames=('graphdef',))
def score(graphdef, params, tokens_BxT, attention_mask_BxT):
  """Reward of each sequence (at its last real token)."""
  model = nnx.merge(graphdef, params)
  return last_token_value(model(tokens_BxT, attention_mask_BxT), attention_mask_BxT)


@functools.partial(jax.jit, static_argnames=('graphdef',))
def _pair_metrics(graphdef, params, batch):
  chosen_B, rejected_B = pair_rewards(nnx.merge(graphdef, params), batch)
  _, metrics = bradley_terry(chosen_rewards=chosen_B, rejected_rewards=rejected_B,
                             example_mask=batch.get('example_mask'))
  return metrics


def evaluate_pairs(graphdef, params, pairs: dict, *, batch_size: int = 256) -> dict:
  """Held-out `accuracy`, `margin` and `loss` over every pair (exact masked means)."""
  n = len(pairs['chosen_tokens'])
  keys = [k for k in pairs if k.endswith(('_tokens', '_attention_mask'))]
  totals: dict[str, float] = {}
  for idx, n_real in fixed_batches(n, batch_size):
    batch = {k: jnp.asarray(pairs[k][idx]) for k in keys}
    batch['example_mask'] = jnp.asarray(np.arange(batch_size) < n_real, jnp.float32)
    m = jax.device_get(_pair_metrics(graphdef, params, batch))
    c = float(m['count'])
    for k in ('accuracy', 'margin'):
      totals[k] = totals.get(k, 0.0) + float(m[k]) * c
    totals['loss'] = totals.get('loss', 0.0) + float(m['loss_sum'])
    totals['count'] = totals.get('count', 0.0) + c
  return {k: v / totals['count'] for k, v in totals.items() if k != 'count'}


def normalize(params: dict, scores: np.ndarray) -> dict:
  """Sets the head's gain and bias so that `scores` (of π_ref samples, computed with the
  current gain and bias) become mean 0, std 1 (Ziegler et al. 2019, arXiv 1909.08593 §2)."""
  scores = np.asarray(scores, np.float64)
  gain, bias = float(params['gain']), float(params['bias'])
  raw = (scores - bias) / gain
  std = max(raw.std(), 1e-6)
  new_gain = 1.0 / std
  return {**params, 'gain': jnp.asarray(new_gain, jnp.float32),
          'bias': jnp.asarray(-raw.mean() * new_gain, jnp.float32)}


@dataclasses.dataclass(frozen=True)
class RewardModelConfig:
  """A task's Bradley–Terry reward-model stage (`train_best`; the tasks normalize it)."""
  steps: int = 200
  batch_size: int = 32
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-4, warmup_steps=20)
  eval_every: int = 50  # held-out accuracy; the best checkpoint is kept
  normalize: bool = True  # π_ref samples score mean 0, std 1 (Ziegler et al. 2019)
  n_normalize_prompts: int = 256
  seed: int = 0


def train_best(model_cfg: ModelConfig, ref_params: dict, pairs: dict, heldout: dict,
               rc: RewardModelConfig, *, mesh, work, config,
               progress: bool = True) -> tuple[object, dict, dict]:
  """A Bradley–Terry reward model from π_ref's backbone (Ziegler et al. 2019, arXiv
  1909.08593), trained on `pairs` and evaluated on `heldout` every `eval_every` steps, keeping
  the params of the best held-out accuracy: (graphdef, params, metrics). The run lives in
  `work` (a stage's work dir: an interrupted training resumes)."""
  graphdef, params = sharding.init_params(lambda r: ScalarModel(model_cfg, rngs=r), mesh,
                                          jax.random.key(rc.seed))
  params = embedding_from_lm(ref_params, params)
  arrays = {k: v for k, v in pairs.items() if k.endswith(('_tokens', '_mask'))}
  data = ArrayBatches(arrays, min(rc.batch_size, len(arrays['chosen_tokens'])),
                      seed=rc.seed)
  best = {'accuracy': -1.0, 'step': -1, 'params': None}

  def eval_fn(state, step):
    m = evaluate_pairs(graphdef, state['params'], heldout)
    if m['accuracy'] > best['accuracy']:
      best.update(accuracy=m['accuracy'], step=step, params=jax.device_get(state['params']))
    return m

  fit(make_loss_fn(graphdef), params, data, optimizer=rc.optimizer, n_steps=rc.steps,
      run_dir=work, config=config, mesh=mesh, seed=rc.seed, eval_fn=eval_fn, eval_every=rc.eval_every,
      desc='reward model', progress=progress)
  params = jax.device_put(best['params'], sharding.shardings_of(params))
  return graphdef, params, {'heldout_accuracy': best['accuracy'], 'best_step': best['step'],
                            'n_train_pairs': int(len(arrays['chosen_tokens'])),
                            'n_heldout_pairs': int(len(heldout['chosen_tokens']))}
