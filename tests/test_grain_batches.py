"""Training batches read with grain (`train/batches.GrainBatches`): a deterministic order per
seed, every row once per epoch, the iterators' state saved with the checkpoints so that a run
resumed mid-epoch reads exactly the batches of an uninterrupted one, and per-process shards
that tile the global batch."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from alignlab.config import OptimizerConfig
from alignlab.train import fit as fit_lib
from alignlab.train.batches import GrainBatches

N, B = 7, 3  # 7 rows in batches of 3: most batches run on into the next epoch


def _arrays():
  rng = np.random.default_rng(0)
  return {'x': rng.normal(size=(N, 4)).astype(np.float32), 'y': rng.normal(size=N).astype(np.float32),
          'id': np.arange(N, dtype=np.float32)}


def _loss_fn(params, batch, hparams):
  """Least squares; `code` names the batch (its ids in order, base N), so the metrics log says
  which rows each step trained on."""
  del hparams
  residual_B = batch['x'] @ params['w'] - batch['y']
  code = jnp.sum(batch['id'] * float(N) ** jnp.arange(batch['id'].shape[0]))
  return jnp.sum(residual_B ** 2), {'count': jnp.float32(residual_B.shape[0]), 'code': code}


def _train(dirs, seeds, n_steps, stop_after=None):
  return fit_lib.fit_runs(
      _loss_fn, {'w': jnp.zeros(4)}, GrainBatches(_arrays(), B, seeds), {},
      optimizer=OptimizerConfig(learning_rate=0.05, schedule='constant'), n_steps=n_steps,
      run_dirs=dirs, configs=[{'test': 'grain'}] * len(dirs), save_every=2, progress=False,
      stop_after=stop_after, runs_per_chunk=None)


def _codes(run_dir):
  rows = [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]
  return [(row['step'], int(round(row['code']))) for row in rows]


def _decode(code):
  return [(code // N ** b) % N for b in range(B)]


def test_resume_mid_epoch_reads_the_batches_an_uninterrupted_run_reads(tmp_path):
  seeds = [0, 5]
  whole = [tmp_path / f'whole-{s}' for s in seeds]
  state_whole, _ = _train(whole, seeds, n_steps=9)
  parts = [tmp_path / f'parts-{s}' for s in seeds]
  _train(parts, seeds, n_steps=9, stop_after=4)  # killed after 4 steps: 12 rows, mid-epoch 2
  saved = [json.loads(line) for line in (parts[0] / 'data_state.jsonl').read_text().splitlines()]
  assert [row['step'] for row in saved] == [2, 4]  # one iterator state per checkpoint
  # A new process: fresh iterators at the start, set back from the checkpoint's state.
  state_parts, _ = _train(parts, seeds, n_steps=9)
  for w, p in zip(whole, parts):
    assert _codes(p) == _codes(w)
    assert len(_codes(w)) == 9
  np.testing.assert_array_equal(np.asarray(state_parts['params']['w']),
                                np.asarray(state_whole['params']['w']))
  # The two seeds read different orders; each epoch of a run visits every row once.
  runs = [[row for _, code in _codes(w) for row in _decode(code)] for w in whole]
  assert runs[0] != runs[1]
  for rows in runs:
    for epoch in range(len(rows) // N):
      assert sorted(rows[epoch * N:(epoch + 1) * N]) == list(range(N))
    assert rows[:N] != rows[N:2 * N]  # reshuffled each epoch


def test_a_resume_without_the_iterator_state_is_refused(tmp_path):
  run = [tmp_path / 'run']
  _train(run, [0], n_steps=6, stop_after=2)
  (run[0] / 'data_state.jsonl').unlink()
  with pytest.raises(ValueError, match='no data iterator state at step 2'):
    _train(run, [0], n_steps=6)


def test_the_iterators_follow_random_access_and_refuse_an_unrestored_position():
  batches = GrainBatches(_arrays(), B, [3, 4])
  assert batches.indices(0).shape == (2, B)
  for step in range(5):
    np.testing.assert_array_equal(batches.next_indices(step), batches.indices(step))
  state = batches.get_state()
  fresh = GrainBatches(_arrays(), B, [3, 4])
  with pytest.raises(ValueError, match='iterators are at batch 0, the loop at step 5'):
    fresh.next_indices(5)
  fresh.set_state(state, 5)
  np.testing.assert_array_equal(fresh.next_indices(5), batches.indices(5))


def test_process_shards_tile_the_global_batch():
  whole = GrainBatches(_arrays(), 4, [1], shard_index=0, shard_count=1)
  shards = [GrainBatches(_arrays(), 4, [1], shard_index=i, shard_count=2) for i in range(2)]
  for step in range(6):
    np.testing.assert_array_equal(np.concatenate([s.indices(step) for s in shards], 1),
                                  whole.indices(step))
  with pytest.raises(ValueError, match='must split evenly'):
    GrainBatches(_arrays(), 3, [1], shard_index=0, shard_count=2)
