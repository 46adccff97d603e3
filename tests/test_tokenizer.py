from __future__ import annotations

import pytest

from alignlab.data import cache
from alignlab.tasks import imdb_data as imdb
from alignlab.data.tokenizer import Tokenizer, TokenizerConfig, load_or_train_tokenizer, train_tokenizer

SMALL = TokenizerConfig(vocab_size=600, min_frequency=2)


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
  monkeypatch.setenv('ALIGNLAB_CACHE', str(tmp_path / 'cache'))
  return tmp_path / 'cache'


@pytest.fixture(scope='module')
def reviews() -> dict[str, list[str]]:
  cfg = imdb.ImdbConfig(max_docs=300)
  return {split: imdb.load_split(cfg, split).texts for split in ('train', 'test')}


@pytest.fixture(scope='module')
def tok(reviews) -> Tokenizer:
  return train_tokenizer(SMALL, reviews['train'])


def test_round_trip_is_exact_on_imdb_text(tok, reviews):
  for text in reviews['train'] + reviews['test']:  # the test reviews were not trained on
    ids = tok.encode(text)
    assert tok.decode(ids) == text
  batch = tok.encode_batch(reviews['test'][:20])
  assert batch == [tok.encode(t) for t in reviews['test'][:20]]


@pytest.mark.parametrize('text', ['', ' leading and trailing  ', 'tabs\tand\n\nnewlines\r\n',
                                  'Ünïcödé — 漢字 😀', 'literal <pad><eos><bos> markers', '<br />'])
def test_round_trip_is_exact_on_odd_text(tok, text):
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert not {tok.pad_id, tok.eos_id, tok.bos_id} & set(ids)


def test_special_tokens_and_vocab(tok):
  assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
  assert tok.vocab_size == SMALL.vocab_size
  assert max(max(tok.encode_batch(['some words here', 'and more words'])) or [0]) < tok.vocab_size


def test_decode_drops_pad_and_does_not_stop_at_eos(tok):
  a, b = tok.encode('Great film.'), tok.encode(' Awful sequel.')
  ids = [tok.bos_id] + a + [tok.eos_id] + b + [tok.pad_id, tok.pad_id]
  assert tok.decode(ids) == '<bos>Great film.<eos> Awful sequel.'
  assert tok.decode(ids, skip_special_tokens=True) == 'Great film. Awful sequel.'
  assert tok.decode_batch([ids, a]) == [tok.decode(ids), 'Great film.']


def test_max_train_docs_limits_training_texts(reviews):
  texts = ['ab ab ab ab'] + reviews['train']
  few = train_tokenizer(TokenizerConfig(vocab_size=600, max_train_docs=1), texts)
  # 3 specials + 256 bytes + the few merges of 'ab ab ab ab'; the reviews were not seen.
  assert few.vocab_size < 265
  assert train_tokenizer(TokenizerConfig(vocab_size=600, max_train_docs=0), texts).vocab_size == 600


def test_cache_miss_then_hit_then_miss_on_config_change(reviews, cache_root):
  calls = []

  def texts():
    calls.append(1)
    return reviews['train'][:100]

  first = load_or_train_tokenizer(SMALL, texts, 'data-v1')
  assert not first.from_cache and len(calls) == 1
  second = load_or_train_tokenizer(SMALL, texts, 'data-v1')
  assert second.from_cache and len(calls) == 1
  assert second.fingerprint == first.fingerprint and second.path == first.path
  assert second.encode(reviews['test'][0]) == first.encode(reviews['test'][0])

  other_cfg = load_or_train_tokenizer(TokenizerConfig(vocab_size=500), texts, 'data-v1')
  assert not other_cfg.from_cache and len(calls) == 2 and other_cfg.vocab_size == 500
  other_data = load_or_train_tokenizer(SMALL, texts, 'data-v2')
  assert not other_data.from_cache and len(calls) == 3
  assert len(list((cache_root / 'tokenizer').iterdir())) == 3  # no temp dirs left behind

  # An altered tokenizer.json (its bytes no longer match the manifest) is rebuilt, not used.
  path = first.path if first.path.is_file() else first.path / 'tokenizer.json'
  path.write_text(path.read_text().replace('"model"', '"model" ', 1))
  rebuilt = load_or_train_tokenizer(SMALL, texts, 'data-v1')
  assert not rebuilt.from_cache and len(calls) == 4
  assert rebuilt.fingerprint == first.fingerprint


def test_atomic_dir_publishes_on_success_and_leaves_nothing_on_failure(cache_root):
  target = cache.cache_dir('demo', {'a': 1})
  assert target.parent.parent == cache_root
  with pytest.raises(RuntimeError):
    with cache.atomic_dir(target) as tmp:
      (tmp / 'half.txt').write_text('half')
      assert not target.exists()
      raise RuntimeError('boom')
  assert not target.exists() and list(target.parent.iterdir()) == []
  with cache.atomic_dir(target) as tmp:
    (tmp / 'done.txt').write_text('done')
    assert not target.exists()
  assert (target / 'done.txt').read_text() == 'done'
  assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_atomic_dir_keeps_the_first_finished_entry(cache_root):
  target = cache_root / 'demo' / 'entry'
  with cache.atomic_dir(target) as outer:
    (outer / 'f').write_text('second')
    with cache.atomic_dir(target) as inner:
      (inner / 'f').write_text('first')
  assert (target / 'f').read_text() == 'first'
  assert [p.name for p in target.parent.iterdir()] == ['entry']


def test_cache_dir_is_keyed_by_config(cache_root):
  a = cache.cache_dir('k', SMALL)
  assert a == cache.cache_dir('k', TokenizerConfig(vocab_size=600))
  assert a != cache.cache_dir('k', TokenizerConfig(vocab_size=601))
  assert a.parent == cache_root / 'k'
