"""Loop-nest features: tree and vector forms of a lowered pipeline."""

import math

import numpy as np
import pytest

from jaxsched.pipelines import apps
from jaxsched.tuning import cost_models as cm
from jaxsched.tuning.features import NODE_FEATURES, loop_nest_tree, loop_nest_vector


def _nest(schedule):
  return apps.make("blur", schedule).pipeline.lower((64, 64), input_shapes=[(64, 64)])


def test_tree_mirrors_the_loop_nest():
  nest = _nest("tiled")
  nodes = [n for _, n in nest.nodes()]
  tree = loop_nest_tree(nest)
  assert len(tree.children) == len(nodes) + 1  # + the virtual root, last.
  assert tree.features[-1, NODE_FEATURES.index("is_root")] == 1.0
  # Post-order: every node's children precede it; leaves are computes.
  col = {n: i for i, n in enumerate(NODE_FEATURES)}
  loops = [n for n in nodes if hasattr(n, "extent")]
  computes = [n for n in nodes if hasattr(n, "points")]
  assert tree.features[:, col["is_loop"]].sum() == len(loops)
  assert tree.features[:, col["is_compute"]].sum() == len(computes)
  got = sorted(tree.features[tree.features[:, col["is_loop"]] == 1, col["log_extent"]])
  np.testing.assert_allclose(got, sorted(math.log2(1 + n.extent) for n in loops), rtol=1e-6)
  got = sorted(tree.features[tree.features[:, col["is_compute"]] == 1, col["recompute"]])
  np.testing.assert_allclose(got, sorted(n.recompute for n in computes), rtol=1e-6)
  # The virtual root carries the whole nest's summary; other nodes leave those columns at 0.
  f = nest.features()
  assert tree.features[-1, col["nest_stages"]] == pytest.approx(math.log2(1 + f["stages"]))
  assert tree.features[-1, col["nest_max_recompute"]] == pytest.approx(f["max_recompute"])
  assert tree.features[-1, col["nest_bytes_read"]] == pytest.approx(math.log2(1 + f["bytes_read"]))
  nest_cols = [i for n, i in col.items() if n.startswith("nest_")]
  assert len(nest_cols) == 12 and not tree.features[:-1, nest_cols].any()


def test_vector_features_tell_schedules_apart_and_pad_to_a_batch():
  nests = {s: _nest(s) for s in ("inline", "root", "tiled", "sliding")}
  vecs = {s: loop_nest_vector(n) for s, n in nests.items()}
  assert all(v.shape == (12,) and np.all(np.isfinite(v)) for v in vecs.values())
  assert len({v.tobytes() for v in vecs.values()}) == 4
  f = nests["root"].features()
  assert vecs["root"][0] == pytest.approx(math.log2(1 + f["stages"]))
  batch = cm.pad_trees([loop_nest_tree(n) for n in nests.values()])
  assert batch.features.shape[0] == 4 and batch.num_nodes.tolist() == [
    sum(1 for _ in n.nodes()) + 1 for n in nests.values()]


def test_unknown_node_is_rejected():
  class Nest:
    roots = [object()]

  with pytest.raises(TypeError, match="unknown loop-nest node object"):
    loop_nest_tree(Nest())
