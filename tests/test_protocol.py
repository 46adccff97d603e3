"""The frontier protocol of `train/fit.py`: a geometric evaluation schedule, a KL cap that stops
a run (frozen: its parameters stay those evaluated last, and it resumes stopped), and the cost
each evaluation point records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alignlab import cli, runs
from alignlab.train import fit as fit_lib


def test_eval_schedule_is_geometric_and_ends_at_the_budget():
  steps = fit_lib.eval_schedule(1000, 7)
  assert steps == [16, 31, 62, 125, 250, 500, 1000]  # each about twice the one before
  gaps = np.diff(steps)
  assert np.all(gaps > 0) and np.all(np.diff(gaps) >= 0)  # sparser and sparser
  assert fit_lib.eval_schedule(5, 20) == [1, 2, 5]
  assert fit_lib.eval_schedule(0, 5) == [] and fit_lib.eval_schedule(10, 0) == []


def test_kl_cap_stops_and_freezes_a_run_of_a_vectorized_program(tmp_path):
  out = tmp_path / 'out'
  cap = 0.05
  assert cli.main(['run', 'exact_frontier', '--variant', 'tiny', '--quiet', '--out', str(out),
                   '--set', "methods=['dpo']", '--set', 'sweeps.dpo=[0.3,3.0]',
                   '--set', 'task.sft.steps=2', '--set', 'train.steps=40',
                   '--set', 'train.eval_points=8', '--set', 'train.save_every=0',
                   '--set', f'train.kl_cap={cap}']) == 0
  # β = 0.3 moves fast and reaches the cap; β = 3 keeps near π_ref and runs the budget.
  fast, slow = out / 'dpo-beta0.3-seed0', out / 'dpo-beta3-seed0'
  stop = json.loads((fast / 'stopped.json').read_text())
  points = runs.read_jsonl(fast / 'eval.jsonl')
  assert points[-1]['step'] == stop['step'] and points[-1]['kl'] >= cap
  assert all(p['kl'] < cap for p in points[:-1])
  assert [p['step'] for p in points] == [0] + fit_lib.eval_schedule(40, 8)[:len(points) - 1]
  assert not (slow / 'stopped.json').exists()
  assert runs.read_jsonl(slow / 'eval.jsonl')[-1]['step'] == 40
  # Cost: tokens and FLOPs grow with the steps taken; wall time is monotone.
  assert points[0]['train_tokens'] == 0 and points[-1]['train_flops'] > points[1]['train_flops'] > 0
  assert np.all(np.diff([p['wall_s'] for p in points]) >= 0)
  # Frozen at the stop: the final checkpoint's policy is the one evaluated last.
  from alignlab import pipeline
  cfg = pipeline.make_config(pipeline.load_experiment('exact_frontier'), 'tiny', [
      "methods=['dpo']", 'sweeps.dpo=[0.3,3.0]', 'task.sft.steps=2', 'train.steps=40',
      'train.eval_points=8', 'train.save_every=0', f'train.kl_cap={cap}'])
  again = pipeline.evaluate_run(cfg, fast)
  assert again['step'] == 40  # trained on to the budget, at learning rate 0
  assert again['kl'] == pytest.approx(points[-1]['kl'], abs=1e-6)
  df = runs.collect_results(out)
  assert set(df.loc[df['run'] == fast.name, 'stopped']) == {stop['reason']}
  # The plan stated before a run starts counts the FLOPs the run records at its budget.
  from alignlab import methods
  _, env = pipeline.setup(cfg, progress=False)
  slow_flops = runs.read_jsonl(slow / 'eval.jsonl')[-1]['train_flops']
  assert methods.planned_flops(env, 'dpo', cfg) == pytest.approx(slow_flops, rel=1e-6)
  line = pipeline.plan(cfg, env, out)
  assert line.startswith('plan: 0 runs to make, 0 GFLOP')
  assert pipeline.plan(cfg, env, tmp_path / 'empty').startswith('plan: 2 runs to make')


@pytest.mark.slow
def test_adaptive_controller_meets_its_target_at_the_computed_horizon(tmp_path):
  """PPO with the learned reward model on the exact task, target 0.15 nats, 120 iterations at
  the horizon `methods.auto_kl_horizon` computes: the final KL lands within ±25 %."""
  out = tmp_path / 'out'
  assert cli.main(['run', 'exact_frontier', '--variant', 'tiny', '--quiet', '--out', str(out),
                   '--set', "methods=['ppo']", '--set', 'rl.iterations=120',
                   '--set', 'rl.eval_every=20', '--set', 'sweeps.ppo=(0.15,)']) == 0
  done = json.loads((out / 'ppo-kl_target0.15-seed0' / 'done.json').read_text())
  assert done['kl_target_met'], done
  assert abs(done['kl_final'] / 0.15 - 1) <= 0.25
