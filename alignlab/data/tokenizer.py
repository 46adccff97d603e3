"""Byte-level BPE tokenizer (the `tokenizers` library), trained once and cached.

Byte-level BPE (GPT-2's scheme: Radford et al. 2019, "Language Models are Unsupervised
Multitask Learners", §2.2) maps any UTF-8 text to tokens with no unknown token and no
normalization, so `decode(encode(s)) == s` exactly. Special tokens: `<pad>` = 0, `<eos>` = 1,
`<bos>` = 2. Encoding text never produces them: a review that literally contains "<eos>" is
encoded as ordinary bytes.

Any other `tokenizer.json` (a pretrained model's, `alignlab.hf`) loads too: its special tokens
are found by name, from `tokenizer_config.json` when the directory has one, else among the
usual names (`SPECIAL_TOKEN_NAMES`). Without a pad token, `pad_id` is the EOS id: padding is
always masked, so any id serves, and decoding then drops nothing.

The trained tokenizer is stored as `tokenizer.json` under
`$ALIGNLAB_CACHE/tokenizer/<hash of (TokenizerConfig, data fingerprint)>/`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from alignlab.config import to_dict
from alignlab.artifacts import ensure
from alignlab.data.cache import cache_dir

PAD, EOS, BOS = '<pad>', '<eos>', '<bos>'
SPECIAL_TOKENS = (PAD, EOS, BOS)  # ids 0, 1, 2 in this order
FILENAME = 'tokenizer.json'
CONFIG_FILENAME = 'tokenizer_config.json'
# Names the common pretrained tokenizers give their special tokens (GPT-2, Llama 2/3, Qwen2,
# Mistral), tried in order when tokenizer_config.json does not name them.
SPECIAL_TOKEN_NAMES = {
    'eos': (EOS, '<|endoftext|>', '</s>', '<|end_of_text|>', '<|im_end|>', '<|eot_id|>'),
    'bos': (BOS, '<s>', '<|begin_of_text|>'),
    'pad': (PAD, '<|pad|>', '<|finetune_right_pad_id|>'),
}


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  vocab_size: int = 8192  # including the 256 byte symbols and the 3 special tokens
  min_frequency: int = 2
  max_train_docs: int = 0  # train on the first N texts; 0 = all


def _token_name(value) -> str | None:
  """A special token as tokenizer_config.json writes it: a string or {'content': ...}."""
  if isinstance(value, dict):
    value = value.get('content')
  return value if isinstance(value, str) else None


def find_special_ids(tok: tokenizers.Tokenizer, names: dict[str, str | None] | None = None,
                     *, source: str = FILENAME) -> tuple[int, int, int | None]:
  """(eos_id, bos_id, pad_id or None) of `tok`: `names` ({'eos': '</s>', ...}, e.g. from
  tokenizer_config.json) first, then `SPECIAL_TOKEN_NAMES`. A missing BOS is the EOS (as in
  GPT-2, whose one special token is both); a missing EOS is an error."""
  names = names or {}
  found = {}
  for role, candidates in SPECIAL_TOKEN_NAMES.items():
    named = names.get(role)
    if named is not None:
      if tok.token_to_id(named) is None:
        raise ValueError(f'{source}: {role}_token {named!r} is not in the vocabulary')
      found[role] = tok.token_to_id(named)
      continue
    found[role] = next((tok.token_to_id(c) for c in candidates if tok.token_to_id(c) is not None),
                       None)
  if found['eos'] is None:
    raise ValueError(f'{source}: no eos_token (set it in {CONFIG_FILENAME}; looked for '
                     f'{SPECIAL_TOKEN_NAMES["eos"]})')
  bos = found['bos'] if found['bos'] is not None else found['eos']
  return found['eos'], bos, found['pad']


class Tokenizer:
  """Thin wrapper over `tokenizers.Tokenizer` with the alignlab tokenizer interface."""

  def __init__(self, tok: tokenizers.Tokenizer, *, path: Path | None = None, from_cache: bool = False,
               special_tokens: dict[str, str | None] | None = None):
    """`special_tokens`: {'eos': name, 'bos': name, 'pad': name} where the tokenizer's own
    configuration names them (`find_special_ids`)."""
    # Literal "<eos>" etc. in user text must stay text, or round trips would break.
    tok.encode_special_tokens = True
    self._tok = tok
    self.path = path
    self.from_cache = from_cache  # True when load_or_train_tokenizer found it on disk
    self.eos_id, self.bos_id, pad_id = find_special_ids(
        tok, special_tokens, source=str(path) if path else FILENAME)
    # Without a pad token, padding uses the EOS id (it is masked wherever it is padding).
    self.has_pad = pad_id is not None
    self.pad_id = pad_id if self.has_pad else self.eos_id
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    self.fingerprint = hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
    """Text of `ids`. Padding is always dropped; `<eos>`/`<bos>` are rendered as text unless
    `skip_special_tokens`. Decoding does not stop at `<eos>`."""
    return self._tok.decode(self._keep(ids, skip_special_tokens), skip_special_tokens=False)

  def decode_batch(self, batch: Iterable[Iterable[int]], *, skip_special_tokens: bool = False) -> list[str]:
    seqs = [self._keep(ids, skip_special_tokens) for ids in batch]
    return self._tok.decode_batch(seqs, skip_special_tokens=False)

  def save(self, directory: str | Path) -> Path:
    path = Path(directory) / FILENAME
    self._tok.save(str(path))
    return path

  def special_token_names(self) -> dict[str, str | None]:
    """{'eos': ..., 'bos': ..., 'pad': ... or None}: what tokenizer_config.json records."""
    return {'eos': self._tok.id_to_token(self.eos_id), 'bos': self._tok.id_to_token(self.bos_id),
            'pad': self._tok.id_to_token(self.pad_id) if self.has_pad else None}

  @classmethod
  def load(cls, directory: str | Path, *, from_cache: bool = False) -> 'Tokenizer':
    """`directory/tokenizer.json`, with the special-token names of
    `directory/tokenizer_config.json` when there is one (a Hugging Face model directory)."""
    path = Path(directory) / FILENAME
    config_path = Path(directory) / CONFIG_FILENAME
    names = None
    if config_path.is_file():
      try:
        config = json.loads(config_path.read_text())
      except json.JSONDecodeError as e:
        raise ValueError(f'{config_path}: not valid JSON ({e})') from None
      names = {role: _token_name(config.get(f'{role}_token')) for role in ('eos', 'bos', 'pad')}
    return cls(tokenizers.Tokenizer.from_file(str(path)), path=path, from_cache=from_cache,
               special_tokens=names)

  def _keep(self, ids: Iterable[int], skip_special_tokens: bool) -> list[int]:
    pad = (self.pad_id,) if self.has_pad else ()
    drop = pad + (self.eos_id, self.bos_id) if skip_special_tokens else pad
    return [int(i) for i in ids if int(i) not in drop]


def train_tokenizer(cfg: TokenizerConfig, texts: Iterable[str]) -> Tokenizer:
  """Trains a byte-level BPE tokenizer on `texts` (no caching)."""
  texts = list(texts)
  if cfg.max_train_docs:
    texts = texts[:cfg.max_train_docs]
  if not texts:
    raise ValueError('train_tokenizer needs at least one text')
  tok = tokenizers.Tokenizer(models.BPE())
  # No normalizer and no prefix space: that is what makes the round trip exact.
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
      special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  return Tokenizer(tok)


def tokenizer_cache_dir(cfg: TokenizerConfig, data_fingerprint: str) -> Path:
  return cache_dir('tokenizer', {'tokenizer': to_dict(cfg), 'data': data_fingerprint})


def load_or_train_tokenizer(cfg: TokenizerConfig, texts_fn: Callable[[], Iterable[str]],
                            data_fingerprint: str) -> Tokenizer:
  """The cached tokenizer for (`cfg`, `data_fingerprint`), training it on `texts_fn()` on a miss.

  `texts_fn` is only called on a miss. `data_fingerprint` must change whenever the texts
  would; the result's `from_cache` says whether the cache was hit.
  """
  directory = tokenizer_cache_dir(cfg, data_fingerprint)
  built = []

  def build(tmp: Path) -> None:
    tok = train_tokenizer(cfg, texts_fn())
    tok.save(tmp)
    meta = {'config': to_dict(cfg), 'data_fingerprint': data_fingerprint, 'vocab_size': tok.vocab_size}
    (tmp / 'meta.json').write_text(json.dumps(meta, indent=2))
    built.append(True)

  # Verified against its manifest on every use: an altered tokenizer.json would silently
  # re-map every token id of the cached stages built on it.
  ensure(directory, build)
  return Tokenizer.load(directory, from_cache=not built)
