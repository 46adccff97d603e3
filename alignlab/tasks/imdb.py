"""IMDb controlled sentiment generation: the DPO paper's Fig. 2 (arXiv 2305.18290 §6.1, App. C)
at CPU scale.

Stages (cached, `alignlab/stages.py`): tokenizer (byte-level BPE on the train reviews) → SFT
π_ref on truncated train reviews → K samples per prompt from π_ref, all K(K−1)/2 pairs labelled
by the gold reward (TFDS array_record, `data/pairs.py`) → Bradley–Terry reward model from the
SFT backbone (on first need), keeping the params of the best held-out accuracy, normalized so
that π_ref's samples score mean 0, std 1 (Ziegler et al. 2019, arXiv 1909.08593).

The gold reward is VADER (`gold='vader'`) or a sentiment classifier trained on the real IMDb
labels (`gold='classifier'`, `imdb_gold.py`). A point (`evaluate.evaluate_sampled`) = mean gold
reward ± stderr on held-out test prompts and the sequence-level KL(π‖π_ref) = Σ over response
tokens of the exact per-token KL (the paper's footnote 3), with the sampled k1/k3 estimates
beside it, the proxy (RM) reward, J_β at `eval_beta`, and the implicit reward's accuracy on
held-out pairs. Win rates are against π_ref samples at T = 1 with the gold reward as judge
(the paper's Fig. 2 right). Best-of-N has no per-token policy; its KL is the analytic
log N − (N − 1)/N (Stiennon et al. 2020, arXiv 2009.01325 App. G), an upper bound (Beirami et
al. 2024, arXiv 2401.01879).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from alignlab import artifacts, evaluate, sharding, stages
from alignlab.config import ModelConfig, OptimizerConfig, SamplingConfig, split_fields, to_dict
from alignlab.data.pairs import generate_preference_dataset, left_pad_prompts, split_responses
from alignlab.data.preference import collate, read_pairs
from alignlab.data.tokenizer import Tokenizer, TokenizerConfig
from alignlab.heads import CausalLM, ScalarModel
from alignlab.sampling import sample
from alignlab.tasks import imdb_data as imdb
from alignlab.tasks.imdb_gold import ClassifierConfig, VaderReward, classifier_stage
from alignlab.train import preference, sft
from alignlab.train import reward_model as rm
from alignlab.train.reward_model import RewardModelConfig
from alignlab.train.batches import ArrayBatches
from alignlab.train.fit import fit
from alignlab.train.rollout import RewardModel, from_token_lists

STAGE_VERSION = 1  # bump when a stage's code changes what it produces
GOLD_REWARDS = ('vader', 'classifier')


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
class Config:
  data: imdb.ImdbConfig = imdb.ImdbConfig()
  tokenizer: TokenizerConfig = TokenizerConfig(vocab_size=2048)
  model: ModelConfig = ModelConfig(vocab_size=2048, max_seq_len=96, d_model=96, n_layers=2, n_heads=4)
  sft: SftConfig = SftConfig()
  pairs: PairsStageConfig = PairsStageConfig()
  reward_model: RewardModelConfig = RewardModelConfig()
  # The gold reward: 'vader' (lexicon, no training) or 'classifier' (p(positive) in [0, 1]).
  gold: str = 'vader'
  classifier: ClassifierConfig = ClassifierConfig()
  # Evaluation: one fixed set of held-out prompts and one sampling key for every point.
  n_eval_prompts: int = 128
  eval_beta: float = 0.1  # the β of the reported J_β = E[r] − β·KL
  eval_seed: int = 1234
  rl_prompt_pool: int = 4096  # train prompts PPO & co. draw from
  # A Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json): π_ref is
  # then SFT'd on the reviews from those weights with that tokenizer, as the DPO paper does
  # from GPT-2 large (§6.1); `tokenizer` and `model` are ignored (docs/pretrained.md).
  hf_path: str = ''

  @property
  def prompt_len(self) -> int:
    """P: the left-padded prompt width (<bos> + up to prompt_max_tokens)."""
    return self.data.prompt_max_tokens + int(self.data.prompt_bos)

  def sampling(self, temperature: float | None = None, tok: Tokenizer | None = None
               ) -> SamplingConfig:
    """Responses of `pairs.max_new_tokens`, ended by the tokenizer's EOS (alignlab's own
    tokenizers: EOS 1, pad 0)."""
    return SamplingConfig(max_new_tokens=self.pairs.max_new_tokens,
                          temperature=self.pairs.temperature if temperature is None else temperature,
                          eos_id=1 if tok is None else tok.eos_id,
                          pad_id=0 if tok is None else tok.pad_id)


def _masked_ids(tok: Tokenizer) -> tuple[int, ...]:
  # The LM never emits <pad> or <bos>: its distributions are over what it may produce. A
  # tokenizer without those (GPT-2's) maps them to EOS, which must stay emittable.
  return tuple(sorted({tok.pad_id, tok.bos_id} - {tok.eos_id}))


def model_config(cfg: Config, tok: Tokenizer) -> ModelConfig:
  if cfg.hf_path:
    # A checkpoint's vocabulary may be padded past the tokenizer's (GPT-2: 50,257 → 50,304 in
    # some exports): those ids decode to nothing and are masked too.
    mcfg = _pretrained(cfg.hf_path)[0]
    return dataclasses.replace(mcfg, masked_output_ids=_masked_ids(tok) + tuple(
        range(tok.vocab_size, mcfg.vocab_size)))
  return dataclasses.replace(cfg.model, vocab_size=tok.vocab_size,
                             masked_output_ids=_masked_ids(tok))


@functools.lru_cache(maxsize=2)
def _pretrained(path: str):
  """(model config, graphdef, params, tokenizer) of a Hugging Face checkpoint, read once."""
  from alignlab import hf
  model_cfg, graphdef, params, tok = hf.load_pretrained(path)
  if tok is None:
    raise ValueError(f'task.hf_path={path}: no tokenizer.json beside the weights')
  return model_cfg, graphdef, params, tok


def tokenizer(cfg: Config) -> Tokenizer:
  """The checkpoint's tokenizer with `hf_path`, else BPE trained on the train reviews."""
  return _pretrained(cfg.hf_path)[3] if cfg.hf_path else imdb.imdb_tokenizer(cfg.tokenizer, cfg.data)


