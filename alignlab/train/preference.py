"""Preference training (DPO and its variants, Unlikelihood) as a loss for `train/step.py`.

One forward pass over chosen ⊕ rejected (concatenated along the batch; a long shared prompt
runs once, `logprobs.shared_prompt_logprobs`), per-token response log-probs, then any entry of
`PREFERENCE_LOSSES`.
Reference log-probs come either precomputed in the batch (`ref_chosen_logps`,
`ref_rejected_logps`: one pass over the data with the frozen reference, `reference_logps`)
or, when the state holds `ref_params`, from a per-batch forward pass without gradient.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignlab.logprobs import sequence_logprobs, shared_prompt_logprobs, sum_and_count
from alignlab.losses.preference import PREFERENCE_LOSSES
from alignlab.train.batches import fixed_batches

# Loss hyperparameters that select code paths: static under jit, bound with partial.
STATIC_HPARAMS = ('reference_free', 'length_normalized')
NEEDS_REFERENCE = ('dpo', 'cdpo', 'robust', 'ipo', 'hinge', 'kto')
NEEDS_TOKENS = ('unlikelihood',)


def loss_hparam_names(loss_name: str) -> tuple[str, ...]:
  """The float hyperparameters of a loss (traced; `beta` among them where it applies)."""
  if loss_name not in PREFERENCE_LOSSES:
    raise KeyError(f'unknown preference loss {loss_name!r}; known: {sorted(PREFERENCE_LOSSES)}')
  params = inspect.signature(PREFERENCE_LOSSES[loss_name]).parameters
  out = []
  for name, p in params.items():
    if p.kind is not inspect.Parameter.KEYWORD_ONLY or name in STATIC_HPARAMS:
      continue
    if name == 'beta' or (p.default is not inspect.Parameter.empty and
                          isinstance(p.default, (int, float)) and not isinstance(p.default, bool)):
      out.append(name)
  return tuple(out)


def _pair_arrays(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
  tokens = jnp.concatenate([batch['chosen_tokens'], batch['rejected_tokens']], 0)
  attn = jnp.concatenate([batch['chosen_attention_mask'], batch['rejected_attention_mask']], 0)
  resp = jnp.concatenate([batch['chosen_response_mask'], batch['rejected_response_mask']], 0)
  return tokens, attn, resp


def _mismatched(batch: dict, prompt_len: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Prompt i with the chosen response of example i + 1 (mod B): KTO's KL pairs."""
  def mix(x):
    return jnp.concatenate([x[:, :prompt_len], jnp.roll(x[:, prompt_len:], -1, axis=0)], 1)
  return (mix(batch['chosen_tokens']), mix(batch['chosen_attention_mask']),
          mix(batch['chosen_response_mask']))


def check_shared_prompts(pairs: dict, prompt_len: int) -> None:
  """Host-side check that chosen and rejected of every pair hold the same (left-padded)
  prompt in their first `prompt_len` positions, as the canonical layout says and
  `pair_logps` relies on."""
  for key in ('tokens', 'attention_mask'):
    c = np.asarray(pairs[f'chosen_{key}'])[:, :prompt_len]
    r = np.asarray(pairs[f'rejected_{key}'])[:, :prompt_len]
    bad = np.flatnonzero((c != r).any(-1))
    if bad.size:
      raise ValueError(f'pair {int(bad[0])}: chosen_{key} and rejected_{key} differ in the first '
                       f'{prompt_len} positions (the prompt); a pair must share its prompt')


# Prompts at least this long run once per pair (`shared_prompt_logprobs`); shorter ones ride
# along in the concatenated forward. Measured (benchmarks/findings.md): a DPO step on the
# GPT-2-shaped benchmark model with R = 64 was 5 % faster at P = 16, 7 % at P = 32 and 22–28 % at
# P = 64; on the exact task (P = 1, a 2-layer d64 model) the second pass made the step 27 %
# slower.
SHARED_PROMPT_MIN_LEN = 16


def pair_logps(model, batch: dict, prompt_len: int):
  """Per-token log-probs of chosen and rejected, (B, T) each."""
  tokens, attn, resp = _pair_arrays(batch)
  if prompt_len >= SHARED_PROMPT_MIN_LEN:
    logps_2BxT = shared_prompt_logprobs(model, tokens, attn, resp, prompt_len=prompt_len)
  else:
    logps_2BxT = sequence_logprobs(model, tokens, attn, resp, response_start=prompt_len)
  b = batch['chosen_tokens'].shape[0]
  return logps_2BxT[:b], logps_2BxT[b:]


