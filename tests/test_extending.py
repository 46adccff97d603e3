"""docs/adding_a_loss.md: its code blocks run, and the new loss trains through the trainer."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignlab import sharding
from alignlab.config import ModelConfig, OptimizerConfig
from alignlab.heads import CausalLM
from alignlab.losses.preference import PREFERENCE_LOSSES
from alignlab.train import preference
from alignlab.train.optim import make_optimizer
from alignlab.train.step import init_state, make_train_step

DOC = Path(__file__).resolve().parents[1] / 'docs' / 'adding_a_loss.md'


@pytest.fixture
def documented_loss():
  blocks = re.findall(r'```python\n(.*?)```', DOC.read_text(), flags=re.S)
  assert len(blocks) == 3
  namespace: dict = {}
  for block in blocks:
    exec(compile(block, str(DOC), 'exec'), namespace)  # the page's own code, as a reader runs it
  yield namespace['exponential']
  PREFERENCE_LOSSES.pop('exponential', None)


def test_documented_loss_trains(documented_loss):
  assert PREFERENCE_LOSSES['exponential'] is documented_loss
  assert preference.loss_hparam_names('exponential') == ('beta', 'scale')
  cfg = ModelConfig(vocab_size=31, max_seq_len=12, d_model=16, n_layers=1, n_heads=2, d_ff=24)
  mesh = sharding.make_mesh(sharding.MeshConfig.single(), jax.devices()[:1])
  graphdef, params = sharding.init_params(lambda r: CausalLM(cfg, rngs=r), mesh, jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {}
  prompt = rng.integers(1, 31, (8, 4))  # a pair shares its prompt
  for side in ('chosen', 'rejected'):
    batch[f'{side}_tokens'] = np.concatenate([prompt, rng.integers(1, 31, (8, 5))], 1).astype(np.int32)
    batch[f'{side}_attention_mask'] = np.ones((8, 9), np.int32)
    batch[f'{side}_response_mask'] = np.array([[0] * 4 + [1] * 5] * 8, np.int32)
  batch = preference.reference_logps(graphdef, params, batch, prompt_len=4, batch_size=8)
  tx = make_optimizer(OptimizerConfig(learning_rate=1e-2))
  step = jax.jit(make_train_step(preference.make_loss_fn(graphdef, 'exponential', prompt_len=4), tx))
  state = init_state(params, tx, jax.random.key(0))
  hp = {'learning_rate': jnp.float32(3e-2), 'beta': jnp.float32(1.0), 'scale': jnp.float32(2.0)}
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  losses = []
  for _ in range(5):
    state, metrics = step(state, batch, hp)
    losses.append(float(metrics['loss']))
  assert losses[0] == pytest.approx(2.0, abs=1e-5)  # policy = reference: scale · exp(0)
  assert losses[-1] < losses[0]
