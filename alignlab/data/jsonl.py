"""Import a user's preference file (JSON Lines) into the preference dataset format.

One JSON object per line (blank lines are skipped), in one of two forms:

- text: `{"prompt": str, "chosen": str, "rejected": str}`; the responses continue the prompt.
- conversational: `prompt`, `chosen`, `rejected` are lists of `{"role": str, "content": str}`
  messages. `chosen`/`rejected` may be the continuations of `prompt`, or full conversations
  that start with the `prompt` messages, and `prompt` may be absent (the common Hugging Face
  form): then the prompt is the longest run of messages the two share from the start. Each
  response must start with an assistant message.

Optional numeric `chosen_score`/`rejected_score` are kept; missing ones are stored as NaN.

Template for conversations (documented so that sampling prompts can be rendered the same):

    prompt   = "".join(f"<|{role}|>\\n{content}\\n" for each prompt message) + "<|assistant|>\\n"
    response = first message's content + "".join(f"\\n<|{role}|>\\n{content}" for the rest)

Tokens: prompt = `<bos>` + ids (if `add_bos`); response = ids + `<eos>` (if `add_eos`).
Truncation keeps a prompt's END (the `<bos>` stays first) and a response's START (a cut
response loses its `<eos>`: it did not end there).

The dataset goes to `$ALIGNLAB_CACHE/jsonl/<hash of file bytes, tokenizer, settings>/`.
Any bad line raises `DataError` naming the file and line, before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from alignlab.config import to_dict
from alignlab.data.cache import cache_dir
from alignlab.data.preference import read_metadata, write_pairs
from alignlab.data.tokenizer import Tokenizer

TEMPLATE_VERSION = 1  # bump when rendering changes, so caches are rebuilt


class DataError(ValueError):
  """A user data file that cannot be imported; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class TruncationConfig:
  max_prompt_tokens: int = 256  # including <bos>
  max_response_tokens: int = 256  # including <eos>


@dataclasses.dataclass(frozen=True)
class TextPair:
  prompt: str
  chosen: str
  rejected: str
  chosen_score: float = math.nan
  rejected_score: float = math.nan


@dataclasses.dataclass(frozen=True)
class ImportStats:
  num_examples: int
  num_truncated: int  # examples with any field truncated
  num_truncated_prompts: int
  num_truncated_chosen: int
  num_truncated_rejected: int


@dataclasses.dataclass(frozen=True)
class ImportResult:
  path: Path  # read it with `read_pairs(path)`
  from_cache: bool
  stats: ImportStats


def render_prompt(messages: Sequence[dict[str, str]]) -> str:
  return ''.join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + '<|assistant|>\n'


def render_response(messages: Sequence[dict[str, str]]) -> str:
  return messages[0]['content'] + ''.join(f"\n<|{m['role']}|>\n{m['content']}" for m in messages[1:])


def read_jsonl(path: str | Path) -> list[TextPair]:
  """Parses and validates every line of `path`; raises `DataError` on the first bad one."""
  path = Path(path)
  pairs = []
  for number, raw in enumerate(path.read_bytes().split(b'\n'), start=1):
    where = f'{path}:{number}'
    try:
      line = raw.decode('utf-8')
    except UnicodeDecodeError as e:
      raise DataError(f'{where}: not valid UTF-8 (byte {e.start} of the line)') from None
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f'{where}: malformed JSON: {e.msg} (column {e.colno})') from None
    pairs.append(parse_record(record, where))
  if not pairs:
    raise DataError(f'{path}: no examples')
  return pairs


def parse_record(record: Any, where: str) -> TextPair:
  if not isinstance(record, dict):
    raise DataError(f'{where}: expected a JSON object, got {type(record).__name__}')
  for name in ('chosen', 'rejected'):
    if name not in record:
      raise DataError(f'{where}: missing field {name!r}')
  chosen, rejected = record['chosen'], record['rejected']
  scores = [_score(record, name, where) for name in ('chosen_score', 'rejected_score')]
  if isinstance(chosen, str) and isinstance(rejected, str):
    if 'prompt' not in record:
      raise DataError(f"{where}: missing field 'prompt'")
    prompt = record['prompt']
    if not isinstance(prompt, str):
      raise DataError(f"{where}: field 'prompt' must be a string like 'chosen', got {type(prompt).__name__}")
    for name, text in (('prompt', prompt), ('chosen', chosen), ('rejected', rejected)):
      if not text.strip():
        raise DataError(f'{where}: field {name!r} is empty')
    return TextPair(prompt, chosen, rejected, *scores)
  if isinstance(chosen, list) and isinstance(rejected, list):
    return _parse_conversation(record, where, scores)
  raise DataError(f"{where}: fields 'chosen' and 'rejected' must both be strings or both be "
                  f'lists of messages, got {type(chosen).__name__} and {type(rejected).__name__}')


def _score(record: dict[str, Any], name: str, where: str) -> float:
  value = record.get(name)
  if value is None:
    return math.nan
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise DataError(f'{where}: field {name!r} must be a number, got {type(value).__name__}')
  return float(value)


