"""PPO on the exact task (docs/design.md), where the optimum of J_β is known: PPO-GT (the gold
reward) from π_ref must close ≥ 90 % of π_ref's gap β·KL(π_ref‖π*) at β ∈ {0.1, 1}, and PPO with
a Bradley–Terry reward model learned from π_ref's preference pairs must improve J_β over π_ref.

π_ref is a small transformer fine-tuned (SFT) on samples of the task's analytic reference.
Run: `.venv/bin/python -m pytest -q -m slow tests/test_ppo_exact.py -s` (prints the gaps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignlab import sharding
from alignlab.config import MeshConfig, ModelConfig, OptimizerConfig, SamplingConfig
from alignlab.tasks import exact_math as exact
from alignlab.heads import CausalLM, ScalarModel, embedding_from_lm
from alignlab.train import ppo, reward_model, sft
from alignlab.train.batches import ArrayBatches
from alignlab.tasks.exact import reward_table as exact_reward_table
from alignlab.tasks.exact_math import exact_task_reward
from alignlab.train.rollout import RewardModel
from alignlab.train.fit import fit

pytestmark = pytest.mark.slow

TASK = exact.ExactTaskConfig()  # 8 prompts, V = 8, length 4: 4,096 responses per prompt
MODEL = ModelConfig(vocab_size=exact.model_vocab_size(TASK), max_seq_len=8, d_model=64,
                    n_layers=2, n_heads=4, d_ff=128,
                    masked_output_ids=exact.masked_output_ids(TASK))
SAMPLING = SamplingConfig(max_new_tokens=TASK.length, eos_id=-1, pad_id=0)
PER_PROMPT = 32  # rollout batch: 8 prompts × 32 = 256 sequences


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """(mesh, graphdef, π_ref params, exact log π_ref (P, Y), gold r (P, Y), logp_of)."""
  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  graphdef, params = sharding.init_params(lambda r: CausalLM(MODEL, rngs=r), mesh,
                                          jax.random.key(0))
  analytic_logp = exact.random_reference(TASK, jax.random.key(1))
  n = 2048
  index = jax.random.categorical(jax.random.key(2), analytic_logp, axis=-1,
                                 shape=(n, TASK.n_prompts)).T.reshape(-1)
  prompt = np.repeat(np.arange(TASK.n_prompts), n)
  tokens = exact.make_sequences(TASK, prompt, np.asarray(exact.response_from_index(TASK, index)))
  attn_T, resp_T = exact.sequence_masks(TASK)
  data = {'tokens': tokens, 'attention_mask': np.broadcast_to(attn_T, tokens.shape).copy(),
          'response_mask': np.broadcast_to(resp_T, tokens.shape).copy()}
  state = fit(sft.make_loss_fn(graphdef), params, ArrayBatches(data, 256),
              optimizer=OptimizerConfig(learning_rate=3e-3), n_steps=300,
              run_dir=tmp_path_factory.mktemp('sft'), config={}, mesh=mesh, progress=False)

  @jax.jit
  def logp_of(p):
    model = nnx.merge(graphdef, p)
    return exact.policy_logprobs_all(lambda t, m: model(t, m), TASK, batch_size=4096)

  ref_params = state['params']
  r = jnp.asarray(exact.gold_reward(TASK))
  return mesh, graphdef, ref_params, logp_of(ref_params), r, logp_of


def _prompts_fn(step):
  tokens_B = np.repeat(exact.prompt_tokens(TASK), PER_PROMPT)[:, None]
  return tokens_B, np.ones_like(tokens_B)


def _cfg(beta, n_iterations):
  # 4 epochs × 4 minibatches of 64 per rollout of 256; the learning rate decays linearly to 0
  # over the run, so the policy settles instead of fluctuating around π* at the noise floor.
  n_updates = n_iterations * 4 * 4
  return ppo.PPOConfig(n_iterations=n_iterations, sampling=SAMPLING, kl_coef=beta,
                       optimizer=OptimizerConfig(learning_rate=1e-3, eps=1e-5, schedule='linear',
                                                 total_steps=n_updates + 1),
                       value_optimizer=OptimizerConfig(learning_rate=1e-3, eps=1e-5),
                       ppo_epochs=4, num_minibatches=4)


@pytest.mark.parametrize('beta, n_iterations', [(0.1, 150), (1.0, 300)])
def test_ppo_gold_reward_reaches_the_optimum(setup, tmp_path, beta, n_iterations):
  mesh, graphdef, ref_params, ref_logp, r, logp_of = setup
  value = ppo.init_value_model(MODEL, mesh, jax.random.key(5), policy_params=ref_params,
                               zero_head=True)
  state = ppo.train_ppo(_cfg(beta, n_iterations), (graphdef, ref_params), ref_params,
                        exact_task_reward(TASK), _prompts_fn, tmp_path, value=value, mesh=mesh,
                        progress=False)
  ref_gap = float(exact.gap(ref_logp, ref_logp, r, beta).mean())
  logp = logp_of(state['policy'])
  gap = float(exact.gap(logp, ref_logp, r, beta).mean())
  kl = float(exact.kl(logp, ref_logp).mean())
  print(f'\nPPO-GT β={beta}: gap {gap:.4f} (π_ref gap {ref_gap:.4f}, ratio {gap / ref_gap:.3f}), '
        f'KL(π‖π_ref) {kl:.3f}, KL(π*‖π_ref) '
        f'{float(exact.kl(exact.optimal_policy(ref_logp, r, beta), ref_logp).mean()):.3f}')
  assert gap <= 0.1 * ref_gap


def test_ppo_with_learned_reward_model_improves_the_gold_objective(setup, tmp_path):
  mesh, graphdef, ref_params, ref_logp, r, logp_of = setup
  beta = 1.0
  pairs = exact.sample_pairs_bt(jax.random.key(3), TASK, ref_logp, r, 512)
  rm_graphdef, rm_params = sharding.init_params(lambda k: ScalarModel(MODEL, rngs=k), mesh,
                                                jax.random.key(7))
  rm_params = embedding_from_lm(ref_params, rm_params)
  state = fit(reward_model.make_loss_fn(rm_graphdef), rm_params,
              ArrayBatches(exact.preference_batch(TASK, pairs), 256),
              optimizer=OptimizerConfig(learning_rate=1e-3), n_steps=300,
              run_dir=tmp_path / 'rm', config={}, mesh=mesh, progress=False)
  rm_params = state['params']
  # Normalize the reward model so that π_ref's responses score mean 0, std 1 (Ziegler et al.
  # 2019, arXiv 1909.08593), with the exact π_ref-weighted moments of its score table.
  table_PxY = np.asarray(exact_reward_table(TASK, rm_graphdef, rm_params), np.float64)
  ref_p_PxY = np.exp(np.asarray(ref_logp, np.float64))
  ref_p_PxY /= ref_p_PxY.sum(-1, keepdims=True)
  mean = float((ref_p_PxY * table_PxY).sum() / TASK.n_prompts)
  std = float(np.sqrt((ref_p_PxY * (table_PxY - mean) ** 2).sum() / TASK.n_prompts))
  rm_params = {**rm_params, 'gain': rm_params['gain'] / std,
               'bias': (rm_params['bias'] - mean) / std}
  value = ppo.init_value_model(MODEL, mesh, jax.random.key(5), reward_params=rm_params)
  state = ppo.train_ppo(_cfg(beta, 100), (graphdef, ref_params), ref_params,
                        RewardModel(rm_graphdef, rm_params), _prompts_fn, tmp_path / 'ppo',
                        value=value, gold=exact_task_reward(TASK), mesh=mesh, progress=False)
  j_ref = float(exact.objective(ref_logp, ref_logp, r, beta).mean())
  j_opt = float(exact.optimal_value(ref_logp, r, beta).mean())
  j = float(exact.objective(logp_of(state['policy']), ref_logp, r, beta).mean())
  print(f'\nPPO with a learned RM, β={beta}: gold J {j:.4f} (π_ref {j_ref:.4f}, π* {j_opt:.4f})')
  assert j > j_ref + 0.1
