"""Module-level candidate builders for the tuning tests (spawned workers import them by name).

Kept free of a top-level jax import so that workers measuring the failure cases start fast.
"""

import os
import sys
import time

from jaxsched.tuning import database as dbm

M = K = N = 128


def misbehaving(config):
  """``mode`` picks how the candidate behaves: ok, raise, hang, or crash its process."""
  mode = config["mode"]
  if mode == "raise":
    raise ValueError(f"bad tile {config}")
  if mode == "crash":
    os._exit(3)
  if mode == "hang":
    return lambda: time.sleep(3600)
  return lambda: sum(range(1000))


def dispatch_flag(config):
  """Fails unless this process's jax has ``jax_cpu_enable_async_dispatch == config["want"]``
  and then runs a computation (its CPU client is created with that setting)."""
  import jax
  import jax.numpy as jnp

  got = jax.config.values["jax_cpu_enable_async_dispatch"]
  if got != config["want"]:
    raise ValueError(f"jax_cpu_enable_async_dispatch={got}, wanted {config['want']}")
  return lambda: jnp.ones(4) + 1


def freed_memory_kept(config):
  """Fails unless a freed 256 MB block stays in this process (its resident size) exactly when
  ``config["want"]``: glibc gives an mmapped block back on free, a heap block it keeps."""
  import numpy as np

  def rss():
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

  a = np.ones(1 << 25)  # 256 MB, every page touched
  before = rss()
  del a
  kept = before - rss() < (1 << 27)
  if kept != config["want"]:
    raise ValueError(f"freed memory kept={kept}, wanted {config['want']}")
  return lambda: None


def blocked_matmul(config):
  """``A @ B`` as a ``lax.map`` over row blocks of ``block_m`` and a scan over ``block_k`` chunks.

  Tiny blocks mean thousands of sequential tiny dots (slow); big ones are one big dot (fast).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  bm, bk = config["block_m"], config["block_k"]
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal((M, K), np.float32))
  b = jnp.asarray(rng.standard_normal((K, N), np.float32))

  @jax.jit
  def f(a, b):
    ab = a.reshape(M // bm, bm, K // bk, bk).transpose(0, 2, 1, 3)  # [mb, kb, bm, bk]
    bb = b.reshape(K // bk, bk, N)  # [kb, bk, n]

    def row_block(a_rows):
      def k_step(acc, xs):
        a_blk, b_blk = xs
        return acc + a_blk @ b_blk, None

      acc, _ = jax.lax.scan(k_step, jnp.zeros((bm, N), jnp.float32), (a_rows, bb))
      return acc

    return jax.lax.map(row_block, ab).reshape(M, N)

  return lambda: f(a, b)


def writer(path, workload, n, delay):
  """Adds ``n`` records one by one, printing each index once it is committed."""
  db = dbm.TuningDatabase(path)
  for i in range(n):
    db.add(workload=workload, target="cpu:test", config={"i": i}, time=1.0 + i)
    print(i, flush=True)
    time.sleep(delay)


if __name__ == "__main__":
  writer(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
