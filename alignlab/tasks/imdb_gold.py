"""The IMDb task's gold rewards: VADER (the default) and a sentiment classifier trained on the
real IMDb labels (`--set task.gold=classifier`).

The DPO paper judges IMDb completions with a pretrained sentiment classifier (arXiv
2305.18290 §6.1, reward ≈ p(positive)). We cannot download one, so we train one: the shared
transformer with a scalar head (`ScalarModel`), larger than the policy, fitted by logistic
regression (`losses.reward.logistic`) on the real labels of the train split, and scored on
the held-out test split.

The classifier must judge short texts (a 2–8 token prompt plus a few dozen sampled tokens),
so it trains on review *prefixes*: `<bos>` + the first L tokens of a review, L uniform on
[min_tokens, max_tokens], each train review `copies` times with its own L. A prefix keeps the
review's label; short prefixes are often ambiguous, so the classifier learns calibrated,
not overconfident, probabilities there. Held-out accuracy is reported at several prefix
lengths (`eval_tokens`).

    stage = classifier_stage(ClassifierConfig(), imdb.ImdbConfig(), tok, mesh)
    stage.metrics['heldout_accuracy']  # {'16': ..., '32': ..., '64': ...}
    reward = stage.reward(tok)  # a ClassifierReward: p(positive) of prompt ⊕ response
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignlab import sharding, stages
from alignlab.checkpoint import restore_params, save_params
from alignlab.config import ModelConfig, OptimizerConfig, to_dict
from alignlab.tasks import imdb_data as imdb
from alignlab.data.cache import copy_logs
from alignlab.data.tokenizer import Tokenizer
from alignlab.heads import ScalarModel, last_token_value
from alignlab.losses.reward import logistic
from alignlab.train.batches import ArrayBatches, fixed_batches
from alignlab.train.reward_model import score
from alignlab.train.fit import fit

STAGE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  # vocab_size is replaced by the tokenizer's; max_seq_len must hold <bos> + max_tokens.
  model: ModelConfig = ModelConfig(vocab_size=2048, max_seq_len=65, d_model=128, n_layers=3,
                                   n_heads=4)
  min_tokens: int = 4
  max_tokens: int = 64
  copies: int = 2
  steps: int = 600
  batch_size: int = 64
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3, schedule='cosine',
                                               warmup_steps=50, total_steps=600)
  eval_tokens: tuple[int, ...] = (16, 32, 64)
  seed: int = 0
  save_every: int = 100  # checkpoint interval; an interrupted training resumes from the last one

  def validate(self) -> None:
    if not 1 <= self.min_tokens <= self.max_tokens:
      raise ValueError(f'classifier: need 1 <= min_tokens <= max_tokens, got '
                       f'[{self.min_tokens}, {self.max_tokens}]')
    if self.model.max_seq_len < self.max_tokens + 1:
      raise ValueError(f'classifier: model.max_seq_len={self.model.max_seq_len} cannot hold '
                       f'<bos> + max_tokens={self.max_tokens}')
    if max(self.eval_tokens) > self.max_tokens:
      raise ValueError(f'classifier: eval_tokens {self.eval_tokens} exceed max_tokens={self.max_tokens}')


class ClassifierStage(NamedTuple):
  graphdef: Any
  params: Any
  directory: Path
  metrics: dict
  from_cache: bool

  def reward(self, tok: Tokenizer, *, batch_size: int = 256):
    return ClassifierReward(self.graphdef, self.params, tok, max_seq_len=int(self.metrics['max_seq_len']),
                            batch_size=batch_size)


def prefix_rows(ids: list[list[int]], lengths_N: np.ndarray, *, bos_id: int, pad_id: int,
                width: int) -> tuple[np.ndarray, np.ndarray]:
  """`<bos>` + the first `lengths_N[i]` ids of each row, right-padded to `width`."""
  tokens_NxT = np.full((len(ids), width), pad_id, np.int32)
  mask_NxT = np.zeros((len(ids), width), np.int32)
  for row, (seq, n) in enumerate(zip(ids, lengths_N)):
    seq = [bos_id] + list(seq[:n])
    tokens_NxT[row, :len(seq)] = seq
    mask_NxT[row, :len(seq)] = 1
  return tokens_NxT, mask_NxT


def make_loss_fn(graphdef):

  def loss_fn(params, batch, hparams):
    del hparams
    model = nnx.merge(graphdef, params)
    logits_B = last_token_value(model(batch['tokens'], batch['attention_mask']), batch['attention_mask'])
    _, metrics = logistic(logits=logits_B, labels=batch['labels'], example_mask=batch.get('example_mask'))
    return metrics['loss_sum'], metrics

  return loss_fn


def logits_of_rows(graphdef, params, tokens_NxT: np.ndarray, mask_NxT: np.ndarray, *,
                   batch_size: int = 256) -> np.ndarray:
  """The classifier's logit of every row, (N,) float32, in fixed-shape batches (the last one
  filled with repeats), so any N reuses one compiled scorer."""
  n = len(tokens_NxT)
  out = []
  for idx, n_real in fixed_batches(n, batch_size):
    logits_B = score(graphdef, params, jnp.asarray(tokens_NxT[idx]), jnp.asarray(mask_NxT[idx]))
    out.append(np.asarray(logits_B)[:n_real])
  return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)


def accuracy(graphdef, params, tokens_NxT: np.ndarray, mask_NxT: np.ndarray, labels_N: np.ndarray,
             *, batch_size: int = 256) -> float:
  """Fraction of rows whose logit has the label's sign."""
  logits_N = logits_of_rows(graphdef, params, tokens_NxT, mask_NxT, batch_size=batch_size)
  return float(np.mean((logits_N > 0) == (labels_N > 0)))


