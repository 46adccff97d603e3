"""The IMDb frontier experiment end to end at its `tiny` variant, and the stage cache keys."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from alignlab import imdb_stages as st
from alignlab.config import config_hash
from experiments import imdb_frontier as exp


@pytest.mark.slow
def test_tiny_end_to_end_then_reuses_stages(tmp_path):
  cfg = exp.get_config('tiny')
  df = exp.run(cfg, tmp_path / 'run1', progress=False)
  csv = exp_pd_read(tmp_path / 'run1' / 'results.csv')
  expected = {'sft', 'dpo', 'preferred_ft', 'ppo', 'best_of_n'}
  assert expected <= set(csv['method'])
  for col in ('gold_reward', 'gold_reward_stderr', 'kl', 'kl_k1', 'kl_k3', 'proxy_reward', 'objective'):
    assert np.all(np.isfinite(csv[col].to_numpy(float))), col
  assert set(csv[csv['method'] == 'dpo']['hparam_value']) == set(cfg.dpo_betas)
  # Each trained run has its step-0 point, its intermediate points and its last step.
  dpo = csv[(csv['method'] == 'dpo') & (csv['hparam_value'] == cfg.dpo_betas[0])]
  assert sorted(dpo['step']) == sorted(set(range(0, cfg.steps + 1, cfg.eval_every)) | {cfg.steps})
  # The exact KL is non-negative, and zero for π_ref itself and at step 0.
  assert (csv['kl'] >= -1e-5).all()
  assert abs(float(csv[csv['method'] == 'sft']['kl'].iloc[0])) < 1e-4
  assert (tmp_path / 'run1' / 'frontier.png').stat().st_size > 0
  assert len(df) == len(csv)
  first = json.loads((tmp_path / 'run1' / 'stages.json').read_text())['from_cache']
  assert not any(first.values()), first

  # Run again: no stage is trained again, and finished runs are not retrained (their
  # checkpoints' step stays, their eval.jsonl gains no line).
  evals = {p: p.read_text() for p in (tmp_path / 'run1').glob('*/eval.jsonl')}
  # sft, the dpo runs, preferred_ft, ppo, best_of_n per N
  assert len(evals) == 1 + len(cfg.dpo_betas) + 2 + len(cfg.bon_ns)
  again = exp.run(cfg, tmp_path / 'run1', progress=False)
  second = json.loads((tmp_path / 'run1' / 'stages.json').read_text())['from_cache']
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
