from __future__ import annotations

import json
import math

import numpy as np
import pytest

from alignlab.data import jsonl
from alignlab.data.jsonl import DataError, TruncationConfig, import_jsonl
from alignlab.data.preference import read_pairs
from alignlab.data.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

CORPUS = ['The movie was great and the acting was wonderful.', 'What is the capital of France?',
          'Paris is the capital of France.', 'I hated this boring film.', 'user assistant system']


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
  monkeypatch.setenv('ALIGNLAB_CACHE', str(tmp_path / 'cache'))
  return tmp_path / 'cache'


@pytest.fixture(scope='module')
def tok() -> Tokenizer:
  return train_tokenizer(TokenizerConfig(vocab_size=320, min_frequency=1), CORPUS * 3)


def _write(tmp_path, records, name='prefs.jsonl'):
  path = tmp_path / name
  path.write_text(''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in records), encoding='utf-8')
  return path


def _decoded(tok, path):
  source = read_pairs(path)
  return [{k: tok.decode(source[i][k], skip_special_tokens=True) for k in ('prompt', 'chosen', 'rejected')}
          for i in range(len(source))], [source[i] for i in range(len(source))]


def test_text_form(tmp_path, tok):
  path = _write(tmp_path, [
      {'prompt': 'Review: ', 'chosen': 'great movie', 'rejected': 'boring film'},
      '',
      {'prompt': 'Q: capital of France?', 'chosen': ' Paris.', 'rejected': ' Lyon.', 'chosen_score': 1, 'rejected_score': -0.5}])
  result = import_jsonl(path, tok)
  assert not result.from_cache and result.stats.num_examples == 2 and result.stats.num_truncated == 0
  texts, raw = _decoded(tok, result.path)
  assert texts[0] == {'prompt': 'Review: ', 'chosen': 'great movie', 'rejected': 'boring film'}
  assert texts[1]['chosen'] == ' Paris.'
  for e in raw:
    assert e['prompt'][0] == tok.bos_id and e['chosen'][-1] == tok.eos_id and e['rejected'][-1] == tok.eos_id
  assert math.isnan(raw[0]['chosen_score']) and raw[1]['chosen_score'] == 1.0 and raw[1]['rejected_score'] == -0.5
  again = import_jsonl(path, tok)
  assert again.from_cache and again.path == result.path and again.stats == result.stats


def test_conversational_forms_agree(tmp_path, tok):
  user = {'role': 'user', 'content': 'What is the capital of France?'}
  good = {'role': 'assistant', 'content': 'Paris.'}
  bad = {'role': 'assistant', 'content': 'Lyon.'}
  system = {'role': 'system', 'content': 'Be brief.'}
  records = [
      {'prompt': [system, user], 'chosen': [good], 'rejected': [bad]},  # continuations
      {'prompt': [system, user], 'chosen': [system, user, good], 'rejected': [system, user, bad]},  # full
      {'chosen': [system, user, good], 'rejected': [system, user, bad]},  # HF form, no prompt
  ]
  result = import_jsonl(_write(tmp_path, records), tok)
  texts, _ = _decoded(tok, result.path)
  want_prompt = '<|system|>\nBe brief.\n<|user|>\nWhat is the capital of France?\n<|assistant|>\n'
  assert texts[0] == {'prompt': want_prompt, 'chosen': 'Paris.', 'rejected': 'Lyon.'}
  assert texts[1] == texts[0] and texts[2] == texts[0]


def test_multi_turn_shared_prefix(tmp_path, tok):
  turns = [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'},
           {'role': 'user', 'content': 'A film?'}]
  record = {'chosen': turns + [{'role': 'assistant', 'content': 'Great movie.'}, {'role': 'user', 'content': 'Thanks'}],
            'rejected': turns + [{'role': 'assistant', 'content': 'No.'}]}
  texts, _ = _decoded(tok, import_jsonl(_write(tmp_path, [record]), tok).path)
  assert texts[0]['prompt'] == '<|user|>\nHi\n<|assistant|>\nHello!\n<|user|>\nA film?\n<|assistant|>\n'
  assert texts[0]['chosen'] == 'Great movie.\n<|user|>\nThanks' and texts[0]['rejected'] == 'No.'


