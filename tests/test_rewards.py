from __future__ import annotations

import numpy as np
import pytest

from alignlab.data.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer
from alignlab.tasks.imdb_gold import VaderReward

CORPUS = ['This movie was wonderful, I loved it.', 'This movie was terrible, I hated it.', 'The plot was fine.']


@pytest.fixture(scope='module')
def tok() -> Tokenizer:
  return train_tokenizer(TokenizerConfig(vocab_size=300, min_frequency=1), CORPUS)


def test_positive_text_scores_higher_than_negative(tok):
  reward = VaderReward(tok)
  prompt = [tok.bos_id] + tok.encode('This movie was')
  responses = [tok.encode(' wonderful, I loved it!') + [tok.eos_id], tok.encode(' terrible, I hated it.') + [tok.eos_id],
               tok.encode(' a film.')]
  scores = reward([prompt] * 3, responses)
  assert scores.shape == (3,) and scores.dtype == np.float32
  assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0.0
  assert np.all((-1 <= scores) & (scores <= 1))


def test_matches_vader_on_decoded_text_without_special_tokens(tok):
  from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
  reward = VaderReward(tok)
  prompt = [tok.bos_id] + tok.encode('The plot was')
  response = tok.encode(' great, but the ending was awful') + [tok.eos_id, tok.pad_id, tok.pad_id]
  assert reward.texts([prompt], [response]) == ['The plot was great, but the ending was awful']
  want = SentimentIntensityAnalyzer().polarity_scores('The plot was great, but the ending was awful')['compound']
  np.testing.assert_allclose(reward([prompt], [response]), [want], rtol=1e-6)


def test_include_prompt_false_scores_the_response_alone(tok):
  prompt = tok.encode('I hated it, terrible.')
  response = tok.encode(' The plot was a film.')
  assert VaderReward(tok)([prompt], [response])[0] < 0
  assert VaderReward(tok, include_prompt=False)([prompt], [response])[0] == 0.0


def test_empty_batch_and_length_mismatch(tok):
  reward = VaderReward(tok)
  out = reward([], [])
  assert out.shape == (0,) and out.dtype == np.float32
  with pytest.raises(ValueError):
    reward([[2]], [])
