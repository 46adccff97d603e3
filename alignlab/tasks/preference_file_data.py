"""A user's preference file, read, validated, rendered and tokenized: the data half of
`tasks/preference_file.py` (no pipeline glue here).

Files: JSONL (one JSON object a line; a UTF-8 BOM and Windows line endings are accepted) or
Parquet (one row a record; "line" N in messages is its N-th row, counting from 1).

Formats, told from the first row's keys and then required of every row:

    standard          prompt / chosen / rejected strings (TRL's standard preference format)
    implicit_prompt   chosen / rejected strings; the prompt is their longest shared prefix
                      (TRL's `extract_prompt` rule: a space before the first difference goes
                      with the responses)
    hh                Anthropic HH text: chosen / rejected dialogues of "\n\nHuman:" /
                      "\n\nAssistant:" turns; the prompt is everything up to and including the
                      last "\n\nAssistant:", which both sides must share
    conversational    chosen / rejected (and optionally prompt) as lists of {role, content};
                      without a prompt, the prompt is the shared leading messages. Rendered
                      with a chat template (jinja2, as transformers renders it): the
                      checkpoint's `chat_template` from tokenizer_config.json, else
                      `ALIGNLAB_CHAT_TEMPLATE`. A response is the rendering of prompt +
                      response past the rendering of the prompt with the generation prompt.
    kto               prompt / completion / label (unpaired, KTO's format): every row is kept
                      as one unpaired example for KTO (`tokenize_unpaired`); for the methods
                      that need pairs (the DPO family, the reward models) the rows are also
                      paired by prompt (`pair_kto`), every desirable completion of a prompt
                      against every undesirable one; prompts with only one kind give no pair
                      and are counted.

A row may carry a `split` field ('train', or 'test' / 'validation' / 'eval'). The train split
is then cut by prompt into the policies' half ('train') and the held-out judge's ('judge',
`assign_judge_split`). A bad row is
`FILE:LINE: reason`; every bad row is collected and, unless `skip_bad_rows`, the first is
raised (with the count of the others) before anything is written.

Tokens: prompt = <bos> + prompt text (the BOS is not added twice when a chat template already
wrote it), response = response text + <eos> (not added twice either). Truncation, the field's
rule (TRL's `truncation_mode='keep_end'` for prompts): a prompt longer than
`max_prompt_tokens` keeps its <bos> and its last tokens, a response longer than
`max_response_tokens` its first ones (a response cut so has no EOS, like a sample cut at the length limit). Each cut is
counted; a pair whose two responses are equal once cut is a bad row.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from alignlab.config import ConfigError

FORMATS = ('standard', 'implicit_prompt', 'hh', 'conversational', 'kto')
HUMAN, ASSISTANT = '\n\nHuman:', '\n\nAssistant:'
TEST_SPLITS = ('test', 'validation', 'valid', 'eval')
JSONL_SUFFIXES = ('.jsonl', '.json', '.ndjson')
PARQUET_SUFFIXES = ('.parquet', '.pq')
# alignlab's own chat template, used when no checkpoint brings one: one tagged block per
# message, and the assistant tag as the generation prompt.
ALIGNLAB_CHAT_TEMPLATE = (
    '{% for message in messages %}<|{{ message.role }}|>\n{{ message.content }}\n{% endfor %}'
    '{% if add_generation_prompt %}<|assistant|>\n{% endif %}')


class PreferenceFileError(ConfigError):
  """A preference file or row alignlab cannot read: one line, `FILE:LINE: reason`."""


class _BadRow(ValueError):
  """A row's reason; the reader adds the file and the line."""


