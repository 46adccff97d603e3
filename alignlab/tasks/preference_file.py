"""Your own preference data: a JSONL or Parquet file of preference pairs (`task.data.path`)
as a task, so that every method of `methods.py` runs on it from the CLI:

    alignlab run preference_file --variant tiny --set task.data.path=pairs.jsonl
    alignlab run preference_file --set task.data.path=hh.jsonl --set task.model.hf_path=DIR

The formats (TRL standard, implicit prompt, conversational, Anthropic HH, KTO), the split,
bad rows and the truncation rule are in `preference_file_data.py`; what was detected and how
many rows were cut is logged once and stored in stages.json (`info`).

Stages (cached, `alignlab/stages.py`): tokenizer (byte-level BPE trained on the file's train
text; or the checkpoint's) → the converted pairs: validated, tokenized, written once as a TFDS
array_record dataset keyed by the sha256 of the file(s), the tokenizer's fingerprint, the chat
template and the truncation and split settings, and read back with grain → π_ref: the
checkpoint of `task.model.hf_path`, or a small transformer SFT'd on the chosen responses
(batches from a grain pipeline, shuffled by seed) → on first need, two Bradley–Terry reward
models from π_ref's backbone, best held-out accuracy kept, normalized so that π_ref's samples
score mean 0, std 1: the proxy (`reward_model`) and the held-out judge (`judge`).

The splits, all by prompt: 'test' (the file's split, `task.data.test_path`, or
`heldout_fraction` of the prompts) and the rest cut in two (`judge_fraction`): 'train', which
π_ref's SFT, every policy and the proxy reward model learn from, and 'judge', which only the
judge learns from. That is Gao et al.'s gold/proxy split (2022, arXiv 2210.10760 §2) with
a second human-data reward model as the gold one: PPO, RLOO, GRPO and Best-of-N optimize the
proxy, and the judge, which no policy was trained with or against, scores every point.

There is no gold reward. A point says what it measures:
- `judge_reward`: the held-out judge's score of the policy's samples on held-out prompts.
  `gold_reward` holds the SAME number (the frontier plot and the verdict read that column),
  `objective` is J_β under the judge and the win rates against π_ref are the judge's;
- `proxy_reward`: the proxy reward model's score of the same samples; the gap between the two
  is reward-model overoptimization (Gao et al. 2022);
- `implicit_accuracy` / `implicit_margin`: how often the policy's implicit reward
  β·log π/π_ref orders the held-out pairs as the file does (π_ref: ½, every pair a tie);
- `kl`: the exact sequence-level KL(π‖π_ref) on held-out prompts (the per-token sum, as
  every task reports it), with its k1 / k3 estimates.
`env['gold']`, the reward of the methods with reward='gold' (RLOO, GRPO), is the proxy here:
nothing trains against the judge.

A file of KTO rows (`prompt`/`completion`/`label`): `kto` trains on its train rows one by one,
desirable and undesirable, with KTO's unpaired loss (`make_unpaired_kto_loss_fn`); the paired
methods and the reward models use the rows paired by prompt.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignlab import evaluate, hf, sharding, stages
from alignlab.config import (ConfigError, ModelConfig, OptimizerConfig, SamplingConfig, config_hash,
                             split_fields, to_dict)
from alignlab.data.pairs import left_pad_prompts
from alignlab.data.preference import collate, read_metadata, read_pairs, write_pairs
from alignlab.data.tokenizer import Tokenizer, TokenizerConfig, load_or_train_tokenizer
from alignlab.heads import CausalLM, ScalarModel
from alignlab.logprobs import sequence_logprobs
from alignlab.losses.preference import kto
from alignlab.sampling import sample
from alignlab.tasks import preference_file_data as pfd
from alignlab.train import preference, sft
from alignlab.train.batches import GrainBatches, fixed_batches
from alignlab.train import reward_model as rm
from alignlab.train.reward_model import RewardModelConfig
from alignlab.train.fit import fit
from alignlab.train.rollout import RewardModel

STAGE_VERSION = 2  # bump when a stage's code changes what it produces


@dataclasses.dataclass(frozen=True)
class DataConfig:
  path: str = ''  # the preference file (JSONL or Parquet)
  test_path: str = ''  # a held-out file of the same format; else a split column or the fraction
  heldout_fraction: float = 0.1  # of the distinct prompts, when the file gives no split
  # Of the train split's distinct prompts: the held-out judge's half. The policies, π_ref's SFT
  # and the proxy reward model train on the rest (`preference_file_data.assign_judge_split`).
  judge_fraction: float = 0.5
  split_seed: int = 0
  skip_bad_rows: bool = False  # skip (and count) malformed rows instead of stopping
  max_prompt_tokens: int = 64  # longer prompts keep their last tokens
  max_response_tokens: int = 64  # longer responses keep their first tokens


@dataclasses.dataclass(frozen=True)
class ModelSection:
  """π_ref: a Hugging Face checkpoint directory (`hf_path`), or a transformer of these sizes
  trained here (its vocabulary is the tokenizer's)."""
  hf_path: str = ''
  max_seq_len: int = 128
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  d_ff: int = 0


@dataclasses.dataclass(frozen=True)
class SftConfig:
  steps: int = 200
  batch_size: int = 16
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, schedule='cosine',
                                               warmup_steps=20)
  seed: int = 0
  save_every: int = 50


