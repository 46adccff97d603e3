"""Shows the DPO step compiling twice (state leaves without the mesh) and once with the fix.

    .venv/bin/python benchmarks/recompile_check.py nofix   # -> compiled programs: 2
    .venv/bin/python benchmarks/recompile_check.py fix     # -> compiled programs: 1
"""
import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from alignlab import sharding
from alignlab.config import MeshConfig, OptimizerConfig, ModelConfig
from alignlab.heads import CausalLM
from alignlab.train import preference
from alignlab.train.optim import make_optimizer
from alignlab.train.step import init_state, jit_step, make_train_step
import dpo_step
fix = sys.argv[1] == 'fix'
cfg = ModelConfig.tiny()
mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
graphdef, params = sharding.init_params(lambda r: CausalLM(cfg, rngs=r), mesh, jax.random.key(0))
tx = make_optimizer(OptimizerConfig())
state = init_state(jax.tree.map(jnp.copy, params), tx, jax.random.key(0))
if fix:
  state = jax.tree.map(lambda x: x if isinstance(getattr(x, 'sharding', None), NamedSharding)
                       else jax.device_put(x, NamedSharding(mesh, P())), state)
step = jit_step(make_train_step(preference.make_loss_fn(graphdef, 'dpo', prompt_len=8), tx), state, mesh)
pairs = dpo_step.make_batch(cfg, 4, 8, 8)
batch = sharding.shard_batch(pairs, mesh)
hp = {'learning_rate': jnp.float32(1e-3), 'beta': jnp.float32(0.1), 'ref_params': params}
with sharding.use_mesh(mesh):
  for _ in range(3):
    state, m = step(state, batch, hp)
print('fix' if fix else 'nofix', 'compiled programs:', step._cache_size())
