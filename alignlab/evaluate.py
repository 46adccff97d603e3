"""The same evaluation for every method (DPO policies, PPO policies, baselines): how well does
π optimize J_β(π) = E r − β·KL(π‖π_ref) (DPO paper, arXiv 2305.18290, Eq. 3)?

API
---
Task-agnostic: the exact task's enumerated evaluation lives with that task
(`alignlab/tasks/exact_math.py`); it shares `implicit_accuracy_from_rewards`.

Sampled (text tasks, e.g. IMDb): prompts are lists of token ids (no padding); the gold reward
is a host callable `gold_reward_fn(prompts, responses) -> (n,)` (e.g. `alignlab/tasks/imdb_gold.py`);
`proxy_reward` a device callable `(tokens_BxT, attention_mask_BxT) -> (B,)`, e.g.
`functools.partial(train.reward_model.score, rm_graphdef, rm_params)`.

    evaluate_sampled(graphdef, params, ref_params, prompts, gold_reward_fn, key, sampling,
                     beta, proxy_reward=None, batch_size=64)
      -> {gold_reward, gold_reward_stderr, kl, kl_stderr, kl_k1, kl_k1_stderr, kl_k3,
          kl_k3_stderr, objective, objective_stderr, proxy_reward, proxy_reward_stderr,
          response_length, n}
    win_rate_vs_reference(graphdef, params, ref_params, prompts, gold_reward_fn, key, sampling,
                          temperatures=(0, .25, .5, .75, 1), batch_size=64)
      -> [{temperature, win_rate, win_rate_stderr, n}, ...]
    implicit_reward_accuracy(graphdef, params, ref_params, pairs, beta=..., prompt_len=...)
      -> {implicit_accuracy, implicit_margin, n}

`kl` is the DPO paper's sequence-level KL: per response, the sum over its tokens of the exact
KL between the full next-token distributions of π and π_ref (footnote 3 of arXiv
2305.18290), averaged over samples y ~ π; by the chain rule its expectation is KL(π‖π_ref).
Beside it the sampled estimates (Schulman, "Approximating KL divergence", 2020) summed over
tokens: k1 = Σ_t log π/π_ref (unbiased, noisy) and k3 = Σ_t (ρ_t − 1 − log ρ_t), ρ_t =
π_ref/π of the sampled token (unbiased, ≥ 0). All three are estimates of the KL of π at
temperature 1: sample with `sampling.temperature=1`, no top-k / top-p, for them to be
unbiased. `objective` = gold_reward − β·kl. Device work is jitted with static shapes: prompts
are left-padded to the longest prompt (or `prompt_len`) and batched by `batch_size`, the last
batch filled with repeats that are dropped.

On several processes (`alignlab/distributed.py`) every function here is called by all of
them at once with the same arguments: device outputs are gathered to every process
(`distributed.to_host`; on one process that is `jax.device_get`, no extra copy) before any
host work, and the host gold reward scores every sample on every process, so each returns
the numbers one process would.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignlab import distributed
from alignlab.config import SamplingConfig
from alignlab.logprobs import sequence_logprobs, sum_and_count
from alignlab.losses.ppo import kl_k3
from alignlab.sampling import sample
from alignlab.train.batches import fixed_batches
from alignlab.train.preference import pair_sequence_logps

TEMPERATURES = (0.0, 0.25, 0.5, 0.75, 1.0)
GREEDY_TEMPERATURE = 1e-6  # T = 0 in the exact task: logits / 1e-6 make every row one-hot


def implicit_accuracy_from_rewards(first_rewards: jax.Array, second_rewards: jax.Array,
                                   first_scores: jax.Array, second_scores: jax.Array) -> dict:
  """How often the implicit rewards order a pair as the gold scores do. Pairs tied in gold
  are left out (they have no order); an implicit tie counts ½."""
  implicit_N = first_rewards - second_rewards
  gold_N = first_scores - second_scores
  counted_N = gold_N != 0
  right_N = jnp.where(implicit_N * gold_N > 0, 1.0, jnp.where(implicit_N == 0, 0.5, 0.0))
  n = jnp.sum(counted_N)
  return {'implicit_accuracy': jnp.sum(jnp.where(counted_N, right_N, 0.0)) / jnp.maximum(n, 1),
          'implicit_margin': jnp.sum(jnp.where(counted_N, implicit_N * jnp.sign(gold_N), 0.0))
                             / jnp.maximum(n, 1),
          'n': n}


# ---------------------------------------------------------------------------------------------
# Sampled evaluation


def pad_prompts(prompts: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded (tokens, mask), each (n, length) int32."""
  tokens_NxP = np.full((len(prompts), length), pad_id, np.int32)
  mask_NxP = np.zeros((len(prompts), length), np.int32)
  for i, prompt in enumerate(prompts):
    if not 0 < len(prompt) <= length:
      raise ValueError(f'prompt {i} has {len(prompt)} tokens; expected 1..{length}')
    tokens_NxP[i, length - len(prompt):] = prompt
    mask_NxP[i, length - len(prompt):] = 1
  return tokens_NxP, mask_NxP