@dataclasses.dataclass(frozen=True)
class Config:
  data: DataConfig = DataConfig()
  tokenizer: TokenizerConfig = TokenizerConfig(vocab_size=2048)
  model: ModelSection = ModelSection()
  sft: SftConfig = SftConfig()
  reward_model: RewardModelConfig = RewardModelConfig(batch_size=16, n_normalize_prompts=64)
  n_eval_prompts: int = 64  # distinct held-out prompts, one sample each per point
  eval_beta: float = 0.1  # the β of the reported J_β (under the reward model)
  eval_seed: int = 1234
  win_rate_temperatures: tuple[float, ...] = evaluate.TEMPERATURES

  def validate(self) -> None:
    d = self.data
    if not d.path:
      raise ConfigError('task.data.path is not set: give your preference file with --set '
                        'task.data.path=FILE (JSONL or Parquet)')
    for key in ('path', 'test_path'):
      value = getattr(d, key)
      if value and not Path(value).expanduser().is_file():
        raise ConfigError(f'task.data.{key}={value}: no such file')
    for key in ('heldout_fraction', 'judge_fraction'):
      if not 0.0 < getattr(d, key) < 1.0:
        raise ConfigError(f'task.data.{key}={getattr(d, key)} must be in (0, 1)')
    for key in ('max_prompt_tokens', 'max_response_tokens'):
      if getattr(d, key) < 1:
        raise ConfigError(f'task.data.{key}={getattr(d, key)} must be ≥ 1')


def _files(cfg: Config) -> list[Path]:
  return [Path(p).expanduser().resolve() for p in (cfg.data.path, cfg.data.test_path) if p]


def _sampling(tok: Tokenizer, response_len: int, temperature: float = 1.0) -> SamplingConfig:
  return SamplingConfig(max_new_tokens=response_len, temperature=temperature, eos_id=tok.eos_id,
                        pad_id=tok.pad_id)


# ---------------------------------------------------------------------------------------------
# Stages


def parse(cfg: Config, render, log) -> tuple[str, list[dict], dict, list[dict]]:
  """(format, pairs with their split — 'train', 'judge' or 'test' —, counts, unpaired KTO rows
  with theirs, empty for the paired formats) of the file(s): validated, not yet tokenized."""
  main, *test = _files(cfg)
  fmt, rows, counts = pfd.parse_file(main, skip_bad_rows=cfg.data.skip_bad_rows, render=render,
                                     log=log)
  if test:
    test_fmt, test_rows, test_counts = pfd.parse_file(
        test[0], skip_bad_rows=cfg.data.skip_bad_rows, render=render, log=log)
    if test_fmt != fmt:
      raise pfd.PreferenceFileError(f'{test[0]}: {test_fmt} format, but {main} is {fmt}')
    for r in rows:
      r['split'] = 'train' if r['split'] is None else r['split']
    for r in test_rows:
      r['split'] = 'test'
    rows = rows + test_rows
    counts = {k: counts.get(k, 0) + test_counts.get(k, 0) for k in {*counts, *test_counts}}
  pfd.assign_splits(rows, heldout_fraction=cfg.data.heldout_fraction, seed=cfg.data.split_seed,
                    path=str(main))
  pfd.assign_judge_split(rows, fraction=cfg.data.judge_fraction, seed=cfg.data.split_seed,
                         path=str(main))
  unpaired = []
  if fmt == 'kto':
    # Split by prompt first, then paired: a pair never straddles two splits.
    unpaired = rows
    rows, counts['kto_unpaired_rows'] = pfd.pair_kto(unpaired)
  for split in ('train', 'judge', 'test'):
    if not any(r['split'] == split for r in rows):
      raise pfd.PreferenceFileError(f'{main}: no {split} pairs ({fmt} format)')
  return fmt, rows, counts, unpaired


def file_fingerprint(cfg: Config) -> str:
  """The sha256 of the file's (and the test file's) contents: what every stage is keyed by."""
  return '+'.join(pfd.file_sha256(p) for p in _files(cfg))


def split_key(cfg: Config) -> dict:
  d = cfg.data
  return {'test_file': bool(d.test_path), 'heldout_fraction': d.heldout_fraction,
          'seed': d.split_seed}


