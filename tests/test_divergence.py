"""A diverged run is a failure, never a point: on the exact task a DPO run with a learning rate
of 1e9 goes non-finite; the CLI exits 1 with one line, the run dir holds failed.json and its
last checkpoint is finite, results.csv marks the run failed and holds no non-finite or
made-up number for it, and the verdict leaves it out."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pandas as pd
import pytest

from alignlab import cli
from alignlab.checkpoint import Checkpointer


def test_exact_dpo_with_a_huge_learning_rate_fails_cleanly(tmp_path, capsys):
  out = tmp_path / 'out'
  code = cli.main(['run', 'exact_frontier', '--variant', 'tiny', '--quiet', '--out', str(out),
                   '--set', "methods=['dpo','best_of_n']", '--set', 'sweeps.dpo=[1.0]',
                   '--set', 'sweeps.best_of_n=[4]', '--set', 'task.sft.steps=2',
                   '--set', 'train.optimizer.learning_rate=1e9', '--set', 'train.save_every=1'])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1
  assert len(err) == 1 and 'dpo-beta1-seed0' in err[0] and 'non-finite' in err[0], err
  run = out / 'dpo-beta1-seed0'
  record = json.loads((run / 'failed.json').read_text())
  assert record['step'] >= 1 and not (run / 'done.json').exists()
  # Saved every step: the newest checkpoint is the last finite state, before the failure (a
  # save checks the parameters, so a non-finite state is never written).
  assert record['last_checkpoint'] is not None and record['last_checkpoint'] < record['step']
  with Checkpointer(run / 'checkpoints', {}) as ckpt:
    assert ckpt.latest_step() == record['last_checkpoint']
  df = pd.read_csv(out / 'results.csv')
  dpo = df[df['method'] == 'dpo']
  assert set(dpo['status']) == {'failed'}
  assert np.all(np.isfinite(dpo['kl'])) and np.all(np.isfinite(dpo['gap_fraction']))
  assert (dpo['step'] < record['step']).all()  # no point at or after the failure
  summary = (out / 'summary.md').read_text()
  assert 'Failed runs' in summary and 'dpo-beta1-seed0' in summary
  table = summary.split('## Failed runs')[0]
  assert 'best_of_n' in table and '\n   dpo ' not in table and '\n         dpo' not in table


def test_exact_kl_of_a_nan_policy_is_nan_not_zero():
  from alignlab.tasks import exact_math as em
  ref = jax.numpy.log(jax.numpy.full((2, 4), 0.25))
  bad = ref.at[0, 1].set(jax.numpy.nan)
  assert math.isnan(float(em.kl(bad, ref)[0]))
  assert float(em.kl(ref, ref)[1]) == 0.0
  m = em.exact_metrics(bad, ref, jax.numpy.ones((2, 4)), 0.3)
  assert math.isnan(float(m['kl'])) and math.isnan(float(m['gap_fraction']))


@pytest.mark.slow  # builds the IMDb tiny stages (tokenizer, SFT, pairs): minutes on 2 cores
def test_imdb_dpo_with_a_huge_learning_rate_fails_cleanly(tmp_path, capsys):
  """The same mistake on the sampled IMDb task: no gold reward is reported for a NaN policy."""
  out = tmp_path / 'out'
  code = cli.main(['run', 'imdb_frontier', '--variant', 'tiny', '--quiet', '--out', str(out),
                   '--set', "methods=['sft','dpo']", '--set', 'sweeps.dpo=[1.0]',
                   '--set', 'train.optimizer.learning_rate=1e9', '--set', 'train.save_every=1'])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and 'dpo-beta1-seed0' in err[-1] and 'non-finite' in err[-1], err
  run = out / 'dpo-beta1-seed0'
  record = json.loads((run / 'failed.json').read_text())
  assert not (run / 'done.json').exists() and record['step'] >= 1
  with Checkpointer(run / 'checkpoints', {}) as ckpt:
    assert ckpt.latest_step() == record['last_checkpoint'] < record['step']
  df = pd.read_csv(out / 'results.csv')
  dpo = df[df['method'] == 'dpo']
  assert set(dpo['status']) == {'failed'} and (dpo['step'] < record['step']).all()
  for col in ('gold_reward', 'kl', 'objective'):
    assert np.all(np.isfinite(dpo[col])), col
  assert set(df.loc[df['method'] == 'sft', 'status']) == {'done'}
  assert 'Failed runs' in (out / 'summary.md').read_text()