def file_sha256(path: str | Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def text_sha256(text: str | None) -> str | None:
  return None if text is None else hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Records


def read_records(path: str | Path) -> list[tuple[int, Any]]:
  """[(line, record)] of a JSONL or Parquet file; a line that is not JSON is kept as a
  `_BadRow` in place of its record, so that it is reported with the others."""
  path = Path(path)
  if not path.is_file():
    raise PreferenceFileError(f'{path}: no such file')
  suffix = path.suffix.lower()
  if suffix in PARQUET_SUFFIXES:
    import pyarrow.parquet as pq
    try:
      rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow's errors have no common base worth naming
      raise PreferenceFileError(f'{path}: not a readable Parquet file ({" ".join(str(e).split())})') from None
    if not rows:
      raise PreferenceFileError(f'{path}: empty file (no rows)')
    return [(i + 1, row) for i, row in enumerate(rows)]
  if suffix not in JSONL_SUFFIXES:
    raise PreferenceFileError(f'{path}: unknown file type {suffix!r}; give a JSONL '
                              f'({", ".join(JSONL_SUFFIXES)}) or Parquet '
                              f'({", ".join(PARQUET_SUFFIXES)}) file')
  try:
    text = path.read_bytes().decode('utf-8-sig')  # -sig: a leading BOM is not part of row 1
  except UnicodeDecodeError as e:
    raise PreferenceFileError(f'{path}: not UTF-8 text ({e})') from None
  out = []
  # Split on '\n' only: JSON strings may hold U+2028 and other breaks str.splitlines knows.
  for i, line in enumerate(text.split('\n'), 1):
    line = line.rstrip('\r')
    if not line.strip():
      continue
    try:
      out.append((i, json.loads(line)))
    except json.JSONDecodeError as e:
      out.append((i, _BadRow(f'invalid JSON ({e.msg} at column {e.colno})')))
  if not out:
    raise PreferenceFileError(f'{path}: empty file (no rows)')
  return out


def detect_format(record: Any, where: str) -> str:
  """The format of a file, told from its first row's keys."""
  if not isinstance(record, dict):
    raise PreferenceFileError(f'{where}: expected a JSON object, got {type(record).__name__}')
  keys = set(record)
  if {'prompt', 'completion', 'label'} <= keys:
    return 'kto'
  if {'chosen', 'rejected'} <= keys:
    if isinstance(record['chosen'], list):
      return 'conversational'
    if 'prompt' in keys:
      return 'standard'
    chosen = record['chosen']
    if isinstance(chosen, str) and ASSISTANT in chosen and 'Human:' in chosen:
      return 'hh'
    return 'implicit_prompt'
  raise PreferenceFileError(
      f'{where}: cannot tell the format from the keys {sorted(keys)}; expected '
      'prompt/chosen/rejected, chosen/rejected (implicit prompt, Anthropic HH or '
      'conversational message lists) or prompt/completion/label (KTO)')


def _text(record: dict, key: str) -> str:
  if key not in record or record[key] is None:
    raise _BadRow(f"missing field '{key}'")
  value = record[key]
  if not isinstance(value, str):
    raise _BadRow(f"field '{key}' is not a string (got {type(value).__name__})")
  if not value.strip():
    raise _BadRow(f"field '{key}' is empty")
  return value


def _messages(record: dict, key: str) -> list[dict]:
  if key not in record or record[key] is None:
    raise _BadRow(f"missing field '{key}'")
  value = record[key]
  if isinstance(value, str) and key == 'prompt':  # a plain-text prompt is one user turn
    return [{'role': 'user', 'content': _text(record, key)}]
  if not isinstance(value, list) or not value:
    raise _BadRow(f"field '{key}' is not a non-empty list of {{role, content}} messages")
  for i, m in enumerate(value):
    if not (isinstance(m, dict) and isinstance(m.get('role'), str)
            and isinstance(m.get('content'), str)):
      raise _BadRow(f"field '{key}' message {i}: expected {{role: str, content: str}}, got {m!r:.60}")
  return [{'role': m['role'], 'content': m['content']} for m in value]


def _split_of(record: dict) -> str | None:
  value = record.get('split')
  if value is None:
    return None
  if value == 'train':
    return 'train'
  if value in TEST_SPLITS:
    return 'test'
  raise _BadRow(f"field 'split' is {value!r}; expected 'train' or one of {TEST_SPLITS}")


def _different(chosen, rejected) -> None:
  if chosen == rejected:
    raise _BadRow('chosen and rejected are identical')


def shared_text_prefix(a: str, b: str) -> int:
  """Length of the prompt of an implicit-prompt pair: the shared prefix, less a trailing
  space (it goes with the responses, as in TRL's `extract_prompt`)."""
  n = 0
  for x, y in zip(a, b):
    if x != y:
      break
    n += 1
  if 0 < n < min(len(a), len(b)) and a[n - 1] == ' ':
    n -= 1
  return n


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
  """(prompt, chosen response, rejected response) of an Anthropic HH pair."""
  cut = []
  for key, text in (('chosen', chosen), ('rejected', rejected)):
    at = text.rfind(ASSISTANT)
    if at < 0:
      raise _BadRow(f"field '{key}' has no '\\n\\nAssistant:' turn")
    cut.append(at + len(ASSISTANT))
  prompt = chosen[:cut[0]]
  if rejected[:cut[1]] != prompt:
    raise _BadRow("chosen and rejected differ before their last '\\n\\nAssistant:' (an HH pair "
                  'shares its dialogue up to the last assistant turn)')
  responses = chosen[cut[0]:], rejected[cut[1]:]
  for key, response in zip(('chosen', 'rejected'), responses):
    if not response.strip():
      raise _BadRow(f"field '{key}': the last assistant turn is empty")
  return prompt, responses[0], responses[1]


def _pair(fmt: str, record: dict, render: Callable) -> dict:
  """{prompt, chosen, rejected} texts (and `templated`) of one paired row."""
  if fmt == 'standard':
    prompt, chosen, rejected = (_text(record, k) for k in ('prompt', 'chosen', 'rejected'))
  elif fmt == 'implicit_prompt':
    a, b = _text(record, 'chosen'), _text(record, 'rejected')
    _different(a, b)
    n = shared_text_prefix(a, b)
    if not a[:n].strip():
      raise _BadRow('chosen and rejected share no prefix, so there is no prompt; add a '
                    "'prompt' field")
    prompt, chosen, rejected = a[:n], a[n:], b[n:]
    if not chosen.strip() or not rejected.strip():
      raise _BadRow('one response is a prefix of the other: nothing is left of it past the '
                    'shared prompt')
  elif fmt == 'hh':
    a, b = _text(record, 'chosen'), _text(record, 'rejected')
    _different(a, b)
    prompt, chosen, rejected = split_hh(a, b)
  elif fmt == 'conversational':
    c, r = _messages(record, 'chosen'), _messages(record, 'rejected')
    if 'prompt' in record:
      p = _messages(record, 'prompt')
    else:
      n = 0
      while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
        n += 1
      if n == 0:
        raise _BadRow('chosen and rejected share no leading message, so there is no prompt; '
                      "add a 'prompt' field")
      p, c, r = c[:n], c[n:], r[n:]
    _different(c, r)
    return {'prompt': p, 'chosen': c, 'rejected': r, 'templated': True}
  else:
    raise AssertionError(fmt)
  _different(chosen, rejected)
  return {'prompt': prompt, 'chosen': chosen, 'rejected': rejected, 'templated': False}


def _kto(record: dict) -> dict:
  prompt, completion = _text(record, 'prompt'), _text(record, 'completion')
  label = record.get('label')
  if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and label in (0, 1):
    label = bool(label)
  if not isinstance(label, bool):
    raise _BadRow(f"field 'label' is {label!r}; expected true or false")
  return {'prompt': prompt, 'completion': completion, 'label': label, 'templated': False}


def pair_kto(rows: list[dict]) -> tuple[list[dict], int]:
  """KTO rows paired by prompt (and split): each desirable completion against each
  undesirable one. Returns (pairs, rows that found no counterpart)."""
  groups: dict[tuple, dict] = collections.defaultdict(lambda: {True: [], False: []})
  for row in rows:
    groups[(row['split'], row['prompt'])][row['label']].append(row)
  pairs, unpaired = [], 0
  for (split, prompt), by in groups.items():
    if not by[True] or not by[False]:
      unpaired += len(by[True]) + len(by[False])
      continue
    for good in by[True]:
      for bad in by[False]:
        if good['completion'] == bad['completion']:
          continue
        pairs.append({'prompt': prompt, 'chosen': good['completion'],
                      'rejected': bad['completion'], 'templated': False, 'split': split,
                      'line': good['line']})
  return pairs, unpaired


def _report_bad(bad: list[str], skip: bool, log: Callable, path, fix: str) -> None:
  """Raises the first bad row (one line, with the count of the others) unless `skip`, when
  the count is logged."""
  if bad and not skip:
    more = f' (and {len(bad) - 1} more bad rows)' if len(bad) > 1 else ''
    raise PreferenceFileError(f'{bad[0]}{more}; {fix}, or skip them with --set '
                              'task.data.skip_bad_rows=true')
  if bad:
    log(f'{path}: skipped {len(bad)} bad rows (task.data.skip_bad_rows); the first: {bad[0]}')


def parse_file(path: str | Path, *, skip_bad_rows: bool = False, render: Callable | None = None,
               log: Callable[[str], None] = lambda s: None) -> tuple[str, list[dict], dict]:
  """(format, rows, counts): every row of `path` validated into {prompt, chosen, rejected,
  templated, split, line} (KTO rows: {prompt, completion, label, split, line}, unpaired;
  `pair_kto` pairs them); `render(messages, add_generation_prompt)` renders conversational
  rows. Bad rows raise (the first, with the count of the others) unless `skip_bad_rows`."""
  path = Path(path)
  records = read_records(path)
  first = next(((line, r) for line, r in records if not isinstance(r, _BadRow)), None)
  if first is None:
    raise PreferenceFileError(f'{path}:{records[0][0]}: {records[0][1]} (no row of the file is '
                              'valid JSON)')
  fmt = detect_format(first[1], f'{path}:{first[0]}')
  render = render or chat_renderer(None)
  rows, bad = [], []
  for line, record in records:
    try:
      if isinstance(record, _BadRow):
        raise record
      if not isinstance(record, dict):
        raise _BadRow(f'expected a JSON object, got {type(record).__name__}')
      row = _kto(record) if fmt == 'kto' else _pair(fmt, record, render)
      if row.get('templated'):
        row.update(render_pair(render, row))
      row.update(split=_split_of(record), line=line)
      rows.append(row)
    except _BadRow as e:
      bad.append(f'{path}:{line}: {e}')
  counts = {'rows': len(records), 'bad_rows': len(bad)}
  _report_bad(bad, skip_bad_rows, log, path, 'fix them')
  if not rows:
    raise PreferenceFileError(f'{path}: no valid row in the file ({fmt} format)')
  return fmt, rows, counts


# ---------------------------------------------------------------------------------------------
# Chat templates


def chat_renderer(template: str | None, *, bos_token: str = '', eos_token: str = ''):
  """`render(messages, add_generation_prompt) -> str` with a chat template (the sandboxed
  jinja2 environment and globals transformers renders `chat_template` with)."""
  import jinja2
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise jinja2.TemplateError(message)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  env.globals['raise_exception'] = raise_exception
  compiled = env.from_string(template or ALIGNLAB_CHAT_TEMPLATE)

  def render(messages: list[dict], add_generation_prompt: bool) -> str:
    try:
      return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                             bos_token=bos_token, eos_token=eos_token)
    except jinja2.TemplateError as e:
      raise _BadRow(f'the chat template rejects this conversation ({e})') from None

  return render