def pairs_key(cfg: Config, sha: str, tok: Tokenizer, template: str | None) -> dict:
  d = cfg.data
  return {'version': STAGE_VERSION, 'sha256': sha, 'tokenizer': tok.fingerprint,
          'chat_template': pfd.text_sha256(template),
          'truncation': {'max_prompt_tokens': d.max_prompt_tokens,
                         'max_response_tokens': d.max_response_tokens},
          'split': {**split_key(cfg), 'judge_fraction': d.judge_fraction},
          'skip_bad_rows': d.skip_bad_rows}


def _build_pairs(cfg: Config, tok: Tokenizer, parsed, encode, key: dict, out: Path,
                 work: Path) -> None:
  del work
  fmt, rows, counts, unpaired = parsed()
  limits = {'bos_id': tok.bos_id, 'eos_id': tok.eos_id,
            'max_prompt_tokens': cfg.data.max_prompt_tokens,
            'max_response_tokens': cfg.data.max_response_tokens}
  examples, truncation = pfd.tokenize_rows(rows, encode, path=cfg.data.path,
                                           skip_bad_rows=cfg.data.skip_bad_rows, **limits)
  splits = {s: [e for e in examples if e['split'] == s] for s in ('train', 'judge', 'test')}
  for split, items in splits.items():
    if not items:
      raise pfd.PreferenceFileError(f'{cfg.data.path}: no {split} pairs left after truncation')
  sizes = {f'{s}_pairs': len(items) for s, items in splits.items()}
  if unpaired:
    # KTO trains on the policies' half of the rows, one example each (Ethayarajh et al. 2024,
    # arXiv 2402.01306 §4): its desirable and undesirable completions need no counterpart.
    singles, truncation['truncated_unpaired'] = pfd.tokenize_unpaired(
        [r for r in unpaired if r['split'] == 'train'], encode, **limits)
    splits['unpaired'] = singles
    sizes.update(unpaired_desirable=sum(e['chosen_score'] == 1.0 for e in singles),
                 unpaired_undesirable=sum(e['chosen_score'] == 0.0 for e in singles))
  everything = [e for items in splits.values() for e in items]
  meta = {'format': fmt, 'counts': {**counts, **truncation, **sizes},
          'prompt_len': max(len(e['prompt']) for e in everything),
          'response_len': max(len(e[s]) for e in everything for s in ('chosen', 'rejected')),
          'key': key}
  write_pairs({s: ({k: v for k, v in e.items() if k != 'split'} for e in items)
               for s, items in splits.items()}, out / 'pairs', metadata=meta)


def pairs_stage(cfg: Config, tok: Tokenizer, template: str | None, parsed,
                sha: str | None = None):
  """(entry, metadata, from_cache) of the converted pairs: built once per file content
  (`sha`, `file_fingerprint`), tokenizer, template, truncation and split settings;
  `parsed()` (`parse`) is called on a miss only."""
  key = pairs_key(cfg, sha or file_fingerprint(cfg), tok, template)
  encode = pfd.make_encoder(tok, pfd.special_tokens_of(tok.path) if template else {})
  path, cached = stages.cached_stage('preference_file',
                                     key, functools.partial(_build_pairs, cfg, tok, parsed, encode, key))
  return path, read_metadata(path / 'pairs'), cached


def grain_source(path: Path, split: str) -> grain.MapDataset:
  """The converted pairs of one split as a grain dataset (random access, in written order)."""
  return grain.MapDataset.source(read_pairs(path / 'pairs', split))


def canonical(dataset: grain.MapDataset, prompt_len: int, response_len: int, pad_id: int) -> dict:
  """Every example of `dataset` in the canonical layout, one (P, R) shape."""
  return collate(list(dataset), prompt_buckets=(prompt_len,), response_buckets=(response_len,),
                 pad_id=pad_id)


def batches(dataset: grain.MapDataset, batch_size: int, seed: int, prompt_len: int,
            response_len: int, pad_id: int):
  """`batch_at(step)` over a grain pipeline: shuffled by `seed` (a new order each epoch),
  repeated, batched into the canonical layout; a pure function of the step, so a resumed
  stage sees the batches an uninterrupted one would have."""
  pipeline = dataset.shuffle(seed=seed).repeat().batch(
      batch_size, drop_remainder=True,
      batch_fn=functools.partial(collate, prompt_buckets=(prompt_len,),
                                 response_buckets=(response_len,), pad_id=pad_id))
  return lambda step: pipeline[int(step)]


