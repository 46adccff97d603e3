"""Gold-labelled preference pairs from K samples per prompt (DPO, arXiv:2305.18290 §6.1:
4 samples per prompt, all 6 pairs, labelled by the gold reward).

Labels:
- `'hard'`: the response with the higher gold score is chosen; exact ties are dropped.
- `'bradley_terry'`: a noisy label drawn from the Bradley–Terry model (arXiv:2305.18290
  Eq. 1), P(a ≻ b) = σ((s_a − s_b) / temperature); ties are kept (a fair coin).
Both store the gold scores of chosen and rejected, so a BT-labelled pair may have
`chosen_score < rejected_score`.

`generate_preference_dataset` runs a user's sampler and gold reward over prompts and writes
the pairs as a cached TFDS dataset; it knows nothing of models, only of the two callables.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from alignlab.config import config_hash, to_dict
from alignlab.data.cache import cache_dir
from alignlab.data.preference import read_metadata, write_pairs

MODES = ('hard', 'bradley_terry')

TokenIds = Sequence[int]
# sample_fn(prompts, key) -> for each prompt, its K responses (token ids, ending with EOS
# where the sample ended, no padding); key is a JAX PRNG key.
SampleFn = Callable[[list[list[int]], Any], Sequence[Sequence[TokenIds]]]
# reward_fn(prompts, responses) -> (n,) gold rewards of n (prompt, response) pairs.
RewardFn = Callable[[list[list[int]], list[list[int]]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class PairConfig:
  mode: str = 'hard'  # 'hard' | 'bradley_terry'
  temperature: float = 1.0  # BT temperature on the gold-score scale
  seed: int = 0  # seeds BT labels and the sampler keys


@dataclasses.dataclass(frozen=True)
class PairStats:
  num_prompts: int
  num_pairs: int
  num_ties_dropped: int


@dataclasses.dataclass(frozen=True)
class GeneratedDataset:
  path: Path  # read it with `read_pairs(path)`
  from_cache: bool
  stats: PairStats


def build_pairs(prompts: Sequence[TokenIds], responses_per_prompt: Sequence[Sequence[TokenIds]],
                scores: np.ndarray, *, mode: str = 'hard', temperature: float = 1.0,
                seed: int | Sequence[int] = 0) -> tuple[list[dict[str, Any]], int]:
  """All K(K−1)/2 pairs of each prompt's K responses, labelled by `scores` (prompts, K).

  Returns `(examples, num_ties_dropped)`; examples are in prompt order, then pair (i, j),
  i < j, order.
  """
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
  if mode == 'bradley_terry' and not temperature > 0:
    raise ValueError(f'temperature must be positive, got {temperature}')
  scores = np.asarray(scores, np.float32)
  if scores.ndim != 2 or len(prompts) != scores.shape[0] or len(responses_per_prompt) != scores.shape[0]:
    raise ValueError(f'scores {scores.shape} do not match {len(prompts)} prompts and '
                     f'{len(responses_per_prompt)} response lists')
  if not np.all(np.isfinite(scores)):
    raise ValueError('scores must be finite')
  rng = np.random.default_rng(seed)
  examples, ties = [], 0
  for prompt, responses, row in zip(prompts, responses_per_prompt, scores):
    if len(responses) != len(row):
      raise ValueError(f'{len(responses)} responses but {len(row)} scores for a prompt')
    for a, b in itertools.combinations(range(len(responses)), 2):
      if mode == 'hard':
        if row[a] == row[b]:
          ties += 1
          continue
        a_wins = bool(row[a] > row[b])
      else:
        # σ(x) via exp of a non-positive number, so large score gaps cannot overflow.
        x = float(row[a] - row[b]) / temperature
        p_a = 1.0 / (1.0 + np.exp(-x)) if x >= 0 else np.exp(x) / (1.0 + np.exp(x))
        a_wins = bool(rng.random() < p_a)
      win, lose = (a, b) if a_wins else (b, a)
      examples.append({
          'prompt': np.asarray(prompt, np.int32), 'chosen': np.asarray(responses[win], np.int32),
          'rejected': np.asarray(responses[lose], np.int32),
          'chosen_score': np.float32(row[win]), 'rejected_score': np.float32(row[lose])})
  return examples, ties


def left_pad_prompts(prompts: Sequence[TokenIds], length: int, *, pad_id: int = 0,
                     repeat: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """`(tokens, mask)` of shape (len(prompts) * repeat, length), each prompt left-padded and
  repeated `repeat` times in a row (prompt i fills rows i*repeat ... i*repeat + repeat - 1):
  the input a sampler needs to draw `repeat` responses per prompt."""
  tokens_BxP = np.full((len(prompts) * repeat, length), pad_id, np.int32)
  mask_BxP = np.zeros((len(prompts) * repeat, length), np.int32)
  for i, prompt in enumerate(prompts):
    if len(prompt) > length:
      raise ValueError(f'prompt {i} has {len(prompt)} tokens, more than {length}')
    rows = slice(i * repeat, (i + 1) * repeat)
    tokens_BxP[rows, length - len(prompt):] = np.asarray(prompt, np.int32)
    mask_BxP[rows, length - len(prompt):] = 1
  return tokens_BxP, mask_BxP


def split_responses(tokens_BxT: np.ndarray, response_mask_BxT: np.ndarray) -> list[list[int]]:
  """Response token ids of each row of a canonical-layout batch (e.g. a `SampleOutput`)."""
  tokens_BxT, response_mask_BxT = np.asarray(tokens_BxT), np.asarray(response_mask_BxT).astype(bool)
  return [row[mask].tolist() for row, mask in zip(tokens_BxT, response_mask_BxT)]


def generate_preference_dataset(sample_fn: SampleFn, reward_fn: RewardFn, prompts: Sequence[TokenIds],
                                *, k: int = 4, cache_key: Any, pairs: PairConfig = PairConfig(),
                                batch_size: int = 64, progress: bool = True) -> GeneratedDataset:
  """Samples `k` responses per prompt, scores them, writes all pairs; cached.

  `cache_key` must identify everything the callables depend on (policy checkpoint, sampling
  config, reward); it is hashed with the prompts, `k`, `pairs` and `batch_size` into
  `$ALIGNLAB_CACHE/preference/<hash>/`. On a hit nothing is sampled. Batch b of prompts is
  sampled with key `fold_in(key(pairs.seed), b)`, so results do not depend on what else ran.
  `sample_fn` always gets exactly `batch_size` prompts (see `left_pad_prompts`).
  """
  if k < 2:
    raise ValueError(f'k must be at least 2 to make pairs, got {k}')
  if pairs.mode not in MODES:
    raise ValueError(f'pairs.mode must be one of {MODES}, got {pairs.mode!r}')
  prompts = [[int(t) for t in p] for p in prompts]
  key_dict = {'cache_key': to_dict(cache_key), 'prompts': config_hash(prompts, length=16), 'k': k,
              'pairs': to_dict(pairs), 'batch_size': batch_size}
  directory = cache_dir('preference', key_dict)
  if directory.is_dir():
    return GeneratedDataset(directory, True, PairStats(**read_metadata(directory)['stats']))
  counts = {'num_prompts': 0, 'num_pairs': 0, 'num_ties_dropped': 0}
  examples = _generate(sample_fn, reward_fn, prompts, k, pairs, batch_size, progress, counts)
  # `counts` fills in as write_pairs consumes the generator; the metadata is written after.
  write_pairs(examples, directory, metadata={'key': key_dict, 'stats': counts})
  return GeneratedDataset(directory, False, PairStats(**counts))


def _generate(sample_fn: SampleFn, reward_fn: RewardFn, prompts: list[list[int]], k: int,
              pairs: PairConfig, batch_size: int, progress: bool, counts: dict[str, int]) -> Iterator[dict[str, Any]]:
  base_key = jax.random.key(pairs.seed)
  starts = range(0, len(prompts), batch_size)
  for b, start in enumerate(tqdm(starts, desc='preference pairs', unit='batch', disable=not progress)):
    batch = prompts[start:start + batch_size]
    # A full batch every call (the last one padded with repeats), so a jitted sampler
    # compiles once; the repeats' samples are dropped.
    full = batch + [batch[-1]] * (batch_size - len(batch))
    sampled = sample_fn(full, jax.random.fold_in(base_key, b))
    if len(sampled) != len(full) or any(len(rs) != k for rs in sampled):
      raise ValueError(f'sample_fn must return {k} responses for each of {len(full)} prompts')
    responses = [[[int(t) for t in r] for r in rs] for rs in sampled[:len(batch)]]
    flat_prompts = [p for p in batch for _ in range(k)]
    flat_responses = [r for rs in responses for r in rs]
    scores = np.asarray(reward_fn(flat_prompts, flat_responses), np.float32).reshape(len(batch), k)
    examples, ties = build_pairs(batch, responses, scores, mode=pairs.mode,
                                 temperature=pairs.temperature, seed=(pairs.seed, b))
    counts['num_prompts'] += len(batch)
    counts['num_pairs'] += len(examples)
    counts['num_ties_dropped'] += ties
    yield from examples