def make_loss_fn(graphdef, loss_name: str, *, prompt_len: int, static_hparams: dict | None = None):
  """`loss_fn(params, batch, hparams) -> (loss_sum, metrics)` for `make_train_step`.

  `hparams` holds the learning rate, the loss's float hyperparameters (see
  `loss_hparam_names`) and, when reference log-probs are computed per batch, `ref_params`.
  `batch` holds the pair arrays, an optional `example_mask`, and (when precomputed)
  `ref_chosen_logps` / `ref_rejected_logps`.
  """
  loss = functools.partial(PREFERENCE_LOSSES[loss_name], **(static_hparams or {}))
  names = loss_hparam_names(loss_name)

  def loss_fn(params, batch, hparams):
    model = nnx.merge(graphdef, params)
    chosen_BxT, rejected_BxT = pair_logps(model, batch, prompt_len)
    chosen_sum, chosen_len = sum_and_count(chosen_BxT, batch['chosen_response_mask'])
    rejected_sum, rejected_len = sum_and_count(rejected_BxT, batch['rejected_response_mask'])
    kwargs: dict[str, Any] = dict(
        policy_chosen_logps=chosen_sum, policy_rejected_logps=rejected_sum,
        chosen_lengths=chosen_len, rejected_lengths=rejected_len,
        example_mask=batch.get('example_mask'))
    if loss_name in NEEDS_TOKENS:
      kwargs.update(policy_chosen_token_logps_BxT=chosen_BxT,
                    policy_rejected_token_logps_BxT=rejected_BxT,
                    chosen_response_mask_BxT=batch['chosen_response_mask'],
                    rejected_response_mask_BxT=batch['rejected_response_mask'])
    ref_params = hparams.get('ref_params')
    if 'ref_chosen_logps' in batch:
      kwargs.update(ref_chosen_logps=batch['ref_chosen_logps'],
                    ref_rejected_logps=batch['ref_rejected_logps'])
    elif ref_params is not None:
      ref_model = nnx.merge(graphdef, jax.lax.stop_gradient(ref_params))
      ref_c, ref_r = pair_logps(ref_model, batch, prompt_len)
      kwargs.update(ref_chosen_logps=sum_and_count(ref_c, batch['chosen_response_mask'])[0],
                    ref_rejected_logps=sum_and_count(ref_r, batch['rejected_response_mask'])[0])
    elif loss_name in NEEDS_REFERENCE and not (static_hparams or {}).get('reference_free'):
      raise ValueError(f'{loss_name} needs reference log-probs: precompute them '
                       '(reference_logps) or pass ref_params')
    if loss_name == 'kto':
      if ref_params is None:
        raise ValueError('kto computes its KL reference point per batch: pass ref_params')
      tokens, attn, resp = _mismatched(batch, prompt_len)
      ref_model = nnx.merge(graphdef, jax.lax.stop_gradient(ref_params))
      kwargs['kl_policy_logps'] = sequence_logprobs(model, tokens, attn, resp,
                                                    response_start=prompt_len).sum(-1)
      kwargs['kl_ref_logps'] = sequence_logprobs(ref_model, tokens, attn, resp,
                                                 response_start=prompt_len).sum(-1)
    kwargs.update({k: hparams[k] for k in names if k in hparams})
    _, metrics = loss(**kwargs)
    return metrics['loss_sum'], metrics

  return loss_fn


@functools.partial(jax.jit, static_argnames=('graphdef', 'prompt_len'))
def pair_sequence_logps(graphdef, params, batch, prompt_len):
  """(log π(chosen|x), log π(rejected|x)), each (B,), of a canonical-layout pair batch: the
  shared prompt read once (`pair_logps`)."""
  model = nnx.merge(graphdef, params)
  c, r = pair_logps(model, batch, prompt_len)
  return (sum_and_count(c, batch['chosen_response_mask'])[0],
          sum_and_count(r, batch['rejected_response_mask'])[0])


def reference_logps(graphdef, ref_params, pairs: dict[str, np.ndarray], *, prompt_len: int,
                    batch_size: int = 64) -> dict[str, np.ndarray]:
  """One pass of the frozen reference over every pair: returns `pairs` plus
  `ref_chosen_logps` and `ref_rejected_logps` (so the reference is never run again)."""
  check_shared_prompts(pairs, prompt_len)
  keys = [k for k in pairs if k.startswith(('chosen_', 'rejected_'))]
  n = len(pairs['chosen_tokens'])
  chosen, rejected = [], []
  for idx, n_real in fixed_batches(n, batch_size):
    batch = {k: jnp.asarray(pairs[k][idx]) for k in keys if k.endswith(('tokens', 'mask'))}
    c, r = pair_sequence_logps(graphdef, ref_params, batch, prompt_len)
    chosen.append(np.asarray(c)[:n_real])
    rejected.append(np.asarray(r)[:n_real])
  return {**pairs, 'ref_chosen_logps': np.concatenate(chosen).astype(np.float32),
          'ref_rejected_logps': np.concatenate(rejected).astype(np.float32)}
