"""The shared, cached stages of the IMDb controlled-sentiment task (DPO, arXiv:2305.18290 §6.1):
tokenizer → SFT π_ref → preference pairs (K samples per prompt from π_ref, all K(K−1)/2 pairs
labelled by VADER) → Bradley–Terry reward model initialized from the SFT backbone.

Each stage is a pure function of its part of `ImdbTaskConfig` plus the stages it reads, and is
cached under `$ALIGNLAB_CACHE/<kind>/<config_hash>/` (`data/cache.py`), written atomically.
`stage.from_cache` says whether a call trained anything, so a second call provably reuses.

    task = build_task(cfg)  # ImdbTask(tokenizer, sft, pairs, reward_model, ...)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from alignlab import sharding
from alignlab.checkpoint import restore_params, save_params
from alignlab.config import ModelConfig, OptimizerConfig, SamplingConfig, config_hash, to_dict
from alignlab.data import imdb
from alignlab.data.cache import atomic_dir, cache_dir, copy_logs, work_dir
from alignlab.data.pairs import GeneratedDataset, generate_preference_dataset, left_pad_prompts, split_responses
from alignlab.data.preference import collate, read_pairs
from alignlab.data.tokenizer import Tokenizer, TokenizerConfig
from alignlab.heads import CausalLM, embedding_from_lm
from alignlab.rewards import Reward, VaderReward
from alignlab.sampling import sample
from alignlab.train import reward_model as rm
from alignlab.train.classifier import ClassifierConfig, classifier_stage
from alignlab.train import sft
from alignlab.train.batches import ArrayBatches
from alignlab.train.run import fit

STAGE_VERSION = 1  # bump when a stage's code changes what it produces


@dataclasses.dataclass(frozen=True)
class SftConfig:
  seq_len: int = 64  # reviews truncated to this many tokens (<bos> included)
  steps: int = 300
  batch_size: int = 32
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, schedule='cosine',
                                               warmup_steps=30, total_steps=300)
  seed: int = 0
  save_every: int = 50  # checkpoint interval; an interrupted SFT resumes from the last one


@dataclasses.dataclass(frozen=True)
class PairsStageConfig:
  n_prompts: int = 512  # train prompts; each gives K samples → K(K−1)/2 pairs
  k: int = 4
  max_new_tokens: int = 24
  temperature: float = 1.0
  batch_size: int = 64  # prompts per sampler call
  heldout_fraction: float = 0.1  # of prompts, for the reward model's held-out accuracy
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class RewardModelConfig:
  steps: int = 200
  batch_size: int = 32
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-4, warmup_steps=20)
  eval_every: int = 50  # held-out accuracy; the best checkpoint is kept
  normalize: bool = True  # π_ref samples score mean 0, std 1 (Ziegler et al. 2019, arXiv 1909.08593)
  n_normalize_prompts: int = 256
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class ImdbTaskConfig:
  data: imdb.ImdbConfig = imdb.ImdbConfig()
  tokenizer: TokenizerConfig = TokenizerConfig(vocab_size=2048)
  model: ModelConfig = ModelConfig(vocab_size=2048, max_seq_len=96, d_model=96, n_layers=2, n_heads=4)
  sft: SftConfig = SftConfig()
  pairs: PairsStageConfig = PairsStageConfig()
  reward_model: RewardModelConfig = RewardModelConfig()
  # The gold reward: 'vader' (lexicon, no training) or 'classifier' (the sentiment classifier
  # trained on the real IMDb labels, `classifier` below; p(positive) in [0, 1]).
  gold: str = 'vader'
  classifier: ClassifierConfig = ClassifierConfig()

  @property
  def prompt_len(self) -> int:
    """P: the left-padded prompt width (<bos> + up to prompt_max_tokens)."""
    return self.data.prompt_max_tokens + int(self.data.prompt_bos)

  def sampling(self, temperature: float | None = None) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=self.pairs.max_new_tokens,
                          temperature=self.pairs.temperature if temperature is None else temperature,
                          eos_id=1, pad_id=0)


class Policy(NamedTuple):
  graphdef: Any
  params: Any
  directory: Path
  from_cache: bool


class Pairs(NamedTuple):
  train: dict  # canonical-layout arrays (see data/preference.py), fixed (P, R) buckets
  heldout: dict
  dataset: GeneratedDataset
  from_cache: bool


class RewardStage(NamedTuple):
  graphdef: Any
  params: Any
  directory: Path
  metrics: dict  # best held-out accuracy, its step, normalization stats
  from_cache: bool


class ImdbTask(NamedTuple):
  cfg: ImdbTaskConfig
  tokenizer: Tokenizer
  gold: Reward
  sft: Policy
  pairs: Pairs
  reward_model: RewardStage
  mesh: Any
  gold_info: dict  # `gold_reward`'s description: name, and the classifier's held-out accuracy

  @property
  def from_cache(self) -> dict[str, bool]:
    return {'tokenizer': self.tokenizer.from_cache, 'sft': self.sft.from_cache,
            'pairs': self.pairs.from_cache, 'reward_model': self.reward_model.from_cache}


def model_config(cfg: ImdbTaskConfig, tok: Tokenizer) -> ModelConfig:
  # The LM never emits <pad> or <bos>: its distributions are over what it may produce.
  return dataclasses.replace(cfg.model, vocab_size=tok.vocab_size,
                             masked_output_ids=(tok.pad_id, tok.bos_id))


# ---------------------------------------------------------------------------------------------
# Stages


def tokenizer_stage(cfg: ImdbTaskConfig) -> Tokenizer:
  return imdb.imdb_tokenizer(cfg.tokenizer, cfg.data)


def sft_key(cfg: ImdbTaskConfig, tok: Tokenizer) -> dict:
  return {'version': STAGE_VERSION, 'data': imdb.data_fingerprint(cfg.data),
          'tokenizer': tok.fingerprint, 'model': to_dict(model_config(cfg, tok)), 'sft': to_dict(cfg.sft)}


def sft_stage(cfg: ImdbTaskConfig, tok: Tokenizer, mesh, *, progress: bool = True) -> Policy:
  """π_ref: the small GPT trained by next-token NLL on truncated train reviews."""
  model_cfg = model_config(cfg, tok)
  key = sft_key(cfg, tok)
  directory = cache_dir('imdb_sft', key)
  graphdef, params = sharding.init_params(lambda rngs: CausalLM(model_cfg, rngs=rngs), mesh,
                                          jax.random.key(cfg.sft.seed))
  if directory.is_dir():
    return Policy(graphdef, restore_params(directory / 'params', params, key), directory, True)
  seqs = imdb.lm_sequences(tok, 'train', cfg.sft.seq_len, cfg.data)
  data = ArrayBatches({'tokens': seqs['tokens'], 'attention_mask': seqs['attention_mask'],
                       'response_mask': seqs['loss_mask']}, cfg.sft.batch_size, seed=cfg.sft.seed)
  work = work_dir(directory)  # checkpoints every `save_every` steps: an interrupted SFT resumes
  with atomic_dir(directory) as tmp:
    state = fit(sft.make_loss_fn(graphdef), params, data, optimizer=cfg.sft.optimizer,
                n_steps=cfg.sft.steps, run_dir=work, config=key, mesh=mesh, seed=cfg.sft.seed,
                save_every=cfg.sft.save_every, desc='SFT π_ref', progress=progress)
    params = state['params']
    save_params(tmp / 'params', params, key)
    copy_logs(work, tmp / 'run')
    (tmp / 'key.json').write_text(json.dumps(key, indent=2, sort_keys=True))
  shutil.rmtree(work, ignore_errors=True)
  return Policy(graphdef, params, directory, False)


def prompts_for(cfg: ImdbTaskConfig, tok: Tokenizer, split: str, n: int, seed: int) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
  """`n` IMDb prompts (<bos> + 2–8 tokens) and their left-padded (n, P) tokens and mask."""
  ids = imdb.prompts(tok, split, n, seed, cfg.data)
  tokens_NxP, mask_NxP = left_pad_prompts(ids, cfg.prompt_len, pad_id=tok.pad_id)
  return ids, tokens_NxP, mask_NxP


def make_sample_fn(cfg: ImdbTaskConfig, policy: Policy, k: int):
  """The pairs stage's sampler: k responses per prompt from the jitted KV-cache sampler."""
  sampling = cfg.sampling()

  def sample_fn(prompts: list[list[int]], key):
    tokens_BxP, mask_BxP = left_pad_prompts(prompts, cfg.prompt_len, repeat=k)
    out = sample(policy.graphdef, policy.params, jnp.asarray(tokens_BxP), jnp.asarray(mask_BxP), key, sampling)
    responses = split_responses(np.asarray(out.tokens), np.asarray(out.response_mask))
    return [responses[i * k:(i + 1) * k] for i in range(len(prompts))]

  return sample_fn


