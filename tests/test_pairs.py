from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from alignlab.data import pairs as pairs_lib
from alignlab.data.preference import collate, read_metadata, read_pairs, write_pairs


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
  monkeypatch.setenv('ALIGNLAB_CACHE', str(tmp_path / 'cache'))
  return tmp_path / 'cache'


def _random_examples(n: int, seed: int = 0, max_prompt: int = 9, max_response: int = 20) -> list[dict]:
  rng = np.random.default_rng(seed)
  return [{'prompt': rng.integers(3, 500, rng.integers(1, max_prompt + 1)).astype(np.int32),
           'chosen': rng.integers(3, 500, rng.integers(1, max_response + 1)).astype(np.int32),
           'rejected': rng.integers(3, 500, rng.integers(1, max_response + 1)).astype(np.int32),
           'chosen_score': np.float32(rng.normal()), 'rejected_score': np.float32(rng.normal())}
          for _ in range(n)]


def _responses(n_prompts: int, k: int) -> list[list[list[int]]]:
  return [[[10 * p + i, 7, 1] for i in range(k)] for p in range(n_prompts)]


def test_hard_pairs_counts_ties_and_winners():
  prompts = [[2, 5], [2, 6], [2, 7]]
  scores = np.array([[0.1, 0.4, 0.3, 0.2], [1.0, 1.0, 2.0, 2.0], [5.0, 5.0, 5.0, 5.0]], np.float32)
  examples, ties = pairs_lib.build_pairs(prompts, _responses(3, 4), scores)
  per_prompt = [sum(list(e['prompt']) == p for e in examples) for p in prompts]
  assert per_prompt == [6, 4, 0] and ties == 0 + 2 + 6 and len(examples) == 10
  for e in examples:
    p = prompts.index(list(e['prompt']))
    win, lose = e['chosen'][0] - 10 * p, e['rejected'][0] - 10 * p
    assert scores[p, win] > scores[p, lose]
    assert e['chosen_score'] == scores[p, win] and e['rejected_score'] == scores[p, lose]
  expected = {(p, a, b) for p in range(2) for a, b in itertools.combinations(range(4), 2) if scores[p, a] != scores[p, b]}
  got = {(prompts.index(list(e['prompt'])), *sorted((int(e['chosen'][0]) % 10, int(e['rejected'][0]) % 10))) for e in examples}
  assert got == expected


