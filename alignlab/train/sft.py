"""SFT (the reference policy) and Preferred-FT (SFT on chosen responses): token NLL."""

from __future__ import annotations

from flax import nnx

from alignlab.logprobs import sequence_logprobs
from alignlab.losses.lm import nll


def make_loss_fn(graphdef, *, response_start: int = 1):
  """NLL over `response_mask` tokens, exact under padding (sum / token count).

  For LM pretraining on text, `response_mask` marks every real token after the first."""

  def loss_fn(params, batch, hparams):
    del hparams
    model = nnx.merge(graphdef, params)
    logps_BxT = sequence_logprobs(model, batch['tokens'], batch['attention_mask'],
                                  batch['response_mask'], response_start=response_start)
    _, metrics = nll(token_logps_BxT=logps_BxT, mask_BxT=batch['response_mask'])
    return metrics['loss_sum'], metrics

  return loss_fn


def chosen_as_sft(pairs: dict) -> dict:
  """Preferred-FT data: the chosen side of preference pairs as SFT sequences."""
  return {'tokens': pairs['chosen_tokens'], 'attention_mask': pairs['chosen_attention_mask'],
          'response_mask': pairs['chosen_response_mask']}