def _responses(tokens_BxT: np.ndarray, response_mask_BxT: np.ndarray) -> list[list[int]]:
  return [row[mask.astype(bool)].tolist() for row, mask in zip(tokens_BxT, response_mask_BxT)]


@functools.partial(jax.jit, static_argnames=('graphdef', 'response_start'))
def sequence_kl_terms(graphdef, params, ref_params, tokens_BxT, attention_mask_BxT,
                      response_mask_BxT, response_start: int = 1) -> dict[str, jax.Array]:
  """Per sequence (B,): `kl` Σ_t KL(π(·|y<t) ‖ π_ref(·|y<t)) over response tokens (exact per
  token), `k1` Σ_t log π/π_ref and `k3` Σ_t (ρ_t − 1 − log ρ_t) of the tokens in the sequence,
  `length` the number of response tokens. `response_start` (static) is the first position
  that may hold a response token (P in the canonical layout): only the positions from
  P − 1 on pay for the vocabulary projection, and each model's log-softmax is taken once and
  gives both the exact KL and the sampled tokens' log-probs."""
  s = response_start - 1
  targets_BxR, mask_BxR = tokens_BxT[:, s + 1:], response_mask_BxT[:, s + 1:]

  def logsoftmax(p):
    model = nnx.merge(graphdef, p)
    hidden_BxRxD = model.hidden(tokens_BxT, attention_mask_BxT)[:, s:-1]
    return jax.nn.log_softmax(model.logits(hidden_BxRxD).astype(jnp.float32), axis=-1)

  logp_BxRxV, logq_BxRxV = logsoftmax(params), logsoftmax(ref_params)
  mask_BxR = mask_BxR.astype(jnp.float32)
  kl_BxR = jnp.sum(jnp.exp(logp_BxRxV) * (logp_BxRxV - logq_BxRxV), axis=-1) * mask_BxR
  logp_BxR = jnp.take_along_axis(logp_BxRxV, targets_BxR[..., None], axis=-1)[..., 0] * mask_BxR
  logq_BxR = jnp.take_along_axis(logq_BxRxV, targets_BxR[..., None], axis=-1)[..., 0] * mask_BxR
  return {'kl': kl_BxR.sum(-1), 'k1': (logp_BxR - logq_BxR).sum(-1),
          'k3': kl_k3(policy_logps=logp_BxR, ref_logps=logq_BxR, mask=mask_BxR).sum(-1),
          'length': response_mask_BxT.sum(-1)}


class _Clock:
  """Adds the wall time of `run(name, fn, *args)` to `timings[name]` (a no-op without one)."""

  def __init__(self, timings: dict[str, float] | None):
    self.timings = timings

  def run(self, name: str, fn: Callable, *args):
    if self.timings is None:
      return fn(*args)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
    return out


def mean_stderr(name: str, values: np.ndarray) -> dict[str, float]:
  """`{name: mean, name_stderr: standard error}` of `values` (NaN error for a single value)."""
  values = np.asarray(values, np.float64)
  stderr = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float('nan')
  return {name: float(values.mean()), f'{name}_stderr': float(stderr)}


def sample_responses(graphdef, params, prompts: Sequence[Sequence[int]], key: jax.Array,
                     sampling: SamplingConfig, *, batch_size: int = 64,
                     prompt_len: int | None = None, pad_id: int | None = None):
  """Samples one response per prompt; yields (index, n_real, SampleOutput on the host)."""
  pad_id = sampling.pad_id if pad_id is None else pad_id
  prompt_len = prompt_len or max(len(p) for p in prompts)
  tokens_NxP, mask_NxP = pad_prompts(prompts, prompt_len, pad_id)
  for b, (index, n_real) in enumerate(fixed_batches(len(prompts), batch_size)):
    out = sample(graphdef, params, jnp.asarray(tokens_NxP[index]), jnp.asarray(mask_NxP[index]),
                 jax.random.fold_in(key, b), sampling)
    yield index, n_real, distributed.to_host(out)


