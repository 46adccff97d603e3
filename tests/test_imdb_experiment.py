"""The IMDb frontier experiment end to end at its `tiny` variant, and the stage cache keys."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from alignlab import pipeline
from alignlab.config import config_hash
from alignlab.tasks import imdb as st
from alignlab.tasks import imdb_data

exp = pipeline.load_experiment('imdb_frontier')


@pytest.mark.slow
def test_tiny_end_to_end_then_reuses_stages(tmp_path):
  # tiny plus every method that only `paper` runs, so that each code path runs end to end.
  others = ('ipo', 'cdpo', 'simpo', 'orpo', 'kto', 'rloo', 'grpo')
  overrides = [f"methods={exp.get_config('tiny').methods + others}"]
  cfg = pipeline.make_config(exp, 'tiny', overrides)
  df = pipeline.run_experiment('imdb_frontier', 'tiny', overrides, tmp_path / 'run1',
                               progress=False, verbose=False).df
  csv = exp_pd_read(tmp_path / 'run1' / 'results.csv')
  expected = {'sft', 'dpo', 'preferred_ft', 'ppo', 'best_of_n', 'ipo', 'cdpo', 'simpo', 'orpo', 'kto',
              'rloo', 'grpo'}
  assert expected <= set(csv['method'])
  for col in ('gold_reward', 'gold_reward_stderr', 'kl', 'kl_k1', 'kl_k3', 'proxy_reward', 'objective'):
    assert np.all(np.isfinite(csv[col].to_numpy(float))), col
  assert set(csv[csv['method'] == 'dpo']['hparam_value']) == set(cfg.sweeps.dpo)
  # Each trained run has its step-0 point, its intermediate points and its last step.
  dpo = csv[(csv['method'] == 'dpo') & (csv['hparam_value'] == cfg.sweeps.dpo[0])]
  assert sorted(dpo['step']) == sorted(set(range(0, cfg.train.steps + 1, cfg.train.eval_every)) | {cfg.train.steps})
  # The exact KL is non-negative, and zero for π_ref itself and at step 0.
  assert (csv['kl'] >= -1e-5).all()
  assert abs(float(csv[csv['method'] == 'sft']['kl'].iloc[0])) < 1e-4
  assert (tmp_path / 'run1' / 'frontier.png').stat().st_size > 0
  # Every policy's point ranks held-out pairs with the implicit reward (Best-of-N has no
  # policy); π_ref's log-ratio is 0 for every response, so its pairs are all ties (½ each).
  policies = csv[csv['method'] != 'best_of_n']
  assert np.all((policies['implicit_accuracy'] >= 0) & (policies['implicit_accuracy'] <= 1))
  assert float(csv[csv['method'] == 'sft']['implicit_accuracy'].iloc[0]) == 0.5
  # Every finished run has its win rates against π_ref at T = 0 … 1 (Best-of-N at T = 1).
  wr = exp_pd_read(tmp_path / 'run1' / 'win_rates.csv')
  assert set(wr['method']) == set(csv['method'])
  dpo_wr = wr[wr['method'] == 'dpo']
  assert sorted(set(dpo_wr['temperature'])) == [0.0, 0.25, 0.5, 0.75, 1.0]
  assert set(wr[wr['method'] == 'best_of_n']['temperature']) == {1.0}
  assert np.all((wr['win_rate'] >= 0) & (wr['win_rate'] <= 1))
  assert len(df) == len(csv)
  stages_json = json.loads((tmp_path / 'run1' / 'stages.json').read_text())
  first = stages_json['info']['from_cache']
  assert not any(first.values()), first
  # The wall time, split: the stages (the reward model built on first use apart), each
  # method's training and evaluation add up to the total; summary.md adds the method families.
  timings = stages_json['timings']
  split = timings['split']
  assert split['stages built on first use'] > 0 and split['dpo: evaluation'] > 0 and split['ppo: training'] > 0
  assert abs(sum(split.values()) - timings['total_s']) < 0.05 * timings['total_s']
  summary_md = (tmp_path / 'run1' / 'summary.md').read_text()
  assert '## Wall time of this command' in summary_md
  for row in ('| stages |', '| dpo: training |', '| **online RL: evaluation** |', '| total |'):
    assert row in summary_md, row

  # Run again: no stage is trained again, and finished runs are not retrained (their
  # checkpoints' step stays, their eval.jsonl gains no line).
  evals = {p: p.read_text() for p in (tmp_path / 'run1').glob('*/eval.jsonl')}
  # sft, the dpo runs, the other losses, preferred_ft, ppo, rloo, grpo, best_of_n per N
  assert len(evals) == 1 + len(cfg.sweeps.dpo) + 5 + 4 + len(cfg.sweeps.best_of_n)
  again = pipeline.run_experiment('imdb_frontier', 'tiny', overrides, tmp_path / 'run1',
                                  progress=False, verbose=False).df
  second = json.loads((tmp_path / 'run1' / 'stages.json').read_text())['info']['from_cache']
  assert all(second.values()), second
  assert {p: p.read_text() for p in evals} == evals
  np.testing.assert_allclose(again['gold_reward'].to_numpy(float), csv['gold_reward'].to_numpy(float))


def exp_pd_read(path):
  import pandas as pd
  return pd.read_csv(path)


def test_stage_cache_key_changes_with_sft_config():
  cfg = exp.get_config('tiny').task

  class FakeTok:
    fingerprint = 'abc'
    vocab_size = 384
    pad_id, eos_id, bos_id = 0, 1, 2

  tok = FakeTok()
  base = config_hash(st.sft_key(cfg, tok))
  assert config_hash(st.sft_key(cfg, tok)) == base  # deterministic
  more_steps = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, steps=cfg.sft.steps + 1))
  longer = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, seq_len=cfg.sft.seq_len + 1))
  wider = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_model=cfg.model.d_model + 2))
  keys = {config_hash(st.sft_key(c, tok)) for c in (more_steps, longer, wider)}
  assert base not in keys and len(keys) == 3
  # The pairs' config is not an input of π_ref: changing it keeps the SFT key.
  other_pairs = dataclasses.replace(cfg, pairs=dataclasses.replace(cfg.pairs, n_prompts=7))
  assert config_hash(st.sft_key(other_pairs, tok)) == base
  # The tokenizer is: a different one gives another π_ref.
  tok.fingerprint = 'xyz'
  assert config_hash(st.sft_key(cfg, tok)) != base


def test_interrupted_sft_stage_resumes_and_matches_an_uninterrupted_one(tmp_path, monkeypatch):
  from alignlab import sharding
  from alignlab.data.cache import work_dir
  base = exp.get_config('tiny').task
  cfg = dataclasses.replace(base, sft=dataclasses.replace(base.sft, save_every=4))
  mesh = sharding.make_mesh()
  monkeypatch.setenv('ALIGNLAB_CACHE', str(tmp_path / 'whole'))
  tok = imdb_data.imdb_tokenizer(cfg.tokenizer, cfg.data)
  whole_dir, _, whole_params, _ = st.sft_stage(cfg, tok, mesh, progress=False)

  monkeypatch.setenv('ALIGNLAB_CACHE', str(tmp_path / 'killed'))
  tok = imdb_data.imdb_tokenizer(cfg.tokenizer, cfg.data)
  real_fit = st.fit

  def killed_fit(*args, **kwargs):
    real_fit(*args, stop_after=6, **kwargs)  # checkpoints at 4 and, on stopping, at 6
    raise KeyboardInterrupt

  monkeypatch.setattr(st, 'fit', killed_fit)
  with pytest.raises(KeyboardInterrupt):
    st.sft_stage(cfg, tok, mesh, progress=False)
  target = whole_dir.parent.parent.parent / 'killed' / 'imdb_sft' / whole_dir.name
  assert not target.exists() and (work_dir(target) / 'checkpoints' / '6').is_dir()
  monkeypatch.setattr(st, 'fit', real_fit)
  resumed_dir, _, resumed_params, _ = st.sft_stage(cfg, tok, mesh, progress=False)
  assert resumed_dir == target and not work_dir(target).exists()
  steps = [json.loads(line)['step'] for line in (target / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert steps == list(range(1, cfg.sft.steps + 1))  # 1..6 before the kill, 7.. after
  for a, b in zip(jax_leaves(whole_params), jax_leaves(resumed_params)):
    np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]
