"""The verdict of a frontier experiment, computed from its results table: for each KL budget,
each method's best point at KL ≤ budget, with a 95 % interval over seeds and prompts.

    table = verdict(df, budgets=(1, 3, 6, 10), by='gold_reward', mode='max')
    text = verdict_markdown(table, by='gold_reward')

A point is a (method, hyperparameter value, step) averaged over its seeds; it is within a
budget when its mean KL is. Per budget and method the best such point is kept, with

    half-width = t_{0.975, n−1} · sqrt(sd_seeds² / n + mean(se_prompts²) / n)

(n seeds; with one seed, 1.96 · se_prompts): the spread of the seeds' values and the standard
error over prompts of each. Failed runs give no point (listed apart by the pipeline); an
adaptive-controller run whose final KL missed its target by more than 25 % is flagged. Two
methods whose intervals overlap are not ranked against each other: the table says so.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

BUDGETS = (1.0, 3.0, 6.0, 10.0)
VERDICT_COLUMNS = ('budget', 'method', 'hparam', 'hparam_value', 'step', 'value', 'half_width',
                   'kl', 'objective', 'n_seeds', 'target_missed', 'tied_with_best')


def _t975(dof: int) -> float:
  """The 97.5 % quantile of Student's t (a table: no scipy dependency)."""
  table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
           9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
  if dof <= 0:
    return 1.96
  for d in sorted(table):
    if dof <= d:
      return table[d]
  return 1.96


def points(df: pd.DataFrame, by: str) -> pd.DataFrame:
  """Every (method, hparam, hparam_value, step) averaged over seeds, with the interval of
  `by` (module docstring). Failed runs are left out."""
  if 'status' in df:
    df = df[df['status'] != 'failed']
  df = df[df[by].notna() & df['kl'].notna()]
  keys = ['method', 'hparam', 'hparam_value', 'step']
  se = f'{by}_stderr'
  rows = []
  for key, g in df.groupby(keys, dropna=False):
    values = g[by].to_numpy(float)
    n = len(values)
    prompt_se2 = (np.nanmean(g[se].to_numpy(float) ** 2) if se in g and g[se].notna().any()
                  else 0.0)
    seed_var = values.var(ddof=1) if n > 1 else 0.0
    half = _t975(n - 1) * math.sqrt(seed_var / n + prompt_se2 / n) if n > 1 else (
        1.96 * math.sqrt(prompt_se2))
    missed = bool((g['kl_target_met'] == False).any()) if 'kl_target_met' in g else False  # noqa: E712
    rows.append({**dict(zip(keys, key)), 'value': float(values.mean()), 'half_width': half,
                 'kl': float(g['kl'].mean()),
                 'objective': float(g['objective'].mean()) if 'objective' in g else math.nan,
                 'n_seeds': int(g['seed'].nunique()), 'target_missed': missed})
  return pd.DataFrame(rows)


def verdict(df: pd.DataFrame, *, budgets=BUDGETS, by: str = 'gold_reward',
            mode: str = 'max') -> pd.DataFrame:
  """One row per (budget, method): its best point at KL ≤ budget; `tied_with_best` when its
  interval overlaps the interval of the budget's best method."""
  pts = points(df, by)
  if not len(pts):
    return pd.DataFrame(columns=VERDICT_COLUMNS)
  out = []
  for budget in budgets:
    within = pts[pts['kl'] <= budget + 1e-9]
    if not len(within):
      continue
    pick = (within.groupby('method')['value'].idxmax() if mode == 'max'
            else within.groupby('method')['value'].idxmin())
    best = within.loc[pick.to_numpy()].sort_values('value', ascending=mode != 'max')
    top = best.iloc[0]
    lo_top, hi_top = top['value'] - top['half_width'], top['value'] + top['half_width']
    for _, row in best.iterrows():
      lo, hi = row['value'] - row['half_width'], row['value'] + row['half_width']
      out.append({'budget': budget, **row.to_dict(),
                  'tied_with_best': bool(row['method'] != top['method'] and lo <= hi_top
                                         and lo_top <= hi)})
  return pd.DataFrame(out, columns=list(VERDICT_COLUMNS))


def verdict_markdown(table: pd.DataFrame, *, by: str, beta: float | None = None) -> str:
  """The verdict as markdown: one table per budget, best first."""
  if not len(table):
    return f'No point has a finite {by} and KL.\n'
  lines = []
  for budget, g in table.groupby('budget', sort=True):
    lines += [f'### KL ≤ {budget:g} nats', '',
              f'| method | {by} (95 % interval) | KL | J_β' + (f' (β = {beta:g})' if beta else '')
              + ' | seeds | point | note |', '|---|---|---|---|---|---|---|']
    for _, r in g.iterrows():
      hp = f'{r["hparam"]}={r["hparam_value"]:g}' if isinstance(r['hparam'], str) and r['hparam'] else ''
      notes = [n for n, on in (('KL target missed', r['target_missed']),
                               ('interval overlaps the best', r['tied_with_best'])) if on]
      lines.append(f'| {r["method"]} | {r["value"]:.3f} ± {r["half_width"]:.3f} | {r["kl"]:.2f} | '
                   f'{r["objective"]:.3f} | {r["n_seeds"]} | {hp} step {int(r["step"])} | '
                   f'{"; ".join(notes)} |')
    best = g.iloc[0]
    tied = g[g['tied_with_best']]['method'].tolist()
    lines += ['', f'Best at KL ≤ {budget:g}: **{best["method"]}**' + (
        f'; not separable from it at 95 %: {", ".join(tied)}.' if tied else
        '; every other method\'s interval lies apart from it.'), '']
  return '\n'.join(lines)
