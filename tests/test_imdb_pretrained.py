"""The IMDb task from a Hugging Face checkpoint (`task.hf_path`): π_ref starts from its weights
and uses its tokenizer (the DPO paper fine-tunes GPT-2 large on IMDb, §6.1)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

from alignlab import cli, hf, pipeline, sharding
from alignlab.tasks import imdb

GPT2 = Path(__file__).resolve().parent / 'fixtures' / 'hf' / 'gpt2'


def _cfg(steps: int) -> imdb.Config:
  base = pipeline.make_config(pipeline.load_experiment('imdb_frontier'), 'tiny').task
  return dataclasses.replace(base, hf_path=str(GPT2), sft=dataclasses.replace(base.sft, steps=steps))


def test_pi_ref_starts_from_the_checkpoint_with_its_tokenizer():
  cfg = _cfg(0)
  tok = imdb.tokenizer(cfg)
  model_cfg, _, want, want_tok = hf.load_pretrained(GPT2)
  assert tok.fingerprint == want_tok.fingerprint and tok.vocab_size <= model_cfg.vocab_size
  mcfg = imdb.model_config(cfg, tok)
  # Ids past the tokenizer's vocabulary (a padded checkpoint vocabulary) are never emitted.
  assert set(range(tok.vocab_size, model_cfg.vocab_size)) <= set(mcfg.masked_output_ids)
  # GPT-2's tokenizer has no pad and no separate bos: both are EOS, which must stay emittable.
  assert tok.eos_id not in mcfg.masked_output_ids
  assert cfg.sampling(1.0, tok).eos_id == tok.eos_id
  _, _, params, _ = imdb.sft_stage(cfg, tok, sharding.make_mesh(), progress=False)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # 0 SFT steps: the weights
  # A changed checkpoint is another π_ref: its content is part of the stage key.
  assert imdb.sft_key(cfg, tok)['weights']['model.safetensors']['sha256']


@pytest.mark.slow
def test_imdb_tiny_runs_from_a_pretrained_checkpoint(tmp_path):
  assert cli.main(['run', 'imdb_frontier', '--variant', 'tiny', '--quiet', '--out', str(tmp_path),
                   '--set', f'task.hf_path={GPT2}', '--set', "methods=('sft','dpo')",
                   '--set', 'sweeps.dpo=(0.1,)', '--set', 'task.sft.steps=3']) == 0
  assert (tmp_path / 'results.csv').exists() and (tmp_path / 'summary.md').exists()