def unpaired_arrays(dataset: grain.MapDataset, prompt_len: int, response_len: int,
                    pad_id: int) -> dict:
  """KTO's unpaired examples (`tokenize_unpaired`'s split 'unpaired') in the canonical
  layout: `tokens`, `attention_mask`, `response_mask` (B, T) and `label` (B,), 1 desirable,
  0 undesirable."""
  c = canonical(dataset, prompt_len, response_len, pad_id)
  return {'tokens': c['chosen_tokens'], 'attention_mask': c['chosen_attention_mask'],
          'response_mask': c['chosen_response_mask'], 'label': c['chosen_score']}


def _summed_logps(model, tokens_BxT, attention_mask_BxT, response_mask_BxT, prompt_len):
  return sequence_logprobs(model, tokens_BxT, attention_mask_BxT, response_mask_BxT,
                           response_start=prompt_len).sum(-1)


def _mismatched(x_BxT: jax.Array, prompt_len: int) -> jax.Array:
  """Prompt i with the completion of example i + 1 (mod B): the pairs (x_i, y_j≠i) KTO's
  reference point is estimated on."""
  return jnp.concatenate([x_BxT[:, :prompt_len], jnp.roll(x_BxT[:, prompt_len:], -1, axis=0)], 1)


@functools.partial(jax.jit, static_argnames=('graphdef', 'prompt_len'))
def _ref_logps_batch(graphdef, ref_params, batch, prompt_len):
  return _summed_logps(nnx.merge(graphdef, ref_params), batch['tokens'], batch['attention_mask'],
                       batch['response_mask'], prompt_len)


def unpaired_reference_logps(graphdef, ref_params, examples: dict, *, prompt_len: int,
                             batch_size: int = 64) -> dict:
  """`examples` plus `ref_logps` (B,): log π_ref(y|x) of each, computed once."""
  keys = ('tokens', 'attention_mask', 'response_mask')
  out = []
  for idx, n_real in fixed_batches(len(examples['tokens']), batch_size):
    batch = {k: jnp.asarray(examples[k][idx]) for k in keys}
    out.append(np.asarray(_ref_logps_batch(graphdef, ref_params, batch, prompt_len))[:n_real])
  return {**examples, 'ref_logps': np.concatenate(out).astype(np.float32)}


def make_unpaired_kto_loss_fn(graphdef, *, prompt_len: int):
  """`loss_fn(params, batch, hparams) -> (loss_sum, metrics)` of KTO on unpaired examples
  (Ethayarajh et al. 2024, arXiv 2402.01306, Eq. 8): each example is one desirable or one
  undesirable completion, not a side of a pair. `losses.preference.kto` gets the batch in both
  its slots, the desirable ones marked in the first and the undesirable in the second, so
  `count` is the number of examples. The reference point z_ref is the batch's mismatched
  pairs' mean log-ratio (π's forward on them carries no gradient: z_ref is detached), under
  `hparams['ref_params']` (the method's `ref_per_batch`)."""

  def loss_fn(params, batch, hparams):
    model = nnx.merge(graphdef, params)
    frozen = nnx.merge(graphdef, jax.lax.stop_gradient(params))
    ref_model = nnx.merge(graphdef, jax.lax.stop_gradient(hparams['ref_params']))
    tokens, attn, resp = batch['tokens'], batch['attention_mask'], batch['response_mask']
    kl_rows = [_mismatched(x, prompt_len) for x in (tokens, attn, resp)]
    policy_B = _summed_logps(model, tokens, attn, resp, prompt_len)
    desirable_B = batch['label'].astype(jnp.float32)
    _, metrics = kto(
        policy_chosen_logps=policy_B, policy_rejected_logps=policy_B,
        ref_chosen_logps=batch['ref_logps'], ref_rejected_logps=batch['ref_logps'],
        beta=hparams['beta'], example_mask=batch.get('example_mask'),
        kl_policy_logps=_summed_logps(frozen, *kl_rows, prompt_len),
        kl_ref_logps=_summed_logps(ref_model, *kl_rows, prompt_len),
        chosen_example_mask=desirable_B, rejected_example_mask=1.0 - desirable_B,
        **{k: hparams[k] for k in ('desirable_weight', 'undesirable_weight') if k in hparams})
    return metrics['loss_sum'], metrics

  return loss_fn


def model_config(cfg: Config, tok: Tokenizer) -> ModelConfig:
  m = cfg.model
  # The LM never emits <pad> or <bos>: its distributions are over what it may produce.
  return ModelConfig(vocab_size=tok.vocab_size, max_seq_len=m.max_seq_len, d_model=m.d_model,
                     n_layers=m.n_layers, n_heads=m.n_heads, d_ff=m.d_ff,
                     masked_output_ids=tuple(sorted({tok.pad_id, tok.bos_id})))


def _init_lm(mcfg: ModelConfig, mesh, seed: int):
  return sharding.init_params(lambda rngs: CausalLM(mcfg, rngs=rngs), mesh, jax.random.key(seed))


