"""The pipeline benchmark's Halide side (bench/pipelines.py): peers, output checks, a tiny run."""

import numpy as np
import pytest

from bench import halide_peers as hp
from bench import pipelines as bp


def test_every_app_has_a_halide_peer():
  assert set(bp.PEERS) == set(bp.APP_NAMES)
  for name, peer in bp.PEERS.items():
    assert peer.app in hp.APPS, name
    assert set(peer.params) <= set(hp.APPS[peer.app].defaults), name


def test_float_check_raises_on_mismatch_and_names_it(capsys):
  want = np.random.default_rng(0).random((8, 9), dtype=np.float32)
  assert bp.check_against_halide("blur", want + 1e-7, {"halide manual": want}) == []
  got = want.copy()
  got[3, 4] += 1e-3
  with pytest.raises(bp.OutputMismatchError, match=r"blur.*halide manual"):
    bp.check_against_halide("blur", got, {"halide manual": want})
  assert "first at (3, 4)" in capsys.readouterr().out
  assert bp.check_against_halide("blur", got, {"h": want}, mismatch="warn") == ["h"]
  with pytest.raises(ValueError, match="mismatch='ignore'"):
    bp.check_against_halide("blur", got, {"h": want}, mismatch="ignore")


def test_histogram_check_is_exact():
  data = np.random.default_rng(1).integers(0, 256, (40, 30), dtype=np.uint8)
  n = data.size
  cdf = np.cumsum(np.bincount(data.ravel(), minlength=256))  # independent of both apps
  want = (cdf[data] * 255 // n).astype(np.uint8)
  halide_like = want.copy()  # the histogram_u8 peer returns uint8
  assert bp.PEERS["histogram_equalize"].compare(want, halide_like)[0]
  off = want.copy()
  off[0, 0] ^= 1
  assert not bp.PEERS["histogram_equalize"].compare(off, halide_like)[0]
  assert not bp.PEERS["histogram_equalize"].compare(want.astype(np.int32), halide_like)[0]


def test_tiny_run_checks_and_times_every_candidate(capsys):
  rows = bp.run(64, 1, ["histogram_equalize"], schedules=("manual",))
  out = capsys.readouterr().out
  assert out.count("check jaxsched vs halide manual: ok") == 1
  for row in rows:
    assert "halide manual" in row["times"] and row["halide_failures"] == {}
    assert any(k.startswith("jaxsched") for k in row["times"])
    assert np.isfinite(row["halide_best"])


def test_burst_times_the_last_of_back_to_back_calls():
  calls = {"a": 0, "b": 0}

  def fn(k):
    def call():
      calls[k] += 1
      return np.zeros(())

    return call

  stats = bp.interleaved({"a": fn("a"), "b": fn("b")}, reps=3, settle=0.0, burst=4)
  assert calls == {"a": 2 + 3 * 4, "b": 2 + 3 * 4}  # two warm-up calls, then 3 turns of 4
  assert set(stats) == {"a", "b"} and all(v["min"] <= v["median"] for v in stats.values())


def test_pallas_pipeline_compile_rows_count_kernels_and_calls():
  from bench import pallas_pipelines as pp

  r = pp.compile_row("unsharp", "tiled_small", "h100")
  assert (r["kernels"], r["xla"], r["ok"]) == (2, 0, "OK")  # the weights table + the output
  assert r["calls"] >= r["kernels"]