def prompts_for(cfg: Config, tok: Tokenizer, split: str, n: int,
                seed: int) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
  """`n` IMDb prompts (<bos> + 2–8 tokens) and their left-padded (n, P) tokens and mask."""
  ids = imdb.prompts(tok, split, n, seed, cfg.data)
  tokens_NxP, mask_NxP = left_pad_prompts(ids, cfg.prompt_len, pad_id=tok.pad_id)
  return ids, tokens_NxP, mask_NxP


# ---------------------------------------------------------------------------------------------
# Stages


def sft_key(cfg: Config, tok: Tokenizer) -> dict:
  key = {'version': STAGE_VERSION, 'data': imdb.data_fingerprint(cfg.data),
         'tokenizer': tok.fingerprint, 'model': to_dict(model_config(cfg, tok)),
         'sft': to_dict(cfg.sft)}
  if cfg.hf_path:  # the starting weights, by content: a changed checkpoint is another π_ref
    key['weights'] = artifacts.manifest_of(cfg.hf_path)
  return key


def _init_lm(cfg: Config, tok: Tokenizer, mesh):
  mcfg = model_config(cfg, tok)
  graphdef, params = sharding.init_params(lambda rngs: CausalLM(mcfg, rngs=rngs), mesh,
                                          jax.random.key(cfg.sft.seed))
  if cfg.hf_path:  # the pretrained weights, placed as the fresh ones are sharded
    params = jax.device_put(_pretrained(cfg.hf_path)[2], sharding.shardings_of(params))
  return graphdef, params


def _build_sft(cfg: Config, tok: Tokenizer, mesh, progress: bool, out: Path, work: Path) -> None:
  """π_ref: the small GPT trained by next-token NLL on truncated train reviews."""
  graphdef, params = _init_lm(cfg, tok, mesh)
  seqs = imdb.lm_sequences(tok, 'train', cfg.sft.seq_len, cfg.data)
  data = ArrayBatches({'tokens': seqs['tokens'], 'attention_mask': seqs['attention_mask'],
                       'response_mask': seqs['loss_mask']}, cfg.sft.batch_size, seed=cfg.sft.seed)
  key = sft_key(cfg, tok)
  state = fit(sft.make_loss_fn(graphdef), params, data, optimizer=cfg.sft.optimizer,
              n_steps=cfg.sft.steps, run_dir=work, config=key, mesh=mesh, seed=cfg.sft.seed,
              save_every=cfg.sft.save_every, desc='SFT π_ref', progress=progress)
  stages.save_params(out / 'params', state['params'], key)
  stages.copy_logs(work, out / 'run')


