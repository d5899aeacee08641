"""`jaxsched prune` on an Orbax checkpoint laid out like train/'s."""

import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxsched import cli


def _write_run(workdir, model):
  with ocp.CheckpointManager((workdir / "checkpoints").absolute()) as mngr:
    mngr.save(3, args=ocp.args.Composite(model=ocp.args.StandardSave(model)))
    mngr.wait_until_finished()


def test_prune_reports_index_costs_and_saves_compressed_weights(tmp_path, capsys):
  rng = np.random.default_rng(0)
  dense = rng.normal(size=(96, 64)).astype(np.float32)
  conv = rng.normal(size=(3, 3, 8, 16)).astype(np.float32)  # 72 x 16 in im2col layout
  model = {"params": {"fc": {"kernel": dense, "bias": rng.normal(size=64).astype(np.float32)},
                      "conv": {"kernel": conv}}}
  _write_run(tmp_path, model)
  out = tmp_path / "pruned.npz"
  assert cli.main(["prune", str(tmp_path), "--sparsity", "0.9", "--min-size", "1000",
                   "--out", str(out)]) == 0
  text = capsys.readouterr().out
  assert "checkpoint step 3" in text
  assert "fc" in text and "conv" in text and "bias" not in text  # small/1-D leaves stay dense
  saved = np.load(out)
  for key, w in (("params/fc/kernel", dense), ("params/conv/kernel", conv)):
    pruned = saved[f"{key}/dense"]
    assert pruned.shape == w.shape
    kept = pruned != 0
    # Kept entries are the original weights, untouched; sparsity within 1% of the target.
    np.testing.assert_array_equal(pruned[kept], w[kept])
    assert abs(1.0 - kept.mean() - 0.9) <= 0.01
    assert saved[f"{key}/values"].size == kept.sum()
  total = [line for line in text.splitlines() if line.startswith("| total")][0]
  cells = [c.strip() for c in total.strip("|").split("|")]
  viterbi_bpn, csr_bpn = float(cells[4]), float(cells[5])
  # Independent CSR count: 32-bit column index per nonzero + 32-bit row pointers.
  nnz = sum(int((saved[f"{k}/dense"] != 0).sum()) for k in ("params/fc/kernel",
                                                               "params/conv/kernel"))
  csr_bits = 32 * nnz + 32 * (96 + 1) + 32 * (72 + 1)
  assert csr_bpn == pytest.approx(csr_bits / nnz, abs=0.01)
  # Tiles are fitted to small matrices, so the paper's <= 15% of CSR holds even here.
  assert viterbi_bpn < 0.15 * csr_bpn


def test_prune_errors_name_the_problem(tmp_path):
  with pytest.raises(SystemExit, match="no checkpoints/ directory"):
    cli.main(["prune", str(tmp_path), "--sparsity", "0.9"])
  _write_run(tmp_path, {"params": {"b": np.ones(4, np.float32)}})
  with pytest.raises(SystemExit, match="no float weight with >= 4096 elements"):
    cli.main(["prune", str(tmp_path), "--sparsity", "0.9"])
  with pytest.raises(SystemExit, match="sparsity=1.5 must be in"):
    cli.main(["prune", str(tmp_path), "--sparsity", "1.5"])
