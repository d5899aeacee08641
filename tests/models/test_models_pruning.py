"""Gradual magnitude pruning: schedule values, target sparsity, zeros that stay zero."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsched.models import pruning

SCHED = dict(initial=0.0, final=0.8, begin_step=2, end_step=10, frequency=2, power=3)


@pytest.mark.parametrize(
  "step,want",
  [
    (0, 0.0),  # before begin: initial
    (2, 0.0),  # t = t0
    (3, 0.0),  # latest pruning step is still 2
    (4, 0.8 - 0.8 * 0.75**3),  # (1 - 2/8)^3
    (5, 0.8 - 0.8 * 0.75**3),
    (6, 0.8 - 0.8 * 0.5**3),
    (8, 0.8 - 0.8 * 0.25**3),
    (10, 0.8),
    (1000, 0.8),
  ],
)
def test_polynomial_sparsity_hand_values(step, want):
  got = pruning.polynomial_sparsity(step, **SCHED)
  np.testing.assert_allclose(float(got), want, rtol=1e-6, atol=1e-7)


def test_polynomial_sparsity_reaches_final_at_end_off_grid():
  kw = dict(initial=0.1, final=0.9, begin_step=0, end_step=7, frequency=3, power=2)
  # Pruning steps 0, 3, 6 and end_step 7: step 5 uses t = 3.
  vals = [float(pruning.polynomial_sparsity(s, **kw)) for s in (5, 6, 7)]
  np.testing.assert_allclose(vals, [0.9 - 0.8 * (4 / 7) ** 2, 0.9 - 0.8 * (1 / 7) ** 2, 0.9], 1e-6)


@pytest.mark.parametrize(
  "bad,match",
  [
    (dict(final=1.0), "final=1.0"),
    (dict(end_step=2), "end_step=2"),
    (dict(frequency=0), "frequency=0"),
  ],
)
def test_schedule_validation(bad, match):
  with pytest.raises(ValueError, match=match):
    pruning.polynomial_sparsity(0, **{**SCHED, **bad})


def test_unknown_scope_lists_choices():
  with pytest.raises(ValueError, match="valid choices"):
    pruning.gradual_pruning(optax.sgd(0.1), schedule_kwargs=SCHED, scope="block")


def _problem(seed):
  """A random least-squares problem with a two-layer parameter tree (plus an unprunable bias)."""
  rng = np.random.default_rng(seed)
  params = {
    "w1": jnp.asarray(rng.normal(size=(20, 30)), jnp.float32),
    "w2": jnp.asarray(rng.normal(size=(30, 10)) * 3, jnp.float32),
    "b": jnp.asarray(rng.normal(size=(10,)), jnp.float32),
  }
  x = jnp.asarray(rng.normal(size=(16, 20)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(16, 10)), jnp.float32)

  def loss(p):
    return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] + p["b"] - y) ** 2)

  return params, jax.grad(loss)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gradual_pruning_reaches_target_and_zeros_stay_zero(scope):
  params, grad = _problem(0)
  tx = pruning.gradual_pruning(optax.adam(1e-2), schedule_kwargs=SCHED, scope=scope)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    upd, state = tx.update(grad(params), state, params)
    return optax.apply_updates(params, upd), state

  history = []
  for t in range(16):
    params, state = step(params, state)
    history.append((jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, state.masks)))
    want = float(pruning.polynomial_sparsity(t, **SCHED))
    w = np.concatenate([np.asarray(params["w1"]).ravel(), np.asarray(params["w2"]).ravel()])
    np.testing.assert_allclose(np.mean(w == 0), want, atol=0.005)
    for name in ("w1", "w2"):
      p, m = np.asarray(params[name]), np.asarray(state.masks[name])
      assert np.all(p[~m] == 0)  # pruned weights are exact zeros
      if scope == "layer":
        np.testing.assert_allclose(np.mean(~m), want, atol=0.005)
    assert np.all(np.asarray(state.masks["b"]))  # biases are never pruned
    assert np.all(np.asarray(params["b"]) != 0)
  # A weight pruned once stays zero through every later step, and masks freeze after end_step.
  for (_, m_prev), (p_next, _) in zip(history, history[1:], strict=False):
    for name in ("w1", "w2"):
      assert np.all(p_next[name][~m_prev[name]] == 0)
  for _, m in history[SCHED["end_step"] :]:
    for name in ("w1", "w2"):
      np.testing.assert_array_equal(m[name], history[SCHED["end_step"]][1][name])
  # Live weights keep training after the masks freeze.
  assert not np.array_equal(history[-1][0]["w1"], history[-2][0]["w1"])


def test_layer_scope_prunes_smallest_magnitudes():
  params, _ = _problem(1)
  kw = dict(initial=0.5, final=0.5, begin_step=0, end_step=1)
  tx = pruning.gradual_pruning(optax.sgd(0.0), schedule_kwargs=kw)
  upd, state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  for name in ("w1", "w2"):
    w = np.abs(np.asarray(params[name], np.float64)).ravel()
    keep = np.asarray(state.masks[name]).ravel()
    assert keep.sum() == w.size - round(0.5 * w.size)
    assert w[keep].min() >= w[~keep].max()
  new = optax.apply_updates(params, upd)
  np.testing.assert_array_equal(np.asarray(new["w1"]) != 0, np.asarray(state.masks["w1"]))


def test_sparsity_report_counts():
  params = {"a": jnp.asarray([[1.0, 0.0], [2.0, 3.0]]), "b": jnp.asarray([0.0, 5.0, 6.0])}
  masks = {"a": jnp.asarray([[True, True], [False, True]]), "b": jnp.ones(3, bool)}
  rep = pruning.sparsity_report(params, masks)
  assert (rep["size"], rep["nonzeros"]) == (7, 4)
  assert rep["layers"]["['a']"] == dict(size=4, nonzeros=2, sparsity=0.5)
  assert pruning.sparsity_report(params)["nonzeros"] == 5