def cache_key(cfg: ClassifierConfig, data: imdb.ImdbConfig, tok: Tokenizer) -> dict:
  return {'version': STAGE_VERSION, 'data': imdb.data_fingerprint(data), 'tokenizer': tok.fingerprint,
          'classifier': to_dict(cfg)}


def classifier_stage(cfg: ClassifierConfig, data: imdb.ImdbConfig, tok: Tokenizer, mesh=None, *,
                     progress: bool = True) -> ClassifierStage:
  """Trains (or reads from the cache) the classifier; `metrics['heldout_accuracy']` maps each
  prefix length in `eval_tokens` to the accuracy on the whole test split."""
  cfg.validate()
  mesh = mesh if mesh is not None else sharding.make_mesh()
  model_cfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size)
  key = cache_key(cfg, data, tok)
  graphdef, params = sharding.init_params(lambda rngs: ScalarModel(model_cfg, rngs=rngs), mesh,
                                          jax.random.key(cfg.seed))

  def build(out: Path, work: Path) -> None:  # work: an interrupted training resumes there
    width = cfg.max_tokens + 1
    train = imdb.load_split(data, 'train')
    train_ids = tok.encode_batch(train.texts)
    rng = np.random.default_rng(cfg.seed)
    ids = train_ids * cfg.copies
    lengths_N = rng.integers(cfg.min_tokens, cfg.max_tokens + 1, size=len(ids))
    tokens_NxT, mask_NxT = prefix_rows(ids, lengths_N, bos_id=tok.bos_id, pad_id=tok.pad_id,
                                       width=width)
    labels_N = np.tile(train.labels, cfg.copies).astype(np.float32)
    batches = ArrayBatches({'tokens': tokens_NxT, 'attention_mask': mask_NxT,
                            'labels': labels_N}, cfg.batch_size, seed=cfg.seed)
    test = imdb.load_split(data, 'test')
    test_ids = tok.encode_batch(test.texts)
    state = fit(make_loss_fn(graphdef), params, batches, optimizer=cfg.optimizer,
                n_steps=cfg.steps, run_dir=work, config=key, mesh=mesh, seed=cfg.seed,
                save_every=cfg.save_every, desc='sentiment classifier', progress=progress)
    copy_logs(work, out / 'run')
    heldout = {}
    for n in cfg.eval_tokens:
      tokens, mask = prefix_rows(test_ids, np.full(len(test_ids), n), bos_id=tok.bos_id,
                                 pad_id=tok.pad_id, width=width)
      heldout[str(n)] = accuracy(graphdef, state['params'], tokens, mask, test.labels)
    metrics = {'heldout_accuracy': heldout, 'max_seq_len': width,
               'n_train_rows': int(len(labels_N)), 'n_test_reviews': int(len(test.labels))}
    save_params(out / 'params', state['params'], key)
    (out / 'metrics.json').write_text(json.dumps(metrics, indent=2))

  # Verified against its manifest on every use (`stages.cached_stage`): a truncated or altered
  # entry is rebuilt with a note, never read as a gold reward.
  directory, cached = stages.cached_stage('imdb_classifier', key, build)
  params = restore_params(directory / 'params', params, key)
  metrics = json.loads((directory / 'metrics.json').read_text())
  return ClassifierStage(graphdef, params, directory, metrics, cached)


