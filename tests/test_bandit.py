"""The preference bandit of Azar et al. 2023 (arXiv 2310.12036 §5.1) from the CLI: IPO reaches
its regularized optimum, known in closed form, and DPO goes deterministic on the top action.

IPO's population loss on pairs (i ≻ j) with uniform π_ref is Σ (h_ij − 1/(2τ))², h_ij =
log π_i − log π_j. For the total order {1≻2, 2≻3, 1≻3} its minimum has h_12 = h_23 = 1/(3τ);
with the pair 1 vs 3 unobserved, h_12 = h_23 = 1/(2τ). So π ∝ (e^{2d}, e^{d}, 1) with d the
gap of each dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alignlab import cli

TAU = 0.5


def _closed_form(gap: float) -> np.ndarray:
  p = np.exp([2 * gap, gap, 0.0])
  return p / p.sum()


def _run(tmp_path, dataset: str, pairs: int) -> pd.DataFrame:
  out = tmp_path / dataset
  assert cli.main(['run', 'bandit', '--variant', 'tiny', '--quiet', '--out', str(out),
                   '--set', f'task.dataset={dataset}', '--set', f'train.batch_size={pairs}',
                   '--set', 'train.steps=200',
                   '--set', 'train.eval_every=100', '--set', f'sweeps.ipo=({TAU},)',
                   '--set', f'sweeps.dpo=({TAU},)']) == 0
  df = pd.read_csv(out / 'results.csv')
  assert (out / 'frontier.png').stat().st_size > 1000
  return df[df['step'] == 200].set_index('method')


def _probs(row) -> np.ndarray:
  return row[['p_y1', 'p_y2', 'p_y3']].to_numpy(float)


def test_total_order_ipo_optimum_and_dpo_collapse(tmp_path):
  final = _run(tmp_path, 'total_order', 9)  # 3 pairs × 3 copies
  np.testing.assert_allclose(_probs(final.loc['ipo']), _closed_form(1 / (3 * TAU)), atol=2e-3)
  assert _probs(final.loc['dpo'])[0] > 0.999  # deterministic on y1, whatever τ
  # The exact KL of IPO's optimum to the uniform π_ref.
  p = _closed_form(1 / (3 * TAU))
  assert final.loc['ipo', 'kl'] == pytest.approx(float(np.sum(p * np.log(3 * p))), abs=2e-3)


@pytest.mark.slow
def test_unobserved_pair_ipo_optimum(tmp_path):
  final = _run(tmp_path, 'unobserved_pair', 6)  # 2 pairs × 3 copies
  np.testing.assert_allclose(_probs(final.loc['ipo']), _closed_form(1 / (2 * TAU)), atol=2e-3)
  assert _probs(final.loc['dpo'])[0] > 0.99
