"""``jaxsched prune``: Viterbi-prune a checkpoint's weights and report the index cost.

Reads the latest Orbax checkpoint of a training run (``WORKDIR/checkpoints/<step>``, as written
by ``python -m train.mnist``), prunes every float weight with at least ``--min-size`` elements
(dense kernels ``[K, N]`` as they are; conv kernels ``[kh, kw, cin, cout]`` in their im2col
layout ``[kh * kw * cin, cout]``) and prints, per weight and in total, the realised sparsity, the
|w| mass kept relative to magnitude pruning, and index bits per nonzero for this format, CSR,
relative indexing and the entropy bound. ``--out FILE.npz`` saves the compressed matrices
(packed bits, values, offsets) and the pruned dense weights.
"""

from __future__ import annotations

import argparse

from jaxsched import cli

_FORMATS = ("viterbi", "csr", "relative4", "relative5", "bcoo", "entropy")


def _configure(p: argparse.ArgumentParser) -> None:
  p.add_argument("workdir", help="training run directory holding checkpoints/")
  p.add_argument("--sparsity", type=float, required=True, help="target sparsity in (0, 1)")
  p.add_argument("--num-ff", type=int, default=6, help="decompressor flip-flops (2^k DP states)")
  p.add_argument("--outputs-per-bit", type=int, default=5,
                 help="mask bits per stored bit (the index compression ratio)")
  p.add_argument("--comparator-bits", type=int, default=4,
                 help="group this many VD outputs into a number compared with a threshold "
                      "(0: no comparator); needed for high sparsity")
  p.add_argument("--seed", type=int, default=0, help="seed of the XOR tap layout")
  p.add_argument("--min-size", type=int, default=4096, help="smaller weights stay dense")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--tile-k", type=int, default=None,
                 help="rows per VD stream (default: the library default, shrunk to fit short "
                      "matrices, a multiple of 8)")
  p.add_argument("--tile-n", type=int, default=None,
                 help="columns per value tile (default: 128, or the next power of two >= N "
                      "for narrow matrices)")
  p.add_argument("--out", default=None, help="write the compressed weights to this .npz")


def _restore(workdir: str, step: int | None):
  from pathlib import Path

  import orbax.checkpoint as ocp

  ckpt_dir = Path(workdir).absolute() / "checkpoints"
  if not ckpt_dir.is_dir():
    raise SystemExit(f"jaxsched prune: no checkpoints/ directory in {workdir!r} "
                     "(expected a run written by python -m train.mnist --workdir DIR)")
  with ocp.CheckpointManager(ckpt_dir) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None or step not in mngr.all_steps():
      raise SystemExit(f"jaxsched prune: no checkpoint step {step} in {ckpt_dir} "
                       f"(steps: {list(mngr.all_steps())})")
    restored = mngr.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore()))
  return step, restored["model"]


def _run(args: argparse.Namespace) -> int:
  import jax
  import numpy as np

  from jaxsched import sparse
  from jaxsched.sparse._prune import _default_tile_k

  if not 0.0 < args.sparsity < 1.0:
    raise SystemExit(f"jaxsched prune: --sparsity={args.sparsity} must be in (0, 1)")
  step, model = _restore(args.workdir, args.step)
  comparator = None
  if args.comparator_bits:
    comparator = sparse.Comparator.for_density(1.0 - args.sparsity, bits=args.comparator_bits)
  vd = sparse.ViterbiDecompressor(args.num_ff, args.outputs_per_bit, seed=args.seed,
                                  comparator=comparator)

  leaves = jax.tree_util.tree_flatten_with_path(model)[0]
  rows, arrays = [], {}
  totals = dict.fromkeys(_FORMATS, 0.0)
  total_nnz = total_w = 0
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    w = np.asarray(leaf)
    if w.ndim < 2 or not np.issubdtype(w.dtype, np.floating) or w.size < args.min_size:
      continue
    w2 = w.reshape(-1, w.shape[-1])  # conv kernels in im2col layout
    k, n = w2.shape
    # Padding a short or narrow matrix up to a whole tile costs index bits for nothing.
    tile_k = args.tile_k or min(_default_tile_k(vd.outputs_per_bit), -(-k // 8) * 8)
    tile_n = args.tile_n or min(128, 1 << max(n - 1, 7).bit_length())
    m = sparse.viterbi_prune(w2, vd=vd, sparsity=args.sparsity, tile_k=tile_k, tile_n=tile_n)
    rep = sparse.index_cost_report(m)
    stats = m.stats
    rows.append((name, w.shape, stats, rep))
    for f in _FORMATS:
      totals[f] += rep["formats"][f]["index_bits"]
    total_nnz += rep["nnz"]
    total_w += w2.size
    key = name.strip("[]'").replace("']['", "/")
    arrays[f"{key}/bits"] = np.asarray(m.bits)
    arrays[f"{key}/values"] = np.asarray(m.values)
    arrays[f"{key}/offsets"] = np.asarray(m.offsets)
    arrays[f"{key}/dense"] = np.asarray(m.to_dense()).reshape(w.shape)
  if not rows:
    raise SystemExit(f"jaxsched prune: no float weight with >= {args.min_size} elements in "
                     f"{args.workdir!r}; lower --min-size")

  print(f"checkpoint step {step}; VD num_ff={vd.num_ff} outputs_per_bit={vd.outputs_per_bit} "
        f"comparator={args.comparator_bits or 'none'} seed={args.seed}")
  head = "| weight | shape | sparsity | kept |w| vs magnitude | " + " | ".join(
      f"{f} b/nz" for f in _FORMATS) + " |"
  print(head)
  print("|" + "---|" * (4 + len(_FORMATS)))
  for name, shape, stats, rep in rows:
    kept = stats.get("kept_mass_ratio", float("nan"))
    bpn = " | ".join(f"{rep['formats'][f]['bits_per_nonzero']:.2f}" for f in _FORMATS)
    print(f"| {name} | {tuple(shape)} | {stats.get('sparsity', float('nan')):.4f} | "
          f"{kept:.3f} | {bpn} |")
  bpn = " | ".join(f"{totals[f] / max(total_nnz, 1):.2f}" for f in _FORMATS)
  print(f"| total | {total_w} weights | {1 - total_nnz / total_w:.4f} | | {bpn} |")
  relative = min(totals["relative4"], totals["relative5"])
  print(f"index bits vs CSR: {totals['viterbi'] / totals['csr']:.1%}; "
        f"vs best relative: {totals['viterbi'] / relative:.1%}")
  if args.out:
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}")
  return 0


cli.register_command("prune", "Viterbi-prune a checkpoint and report index costs",
                     _configure, _run)
