"""Composition with jax.jit, jax.vmap and jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsched.pipelines import apps


def _box_matrix(n: int) -> np.ndarray:
  """The 1-D clamped 3-tap box filter as an n x n float64 matrix."""
  m = np.zeros((n, n))
  for j in range(n):
    for d in (-1, 0, 1):
      m[j, min(max(j + d, 0), n - 1)] += 1 / 3
  return m


@pytest.mark.parametrize("schedule", ["inline", "tiled_small", "sliding"])
def test_grad_through_blur_is_the_analytic_adjoint(schedule):
  h, w = 37, 70
  rng = np.random.default_rng(0)
  a = rng.random((h, w), dtype=np.float32)
  wts = rng.standard_normal((h, w)).astype(np.float32)
  fn = apps.make("blur", schedule).compile()
  grad = jax.grad(lambda x: jnp.sum(fn(x) * wts))(a)
  # out = V @ a @ H.T, so d<w, out>/da = V.T @ w @ H.
  v, hm = _box_matrix(h), _box_matrix(w)
  want = v.T @ wts.astype(np.float64) @ hm
  np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-5, atol=1e-6)


def test_vmap_over_a_batch_equals_a_loop_and_jit_composes():
  batch = np.random.default_rng(1).random((3, 19, 23), dtype=np.float32)
  fn = apps.make("harris", "tiled_small").compile()
  got = jax.jit(jax.vmap(fn))(batch)
  want = np.stack([np.asarray(fn(b)) for b in batch])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
  # Params batch too.
  un = apps.make("unsharp", "root").compile()
  sig = jnp.asarray([0.8, 1.5, 2.0], jnp.float32)
  got = jax.vmap(lambda im, s: un(im, sigma=s))(batch, sig)
  want = np.stack([np.asarray(un(b, sigma=float(s))) for b, s in zip(batch, sig, strict=True)])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
