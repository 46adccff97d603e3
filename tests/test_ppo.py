"""The rollout engine, the PPO trainer (and RLOO / GRPO on it) and Best-of-N: the reward is read
at EOS, the update is the same on 1 and 8 devices, the KL controller steers, resume is exact."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignlab import evaluate, sharding
from alignlab.checkpoint import Checkpointer
from alignlab.config import ConfigError, MeshConfig, ModelConfig, OptimizerConfig, SamplingConfig
from alignlab.tasks import exact_math as exact
from alignlab.heads import CausalLM, ScalarModel
from alignlab.sampling import SampleOutput, sample
from alignlab.train import ppo
from alignlab.train.fit import TrainingDiverged
from alignlab.tasks.exact import reward_table
from alignlab.tasks.exact_math import exact_task_reward
from alignlab.train.rollout import (RewardModel, evaluate_samples,
                                    from_token_lists, rollout)

TASK = exact.ExactTaskConfig(n_prompts=3, vocab=4, length=3, reward_seed=1, ref_seed=2)
TASK_MODEL = ModelConfig(vocab_size=exact.model_vocab_size(TASK), max_seq_len=4, d_model=16,
                         n_layers=1, n_heads=2, d_ff=32, init_std=0.3,
                         masked_output_ids=exact.masked_output_ids(TASK))
TASK_SAMPLING = SamplingConfig(max_new_tokens=TASK.length, eos_id=-1, pad_id=0)
LM = ModelConfig(vocab_size=11, max_seq_len=16, d_model=24, n_layers=1, n_heads=3, d_ff=40,
                 init_std=0.2)
EOS, PAD = 2, 0


@pytest.fixture(scope='module')
def mesh():
  return sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])


def _lm(mesh, seed):
  return sharding.init_params(lambda r: CausalLM(LM, rngs=r), mesh, jax.random.key(seed))


def _task_setup(mesh):
  graphdef, ref_params = sharding.init_params(lambda r: CausalLM(TASK_MODEL, rngs=r), mesh,
                                              jax.random.key(0))
  value = ppo.init_value_model(TASK_MODEL, mesh, jax.random.key(1), policy_params=ref_params,
                               zero_head=True)

  @jax.jit
  def logp_of(params):
    model = nnx.merge(graphdef, params)
    return exact.policy_logprobs_all(lambda t, m: model(t, m), TASK)

  return graphdef, ref_params, value, logp_of


def _prompts_fn(per_prompt):
  tokens_B = np.repeat(exact.prompt_tokens(TASK), per_prompt)[:, None]
  return lambda step: (tokens_B, np.ones_like(tokens_B))


def _task_cfg(**kw):
  base = dict(sampling=TASK_SAMPLING, optimizer=OptimizerConfig(learning_rate=3e-3, eps=1e-5),
              value_optimizer=OptimizerConfig(learning_rate=3e-3, eps=1e-5), ppo_epochs=2,
              num_minibatches=2, kl_coef=0.5)
  base.update(kw)
  return ppo.PPOConfig(**base)


def _records(run_dir):
  return [json.loads(line) for line in (Path(run_dir) / 'metrics.jsonl').read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# The rollout engine


def _handmade_batch():
  """Prompts of 3 (left-padded), responses of lengths 2, 4, 5 (no EOS), 1, right-padded."""
  prompts = [[0, 5, 6], [4, 5, 6], [0, 0, 7], [5, 5, 5]]
  responses = [[7, EOS], [8, 9, 3, EOS], [3, 4, 5, 6, 7], [EOS]]
  p, r = 3, 5
  tokens = np.zeros((4, p + r), np.int32)
  attn = np.zeros((4, p + r), np.int32)
  resp = np.zeros((4, p + r), np.int32)
  for b, (prompt, response) in enumerate(zip(prompts, responses)):
    tokens[b, :p] = prompt
    attn[b, :p] = np.asarray(prompt) != 0
    tokens[b, p:p + len(response)] = response
    attn[b, p:p + len(response)] = 1
    resp[b, p:p + len(response)] = 1
  lengths = np.asarray([len(x) for x in responses])
  return tokens, attn, resp, p, lengths


def test_reward_read_at_eos_for_different_lengths(mesh):
  graphdef, params = _lm(mesh, 0)
  _, ref_params = _lm(mesh, 1)
  rm_graphdef, rm_params = sharding.init_params(lambda r: ScalarModel(LM, rngs=r), mesh,
                                                jax.random.key(2))
  tokens, attn, resp, p, lengths = _handmade_batch()
  samples = SampleOutput(tokens=jnp.asarray(tokens), attention_mask=jnp.asarray(attn),
                         response_mask=jnp.asarray(resp), logprobs=jnp.zeros(tokens.shape))
  ro = evaluate_samples(samples, graphdef, params, ref_params, RewardModel(rm_graphdef, rm_params),
                        prompt_len=p, eos_id=EOS, no_eos_score=None)
  values_BxT = np.asarray(nnx.merge(rm_graphdef, rm_params)(jnp.asarray(tokens), jnp.asarray(attn)))
  last = p + lengths - 1  # the EOS, or the last token of the truncated row 2
  expected = values_BxT[np.arange(4), last]
  np.testing.assert_allclose(np.asarray(ro.scores), expected, rtol=1e-5, atol=1e-6)
  # Reading at the last column (padding for rows 0, 1, 3) gives different numbers.
  padded = lengths < resp.shape[1] - p
  assert np.all(np.abs(values_BxT[padded, -1] - expected[padded]) > 1e-4)
  np.testing.assert_array_equal(np.asarray(ro.has_eos), [True, True, False, True])

  # No-EOS score replaces the truncated row's score only.
  ro_penalty = evaluate_samples(samples, graphdef, params, ref_params,
                                RewardModel(rm_graphdef, rm_params), prompt_len=p, eos_id=EOS,
                                no_eos_score=-1.0)
  np.testing.assert_allclose(np.asarray(ro_penalty.scores), np.where([1, 1, 0, 1], expected, -1.0),
                             rtol=1e-5, atol=1e-6)

  # Per-token arrays live on the response only; the exact KL is ≥ 0 there.
  for x in (ro.logprobs, ro.ref_logprobs, ro.kl, ro.entropy):
    assert np.all(np.asarray(x)[resp == 0] == 0)
  assert np.all(np.asarray(ro.kl)[resp == 1] > 0)

  # In the PPO update the score is the reward of the last response token: with γ = λ = 1,
  # β = 0 and V = 0, the return of every response token is the score, 0 on padding.
  cfg = ppo.PPOConfig(gamma=1.0, lam=1.0, whiten_advantages=False)
  advantages_BxT, returns_BxT, _ = ppo.advantages_and_returns(cfg, ro, jnp.float32(0.0))
  np.testing.assert_allclose(np.asarray(returns_BxT), resp * expected[:, None], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(advantages_BxT), resp * expected[:, None], rtol=1e-5,
                             atol=1e-6)

  # A host gold reward sees exactly the prompt and the response (EOS included).
  seen = []

  def gold(prompts, responses):
    seen.extend(zip(prompts, responses))
    return np.arange(len(prompts), dtype=np.float32)

  ro_gold = evaluate_samples(samples, graphdef, params, ref_params, from_token_lists(gold),
                             prompt_len=p, eos_id=EOS)
  assert seen[0] == ([5, 6], [7, EOS]) and seen[2] == ([7], [3, 4, 5, 6, 7])
  np.testing.assert_array_equal(np.asarray(ro_gold.scores), np.arange(4))


def test_sampled_rollout_reads_scores_at_the_last_real_token(mesh):
  graphdef, params = _lm(mesh, 3)
  _, ref_params = _lm(mesh, 4)
  rm_graphdef, rm_params = sharding.init_params(lambda r: ScalarModel(LM, rngs=r), mesh,
                                                jax.random.key(5))
  prompts = np.tile(np.asarray([[0, 5, 6], [4, 5, 6]], np.int32), (32, 1))
  mask = (prompts != 0).astype(np.int32)
  sampling = SamplingConfig(max_new_tokens=6, eos_id=EOS, pad_id=PAD)
  n = len(prompts)
  ro = rollout(graphdef, params, ref_params, RewardModel(rm_graphdef, rm_params), prompts, mask,
               jax.random.key(6), sampling)
  attn = np.asarray(ro.attention_mask)
  lengths = np.asarray(ro.response_mask).sum(-1)
  assert len(set(lengths.tolist())) > 2, 'responses should end at different lengths'
  values_BxT = np.asarray(nnx.merge(rm_graphdef, rm_params)(ro.tokens, ro.attention_mask))
  np.testing.assert_allclose(np.asarray(ro.scores), values_BxT[np.arange(n), 3 + lengths - 1],
                             rtol=1e-5, atol=1e-6)
  assert np.all(attn[np.arange(n), 3 + lengths - 1] == 1)
  # The recomputed log-probs are the sampler's.
  sampled = sample(graphdef, params, jnp.asarray(prompts), jnp.asarray(mask), jax.random.key(6),
                   sampling)
  np.testing.assert_allclose(np.asarray(ro.logprobs), np.asarray(sampled.logprobs), atol=2e-5)


def test_config_validation():
  with pytest.raises(ConfigError, match='samples_per_prompt'):
    ppo.PPOConfig(algorithm='rloo', samples_per_prompt=1).validate()
  with pytest.raises(ConfigError, match='top_k'):
    ppo.PPOConfig(sampling=SamplingConfig(top_k=5)).validate()
  with pytest.raises(ConfigError, match='eos_id'):
    ppo.PPOConfig(no_eos_score=-1.0).validate()
  assert ppo.PPOConfig(algorithm='grpo', samples_per_prompt=4).resolved_kl_penalty == 'loss'
  assert ppo.PPOConfig().resolved_kl_penalty == 'reward'


# ---------------------------------------------------------------------------------------------
# The PPO update on 1 and 8 devices


def test_ppo_step_same_on_one_and_eight_devices():
  meshes = [[1, 1, 1], [8, 1, 1], [2, 2, 2]]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'JAX_COMPILATION_CACHE_DIR': jax.config.jax_compilation_cache_dir or ''}
  proc = subprocess.run([sys.executable, str(Path(__file__).with_name('ppo_sharded_worker.py')),
                         json.dumps(meshes)], capture_output=True, text=True, env=env, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  base = report[str(meshes[0])]
  assert base['metrics']['policy/clipfrac'] > 0  # the update really clips
  for m in meshes[1:]:
    got = report[str(m)]
    assert got['loss'] == pytest.approx(base['loss'], rel=1e-5)
    np.testing.assert_allclose(got['scores'], base['scores'], rtol=1e-6)
    np.testing.assert_allclose(got['kl'], base['kl'], rtol=1e-4, atol=1e-6)
    assert got['kl_coef'] == pytest.approx(base['kl_coef'], rel=1e-6)
    for name, g in base['grads'].items():
      np.testing.assert_allclose(got['grads'][name], g, rtol=1e-4, atol=1e-6, err_msg=f'{m} {name}')
    for name, x in base['new_params'].items():
      np.testing.assert_allclose(got['new_params'][name], x, rtol=1e-5, atol=1e-6,
                                 err_msg=f'{m} {name}')
    for key in ('loss', 'policy/approxkl', 'val/loss', 'objective/kl_exact'):
      assert got['metrics'][key] == pytest.approx(base['metrics'][key], rel=1e-4, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# The trainer on the tiny exact task


def test_adaptive_controller_moves_beta_in_the_right_direction(mesh, tmp_path):
  graphdef, ref_params, value, _ = _task_setup(mesh)
  target, horizon, batch = 0.05, 200.0, 24
  cfg = _task_cfg(n_iterations=4, kl_controller='adaptive', kl_target=target, kl_horizon=horizon,
                  kl_coef=0.2, optimizer=OptimizerConfig(learning_rate=3e-2, eps=1e-5))
  ppo.train_ppo(cfg, (graphdef, ref_params), ref_params, exact_task_reward(TASK), _prompts_fn(8),
                tmp_path, value=value, mesh=mesh, progress=False)
  records = _records(tmp_path)
  signs = set()
  for before, after in zip(records, records[1:]):
    error = np.clip(before['objective/kl'] / target - 1.0, -0.2, 0.2)
    assert after['kl_coef'] == pytest.approx(before['kl_coef'] * (1 + error * batch / horizon),
                                             rel=1e-5)
    signs.add(np.sign(after['kl_coef'] - before['kl_coef']) == np.sign(error))
    signs.add(np.sign(error))
  # KL starts at 0 (π = π_ref: β falls), then overshoots the target (β rises); always in step.
  assert signs == {True, -1.0, 1.0}


def test_resume_is_exact(mesh, tmp_path):
  graphdef, ref_params, value, _ = _task_setup(mesh)
  cfg = _task_cfg(n_iterations=4, kl_controller='adaptive', kl_target=0.1, kl_horizon=500.0)
  run = lambda d, **kw: ppo.train_ppo(cfg, (graphdef, ref_params), ref_params,  # noqa: E731
                                      exact_task_reward(TASK), _prompts_fn(4), d, value=value,
                                      mesh=mesh, progress=False, **kw)
  full = run(tmp_path / 'full')
  run(tmp_path / 'split', stop_after=2)
  assert [r['step'] for r in _records(tmp_path / 'split')] == [1, 2]
  resumed = run(tmp_path / 'split')
  as_data = lambda s: jax.tree.map(  # noqa: E731
      lambda x: np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
                           else x), s)
  a, b = as_data(full), as_data(resumed)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert int(a['step']) == 4 and a['kl_coef'] != cfg.kl_coef

  def strip(records):
    return [{k: v for k, v in r.items() if not k.startswith('time/')} for r in records]

  assert strip(_records(tmp_path / 'full')) == strip(_records(tmp_path / 'split'))


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(mesh, tmp_path):
  graphdef, ref_params, value, _ = _task_setup(mesh)
  gold = exact_task_reward(TASK)
  calls = []

  def flaky(tokens, attn, resp):
    calls.append(1)
    scores = gold(tokens, attn, resp)
    return scores * np.nan if len(calls) == 3 else scores

  cfg = _task_cfg(n_iterations=5, save_every=1)
  with pytest.raises(TrainingDiverged, match='step 3'):
    ppo.train_ppo(cfg, (graphdef, ref_params), ref_params, flaky, _prompts_fn(4), tmp_path,
                  value=value, mesh=mesh, progress=False)
  assert Checkpointer(tmp_path / 'checkpoints', {}).latest_step() == 2
  assert [r['step'] for r in _records(tmp_path)] == [1, 2]


@pytest.mark.parametrize('algorithm', ['rloo', 'grpo'])
def test_rloo_and_grpo_improve_the_gold_reward(mesh, tmp_path, algorithm):
  graphdef, ref_params, _, logp_of = _task_setup(mesh)
  r = jnp.asarray(exact.gold_reward(TASK))
  cfg = _task_cfg(algorithm=algorithm, samples_per_prompt=8, n_iterations=15, ppo_epochs=1,
                  num_minibatches=1, kl_coef=0.1, optimizer=OptimizerConfig(learning_rate=1e-2))
  state = ppo.train_ppo(cfg, (graphdef, ref_params), ref_params, exact_task_reward(TASK),
                        _prompts_fn(2), tmp_path, mesh=mesh, progress=False)
  assert 'value' not in state
  ref_logp = logp_of(ref_params)
  before = float(exact.objective(ref_logp, ref_logp, r, 0.1).mean())
  after = float(exact.objective(logp_of(state['policy']), ref_logp, r, 0.1).mean())
  assert after > before + 0.3, (before, after)
  records = _records(tmp_path)
  assert ('policy/kl_loss' in records[-1]) == (algorithm == 'grpo')


# ---------------------------------------------------------------------------------------------
# Best-of-N


def test_best_of_n_keeps_the_best_and_matches_the_exact_law(mesh):
  graphdef, ref_params, _, logp_of = _task_setup(mesh)
  r = exact.gold_reward(TASK)
  gold = exact_task_reward(TASK)
  n, per_prompt = 4, 1000
  prompts_BxP, mask_BxP = _prompts_fn(per_prompt)(0)
  kept, scores_BxN = evaluate.best_of_n_samples(
      graphdef, ref_params, prompts_BxP, mask_BxP, jax.random.key(0), TASK_SAMPLING, n,
      lambda t, a, m: gold(np.asarray(t), np.asarray(a), np.asarray(m)))
  kept_scores = gold(kept.tokens, kept.attention_mask, kept.response_mask)
  np.testing.assert_array_equal(kept_scores, scores_BxN.max(-1))
  # The frequencies of the kept responses follow the exact Best-of-N law.
  ref_logp = logp_of(ref_params)
  bon_logp = exact.best_of_n_logp(ref_logp, jnp.asarray(r), n)
  index = np.asarray(exact.response_index(TASK, np.asarray(kept.tokens)[:, 1:]))
  prompt = np.repeat(np.arange(TASK.n_prompts), per_prompt)
  freq = np.zeros((TASK.n_prompts, TASK.n_responses))
  np.add.at(freq, (prompt, index), 1.0 / per_prompt)
  tv = 0.5 * np.abs(freq - np.exp(np.asarray(bon_logp))).sum(-1)
  assert np.all(tv < 0.1), tv
  assert float(kept_scores.mean()) == pytest.approx(
      float(exact.expected_reward(bon_logp, jnp.asarray(r)).mean()), abs=0.08)
  # Exact KL: 0 for N = 1, below the analytic bound, growing with N.
  kls = [float(exact.kl(exact.best_of_n_logp(ref_logp, jnp.asarray(r), k), ref_logp).mean())
         for k in (1, 2, 4, 16)]
  assert abs(kls[0]) < 1e-5 and np.all(np.diff(kls) > 0)
  assert kls[2] <= float(exact.best_of_n_kl_bound(n)) + 1e-6
  assert float(exact.best_of_n_kl_bound(n)) == pytest.approx(math.log(n) - (n - 1) / n)


def test_exact_reward_table_matches_the_reward_model(mesh):
  rm_graphdef, rm_params = sharding.init_params(lambda k: ScalarModel(TASK_MODEL, rngs=k), mesh,
                                                jax.random.key(3))
  table = np.asarray(reward_table(TASK, rm_graphdef, rm_params, batch_size=50))
  seqs = exact.full_sequences(TASK)
  for x, y in ((0, 0), (1, 17), (2, TASK.n_responses - 1)):
    tokens = jnp.asarray(seqs[x, y][None])
    direct = nnx.merge(rm_graphdef, rm_params)(tokens, jnp.ones_like(tokens))[0, -1]
    assert table[x, y] == pytest.approx(float(direct), rel=1e-5, abs=1e-6)


def test_adaptive_controller_reaches_the_target_kl(mesh, tmp_path):
  """From β₀ = 0.05 (KL ≈ 3 nats at equilibrium) the controller raises β until the KL settles
  at the 1-nat target: both the controller's measurement (k1) and the exact KL by enumeration
  end within ±20 %."""
  graphdef, ref_params, value, logp_of = _task_setup(mesh)
  target = 1.0
  cfg = _task_cfg(n_iterations=300, kl_controller='adaptive', kl_target=target, kl_horizon=480.0,
                  kl_coef=0.05)
  ref_logp = logp_of(ref_params)

  def eval_fn(state, step):
    return {'kl': float(exact.kl(logp_of(state['policy']), ref_logp).mean())}

  ppo.train_ppo(cfg, (graphdef, ref_params), ref_params, exact_task_reward(TASK), _prompts_fn(16),
                tmp_path, value=value, mesh=mesh, progress=False, eval_every=10, eval_fn=eval_fn)
  records = _records(tmp_path)
  evals = [json.loads(line) for line in (tmp_path / 'eval.jsonl').read_text().splitlines()]
  assert records[-1]['kl_coef'] > 4 * cfg.kl_coef
  measured = np.mean([r['objective/kl'] for r in records[-80:]])
  enumerated = np.mean([e['kl'] for e in evals if e['step'] > 220])
  assert abs(measured / target - 1) < 0.2, measured
  assert abs(enumerated / target - 1) < 0.2, enumerated
