"""The preference-file task: every format parsed to the same pairs, bad rows as `FILE:LINE:
reason`, truncation counted, the converted pairs cached by the file's content, grain batches
deterministic by seed, and the CLI end to end on a file written here."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import numpy as np
import pandas as pd
import pytest

from alignlab import cli, evaluate
from alignlab.config import ConfigError
from alignlab.data.tokenizer import TokenizerConfig, train_tokenizer
from alignlab.tasks import preference_file as pf
from alignlab.tasks import preference_file_data as pfd

PAIRS = [('Q: name a fruit. A:', ' apple', ' rock'),
         ('Q: name a colour. A:', ' blue', ' seven'),
         ('Q: name an animal. A:', ' cat', ' spoon')]


def _jsonl(path, rows, *, newline='\n', bom=False):
  text = newline.join(json.dumps(r) for r in rows) + newline
  path.write_bytes((b'\xef\xbb\xbf' if bom else b'') + text.encode())
  return path


def _texts(rows):
  return [(r['prompt'], r['chosen'], r['rejected']) for r in rows]


# ---------------------------------------------------------------------------------------------
# Formats


def test_standard_and_implicit_prompt_give_the_same_pairs(tmp_path):
  std = _jsonl(tmp_path / 'std.jsonl', [{'prompt': p, 'chosen': c, 'rejected': r}
                                        for p, c, r in PAIRS])
  implicit = _jsonl(tmp_path / 'imp.jsonl', [{'chosen': p + c, 'rejected': p + r}
                                             for p, c, r in PAIRS])
  fmt, rows, counts = pfd.parse_file(std)
  assert fmt == 'standard' and _texts(rows) == PAIRS and counts['bad_rows'] == 0
  fmt, rows, _ = pfd.parse_file(implicit)
  # The shared prefix is the prompt; the space before the first difference goes with the
  # responses (TRL's extract_prompt).
  assert fmt == 'implicit_prompt' and _texts(rows) == PAIRS
  assert [r['line'] for r in rows] == [1, 2, 3]


def test_bom_and_windows_line_endings_read_as_plain_jsonl(tmp_path):
  path = _jsonl(tmp_path / 'win.jsonl', [{'prompt': p, 'chosen': c, 'rejected': r}
                                         for p, c, r in PAIRS], newline='\r\n', bom=True)
  assert _texts(pfd.parse_file(path)[1]) == PAIRS


def test_anthropic_hh_multi_turn_dialogue_splits_at_the_last_assistant_turn(tmp_path):
  dialogue = ('\n\nHuman: Hi, can you help me bake bread?\n\nAssistant: Of course. What kind?'
              '\n\nHuman: Sourdough, please.\n\nAssistant:')
  path = _jsonl(tmp_path / 'hh.jsonl', [
      {'chosen': dialogue + ' Start with an active starter.',
       'rejected': dialogue + ' I do not know.'}])
  fmt, rows, _ = pfd.parse_file(path)
  assert fmt == 'hh'
  assert rows[0]['prompt'] == dialogue  # the earlier assistant turn stays in the prompt
  assert rows[0]['chosen'] == ' Start with an active starter.'
  assert rows[0]['rejected'] == ' I do not know.'


def test_hh_pair_that_differs_before_its_last_turn_is_a_bad_row(tmp_path):
  path = _jsonl(tmp_path / 'hh.jsonl', [
      {'chosen': '\n\nHuman: a\n\nAssistant: b', 'rejected': '\n\nHuman: a\n\nAssistant: c'},
      {'chosen': '\n\nHuman: x\n\nAssistant: y', 'rejected': '\n\nHuman: z\n\nAssistant: w'}])
  with pytest.raises(pfd.PreferenceFileError, match=r'hh\.jsonl:2: chosen and rejected differ '
                     r"before their last"):
    pfd.parse_file(path)


def test_conversational_rows_render_with_a_chat_template(tmp_path):
  explicit = [{'prompt': [{'role': 'user', 'content': p}],
               'chosen': [{'role': 'assistant', 'content': c}],
               'rejected': [{'role': 'assistant', 'content': r}]} for p, c, r in PAIRS]
  implicit = [{'chosen': [{'role': 'user', 'content': p}, {'role': 'assistant', 'content': c}],
               'rejected': [{'role': 'user', 'content': p}, {'role': 'assistant', 'content': r}]}
              for p, c, r in PAIRS]
  a = pfd.parse_file(_jsonl(tmp_path / 'a.jsonl', explicit))
  b = pfd.parse_file(_jsonl(tmp_path / 'b.jsonl', implicit))
  assert a[0] == b[0] == 'conversational'
  assert _texts(a[1]) == _texts(b[1])
  # alignlab's template: the prompt ends with the generation prompt, the response is the rest.
  assert _texts(a[1])[0] == ('<|user|>\nQ: name a fruit. A:\n<|assistant|>\n', ' apple\n',
                             ' rock\n')
  # A checkpoint's template (ChatML-like, with its special tokens), as tokenizer_config.json
  # carries it.
  (tmp_path / 'ckpt').mkdir()
  template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
  (tmp_path / 'ckpt' / 'tokenizer_config.json').write_text(json.dumps({'chat_template': template}))
  render = pfd.chat_renderer(pfd.chat_template_of(tmp_path / 'ckpt'))
  _, rows, _ = pfd.parse_file(tmp_path / 'a.jsonl', render=render)
  assert rows[0]['prompt'] == '<|im_start|>user\nQ: name a fruit. A:<|im_end|>\n<|im_start|>assistant\n'
  assert rows[0]['chosen'] == ' apple<|im_end|>\n'
  # The template's markup becomes its special tokens; the user's text stays text.
  tok = train_tokenizer(TokenizerConfig(vocab_size=300, min_frequency=1), ['apple rock'])
  encode = pfd.make_encoder(tok, {'<|im_end|>': 7777})
  assert encode(' apple<|im_end|>\n', True) == tok.encode(' apple') + [7777] + tok.encode('\n')
  assert encode(' apple<|im_end|>', False) == tok.encode(' apple<|im_end|>')


def test_kto_rows_stay_unpaired_and_are_also_paired_by_prompt(tmp_path):
  rows = [{'prompt': 'p1', 'completion': 'good', 'label': True},
          {'prompt': 'p1', 'completion': 'bad', 'label': False},
          {'prompt': 'p1', 'completion': 'worse', 'label': 0},
          {'prompt': 'p2', 'completion': 'alone', 'label': True}]
  fmt, singles, counts = pfd.parse_file(_jsonl(tmp_path / 'kto.jsonl', rows))
  assert fmt == 'kto' and counts == {'rows': 4, 'bad_rows': 0}
  # Every row is its own example, the one without a counterpart too.
  assert [(r['prompt'], r['completion'], r['label']) for r in singles] == [
      ('p1', 'good', True), ('p1', 'bad', False), ('p1', 'worse', False), ('p2', 'alone', True)]
  for r in singles:
    r['split'] = 'train'
  pairs, unpaired = pfd.pair_kto(singles)
  assert _texts(pairs) == [('p1', 'good', 'bad'), ('p1', 'good', 'worse')]
  assert unpaired == 1


def test_parquet_reads_like_jsonl_and_wrong_columns_are_named(tmp_path):
  frame = pd.DataFrame([{'prompt': p, 'chosen': c, 'rejected': r} for p, c, r in PAIRS])
  frame.to_parquet(tmp_path / 'pairs.parquet')
  fmt, rows, _ = pfd.parse_file(tmp_path / 'pairs.parquet')
  assert fmt == 'standard' and _texts(rows) == PAIRS
  pd.DataFrame({'question': ['a'], 'answer': ['b']}).to_parquet(tmp_path / 'wrong.parquet')
  with pytest.raises(pfd.PreferenceFileError,
                     match=r"wrong\.parquet:1: cannot tell the format from the keys \['answer', 'question'\]"):
    pfd.parse_file(tmp_path / 'wrong.parquet')


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize('line, reason', [
    ('{"prompt": "a", "chosen": "b", ', r'invalid JSON'),
    ('{"prompt": "a", "rejected": "c"}', r"missing field 'chosen'"),
    ('{"prompt": "a", "chosen": 3, "rejected": "c"}', r"field 'chosen' is not a string \(got int\)"),
    ('{"prompt": "  ", "chosen": "b", "rejected": "c"}', r"field 'prompt' is empty"),
    ('{"prompt": "a", "chosen": "b", "rejected": "b"}', r'chosen and rejected are identical'),
    ('{"prompt": "a", "chosen": "b", "rejected": "c", "split": "dev"}', r"field 'split' is 'dev'"),
])
def test_a_bad_row_is_one_line_naming_file_line_and_key(tmp_path, line, reason):
  good = json.dumps({'prompt': 'x', 'chosen': 'y', 'rejected': 'z'})
  path = tmp_path / 'bad.jsonl'
  path.write_text(f'{good}\n\n{line}\n{good}\n')  # the blank line still counts as line 2
  with pytest.raises(pfd.PreferenceFileError) as e:
    pfd.parse_file(path)
  message = str(e.value)
  assert '\n' not in message
  assert message.startswith(f'{path}:3: ')
  assert pytest.importorskip('re').search(reason, message), message
  assert isinstance(e.value, ConfigError)  # the CLI prints it as one line, exit status 2


def test_skip_bad_rows_counts_them(tmp_path):
  path = tmp_path / 'bad.jsonl'
  path.write_text('{"prompt": "x", "chosen": "y", "rejected": "z"}\nnot json\n'
                  '{"prompt": "x", "chosen": "y"}\n')
  with pytest.raises(pfd.PreferenceFileError, match=r'bad\.jsonl:2: invalid JSON .*\(and 1 more '
                     r'bad rows\).*task\.data\.skip_bad_rows=true'):
    pfd.parse_file(path)
  logged = []
  _, rows, counts = pfd.parse_file(path, skip_bad_rows=True, log=logged.append)
  assert len(rows) == 1 and counts == {'rows': 3, 'bad_rows': 2}
  assert 'skipped 2 bad rows' in logged[0]


def test_empty_file_and_unknown_type(tmp_path):
  (tmp_path / 'empty.jsonl').write_text('\n\n')
  with pytest.raises(pfd.PreferenceFileError, match=r'empty\.jsonl: empty file'):
    pfd.parse_file(tmp_path / 'empty.jsonl')
  (tmp_path / 'pairs.csv').write_text('a,b\n')
  with pytest.raises(pfd.PreferenceFileError, match=r"unknown file type '\.csv'"):
    pfd.parse_file(tmp_path / 'pairs.csv')


# ---------------------------------------------------------------------------------------------
# Truncation


class _Chars:
  """A tokenizer of one id per character (ord), bos 2, eos 1: lengths are easy to count."""
  bos_id, eos_id = 2, 1

  def encode(self, text):
    return [ord(c) for c in text]


def test_truncation_keeps_the_prompt_end_and_the_response_start_and_is_counted():
  rows = [{'prompt': 'abcdefgh', 'chosen': 'XYZW', 'rejected': 'Q', 'templated': False,
           'split': 'train', 'line': 1},
          {'prompt': 'ab', 'chosen': 'X', 'rejected': 'Y', 'templated': False, 'split': 'train',
           'line': 2}]
  encode = pfd.make_encoder(_Chars(), {})
  examples, stats = pfd.tokenize_rows(rows, encode, bos_id=2, eos_id=1, max_prompt_tokens=4,
                                      max_response_tokens=3, path='f.jsonl')
  first = examples[0]
  assert first['prompt'] == [2] + [ord(c) for c in 'fgh']  # <bos> and the last 3 of 8 chars
  assert first['chosen'] == [ord(c) for c in 'XYZ']  # its first 3: the EOS is cut off too
  assert first['rejected'] == [ord('Q'), 1]
  assert examples[1]['prompt'] == [2, ord('a'), ord('b')]
  assert examples[1]['chosen'] == [ord('X'), 1]
  assert stats == {'truncated_rows': 1, 'truncated_prompts': 1, 'truncated_chosen': 1,
                   'truncated_rejected': 0, 'bad_after_truncation': 0}
  same = [{**rows[1], 'chosen': 'XYZa', 'rejected': 'XYZb', 'line': 7}]
  with pytest.raises(pfd.PreferenceFileError,
                     match=r'f\.jsonl:7: chosen and rejected are the same in their first 3 tokens'):
    pfd.tokenize_rows(same, encode, bos_id=2, eos_id=1, max_prompt_tokens=4,
                      max_response_tokens=3, path='f.jsonl')


# ---------------------------------------------------------------------------------------------
# The converted pairs: cached by content, read with grain


def _dataset(path, n=12, tag=''):
  rows = [{'prompt': f'Question {i}{tag}: say yes or no.', 'chosen': ' yes', 'rejected': ' no'}
          for i in range(n)]
  return _jsonl(path, rows)


def _convert(path, **data):
  cfg = pf.Config(data=pf.DataConfig(path=str(path), heldout_fraction=0.25, **data))
  tok = train_tokenizer(TokenizerConfig(vocab_size=300, min_frequency=1), ['Question yes no'])
  render = pfd.chat_renderer(None)
  calls = []

  def parsed():
    calls.append(1)
    return pf.parse(cfg, render, lambda s: None)

  directory, meta, cached = pf.pairs_stage(cfg, tok, None, parsed)
  return directory, meta, cached, calls, tok


def test_converted_pairs_are_cached_by_file_content(tmp_path):
  path = _dataset(tmp_path / 'pairs.jsonl')
  first, meta, cached, calls, _ = _convert(path)
  assert not cached and calls == [1]
  assert meta['format'] == 'standard'
  c = meta['counts']
  assert c['test_pairs'] == 3  # a quarter of the 12 distinct prompts
  assert (c['train_pairs'], c['judge_pairs']) == (5, 4)  # the other 9: round(9 · ½) judge
  assert c['train_pairs'] + c['judge_pairs'] + c['test_pairs'] == 12
  again, _, cached, calls, _ = _convert(path)
  assert again == first and cached and calls == []  # nothing parsed or written again
  path.touch()  # a new mtime, the same bytes
  assert _convert(path)[2]
  _dataset(path, tag='!')  # the same name, other contents
  changed, _, cached, calls, _ = _convert(path)
  assert changed != first and not cached and calls == [1]
  # The truncation settings key the entry too.
  assert _convert(path, max_response_tokens=5)[0] != changed


def test_grain_batches_are_a_deterministic_function_of_seed_and_step(tmp_path):
  directory, meta, _, _, tok = _convert(_dataset(tmp_path / 'pairs.jsonl', n=16))
  source = pf.grain_source(directory, 'train')
  n = len(source)
  p, r = meta['prompt_len'], meta['response_len']
  make = lambda seed: pf.batches(source, 3, seed, p, r, tok.pad_id)
  a, b, other = make(0), make(0), make(1)
  for step in (0, 1, 7, 40):  # a rebuilt pipeline (a resumed stage) sees the same batches
    for key in a(step):
      np.testing.assert_array_equal(a(step)[key], b(step)[key])
  assert any(not np.array_equal(a(s)['chosen_tokens'], other(s)['chosen_tokens']) for s in range(4))
  batch = a(0)
  assert batch['chosen_tokens'].shape == (3, p + r)
  # One epoch visits each example once; the next epoch is another order.
  prompts = lambda step: [tuple(row) for row in a(step)['chosen_tokens'][:, :p]]
  assert n == 6  # 4 of the 16 prompts test, 6 the judge: batches never straddle two epochs
  per_epoch = n // 3
  epoch0 = [x for s in range(per_epoch) for x in prompts(s)]
  epoch1 = [x for s in range(per_epoch, 2 * per_epoch) for x in prompts(s)]
  assert len(set(epoch0)) == len(epoch0) == n and set(epoch1) == set(epoch0)
  assert epoch1 != epoch0
  # The canonical arrays of the whole split: prompts left-padded, responses right-padded.
  arrays = pf.canonical(source, p, r, tok.pad_id)
  assert arrays['chosen_tokens'].shape == (n, p + r)
  assert (arrays['chosen_response_mask'][:, :p] == 0).all()
  assert (arrays['chosen_attention_mask'][:, p - 1] == 1).all()


def test_config_errors_are_named():
  with pytest.raises(ConfigError, match=r'task\.data\.path is not set'):
    pf.Config().validate()
  with pytest.raises(ConfigError, match=r'task\.data\.path=/nope\.jsonl: no such file'):
    pf.Config(data=pf.DataConfig(path='/nope.jsonl')).validate()


# ---------------------------------------------------------------------------------------------
# End to end


def test_cli_runs_dpo_on_an_hh_file(tmp_path):
  rows = []
  for i in range(24):
    dialogue = f'\n\nHuman: Is review {i} kind?\n\nAssistant:'
    # Every fourth chosen response is far past the tiny variant's 16 response tokens.
    long = ''.join(f' word{j}' for j in range(40)) if i % 4 == 0 else ''
    rows.append({'chosen': dialogue + ' Yes, it is kind.' + long, 'rejected': dialogue + ' No.',
                 'split': 'test' if i % 6 == 0 else 'train'})
  path = _jsonl(tmp_path / 'hh.jsonl', rows)
  out = tmp_path / 'out'
  assert cli.main(['run', 'preference_file', '--variant', 'tiny', '--quiet', '--out', str(out),
                   '--set', f'task.data.path={path}', '--set', "methods=('sft','dpo')"]) == 0
  df = pd.read_csv(out / 'results.csv')
  assert set(df['method']) == {'sft', 'dpo'}
  for col in ('kl', 'proxy_reward', 'judge_reward', 'gold_reward', 'implicit_accuracy'):
    assert np.isfinite(df[col].to_numpy(float)).all(), col
  # The points are judged by the held-out judge (gold_reward, said twice), not by the proxy.
  np.testing.assert_array_equal(df['judge_reward'], df['gold_reward'])
  assert not np.allclose(df['proxy_reward'], df['judge_reward'])
  assert (df['kl'] >= -1e-5).all()
  assert (df[df['step'] == 0]['implicit_accuracy'] == 0.5).all()  # π_ref: every pair a tie
  info = json.loads((out / 'stages.json').read_text())['info']
  assert info['format'] == 'hh'
  assert (info['counts']['train_pairs'], info['counts']['judge_pairs'],
          info['counts']['test_pairs']) == (10, 10, 4)
  assert info['judge']['n_train_pairs'] == 10 and info['judge']['n_heldout_pairs'] == 4
  assert info['counts']['truncated_chosen'] == info['counts']['truncated_rows'] == 6
  assert info['response_len'] == 16  # cut to the limit, and every number above is finite
  assert 'judge_reward' in (out / 'summary.md').read_text()


def test_cli_stops_on_a_bad_row_with_one_line(tmp_path, capsys):
  path = tmp_path / 'pairs.jsonl'
  path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                  '{"prompt": "a", "chosen": "b", "rejected": "b"}\n')
  assert cli.main(['run', 'preference_file', '--variant', 'tiny', '--quiet', '--out',
                   str(tmp_path / 'out'), '--set', f'task.data.path={path}']) == 2
  err = capsys.readouterr().err.strip()
  assert err == (f'alignlab: error: {path}:2: chosen and rejected are identical; fix them, or '
                 'skip them with --set task.data.skip_bad_rows=true')


def test_hf_checkpoint_is_pi_ref_and_its_chat_template_renders_the_file(tmp_path):
  import jax

  from alignlab import hf, sharding
  from alignlab.config import MeshConfig, ModelConfig
  from alignlab.heads import CausalLM
  tok = train_tokenizer(TokenizerConfig(vocab_size=300, min_frequency=1),
                        [p + c + r for p, c, r in PAIRS] * 3)
  mcfg = ModelConfig(vocab_size=tok.vocab_size, max_seq_len=48, d_model=16, n_layers=1,
                     n_heads=2)
  mesh = sharding.make_mesh(MeshConfig())
  graphdef, params = sharding.init_params(lambda r: CausalLM(mcfg, rngs=r), mesh,
                                          jax.random.key(0))
  ckpt = hf.save_pretrained(tmp_path / 'ckpt', mcfg, graphdef, params, tok)
  config = json.loads((ckpt / 'tokenizer_config.json').read_text())
  config['chat_template'] = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
                             "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}"
                             "assistant:{% endif %}")
  (ckpt / 'tokenizer_config.json').write_text(json.dumps(config))
  rows = [{'prompt': [{'role': 'user', 'content': p + str(i)}],
           'chosen': [{'role': 'assistant', 'content': c}],
           'rejected': [{'role': 'assistant', 'content': r}]} for i in range(4) for p, c, r in PAIRS]
  path = _jsonl(tmp_path / 'chat.jsonl', rows)
  cfg = pf.Config(data=pf.DataConfig(path=str(path), max_prompt_tokens=24, max_response_tokens=16),
                  model=pf.ModelSection(hf_path=str(ckpt)))
  logs = []
  env = pf.setup(cfg, mesh=mesh, progress=False, log=logs.append)
  assert 'conversational format (rendered with the chat template of' in logs[-1]
  assert env['model_cfg'].d_model == 16 and 'sft' not in env['stages']  # no SFT: the checkpoint
  p = env['prompt_len']
  chosen = env['pairs']['chosen_tokens'][env['pairs']['chosen_response_mask'].astype(bool)]
  # '<eos>' in the rendering is the EOS token, once per response (not appended again).
  assert (chosen == tok.eos_id).sum() == len(env['pairs']['chosen_tokens'])
  first_real = env['pairs']['chosen_attention_mask'][:, :p].argmax(1)
  prompts = env['pairs']['chosen_tokens'][:, :p]
  assert (prompts[np.arange(len(prompts)), first_real] == tok.bos_id).all()
  assert env['info']['counts']['truncated_prompts'] > 0  # cut, and still led by <bos>
  assert np.isfinite(env['pairs']['ref_chosen_logps']).all()


def test_a_test_file_is_the_held_out_split_and_must_share_the_format(tmp_path):
  train = _jsonl(tmp_path / 'train.jsonl', [{'prompt': p, 'chosen': c, 'rejected': r}
                                            for p, c, r in PAIRS])
  test = _jsonl(tmp_path / 'test.jsonl', [{'prompt': 'Q: name a tree. A:', 'chosen': ' oak',
                                           'rejected': ' car'}])
  cfg = pf.Config(data=pf.DataConfig(path=str(train), test_path=str(test)))
  fmt, rows, _, unpaired = pf.parse(cfg, pfd.chat_renderer(None), lambda s: None)
  splits = [r['split'] for r in rows]
  # The test file is the test split; the train file is cut between the policies and the judge.
  assert splits[3:] == ['test'] and sorted(splits[:3]) == ['judge', 'judge', 'train']
  assert unpaired == []
  _jsonl(test, [{'chosen': 'Q: a b', 'rejected': 'Q: a c'}])
  with pytest.raises(pfd.PreferenceFileError, match=r'test\.jsonl: implicit_prompt format, but '
                     r'.*train\.jsonl is standard'):
    pf.parse(cfg, pfd.chat_renderer(None), lambda s: None)


# ---------------------------------------------------------------------------------------------
# The held-out judge


def _tiny_task(path, **data):
  from alignlab.pipeline import load_experiment
  task = load_experiment('preference_file').get_config('tiny').task
  return dataclasses.replace(task, data=dataclasses.replace(task.data, path=str(path), **data))


def _mesh():
  from alignlab import sharding
  from alignlab.config import MeshConfig
  return sharding.make_mesh(MeshConfig())


def _prompts(pairs, p):
  return {tuple(row[m.astype(bool)]) for row, m in zip(pairs['chosen_tokens'][:, :p],
                                                         pairs['chosen_attention_mask'][:, :p])}


def test_the_judge_is_a_second_reward_model_on_a_disjoint_half_and_judges_every_point(
    tmp_path, monkeypatch):
  from alignlab.train import reward_model as rm
  rows = [{'prompt': f'Is review {i} kind?', 'chosen': ' Yes, it is kind.', 'rejected': ' No.'}
          for i in range(24)]
  cfg = _tiny_task(_jsonl(tmp_path / 'pairs.jsonl', rows))
  trained_on = []
  real = rm.train_best

  def recording(model_cfg, ref_params, pairs, heldout, rc, **kw):
    trained_on.append((pairs, heldout, rc.seed))
    return real(model_cfg, ref_params, pairs, heldout, rc, **kw)

  monkeypatch.setattr(rm, 'train_best', recording)
  env = pf.setup(cfg, mesh=_mesh(), progress=False, log=lambda s: None)
  p = env['prompt_len']
  train, judge, test = (_prompts(env[k], p) for k in ('pairs', 'judge_pairs', 'heldout_pairs'))
  # The file's 22 train prompts (2 of 24 test), cut in two by prompt; no prompt on two sides.
  assert (len(train), len(judge), len(test)) == (11, 11, 2)
  assert not (train & judge) and not (train & test) and not (judge & test)
  proxy, judge_model = env['reward_model'](), env['judge']()
  (proxy_pairs, proxy_heldout, proxy_seed), (judge_pairs, judge_heldout, judge_seed) = trained_on
  assert _prompts(proxy_pairs, p) == train and _prompts(judge_pairs, p) == judge
  assert proxy_heldout is judge_heldout is env['heldout_pairs'] and judge_seed == proxy_seed + 1
  assert env['info']['judge']['n_train_pairs'] == 11
  # Every point is judged by the judge: its score of the policy's samples is gold_reward (and
  # J_β), the proxy's is proxy_reward; the two models differ, so a swap shows.
  point = env['evaluate'](env['ref_params'])
  assert point['judge_reward'] == point['gold_reward'] != point['proxy_reward']
  prompts = [row[m.astype(bool)].tolist()
             for row, m in zip(*pf._distinct_prompts(env['heldout_pairs'], p))]
  key, sampling = jax.random.key(cfg.eval_seed), env['rl_sampling']
  of_samples = lambda model, k: evaluate.gold_of_samples(
      env['graphdef'], env['ref_params'], prompts, _scorer(env, model), k, sampling,
      len(prompts), p)
  np.testing.assert_allclose(point['gold_reward'], of_samples(judge_model, key).mean(), rtol=1e-6)
  np.testing.assert_allclose(point['proxy_reward'], of_samples(proxy, key).mean(), rtol=1e-6)
  # The win rate against π_ref's samples is the judge's verdict too.
  expected = evaluate.win_rate_vs_reference(
      env['graphdef'], env['ref_params'], env['ref_params'], prompts, _scorer(env, judge_model),
      jax.random.fold_in(key, 2), sampling, temperatures=cfg.win_rate_temperatures,
      batch_size=len(prompts), prompt_len=p,
      reference_scores=of_samples(judge_model, jax.random.fold_in(key, 1)))
  assert env['win_rates'](env['ref_params']) == expected


def _scorer(env, model):
  """`score(prompts, responses)` of token lists under a reward model, laid out as a pair."""
  from alignlab.train import reward_model as rm
  p, r, pad = env['prompt_len'], env['rl_sampling'].max_new_tokens, env['tokenizer'].pad_id

  def score(prompts, responses):
    tokens_BxP, mask_BxP = pf.left_pad_prompts(prompts, p, pad_id=pad)
    tokens_BxR, mask_BxR = np.full((len(responses), r), pad, np.int32), np.zeros((len(responses), r), np.int32)
    for i, resp in enumerate(responses):
      tokens_BxR[i, :len(resp)], mask_BxR[i, :len(resp)] = resp, 1
    return np.asarray(rm.score(model.graphdef, model.params, np.concatenate([tokens_BxP, tokens_BxR], 1),
                               np.concatenate([mask_BxP, mask_BxR], 1)))

  return score


# ---------------------------------------------------------------------------------------------
# Unpaired KTO


def _tiny_lm(seed, vocab=11):
  from alignlab import sharding
  from alignlab.config import ModelConfig
  from alignlab.heads import CausalLM
  mcfg = ModelConfig(vocab_size=vocab, max_seq_len=16, d_model=8, n_layers=1, n_heads=2)
  return sharding.init_params(lambda r: CausalLM(mcfg, rngs=r), _mesh(), jax.random.key(seed))


@functools.partial(jax.jit, static_argnames=('graphdef', 'p'))
def _one_row_logp(graphdef, params, tokens, attn, resp, p):
  from flax import nnx

  from alignlab.logprobs import sequence_logprobs
  return sequence_logprobs(nnx.merge(graphdef, params), tokens, attn, resp,
                           response_start=p).sum()


def _row_logp(graphdef, params, prompt, completion, p, r):
  """log π(completion | prompt) of one example, laid out alone (a batch of one)."""
  tokens = np.zeros((1, p + r), np.int32)
  attn, resp = np.zeros_like(tokens), np.zeros_like(tokens)
  tokens[0, p - len(prompt):p], tokens[0, p:p + len(completion)] = prompt, completion
  attn[0, p - len(prompt):p + len(completion)] = 1
  resp[0, p:p + len(completion)] = 1
  return float(_one_row_logp(graphdef, params, tokens, attn, resp, p))


def test_unpaired_kto_loss_matches_eq_8_computed_example_by_example():
  """KTO (arXiv 2402.01306, Eq. 8) on unpaired examples: λ_y − v(x, y) averaged over every
  example, desirable and undesirable alike, with z_ref = max(0, mean log-ratio of the
  mismatched (x_i, y_{i+1}))."""
  from alignlab.data.preference import collate
  graphdef, params = _tiny_lm(0)
  _, ref_params = _tiny_lm(1)
  prompts = [[2, 5], [2, 6, 7], [2, 3], [2, 8, 9], [2, 4]]
  completions = [[5, 1], [3, 3, 1], [7, 1], [6, 9, 4, 1], [8, 1]]
  labels = [1.0, 0.0, 1.0, 1.0, 0.0]
  p, r, beta, w_d, w_u = 3, 4, 0.7, 1.0, 1.5
  examples = [{'prompt': x, 'chosen': y, 'rejected': [], 'chosen_score': lab, 'rejected_score': 0.0}
              for x, y, lab in zip(prompts, completions, labels)]
  c = collate(examples, prompt_buckets=(p,), response_buckets=(r,), pad_id=0)
  batch = {'tokens': c['chosen_tokens'], 'attention_mask': c['chosen_attention_mask'],
           'response_mask': c['chosen_response_mask'], 'label': c['chosen_score']}
  batch = pf.unpaired_reference_logps(graphdef, ref_params, batch, prompt_len=p, batch_size=2)
  loss_fn = pf.make_unpaired_kto_loss_fn(graphdef, prompt_len=p)
  loss_sum, metrics = jax.jit(loss_fn)(params, batch, {'beta': beta, 'ref_params': ref_params,
                                                      'undesirable_weight': w_u})
  ratio = lambda m, x, y: (_row_logp(graphdef, params, x, y, p, r)
                           - _row_logp(graphdef, ref_params, x, y, p, r)) if m else None
  n = len(prompts)
  z_ref = max(0.0, np.mean([ratio(1, prompts[i], completions[(i + 1) % n]) for i in range(n)]))
  sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))
  expected = []
  for x, y, lab in zip(prompts, completions, labels):
    rho = ratio(1, x, y)
    expected.append(w_d * (1 - sigmoid(beta * (rho - z_ref))) if lab
                    else w_u * (1 - sigmoid(beta * (z_ref - rho))))
  assert float(metrics['count']) == n  # one term per example, not per pair
  np.testing.assert_allclose(float(metrics['kl']), z_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(loss_sum), sum(expected), rtol=1e-5)
  np.testing.assert_allclose(batch['ref_logps'],
                             [_row_logp(graphdef, ref_params, x, y, p, r)
                              for x, y in zip(prompts, completions)], rtol=1e-5)


def test_a_kto_file_trains_kto_on_its_rows_one_by_one(tmp_path, monkeypatch):
  from alignlab import methods
  rows = []
  for i in range(32):
    rows.append({'prompt': f'Is review {i} kind?', 'completion': ' Yes.', 'label': True})
    if i % 2 == 0:  # every other prompt also has an undesirable completion: a pair
      rows.append({'prompt': f'Is review {i} kind?', 'completion': ' No.', 'label': False})
  cfg = _tiny_task(_jsonl(tmp_path / 'kto.jsonl', rows))
  env = pf.setup(cfg, mesh=_mesh(), progress=False, log=lambda s: None)
  c = env['info']['counts']
  assert env['info']['format'] == 'kto' and c['kto_unpaired_rows'] == 16
  unpaired = env['unpaired']['examples']
  p = env['prompt_len']
  pair_prompts = _prompts(env['pairs'], p)
  single_prompts = {tuple(row[m.astype(bool)]) for row, m in zip(unpaired['tokens'][:, :p],
                                                                 unpaired['attention_mask'][:, :p])}
  # Every train-split row is an example, those without a counterpart too; pairs only where
  # a prompt has both kinds.
  assert pair_prompts < single_prompts and not single_prompts & _prompts(env['judge_pairs'], p)
  assert len(unpaired['label']) == c['unpaired_desirable'] + c['unpaired_undesirable']
  assert c['unpaired_desirable'] == len(single_prompts) > c['unpaired_undesirable'] > 0
  assert len(unpaired['label']) > 2 * len(env['pairs']['chosen_tokens'])
  # The kto method trains on them with the unpaired loss; DPO on the pairs.
  seen = {}

  def capture(loss_fn, params, data, hparams, **kw):
    seen[kw['desc']] = (loss_fn, data)
    raise StopIteration

  monkeypatch.setattr(methods.fit_lib, 'fit_runs', capture)
  exp = dataclasses.replace(
      __import__('alignlab.pipeline', fromlist=['x']).load_experiment('preference_file')
      .get_config('tiny'), task=cfg)
  for name in ('kto', 'dpo'):
    with pytest.raises(StopIteration):
      methods.train_preference(env, name, [(0.1, 0)], exp, tmp_path / 'out', False)
  assert seen['kto'][0] is env['unpaired']['loss_fn']
  assert seen['kto'][1].arrays is unpaired
  assert seen['dpo'][1].arrays is env['pairs']