def sft_stage(cfg: Config, tok: Tokenizer, mesh, *, progress: bool = True):
  """(cache dir, graphdef, params, from_cache) of π_ref."""
  key = sft_key(cfg, tok)
  sft_dir, cached = stages.cached_stage(
      'imdb_sft', key, functools.partial(_build_sft, cfg, tok, mesh, progress))
  graphdef, like = _init_lm(cfg, tok, mesh)
  return sft_dir, graphdef, stages.restore_params(sft_dir / 'params', like, key), cached


def _make_sample_fn(cfg: Config, tok: Tokenizer, graphdef, params, k: int):
  """The pairs stage's sampler: k responses per prompt from the jitted KV-cache sampler."""
  sampling = cfg.sampling(tok=tok)

  def sample_fn(prompts: list[list[int]], key):
    tokens_BxP, mask_BxP = left_pad_prompts(prompts, cfg.prompt_len, pad_id=tok.pad_id, repeat=k)
    out = sample(graphdef, params, jnp.asarray(tokens_BxP), jnp.asarray(mask_BxP), key, sampling)
    responses = split_responses(np.asarray(out.tokens), np.asarray(out.response_mask))
    return [responses[i * k:(i + 1) * k] for i in range(len(prompts))]

  return sample_fn


def _collate_all(source, idx: np.ndarray, cfg: Config) -> dict:
  examples = [source[int(i)] for i in idx]
  # One (P, R) bucket for every batch: nothing recompiles across batches or stages.
  return collate(examples, prompt_buckets=(cfg.prompt_len,),
                 response_buckets=(cfg.pairs.max_new_tokens,))


def _pairs(cfg: Config, tok: Tokenizer, graphdef, params, sft_dir: Path, gold, gold_name: str,
           progress: bool):
  """(train, heldout, dataset): K samples per prompt from π_ref, every pair labelled by the
  gold reward; held out by prompt, so no prompt is on both sides."""
  pc = cfg.pairs
  prompts, _, _ = prompts_for(cfg, tok, 'train', pc.n_prompts, pc.seed)
  cache_key = {'version': STAGE_VERSION, 'policy': sft_dir.name,
               'sampling': to_dict(cfg.sampling(tok=tok)), 'gold': gold_name,
               'tokenizer': tok.fingerprint}
  dataset = generate_preference_dataset(_make_sample_fn(cfg, tok, graphdef, params, pc.k), gold, prompts,
                                        k=pc.k, cache_key=cache_key, batch_size=pc.batch_size,
                                        progress=progress)
  source = read_pairs(dataset.path)
  n = len(source)
  ids: dict[tuple, int] = {}
  prompt_of = np.asarray([ids.setdefault(tuple(source[i]['prompt'].tolist()), len(ids))
                          for i in range(n)])
  rng = np.random.default_rng(pc.seed)
  held = set(rng.choice(np.arange(len(ids)), size=max(1, int(len(ids) * pc.heldout_fraction)),
                        replace=False).tolist())
  is_held = np.asarray([p in held for p in prompt_of])
  return (_collate_all(source, np.flatnonzero(~is_held), cfg),
          _collate_all(source, np.flatnonzero(is_held), cfg), dataset)


def _build_reward_model(cfg: Config, tok: Tokenizer, env: dict, key: dict, out: Path,
                        work: Path) -> None:
  """Bradley–Terry RM from the SFT backbone; keeps the params of the best held-out accuracy."""
  rc = cfg.reward_model
  graphdef, params, metrics = rm.train_best(
      env['model_cfg'], env['ref_params'], env['pairs'], env['heldout_pairs'], rc,
      mesh=env['mesh'], work=work, config=key, progress=env['progress'])
  stages.copy_logs(work, out / 'run')
  if rc.normalize:
    _, tokens_NxP, mask_NxP = prompts_for(cfg, tok, 'train', rc.n_normalize_prompts, rc.seed + 7919)
    # Rows of the pairs sampler's shape where possible: the compiled sampler is reused.
    rows = cfg.pairs.batch_size * cfg.pairs.k
    if rc.n_normalize_prompts % rows == 0:
      tokens_NxP = tokens_NxP.reshape(-1, rows, tokens_NxP.shape[-1])
      mask_NxP = mask_NxP.reshape(-1, rows, mask_NxP.shape[-1])
    else:
      tokens_NxP, mask_NxP = tokens_NxP[None], mask_NxP[None]
    scores = []
    for i, (tokens_BxP, mask_BxP) in enumerate(zip(tokens_NxP, mask_NxP)):
      out_i = sample(env['graphdef'], env['ref_params'], jnp.asarray(tokens_BxP),
                     jnp.asarray(mask_BxP), jax.random.fold_in(jax.random.key(rc.seed + 1), i),
                     cfg.sampling(tok=tok))
      scores.append(np.asarray(rm.score(graphdef, params, out_i.tokens, out_i.attention_mask)))
    scores_N = np.concatenate(scores)
    params = rm.normalize(params, scores_N)
    metrics.update(raw_ref_mean=float(scores_N.mean()), raw_ref_std=float(scores_N.std()))
  stages.save_params(out / 'params', params, key)
  (out / 'metrics.json').write_text(json.dumps(metrics, indent=2))


