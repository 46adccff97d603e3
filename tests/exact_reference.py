"""The exact task's π_ref as a transformer, and fresh Bradley–Terry pairs for every step.

π_ref is the shared transformer fitted (SFT) to samples of the analytic reference
`exact.random_reference`; from then on its exact log-probs over all responses
(`exact.policy_logprobs_all`) define the task's reference, so every quantity — E[r], KL, π*,
the gap — refers to the model actually used as π_ref.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignlab import sharding
from alignlab.config import ModelConfig, OptimizerConfig
from alignlab.tasks import exact_math as exact
from alignlab.heads import CausalLM
from alignlab.train import sft
from alignlab.train.batches import ArrayBatches
from alignlab.train.fit import fit


def policy_model_config(cfg: exact.ExactTaskConfig, **overrides) -> ModelConfig:
  """A small policy for the exact task; it can only emit response symbols."""
  base = dict(vocab_size=exact.model_vocab_size(cfg), max_seq_len=cfg.length + 1, d_model=64,
              n_layers=2, n_heads=4, d_ff=128, masked_output_ids=exact.masked_output_ids(cfg))
  base.update(overrides)
  return ModelConfig(**base)


def make_scorer(graphdef, cfg: exact.ExactTaskConfig):
  """params -> exact log π(y|x) over every response, (P, Y); one jitted program."""
  @jax.jit
  def score(params):
    model = nnx.merge(graphdef, params)
    return exact.policy_logprobs_all(lambda t, a: model(t, a), cfg, batch_size=512)
  return score


def fit_reference(cfg: exact.ExactTaskConfig, model_cfg: ModelConfig, run_dir: str | Path, *,
                  n_samples_per_prompt: int = 2048, n_steps: int = 300, seed: int = 0,
                  mesh=None, progress: bool = False):
  """SFT of a fresh transformer on samples of the analytic reference; returns
  `(graphdef, params, ref_logp_PxY)`. Resumes/reuses `run_dir` like every training run."""
  mesh = mesh if mesh is not None else sharding.make_mesh()
  graphdef, params = sharding.init_params(lambda r: CausalLM(model_cfg, rngs=r), mesh,
                                          jax.random.key(seed))
  analytic_logp = exact.random_reference(cfg)
  index_N = jax.random.categorical(jax.random.key(seed + 1), analytic_logp, axis=-1,
                                   shape=(n_samples_per_prompt, cfg.n_prompts)).T.reshape(-1)
  prompt_N = np.repeat(np.arange(cfg.n_prompts), n_samples_per_prompt)
  tokens = exact.make_sequences(cfg, prompt_N, np.asarray(exact.response_from_index(cfg, index_N)))
  attn_T, resp_T = exact.sequence_masks(cfg)
  data = {'tokens': tokens, 'attention_mask': np.broadcast_to(attn_T, tokens.shape).copy(),
          'response_mask': np.broadcast_to(resp_T, tokens.shape).copy()}
  state = fit(sft.make_loss_fn(graphdef), params, ArrayBatches(data, 256, seed=seed),
              optimizer=OptimizerConfig(learning_rate=3e-3), n_steps=n_steps, run_dir=run_dir,
              config={'task': cfg, 'model': model_cfg, 'steps': n_steps, 'seed': seed},
              mesh=mesh, progress=progress, desc='sft π_ref')
  params = state['params']
  return graphdef, params, make_scorer(graphdef, cfg)(params)


def fresh_pair_batches(cfg: exact.ExactTaskConfig, ref_logp_PxY, r_PxY, *, pairs_per_prompt: int,
                       seed: int = 0, sample_logp_PxY=None):
  """`batch_at(step)`: new pairs every step, labelled by the Bradley–Terry model of the gold
  reward — "ample preference data", so training follows the population loss whose optimum
  (for DPO) is π* (arXiv 2305.18290, §4) whatever distribution with full support the
  responses are drawn from: π_ref by default, `sample_logp_PxY` if given. Reference log-probs
  come from the exact table, so no reference forward pass is needed."""
  ref_logp_PxY = jnp.asarray(ref_logp_PxY)
  draw = jax.jit(functools.partial(exact.sample_pairs_bt, cfg=cfg, ref_logp=ref_logp_PxY,
                                   r=jnp.asarray(r_PxY), n_pairs_per_prompt=pairs_per_prompt,
                                   sample_logp=None if sample_logp_PxY is None else jnp.asarray(sample_logp_PxY)))

  def batch_at(step: int) -> dict[str, np.ndarray]:
    pairs = draw(jax.random.fold_in(jax.random.key(seed), step))
    batch = exact.preference_batch(cfg, pairs)
    batch['ref_chosen_logps'] = np.asarray(ref_logp_PxY[pairs.prompt_index, pairs.chosen_index])
    batch['ref_rejected_logps'] = np.asarray(
        ref_logp_PxY[pairs.prompt_index, pairs.rejected_index])
    return batch

  return batch_at