def render_pair(render: Callable, row: dict) -> dict:
  """Texts of a conversational pair: the prompt with the generation prompt, and each
  response as the rendering of prompt + response past the prompt's rendering."""
  prompt = render(row['prompt'], True)
  out = {'prompt': prompt}
  for side in ('chosen', 'rejected'):
    full = render(row['prompt'] + row[side], False)
    if not full.startswith(prompt):
      raise _BadRow(f'the chat template renders prompt + {side} with a different start than '
                    'the prompt alone, so the response cannot be cut from it')
    if not full[len(prompt):].strip():
      raise _BadRow(f"field '{side}': the response renders to nothing")
    out[side] = full[len(prompt):]
  if out['chosen'] == out['rejected']:
    raise _BadRow('chosen and rejected render to the same text')
  return out


def chat_template_of(tokenizer_dir: str | Path | None) -> str | None:
  """The `chat_template` of a checkpoint's tokenizer_config.json (None when it has none)."""
  if tokenizer_dir is None:
    return None
  path = Path(tokenizer_dir) / 'tokenizer_config.json'
  if not path.is_file():
    return None
  template = json.loads(path.read_text()).get('chat_template')
  if isinstance(template, list):  # named templates: transformers uses 'default'
    template = next((t.get('template') for t in template if t.get('name') == 'default'), None)
  return template if isinstance(template, str) else None