def _build_sft(cfg: Config, mcfg: ModelConfig, data, key: dict, mesh, progress: bool, out: Path,
               work: Path) -> None:
  """π_ref: next-token NLL of the chosen responses given their prompts (TRL's recipe before
  DPO when no SFT model exists: fine-tune on the preferred completions)."""
  graphdef, params = _init_lm(mcfg, mesh, cfg.sft.seed)
  optimizer = cfg.sft.optimizer
  if optimizer.schedule != 'constant' and not optimizer.total_steps:
    optimizer = dataclasses.replace(optimizer, total_steps=cfg.sft.steps)
  state = fit(sft.make_loss_fn(graphdef, response_start=data['prompt_len']), params,
              lambda step: sft.chosen_as_sft(data['batch_at'](step)), optimizer=optimizer,
              n_steps=cfg.sft.steps, run_dir=work, config=key, mesh=mesh, seed=cfg.sft.seed,
              save_every=cfg.sft.save_every, desc='SFT π_ref', progress=progress)
  stages.save_params(out / 'params', state['params'], key)
  stages.copy_logs(work, out / 'run')


def reference_policy(cfg: Config, tok: Tokenizer, pairs_dir: Path, meta: dict, mesh,
                     progress: bool):
  """(model config, graphdef, params, description, from_cache) of π_ref."""
  mcfg = model_config(cfg, tok)
  key = {'version': STAGE_VERSION, 'pairs': pairs_dir.name, 'model': to_dict(mcfg),
         'sft': to_dict(cfg.sft)}
  p, r = meta['prompt_len'], meta['response_len']
  train = grain_source(pairs_dir, 'train')
  bs = min(cfg.sft.batch_size, len(train))
  data = {'prompt_len': p, 'batch_at': batches(train, bs, cfg.sft.seed, p, r, tok.pad_id)}
  path, cached = stages.cached_stage(
      'preference_file_sft', key,
      functools.partial(_build_sft, cfg, mcfg, data, key, mesh, progress))
  graphdef, like = _init_lm(mcfg, mesh, cfg.sft.seed)
  return (mcfg, graphdef, stages.restore_params(path / 'params', like, key),
          {'sft': str(path)}, cached)


def _hf_fingerprint(directory: Path) -> str:
  """What a checkpoint directory's stages are keyed by: its files' names, sizes and mtimes."""
  files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()
                 if p.is_file())
  return pfd.text_sha256(json.dumps(files))