def _collate_all(source, idx: np.ndarray, cfg: ImdbTaskConfig) -> dict:
  examples = [source[int(i)] for i in idx]
  # One (P, R) bucket for every batch: nothing recompiles across batches or stages.
  return collate(examples, prompt_buckets=(cfg.prompt_len,), response_buckets=(cfg.pairs.max_new_tokens,))


def pairs_stage(cfg: ImdbTaskConfig, tok: Tokenizer, policy: Policy, gold: Reward, *,
                progress: bool = True, gold_name: str = 'vader') -> Pairs:
  pc = cfg.pairs
  prompts, _, _ = prompts_for(cfg, tok, 'train', pc.n_prompts, pc.seed)
  cache_key = {'version': STAGE_VERSION, 'policy': policy.directory.name,
               'sampling': to_dict(cfg.sampling()), 'gold': gold_name, 'tokenizer': tok.fingerprint}
  dataset = generate_preference_dataset(make_sample_fn(cfg, policy, pc.k), gold, prompts, k=pc.k,
                                        cache_key=cache_key, batch_size=pc.batch_size, progress=progress)
  source = read_pairs(dataset.path)
  n = len(source)
  # Held-out by prompt (pairs of one prompt are consecutive), so no prompt is on both sides.
  ids: dict[tuple, int] = {}
  prompt_of = np.asarray([ids.setdefault(tuple(source[i]['prompt'].tolist()), len(ids)) for i in range(n)])
  rng = np.random.default_rng(pc.seed)
  uniq = np.arange(len(ids))
  held = set(rng.choice(uniq, size=max(1, int(len(uniq) * pc.heldout_fraction)), replace=False).tolist())
  is_held = np.asarray([p in held for p in prompt_of])
  train = _collate_all(source, np.flatnonzero(~is_held), cfg)
  heldout = _collate_all(source, np.flatnonzero(is_held), cfg)
  return Pairs(train, heldout, dataset, dataset.from_cache)


