"""Gold rewards: `reward(prompts, responses) -> (n,) float32`, host side.

`prompts` and `responses` are equal-length lists of token-id lists (padding already removed,
e.g. with `alignlab.data.pairs.split_responses`). A reward is any callable with that
signature; `generate_preference_dataset` and evaluation take one.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

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
  (`alignlab.train.classifier`), the alternative gold reward; the DPO paper's sentiment
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
    from alignlab.train.classifier import logits_of_rows, prefix_rows
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
