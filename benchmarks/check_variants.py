"""Checks that the variants in benchmarks/variants.py compute what alignlab computes.

    .venv/bin/python benchmarks/check_variants.py
"""

from __future__ import annotations

import bench_common  # noqa: F401  (puts the repo on sys.path)
import jax
import jax.numpy as jnp
import numpy as np

import variants
from alignlab import logprobs
from alignlab.config import SamplingConfig


def main():
  k1, k2 = jax.random.split(jax.random.key(0))
  logits = 3 * jax.random.normal(k1, (3, 5, 37))
  targets = jax.random.randint(k2, (3, 5), 0, 37)
  w = jax.random.normal(k2, (3, 5))
  ref = logprobs.gather_logprobs
  for name, fn in (('onehot_gather', variants._onehot_gather_logprobs),
                   ('fused_logprobs', variants._fused_gather_logprobs)):
    np.testing.assert_allclose(fn(logits, targets), ref(logits, targets), rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda x: jnp.sum(w * fn(x, targets)))(logits)
    g_ref = jax.grad(lambda x: jnp.sum(w * ref(x, targets)))(logits)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)
    print(f'{name}: values and gradients match')
  # Sampling: empirical frequencies of 200k draws against softmax(logits), every chooser.
  cfg = SamplingConfig(temperature=1.0)
  row = jnp.array([[2.0, 0.5, -1.0, 1.0, 0.0, -3.0, 1.5]])
  p = np.asarray(jax.nn.softmax(row[0]))
  n = 200_000
  from alignlab import sampling
  for name, choose in (('alignlab', sampling._choose), ('flat_cdf', variants._choose_flat_cdf),
                       ('gumbel', variants._choose_gumbel)):
    keys = jax.random.split(jax.random.key(1), n)
    draws = np.asarray(jax.vmap(lambda k: choose(row, k, cfg)[0])(keys))
    freq = np.bincount(draws, minlength=7) / n
    chi2 = float(n * np.sum((freq - p) ** 2 / p))
    assert chi2 < 30, (name, freq, p, chi2)  # 6 dof: p(chi2 > 30) < 1e-4
    print(f'{name}: frequencies match softmax (chi2 {chi2:.1f}, 6 dof)')


if __name__ == '__main__':
  main()