def reward_model_key(cfg: ImdbTaskConfig, policy: Policy, pairs: Pairs) -> dict:
  return {'version': STAGE_VERSION, 'policy': policy.directory.name, 'pairs': pairs.dataset.path.name,
          'rm': to_dict(cfg.reward_model), 'heldout_fraction': cfg.pairs.heldout_fraction}


def reward_model_stage(cfg: ImdbTaskConfig, tok: Tokenizer, policy: Policy, pairs: Pairs, mesh, *,
                       progress: bool = True) -> RewardStage:
  """Bradley–Terry RM from the SFT backbone; keeps the params of the best held-out accuracy."""
  rc = cfg.reward_model
  model_cfg = model_config(cfg, tok)
  key = reward_model_key(cfg, policy, pairs)
  graphdef, params, directory, cached = rm.cached_scalar_model('imdb_reward_model', key, model_cfg, rc.seed, mesh)
  if cached is not None:
    return RewardStage(graphdef, params, directory, cached, True)
  params = embedding_from_lm(policy.params, params)
  arrays = {k: v for k, v in pairs.train.items() if k.endswith(('_tokens', '_mask'))}
  data = ArrayBatches(arrays, min(rc.batch_size, len(arrays['chosen_tokens'])), seed=rc.seed)
  best = {'accuracy': -1.0, 'step': -1, 'params': None}

  def eval_fn(state, step):
    m = rm.evaluate_pairs(graphdef, state['params'], pairs.heldout)
    if m['accuracy'] > best['accuracy']:
      best.update(accuracy=m['accuracy'], step=step, params=jax.device_get(state['params']))
    return m

  with atomic_dir(directory) as tmp:
    fit(rm.make_loss_fn(graphdef), params, data, optimizer=rc.optimizer, n_steps=rc.steps,
        run_dir=tmp / 'run', config=key, mesh=mesh, seed=rc.seed, eval_fn=eval_fn,
        eval_every=rc.eval_every, desc='reward model', progress=progress)
    params = jax.device_put(best['params'], sharding.shardings_of(params))
    metrics = {'heldout_accuracy': best['accuracy'], 'best_step': best['step'],
               'n_train_pairs': int(len(arrays['chosen_tokens'])),
               'n_heldout_pairs': int(len(pairs.heldout['chosen_tokens']))}
    if rc.normalize:
      _, tokens_NxP, mask_NxP = prompts_for(cfg, tok, 'train', rc.n_normalize_prompts, rc.seed + 7919)
      # Rows of the pairs sampler's shape where possible: the compiled sampler is reused.
      rows = cfg.pairs.batch_size * cfg.pairs.k
      if rc.n_normalize_prompts % rows == 0:
        tokens_NxP, mask_NxP = tokens_NxP.reshape(-1, rows, tokens_NxP.shape[-1]), mask_NxP.reshape(-1, rows, mask_NxP.shape[-1])
      else:
        tokens_NxP, mask_NxP = tokens_NxP[None], mask_NxP[None]
      scores = []
      for i, (tokens_BxP, mask_BxP) in enumerate(zip(tokens_NxP, mask_NxP)):
        out = sample(policy.graphdef, policy.params, jnp.asarray(tokens_BxP), jnp.asarray(mask_BxP),
                     jax.random.fold_in(jax.random.key(rc.seed + 1), i), cfg.sampling())
        scores.append(np.asarray(rm.score(graphdef, params, out.tokens, out.attention_mask)))
      scores_N = np.concatenate(scores)
      params = rm.normalize(params, scores_N)
      metrics.update(raw_ref_mean=float(scores_N.mean()), raw_ref_std=float(scores_N.std()))
    save_params(tmp / 'params', params, key)
    (tmp / 'metrics.json').write_text(json.dumps(metrics, indent=2))
  return RewardStage(graphdef, params, directory, metrics, False)