def _messages(value: Any, name: str, where: str) -> list[dict[str, str]]:
  if not isinstance(value, list):
    raise DataError(f'{where}: field {name!r} must be a list of messages, got {type(value).__name__}')
  if not value:
    raise DataError(f'{where}: field {name!r} is empty')
  for i, message in enumerate(value):
    if not isinstance(message, dict):
      raise DataError(f'{where}: {name}[{i}] must be an object with role and content')
    for key in ('role', 'content'):
      if key not in message:
        raise DataError(f'{where}: {name}[{i}] is missing {key!r}')
      if not isinstance(message[key], str):
        raise DataError(f'{where}: {name}[{i}].{key} must be a string, got {type(message[key]).__name__}')
    if not message['role'].strip():
      raise DataError(f'{where}: {name}[{i}].role is empty')
  return [{'role': m['role'], 'content': m['content']} for m in value]


def _parse_conversation(record: dict[str, Any], where: str, scores: list[float]) -> TextPair:
  chosen = _messages(record['chosen'], 'chosen', where)
  rejected = _messages(record['rejected'], 'rejected', where)
  if 'prompt' in record:
    prompt = _messages(record['prompt'], 'prompt', where)
    # Full conversations repeat the prompt; continuations do not.
    if chosen[:len(prompt)] == prompt:
      chosen = chosen[len(prompt):]
    if rejected[:len(prompt)] == prompt:
      rejected = rejected[len(prompt):]
  else:
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
      shared += 1
    # Back off to the last non-assistant message, so both responses start with the answer.
    while shared and chosen[shared - 1]['role'] == 'assistant':
      shared -= 1
    if not shared:
      raise DataError(f"{where}: missing field 'prompt', and 'chosen' and 'rejected' share no prompt messages")
    prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
  for name, messages in (('chosen', chosen), ('rejected', rejected)):
    if not messages:
      raise DataError(f'{where}: field {name!r} has no response after the prompt')
    if messages[0]['role'] != 'assistant':
      raise DataError(f"{where}: the {name} response must start with an assistant message, "
                      f"got role {messages[0]['role']!r}")
    if not render_response(messages).strip():
      raise DataError(f'{where}: field {name!r} is empty')
  return TextPair(render_prompt(prompt), render_response(chosen), render_response(rejected), *scores)


def tokenize_pairs(pairs: Sequence[TextPair], tokenizer: Tokenizer, truncation: TruncationConfig, *,
                   add_bos: bool = True, add_eos: bool = True) -> tuple[list[dict[str, Any]], ImportStats]:
  """Preference examples of `pairs`, truncated, and how many were cut."""
  head = [tokenizer.bos_id] if add_bos else []
  tail = [tokenizer.eos_id] if add_eos else []
  if truncation.max_prompt_tokens < len(head) + 1 or truncation.max_response_tokens < 1:
    raise ValueError(f'truncation limits too small: {truncation}')
  keep_prompt = truncation.max_prompt_tokens - len(head)
  prompts = tokenizer.encode_batch([p.prompt for p in pairs])
  chosen = tokenizer.encode_batch([p.chosen for p in pairs])
  rejected = tokenizer.encode_batch([p.rejected for p in pairs])
  examples, cut = [], {'prompt': 0, 'chosen': 0, 'rejected': 0}
  any_cut = 0
  for pair, p_ids, c_ids, r_ids in zip(pairs, prompts, chosen, rejected):
    flags = {'prompt': len(p_ids) > keep_prompt,
             'chosen': len(c_ids) + len(tail) > truncation.max_response_tokens,
             'rejected': len(r_ids) + len(tail) > truncation.max_response_tokens}
    for name, flag in flags.items():
      cut[name] += flag
    any_cut += any(flags.values())
    examples.append({
        'prompt': np.asarray(head + p_ids[len(p_ids) - min(len(p_ids), keep_prompt):], np.int32),
        'chosen': np.asarray((c_ids + tail)[:truncation.max_response_tokens], np.int32),
        'rejected': np.asarray((r_ids + tail)[:truncation.max_response_tokens], np.int32),
        'chosen_score': np.float32(pair.chosen_score), 'rejected_score': np.float32(pair.rejected_score)})
  stats = ImportStats(len(examples), any_cut, cut['prompt'], cut['chosen'], cut['rejected'])
  return examples, stats


def import_jsonl(path: str | Path, tokenizer: Tokenizer, truncation: TruncationConfig = TruncationConfig(),
                 *, add_bos: bool = True, add_eos: bool = True) -> ImportResult:
  """Validates, tokenizes and truncates `path` and writes it as a cached TFDS dataset."""
  path = Path(path)
  key = {'file_sha256': hashlib.sha256(path.read_bytes()).hexdigest(), 'tokenizer': tokenizer.fingerprint,
         'truncation': to_dict(truncation), 'add_bos': add_bos, 'add_eos': add_eos,
         'template': TEMPLATE_VERSION}
  directory = cache_dir('jsonl', key)
  if directory.is_dir():
    return ImportResult(directory, True, ImportStats(**read_metadata(directory)['stats']))
  examples, stats = tokenize_pairs(read_jsonl(path), tokenizer, truncation, add_bos=add_bos, add_eos=add_eos)
  write_pairs(examples, directory, metadata={'source': str(path), 'key': key, 'stats': dataclasses.asdict(stats)})
  return ImportResult(directory, False, stats)
