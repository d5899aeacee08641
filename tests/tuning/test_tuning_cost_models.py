"""Cost models rank a synthetic objective on held-out configs (Kendall tau above a bar)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.stats import kendalltau

from jaxsched.tuning import cost_models as cm

# Bar on held-out configs after training on 200: a random ranking scores ~0 +- 0.05.
TAU_BAR = 0.75


def _objective(x):
  """Smooth synthetic run time (float64 numpy) with interactions and one failing region."""
  x = np.asarray(x, np.float64)
  t = np.exp(0.3 * ((x[:, 0] - 2) ** 2 + 0.5 * (x[:, 1] - 5) ** 2 + 0.2 * x[:, 2] * x[:, 3]))
  return np.where((x[:, 0] == 7) & (x[:, 1] == 0), np.inf, t)


def _data(seed=0, n=400):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 8, (n, 4)).astype(np.float32)
  return x[:200], _objective(x[:200]), x[200:], _objective(x[200:])


def _tau(pred, cost):
  ok = np.isfinite(cost)
  return kendalltau(pred[ok], cost[ok]).statistic


@pytest.mark.parametrize("name", ["xgb", "mlp"])
def test_vector_models_rank_held_out_configs(name):
  xt, ct, xh, ch = _data()
  model = cm.make_cost_model(name, seed=1).fit(xt, ct)
  pred = model.predict(xh)
  assert pred.shape == (200,) and np.all(np.isfinite(pred))
  assert _tau(pred, ch) > TAU_BAR
  # Lower prediction = faster: the predicted best is among the truly fast held-out configs.
  assert ch[np.argmin(pred)] <= np.quantile(ch[np.isfinite(ch)], 0.1)


def _loop_tree(x):
  """A loop-nest-like tree whose shape depends on the config (x[3] > 3 adds a node)."""
  leaf_a = ([x[0], 1.0, 0.0], [])
  leaf_b = ([x[1], 0.0, 1.0], [])
  kids = [leaf_a, ([x[2], 0.5, 0.5], [leaf_b])]
  if x[3] > 3:
    kids.append(([x[3], 1.0, 1.0], []))
  return cm.Tree.from_nested(([0.0, 0.0, 0.0], kids))


@pytest.mark.parametrize("wide", [True, False])
def test_treegru_ranks_trees_and_vmaps_over_padded_batches(wide):
  """The tree path alone (the root's features are 0 here, so the wide path adds nothing) ranks
  held-out trees; with and without the wide path's parameters."""
  xt, ct, xh, ch = _data()
  # x[3] only enters through the optional node (0 when absent): fold it into the objective.
  xt[:, 3] = np.where(xt[:, 3] > 3, xt[:, 3], 0)
  xh[:, 3] = np.where(xh[:, 3] > 3, xh[:, 3], 0)
  ct, ch = _objective(xt), _objective(xh)
  bt = cm.pad_trees([_loop_tree(r) for r in xt])
  bh = cm.pad_trees([_loop_tree(r) for r in xh], max_nodes=8, max_children=4)
  assert bt.features.shape[1] == 5 and bh.features.shape[1:] == (8, 3)
  model = cm.TreeGRUCostModel(seed=0, wide=wide).fit(bt, ct)
  pred = model.predict(bh)
  assert _tau(pred, ch) > TAU_BAR
  # Padding must not change a tree's score.
  one = model.predict(cm.pad_trees([_loop_tree(xh[0])]))
  np.testing.assert_allclose(one[0], pred[0], rtol=1e-4, atol=1e-4)


def test_bootstrap_ensemble_mean_std_and_ucb():
  xt, ct, xh, ch = _data(seed=3)
  ens = cm.BootstrapEnsemble(lambda s: cm.XGBCostModel(seed=s, num_rounds=40), num_members=3)
  mean, std = ens.fit(xt, ct).predict_mean_std(xh)
  assert _tau(mean, ch) > TAU_BAR
  assert np.all(std >= 0) and std.max() > 0
  np.testing.assert_allclose(ens.predict_ucb(xh, kappa=2.0), mean - 2.0 * std, rtol=1e-5)


def test_groups_restrict_pairs_to_a_workload():
  # Workload 1 holds only the fast half of the configs, run 100x slower (a bigger problem).
  # Pairs across workloads would teach "fast configs are slow"; within-group pairs cannot.
  xt, ct, xh, ch = _data(seed=5)
  fast = ct < np.median(ct)
  x = np.concatenate([xt, xt[fast]])
  c = np.concatenate([ct, 100 * ct[fast]])
  groups = [0] * len(xt) + [1] * int(fast.sum())
  taus = {}
  for g in (groups, None):
    model = cm.make_cost_model("xgb", seed=0).fit(x, c, groups=g)
    taus[g is None] = _tau(model.predict(xh), ch)
  assert taus[False] > TAU_BAR
  assert taus[False] > taus[True] + 0.05  # Measured: 0.91 vs 0.81.


def test_registry_and_bad_inputs():
  with pytest.raises(ValueError, match=r"unknown cost model 'svm'; valid: \['mlp', 'treegru'"):
    cm.make_cost_model("svm")
  with pytest.raises(ValueError, match="already registered"):
    cm.register_cost_model("mlp", cm.MLPCostModel)
  with pytest.raises(ValueError, match="3 rows but costs has 2"):
    cm.MLPCostModel().fit(np.ones((3, 2)), [1.0, 2.0])
  with pytest.raises(RuntimeError, match="before fit"):
    cm.XGBCostModel().predict(np.ones((1, 2)))
  with pytest.raises(ValueError, match="children must precede"):
    cm.Tree(np.ones((2, 1)), ((1,), ()))


def test_tree_levels_group_nodes_by_height():
  # Tree 0: leaves 0, 1, 3; node 2 over 1; root 4 over 0, 2, 3. Tree 1: a root over one leaf.
  kids = np.full((2, 5, 3), -1, np.int32)
  kids[0, 2, :1] = [1]
  kids[0, 4] = [0, 2, 3]
  kids[1, 1, :1] = [0]
  levels = cm.tree_levels(kids, np.array([5, 2]))
  assert levels.shape == (2, 3, 3)
  np.testing.assert_array_equal(levels[0], [[0, 1, 3], [2, -1, -1], [4, -1, -1]])
  np.testing.assert_array_equal(levels[1], [[0, -1, -1], [1, -1, -1], [-1, -1, -1]])


def _treegru_numpy(p, feats, kids, root, wide):
  """Child-sum TreeGRU forward in float64 numpy, one node at a time (children first)."""
  f64 = {k: np.asarray(v, np.float64) for k, v in p.items()}
  hsz = f64["uh"].shape[0]
  x = np.tanh(feats @ f64["embed"] + f64["embed_b"]) @ f64["wx"] + f64["wx_b"]
  hs = np.zeros((len(feats), hsz))
  sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
  for i in range(root + 1):
    hc = sum((hs[k] for k in kids[i] if k >= 0), np.zeros(hsz))
    zr = sig(x[i, : 2 * hsz] + hc @ f64["wh"])
    z, r = zr[:hsz], zr[hsz:]
    hs[i] = (1 - z) * hc + z * np.tanh(x[i, 2 * hsz :] + (r * hc) @ f64["uh"])
  h = hs[root]
  if wide:
    w = feats[root] @ f64["wide"] + f64["wide_b"]
    h = h + 0.5 * w * (1 + np.tanh(math.sqrt(2 / math.pi) * (w + 0.044715 * w**3)))  # jax's GELU
  return float(h @ f64["head"][:, 0] + f64["head_b"][0])


@pytest.mark.parametrize("levels", [True, False])
def test_treegru_forward_matches_numpy(monkeypatch, levels):
  """Level-by-level and node-by-node evaluation both equal a float64 numpy TreeGRU."""
  monkeypatch.setattr(cm, "_TREE_LEVELS", levels)
  rng = np.random.default_rng(4)
  trees = [_loop_tree(r) for r in rng.integers(0, 8, (6, 4)).astype(np.float32)]
  batch = cm.pad_trees(trees, max_nodes=7, max_children=4)
  model = cm.TreeGRUCostModel(seed=0, steps=3).fit(batch, rng.random(6) + 1)
  pred = model.predict(batch)
  g = nnx.to_pure_dict(model.params)
  p = {
    m + sfx: np.asarray(g[m][k])
    for m in ("embed", "wx", "wh", "uh", "wide", "head")
    for k, sfx in (("kernel", ""), ("bias", "_b"))
    if k in g[m]
  }
  norm = model._normalize(batch, fit=False)
  for b in range(6):
    want = _treegru_numpy(
      p,
      np.asarray(norm.features[b], np.float64),
      norm.children[b],
      int(norm.num_nodes[b]) - 1,
      wide=True,
    )
    np.testing.assert_allclose(pred[b], want, rtol=2e-4, atol=2e-4)


def _moved(x):
  """A related workload: ``_objective`` with x[0]'s optimum moved by 1 and a slope in x[3]."""
  x = np.array(x, np.float64)
  x[:, 0] -= 1
  return _objective(x) * np.exp(0.1 * x[:, 3])


@pytest.mark.parametrize("name", ["xgb", "mlp"])
def test_transfer_model_learns_a_correction_to_the_base(name):
  """A base fit on a prior workload plus a local model fit on 12 records of a related one ranks
  the new workload better than the base alone (its optimum moved) or the 12 records alone.
  Measured means over the 4 seeds: xgb 0.77 / 0.66 / 0.57, mlp 0.77 / 0.68 / 0.60."""
  taus = {"transfer": [], "base": [], "scratch": []}
  for seed in range(4):
    xt, ct, xh, _ = _data(seed=7 + seed)
    base = cm.make_cost_model(name, seed=2).fit(xt, ct)
    own = np.random.default_rng(11 + seed).integers(0, 8, (12, 4)).astype(np.float32)
    ch = _moved(xh)
    model = cm.TransferCostModel(base, cm.make_cost_model(name, seed=3))
    assert model.fitted and np.array_equal(model.predict(xh), base.predict(xh))  # base alone
    model.fit(own, _moved(own))
    taus["transfer"].append(_tau(model.predict(xh), ch))
    taus["base"].append(_tau(base.predict(xh), ch))
    scratch = cm.make_cost_model(name, seed=3).fit(own, _moved(own))
    taus["scratch"].append(_tau(scratch.predict(xh), ch))
    # The local model predicts the correction only: with the (weighted) base's, the transfer
    # prediction.
    np.testing.assert_allclose(model.predict(xh),
                               model.discount * base.predict(xh) + model.local.predict(xh),
                               rtol=1e-5, atol=1e-5)
  mean = {k: float(np.mean(v)) for k, v in taus.items()}
  assert mean["transfer"] > 0.7, mean
  assert mean["transfer"] > max(mean["base"], mean["scratch"]) + 0.05, mean


def test_transfer_discount_and_jitted_form():
  xt, ct, xh, _ = _data(seed=8)
  base = cm.MLPCostModel(seed=0).fit(xt, ct)
  model = cm.TransferCostModel(base, cm.MLPCostModel(seed=1), half_life=4.0)
  assert model.jax_apply() is None  # the local model is not fitted yet
  model.fit(xt[:8], ct[:8] * 2)
  assert model.discount == pytest.approx(0.25)  # two half-lives of 4 records
  apply, params = model.jax_apply()
  jitted = np.asarray(jax.vmap(apply, in_axes=(None, 0))(params, jnp.asarray(xh)))
  np.testing.assert_allclose(jitted, model.predict(xh), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(model.predict(xh),
                             0.25 * base.predict(xh) + model.local.predict(xh), rtol=1e-5,
                             atol=1e-5)


def test_transfer_base_reads_its_columns_only():
  """base_columns=k: the base predicts from the first k columns, the local model from all (its
  extra column here is the objective's log-cost, invalid points large, which only it can use)."""
  xt, ct, xh, ch = _data(seed=13)
  extra = lambda x: np.c_[x, np.minimum(np.log(_objective(x)), 30.0)].astype(np.float32)
  base = cm.MLPCostModel(seed=0).fit(xt, ct)
  model = cm.TransferCostModel(base, cm.MLPCostModel(seed=1), base_columns=xt.shape[1])
  np.testing.assert_array_equal(model.predict(extra(xh)), base.predict(xh))
  model.fit(extra(xt[:16]), ct[:16])
  np.testing.assert_allclose(model.predict(extra(xh)),
                             base.predict(xh) + model.local.predict(extra(xh)), rtol=1e-5,
                             atol=1e-5)
  apply, params = model.jax_apply()
  jitted = np.asarray(jax.vmap(apply, in_axes=(None, 0))(params, jnp.asarray(extra(xh))))
  np.testing.assert_allclose(jitted, model.predict(extra(xh)), rtol=1e-4, atol=1e-4)
  assert _tau(model.predict(extra(xh)), ch) > 0.9
  with pytest.raises(ValueError, match="base_columns=0 must be >= 1"):
    cm.TransferCostModel(base, cm.MLPCostModel(), base_columns=0)
  narrow = cm.TransferCostModel(base, cm.MLPCostModel(), base_columns=9)
  with pytest.raises(ValueError, match=r"base_columns=9 needs \[n, F >= 9\] array features, "
                                       r"got ndarray of shape \(4, 5\)"):
    narrow.predict(extra(xh[:4]))


def test_transfer_weights_the_base_by_how_it_ranks_the_local_records():
  """RGPE-style weight: Kendall's tau (numpy float64 double loop here) of the base's
  predictions on the local records, floored at 0; an anti-correlated base drops out."""
  xt, ct, xh, ch = _data(seed=12)
  base = cm.XGBCostModel(seed=0, num_rounds=40).fit(xt, ct)
  own, own_c = xh[:10], ch[:10]
  p = base.predict(own).astype(np.float64)
  c = np.where(np.isfinite(own_c), own_c, np.inf)
  conc = sum(np.sign(p[i] - p[j]) * np.sign(c[i] - c[j]) for i in range(10) for j in range(i))
  model = cm.TransferCostModel(base, cm.XGBCostModel(num_rounds=20), rank_weighted=True)
  model.fit(own, own_c)
  assert model.trust == pytest.approx(max(0.0, conc / 45)) and model.trust > 0.3
  inverse = cm.TransferCostModel(base, cm.XGBCostModel(num_rounds=20), rank_weighted=True)
  inverse.fit(own, 1.0 / own_c)
  assert inverse.trust == 0.0 and inverse.discount == 0.0
  np.testing.assert_allclose(inverse.predict(xh), inverse.local.predict(xh))
  few = cm.TransferCostModel(base, cm.XGBCostModel(num_rounds=20), rank_weighted=True,
                             min_rank_records=11)
  assert few.fit(own, 1.0 / own_c).trust == 1.0  # too few records to judge the base yet


def test_transfer_with_an_ensemble_gives_ucb():
  xt, ct, xh, _ = _data(seed=9)
  base = cm.XGBCostModel(seed=0, num_rounds=40).fit(xt, ct)
  ens = cm.BootstrapEnsemble(lambda s: cm.XGBCostModel(seed=s, num_rounds=40), num_members=3)
  model = cm.TransferCostModel(base, ens)
  np.testing.assert_allclose(model.predict_ucb(xh), base.predict(xh))  # before any record
  model.fit(xt[:20], ct[:20])
  mean, std = ens.predict_mean_std(xh, base_margin=model.discount * base.predict(xh))
  np.testing.assert_allclose(model.predict_ucb(xh, kappa=1.5), mean - 1.5 * std, rtol=1e-5)
  assert _tau(mean, _objective(xh)) > TAU_BAR and std.max() > 0


def test_transfer_bad_inputs():
  xt, ct, _, _ = _data(seed=10)
  with pytest.raises(ValueError, match="needs a fitted base"):
    cm.TransferCostModel(cm.XGBCostModel(), cm.XGBCostModel())
  base = cm.XGBCostModel(num_rounds=5).fit(xt, ct)

  class NoMargin(cm.CostModel):
    pass

  with pytest.raises(ValueError, match="NoMargin does not"):
    cm.TransferCostModel(base, NoMargin())
  with pytest.raises(ValueError, match="half_life=0"):
    cm.TransferCostModel(base, cm.XGBCostModel(), half_life=0)
  with pytest.raises(ValueError, match="min_rank_records=1 must be >= 2"):
    cm.TransferCostModel(base, cm.XGBCostModel(), min_rank_records=1)
  with pytest.raises(ValueError, match="makes its own base_margin"):
    cm.TransferCostModel(base, cm.XGBCostModel()).fit(xt, ct, base_margin=np.zeros(200))
  for name in ("xgb", "mlp"):
    with pytest.raises(ValueError, match="200 rows but base_margin has 3"):
      cm.make_cost_model(name).fit(xt, ct, base_margin=np.zeros(3))
    with pytest.raises(ValueError, match=r"base_margin must be finite, got \[nan\]"):
      cm.make_cost_model(name).fit(xt, ct, base_margin=np.r_[np.zeros(199), np.nan])
