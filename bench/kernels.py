"""Kernel benchmark: deviceless compile status and roofline estimates per kernel x config x target.

On this CPU, interpret-mode timings say nothing about a GPU or TPU, so this reports what can be
known without one: whether each config compiles with the real Triton (H100) and Mosaic (TPU v5e)
compilers, how long compilation takes, and a roofline estimate (FLOPs, HBM bytes for that tiling,
arithmetic intensity, predicted floor time = max(FLOPs / peak, bytes / bandwidth)). When the
local backend is a GPU or TPU, each kernel is also timed there against XLA's own op in the same
run.

Usage: ``python -m bench.kernels [--configs N]``

With no accelerator device node (``/dev/nvidia*``, ``/dev/accel*``) JAX is pinned to the CPU;
otherwise JAX picks the local GPU/TPU and the timing table is printed too.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time


def _accelerator_present() -> bool:
  """A GPU or TPU device node exists (probed without initialising JAX's backends)."""
  dev = os.listdir("/dev") if os.path.isdir("/dev") else []
  return any(n.startswith(("nvidia", "accel")) and n[-1:].isdigit() for n in dev)


if not _accelerator_present():  # pinned only where no device could time the kernels
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxsched import pallas as jp  # noqa: E402
from jaxsched.pallas import targets  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Problem:
  name: str
  op: str
  shapes: tuple[tuple[int, ...], ...]
  dtype: str
  params: tuple[tuple[str, object], ...] = ()


PROBLEMS = (
  Problem("matmul 1024^3 f32", "matmul", ((1024, 1024), (1024, 1024)), "float32"),
  Problem("matmul 1024^3 bf16", "matmul", ((1024, 1024), (1024, 1024)), "bfloat16"),
  Problem("matmul 4096x1024x4096 bf16", "matmul", ((4096, 1024), (1024, 4096)), "bfloat16"),
  Problem(
    "pointwise 8x56x56x128->128 f32", "pointwise_conv", ((8, 56, 56, 128), (128, 128)), "float32"
  ),
  Problem(
    "depthwise 3x3 s1 8x112x112x64 f32",
    "depthwise_conv2d",
    ((8, 112, 112, 64), (3, 3, 64)),
    "float32",
    (("stride", 1),),
  ),
  Problem(
    "depthwise 3x3 s2 8x112x112x128 f32",
    "depthwise_conv2d",
    ((8, 112, 112, 128), (3, 3, 128)),
    "float32",
    (("stride", 2),),
  ),
)

_FNS = {
  "matmul": jp.matmul,
  "pointwise_conv": jp.pointwise_conv,
  "depthwise_conv2d": jp.depthwise_conv2d,
}
_REFS = {
  "matmul": jp.matmul_reference,
  "pointwise_conv": jp.pointwise_conv_reference,
  "depthwise_conv2d": jp.depthwise_conv2d_reference,
}


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


def roofline(p: Problem, cfg, target: targets.Target) -> dict[str, float]:
  """FLOPs, HBM bytes moved by this tiling, intensity and the floor time on ``target``."""
  item = jnp.dtype(p.dtype).itemsize
  params = dict(p.params)
  if p.op in ("matmul", "pointwise_conv"):
    if p.op == "matmul":
      (m, k), (_, n) = p.shapes
    else:
      (b, h, w, k), (_, n) = p.shapes
      m = b * h * w
    flops = 2.0 * m * n * k
    # Each output block streams its row panel of a and column panel of b once.
    bm, bn = min(cfg.block_m, m), min(cfg.block_n, n)
    bytes_ = item * (m * k * _cdiv(n, bn) + k * n * _cdiv(m, bm) + m * n)
  else:
    (b, h, w, c), (kh, _, _) = p.shapes
    s = params.get("stride", 1)
    ho, wo = _cdiv(h, s), _cdiv(w, s)
    flops = 2.0 * b * ho * wo * c * kh * kh
    th = min(cfg.tile_h, ho)
    tw = wo if target.kind == "tpu" else min(cfg.tile_w, wo)
    # Input rows/cols re-read per tile because of the (k - 1) halo.
    halo = ((th * s + kh - 1) * (tw * s + kh - 1)) / (th * s * tw * s)
    bytes_ = item * (b * h * w * c * halo + kh * kh * c + b * ho * wo * c)
  peak = target.flops(p.dtype)
  floor = max(flops / peak if peak else 0.0, bytes_ / target.hbm_bytes_per_s)
  return {
    "gflop": flops / 1e9,
    "mbytes": bytes_ / 1e6,
    "intensity": flops / bytes_,
    "floor_us": floor * 1e6,
  }


def _spec(shape, dtype):
  return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))


