"""Best-of-N: draw N responses per prompt from π_ref, score them with the reward model (or the
gold reward), keep the best (Nakano et al. 2021, arXiv 2112.09332; Stiennon et al. 2020, arXiv
2009.01325). No training: it is the baseline every RLHF method is measured against at equal KL.

KL(π_BoN ‖ π_ref): on the exact task the law of the selected response is known in closed form
(`alignlab.data.exact.best_of_n_logp`), so the KL is computed exactly (`exact_best_of_n`).
Elsewhere the analytic log N − (N − 1)/N is reported, labelled `kl_bound`: it is an upper bound
on the true KL (Beirami et al. 2024, arXiv 2401.01879, Theorem 1), not the KL itself.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignlab.config import SamplingConfig
from alignlab.data import exact
from alignlab.heads import last_token_value
from alignlab.sampling import sample
from alignlab.train.rollout import GoldReward, RewardModel, gold_scores, score_sequences


class BestOfN(NamedTuple):
  """The selected response of each prompt, (B, T) in the canonical layout, with its scores."""
  tokens: jax.Array
  attention_mask: jax.Array
  response_mask: jax.Array
  scores: jax.Array  # (B,) reward of the selected response (the selection criterion)
  all_scores: jax.Array  # (B, N) rewards of every draw
  index: jax.Array  # (B,) which draw was kept (the first among equal scores)
  gold_scores: jax.Array  # (B,) gold reward of the selected response, NaN if none is given
  kl_bound: float  # log N − (N − 1)/N, an upper bound on KL(π_BoN ‖ π_ref), not the KL


def best_of_n(graphdef, ref_params, reward: RewardModel | GoldReward, prompt_tokens_BxP,
              prompt_mask_BxP, key: jax.Array, sampling: SamplingConfig, n: int, *,
              gold: GoldReward | None = None, no_eos_score: float | None = None) -> BestOfN:
  """Samples `n` responses for each of the B left-padded prompts from π_ref (one sampler call
  over B·n rows), scores them, keeps the best of each prompt."""
  if n < 1:
    raise ValueError(f'Best-of-N needs n ≥ 1, got {n}')
  b = prompt_tokens_BxP.shape[0]
  tokens_BNxP = jnp.repeat(jnp.asarray(prompt_tokens_BxP), n, axis=0)
  mask_BNxP = jnp.repeat(jnp.asarray(prompt_mask_BxP), n, axis=0)
  samples = sample(graphdef, ref_params, tokens_BNxP, mask_BNxP, key, sampling)
  scores_BN, _ = score_sequences(reward, samples.tokens, samples.attention_mask,
                                 samples.response_mask, eos_id=sampling.eos_id,
                                 no_eos_score=no_eos_score)
  scores_BxN = scores_BN.reshape(b, n)
  index_B = jnp.argmax(scores_BxN, axis=-1)
  rows_B = jnp.arange(b) * n + index_B

  def pick(x_BNxT):
    return jnp.take(x_BNxT, rows_B, axis=0)

  tokens_BxT = pick(samples.tokens)
  attention_mask_BxT = pick(samples.attention_mask)
  response_mask_BxT = pick(samples.response_mask)
  if gold is not None:
    gold_B = jnp.asarray(gold_scores(gold, tokens_BxT, attention_mask_BxT, response_mask_BxT))
  else:
    gold_B = jnp.full((b,), jnp.nan, jnp.float32)
  best_B = jnp.take_along_axis(scores_BxN, index_B[:, None], axis=1)[:, 0]
  return BestOfN(tokens=tokens_BxT, attention_mask=attention_mask_BxT,
                 response_mask=response_mask_BxT, scores=best_B, all_scores=scores_BxN,
                 index=index_B, gold_scores=gold_B, kl_bound=float(exact.best_of_n_kl_bound(n)))


# ---------------------------------------------------------------------------------------------
# The exact task: Best-of-N in closed form


def exact_reward_table(task_cfg: exact.ExactTaskConfig, reward_graphdef, reward_params, *,
                       batch_size: int = 4096) -> jax.Array:
  """A learned reward model's score of every (prompt, response) of the exact task, (P, Y) in
  the task's lexicographic order: the proxy reward that Best-of-N with that model ranks by."""
  tokens_NxT = exact.full_sequences(task_cfg).reshape(-1, task_cfg.length + 1)
  n_rows = tokens_NxT.shape[0]
  batch_size = min(batch_size, n_rows)
  n_batches = -(-n_rows // batch_size)
  padded_NxT = np.concatenate([tokens_NxT, np.broadcast_to(
      tokens_NxT[:1], (n_batches * batch_size - n_rows, tokens_NxT.shape[1]))])
  return _score_table(reward_graphdef, reward_params,
                      jnp.asarray(padded_NxT.reshape(n_batches, batch_size, -1)),
                      n_rows=n_rows, n_prompts=task_cfg.n_prompts)


@functools.partial(jax.jit, static_argnames=('reward_graphdef', 'n_rows', 'n_prompts'))
def _score_table(reward_graphdef, reward_params, tokens_GxBxT, *, n_rows: int, n_prompts: int):
  model = nnx.merge(reward_graphdef, reward_params)

  def one(tokens_BxT):
    mask_BxT = jnp.ones_like(tokens_BxT)
    return last_token_value(model(tokens_BxT, mask_BxT), mask_BxT)

  scores_GxB = jax.lax.map(one, tokens_GxBxT)
  return scores_GxB.reshape(-1)[:n_rows].reshape(n_prompts, -1)


def exact_best_of_n(ref_logp, proxy_reward, n: int, *, gold_reward=None,
                    beta: float | None = None) -> dict:
  """Best-of-N on the exact task, computed exactly: the law of the response ranked best by
  `proxy_reward` (P, Y) among n draws from π_ref (`ref_logp`, (P, Y)), its exact KL to π_ref
  (prompt-averaged), the analytic bound beside it, and, given the gold reward, E[r] and (with β)
  J_β and the gap β·KL(π_BoN ‖ π*).

  Returns {'logp': (P, Y), 'kl', 'kl_bound'[, 'gold_reward'[, 'objective', 'gap']]}.
  """
  ref_logp_PxY = jnp.asarray(ref_logp)
  logp_PxY = exact.best_of_n_logp(ref_logp_PxY, jnp.asarray(proxy_reward), n)
  out = {'logp': logp_PxY, 'kl': float(exact.kl(logp_PxY, ref_logp_PxY).mean()),
         'kl_bound': float(exact.best_of_n_kl_bound(n))}
  if gold_reward is not None:
    r_PxY = jnp.asarray(gold_reward)
    out['gold_reward'] = float(exact.expected_reward(logp_PxY, r_PxY).mean())
    if beta is not None:
      out['objective'] = float(exact.objective(logp_PxY, ref_logp_PxY, r_PxY, beta).mean())
      out['gap'] = float(exact.gap(logp_PxY, ref_logp_PxY, r_PxY, beta).mean())
  return out