def evaluate_sampled(graphdef, params, ref_params, prompts: Sequence[Sequence[int]],
                     gold_reward_fn: Callable, key: jax.Array, sampling: SamplingConfig,
                     beta: float, proxy_reward: Callable | None = None, *, batch_size: int = 64,
                     prompt_len: int | None = None,
                     timings: dict[str, float] | None = None) -> dict[str, float]:
  """One sample per prompt from π: mean ± standard error of the gold reward, the sequence-level
  KL (exact per token) and its k1 / k3 estimates, J_β, and the proxy reward if given.
  `timings`, when given, accumulates the seconds of each part (`sample`, `kl`, `gold`,
  `proxy`); each part then waits for its result, so the parts do not overlap."""
  columns: dict[str, list] = {k: [] for k in ('gold', 'kl', 'k1', 'k3', 'length', 'proxy')}
  clock = _Clock(timings)
  samples = sample_responses(graphdef, params, prompts, key, sampling, batch_size=batch_size,
                             prompt_len=prompt_len)
  while (item := clock.run('sample', next, samples, None)) is not None:
    index, n_real, out = item
    terms = clock.run('kl', lambda: distributed.to_host(sequence_kl_terms(
        graphdef, params, ref_params, out.tokens, out.attention_mask, out.response_mask,
        response_start=out.tokens.shape[1] - sampling.max_new_tokens)))
    real = slice(0, n_real)
    for name in ('kl', 'k1', 'k3', 'length'):
      columns[name].append(np.asarray(terms[name])[real])
    columns['gold'].append(clock.run('gold', lambda: np.asarray(gold_reward_fn(
        [list(prompts[i]) for i in index[real]],
        _responses(out.tokens[real], out.response_mask[real])), np.float64)))
    if proxy_reward is not None:
      columns['proxy'].append(clock.run('proxy', lambda: np.asarray(distributed.to_host(
          proxy_reward(out.tokens, out.attention_mask)))[real]))
  col = {k: np.concatenate(v) if v else None for k, v in columns.items()}
  result = {**mean_stderr('gold_reward', col['gold']), **mean_stderr('kl', col['kl']),
            **mean_stderr('kl_k1', col['k1']), **mean_stderr('kl_k3', col['k3']),
            **mean_stderr('objective', col['gold'] - beta * col['kl'])}
  if col['proxy'] is not None:
    result.update(mean_stderr('proxy_reward', col['proxy']))
  else:
    result.update({'proxy_reward': float('nan'), 'proxy_reward_stderr': float('nan')})
  result.update({'response_length': float(col['length'].mean()), 'n': len(col['gold'])})
  return result


def gold_of_samples(graphdef, params, prompts, gold_reward_fn, key, sampling, batch_size=64,
                    prompt_len=None) -> np.ndarray:
  """The gold reward of one sample per prompt, (n,) float64."""
  scores = []
  for index, n_real, out in sample_responses(graphdef, params, prompts, key, sampling,
                                             batch_size=batch_size, prompt_len=prompt_len):
    scores.append(np.asarray(gold_reward_fn(
        [list(prompts[i]) for i in index[:n_real]],
        _responses(out.tokens[:n_real], out.response_mask[:n_real])), np.float64))
  return np.concatenate(scores)


def win_rate_vs_reference(graphdef, params, ref_params, prompts: Sequence[Sequence[int]],
                          gold_reward_fn: Callable, key: jax.Array, sampling: SamplingConfig, *,
                          temperatures: Sequence[float] = TEMPERATURES, batch_size: int = 64,
                          prompt_len: int | None = None,
                          reference_scores: np.ndarray | None = None) -> list[dict[str, float]]:
  """For each temperature T: the fraction of prompts where π's sample at T beats a π_ref sample
  (at T = 1) under the gold reward, ties counting ½ (the DPO paper's Fig. 2 right, with the
  gold reward as judge). The π_ref samples are drawn once and shared by every T;
  `reference_scores` (their gold rewards, one per prompt) lets several policies share them."""
  ref_key, policy_key = jax.random.split(key)
  reference = reference_scores
  if reference is None:
    reference = gold_of_samples(graphdef, ref_params, prompts, gold_reward_fn, ref_key,
                                dataclasses.replace(sampling, temperature=1.0), batch_size,
                                prompt_len)
  rows = []
  for t in temperatures:
    policy = gold_of_samples(graphdef, params, prompts, gold_reward_fn,
                              jax.random.fold_in(policy_key, int(round(t * 1000))),
                              dataclasses.replace(sampling, temperature=float(t)), batch_size,
                              prompt_len)
    wins = (policy > reference) + 0.5 * (policy == reference)
    rows.append({'temperature': float(t), **mean_stderr('win_rate', wins), 'n': len(wins)})
  return rows


