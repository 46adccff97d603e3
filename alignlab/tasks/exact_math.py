"""The exact task: an enumerable problem where the optimum of the KL-regularized objective is
known in closed form .

    J_β(π) = E_x E_{y~π(·|x)} r(x, y) − β · KL(π(·|x) ‖ π_ref(·|x))

Responses are every string of `length` symbols over an alphabet of `vocab` symbols, so each of
the `n_prompts` prompts has `vocab ** length` responses and every expectation is a finite sum.
The optimum π*(y|x) = π_ref(y|x)·exp(r(x,y)/β)/Z(x) has value β·log Z(x), and any π falls short
of it by exactly β·KL(π‖π*) (DPO paper, arXiv 2305.18290, Eq. 4 and App. A.1).

Token layout (the model vocabulary has `model_vocab_size(cfg) = vocab + n_prompts + 1` ids):

    0                        pad (never appears in an exact-task sequence; kept so that the
                             canonical layout's padding id is free)
    1 .. vocab               response symbols (symbol s is token id s)
    vocab+1 .. vocab+n_prompts   one token per prompt

A sequence is `[prompt_token, y_1, ..., y_R]`, `T = 1 + R`, with no padding:
attention_mask = [1, 1, ..., 1], response_mask = [0, 1, ..., 1] (there is no EOS: every
response has the same length). Responses are passed around as int32 arrays of response
symbols (values 1..vocab), and as an index 0..vocab**R − 1 in lexicographic order.

A policy is given by its log-probs over all responses, `logp_PxY` (one row per prompt, rows
normalized). Every exact quantity is a jittable jax.numpy function of such rows; the constant
tables (responses, sequences, gold reward) are NumPy arrays.

Shape suffixes in this module (they override alignlab/model.py's legend where they clash):
  P prompts (every prompt is one token)   Y responses per prompt (= V**R)
  R response length                       V response alphabet (`cfg.vocab`)
  M model vocabulary (V + P + 1)          N rows (pairs, sampled responses)
  B batch of sequences                    T sequence length (1 + R)
  K points on a β sweep                   G batches of a forward sweep
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignlab.config import ConfigError
from alignlab.evaluate import implicit_accuracy_from_rewards

PAD_ID = 0
RESPONSE_OFFSET = 1  # response symbol s ∈ {1..vocab} is token id s; index digit is s − 1
REWARD_KINDS = ('random_features', 'additive')


@dataclasses.dataclass(frozen=True)
class ExactTaskConfig:
  """The enumerable task.

  Gold reward (`reward_kind`):
    'random_features': r_raw(x, y) = Σ_i u[i, y_i] + Σ_{i<j} w[i, j, y_i, y_j] + Σ_i c[x, i, y_i]
      with u ~ N(0, 1/R), w ~ N(0, 1/#pairs), c ~ N(0, 1/R) drawn from
      `np.random.default_rng(reward_seed)` (in that order), i.e. per-position token scores shared
      by all prompts, pairwise interactions between positions, and a prompt-dependent
      per-position term; each of the three parts has unit variance per response. The reward
      is then standardized per prompt over the uniform distribution on responses:
      r(x, ·) = reward_scale · (r_raw(x, ·) − mean) / std. Per-prompt standardization makes
      every prompt equally hard at a given β (a per-prompt constant never changes π*).
    'additive': the same without the pairwise term (the reward is a sum over positions).
  Reference policy (`random_reference`): independent positions, π_ref(y|x) = Π_i
    softmax(g[x, i] / ref_temperature)[y_i], g ~ N(0, 1) from `ref_seed`.
  """
  n_prompts: int = 8
  vocab: int = 8
  length: int = 4
  reward_scale: float = 1.0
  reward_seed: int = 0
  reward_kind: str = 'random_features'
  ref_temperature: float = 1.0
  ref_seed: int = 0

  @property
  def n_responses(self) -> int:
    return self.vocab ** self.length

  def validate(self) -> None:
    for key in ('n_prompts', 'vocab', 'length'):
      if getattr(self, key) < 1:
        raise ConfigError(f'exact.{key}={getattr(self, key)} must be >= 1')
    if self.n_responses >= 2 ** 31:
      raise ConfigError(f'exact: vocab ** length = {self.n_responses} does not fit int32 indices')
    if self.reward_kind not in REWARD_KINDS:
      raise ConfigError(f'exact.reward_kind={self.reward_kind!r}; expected one of {REWARD_KINDS}')
    if not self.ref_temperature > 0:
      raise ConfigError(f'exact.ref_temperature={self.ref_temperature} must be > 0')


# ---------------------------------------------------------------------------------------------
# Layout


def model_vocab_size(cfg: ExactTaskConfig) -> int:
  """Pad + response symbols + one token per prompt."""
  return cfg.vocab + cfg.n_prompts + 1


def masked_output_ids(cfg: ExactTaskConfig) -> tuple[int, ...]:
  """Ids a policy must never emit on this task (pad and the prompt tokens); pass them as
  `ModelConfig.masked_output_ids` so the policy is a distribution over response symbols."""
  return (0,) + tuple(range(cfg.vocab + 1, cfg.vocab + cfg.n_prompts + 1))


def prompt_tokens(cfg: ExactTaskConfig) -> np.ndarray:
  """Token id of each prompt, (P,) int32: vocab+1 .. vocab+n_prompts."""
  return np.arange(cfg.vocab + 1, cfg.vocab + 1 + cfg.n_prompts, dtype=np.int32)


def _place_values(vocab: int, length: int) -> np.ndarray:
  """Weight of each position in the lexicographic index, most significant first."""
  return (vocab ** np.arange(length - 1, -1, -1, dtype=np.int64)).astype(np.int32)


def response_from_index(cfg: ExactTaskConfig, index: jax.Array) -> jax.Array:
  """Response symbols (N, R) of lexicographic indices (N,); jittable."""
  place_R = jnp.asarray(_place_values(cfg.vocab, cfg.length))
  index_N = jnp.asarray(index, jnp.int32)
  return ((index_N[:, None] // place_R) % cfg.vocab + RESPONSE_OFFSET).astype(jnp.int32)


def response_index(cfg: ExactTaskConfig, responses: jax.Array) -> jax.Array:
  """Lexicographic index (N,) int32 of responses (N, R) of response symbols; the inverse of
  `all_responses`. A row holding any id outside 1..vocab (pad, a prompt token: possible when a
  policy samples over the full model vocabulary) gets index −1."""
  place_R = jnp.asarray(_place_values(cfg.vocab, cfg.length))
  digits_NxR = jnp.asarray(responses, jnp.int32) - RESPONSE_OFFSET
  valid_N = jnp.all((digits_NxR >= 0) & (digits_NxR < cfg.vocab), axis=-1)
  index_N = jnp.sum(digits_NxR * place_R, axis=-1)
  return jnp.where(valid_N, index_N, -1).astype(jnp.int32)


def all_responses(cfg: ExactTaskConfig) -> np.ndarray:
  """Every response, (V**R, R) int32 response symbols, in lexicographic order."""
  place_R = _place_values(cfg.vocab, cfg.length)
  index_Y = np.arange(cfg.n_responses, dtype=np.int64)
  return ((index_Y[:, None] // place_R) % cfg.vocab + RESPONSE_OFFSET).astype(np.int32)


def sequence_masks(cfg: ExactTaskConfig) -> tuple[np.ndarray, np.ndarray]:
  """(attention_mask, response_mask), each (1 + R,) int32, shared by every sequence."""
  attention_mask_T = np.ones(1 + cfg.length, np.int32)
  response_mask_T = np.concatenate([np.zeros(1, np.int32), np.ones(cfg.length, np.int32)])
  return attention_mask_T, response_mask_T


def make_sequences(cfg: ExactTaskConfig, prompt_index: np.ndarray,
                   responses: np.ndarray) -> np.ndarray:
  """Tokens (N, 1 + R) int32 of prompts (N,) (indices 0..P−1) followed by responses (N, R)."""
  prompt_N = prompt_tokens(cfg)[np.asarray(prompt_index)]
  return np.concatenate([prompt_N[:, None], np.asarray(responses, np.int32)], axis=1)


def full_sequences(cfg: ExactTaskConfig) -> np.ndarray:
  """Every (prompt, response) sequence, tokens (P, V**R, 1 + R) int32."""
  responses_YxR = all_responses(cfg)
  prompt_P = prompt_tokens(cfg)
  prompt_PxYx1 = np.broadcast_to(prompt_P[:, None, None], (cfg.n_prompts, cfg.n_responses, 1))
  responses_PxYxR = np.broadcast_to(responses_YxR, (cfg.n_prompts,) + responses_YxR.shape)
  return np.concatenate([prompt_PxYx1, responses_PxYxR], axis=-1).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Gold reward and an analytic reference policy


def gold_reward(cfg: ExactTaskConfig) -> np.ndarray:
  """r(x, y) for every prompt and response, (P, V**R) float32; see `ExactTaskConfig`."""
  cfg.validate()
  n_pairs = cfg.length * (cfg.length - 1) // 2
  rng = np.random.default_rng(cfg.reward_seed)
  unary_RxV = rng.standard_normal((cfg.length, cfg.vocab)) / math.sqrt(cfg.length)
  pair_RxRxVxV = rng.standard_normal((cfg.length, cfg.length, cfg.vocab, cfg.vocab))
  pair_RxRxVxV /= math.sqrt(max(n_pairs, 1))
  prompt_PxRxV = rng.standard_normal((cfg.n_prompts, cfg.length, cfg.vocab)) / math.sqrt(cfg.length)

  digits_YxR = all_responses(cfg) - RESPONSE_OFFSET
  positions_R = np.arange(cfg.length)
  shared_Y = unary_RxV[positions_R, digits_YxR].sum(-1)
  if cfg.reward_kind == 'random_features':
    for i in range(cfg.length):
      for j in range(i + 1, cfg.length):
        shared_Y += pair_RxRxVxV[i, j, digits_YxR[:, i], digits_YxR[:, j]]
  prompt_PxY = prompt_PxRxV[:, positions_R, digits_YxR].sum(-1)
  raw_PxY = shared_Y[None, :] + prompt_PxY
  mean_Px1 = raw_PxY.mean(-1, keepdims=True)
  std_Px1 = np.maximum(raw_PxY.std(-1, keepdims=True), 1e-12)
  return (cfg.reward_scale * (raw_PxY - mean_Px1) / std_Px1).astype(np.float32)


def random_reference(cfg: ExactTaskConfig, key: jax.Array | None = None) -> jax.Array:
  """An analytic π_ref with independent positions: log π_ref(y|x) = Σ_i log softmax(g[x, i] /
  ref_temperature)[y_i], g ~ N(0, 1) drawn from `key` (default `PRNGKey(cfg.ref_seed)`).
  Returns logp_PxY (float32, rows normalized)."""
  cfg.validate()
  key = jax.random.PRNGKey(cfg.ref_seed) if key is None else key
  logits_PxRxV = jax.random.normal(key, (cfg.n_prompts, cfg.length, cfg.vocab), jnp.float32)
  logp_PxRxV = jax.nn.log_softmax(logits_PxRxV / cfg.ref_temperature, axis=-1)
  digits_YxR = jnp.asarray(all_responses(cfg) - RESPONSE_OFFSET)
  positions_R = jnp.arange(cfg.length)
  return logp_PxRxV[:, positions_R, digits_YxR].sum(-1)


# ---------------------------------------------------------------------------------------------
# Exact quantities of a policy given as log-probs over all responses (jittable)


def expected_reward(logp: jax.Array, r: jax.Array) -> jax.Array:
  """E_{y~π(·|x)} r(x, y) per prompt, (P,)."""
  return jnp.sum(jnp.exp(logp) * r, axis=-1)


def kl(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """KL(π(·|x) ‖ π_ref(·|x)) = Σ_y π (log π − log π_ref) per prompt, (P,). Responses with
  π(y) = 0 contribute 0 (also to the gradient); π(y) > 0 = π_ref(y) gives +inf."""
  logp_PxY = jnp.asarray(logp)
  # `!= -inf`, not `> -inf`: a NaN policy must give a NaN KL (a diverged run), never 0.
  support_PxY = logp_PxY != -jnp.inf
  safe_logp_PxY = jnp.where(support_PxY, logp_PxY, 0.0)
  safe_ref_PxY = jnp.where(support_PxY, ref_logp, 0.0)
  term_PxY = jnp.exp(safe_logp_PxY) * (safe_logp_PxY - safe_ref_PxY)
  return jnp.sum(jnp.where(support_PxY, term_PxY, 0.0), axis=-1)


def objective(logp: jax.Array, ref_logp: jax.Array, r: jax.Array, beta: float) -> jax.Array:
  """J_β(π) per prompt, (P,): E_π r − β·KL(π‖π_ref) (DPO paper, arXiv 2305.18290, Eq. 3)."""
  return expected_reward(logp, r) - beta * kl(logp, ref_logp)


def optimal_policy(ref_logp: jax.Array, r: jax.Array, beta: float) -> jax.Array:
  """log π*(y|x) = log π_ref(y|x) + r(x,y)/β − log Z(x) (arXiv 2305.18290, Eq. 4), (P, Y);
  a log-softmax, so stable for any β > 0."""
  return jax.nn.log_softmax(ref_logp + r / beta, axis=-1)


def optimal_value(ref_logp: jax.Array, r: jax.Array, beta: float) -> jax.Array:
  """J_β(π*) = β·log Z(x) = β·log Σ_y π_ref(y|x) exp(r(x,y)/β) per prompt, (P,)."""
  return beta * jax.nn.logsumexp(ref_logp + r / beta, axis=-1)


def gap(logp: jax.Array, ref_logp: jax.Array, r: jax.Array, beta: float) -> jax.Array:
  """J_β(π*) − J_β(π) = β·KL(π‖π*) per prompt, (P,) (arXiv 2305.18290, App. A.1); computed as
  a KL, not as a difference of objectives, so it stays accurate near the optimum. The
  headline number β·E_x KL(π‖π*) is `gap(...).mean()` (prompts are uniform)."""
  return beta * kl(logp, optimal_policy(ref_logp, r, beta))


def frontier(ref_logp: jax.Array, r: jax.Array, betas: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The exact reward–KL Pareto frontier traced by π*_β: for each β, (E_x KL(π*‖π_ref),
  E_x E_{π*} r), two (K,) arrays. Both grow as β shrinks (dE_{π*}r/dβ = −Var_{π*}(r)/β²)."""

  def point(beta):
    logp_PxY = optimal_policy(ref_logp, r, beta)
    return kl(logp_PxY, ref_logp).mean(), expected_reward(logp_PxY, r).mean()

  kl_K, reward_K = jax.vmap(point)(jnp.asarray(betas, jnp.result_type(float)))
  return kl_K, reward_K


def _best_of_n_row(ref_logp_Y: jax.Array, r_Y: jax.Array, n: jax.Array) -> jax.Array:
  n_responses = r_Y.shape[0]
  order_Y = jnp.argsort(r_Y, stable=True)
  r_sorted_Y = r_Y[order_Y]
  logp_sorted_Y = ref_logp_Y[order_Y]
  # Levels: runs of equal reward, numbered upwards.
  new_level_Y = jnp.concatenate([jnp.ones(1, bool), r_sorted_Y[1:] != r_sorted_Y[:-1]])
  level_Y = jnp.cumsum(new_level_Y) - 1
  seg_max_Y = jax.ops.segment_max(logp_sorted_Y, level_Y, num_segments=n_responses)
  seg_max_Y = jnp.where(jnp.isfinite(seg_max_Y), seg_max_Y, 0.0)
  mass_Y = jax.ops.segment_sum(jnp.exp(logp_sorted_Y - seg_max_Y[level_Y]), level_Y,
                               num_segments=n_responses)
  level_logp_Y = jnp.log(mass_Y) + seg_max_Y  # log π_ref(level); −inf for unused levels
  # log F(level) = log π_ref(r ≤ level). Below 1/2 from the cumulative sum; above it as
  # log1p(−S) with S the mass strictly above, which is accurate where F is close to 1.
  log_cdf_Y = jax.lax.cumlogsumexp(level_logp_Y)
  log_above_Y = jnp.concatenate(
      [jax.lax.cumlogsumexp(level_logp_Y, reverse=True)[1:], jnp.full(1, -jnp.inf)])
  log_cdf_Y = jnp.where(log_cdf_Y < math.log(0.5), log_cdf_Y, jnp.log1p(-jnp.exp(log_above_Y)))
  # P(best ∈ level) = F^n − F_−^n = F^n·(1 − (1 − q)^n) with q = π_ref(level)/F; a response in
  # the level wins in proportion to its π_ref mass (ties broken uniformly among the n draws).
  tiny = jnp.finfo(log_cdf_Y.dtype).tiny
  q_Y = jnp.clip(jnp.exp(level_logp_Y - log_cdf_Y), tiny, 1.0)
  log_ratio_Y = jnp.log(-jnp.expm1(n * jnp.log1p(-q_Y))) - jnp.log(q_Y)
  log_weight_Y = (n - 1) * log_cdf_Y + log_ratio_Y
  out_sorted_Y = jnp.where(logp_sorted_Y > -jnp.inf, logp_sorted_Y + log_weight_Y[level_Y], -jnp.inf)
  return jnp.zeros_like(ref_logp_Y).at[order_Y].set(out_sorted_Y)


def best_of_n_logp(ref_logp: jax.Array, r: jax.Array, n: int | jax.Array) -> jax.Array:
  """Exact Best-of-N: the law of argmax_r of n i.i.d. draws from π_ref, (P, Y) log-probs.

  With F the CDF of π_ref over responses sorted by reward, P(y) = F(r_y)^n − F(r_y−)^n for
  distinct rewards (the order statistic of the maximum). Ties are handled exactly: a level
  {y : r(y) = v} is the best with probability F(v)^n − F(v−)^n and, with ties among the n
  draws broken uniformly at random, splits it in proportion to π_ref. Rows of `ref_logp` are
  renormalized first (a policy scored over the full model vocabulary may have lost mass).
  """
  ref_logp_PxY = jax.nn.log_softmax(jnp.asarray(ref_logp), axis=-1)
  n = jnp.asarray(n, ref_logp_PxY.dtype)
  return jax.vmap(_best_of_n_row, in_axes=(0, 0, None))(ref_logp_PxY, jnp.asarray(r), n)


def best_of_n_kl_bound(n: int | jax.Array) -> jax.Array:
  """log n − (n − 1)/n, the analytic Best-of-N KL, an upper bound on KL(π_BoN‖π_ref)
  (Beirami et al., arXiv 2401.01879, Theorem 1)."""
  n = jnp.asarray(n, jnp.float32)
  return jnp.log(n) - (n - 1) / n


# ---------------------------------------------------------------------------------------------
# A transformer policy, scored on every response


def policy_logprobs_all(logits_fn: Callable[[jax.Array, jax.Array], jax.Array],
                        cfg: ExactTaskConfig, batch_size: int = 512, *,
                        restrict_to_response_symbols: bool = True,
                        share_prefixes: bool = True) -> jax.Array:
  """log π(y|x) of every response for every prompt, (P, V**R), by batched forward passes.

  `logits_fn(tokens_BxT, attention_mask_BxT) -> logits_BxTxM` is a causal policy over the
  model vocabulary; the logits at t−1 predict token t, and log π(y|x) is the sum over the R
  response tokens.

  restrict_to_response_symbols=True (the exact task's definition of a policy): the next-token
  distribution is the softmax of the logits of the response symbols 1..vocab only, so each
  row sums to 1. False: the softmax runs over the full model vocabulary, and mass on pad or
  prompt tokens is lost (rows sum to ≤ 1).

  share_prefixes=True feeds only the V**(R−1) prefixes [x, y_1..y_{R−1}] and reads the last
  token's V log-probs off the final position: V× fewer forward passes, exact for a causal
  model (the logits at t depend on tokens ≤ t only). False feeds every full sequence.

  Traceable: batches run under `lax.map` with one fixed batch shape (the last batch is padded
  with copies of the first row). For repeated evaluation wrap the whole call in `jax.jit` with
  the parameters as arguments, e.g.
  `jax.jit(lambda params: policy_logprobs_all(lambda t, m: apply(params, t, m), cfg))`.
  """
  cfg.validate()
  vocab, length = cfg.vocab, cfg.length
  if share_prefixes:
    prefixes = dataclasses.replace(cfg, length=length - 1)
    tokens_PxQxT = full_sequences(prefixes)  # Q = V**(R−1) prefixes, T = R
  else:
    tokens_PxQxT = full_sequences(cfg)  # Q = V**R responses, T = 1 + R
  n_rows = tokens_PxQxT.shape[0] * tokens_PxQxT.shape[1]
  tokens_NxT = tokens_PxQxT.reshape(n_rows, -1)
  batch_size = max(1, min(batch_size, n_rows))
  n_batches = -(-n_rows // batch_size)
  padding = np.broadcast_to(tokens_NxT[:1], (n_batches * batch_size - n_rows, tokens_NxT.shape[1]))
  tokens_GxBxT = jnp.asarray(np.concatenate([tokens_NxT, padding]).reshape(
      n_batches, batch_size, tokens_NxT.shape[1]))

  def score(tokens_BxT):
    logits_BxTxM = logits_fn(tokens_BxT, jnp.ones_like(tokens_BxT)).astype(jnp.float32)
    symbols = slice(RESPONSE_OFFSET, RESPONSE_OFFSET + vocab)
    if restrict_to_response_symbols:
      logp_BxTxV = jax.nn.log_softmax(logits_BxTxM[..., symbols], axis=-1)
    else:
      logp_BxTxV = jax.nn.log_softmax(logits_BxTxM, axis=-1)[..., symbols]
    # Position t predicts token t+1.
    next_digits_BxT1 = tokens_BxT[:, 1:] - RESPONSE_OFFSET
    seen_B = jnp.take_along_axis(logp_BxTxV[:, :-1], next_digits_BxT1[..., None], axis=-1).sum((1, 2))
    if share_prefixes:
      return seen_B[:, None] + logp_BxTxV[:, -1, :]  # BxV: every last symbol
    return seen_B

  # (G, B) or (G, B, V); in both cases the flattened order is lexicographic in the response.
  scores = jax.lax.map(score, tokens_GxBxT)
  flat_scores = scores.reshape((n_batches * batch_size,) + scores.shape[2:])[:n_rows]
  return flat_scores.reshape(cfg.n_prompts, vocab ** length)


# ---------------------------------------------------------------------------------------------
# Preference pairs labelled by the Bradley–Terry model of the gold reward


class PreferencePairs(NamedTuple):
  """N = P·n_pairs_per_prompt pairs, prompt-major. `p` = σ(chosen_score − rejected_score), the
  Bradley–Terry probability of the label that was drawn."""
  prompt_index: jax.Array  # (N,) int32, 0..P−1
  chosen: jax.Array  # (N, R) int32 response symbols
  rejected: jax.Array  # (N, R) int32 response symbols
  chosen_index: jax.Array  # (N,) int32 lexicographic response index
  rejected_index: jax.Array  # (N,) int32
  chosen_score: jax.Array  # (N,) float32 gold reward
  rejected_score: jax.Array  # (N,) float32
  p: jax.Array  # (N,) float32


def sample_indices(key: jax.Array, logp_PxY: jax.Array, n: int) -> jax.Array:
  """`n` i.i.d. response indices per prompt from the rows of `logp_PxY`, (P, n) int32, by
  inverse CDF: one uniform per draw and a binary search, instead of a Gumbel per response per
  draw (`jax.random.categorical`, n·Y random numbers per prompt). A response of probability 0
  is never drawn (`side='right'` skips the flat stretches of the CDF)."""
  cdf_PxY = jnp.cumsum(jnp.exp(logp_PxY - jax.nn.logsumexp(logp_PxY, axis=-1, keepdims=True)), axis=-1)
  u_PxN = jax.random.uniform(key, (logp_PxY.shape[0], n)) * cdf_PxY[:, -1:]
  index_PxN = jax.vmap(lambda cdf_Y, u_N: jnp.searchsorted(cdf_Y, u_N, side='right'))(cdf_PxY, u_PxN)
  return jnp.minimum(index_PxN, logp_PxY.shape[-1] - 1).astype(jnp.int32)


def sample_pairs_bt(key: jax.Array, cfg: ExactTaskConfig, ref_logp: jax.Array, r: jax.Array,
                    n_pairs_per_prompt: int, sample_logp: jax.Array | None = None) -> PreferencePairs:
  """Draw y1, y2 i.i.d. from π_ref(·|x) (or from `sample_logp`, (P, Y) log-probs of another
  distribution over responses) for every prompt and label them with the Bradley–Terry model
  of the gold reward, P(y1 ≻ y2) = σ(r(x,y1) − r(x,y2)) (DPO paper, arXiv 2305.18290, Eq. 1).
  Identical pairs (y1 = y2) are kept, as i.i.d. sampling gives them; they carry no signal for
  pairwise losses. Jittable with `cfg` and `n_pairs_per_prompt` static."""
  draw_logp_PxY = jnp.asarray(ref_logp if sample_logp is None else sample_logp)
  r_PxY = jnp.asarray(r)
  n_prompts = draw_logp_PxY.shape[0]
  draw_key, label_key = jax.random.split(key)
  index_PxM = sample_indices(draw_key, draw_logp_PxY, 2 * n_pairs_per_prompt)
  first_PxN, second_PxN = index_PxM[:, :n_pairs_per_prompt], index_PxM[:, n_pairs_per_prompt:]
  r_first_PxN = jnp.take_along_axis(r_PxY, first_PxN, axis=-1)
  r_second_PxN = jnp.take_along_axis(r_PxY, second_PxN, axis=-1)
  p_first_PxN = jax.nn.sigmoid(r_first_PxN - r_second_PxN)
  first_wins_PxN = jax.random.uniform(label_key, p_first_PxN.shape) < p_first_PxN
  chosen_N = jnp.where(first_wins_PxN, first_PxN, second_PxN).reshape(-1).astype(jnp.int32)
  rejected_N = jnp.where(first_wins_PxN, second_PxN, first_PxN).reshape(-1).astype(jnp.int32)
  prompt_N = jnp.repeat(jnp.arange(n_prompts, dtype=jnp.int32), n_pairs_per_prompt)
  chosen_score_N = r_PxY[prompt_N, chosen_N]
  rejected_score_N = r_PxY[prompt_N, rejected_N]
  return PreferencePairs(
      prompt_index=prompt_N,
      chosen=response_from_index(cfg, chosen_N),
      rejected=response_from_index(cfg, rejected_N),
      chosen_index=chosen_N,
      rejected_index=rejected_N,
      chosen_score=chosen_score_N,
      rejected_score=rejected_score_N,
      p=jax.nn.sigmoid(chosen_score_N - rejected_score_N),
  )


def support_mask(cfg: ExactTaskConfig, support_size: int, seed: int) -> np.ndarray:
  """Which responses the preference data may mention, (P, Y) bool: `support_size` of the Y
  responses per prompt, a uniformly random subset drawn from `np.random.default_rng(seed)`
  (one permutation per prompt, in prompt order). Xu et al. 2024 (arXiv 2404.10719, §4) ask what
  DPO does with the responses such data never shows it."""
  if not 1 <= support_size <= cfg.n_responses:
    raise ConfigError(f'support_size={support_size} must be in 1..{cfg.n_responses} '
                      '(the responses per prompt)')
  rng = np.random.default_rng(seed)
  support_PxY = np.zeros((cfg.n_prompts, cfg.n_responses), bool)
  for prompt in range(cfg.n_prompts):
    support_PxY[prompt, rng.permutation(cfg.n_responses)[:support_size]] = True
  return support_PxY


def off_support_mass(logp: jax.Array, support: jax.Array) -> jax.Array:
  """Σ_{y ∉ S(x)} π(y|x), the probability a policy puts on responses outside the data's support
  S(x), averaged over the (uniform) prompts; `support` is `support_mask`'s (P, Y) bool."""
  return jnp.sum(jnp.where(support, 0.0, jnp.exp(logp)), axis=-1).mean()


def support_split_kl(logp: jax.Array, star_logp: jax.Array, support: jax.Array) -> jax.Array:
  """KL(Bern(m_π(x)) ‖ Bern(m_π*(x))) per prompt, (P,), with m(x) a policy's mass off the
  support: by the chain rule of KL, KL(π‖π*) = this + the expected KL within the support and
  within its complement, so β times it is the part of the gap β·KL(π‖π*) (arXiv 2305.18290,
  App. A.1) that comes from splitting mass wrongly between seen and unseen responses."""
  off_P = jnp.sum(jnp.where(support, 0.0, jnp.exp(logp)), axis=-1)
  star_off_P = jnp.sum(jnp.where(support, 0.0, jnp.exp(star_logp)), axis=-1)
  tiny = jnp.finfo(jnp.result_type(float)).tiny

  def term(a_P, b_P):  # a·log(a/b), 0 where a = 0
    log_ratio_P = jnp.log(jnp.maximum(a_P, tiny)) - jnp.log(jnp.maximum(b_P, tiny))
    return jnp.where(a_P > 0, a_P * log_ratio_P, 0.0)

  return term(off_P, star_off_P) + term(1.0 - off_P, 1.0 - star_off_P)


def bayes_accuracy(p: jax.Array) -> jax.Array:
  """mean(max(p, 1 − p)): the label accuracy of the best classifier that knows the gold reward,
  the ceiling for a reward model's (or DPO's implicit reward's) preference accuracy."""
  p = jnp.asarray(p)
  return jnp.mean(jnp.maximum(p, 1.0 - p))


def preference_batch(cfg: ExactTaskConfig, pairs: PreferencePairs) -> dict[str, np.ndarray]:
  """The pairs as a preference-training batch in the canonical layout (docs/architecture.md):
  `{chosen,rejected}_{tokens,attention_mask,response_mask}` (N, 1 + R) int32 and
  `{chosen,rejected}_score` (N,) float32."""
  prompt_N = np.asarray(pairs.prompt_index)
  attention_mask_T, response_mask_T = sequence_masks(cfg)
  n = prompt_N.shape[0]
  batch = {}
  for side in ('chosen', 'rejected'):
    batch[f'{side}_tokens'] = make_sequences(cfg, prompt_N, np.asarray(getattr(pairs, side)))
    batch[f'{side}_attention_mask'] = np.tile(attention_mask_T, (n, 1))
    batch[f'{side}_response_mask'] = np.tile(response_mask_T, (n, 1))
    batch[f'{side}_score'] = np.asarray(getattr(pairs, f'{side}_score'), np.float32)
  return batch


# ---------------------------------------------------------------------------------------------
# Exact evaluation of a policy given as its log-probs over every response, (P, Y); scalars are
# means over the (uniform) prompts.

def exact_metrics(logp: jax.Array, ref_logp: jax.Array, r: jax.Array,
                  beta: float | jax.Array) -> dict[str, jax.Array]:
  """Exact E r, KL(π‖π_ref), J_β(π), J_β(π*), the gap J_β(π*) − J_β(π) = β·KL(π‖π*) and
  `gap_fraction` = gap / gap of π_ref (0 at the optimum, 1 where π_ref stands), each the
  mean over prompts. The gap is computed as a KL, so it stays accurate near 0."""
  reward = expected_reward(logp, r).mean()
  kl_ = kl(logp, ref_logp).mean()
  gap_ = gap(logp, ref_logp, r, beta).mean()
  ref_gap = gap(ref_logp, ref_logp, r, beta).mean()
  return {'reward': reward, 'kl': kl_, 'objective': reward - beta * kl_,
          'optimal_objective': optimal_value(ref_logp, r, beta).mean(), 'gap': gap_,
          'gap_fraction': gap_ / jnp.maximum(ref_gap, jnp.finfo(jnp.float32).tiny)}


@functools.partial(jax.jit, static_argnames=('graphdef', 'task'))
def exact_policy_logp(graphdef, params, task: ExactTaskConfig,
                      temperature: float | jax.Array = 1.0) -> jax.Array:
  """log π(y|x) of every response, (P, Y), of a `CausalLM` whose next-token logits are divided
  by `temperature` (traced; per-token tempering, as a sampler does). Use
  `GREEDY_TEMPERATURE` for greedy decoding."""
  model = nnx.merge(graphdef, params)
  return policy_logprobs_all(lambda t, m: model(t, m) / temperature, task)


def exact_win_rate(logp: jax.Array, ref_logp: jax.Array, r: jax.Array) -> jax.Array:
  """P(r(x, y) > r(x, y')) + ½·P(r(x, y) = r(x, y')) for y ~ π, y' ~ π_ref, mean over x:
  the gold-judged win rate against π_ref samples, exactly. π_ref against itself gives ½."""

  def one(logp_Y, ref_logp_Y, r_Y):
    order_Y = jnp.argsort(r_Y)
    r_sorted_Y = r_Y[order_Y]
    cdf_Y = jnp.concatenate([jnp.zeros(1), jnp.cumsum(jnp.exp(ref_logp_Y[order_Y]))])
    below_Y = cdf_Y[jnp.searchsorted(r_sorted_Y, r_Y, side='left')]
    at_or_below_Y = cdf_Y[jnp.searchsorted(r_sorted_Y, r_Y, side='right')]
    return jnp.sum(jnp.exp(logp_Y) * 0.5 * (below_Y + at_or_below_Y))

  return jax.vmap(one)(logp, ref_logp, r).mean()


def exact_implicit_accuracy(logp: jax.Array, ref_logp: jax.Array, prompt_index: jax.Array,
                            first_index: jax.Array, second_index: jax.Array,
                            first_score: jax.Array, second_score: jax.Array,
                            beta: float | jax.Array = 1.0) -> dict:
  """Accuracy of DPO's implicit reward r̂ = β·log π(y|x)/π_ref(y|x) (arXiv 2305.18290 §5) at
  ordering held-out pairs (responses given by index) by their gold scores."""
  implicit_PxY = beta * (logp - ref_logp)
  return implicit_accuracy_from_rewards(implicit_PxY[prompt_index, first_index],
                                        implicit_PxY[prompt_index, second_index],
                                        first_score, second_score)


def frontier_reward_at_kl(ref_logp: jax.Array, r: jax.Array, kl_target: jax.Array, *,
                          log_beta_range: tuple[float, float] = (-9.0, 9.0),
                          iterations: int = 60) -> jax.Array:
  """The largest E_x E_π r of any policy with E_x KL(π‖π_ref) = kl_target: the reward of the π*_β
  whose KL is `kl_target`, β found by bisection in log β (KL(π*_β‖π_ref) falls as β grows). Any
  policy's reward lies at or below it, so `frontier_reward_at_kl(kl(π)) − reward(π) ≥ 0` is
  a β-free shortfall. Beyond the range's ends it saturates."""

  def kl_at(log_beta):
    return kl(optimal_policy(ref_logp, r, jnp.exp(log_beta)), ref_logp).mean()

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    too_far = kl_at(mid) > kl_target  # β too small
    return jnp.where(too_far, mid, lo), jnp.where(too_far, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iterations, body,
                             (jnp.float32(log_beta_range[0]), jnp.float32(log_beta_range[1])))
  logp = optimal_policy(ref_logp, r, jnp.exp(0.5 * (lo + hi)))
  return expected_reward(logp, r).mean()


def exact_gold_reward_fn(task: ExactTaskConfig) -> Callable:
  """The exact task's gold reward with the host signature of `alignlab/rewards.py`:
  `fn(prompts, responses) -> (n,)`, prompts `[[prompt_token]]`, responses of R symbols."""
  table_PxY = gold_reward(task)
  first_prompt = int(prompt_tokens(task)[0])

  def reward(prompts, responses):
    prompt_N = np.asarray([p[-1] for p in prompts]) - first_prompt
    index_N = np.asarray(response_index(task, np.asarray(responses, np.int32)))
    if (index_N < 0).any():
      raise ValueError('a response holds an id that is not a response symbol')
    return table_PxY[prompt_N, index_N]

  return reward


def exact_task_reward(task_cfg) -> Callable:
  """The exact task's gold r(x, y) (`gold_reward`) on sequences
  `[prompt_token, y_1..y_R]`; a response holding a non-symbol token is an error."""
  r_PxY = gold_reward(task_cfg)
  first_prompt = int(prompt_tokens(task_cfg)[0])

  def fn(tokens_BxT, attention_mask_BxT, response_mask_BxT):
    del attention_mask_BxT, response_mask_BxT
    prompt_B = tokens_BxT[:, 0] - first_prompt
    index_B = np.asarray(response_index(task_cfg, tokens_BxT[:, 1:]))
    if (index_B < 0).any() or (prompt_B < 0).any() or (prompt_B >= task_cfg.n_prompts).any():
      raise ValueError('exact_task_reward: a sequence is not [prompt, response symbols]')
    return r_PxY[prompt_B, index_B]

  return fn


