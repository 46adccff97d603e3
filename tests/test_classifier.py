"""The IMDb sentiment classifier (the alternative gold reward): its loss, its rows, that it
learns the real labels, its cache, and the `ClassifierReward` built on it."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignlab.config import ModelConfig, OptimizerConfig
from alignlab.tasks import imdb_data as imdb
from alignlab.data.tokenizer import TokenizerConfig
from alignlab.losses.reward import logistic
from alignlab.tasks import imdb_gold as classifier
from alignlab.train.reward_model import score

DATA = imdb.ImdbConfig(max_docs=4000)
TINY = classifier.ClassifierConfig(
    model=ModelConfig(vocab_size=0, max_seq_len=65, d_model=64, n_layers=1, n_heads=4, d_ff=128),
    min_tokens=8, max_tokens=64, copies=1, steps=400, batch_size=64,
    optimizer=OptimizerConfig(learning_rate=1e-3, schedule='cosine', warmup_steps=40, total_steps=400),
    eval_tokens=(64,))


def test_logistic_matches_numpy():
  rng = np.random.default_rng(0)
  logits, labels = rng.normal(size=16) * 3, rng.integers(0, 2, size=16)
  mask = (np.arange(16) < 13).astype(np.float32)
  loss, m = logistic(logits=jnp.asarray(logits), labels=jnp.asarray(labels), example_mask=jnp.asarray(mask))
  p = 1 / (1 + np.exp(-logits))
  want = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
  np.testing.assert_allclose(float(loss), (want * mask).sum() / mask.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(m['accuracy']), (((logits > 0) == (labels == 1)) * mask).sum() / 13, rtol=1e-6)
  grad = jax.grad(lambda s: logistic(logits=s, labels=jnp.asarray(labels))[0])(jnp.asarray(logits))
  np.testing.assert_allclose(np.asarray(grad), (p - labels) / 16, rtol=1e-4, atol=1e-7)


def test_prefix_rows():
  tokens, mask = classifier.prefix_rows([[5, 6, 7, 8], [9]], np.asarray([2, 3]), bos_id=2, pad_id=0, width=5)
  np.testing.assert_array_equal(tokens, [[2, 5, 6, 0, 0], [2, 9, 0, 0, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])


def test_bad_config_is_an_error():
  with pytest.raises(ValueError, match='max_seq_len'):
    dataclasses.replace(TINY, max_tokens=80).validate()
  with pytest.raises(ValueError, match='eval_tokens'):
    dataclasses.replace(TINY, eval_tokens=(96,)).validate()


@pytest.fixture(scope='module')
def stage(tmp_path_factory):
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('ALIGNLAB_CACHE', str(tmp_path_factory.mktemp('classifier_cache')))
    tok = imdb.imdb_tokenizer(TokenizerConfig(vocab_size=1024), DATA)
    return tok, classifier.classifier_stage(TINY, DATA, tok, progress=False)


def test_learns_the_real_labels_and_is_cached(stage, monkeypatch):
  tok, st = stage
  # 4,000 train reviews, 400 steps of a 1-layer model: above chance on the 4,000 held-out
  # test reviews cut to 64 tokens (measured 0.608; chance is 0.5 with a binomial std of 0.008,
  # the split is balanced). The full-size classifier's accuracy is in the issue note.
  acc = st.metrics['heldout_accuracy']['64']
  assert acc >= 0.57, st.metrics
  assert not st.from_cache and st.metrics['n_test_reviews'] == 4000
  monkeypatch.setenv('ALIGNLAB_CACHE', str(st.directory.parent.parent))
  again = classifier.classifier_stage(TINY, DATA, tok, progress=False)
  assert again.from_cache and again.metrics == st.metrics
  for a, b in zip(jax.tree.leaves(st.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # An altered metrics file fails the entry's manifest: rebuilt (same seed: same numbers).
  (st.directory / 'metrics.json').write_text('{"heldout_accuracy": {"64": 1.0}}')
  rebuilt = classifier.classifier_stage(TINY, DATA, tok, progress=False)
  assert not rebuilt.from_cache and rebuilt.metrics == st.metrics


def test_reward_is_the_probability_of_bos_plus_text(stage):
  tok, st = stage
  reward = st.reward(tok, batch_size=4)
  prompt = [tok.bos_id] + tok.encode('This movie was')
  responses = [tok.encode(' wonderful, I loved every minute') + [tok.eos_id],
               tok.encode(' awful, boring and a waste of time') + [tok.eos_id, tok.pad_id],
               tok.encode(' a film'), [], tok.encode(' great') * 90]
  p = reward([prompt] * 5, responses)
  assert p.shape == (5,) and p.dtype == np.float32 and np.all((0 < p) & (p < 1))
  # The same text split differently between prompt and response scores the same.
  moved = [prompt + responses[0][:3]], [responses[0][3:]]
  np.testing.assert_allclose(reward(*moved), p[:1], rtol=1e-5)
  # Direct check against the scorer on the row the classifier was trained on (<bos> + text).
  ids = prompt[1:] + responses[1][:-2]
  tokens, mask = classifier.prefix_rows([ids], np.asarray([len(ids)]), bos_id=tok.bos_id, pad_id=tok.pad_id, width=65)
  logit = float(score(st.graphdef, st.params, jnp.asarray(tokens), jnp.asarray(mask))[0])
  np.testing.assert_allclose(p[1], 1 / (1 + np.exp(-logit)), rtol=1e-5)
  assert reward([], []).shape == (0,)
  with pytest.raises(ValueError):
    reward([prompt], [])


def test_task_gold_switch(monkeypatch, tmp_path):
  from alignlab import pipeline, sharding
  from alignlab.tasks import imdb as st
  from alignlab.tasks.imdb_gold import ClassifierReward, VaderReward
  exp = pipeline.load_experiment('imdb_frontier')
  tiny_clf = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, d_model=16, d_ff=32),
                                 steps=3, optimizer=OptimizerConfig(learning_rate=1e-3))
  cfg = dataclasses.replace(exp.get_config('tiny').task, gold='classifier', classifier=tiny_clf)
  tok = imdb.imdb_tokenizer(cfg.tokenizer, cfg.data)
  reward, info = st.gold_reward(cfg, tok, sharding.make_mesh(), progress=False)
  assert isinstance(reward, ClassifierReward) and info['name'].startswith('classifier/')
  assert set(info['heldout_accuracy']) == {'64'} and not info['from_cache']
  assert isinstance(st.gold_reward(dataclasses.replace(cfg, gold='vader'), tok, None)[0], VaderReward)
  with pytest.raises(ValueError, match="task.gold must be one of"):
    st.gold_reward(dataclasses.replace(cfg, gold='gpt4'), tok, None)