@functools.partial(jax.jit, static_argnames=('graphdef', 'prompt_len'))
def _pair_implicit_rewards(graphdef, params, ref_params, batch, prompt_len):
  out = []
  for side in ('chosen', 'rejected'):
    tokens, attn, resp = (batch[f'{side}_tokens'], batch[f'{side}_attention_mask'],
                          batch[f'{side}_response_mask'])
    logp = sum_and_count(sequence_logprobs(nnx.merge(graphdef, params), tokens, attn, resp,
                                           response_start=prompt_len), resp)[0]
    logq = sum_and_count(sequence_logprobs(nnx.merge(graphdef, ref_params), tokens, attn, resp,
                                           response_start=prompt_len), resp)[0]
    out.append(logp - logq)
  return out[0], out[1]


def implicit_reward_accuracy(graphdef, params, ref_params, pairs: dict[str, np.ndarray], *,
                             beta: float, prompt_len: int, batch_size: int = 64) -> dict[str, float]:
  """Accuracy of DPO's implicit reward β·log π(y|x)/π_ref(y|x) at ordering held-out pairs
  (a preference batch in the canonical layout, with `chosen_score` / `rejected_score`) by
  their gold scores; the stored chosen/rejected label is not used (it may be a noisy BT
  draw). `implicit_margin` is the mean β·(log-ratio of the gold-better − of the other).
  Pairs that carry `ref_chosen_logps` / `ref_rejected_logps` use them for π_ref."""
  keys = [k for k in pairs if k.endswith(('_tokens', '_mask'))]
  n = len(pairs['chosen_tokens'])
  # π_ref's log-probs of the pairs are the same at every point: read them when the pairs carry
  # them (`train.preference.reference_logps`, computed once), and run π alone.
  stored = 'ref_chosen_logps' in pairs
  first, second = [], []
  for index, n_real in fixed_batches(n, batch_size):
    batch = {k: jnp.asarray(pairs[k][index]) for k in keys}
    if stored:
      c, r = distributed.to_host(pair_sequence_logps(graphdef, params, batch, prompt_len))
      c = np.asarray(c) - pairs['ref_chosen_logps'][index]
      r = np.asarray(r) - pairs['ref_rejected_logps'][index]
    else:
      c, r = distributed.to_host(_pair_implicit_rewards(graphdef, params, ref_params, batch,
                                                        prompt_len))
    first.append(np.asarray(c)[:n_real])
    second.append(np.asarray(r)[:n_real])
  out = implicit_accuracy_from_rewards(beta * jnp.asarray(np.concatenate(first)),
                                       beta * jnp.asarray(np.concatenate(second)),
                                       jnp.asarray(pairs['chosen_score']),
                                       jnp.asarray(pairs['rejected_score']))
  return {k: float(v) for k, v in out.items()}


def best_of_n_samples(graphdef, ref_params, prompt_tokens_BxP, prompt_mask_BxP, key: jax.Array,
                      sampling: SamplingConfig, n: int, score_fn: Callable):
  """Best-of-N (Nakano et al. 2021, arXiv 2112.09332; Stiennon et al. 2020, arXiv 2009.01325):
  n responses per prompt from π_ref in one sampler call over B·n rows, scored by
  `score_fn(tokens_BxT, attention_mask_BxT, response_mask_BxT) -> (B,)` (a reward model or the
  gold reward), the best of each prompt kept (the first among equal scores). Returns (the kept
  rows as a `SampleOutput` on the host, scores_BxN). Its KL to π_ref is at most the analytic
  log N − (N − 1)/N (Beirami et al. 2024, arXiv 2401.01879); the exact task computes it."""
  if n < 1:
    raise ValueError(f'Best-of-N needs n ≥ 1, got {n}')
  b = prompt_tokens_BxP.shape[0]
  out = sample(graphdef, ref_params, jnp.repeat(jnp.asarray(prompt_tokens_BxP), n, axis=0),
               jnp.repeat(jnp.asarray(prompt_mask_BxP), n, axis=0), key, sampling)
  scores_BxN = np.asarray(distributed.to_host(
      score_fn(out.tokens, out.attention_mask, out.response_mask))).reshape(b, n)
  rows_B = np.arange(b) * n + scores_BxN.argmax(-1)
  kept = jax.tree.map(lambda x: np.asarray(x)[rows_B], distributed.to_host(out))
  return kept, scores_BxN
