from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from alignlab.tasks import imdb_data as imdb
from alignlab.data.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

CFG = imdb.ImdbConfig()


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
  monkeypatch.setenv('ALIGNLAB_CACHE', str(tmp_path / 'cache'))


@pytest.fixture(scope='module')
def tok() -> Tokenizer:
  return train_tokenizer(TokenizerConfig(vocab_size=500), imdb.load_split(imdb.ImdbConfig(max_docs=200), 'train').texts)


def test_split_is_deterministic_disjoint_stratified_and_complete():
  train, test = imdb.load_split(CFG, 'train'), imdb.load_split(CFG, 'test')
  assert len(train.texts) == len(test.texts) == 12_500
  assert not set(train.indices) & set(test.indices)
  assert sorted(np.concatenate([train.indices, test.indices]).tolist()) == list(range(25_000))
  assert train.labels.sum() == test.labels.sum() == 6_250
  again = imdb.load_split(CFG, 'train')
  np.testing.assert_array_equal(again.indices, train.indices)
  assert again.texts == train.texts
  other = imdb.load_split(imdb.ImdbConfig(split_seed=1), 'train')
  assert set(other.indices) != set(train.indices)


def test_test_fraction_and_max_docs():
  cfg = imdb.ImdbConfig(test_fraction=0.2)
  assert len(imdb.load_split(cfg, 'test').texts) == 5_000
  small = imdb.load_split(imdb.ImdbConfig(max_docs=40), 'train')
  assert len(small.texts) == 40 and 0 < small.labels.sum() < 40  # both labels kept
  np.testing.assert_array_equal(small.indices, imdb.load_split(CFG, 'train').indices[:40])


def test_labels_follow_their_reviews():
  texts, labels = imdb._all_reviews()
  split = imdb.load_split(imdb.ImdbConfig(max_docs=30), 'test')
  assert split.texts == [texts[i] for i in split.indices]
  np.testing.assert_array_equal(split.labels, labels[split.indices])


def test_br_tags_are_gone():
  for split in ('train', 'test'):
    for text in imdb.load_split(CFG, split).texts:
      assert '<br' not in text.lower() and '<i>' not in text
      assert text == text.strip()


@pytest.mark.parametrize('raw, clean', [
    ('One.<br /><br />Two.', 'One.\n\nTwo.'),
    ('One. <br />Two.<BR>Three', 'One.\nTwo.\nThree'),
    ('a<br /><br /><br /><br />b', 'a\n\nb'),
    ('<i>Italic</i> and <em>em</em>', 'Italic and em'),
    ('I <3 it <br />', 'I <3 it'),
])
def test_clean_review(raw, clean):
  assert imdb.clean_review(raw) == clean


def test_prompts_are_bos_plus_review_prefixes_of_2_to_8_tokens(tok):
  cfg = imdb.ImdbConfig(max_docs=300)
  prompts = imdb.prompts(tok, 'test', 200, seed=3, cfg=cfg)
  assert len(prompts) == 200
  lengths = [len(p) - 1 for p in prompts]
  assert min(lengths) == 2 and max(lengths) == 8 and len(set(lengths)) == 7
  encoded = [tok.encode(t) for t in imdb.load_split(cfg, 'test').texts]
  for p in prompts:
    assert p[0] == tok.bos_id and tok.bos_id not in p[1:]
    assert any(e[:len(p) - 1] == p[1:] for e in encoded)
  assert imdb.prompts(tok, 'test', 200, seed=3, cfg=cfg) == prompts
  assert imdb.prompts(tok, 'test', 200, seed=4, cfg=cfg) != prompts
  plain = imdb.prompts(tok, 'test', 50, seed=3, cfg=imdb.ImdbConfig(max_docs=300, prompt_bos=False))
  assert all(2 <= len(p) <= 8 and tok.bos_id not in p for p in plain)


def test_lm_sequences_truncate(tok):
  cfg = imdb.ImdbConfig(max_docs=50)
  data = imdb.lm_sequences(tok, 'train', 64, cfg)
  tokens, attention, loss = data['tokens'], data['attention_mask'], data['loss_mask']
  assert tokens.shape == attention.shape == loss.shape == (50, 64) and tokens.dtype == np.int32
  encoded = [tok.encode(t) for t in imdb.load_split(cfg, 'train').texts]
  for row, ids in enumerate(encoded):
    full = [tok.bos_id] + ids + [tok.eos_id]
    n = min(len(full), 64)
    np.testing.assert_array_equal(tokens[row, :n], full[:n])
    assert (tokens[row, n:] == tok.pad_id).all()
    np.testing.assert_array_equal(attention[row], np.arange(64) < n)
    np.testing.assert_array_equal(loss[row], (np.arange(64) < n) & (np.arange(64) > 0))
  long_data = imdb.lm_sequences(tok, 'train', 4096, cfg)
  ends = long_data['attention_mask'].sum(1) - 1
  assert (long_data['tokens'][np.arange(50), ends] == tok.eos_id).all()


def test_lm_sequences_pack(tok):
  cfg = imdb.ImdbConfig(max_docs=20)
  data = imdb.lm_sequences(tok, 'train', 32, cfg, mode='pack')
  stream = [t for text in imdb.load_split(cfg, 'train').texts for t in [tok.bos_id] + tok.encode(text) + [tok.eos_id]]
  rows = len(stream) // 32
  np.testing.assert_array_equal(data['tokens'], np.asarray(stream[:rows * 32]).reshape(rows, 32))
  assert data['attention_mask'].all()
  assert (data['loss_mask'][:, 0] == 0).all() and data['loss_mask'][:, 1:].all()
  with pytest.raises(ValueError):
    imdb.lm_sequences(tok, 'train', 32, cfg, mode='bogus')


class _FakeImdbReviews(tfds.core.GeneratorBasedBuilder):
  """The official `imdb_reviews` features (text, label), with two made-up reviews."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    features = tfds.features.FeaturesDict({
        'text': tfds.features.Text(), 'label': tfds.features.ClassLabel(names=['neg', 'pos'])})
    return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    yield 0, {'text': 'Loved it.<br /><br />Again!', 'label': 1}
    yield 1, {'text': 'Dull <i>and</i> long.', 'label': 0}


def test_load_from_tfds_dir(tmp_path):
  builder = _FakeImdbReviews(data_dir=str(tmp_path), file_format='array_record')
  builder.download_and_prepare()
  split = imdb.load_from_tfds_dir(builder.data_dir, 'train')
  assert split.texts == ['Loved it.\n\nAgain!', 'Dull and long.']
  np.testing.assert_array_equal(split.labels, [1, 0])
