"""Best-of-N's true KL (experiments/exact_best_of_n_kl.py): the exact law of the best of N draws
against an independent NumPy enumeration of every N-tuple of draws, the analytic
log N − (N − 1)/N as an upper bound only (Beirami et al. 2024, arXiv 2401.01879, §3), and the
KL the pipeline reports for Best-of-N being that exact one."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from alignlab import pipeline
from alignlab.tasks import exact
from alignlab.tasks import exact_math as em


def enumerated_best_of_n(p_Y: np.ndarray, r_Y: np.ndarray, n: int) -> np.ndarray:
  """P(the kept response = y) by summing over every n-tuple of i.i.d. draws from p; the kept
  one is uniform among the draws that tie at the largest reward."""
  out_Y = np.zeros(len(p_Y))
  for draws in itertools.product(range(len(p_Y)), repeat=n):
    prob = np.prod(p_Y[list(draws)])
    best = max(r_Y[d] for d in draws)
    winners = [d for d in draws if r_Y[d] == best]
    for d in winners:
      out_Y[d] += prob / len(winners)
  return out_Y


def np_kl(p_Y: np.ndarray, q_Y: np.ndarray) -> float:
  keep = p_Y > 0
  return float(np.sum(p_Y[keep] * np.log(p_Y[keep] / q_Y[keep])))


def bound(n: int) -> float:
  return math.log(n) - (n - 1) / n


@pytest.mark.parametrize('n', [1, 2, 3, 5])
def test_law_and_kl_match_enumeration_with_ties(n):
  rng = np.random.default_rng(n)
  p_PxY = rng.dirichlet(np.ones(6), size=3)
  r_PxY = rng.integers(0, 3, size=(3, 6)).astype(np.float64)  # few values: many ties
  logp = np.asarray(exact.best_of_n_logp(np.log(p_PxY).astype(np.float32),
                                         r_PxY.astype(np.float32), n), np.float64)
  for x in range(3):
    want_Y = enumerated_best_of_n(p_PxY[x], r_PxY[x], n)
    np.testing.assert_allclose(np.exp(logp[x]), want_Y, atol=2e-6)
    ref_1xY = np.log(p_PxY[x:x + 1]).astype(np.float32)
    got_kl = float(em.kl(logp[x:x + 1].astype(np.float32), ref_1xY)[0])
    assert abs(got_kl - np_kl(want_Y, p_PxY[x])) < 2e-5
    assert got_kl <= bound(n) + 1e-6


def test_the_analytic_value_is_only_a_bound():
  rng = np.random.default_rng(0)
  p_PxY = rng.dirichlet(np.ones(40) * 0.5, size=4)
  r_PxY = rng.standard_normal((4, 40))  # distinct rewards
  ref = np.log(p_PxY).astype(np.float32)
  kls = []
  for n in (1, 2, 8, 64, 1024, 2 ** 20):
    logp = exact.best_of_n_logp(ref, r_PxY.astype(np.float32), n)
    kls.append(float(em.kl(logp, ref).mean()))
    assert kls[-1] <= bound(n) + 1e-5, (n, kls[-1], bound(n))
  assert all(b >= a - 1e-6 for a, b in zip(kls, kls[1:]))  # more draws, further from π_ref
  # N → ∞: the best response alone, KL = −log π_ref(y*); the bound grows without limit.
  limit = float(np.mean(-np.log(p_PxY[np.arange(4), r_PxY.argmax(-1)])))
  assert abs(kls[-1] - limit) < 1e-3
  assert bound(2 ** 20) - kls[-1] > 5.0


def test_the_bound_is_tight_for_a_near_continuous_reference():
  # Uniform over 4096 responses with distinct rewards: no atom of the CDF is large, so the
  # exact KL is close to log N − (N − 1)/N (Beirami et al. §3: equality in the continuous limit).
  y = 4096
  ref = np.full((1, y), -math.log(y), np.float32)
  r = np.random.default_rng(1).permutation(y).astype(np.float32)[None]
  for n in (2, 4, 16):
    kl = float(em.kl(exact.best_of_n_logp(ref, r, n), ref)[0])
    assert bound(n) - 0.01 < kl <= bound(n) + 1e-5, (n, kl, bound(n))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  out = tmp_path_factory.getbasetemp() / 'shared_runs' / 'exact_best_of_n_kl-tiny'
  pipeline.run_experiment('exact_best_of_n_kl', 'tiny', out_dir=out, progress=False, verbose=False)
  cfg = pipeline.make_config(pipeline.load_experiment('exact_best_of_n_kl'), 'tiny')
  _, env = pipeline.setup(cfg, progress=False)
  return pd.read_csv(out / 'results.csv'), env, cfg


def test_the_pipeline_reports_the_exact_kl(tiny):
  df, env, cfg = tiny
  assert sorted(df['hparam_value'].astype(int)) == sorted(cfg.sweeps.best_of_n)
  p_PxY = np.exp(np.asarray(env['ref_logp'], np.float64))
  p_PxY /= p_PxY.sum(-1, keepdims=True)
  r_PxY = np.asarray(env['r'], np.float64)
  for n in (1, 2, 4):
    row = df[df['hparam_value'] == n].iloc[0]
    law_PxY = np.stack([enumerated_best_of_n(p_PxY[x], r_PxY[x], n) for x in range(len(p_PxY))])
    want_kl = np.mean([np_kl(law_PxY[x], p_PxY[x]) for x in range(len(p_PxY))])
    assert abs(row['kl'] - want_kl) < 1e-4, (n, row['kl'], want_kl)
    assert abs(row['gold_reward'] - float(np.mean(np.sum(law_PxY * r_PxY, -1)))) < 1e-4
  assert (df['kl'] <= df['kl_bound'] + 1e-5).all()
  np.testing.assert_allclose(df['kl_bound'], [bound(int(n)) for n in df['hparam_value']], rtol=1e-5)
  # A frontier plot at the bound reads a larger KL, so a higher frontier reward to fall short of.
  assert (df['frontier_reward_at_bound'] >= df['frontier_reward'] - 1e-4).all()
  big = df[df['hparam_value'] == df['hparam_value'].max()].iloc[0]
  assert big['kl_bound'] - big['kl'] > 1.0