def special_tokens_of(tokenizer_path: str | Path | None) -> dict[str, int]:
  """{text: id} of the special tokens in a tokenizer.json: a chat template's markup
  (`<|im_start|>`, …) is these tokens, not their letters."""
  if tokenizer_path is None or not Path(tokenizer_path).is_file():
    return {}
  added = json.loads(Path(tokenizer_path).read_text()).get('added_tokens', [])
  return {t['content']: int(t['id']) for t in added if t.get('special')}


# ---------------------------------------------------------------------------------------------
# Tokens


def make_encoder(tok, specials: dict[str, int]) -> Callable[[str, bool], list[int]]:
  """`encode(text, templated)`: user text is encoded as text; a chat template's rendering
  maps its special-token strings to their ids."""
  pattern = (re.compile('|'.join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
             if specials else None)

  def encode(text: str, templated: bool) -> list[int]:
    if not (templated and pattern):
      return tok.encode(text)
    ids, at = [], 0
    for m in pattern.finditer(text):
      ids += tok.encode(text[at:m.start()]) if m.start() > at else []
      ids.append(specials[m.group()])
      at = m.end()
    return ids + (tok.encode(text[at:]) if at < len(text) else [])

  return encode


def _prompt_ids(text, templated: bool, encode: Callable, bos_id: int,
                max_prompt_tokens: int) -> tuple[list[int], bool]:
  """(<bos> + the prompt's ids, cut?): the end of a prompt is what the response follows, so a
  long one keeps its last tokens, with the <bos> still its first."""
  ids = encode(text, templated)
  if not ids or ids[0] != bos_id:
    ids = [bos_id] + ids
  if len(ids) <= max_prompt_tokens:
    return ids, False
  return [bos_id] + ids[len(ids) - max_prompt_tokens + 1:], True


def _response_ids(text, templated: bool, encode: Callable, eos_id: int,
                  max_response_tokens: int) -> tuple[list[int], bool]:
  """(the response's ids + <eos>, cut?): a long response keeps its first tokens."""
  ids = encode(text, templated)
  if eos_id not in ids:
    ids = ids + [eos_id]
  if len(ids) <= max_response_tokens:
    return ids, False
  return ids[:max_response_tokens], True


def tokenize_rows(rows: Sequence[dict], encode: Callable, *, bos_id: int, eos_id: int,
                  max_prompt_tokens: int, max_response_tokens: int, path: str,
                  skip_bad_rows: bool = False,
                  log: Callable[[str], None] = lambda s: None) -> tuple[list[dict], dict]:
  """(examples for `data.preference.write_pairs` with their `split`, truncation counts)."""
  counts = collections.Counter()
  examples, bad = [], []
  for row in rows:
    prompt, cut = _prompt_ids(row['prompt'], row['templated'], encode, bos_id, max_prompt_tokens)
    counts['truncated_prompts'] += int(cut)
    sides = {}
    for side in ('chosen', 'rejected'):
      sides[side], side_cut = _response_ids(row[side], row['templated'], encode, eos_id,
                                            max_response_tokens)
      counts[f'truncated_{side}'] += int(side_cut)
      cut = cut or side_cut
    if sides['chosen'] == sides['rejected']:
      bad.append(f'{path}:{row["line"]}: chosen and rejected are the same in their first '
                 f'{max_response_tokens} tokens (task.data.max_response_tokens): truncation '
                 'cannot keep them apart')
      continue
    counts['truncated_rows'] += int(cut)
    examples.append({'prompt': prompt, **sides, 'chosen_score': 1.0, 'rejected_score': 0.0,
                     'split': row['split']})
  _report_bad(bad, skip_bad_rows, log, path, 'raise task.data.max_response_tokens')
  stats = {k: int(counts[k]) for k in ('truncated_rows', 'truncated_prompts', 'truncated_chosen',
                                       'truncated_rejected')}
  stats['bad_after_truncation'] = len(bad)
  return examples, stats


def tokenize_unpaired(rows: Sequence[dict], encode: Callable, *, bos_id: int, eos_id: int,
                      max_prompt_tokens: int, max_response_tokens: int) -> tuple[list[dict], int]:
  """(examples, rows cut) of unpaired KTO rows, stored in the pair schema of
  `data.preference`: `chosen` holds the completion, `chosen_score` its label (1 desirable,
  0 undesirable), `rejected` is empty. Truncated by the rule of `tokenize_rows`."""
  examples, cut_rows = [], 0
  for row in rows:
    prompt, cut = _prompt_ids(row['prompt'], False, encode, bos_id, max_prompt_tokens)
    completion, response_cut = _response_ids(row['completion'], False, encode, eos_id,
                                             max_response_tokens)
    cut_rows += int(cut or response_cut)
    examples.append({'prompt': prompt, 'chosen': completion, 'rejected': [],
                     'chosen_score': float(row['label']), 'rejected_score': 0.0,
                     'split': row['split']})
  return examples, cut_rows


def assign_judge_split(rows: list[dict], *, fraction: float, seed: int, path: str) -> None:
  """Moves a seeded `fraction` of the train split's distinct prompts to the split 'judge':
  the data of the held-out judge, a second reward model no policy and no proxy reward model
  sees (the gold/proxy split of Gao et al. 2022, arXiv 2210.10760 §2, here with both reward
  models trained on disjoint halves of the same human data). By prompt, so that no prompt is
  on both sides."""
  prompts = sorted({_prompt_key(r) for r in rows if r['split'] == 'train'})
  if len(prompts) < 2:
    raise PreferenceFileError(f'{path}: {len(prompts)} distinct train prompt(s) cannot be split '
                              'between the policies and the held-out judge')
  n_judge = min(max(1, int(round(len(prompts) * fraction))), len(prompts) - 1)
  # Another stream than the test split's (`assign_splits`), so the two cuts are independent.
  rng = np.random.default_rng([seed, 1])
  judge = {prompts[i] for i in rng.permutation(len(prompts))[:n_judge]}
  for r in rows:
    if r['split'] == 'train' and _prompt_key(r) in judge:
      r['split'] = 'judge'


def assign_splits(rows: list[dict], *, heldout_fraction: float, seed: int, path: str) -> None:
  """Fills `split` where the file gave none: when no row has one, a seeded `heldout_fraction`
  of the distinct prompts is held out (no prompt on both sides); else unmarked rows train."""
  if any(r['split'] is not None for r in rows):
    for r in rows:
      r['split'] = r['split'] or 'train'
  else:
    prompts = sorted({_prompt_key(r) for r in rows})
    rng = np.random.default_rng(seed)
    n_held = max(1, int(round(len(prompts) * heldout_fraction)))
    if len(prompts) < 2:
      raise PreferenceFileError(f'{path}: one distinct prompt cannot be split into train and '
                                'test; give task.data.test_path or a split column')
    held = {prompts[i] for i in rng.permutation(len(prompts))[:min(n_held, len(prompts) - 1)]}
    for r in rows:
      r['split'] = 'test' if _prompt_key(r) in held else 'train'
  for split in ('train', 'test'):
    if not any(r['split'] == split for r in rows):
      raise PreferenceFileError(f'{path}: no {split} pairs (check the split column, '
                                'task.data.test_path or task.data.heldout_fraction)')


def _prompt_key(row: dict) -> str:
  return json.dumps(row['prompt'], sort_keys=True) if not isinstance(row['prompt'], str) else row['prompt']
