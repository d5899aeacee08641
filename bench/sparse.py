"""Viterbi-based pruning benchmark: encode time, index cost, kept |w| mass, SpMM time, compile.

Measures on this CPU (random Gaussian weights, a VD with a 4-bit comparator set to the target
density):

1. encode time of :func:`jaxsched.sparse.viterbi_prune` for 1024^2 and 4096^2 at 90% sparsity
   (target: <= 10 s for 4096^2);
2. index bits per nonzero of the Viterbi format vs CSR (int32), Deep Compression relative
   indexing (4/5-bit gaps), BCOO and the entropy bound, at 80/90/95% (target: <= 15% of CSR);
3. |w| mass kept vs magnitude pruning at the same sparsity, and how it moves with the
   compression ratio (outputs_per_bit);
4. the XLA path's SpMM (decode + scatter + dot, every call) vs a dense matmul and BCOO at 90%;
5. deviceless compile status of the Pallas kernel for H100 (Triton) and TPU v5e (Mosaic) with a
   roofline floor (max of FLOPs / peak, bytes / bandwidth).

Usage: ``python -m bench.sparse [--quick] [--num-ff 6] [--outputs-per-bit 5] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import sparse as jsparse  # noqa: E402

from jaxsched import sparse  # noqa: E402
from jaxsched.pallas import targets  # noqa: E402


def _vd(num_ff: int, r: int, sparsity: float) -> sparse.ViterbiDecompressor:
  return sparse.ViterbiDecompressor(
      num_ff, r, comparator=sparse.Comparator.for_density(1.0 - sparsity, bits=4))


def _weights(n: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((n, n)).astype(np.float32)


def _time(fn, *args, repeats: int = 5) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def encode_times(num_ff: int, r: int, sizes: tuple[int, ...]) -> list[dict]:
  vd = _vd(num_ff, r, 0.9)
  sparse.viterbi_prune(_weights(256), vd=vd, sparsity=0.9)  # compile the DP chunk shapes
  rows = []
  for n in sizes:
    w = _weights(n)
    t = time.perf_counter()
    m = sparse.viterbi_prune(w, vd=vd, sparsity=0.9)
    rows.append({"shape": f"{n}x{n}", "seconds": time.perf_counter() - t, **m.stats})
  return rows


def index_costs(num_ff: int, r: int, n: int) -> list[dict]:
  rows = []
  w = _weights(n, seed=1)
  for s in (0.8, 0.9, 0.95):
    m = sparse.viterbi_prune(w, vd=_vd(num_ff, r, s), sparsity=s)
    rep = sparse.index_cost_report(m)["formats"]
    v = rep["viterbi"]["bits_per_nonzero"]
    rel = min(rep["relative4"]["bits_per_nonzero"], rep["relative5"]["bits_per_nonzero"])
    rows.append({
        "sparsity": m.stats["sparsity"],
        **{f"{k}_bits_per_nnz": rep[k]["bits_per_nonzero"] for k in rep},
        "viterbi_vs_csr": v / rep["csr"]["bits_per_nonzero"],
        "viterbi_vs_relative": v / rel,
        "kept_mass_ratio": m.stats["kept_mass_ratio"],
    })
  return rows


def ratio_sweep(num_ff: int, n: int) -> list[dict]:
  rows = []
  w = _weights(n, seed=2)
  for r in (2, 3, 5, 8):
    m = sparse.viterbi_prune(w, vd=_vd(max(num_ff, 5), r, 0.9), sparsity=0.9)
    rep = sparse.index_cost_report(m)["formats"]
    rows.append({"outputs_per_bit": r, "viterbi_bits_per_nnz": rep["viterbi"]["bits_per_nonzero"],
                 "kept_mass_ratio": m.stats["kept_mass_ratio"], "sparsity": m.stats["sparsity"]})
  return rows


def spmm_times(num_ff: int, r: int, n: int, batch: int) -> dict:
  w = _weights(n, seed=3)
  m = sparse.viterbi_prune(w, vd=_vd(num_ff, r, 0.9), sparsity=0.9)
  x = jnp.asarray(np.random.default_rng(4).standard_normal((batch, n)), jnp.float32)
  dense = m.to_dense()
  wt = jsparse.BCOO.fromdense(dense.T)
  t_dense = _time(jax.jit(lambda x, w: x @ w), x, dense)
  t_vit = _time(jax.jit(sparse.viterbi_matmul_reference), x, m)
  t_bcoo = _time(jax.jit(lambda x, wt: (wt @ x.T).T), x, wt)
  return {"shape": f"x[{batch},{n}] @ W[{n},{n}]", "sparsity": m.stats["sparsity"],
          "dense_ms": 1e3 * t_dense, "viterbi_xla_ms": 1e3 * t_vit, "bcoo_ms": 1e3 * t_bcoo,
          "viterbi_vs_dense": t_vit / t_dense, "viterbi_vs_bcoo": t_vit / t_bcoo}


def compile_status(num_ff: int, r: int, n: int, batch: int) -> list[dict]:
  m = sparse.viterbi_prune(_weights(n, seed=5), vd=_vd(num_ff, r, 0.9), sparsity=0.9)
  x = jax.ShapeDtypeStruct((batch, n), jnp.float32)
  rows = []
  cfg = sparse.ViterbiMatmulConfig(block_m=128)
  fn = lambda x, m: sparse.viterbi_matmul(x, m, config=cfg)
  for name in ("h100", "tpu-v5e"):
    tgt = targets.get_target(name)
    row = {"target": name}
    t = time.perf_counter()
    try:
      targets.compile_for(fn, x, m, target=name)
      row["status"] = "ok"
    except Exception as e:  # report the compiler's words, keep benchmarking
      row["status"] = f"FAILED: {str(e).splitlines()[0][:120]}"
    row["compile_s"] = time.perf_counter() - t
    flops = 2.0 * batch * n * n  # dense tile products (the kernel multiplies dense tiles)
    if tgt.kind == "tpu":  # one-hot gather: two [tk, cap] x [cap, tn] products per tile
      cap = m.max_tile_nnz + 128
      flops += 2 * 2.0 * m.tile_k * m.tile_n * cap * (n // m.tile_k) * (n // m.tile_n) * (
          -(-batch // 128))
    nbytes = 4 * (batch * n * 2) + m.nbytes * -(-batch // 128)
    floor = max(flops / tgt.flops("float32"), nbytes / tgt.hbm_bytes_per_s)
    dense_floor = max(2.0 * batch * n * n / tgt.flops("float32"),
                      4 * (batch * n * 2 + n * n) / tgt.hbm_bytes_per_s)
    row.update(flops=flops, bytes=nbytes, floor_us=1e6 * floor, dense_floor_us=1e6 * dense_floor)
    rows.append(row)
  return rows


def _table(title: str, rows: list[dict]) -> str:
  keys = list(rows[0])
  out = [f"\n## {title}", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  for row in rows:
    out.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v)
                                 for v in row.values()) + " |")
  return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="skip 4096^2, smaller SpMM")
  p.add_argument("--num-ff", type=int, default=6)  # 8 keeps the same |w| mass here, ~2x slower
  p.add_argument("--outputs-per-bit", type=int, default=5)
  p.add_argument("--json", default=None, help="also write the results here")
  a = p.parse_args(argv)
  k, r = a.num_ff, a.outputs_per_bit
  res = {
      "vd": {"num_ff": k, "outputs_per_bit": r, "comparator_bits": 4},
      "encode": encode_times(k, r, (1024,) if a.quick else (1024, 4096)),
      "index_cost_1024": index_costs(k, r, 1024),
      "outputs_per_bit_sweep_1024_90pct": ratio_sweep(k, 1024),
      "spmm_90pct": [spmm_times(k, r, 1024 if a.quick else 2048, 256)],
      "compile": compile_status(k, r, 1024, 256),
  }
  print(f"Viterbi pruning, VD num_ff={k}, outputs_per_bit={r}, 4-bit comparator, "
        f"{jax.devices()[0].platform}")
  for name, rows in res.items():
    if isinstance(rows, list):
      print(_table(name, rows))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(res, f, indent=1)
  return res


if __name__ == "__main__":
  main()
