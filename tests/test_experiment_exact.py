"""The exact-task experiment, tiny variant: every method produces exact evaluation points that
obey the theory (no point above the frontier of π*, gap = β·KL(π‖π*) consistent, Best-of-N
within its analytic KL bound), and an interrupted experiment resumes exactly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from alignlab import methods, pipeline, runs
from alignlab.config import ConfigError


PREFERENCE = [m for m, spec in methods.METHODS.items() if spec['train'] is methods.train_preference]
RL = [m for m, spec in methods.METHODS.items() if spec['train'] is methods.train_rl]


def shared_out(tmp_path_factory):
  """One tiny run per test session, shared by the tests that only read it (the notebooks'
  test finds it through $ALIGNLAB_RUNS)."""
  return tmp_path_factory.getbasetemp() / 'shared_runs' / 'exact_frontier-tiny'


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  out = shared_out(tmp_path_factory)
  result = pipeline.run_experiment('exact_frontier', 'tiny', out_dir=out, progress=False,
                                     verbose=False)
  return result


def test_every_method_has_exact_points(tiny):
  module = pipeline.load_experiment('exact_frontier')
  cfg = module.get_config('tiny')
  df = pd.read_csv(tiny.results_csv)
  assert set(df['method']) == set(cfg.methods)
  for column in runs.RESULT_COLUMNS:
    assert column in df.columns
  trained = df[df['method'] != 'best_of_n']
  # Evaluated at 0, every eval_every steps and at the end.
  steps = sorted(set(trained.loc[trained['method'].isin(PREFERENCE), 'step']))
  assert steps == list(range(0, cfg.train.steps + 1, cfg.train.eval_every))
  rl_steps = sorted(set(trained.loc[trained['method'].isin(RL), 'step']))
  assert rl_steps == list(range(0, cfg.rl.iterations + 1, cfg.rl.eval_every))
  start = trained[trained['step'] == 0]
  np.testing.assert_allclose(start['kl'], 0.0, atol=1e-5)  # every run starts at π_ref
  np.testing.assert_allclose(start['gap_fraction'], 1.0, atol=1e-4)
  assert len(df[df['method'] == 'dpo'].groupby('hparam_value')) == len(cfg.sweeps.dpo)
  for png in tiny.plots:
    assert png.exists() and png.stat().st_size > 1000


def test_points_obey_the_theory(tiny):
  df = pd.read_csv(tiny.results_csv)
  # π*_β maximizes E r at its KL, so no policy lies above the frontier.
  assert (df['reward_shortfall'] >= -1e-3).all(), df[df['reward_shortfall'] < -1e-3]
  np.testing.assert_allclose(df['frontier_reward'] - df['gold_reward'], df['reward_shortfall'], atol=1e-5)
  # gap = J(π*) − J(π), computed as β·KL(π‖π*), agrees with the difference of objectives.
  np.testing.assert_allclose(df['optimal_objective'] - df['objective'], df['gap'], atol=2e-4)
  np.testing.assert_allclose(df['objective'], df['gold_reward'] - df['beta'] * df['kl'], atol=1e-5)
  assert (df['gap'] >= -1e-5).all()
  own_beta = df[df['method'].isin(['dpo', 'ipo', 'cdpo', 'kto'])]
  np.testing.assert_allclose(own_beta['beta'], own_beta['hparam_value'])
  bon = df[df['method'] == 'best_of_n'].sort_values('hparam_value')
  assert (bon['kl'] <= bon['kl_bound'] + 1e-5).all()  # Beirami et al. 2024
  assert np.all(np.diff(bon['gold_reward']) > 0) and np.all(np.diff(bon['kl']) > 0)
  frontier = pd.read_csv(tiny.out_dir / 'frontier.csv')
  assert np.all(np.diff(frontier.sort_values('beta')['kl']) < 0)


def test_win_rates_written(tiny):
  wr = pd.read_csv(tiny.out_dir / 'win_rates.csv')
  dpo = wr[wr['method'] == 'dpo']
  assert sorted(set(dpo['temperature'])) == [0.0, 1.0]
  assert ((wr['win_rate'] >= 0) & (wr['win_rate'] <= 1)).all()
  bon = wr[wr['method'] == 'best_of_n'].sort_values('hparam_value')
  assert (bon['win_rate'] > 0.5).all() and np.all(np.diff(bon['win_rate']) > 0)


def test_resume_skips_complete_runs_and_continues_a_partial_one(tiny, tmp_path):
  out = tmp_path / 'copy'
  shutil.copytree(tiny.out_dir, out, ignore=shutil.ignore_patterns('cache'))
  done = {p.parent.name: p.stat().st_mtime_ns for p in out.glob('*/done.json')}
  partial = out / 'ipo-beta0.3-seed0'
  final_before = runs.read_jsonl(partial / 'eval.jsonl')[-1]
  # As if killed after the checkpoint at step 6: the step-12 checkpoint, the last evaluation
  # and the completion mark are gone.
  for step_dir in (partial / 'checkpoints').iterdir():
    if step_dir.name.isdigit() and int(step_dir.name) > 6:
      shutil.rmtree(step_dir)
  (partial / 'done.json').unlink()
  (partial / 'win_rate.jsonl').unlink()
  result = pipeline.run_experiment('exact_frontier', 'tiny', out_dir=out, progress=False,
                                     verbose=False)
  for name, mtime in done.items():
    if name != partial.name:
      assert (out / name / 'done.json').stat().st_mtime_ns == mtime, name  # skipped
  assert runs.is_complete(partial)
  final_after = runs.read_jsonl(partial / 'eval.jsonl')[-1]
  for key in ('gold_reward', 'kl', 'gap'):
    assert final_after[key] == pytest.approx(final_before[key], abs=1e-6), key
  steps = [json.loads(l)['step'] for l in (partial / 'metrics.jsonl').read_text().splitlines()]
  assert steps == sorted(set(steps))  # nothing logged twice
  assert len(result.df) == len(pd.read_csv(tiny.results_csv))


def test_unknown_variant_and_method():
  module = pipeline.load_experiment('exact_frontier')
  with pytest.raises(ConfigError, match='tiny, quick, paper'):
    module.get_config('huge')
  cfg = pipeline.make_config(module, 'tiny', ["methods=['dpo','nope']"])
  with pytest.raises(ConfigError, match='nope'):
    pipeline.run(cfg, '/nonexistent/never-written')


def test_evaluate_run_recomputes_the_last_evaluation(tiny):
  module = pipeline.load_experiment('exact_frontier')
  cfg = module.get_config('tiny')
  names = ['dpo-beta1-seed0', 'best_of_n-n8-seed0', 'ppo_gt-beta0.3-seed0',
           'ppo-kl_target1-seed0']
  for name in names:
    run = tiny.out_dir / name
    last = runs.read_jsonl(run / 'eval.jsonl')[-1]
    again = pipeline.evaluate_run(cfg, run)
    assert again['step'] == last['step'], name
    for key in ('gold_reward', 'kl', 'gap', 'objective'):
      assert again[key] == pytest.approx(last[key], abs=1e-5), (name, key)
