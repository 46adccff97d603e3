"""The rollout engine shared by PPO, PPO-GT, RLOO, GRPO and Best-of-N.

A rollout samples responses from the policy with the jitted KV-cache sampler, then runs every
forward pass the update needs in one jitted function, without gradient: the policy's and the
reference's per-token log-probs, the exact per-token KL between their full next-token
distributions, the policy's per-token entropy, the value function (when there is one) and the
learned reward model's score. A gold reward (the exact task's r(x, y), VADER) runs on the host
afterwards. Everything is returned in the canonical layout (docs/architecture.md) as a
`Rollout` pytree.

The reward is read at the last real token of prompt ⊕ response: the EOS, or the last response
token of a response cut at the length limit, never padding (Ziegler et al. 2019, arXiv
1909.08593; Huang et al. 2024, arXiv 2403.17031, "N+ implementation details of RLHF with
PPO": the score of the EOS token). Responses that end without EOS may get a fixed score
instead (`no_eos_score`, Huang et al.'s "−1 for responses without EOS").

Log-probs are recomputed with a full forward pass rather than taken from the sampler: the
ratio of PPO's first minibatch must be exactly the one the update computes (Huang et al. 2024
on the mismatch between generation-time and training-time log-probs).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignlab import distributed
from alignlab.config import ConfigError, SamplingConfig
from alignlab.heads import last_token_value
from alignlab.logprobs import gather_logprobs, token_kl
from alignlab.losses.ppo import entropy_from_logits
from alignlab.sampling import SampleOutput, sample

# A gold reward on the host: fn(tokens_BxT, attention_mask_BxT, response_mask_BxT) -> (B,).
GoldReward = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class RewardModel(NamedTuple):
  """A learned reward model: a `ScalarModel` graphdef and its params, read at the last real
  token."""
  graphdef: Any
  params: Any


class Rollout(NamedTuple):
  """One batch of on-policy experience. Per-token arrays are (B, T), T = P + R, aligned with
  `tokens` and 0 off the response; per-sequence arrays are (B,)."""
  tokens: jax.Array
  attention_mask: jax.Array
  response_mask: jax.Array
  logprobs: jax.Array  # log π(y_t | ·), recomputed, no gradient
  ref_logprobs: jax.Array  # log π_ref(y_t | ·)
  values: jax.Array  # V(tokens[<t]) for the action y_t; zeros without a value model
  kl: jax.Array  # exact KL(π(·|y<t) ‖ π_ref(·|y<t)) of the full next-token distributions
  entropy: jax.Array  # exact entropy of π(·|y<t)
  scores: jax.Array  # the training reward of the sequence (after the no-EOS score)
  gold_scores: jax.Array  # the gold reward when one is known, else NaN
  has_eos: jax.Array  # bool: the response ended with EOS


def check_sampling(cfg: SamplingConfig) -> None:
  """On-policy training needs the sampled distribution to be the one whose log-probs the loss
  computes: temperature scaling is applied to both, truncation (top-k/top-p) is not
  supported."""
  if not cfg.temperature > 0:
    raise ConfigError(f'sampling.temperature={cfg.temperature}: on-policy training needs a '
                      'stochastic policy (temperature > 0)')
  if cfg.top_k or cfg.top_p < 1.0:
    raise ConfigError('sampling.top_k / top_p truncate the sampled distribution, so the '
                      "policy's log-probs would not be those of the samples; leave them off")


def response_logits(model, tokens_BxT: jax.Array, attention_mask_BxT: jax.Array, *,
                    prompt_len: int, temperature: float = 1.0) -> jax.Array:
  """Logits at positions P − 1 .. T − 1, (B, R + 1, V): entry j predicts token P + j (the last
  one predicts past the end and is never read). The prompt's hidden states are computed, but
  not their vocabulary projection."""
  hidden_BxTxD = model.hidden(tokens_BxT, attention_mask_BxT)
  logits_BxR1xV = model.logits(hidden_BxTxD[:, prompt_len - 1:])
  return logits_BxR1xV / temperature if temperature != 1.0 else logits_BxR1xV


def logps_from_response_logits(logits_BxR1xV: jax.Array, tokens_BxT: jax.Array,
                               response_mask_BxT: jax.Array, *, prompt_len: int) -> jax.Array:
  """Per-token log-probs (B, T) in the canonical layout from `response_logits`."""
  logps_BxR = gather_logprobs(logits_BxR1xV[:, :-1], tokens_BxT[:, prompt_len:])
  logps_BxT = jnp.pad(logps_BxR, ((0, 0), (prompt_len, 0)))
  return logps_BxT * response_mask_BxT.astype(logps_BxT.dtype)


def shifted_values(values_BxT: jax.Array, response_mask_BxT: jax.Array) -> jax.Array:
  """values_BxT[:, t] = V(tokens[≤ t − 1]): the value of the state in which y_t is chosen
  (the scalar head's output one position earlier), 0 off the response."""
  shifted_BxT = jnp.pad(values_BxT[:, :-1], ((0, 0), (1, 0)))
  return shifted_BxT * response_mask_BxT.astype(shifted_BxT.dtype)


def has_eos(tokens_BxT: jax.Array, response_mask_BxT: jax.Array, eos_id: int) -> jax.Array:
  """(B,) bool: the response holds an EOS token. False everywhere when eos_id < 0."""
  if eos_id < 0:
    return jnp.zeros(tokens_BxT.shape[:1], bool)
  return jnp.any((tokens_BxT == eos_id) & response_mask_BxT.astype(bool), axis=-1)


def reward_model_scores(reward_graphdef, reward_params, tokens_BxT: jax.Array,
                        attention_mask_BxT: jax.Array) -> jax.Array:
  """A `ScalarModel`'s score of each sequence at its last real token (EOS, or the last
  response token when there is none), never at padding."""
  model = nnx.merge(reward_graphdef, reward_params)
  return last_token_value(model(tokens_BxT, attention_mask_BxT), attention_mask_BxT)


@functools.partial(jax.jit, static_argnames=('policy_graphdef', 'value_graphdef',
                                             'reward_graphdef', 'prompt_len', 'temperature'))
def _forward(policy_graphdef, policy_params, ref_params, value_graphdef, value_params,
             reward_graphdef, reward_params, tokens_BxT, attention_mask_BxT, response_mask_BxT,
             *, prompt_len: int, temperature: float):
  """Every forward pass of a rollout, in one program."""
  policy_params = jax.lax.stop_gradient(policy_params)
  policy = nnx.merge(policy_graphdef, policy_params)
  ref = nnx.merge(policy_graphdef, ref_params)
  logits_BxR1xV = response_logits(policy, tokens_BxT, attention_mask_BxT, prompt_len=prompt_len,
                                  temperature=temperature)
  ref_logits_BxR1xV = response_logits(ref, tokens_BxT, attention_mask_BxT,
                                      prompt_len=prompt_len, temperature=temperature)
  logps_BxT = logps_from_response_logits(logits_BxR1xV, tokens_BxT, response_mask_BxT,
                                         prompt_len=prompt_len)
  ref_logps_BxT = logps_from_response_logits(ref_logits_BxR1xV, tokens_BxT, response_mask_BxT,
                                             prompt_len=prompt_len)
  # token_kl aligns logits at j − 1 with token j; the logits start at P − 1, so the mask does.
  response_mask_BxR1 = response_mask_BxT[:, prompt_len - 1:]
  kl_BxR1 = token_kl(logits_BxR1xV, ref_logits_BxR1xV, response_mask_BxR1)
  kl_BxT = jnp.pad(kl_BxR1[:, 1:], ((0, 0), (prompt_len, 0)))
  entropy_BxR = entropy_from_logits(logits_BxR1xV[:, :-1])
  entropy_BxT = jnp.pad(entropy_BxR, ((0, 0), (prompt_len, 0)))
  entropy_BxT = entropy_BxT * response_mask_BxT.astype(entropy_BxT.dtype)
  if value_graphdef is not None:
    value_model = nnx.merge(value_graphdef, value_params)
    values_BxT = shifted_values(value_model(tokens_BxT, attention_mask_BxT), response_mask_BxT)
  else:
    values_BxT = jnp.zeros(tokens_BxT.shape, jnp.float32)
  if reward_graphdef is not None:
    scores_B = reward_model_scores(reward_graphdef, reward_params, tokens_BxT, attention_mask_BxT)
  else:
    scores_B = jnp.zeros(tokens_BxT.shape[:1], jnp.float32)
  return logps_BxT, ref_logps_BxT, values_BxT, kl_BxT, entropy_BxT, scores_B


def gold_scores(gold: GoldReward, tokens_BxT, attention_mask_BxT, response_mask_BxT) -> jax.Array:
  """Runs a host gold reward on a device batch; checks its output shape. The batch is gathered
  whole to every process (`distributed.to_host`: its rows may live on other processes'
  devices), each computes the same scores of every row, and they go back split as the rows
  of `tokens_BxT` are, ready to meet the device arrays of the rollout."""
  host = distributed.to_host((tokens_BxT, attention_mask_BxT, response_mask_BxT))
  scores_B = np.asarray(gold(*(np.asarray(x) for x in host)), np.float32)
  if scores_B.shape != (tokens_BxT.shape[0],):
    raise ValueError(f'gold reward returned shape {scores_B.shape}, expected '
                     f'({tokens_BxT.shape[0]},)')
  return distributed.put_rows(scores_B, tokens_BxT)


def evaluate_samples(samples: SampleOutput, policy_graphdef, policy_params, ref_params,
                     reward: RewardModel | GoldReward, *, prompt_len: int,
                     value: tuple[Any, Any] | None = None, gold: GoldReward | None = None,
                     eos_id: int = -1, no_eos_score: float | None = None,
                     temperature: float = 1.0) -> Rollout:
  """Turns sampled sequences into a `Rollout`.

  `reward` is a `RewardModel` (scored on device, in the same program as the log-probs) or a
  gold reward function (run on the host). `gold`, when given next to a learned reward model,
  is evaluated too and only logged. `value` is `(graphdef, params)` of a `ScalarModel`.
  `no_eos_score` replaces the score of a response without EOS (needs eos_id ≥ 0).
  """
  tokens_BxT = samples.tokens
  attention_mask_BxT = samples.attention_mask
  response_mask_BxT = samples.response_mask
  learned = isinstance(reward, RewardModel)
  value_graphdef, value_params = value if value is not None else (None, None)
  logps_BxT, ref_logps_BxT, values_BxT, kl_BxT, entropy_BxT, scores_B = _forward(
      policy_graphdef, policy_params, ref_params, value_graphdef, value_params,
      reward.graphdef if learned else None, reward.params if learned else None,
      tokens_BxT, attention_mask_BxT, response_mask_BxT, prompt_len=prompt_len,
      temperature=float(temperature))
  if not learned:
    scores_B = gold_scores(reward, tokens_BxT, attention_mask_BxT, response_mask_BxT)
    gold_B = scores_B
  elif gold is not None:
    gold_B = gold_scores(gold, tokens_BxT, attention_mask_BxT, response_mask_BxT)
  else:
    gold_B = jnp.full(scores_B.shape, jnp.nan, jnp.float32)
  eos_B = has_eos(tokens_BxT, response_mask_BxT, eos_id)
  if no_eos_score is not None:
    if eos_id < 0:
      raise ConfigError('no_eos_score needs sampling.eos_id ≥ 0')
    scores_B = jnp.where(eos_B, scores_B, jnp.float32(no_eos_score))
  return Rollout(tokens=tokens_BxT, attention_mask=attention_mask_BxT,
                 response_mask=response_mask_BxT, logprobs=logps_BxT, ref_logprobs=ref_logps_BxT,
                 values=values_BxT, kl=kl_BxT, entropy=entropy_BxT,
                 scores=scores_B.astype(jnp.float32), gold_scores=gold_B.astype(jnp.float32),
                 has_eos=eos_B)


def rollout(policy_graphdef, policy_params, ref_params, reward: RewardModel | GoldReward,
            prompt_tokens_BxP, prompt_mask_BxP, key: jax.Array, sampling: SamplingConfig, *,
            value: tuple[Any, Any] | None = None, gold: GoldReward | None = None,
            no_eos_score: float | None = None) -> Rollout:
  """Samples one response per (left-padded) prompt row from the policy and evaluates it
  (`evaluate_samples`). To draw k responses per prompt, repeat each prompt k times."""
  check_sampling(sampling)
  samples = sample(policy_graphdef, policy_params, prompt_tokens_BxP, prompt_mask_BxP, key,
                   sampling)
  return evaluate_samples(samples, policy_graphdef, policy_params, ref_params, reward,
                          prompt_len=prompt_tokens_BxP.shape[1], value=value, gold=gold,
                          eos_id=sampling.eos_id, no_eos_score=no_eos_score,
                          temperature=sampling.temperature)


@functools.partial(jax.jit, static_argnames=('reward_graphdef',))
def _reward_model_scores_jit(reward_graphdef, reward_params, tokens_BxT, attention_mask_BxT):
  return reward_model_scores(reward_graphdef, reward_params, tokens_BxT, attention_mask_BxT)


def score_sequences(reward: RewardModel | GoldReward, tokens_BxT, attention_mask_BxT,
                    response_mask_BxT, *, eos_id: int = -1,
                    no_eos_score: float | None = None) -> tuple[jax.Array, jax.Array]:
  """(scores_B, has_eos_B) of canonical-layout sequences under a learned reward model (read at
  the last real token) or a host gold reward, with the optional no-EOS score. Used where no
  policy forward pass is needed (Best-of-N)."""
  if isinstance(reward, RewardModel):
    scores_B = _reward_model_scores_jit(reward.graphdef, reward.params, tokens_BxT,
                                        attention_mask_BxT)
  else:
    scores_B = gold_scores(reward, tokens_BxT, attention_mask_BxT, response_mask_BxT)
  eos_B = has_eos(tokens_BxT, response_mask_BxT, eos_id)
  if no_eos_score is not None:
    if eos_id < 0:
      raise ConfigError('no_eos_score needs sampling.eos_id ≥ 0')
    scores_B = jnp.where(eos_B, scores_B, jnp.float32(no_eos_score))
  return scores_B.astype(jnp.float32), eos_B


# ---------------------------------------------------------------------------------------------
# Gold rewards in the rollout's form


def from_token_lists(reward_fn: Callable[[list[list[int]], list[list[int]]], np.ndarray]
                     ) -> GoldReward:
  """Adapts a host reward (prompts and responses as token-id lists, e.g.
  `VaderReward`) to the rollout's `(tokens, attention_mask, response_mask)` form. The prompt
  is the real tokens before the response; the response keeps its EOS (rewards drop special
  tokens themselves)."""

  def fn(tokens_BxT, attention_mask_BxT, response_mask_BxT):
    response_BxT = response_mask_BxT.astype(bool)
    prompt_BxT = attention_mask_BxT.astype(bool) & ~response_BxT
    prompts = [row[m].tolist() for row, m in zip(tokens_BxT, prompt_BxT)]
    responses = [row[m].tolist() for row, m in zip(tokens_BxT, response_BxT)]
    return np.asarray(reward_fn(prompts, responses), np.float32)

  return fn