def test_truncation_keeps_prompt_end_and_response_start(tmp_path, tok):
  long_prompt = 'What is the capital of France? ' * 5 + 'END'
  records = [{'prompt': long_prompt, 'chosen': 'great movie ' * 10, 'rejected': 'ok'},
             {'prompt': 'short', 'chosen': 'ok', 'rejected': 'hated this boring film ' * 10},
             {'prompt': 'short', 'chosen': 'ok', 'rejected': 'fine'}]
  cfg = TruncationConfig(max_prompt_tokens=6, max_response_tokens=5)
  result = import_jsonl(_write(tmp_path, records), tok, cfg)
  s = result.stats
  assert (s.num_examples, s.num_truncated, s.num_truncated_prompts, s.num_truncated_chosen,
          s.num_truncated_rejected) == (3, 2, 1, 1, 1)
  _, raw = _decoded(tok, result.path)
  p_ids = tok.encode(long_prompt)
  np.testing.assert_array_equal(raw[0]['prompt'], [tok.bos_id] + p_ids[-5:])
  np.testing.assert_array_equal(raw[0]['chosen'], tok.encode('great movie ' * 10)[:5])  # no <eos>: cut
  np.testing.assert_array_equal(raw[0]['rejected'], tok.encode('ok') + [tok.eos_id])
  assert all(len(e['prompt']) <= 6 and len(e['chosen']) <= 5 and len(e['rejected']) <= 5 for e in raw)
  other = import_jsonl(_write(tmp_path, records), tok, TruncationConfig(max_prompt_tokens=512, max_response_tokens=512))
  assert other.path != result.path and other.stats.num_truncated == 0


OK = {'prompt': 'p', 'chosen': 'c', 'rejected': 'r'}
BAD_LINES = {
    'malformed': ('{"prompt": "p", "chosen": "c", "rejected": ', 'malformed JSON'),
    'not_object': ('["p", "c", "r"]', 'expected a JSON object'),
    'missing_prompt': (json.dumps({'chosen': 'c', 'rejected': 'r'}), "missing field 'prompt'"),
    'missing_rejected': (json.dumps({'prompt': 'p', 'chosen': 'c'}), "missing field 'rejected'"),
    'empty_chosen': (json.dumps({'prompt': 'p', 'chosen': '  ', 'rejected': 'r'}), "'chosen' is empty"),
    'empty_messages': (json.dumps({'prompt': [], 'chosen': [], 'rejected': []}), 'is empty'),
    'wrong_type': (json.dumps({'prompt': 'p', 'chosen': 3, 'rejected': 'r'}), 'must both be strings'),
    'prompt_type': (json.dumps({'prompt': ['p'], 'chosen': 'c', 'rejected': 'r'}), "'prompt' must be a string"),
    'message_missing_role': (json.dumps({'prompt': [{'content': 'x'}], 'chosen': [{'role': 'assistant', 'content': 'c'}],
                                         'rejected': [{'role': 'assistant', 'content': 'r'}]}), "missing 'role'"),
    'response_not_assistant': (json.dumps({'prompt': [{'role': 'user', 'content': 'x'}],
                                           'chosen': [{'role': 'user', 'content': 'c'}],
                                           'rejected': [{'role': 'assistant', 'content': 'r'}]}), 'assistant message'),
    'bad_score': (json.dumps({**OK, 'chosen_score': 'high'}), "'chosen_score' must be a number"),
}


@pytest.mark.parametrize('case', sorted(BAD_LINES))
def test_bad_line_names_file_and_line_and_leaves_no_cache(tmp_path, tok, cache_root, case):
  line, message = BAD_LINES[case]
  path = _write(tmp_path, [OK, '', line, OK], name=f'{case}.jsonl')
  with pytest.raises(DataError, match=message) as info:
    import_jsonl(path, tok)
  assert f'{path}:3:' in str(info.value)
  assert not cache_root.exists() or not any(cache_root.rglob('*'))


def test_non_utf8_bytes(tmp_path, tok, cache_root):
  path = tmp_path / 'latin1.jsonl'
  path.write_bytes(json.dumps(OK).encode() + b'\n' + '{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}'.encode('latin-1') + b'\n')
  with pytest.raises(DataError, match='UTF-8') as info:
    import_jsonl(path, tok)
  assert f'{path}:2:' in str(info.value)
  assert not cache_root.exists() or not any(cache_root.rglob('*'))


def test_empty_file(tmp_path, tok):
  with pytest.raises(DataError, match='no examples'):
    import_jsonl(_write(tmp_path, ['', '  ']), tok)


def test_render_template():
  msgs = [{'role': 'user', 'content': 'Hi'}]
  assert jsonl.render_prompt(msgs) == '<|user|>\nHi\n<|assistant|>\n'
  assert jsonl.render_response([{'role': 'assistant', 'content': 'Yo'}, {'role': 'user', 'content': 'Ok'}]) == 'Yo\n<|user|>\nOk'
