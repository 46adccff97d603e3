"""The data-size study (experiments/exact_data_size.py): a grid of whole pipelines
(`pipeline.run_grid`) stacks its points' results and resumes; Best-of-N ranked by the reward
model is the exact law of the best of N draws by that model's scores; the study's points
differ only in their data (the same budgets); the figure's aggregation is the one stated."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from alignlab import pipeline, plots
from alignlab.config import ConfigError
from alignlab.tasks import exact

from test_best_of_n_kl import enumerated_best_of_n, np_kl


def test_a_grid_runs_every_point_stacks_them_and_resumes(tmp_path):
  base = pipeline.make_config(pipeline.load_experiment('bandit'), 'tiny')
  cfg = dataclasses.replace(base, grid=(('s4', 'train.steps=4', 'train.eval_every=2'),
                                        ('s8', 'train.steps=8', 'train.eval_every=4')))
  result = pipeline.run(cfg, tmp_path, source={'experiment': 'bandit', 'variant': 'tiny',
                                              'overrides': []}, progress=False, verbose=False)
  df = pd.read_csv(tmp_path / 'results.csv')
  assert set(df['grid_point']) == {'s4', 's8'}
  for name, steps in (('s4', 4), ('s8', 8)):
    rows = df[df['grid_point'] == name]
    assert (rows['train.steps'] == steps).all()
    assert rows['step'].max() == steps  # the point trained with its own override
    assert len(rows) == len(pd.read_csv(tmp_path / name / 'results.csv'))
    # The point's experiment.json rebuilds the point's config (what `alignlab eval` reads).
    record = json.loads((tmp_path / name / 'experiment.json').read_text())
    rebuilt = pipeline.make_config(pipeline.load_experiment('bandit'), 'tiny',
                                   ['grid=' + repr(cfg.grid)] + record['overrides'])
    assert rebuilt.train.steps == steps and rebuilt.grid == ()
  assert (tmp_path / 'grid.png').exists() and result.plots == [tmp_path / 'grid.png']
  done = {p: p.stat().st_mtime_ns for p in tmp_path.glob('*/*/done.json')}
  again = pipeline.run(cfg, tmp_path, progress=False, verbose=False)
  assert {p: p.stat().st_mtime_ns for p in tmp_path.glob('*/*/done.json')} == done
  np.testing.assert_allclose(again.df['objective'].to_numpy(float), df['objective'].to_numpy(float))
  assert list(again.df['grid_point']) == list(df['grid_point'])


@pytest.mark.parametrize('grid', [(('a', 'seeds=(1,)'), ('a', 'seeds=(2,)')),
                                  (('../a', 'seeds=(1,)'),), (('',),)])
def test_a_bad_grid_is_refused_before_anything_runs(tmp_path, grid):
  cfg = dataclasses.replace(pipeline.make_config(pipeline.load_experiment('bandit'), 'tiny'),
                            grid=grid)
  with pytest.raises(ConfigError, match='grid'):
    pipeline.run(cfg, tmp_path / 'out', progress=False, verbose=False)
  assert not (tmp_path / 'out').exists()


def test_best_of_n_ranked_by_the_reward_model_is_exact():
  cfg = pipeline.make_config(pipeline.load_experiment('exact_data_size'), 'tiny')
  point = pipeline.grid_points(cfg)[0][2]
  assert point.task.best_of_n_reward == 'model'
  _, env = pipeline.setup(point, progress=False)
  rm = env['reward_model']()
  score_PxY = np.asarray(exact.reward_table(point.task.problem, rm.graphdef, rm.params), np.float64)
  p_PxY = np.exp(np.asarray(env['ref_logp'], np.float64))
  p_PxY /= p_PxY.sum(-1, keepdims=True)
  r_PxY = np.asarray(env['r'], np.float64)
  _, env_gold = pipeline.setup(dataclasses.replace(
      point, task=dataclasses.replace(point.task, best_of_n_reward='gold')), progress=False)
  for n in (2, 3):
    row, _ = env['best_of_n'](n)
    law_PxY = np.stack([enumerated_best_of_n(p_PxY[x], score_PxY[x], n) for x in range(len(p_PxY))])
    assert abs(row['kl'] - np.mean([np_kl(law_PxY[x], p_PxY[x]) for x in range(len(p_PxY))])) < 1e-4
    assert abs(row['gold_reward'] - np.mean(np.sum(law_PxY * r_PxY, -1))) < 1e-4
    # The gold-ranked Best-of-N is the better one: the reward model is imperfect.
    assert env_gold['best_of_n'](n)[0]['gold_reward'] > row['gold_reward'] + 1e-3
  assert env['eval_key'] != env_gold['eval_key']  # a changed ranking re-evaluates


def test_an_unknown_best_of_n_reward_is_a_config_error():
  cfg = pipeline.make_config(pipeline.load_experiment('exact_data_size'), 'tiny',
                             ['grid=()', 'task.best_of_n_reward=proxy'])
  with pytest.raises(ConfigError, match='best_of_n_reward'):
    pipeline.setup(cfg, progress=False)


@pytest.mark.parametrize('variant', ['tiny', 'quick', 'paper'])
def test_the_points_differ_in_their_data_alone(variant):
  cfg = pipeline.make_config(pipeline.load_experiment('exact_data_size'), variant)
  points = pipeline.grid_points(cfg)
  data = [(p.task.pairs.pairs_per_prompt, p.task.pairs.seed, p.seeds) for _, _, p in points[:-1]]
  sizes = sorted({n for n, _, _ in data})
  assert len(sizes) >= 2 and all(b > a for a, b in zip(sizes, sizes[1:]))
  assert all(seeds == (k,) for _, k, seeds in data)  # a data seed seeds its runs too
  assert len(data) == len(set(data))
  seeds = {k for _, k, _ in data}
  if variant != 'tiny':
    assert len(seeds) >= 3 and sizes[0] == 16
  # The same budgets, β and methods at every size; the smallest data fills one batch.
  first = points[0][2]
  for _, _, p in points[:-1]:
    assert (p.train, p.rl, p.methods, p.sweeps, p.task.reward_model) == (
        first.train, first.rl, first.methods, first.sweeps, first.task.reward_model)
  assert first.train.batch_size <= sizes[0] * first.task.problem.n_prompts
  betas = {first.task.eval_beta} | {getattr(first.sweeps, m)[0] for m in first.methods
                                    if m != 'best_of_n'}
  assert betas == {first.task.eval_beta}
  name, _, gold = points[-1]
  assert name == 'gold' and gold.methods == ('ppo_gt',) and set(gold.seeds) == seeds


def test_the_figure_takes_each_runs_last_point_and_the_best_n():
  rows = []
  for point, size in (('a1', 16), ('a2', 16), ('a3', 16), ('b1', 64)):
    for method, value, last in (('dpo', 0.3, {'a1': 0.5, 'a2': 0.7, 'a3': 0.6, 'b1': 0.2}),
                                ('best_of_n', 2, {'a1': 0.9, 'a2': 0.9, 'a3': 0.9, 'b1': 0.8}),
                                ('best_of_n', 8, {'a1': 0.4, 'a2': 0.5, 'a3': 0.6, 'b1': 0.9})):
      run = f'{method}-{value}'
      rows.append({'grid_point': point, 'run': run, 'method': method, 'hparam': 'x',
                   'hparam_value': value, 'step': 0, 'gap_fraction': 1.0, 'n_pairs': size})
      rows.append({'grid_point': point, 'run': run, 'method': method, 'hparam': 'x',
                   'hparam_value': value, 'step': 10, 'gap_fraction': last[point], 'n_pairs': size})
  rows.append({'grid_point': 'g', 'run': 'ppo_gt', 'method': 'ppo_gt', 'hparam': 'beta',
               'hparam_value': 0.3, 'step': 5, 'gap_fraction': 0.1, 'n_pairs': np.nan})
  finals = plots.grid_finals(pd.DataFrame(rows), 'n_pairs', 'gap_fraction', 'min')
  dpo16 = finals[(finals['method'] == 'dpo') & (finals['n_pairs'] == 16)].iloc[0]
  assert dpo16['mean'] == pytest.approx(0.6) and dpo16['n'] == 3
  assert dpo16['half_width'] == pytest.approx(4.303 * 0.1 / np.sqrt(3), rel=1e-3)
  bon = finals[finals['method'] == 'best_of_n'].set_index('n_pairs')
  assert bon.loc[16, 'hparam_value'] == 8 and bon.loc[16, 'mean'] == pytest.approx(0.5)
  assert bon.loc[64, 'hparam_value'] == 2 and bon.loc[64, 'mean'] == pytest.approx(0.8)
  assert np.isnan(finals.loc[finals['method'] == 'ppo_gt', 'n_pairs']).all()