def _build_reward_model(rc: RewardModelConfig, env: dict, pairs_name: str, key: dict, out: Path,
                        work: Path) -> None:
  """Bradley–Terry RM on `env[pairs_name]` from π_ref's backbone; keeps the params of the best
  held-out accuracy."""
  graphdef, params, metrics = rm.train_best(
      env['model_cfg'], env['ref_params'], env[pairs_name], env['heldout_pairs'], rc,
      mesh=env['mesh'], work=work, config=key, progress=env['progress'])
  stages.copy_logs(work, out / 'run')
  if rc.normalize:
    # π_ref's samples on train prompts, in batches of the evaluation's shape: the sampler
    # compiled for the evaluation serves here too.
    pool_tokens, pool_mask = env['train_prompts']
    rows = env['eval_rows']
    scores = []
    for b in range(-(-rc.n_normalize_prompts // rows)):
      idx = np.arange(b * rows, (b + 1) * rows) % len(pool_tokens)
      out_b = sample(env['graphdef'], env['ref_params'], jnp.asarray(pool_tokens[idx]),
                     jnp.asarray(pool_mask[idx]), jax.random.fold_in(jax.random.key(rc.seed + 1), b),
                     env['rl_sampling'])
      scores.append(np.asarray(rm.score(graphdef, params, out_b.tokens, out_b.attention_mask)))
    scores_N = np.concatenate(scores)
    params = rm.normalize(params, scores_N)
    metrics.update(raw_ref_mean=float(scores_N.mean()), raw_ref_std=float(scores_N.std()))
  stages.save_params(out / 'params', params, key)
  (out / 'metrics.json').write_text(json.dumps(metrics, indent=2))


# ---------------------------------------------------------------------------------------------
# The env


def _distinct_prompts(pairs: dict, prompt_len: int) -> tuple[np.ndarray, np.ndarray]:
  """The distinct left-padded prompts of canonical pairs, in order of first appearance."""
  tokens = pairs['chosen_tokens'][:, :prompt_len]
  mask = pairs['chosen_attention_mask'][:, :prompt_len]
  _, first = np.unique(np.concatenate([tokens, mask], 1), axis=0, return_index=True)
  keep = np.sort(first)
  return tokens[keep], mask[keep]


def _describe(path: Path, fmt: str, meta: dict, template_source: str) -> str:
  """The one line that states what was read and what was cut."""
  c, t = meta['counts'], meta['key']['truncation']
  parts = [f'{path}: {fmt} format' + (f' (rendered with {template_source})'
                                      if fmt == 'conversational' else ''),
           f'{c["rows"]} rows → {c["train_pairs"]} train / {c["judge_pairs"]} judge / '
           f'{c["test_pairs"]} test pairs',
           f'{c["bad_rows"] + c["bad_after_truncation"]} bad rows skipped']
  if 'kto_unpaired_rows' in c:
    parts.append(f'KTO trains on {c["unpaired_desirable"]} desirable + '
                 f'{c["unpaired_undesirable"]} undesirable unpaired examples '
                 f'({c["kto_unpaired_rows"]} rows have no counterpart to pair with)')
  parts.append(f'truncation (prompts keep their last {t["max_prompt_tokens"]} tokens, responses '
               f'their first {t["max_response_tokens"]}): {c["truncated_rows"]} rows cut '
               f'({c["truncated_prompts"]} prompts, {c["truncated_chosen"]} chosen, '
               f'{c["truncated_rejected"]} rejected)')
  parts.append(f'P = {meta["prompt_len"]}, R = {meta["response_len"]} tokens')
  return '; '.join(parts)


def setup(cfg: Config, *, mesh, progress: bool = True, log=print) -> dict:
  """The converted pairs, π_ref and (on first need) the reward model; the task's env."""
  cfg.validate()
  hf_dir = Path(cfg.model.hf_path).expanduser() if cfg.model.hf_path else None
  if hf_dir is not None:
    mcfg, graphdef, ref_params, tok = hf.load_pretrained(hf_dir, mesh=mesh)
    if tok is None:
      raise ConfigError(f'task.model.hf_path={hf_dir} has no tokenizer.json: alignlab tokenizes '
                        "the file with the checkpoint's own tokenizer")
    template = pfd.chat_template_of(hf_dir)
    names = tok.special_token_names()
    render = pfd.chat_renderer(template, bos_token=names['bos'] or '',
                               eos_token=names['eos'] or '')
  else:
    mcfg = graphdef = ref_params = template = None
    render = pfd.chat_renderer(None)  # alignlab's template writes no special token
  max_len = mcfg.max_seq_len if mcfg is not None else cfg.model.max_seq_len
  d = cfg.data
  if d.max_prompt_tokens + d.max_response_tokens > max_len:
    raise ConfigError(f'task.data.max_prompt_tokens={d.max_prompt_tokens} + '
                      f'task.data.max_response_tokens={d.max_response_tokens} exceed the '
                      f"model's max_seq_len={max_len}")
  parsed = functools.cache(lambda: parse(cfg, render, log))
  sha = file_fingerprint(cfg)
  if hf_dir is None:
    # Trained on the train split's text only: the split settings key it beside the content.
    tok = load_or_train_tokenizer(
        cfg.tokenizer, lambda: [t for r in parsed()[1] if r['split'] != 'test'
                                for t in (r['prompt'], r['chosen'], r['rejected'])],
        f'{sha}|{config_hash(split_key(cfg))}')
  template_source = (f'the chat template of {hf_dir / "tokenizer_config.json"}' if template
                     else "alignlab's chat template")
  pairs_dir, meta, pairs_cached = pairs_stage(cfg, tok, template, parsed, sha)
  log(_describe(_files(cfg)[0], meta['format'], meta, template_source))
  p, r = meta['prompt_len'], meta['response_len']
  train = canonical(grain_source(pairs_dir, 'train'), p, r, tok.pad_id)
  heldout = canonical(grain_source(pairs_dir, 'test'), p, r, tok.pad_id)
  judge_pairs = canonical(grain_source(pairs_dir, 'judge'), p, r, tok.pad_id)
  if hf_dir is not None:
    policy = {'checkpoint': str(hf_dir.resolve()), 'fingerprint': _hf_fingerprint(hf_dir)}
    stage_paths, ref_cached = {}, True
  else:
    mcfg, graphdef, ref_params, stage_paths, ref_cached = reference_policy(
        cfg, tok, pairs_dir, meta, mesh, progress)
    policy = {'sft': Path(stage_paths['sft']).name}
  arrays = {k: v for k, v in train.items() if k.endswith(('_tokens', '_mask'))}
  pairs = preference.reference_logps(graphdef, ref_params, arrays, prompt_len=p)
  eval_tokens_NxP, eval_mask_NxP = (x[:cfg.n_eval_prompts] for x in _distinct_prompts(heldout, p))
  eval_prompts = [row[m.astype(bool)].tolist() for row, m in zip(eval_tokens_NxP, eval_mask_NxP)]
  n_eval = len(eval_prompts)
  eval_tokens_NxP, eval_mask_NxP = jnp.asarray(eval_tokens_NxP), jnp.asarray(eval_mask_NxP)
  key_eval = jax.random.key(cfg.eval_seed)
  sampling = _sampling(tok, r)
  task_key, eval_key = split_fields(cfg, EVAL_FIELDS)
  env = {'name': 'preference_file', 'mesh': mesh, 'progress': progress, 'tokenizer': tok,
         'model_cfg': mcfg, 'graphdef': graphdef, 'ref_params': ref_params, 'prompt_len': p,
         'pairs': pairs, 'heldout_pairs': heldout, 'judge_pairs': judge_pairs,
         'rl_sampling': sampling,
         'train_prompts': _distinct_prompts(train, p), 'eval_rows': n_eval,
         'run_key': {'policy': policy, 'pairs': pairs_dir.name, 'task': task_key},
         'eval_key': {**eval_key, 'judge': 'held_out_reward_model'},
         'stages': {'pairs': str(pairs_dir), **stage_paths},
         'info': {'format': meta['format'], 'counts': meta['counts'],
                  'prompt_len': p, 'response_len': r, 'chat_template': template_source,
                  'gold_reward': 'the held-out judge: a reward model trained on the judge '
                                 'half of the train prompts, which nothing else sees',
                  'proxy_reward': 'the reward model PPO and Best-of-N optimize (the policies\' '
                                  'half)',
                  'from_cache': {'tokenizer': tok.from_cache if hf_dir is None else True,
                                 'pairs': pairs_cached, 'reference': ref_cached}}}

  def trained_reward_model(role: str, pairs_name: str, rc: RewardModelConfig) -> RewardModel:
    """The Bradley–Terry model of `role` ('reward_model': the proxy, on the policies' pairs;
    'judge': on the judge's), a cached stage built on first need."""
    rm_key = {'version': STAGE_VERSION, 'policy': policy, 'pairs': pairs_dir.name,
              'trained_on': pairs_name, 'rm': to_dict(rc)}
    path, cached = stages.cached_stage(
        f'preference_file_{role}', rm_key,
        functools.partial(_build_reward_model, rc, env, pairs_name, rm_key))
    rm_graphdef, rm_like = sharding.init_params(lambda k: ScalarModel(mcfg, rngs=k), mesh,
                                                jax.random.key(cfg.reward_model.seed))
    metrics = stages.read_json(path / 'metrics.json')
    env['stages'][role] = str(path)
    env['info'][role] = metrics
    env['info']['from_cache'][role] = cached
    if not cached:
      log(f'{role.replace("_", " ")} trained on the {pairs_name.replace("_", " ")}: held-out '
          f'accuracy {metrics["heldout_accuracy"]:.3f} ({path})')
    return RewardModel(rm_graphdef, stages.restore_params(path / 'params', rm_like, rm_key))

  reward_model_ = functools.cache(
      lambda: trained_reward_model('reward_model', 'pairs', cfg.reward_model))
  # Its own data and its own initial head (the next seed): nothing but the recipe is shared.
  judge_ = functools.cache(lambda: trained_reward_model(
      'judge', 'judge_pairs',
      dataclasses.replace(cfg.reward_model, seed=cfg.reward_model.seed + 1)))

  def scorer(model_fn):
    def score(tokens_BxT, attention_mask_BxT, response_mask_BxT=None):
      """The model's score of canonical rows (host NumPy)."""
      del response_mask_BxT
      reward = model_fn()
      return np.asarray(rm.score(reward.graphdef, reward.params, jnp.asarray(tokens_BxT),
                                 jnp.asarray(attention_mask_BxT)))
    return score

  # The proxy is what the RL methods optimize (PPO's reward model, and `gold` for RLOO and
  # GRPO, whose reward is the task's `gold`): no training signal ever comes from the judge.
  score, judge_score = scorer(reward_model_), scorer(judge_)

  def judge_lists(prompts, responses):
    """The judge's score of (prompt, response) token lists, laid out as a pair is."""
    tokens_BxP, mask_BxP = left_pad_prompts(prompts, p, pad_id=tok.pad_id)
    tokens_BxR = np.full((len(responses), r), tok.pad_id, np.int32)
    mask_BxR = np.zeros((len(responses), r), np.int32)
    for i, resp in enumerate(responses):
      tokens_BxR[i, :len(resp)], mask_BxR[i, :len(resp)] = resp, 1
    return judge_score(np.concatenate([tokens_BxP, tokens_BxR], 1),
                       np.concatenate([mask_BxP, mask_BxR], 1))

  @functools.cache
  def heldout_with_ref() -> dict:
    """The held-out pairs with π_ref's log-probs, computed at the first evaluation only."""
    return preference.reference_logps(graphdef, ref_params, heldout, prompt_len=p)

  def evaluate_(params, beta=None):
    """A point: held-out implicit-reward accuracy at β (the method's own, else eval_beta), the
    exact KL on held-out prompts, and the scores of the same samples under the held-out judge
    (`judge_reward` = `gold_reward`, and J_β under it) and the proxy (`proxy_reward`)."""
    point = evaluate.evaluate_sampled(graphdef, params, ref_params, eval_prompts, judge_lists,
                                      key_eval, sampling, cfg.eval_beta, score,
                                      batch_size=n_eval, prompt_len=p)
    point['judge_reward'], point['judge_reward_stderr'] = (point['gold_reward'],
                                                           point['gold_reward_stderr'])
    point.update(evaluate.implicit_reward_accuracy(
        graphdef, params, ref_params, heldout_with_ref(),
        beta=cfg.eval_beta if beta is None else beta, prompt_len=p))
    point['beta'] = cfg.eval_beta
    return point

  @functools.cache
  def reference_scores() -> np.ndarray:
    """The judge's scores of one π_ref sample per held-out prompt, shared by every win rate."""
    return evaluate.gold_of_samples(graphdef, ref_params, eval_prompts, judge_lists,
                                    jax.random.fold_in(key_eval, 1), sampling, n_eval, p)

  def win_rates(params):
    """Against π_ref's samples, judged by the held-out judge."""
    return evaluate.win_rate_vs_reference(
        graphdef, params, ref_params, eval_prompts, judge_lists, jax.random.fold_in(key_eval, 2),
        sampling, temperatures=cfg.win_rate_temperatures, batch_size=n_eval, prompt_len=p,
        reference_scores=reference_scores())

  def best_of_n(n: int):
    """π_ref's samples reranked by the proxy reward model, the kept one scored by the judge
    (Gao et al. 2022's Best-of-N, arXiv 2210.10760 §3.1); its KL is the analytic
    log N − (N − 1)/N bound (Stiennon et al. 2020, arXiv 2009.01325 App. G)."""
    kept, scores_NxK = evaluate.best_of_n_samples(
        graphdef, ref_params, eval_tokens_NxP, eval_mask_NxP, jax.random.fold_in(key_eval, n),
        sampling, n, score)
    judged_N = judge_score(kept.tokens, kept.attention_mask).astype(np.float64)
    kl = math.log(n) - (n - 1) / n
    point = {**evaluate.mean_stderr('gold_reward', judged_N), 'kl': kl, 'kl_stderr': 0.0,
             'kl_k1': kl, 'kl_k3': kl, 'objective': float(judged_N.mean() - cfg.eval_beta * kl),
             'beta': cfg.eval_beta,
             **evaluate.mean_stderr('proxy_reward', scores_NxK.max(-1).astype(np.float64))}
    point.update(judge_reward=point['gold_reward'], judge_reward_stderr=point['gold_reward_stderr'])
    wins = (judged_N > reference_scores()) + 0.5 * (judged_N == reference_scores())
    return point, [{'temperature': 1.0, 'win_rate': float(wins.mean()), 'n': len(wins)}]

  def rl_prompts(seed, k, rollouts):
    pool_tokens, pool_mask = env['train_prompts']
    n_prompts = max(rollouts // k, 1)

    def prompts_fn(step):
      idx = np.random.default_rng([seed, step]).choice(
          len(pool_tokens), n_prompts, replace=len(pool_tokens) < n_prompts)
      return pool_tokens[idx], pool_mask[idx]

    return prompts_fn

  if 'unpaired_desirable' in meta['counts']:
    # A KTO file: the methods with `unpaired` (KTO) train on its rows one by one.
    singles = unpaired_arrays(grain_source(pairs_dir, 'unpaired'), p, r, tok.pad_id)
    env['unpaired'] = {'examples': unpaired_reference_logps(graphdef, ref_params, singles,
                                                            prompt_len=p),
                       'loss_fn': make_unpaired_kto_loss_fn(graphdef, prompt_len=p)}

  # The offline methods' batches are read with grain, their iterators' state checkpointed.
  env['batches'] = GrainBatches
  env.update(evaluate=evaluate_, win_rates=win_rates, best_of_n=best_of_n,
             reward_model=reward_model_, judge=judge_, gold=score, rl_prompts=rl_prompts)
  return env


# No gold reward: the verdict ranks by the held-out judge's score (`judge_reward`; the
# `gold_reward` column holds the same number, see the module docstring), the best point per
# method by J_β under the judge.
VERDICT = ('judge_reward', 'max')
BEST_BY = ('objective', 'max')
PLOTS = ('frontier', 'win_rates')
# The settings evaluation alone reads: a change re-evaluates, any other is another experiment.
EVAL_FIELDS = ('n_eval_prompts', 'eval_beta', 'eval_seed', 'win_rate_temperatures')
