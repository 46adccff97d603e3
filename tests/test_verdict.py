"""The verdict's numbers come from the stored per-seed points: recomputed here with NumPy from
a results table, budget by budget; ties and flags as the intervals and records say."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alignlab import verdict as v

T975 = {1: 12.706, 2: 4.303}


def _results(rng) -> pd.DataFrame:
  rows = []
  for method, base in (('dpo', 0.5), ('ppo', 0.6), ('ipo', 0.2)):
    for seed in range(3):
      for step, kl in ((0, 0.0), (10, 0.8), (20, 2.5), (40, 7.0)):
        rows.append({'method': method, 'hparam': 'beta', 'hparam_value': 0.1, 'seed': seed,
                     'step': step, 'kl': kl + 0.05 * rng.normal(),
                     'gold_reward': base * kl / 7 + 0.02 * rng.normal(),
                     'gold_reward_stderr': 0.01 + 0.01 * rng.random(),
                     'objective': 0.0, 'status': 'done', 'kl_target_met': np.nan})
  df = pd.DataFrame(rows)
  df['kl_target_met'] = df['kl_target_met'].astype(object)
  df.loc[(df['method'] == 'ppo') & (df['seed'] == 0), 'kl_target_met'] = False
  # A failed run: its points never count.
  bad = df[(df['method'] == 'ipo') & (df['seed'] == 0)].copy()
  bad['seed'], bad['gold_reward'], bad['status'] = 9, 99.0, 'failed'
  return pd.concat([df, bad], ignore_index=True)


def test_intervals_are_recomputed_from_the_per_seed_points():
  df = _results(np.random.default_rng(0))
  table = v.verdict(df, budgets=(1.0, 3.0, 10.0))
  ok = df[df['status'] != 'failed']
  for _, row in table.iterrows():
    cands = []
    for (method, step), g in ok.groupby(['method', 'step']):
      if method == row['method'] and g['kl'].mean() <= row['budget']:
        cands.append((g['gold_reward'].mean(), step, g))
    want, step, g = max(cands, key=lambda c: c[0])
    assert row['value'] == pytest.approx(want) and row['step'] == step
    x, se = g['gold_reward'].to_numpy(), g['gold_reward_stderr'].to_numpy()
    n = len(x)
    half = T975[n - 1] * np.sqrt(x.var(ddof=1) / n + np.mean(se ** 2) / n)
    assert row['half_width'] == pytest.approx(half)
    assert row['n_seeds'] == 3
  assert 99.0 not in set(table['value'])  # the failed run gave no point
  ppo = table[table['method'] == 'ppo']
  assert ppo['target_missed'].all()  # seed 0 missed its KL target: flagged
  assert not table[table['method'] == 'dpo']['target_missed'].any()


def test_ties_follow_the_intervals():
  df = pd.DataFrame([
      {'method': m, 'hparam': '', 'hparam_value': np.nan, 'seed': 0, 'step': 1, 'kl': 1.0,
       'gold_reward': g, 'gold_reward_stderr': se, 'objective': 0.0, 'status': 'done'}
      for m, g, se in (('a', 0.50, 0.01), ('b', 0.49, 0.01), ('c', 0.30, 0.01))])
  table = v.verdict(df, budgets=(2.0,)).set_index('method')
  assert table.loc['a', 'half_width'] == pytest.approx(1.96 * 0.01)  # one seed: prompts only
  assert table.loc['b', 'tied_with_best'] and not table.loc['c', 'tied_with_best']
  assert not table.loc['a', 'tied_with_best']
  text = v.verdict_markdown(v.verdict(df, budgets=(2.0,)), by='gold_reward', beta=0.1)
  assert 'Best at KL ≤ 2: **a**' in text and 'not separable from it at 95 %: b' in text
  # Nothing within a budget below every point's KL: no row for it.
  assert not len(v.verdict(df, budgets=(0.5,)))
  low = v.verdict(df, budgets=(2.0,), by='gold_reward', mode='min')
  assert low.iloc[0]['method'] == 'c'


def test_a_missed_kl_target_is_recorded_and_reaches_the_results(tmp_path):
  from alignlab import methods, runs
  run = runs.prepare_run(tmp_path, 'ppo', {'kl_target': 3.0}, 0, {'x': 1})
  runs.write_jsonl(run / 'eval.jsonl', [{'step': 0, 'kl': 0.0, 'gold_reward': 0.1},
                                         {'step': 5, 'kl': 4.2, 'gold_reward': 0.3}])
  check = methods.target_check(run, 3.0)
  assert check == {'kl_target': 3.0, 'kl_final': 4.2, 'kl_target_met': False}  # +40 %
  assert methods.target_check(run, 4.0)['kl_target_met']  # +5 %: within ±25 %
  runs.mark_complete(run, **check)
  df = runs.collect_results(tmp_path)
  assert list(df['kl_target_met']) == [False, False]
  assert v.verdict(df, budgets=(5.0,))['target_missed'].all()