def test_bradley_terry_labels_follow_the_logistic_model():
  n = 4000
  scores = np.tile(np.array([[0.0, 1.0]], np.float32), (n, 1))
  examples, ties = pairs_lib.build_pairs([[2]] * n, [[[3], [4]]] * n, scores, mode='bradley_terry', temperature=0.5, seed=1)
  assert ties == 0 and len(examples) == n
  p_high = np.mean([e['chosen'][0] == 4 for e in examples])
  expected = 1 / (1 + np.exp(-2.0))
  assert abs(p_high - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
  tied, _ = pairs_lib.build_pairs([[2]] * n, [[[3], [4]]] * n, np.zeros((n, 2)), mode='bradley_terry', seed=1)
  assert len(tied) == n and abs(np.mean([e['chosen'][0] == 4 for e in tied]) - 0.5) < 0.05
  again, _ = pairs_lib.build_pairs([[2]] * n, [[[3], [4]]] * n, scores, mode='bradley_terry', temperature=0.5, seed=1)
  assert [int(e['chosen'][0]) for e in again] == [int(e['chosen'][0]) for e in examples]
  cold, _ = pairs_lib.build_pairs([[2]] * 50, [[[3], [4]]] * 50, scores[:50], mode='bradley_terry', temperature=1e-6)
  assert all(e['chosen'][0] == 4 for e in cold)


def test_build_pairs_rejects_bad_input():
  with pytest.raises(ValueError):
    pairs_lib.build_pairs([[2]], _responses(1, 4), np.zeros((1, 3)))
  with pytest.raises(ValueError):
    pairs_lib.build_pairs([[2]], _responses(1, 2), np.array([[0.0, np.nan]]))
  with pytest.raises(ValueError):
    pairs_lib.build_pairs([[2]], _responses(1, 2), np.zeros((1, 2)), mode='soft')


def test_tfds_round_trip_preserves_every_field(tmp_path):
  examples = _random_examples(257)
  examples[3]['prompt'] = np.zeros(0, np.int32)
  examples[4]['chosen_score'] = np.float32(np.nan)
  path = write_pairs({'train': examples, 'eval': examples[:5]}, tmp_path / 'ds', metadata={'note': 'x'})
  source = read_pairs(path)
  assert len(source) == 257 and len(read_pairs(path, 'eval')) == 5
  for want, got in zip(examples, [source[i] for i in range(len(source))]):
    for field in ('prompt', 'chosen', 'rejected'):
      assert got[field].dtype == np.int32
      np.testing.assert_array_equal(got[field], want[field])
    for field in ('chosen_score', 'rejected_score'):
      np.testing.assert_array_equal(np.float32(got[field]), want[field])
  meta = read_metadata(path)
  assert meta['note'] == 'x' and meta['num_examples'] == {'train': 257, 'eval': 5}
  assert sorted(p.name for p in tmp_path.iterdir()) == ['ds']
  with pytest.raises(FileExistsError):
    write_pairs(examples, path)


def test_write_pairs_failure_leaves_nothing(tmp_path):
  def broken():
    yield from _random_examples(3)
    raise RuntimeError('sampler died')

  with pytest.raises(RuntimeError):
    write_pairs(broken(), tmp_path / 'ds')
  assert list(tmp_path.iterdir()) == []


def _strip(tokens, attention, response):
  return tokens[(attention == 1) & (response == 0)], tokens[response == 1]


def test_collate_layout():
  examples = _random_examples(6, seed=2, max_prompt=12, max_response=20)
  batch = collate(examples, prompt_buckets=(8, 16), response_buckets=(16, 32), pad_id=0)
  p = 16 if max(len(e['prompt']) for e in examples) > 8 else 8
  r = 32 if max(max(len(e['chosen']), len(e['rejected'])) for e in examples) > 16 else 16
  for side in ('chosen', 'rejected'):
    tokens, attention, response = (batch[f'{side}_{k}'] for k in ('tokens', 'attention_mask', 'response_mask'))
    assert tokens.shape == attention.shape == response.shape == (6, p + r)
    assert tokens.dtype == attention.dtype == response.dtype == np.int32
    np.testing.assert_array_equal(batch[f'{side}_score'], [e[f'{side}_score'] for e in examples])
    for row, e in enumerate(examples):
      n_p, n_r = len(e['prompt']), len(e[side])
      want_tokens = np.zeros(p + r, np.int32)
      want_tokens[p - n_p:p] = e['prompt']
      want_tokens[p:p + n_r] = e[side]
      np.testing.assert_array_equal(tokens[row], want_tokens)
      np.testing.assert_array_equal(attention[row], (np.arange(p + r) >= p - n_p) & (np.arange(p + r) < p + n_r))
      np.testing.assert_array_equal(response[row], (np.arange(p + r) >= p) & (np.arange(p + r) < p + n_r))
  with pytest.raises(ValueError, match='largest bucket'):
    collate(examples, prompt_buckets=(4,), response_buckets=(64,))


def _fake_sampler(calls):
  def sample_fn(prompt_batch, key):
    calls.append(len(prompt_batch))
    ids = np.asarray(jax.random.randint(key, (len(prompt_batch), 4, 3), 3, 9))
    return [[list(r) + [1] for r in rs] for rs in ids]
  return sample_fn


def _reward_fn(prompts, responses):
  return np.asarray([sum(r[:-1]) for r in responses], np.float32)  # ties are common


def test_generate_preference_dataset(cache_root):
  prompts = [[2, 10 + i] for i in range(13)]
  calls = []
  result = pairs_lib.generate_preference_dataset(_fake_sampler(calls), _reward_fn, prompts, k=4,
                                                 cache_key={'policy': 'sft-v1'}, batch_size=5, progress=False)
  assert not result.from_cache and calls == [5, 5, 5]  # the last batch is padded to 5
  stats = result.stats
  assert stats.num_prompts == 13 and stats.num_pairs + stats.num_ties_dropped == 13 * 6 and stats.num_ties_dropped > 0
  source = read_pairs(result.path)
  assert len(source) == stats.num_pairs
  for i in range(len(source)):
    e = source[i]
    assert e['chosen_score'] > e['rejected_score']
    assert e['chosen_score'] == sum(e['chosen'][:-1]) and e['rejected_score'] == sum(e['rejected'][:-1])
    assert e['chosen'][-1] == 1 and list(e['prompt']) in prompts
  again = pairs_lib.generate_preference_dataset(_fake_sampler(calls), _reward_fn, prompts, k=4,
                                                cache_key={'policy': 'sft-v1'}, batch_size=5, progress=False)
  assert again.from_cache and again.path == result.path and again.stats == stats and calls == [5, 5, 5]
  other = pairs_lib.generate_preference_dataset(_fake_sampler(calls), _reward_fn, prompts, k=4,
                                                cache_key={'policy': 'sft-v2'}, batch_size=5, progress=False)
  assert not other.from_cache and other.path != result.path
  # Same keys per batch: the same samples, so the same pairs.
  assert [read_pairs(other.path)[i]['chosen'].tolist() for i in range(5)] == [source[i]['chosen'].tolist() for i in range(5)]


def test_generate_preference_dataset_failure_leaves_no_entry(cache_root):
  def failing(prompt_batch, key):
    raise RuntimeError('out of memory')

  with pytest.raises(RuntimeError):
    pairs_lib.generate_preference_dataset(failing, _reward_fn, [[2, 3]] * 4, cache_key='x', progress=False)
  assert not any(p.is_file() or p.name.startswith('.tmp') for p in cache_root.rglob('*'))


def test_split_responses():
  tokens = np.array([[0, 2, 5, 6, 1, 0], [2, 5, 5, 0, 0, 0]])
  response = np.array([[0, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0]])
  assert pairs_lib.split_responses(tokens, response) == [[6, 1], [5]]


def test_left_pad_prompts():
  tokens, mask = pairs_lib.left_pad_prompts([[2, 5, 6], [2]], 4, pad_id=0, repeat=2)
  np.testing.assert_array_equal(tokens, [[0, 2, 5, 6], [0, 2, 5, 6], [0, 0, 0, 2], [0, 0, 0, 2]])
  np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
  with pytest.raises(ValueError):
    pairs_lib.left_pad_prompts([[1, 2, 3]], 2)