def gold_reward(cfg: Config, tok: Tokenizer, mesh, *, progress: bool = True):
  """The task's gold reward and its description: `name` keys the caches built from its labels;
  the classifier's adds its held-out accuracy."""
  if cfg.gold == 'vader':
    return VaderReward(tok), {'name': 'vader'}
  if cfg.gold == 'classifier':
    stage = classifier_stage(cfg.classifier, cfg.data, tok, mesh, progress=progress)
    return stage.reward(tok), {'name': f'classifier/{stage.directory.name}',
                               'from_cache': stage.from_cache, **stage.metrics}
  raise ValueError(f'task.gold must be one of {GOLD_REWARDS}, got {cfg.gold!r}')


# ---------------------------------------------------------------------------------------------
# The env


def setup(cfg: Config, *, mesh, progress: bool = True, log=print) -> dict:
  """Every shared stage, each built once and then read from the cache; the task's env."""
  bar = tqdm(total=3, desc='imdb stages', disable=not progress)
  tok = tokenizer(cfg)
  bar.update(1)
  gold, gold_info = gold_reward(cfg, tok, mesh, progress=progress)
  sft_dir, graphdef, ref_params, sft_cached = sft_stage(cfg, tok, mesh, progress=progress)
  bar.update(1)
  train, heldout, dataset = _pairs(cfg, tok, graphdef, ref_params, sft_dir, gold,
                                   gold_info['name'], progress)
  bar.update(1)
  bar.close()
  p = cfg.prompt_len
  arrays = {k: v for k, v in train.items() if k.endswith(('_tokens', '_mask'))}
  pairs = preference.reference_logps(graphdef, ref_params, arrays, prompt_len=p)
  if not (sft_cached and dataset.from_cache):
    log(f'stages built: π_ref {"from the cache" if sft_cached else "trained"} ({sft_dir}), '
        f'{len(arrays["chosen_tokens"])} training pairs, gold {gold_info["name"]}')
  eval_prompts, tokens_NxP, mask_NxP = prompts_for(cfg, tok, 'test', cfg.n_eval_prompts,
                                                   cfg.eval_seed)
  tokens_NxP, mask_NxP = jnp.asarray(tokens_NxP), jnp.asarray(mask_NxP)
  key_eval = jax.random.key(cfg.eval_seed)
  sampling = cfg.sampling(1.0, tok)
  task_key, eval_key = split_fields(cfg, EVAL_FIELDS)
  env = {'name': 'imdb', 'mesh': mesh, 'progress': progress, 'tokenizer': tok,
         'model_cfg': model_config(cfg, tok), 'graphdef': graphdef, 'ref_params': ref_params,
         'prompt_len': p, 'pairs': pairs, 'heldout_pairs': heldout,
         'gold': from_token_lists(gold), 'rl_sampling': sampling,
         'run_key': {'sft': sft_dir.name, 'pairs': dataset.path.name, 'task': task_key},
         'eval_key': eval_key,
         'stages': {'sft': str(sft_dir), 'pairs': str(dataset.path)},
         'info': {'from_cache': {'tokenizer': tok.from_cache, 'sft': sft_cached,
                                 'pairs': dataset.from_cache},
                  'gold': gold_info, 'pairs': dataclasses.asdict(dataset.stats)}}

  @functools.cache
  def reward_model_():
    rm_key = {'version': STAGE_VERSION, 'policy': sft_dir.name, 'pairs': dataset.path.name,
              'rm': to_dict(cfg.reward_model), 'heldout_fraction': cfg.pairs.heldout_fraction}
    path, cached = stages.cached_stage(
        'imdb_reward_model', rm_key, functools.partial(_build_reward_model, cfg, tok, env, rm_key))
    rm_graphdef, rm_like = sharding.init_params(lambda r: ScalarModel(env['model_cfg'], rngs=r),
                                                mesh, jax.random.key(cfg.reward_model.seed))
    metrics = stages.read_json(path / 'metrics.json')
    env['stages']['reward_model'] = str(path)
    env['info'].update(reward_model=metrics)
    env['info']['from_cache']['reward_model'] = cached
    if not cached:
      log(f'reward model trained: held-out accuracy {metrics["heldout_accuracy"]:.3f} ({path})')
    return RewardModel(rm_graphdef, stages.restore_params(path / 'params', rm_like, rm_key))

  def proxy(tokens_BxT, attention_mask_BxT):
    reward = reward_model_()
    return rm.score(reward.graphdef, reward.params, tokens_BxT, attention_mask_BxT)

  @functools.cache
  def heldout_with_ref() -> dict:
    """The held-out pairs with π_ref's log-probs, computed at the first evaluation only."""
    return preference.reference_logps(graphdef, ref_params, heldout, prompt_len=p)

  def evaluate_(params, beta=None, timings=None):
    """A frontier point; β (the method's own, else eval_beta) only scales the implicit margin.
    `timings` (a dict) collects the seconds of its parts (`evaluate.evaluate_sampled`)."""
    point = evaluate.evaluate_sampled(graphdef, params, ref_params, eval_prompts, gold, key_eval,
                                      sampling, cfg.eval_beta, proxy, prompt_len=p,
                                      timings=timings)
    t0 = time.perf_counter()
    point.update(evaluate.implicit_reward_accuracy(
        graphdef, params, ref_params, heldout_with_ref(),
        beta=cfg.eval_beta if beta is None else beta, prompt_len=p))
    if timings is not None:
      timings['implicit_accuracy'] = time.perf_counter() - t0
    point['beta'] = cfg.eval_beta
    return point

  @functools.cache
  def reference_gold() -> np.ndarray:
    """Gold rewards of one π_ref sample (T = 1) per prompt: what every win rate is against."""
    return evaluate.gold_of_samples(graphdef, ref_params, eval_prompts, gold,
                                    jax.random.fold_in(key_eval, 1), sampling, prompt_len=p)

  def win_rates(params):
    return evaluate.win_rate_vs_reference(graphdef, params, ref_params, eval_prompts, gold,
                                          jax.random.fold_in(key_eval, 2), sampling, prompt_len=p,
                                          reference_scores=reference_gold())

  def best_of_n(n: int):
    """π_ref samples reranked by the learned RM (its normalized score is the proxy): the point,
    and the win rate at T = 1 against the π_ref samples of `win_rates`."""
    kept, proxy_NxK = evaluate.best_of_n_samples(
        graphdef, ref_params, tokens_NxP, mask_NxP, jax.random.fold_in(key_eval, n), sampling, n,
        lambda tokens, attention_mask, response_mask: proxy(tokens, attention_mask))
    gold_N = env['gold'](kept.tokens, kept.attention_mask, kept.response_mask).astype(np.float64)
    kl = math.log(n) - (n - 1) / n
    point = {**evaluate.mean_stderr('gold_reward', gold_N), 'kl': kl, 'kl_stderr': 0.0,
             'kl_k1': kl, 'kl_k3': kl, 'proxy_reward': float(proxy_NxK.max(-1).mean()),
             'objective': float(gold_N.mean() - cfg.eval_beta * kl), 'beta': cfg.eval_beta}
    wins = (gold_N > reference_gold()) + 0.5 * (gold_N == reference_gold())
    return point, [{'temperature': 1.0, 'win_rate': float(wins.mean()), 'n': len(wins)}]

  def rl_prompts(seed, k, rollouts):
    n_prompts = rollouts // k
    pool = prompts_for(cfg, tok, 'train', cfg.rl_prompt_pool, 10_000 + seed)

    def prompts_fn(step):
      idx = np.random.default_rng([seed, step]).choice(len(pool[1]), n_prompts, replace=False)
      return pool[1][idx], pool[2][idx]

    return prompts_fn

  env.update(evaluate=evaluate_, win_rates=win_rates, best_of_n=best_of_n,
             reward_model=reward_model_, rl_prompts=rl_prompts)
  return env


VERDICT = ('gold_reward', 'max')  # the paper's Fig. 2: gold reward at each KL
BEST_BY = ('objective', 'max')
PLOTS = ('frontier', 'win_rates')
# The settings evaluation alone reads: a change re-evaluates, any other is another experiment.
EVAL_FIELDS = ('n_eval_prompts', 'eval_beta', 'eval_seed')