def _configs(p: Problem, target: str, n: int) -> list:
  space = jp.search_space(p.op, p.shapes, p.dtype, target, **dict(p.params))
  default = jp.lookup_config(p.op, p.shapes, p.dtype, target, **dict(p.params))
  picks = [default]
  if space:  # spread the rest over the space
    for i in np.linspace(0, len(space) - 1, num=max(n - 1, 1)).round().astype(int):
      if space[i] not in picks:
        picks.append(space[i])
  return picks[:n], len(space)


def compile_rows(n_configs: int) -> list[dict]:
  rows = []
  for p in PROBLEMS:
    for tname in targets.available_targets():
      target = targets.get_target(tname)
      cfgs, space_size = _configs(p, tname, n_configs)
      for cfg in cfgs:
        fn = _FNS[p.op]
        kw = dict(p.params)

        def call(*args, fn=fn, cfg=cfg, kw=kw):
          return fn(*args, config=cfg, **kw)

        t0 = time.perf_counter()
        try:
          targets.compile_for(call, *(_spec(s, p.dtype) for s in p.shapes), target=tname)
          status = "ok"
        except targets.CompileError as e:
          status = "FAIL: " + e.compiler_message.splitlines()[0][:60]
        secs = time.perf_counter() - t0
        # fields that mean nothing on this target (num_warps on TPU, ...) are left out
        fields = {
          f.name: getattr(cfg, f.name)
          for f in dataclasses.fields(cfg)
          if target.kind in f.metadata.get("kinds", (target.kind,))
        }
        rows.append(
          {
            "problem": p.name,
            "target": tname,
            "space": space_size,
            "config": fields,
            "status": status,
            "compile_s": secs,
            **roofline(p, cfg, target),
          }
        )
  return rows


def device_rows() -> list[dict]:
  """Times each kernel against XLA's own op when a GPU or TPU is the local backend."""
  if jax.default_backend() == "cpu":
    return []
  rows = []
  key = jax.random.key(0)
  for p in PROBLEMS:
    args = [
      jax.random.normal(k, s, jnp.dtype(p.dtype))
      for k, s in zip(jax.random.split(key, len(p.shapes)), p.shapes, strict=True)
    ]
    kw = dict(p.params)
    times = {}
    for label, fn in (("jaxsched", _FNS[p.op]), ("xla", _REFS[p.op])):
      f = jax.jit(lambda *a, fn=fn, kw=kw: fn(*a, **kw))
      f(*args).block_until_ready()
      ts = []
      for _ in range(20):
        t0 = time.perf_counter()
        f(*args).block_until_ready()
        ts.append(time.perf_counter() - t0)
      times[label] = float(np.median(ts))
    rows.append(
      {
        "problem": p.name,
        "jaxsched_ms": times["jaxsched"] * 1e3,
        "xla_ms": times["xla"] * 1e3,
        "ratio": times["jaxsched"] / times["xla"],
      }
    )
  return rows


def _fmt_cfg(cfg: dict) -> str:
  short = {
    "block_m": "bm",
    "block_n": "bn",
    "block_k": "bk",
    "num_warps": "w",
    "num_stages": "s",
    "tile_h": "th",
    "tile_w": "tw",
    "tile_c": "tc",
  }
  return " ".join(f"{short.get(k, k)}={v}" for k, v in cfg.items())


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--configs", type=int, default=3, help="configs per kernel x target")
  args = ap.parse_args(argv)
  rows = compile_rows(args.configs)
  print(
    f"jax {jax.__version__}; targets {targets.available_targets()}; "
    f"local backend {jax.default_backend()}"
  )
  print("| kernel | target | space | config | compile | s | GFLOP | MB | FLOP/B | floor us |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(
      f"| {r['problem']} | {r['target']} | {r['space']} | {_fmt_cfg(r['config'])} | "
      f"{r['status']} | {r['compile_s']:.2f} | {r['gflop']:.2f} | {r['mbytes']:.1f} | "
      f"{r['intensity']:.1f} | {r['floor_us']:.1f} |"
    )
  ok = sum(r["status"] == "ok" for r in rows)
  print(f"\n{ok}/{len(rows)} configs compiled")
  dev = device_rows()
  if dev:
    print("\n| kernel | jaxsched ms | XLA ms | ratio |\n|---|---|---|---|")
    for r in dev:
      print(f"| {r['problem']} | {r['jaxsched_ms']:.3f} | {r['xla_ms']:.3f} | {r['ratio']:.2f} |")
  else:
    print("(no GPU/TPU here: device timings skipped; roofline floors above are estimates)")


if __name__ == "__main__":
  main()
