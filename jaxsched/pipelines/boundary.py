"""Boundary conditions: wrap an ImageParam in a Func defined everywhere (as Halide's).

Each returns an (inline by default) Func with the image's rank whose value outside the image is
given by the rule; indices are clamped first, so bounds inference sees in-range reads.
"""

from __future__ import annotations

from typing import Any

from jaxsched.pipelines import ir


def _vars(img: ir.ImageParam) -> list[ir.Var]:
  return [ir.Var(f"{img.name}_b{d}") for d in range(img.ndim)]


def _check(img: Any, what: str) -> None:
  if not isinstance(img, ir.ImageParam):
    raise TypeError(f"boundary.{what} expects an ImageParam, got {img!r}")


def repeat_edge(img: ir.ImageParam, *, name: str | None = None) -> ir.Func:
  """Out-of-range reads return the nearest edge pixel."""
  _check(img, "repeat_edge")
  v = _vars(img)
  f = ir.Func(name or f"{img.name}_repeat_edge")
  f[tuple(v)] = img[tuple(ir.clamp(v[d], 0, img.extent(d) - 1) for d in range(img.ndim))]
  return f


def constant_exterior(img: ir.ImageParam, value: Any, *, name: str | None = None) -> ir.Func:
  """Out-of-range reads return ``value``."""
  _check(img, "constant_exterior")
  v = _vars(img)
  inside = None
  for d in range(img.ndim):
    c = (v[d] >= 0) & (v[d] < img.extent(d))
    inside = c if inside is None else inside & c
  f = ir.Func(name or f"{img.name}_constant_exterior")
  load = img[tuple(ir.clamp(v[d], 0, img.extent(d) - 1) for d in range(img.ndim))]
  f[tuple(v)] = ir.select(inside, load, ir.cast(img.dtype, value))
  return f


def mirror_image(img: ir.ImageParam, *, name: str | None = None) -> ir.Func:
  """Reflect at the edges, repeating the edge pixel (``-1 -> 0``, ``-2 -> 1``)."""
  _check(img, "mirror_image")
  v = _vars(img)
  idx = []
  for d in range(img.ndim):
    n = img.extent(d)
    m = v[d] % (2 * n)
    # The clamp never changes a value; it tells bounds inference the read is in range.
    idx.append(ir.clamp(ir.select(m < n, m, 2 * n - 1 - m), 0, n - 1))
  f = ir.Func(name or f"{img.name}_mirror_image")
  f[tuple(v)] = img[tuple(idx)]
  return f


def mirror_interior(img: ir.ImageParam, *, name: str | None = None) -> ir.Func:
  """Reflect at the edges without repeating the edge pixel (``-1 -> 1``)."""
  _check(img, "mirror_interior")
  v = _vars(img)
  idx = []
  for d in range(img.ndim):
    n = img.extent(d)
    period = ir.max_(2 * n - 2, 1)
    m = v[d] % period
    idx.append(ir.clamp(ir.select(m < n, m, period - m), 0, n - 1))
  f = ir.Func(name or f"{img.name}_mirror_interior")
  f[tuple(v)] = img[tuple(idx)]
  return f