# ---------------------------------------------------------------------------------------------
# The gold rewards: `reward(prompts, responses) -> (n,) float32` on the host, prompts and
# responses equal-length lists of token-id lists (padding removed).

TokenIds = Sequence[int]


class Reward(Protocol):

  def __call__(self, prompts: Sequence[TokenIds], responses: Sequence[TokenIds]) -> np.ndarray:
    ...


class VaderReward:
  """VADER compound sentiment in [-1, 1] of the decoded prompt + response (Hutto & Gilbert,
  ICWSM 2014). It stands in for the DPO paper's sentiment classifier (arXiv:2305.18290 §6.1)
  with no download: the lexicon ships with `vaderSentiment`.

  Special tokens are dropped before decoding. `include_prompt=False` scores the response alone.
  """

  def __init__(self, tokenizer, *, include_prompt: bool = True):
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    self.tokenizer = tokenizer
    self.include_prompt = include_prompt
    self._analyzer = SentimentIntensityAnalyzer()

  def texts(self, prompts: Sequence[TokenIds], responses: Sequence[TokenIds]) -> list[str]:
    if len(prompts) != len(responses):
      raise ValueError(f'{len(prompts)} prompts but {len(responses)} responses')
    tok = self.tokenizer
    special = {tok.pad_id, tok.bos_id, tok.eos_id}
    # Decode the concatenation: a character whose bytes span the boundary stays intact.
    ids = [[int(t) for t in (list(p) + list(r) if self.include_prompt else r) if int(t) not in special]
           for p, r in zip(prompts, responses)]
    decode_batch = getattr(tok, 'decode_batch', None)  # optional in the tokenizer interface
    return decode_batch(ids) if decode_batch else [tok.decode(seq) for seq in ids]

  def score_texts(self, texts: Sequence[str]) -> np.ndarray:
    return np.asarray([self._analyzer.polarity_scores(t)['compound'] for t in texts], np.float32)

  def __call__(self, prompts: Sequence[TokenIds], responses: Sequence[TokenIds]) -> np.ndarray:
    return self.score_texts(self.texts(prompts, responses))


class ClassifierReward:
  """p(positive) in [0, 1] from the trained IMDb sentiment classifier
  (`classifier_stage` above), the alternative gold reward; the DPO paper's sentiment
  reward is likewise a classifier's probability (arXiv:2305.18290 §6.1).

  The text scored is `<bos>` + the non-special tokens of prompt ⊕ response, the form the
  classifier was trained on; it keeps its first `max_seq_len − 1` tokens. Rows go through the
  jitted scorer in fixed-size batches, so every call reuses one compiled program.
  """

  def __init__(self, graphdef, params, tokenizer, *, max_seq_len: int, batch_size: int = 256):
    self.graphdef, self.params, self.tokenizer = graphdef, params, tokenizer
    self.width = max_seq_len
    self.batch_size = batch_size

  def logits(self, prompts: Sequence[TokenIds], responses: Sequence[TokenIds]) -> np.ndarray:
    if len(prompts) != len(responses):
      raise ValueError(f'{len(prompts)} prompts but {len(responses)} responses')
    tok = self.tokenizer
    special = {tok.pad_id, tok.bos_id, tok.eos_id}
    ids = [[int(t) for t in list(p) + list(r) if int(t) not in special] for p, r in zip(prompts, responses)]
    lengths_N = np.asarray([min(len(seq), self.width - 1) for seq in ids], np.int64)
    tokens_NxT, mask_NxT = prefix_rows(ids, lengths_N, bos_id=tok.bos_id, pad_id=tok.pad_id, width=self.width)
    return logits_of_rows(self.graphdef, self.params, tokens_NxT, mask_NxT, batch_size=self.batch_size)

  def __call__(self, prompts: Sequence[TokenIds], responses: Sequence[TokenIds]) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-self.logits(prompts, responses).astype(np.float64)))).astype(np.float32)