GOLD_REWARDS = ('vader', 'classifier')


def gold_reward(cfg: ImdbTaskConfig, tok: Tokenizer, mesh, *, progress: bool = True) -> tuple[Reward, dict]:
  """The task's gold reward and its description: `name` keys the caches built from its labels;
  the classifier's adds its held-out accuracy."""
  if cfg.gold == 'vader':
    return VaderReward(tok), {'name': 'vader'}
  if cfg.gold == 'classifier':
    stage = classifier_stage(cfg.classifier, cfg.data, tok, mesh, progress=progress)
    return stage.reward(tok), {'name': f'classifier/{stage.directory.name}', 'from_cache': stage.from_cache,
                               **stage.metrics}
  raise ValueError(f'task.gold must be one of {GOLD_REWARDS}, got {cfg.gold!r}')


def build_task(cfg: ImdbTaskConfig, *, mesh=None, progress: bool = True) -> ImdbTask:
  """Every shared stage, each built once and then read from the cache."""
  mesh = mesh if mesh is not None else sharding.make_mesh()
  stages = tqdm(total=4, desc='imdb stages', disable=not progress)
  tok = tokenizer_stage(cfg)
  stages.update(1)
  gold, gold_info = gold_reward(cfg, tok, mesh, progress=progress)
  policy = sft_stage(cfg, tok, mesh, progress=progress)
  stages.update(1)
  pairs = pairs_stage(cfg, tok, policy, gold, progress=progress, gold_name=gold_info['name'])
  stages.update(1)
  reward = reward_model_stage(cfg, tok, policy, pairs, mesh, progress=progress)
  stages.update(1)
  stages.close()
  return ImdbTask(cfg, tok, gold, policy, pairs, reward, mesh, gold_info)


def stage_keys(cfg: ImdbTaskConfig, tok: Tokenizer) -> dict[str, str]:
  """The cache hashes of the stages that do not depend on earlier outputs' names."""
  return {'sft': config_hash(sft_key(cfg, tok))}
