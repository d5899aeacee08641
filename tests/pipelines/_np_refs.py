"""Independent float64 numpy references for the pipeline apps (shared by the tests)."""

import numpy as np


def edge(a: np.ndarray, r: int) -> np.ndarray:
  return np.pad(a.astype(np.float64), r, mode="edge")


def blur(a: np.ndarray) -> np.ndarray:
  p = edge(a, 1)
  bx = (p[:, :-2] + p[:, 1:-1] + p[:, 2:]) / 3
  return (bx[:-2] + bx[1:-1] + bx[2:]) / 3


def harris(a: np.ndarray, k: float = 0.04) -> np.ndarray:
  h, w = a.shape
  p = edge(a, 2)

  def at(dy, dx):  # p shifted so at(0, 0) covers the 1-pixel-padded domain [-1, h] x [-1, w]
    return p[1 + dy : 1 + dy + h + 2, 1 + dx : 1 + dx + w + 2]

  iy = (-at(-1, -1) - 2 * at(-1, 0) - at(-1, 1) + at(1, -1) + 2 * at(1, 0) + at(1, 1)) / 12
  ix = (-at(-1, -1) - 2 * at(0, -1) - at(1, -1) + at(-1, 1) + 2 * at(0, 1) + at(1, 1)) / 12

  def box(q):
    return sum(
      q[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
    )

  sxx, syy, sxy = box(ix * ix), box(iy * iy), box(ix * iy)
  return sxx * syy - sxy * sxy - k * (sxx + syy) ** 2


def unsharp(a: np.ndarray, sigma: float, radius: int) -> np.ndarray:
  i = np.arange(-radius, radius + 1, dtype=np.float64)
  wts = np.exp(-(i * i) / (2 * sigma * sigma))
  wts /= wts.sum()
  h, w = a.shape
  p = edge(a, radius)
  bx = sum(wts[j] * p[:, j : j + w] for j in range(2 * radius + 1))
  by = sum(wts[j] * bx[j : j + h, :] for j in range(2 * radius + 1))
  return 2 * a.astype(np.float64) - by


def histogram_equalize(a: np.ndarray) -> np.ndarray:
  hist = np.bincount(a.ravel(), minlength=256).astype(np.int64)
  cdf = np.cumsum(hist)
  return ((cdf[a] * 255) // a.size).astype(np.uint8)


def bilateral_grid(a: np.ndarray, s_sigma: int = 8, r_sigma: float = 0.1) -> np.ndarray:
  """Float64 bilateral grid; bin indices from float32 arithmetic, as the pipeline computes them."""
  h, w = a.shape
  half = s_sigma // 2
  inv = np.float32(1.0 / r_sigma)
  nz = int(np.floor(1.0 * inv + 0.5)) + 1
  gy = np.arange(-3, h // s_sigma + 4)  # every grid row the slicing can reach, plus blur halo
  gx = np.arange(-3, w // s_sigma + 4)
  hist = np.zeros((len(gy), len(gx), nz + 4, 2))  # z offset by 2 for the blur halo
  for ry in range(s_sigma):
    for rx in range(s_sigma):
      yy = np.clip(gy * s_sigma + ry - half, 0, h - 1)
      xx = np.clip(gx * s_sigma + rx - half, 0, w - 1)
      v32 = np.clip(a[yy[:, None], xx[None, :]], np.float32(0), np.float32(1))
      zi = (v32 * inv + np.float32(0.5)).astype(np.int64)
      iy, ix = np.meshgrid(np.arange(len(gy)), np.arange(len(gx)), indexing="ij")
      np.add.at(hist, (iy, ix, zi + 2, 0), v32.astype(np.float64))
      np.add.at(hist, (iy, ix, zi + 2, 1), 1.0)
  k = np.array([1, 4, 6, 4, 1], np.float64)

  def blur(q, axis):
    n = q.shape[axis] - 4
    sl = [slice(None)] * q.ndim
    out = 0
    for j in range(5):
      sl[axis] = slice(j, j + n)
      out = out + k[j] * q[tuple(sl)]
    return out

  b = blur(blur(blur(hist, 2), 1), 0)  # grid rows/cols now start at -1; z at 0
  v32 = np.clip(a, np.float32(0), np.float32(1))
  zv = v32 * inv
  zint = zv.astype(np.int64)
  zf = (zv - zint.astype(np.float32)).astype(np.float64)
  y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  yi, xi = y // s_sigma + 1, x // s_sigma + 1  # +1: row 0 of b is grid row -1
  yf, xf = (y % s_sigma) / s_sigma, (x % s_sigma) / s_sigma

  def lerp(p, q, t):
    return p + (q - p) * t

  def g(dy, dx, dz, c):
    return b[yi + dy, xi + dx, zint + dz, c]

  def interp(c):
    z0 = lerp(lerp(g(0, 0, 0, c), g(0, 1, 0, c), xf), lerp(g(1, 0, 0, c), g(1, 1, 0, c), xf), yf)
    z1 = lerp(lerp(g(0, 0, 1, c), g(0, 1, 1, c), xf), lerp(g(1, 0, 1, c), g(1, 1, 1, c), xf), yf)
    return lerp(z0, z1, zf)

  return interp(0) / interp(1)


def _take(a: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
  assert idx.min() >= 0 and idx.max() < a.shape[axis], "reference domain too small"
  return np.take(a, idx, axis=axis)


def _down(arr, lo, axis):
  """1-3-3-1 downsample along ``axis`` on every output index whose inputs are in the domain."""
  s_lo, s_hi = lo[axis], lo[axis] + arr.shape[axis] - 1
  x = np.arange(-((-(s_lo + 1)) // 2), (s_hi - 2) // 2 + 1)
  out = (
    _take(arr, 2 * x - 1 - s_lo, axis)
    + 3 * (_take(arr, 2 * x - s_lo, axis) + _take(arr, 2 * x + 1 - s_lo, axis))
    + _take(arr, 2 * x + 2 - s_lo, axis)
  ) / 8
  new_lo = list(lo)
  new_lo[axis] = int(x[0])
  return out, tuple(new_lo)


def _up(arr, lo, axis):
  s_lo, s_hi = lo[axis], lo[axis] + arr.shape[axis] - 1
  x = np.arange(2 * s_lo + 2, 2 * s_hi)
  out = 0.25 * _take(arr, x // 2 - 1 + 2 * (x % 2) - s_lo, axis) + 0.75 * _take(
    arr, x // 2 - s_lo, axis
  )
  new_lo = list(lo)
  new_lo[axis] = int(x[0])
  return out, tuple(new_lo)


def _crop(arr, lo, new_lo, shape):
  sl = tuple(slice(n - o, n - o + s) for n, o, s in zip(new_lo, lo, shape, strict=False))
  out = arr[sl]
  assert out.shape[: len(shape)] == tuple(shape), "reference domain too small"
  return out


def _combine(a, alo, b, blo, fn):
  lo = tuple(max(p, q) for p, q in zip(alo, blo, strict=True))
  hi = tuple(min(p + n, q + m) for p, q, n, m in zip(alo, blo, a.shape, b.shape, strict=False))
  shape = tuple(h - lo_ for h, lo_ in zip(hi, lo, strict=True))
  return fn(_crop(a, alo, lo, shape), _crop(b, blo, lo, shape)), lo


def local_laplacian(
  a: np.ndarray, levels: int, k_levels: int = 8, alpha: float = 1.0, beta: float = 1.0
) -> np.ndarray:
  """Float64 local Laplacian filter on an edge-extended domain, pyramid by pyramid."""
  h, w = a.shape
  m = 8 * 2**levels + 8
  yy = np.clip(np.arange(-m, h + m), 0, h - 1)
  xx = np.clip(np.arange(-m, w + m), 0, w - 1)
  gray32 = a[yy[:, None], xx[None, :]]
  lo0 = (-m, -m)
  gray = gray32.astype(np.float64)
  kk = k_levels - 1
  idx = np.clip((gray32 * np.float32(kk) * np.float32(256)).astype(np.int64), 0, kk * 256)
  ks = np.arange(k_levels)
  fx = (idx[:, :, None] - 256 * ks[None, None, :]) / 256.0
  remap = alpha * fx * np.exp(-fx * fx / 2)
  level = ks / kk
  g = [(beta * (gray[:, :, None] - level) + level + remap, lo0)]
  ing = [(gray, lo0)]
  for _ in range(1, levels):
    for pyr in (g, ing):
      arr, lo = pyr[-1]
      arr, lo = _down(arr, lo, 1)
      pyr.append(_down(arr, lo, 0))
  lap = [None] * levels
  lap[-1] = g[-1]
  for j in range(levels - 2, -1, -1):
    up, ulo = _up(*_up(g[j + 1][0], g[j + 1][1], 1), 0)
    lap[j] = _combine(g[j][0], g[j][1], up, ulo, np.subtract)
  out_l = []
  for j in range(levels):
    (larr, llo), (iarr, ilo) = lap[j], ing[j]
    lo = tuple(max(p, q) for p, q in zip(llo, ilo, strict=True))
    hi = tuple(
      min(p + n, q + s) for p, q, n, s in zip(llo, ilo, larr.shape, iarr.shape, strict=False)
    )
    shape = tuple(e - s for e, s in zip(hi, lo, strict=True))
    lc, ic = _crop(larr, llo, lo, shape), _crop(iarr, ilo, lo, shape)
    lv = ic * kk
    li = np.clip(lv.astype(np.int64), 0, k_levels - 2)
    lf = lv - li
    pick = np.take_along_axis
    v = (1 - lf) * pick(lc, li[:, :, None], 2)[:, :, 0] + lf * pick(lc, li[:, :, None] + 1, 2)[
      :, :, 0
    ]
    out_l.append((v, lo))
  out = out_l[-1]
  for j in range(levels - 2, -1, -1):
    up, ulo = _up(*_up(out[0], out[1], 1), 0)
    out = _combine(up, ulo, out_l[j][0], out_l[j][1], np.add)
  return _crop(out[0], out[1], (0, 0), (h, w))


CAMERA_MATRIX = ((1.5, -0.25, -0.25), (-0.125, 1.25, -0.125), (-0.0625, -0.1875, 1.25))


def camera_pipe(a: np.ndarray, gamma: float = 2.2) -> np.ndarray:
  """Reference camera pipe, written as functions of coordinate arrays (GRBG Bayer)."""
  h, w = a.shape

  def raw(yy, xx):
    return a[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)].astype(np.float64)

  def den(yy, xx):
    nb = np.maximum.reduce([raw(yy, xx - 2), raw(yy, xx + 2), raw(yy - 2, xx), raw(yy + 2, xx)])
    return np.minimum(raw(yy, xx), nb)

  def plane(dy, dx):
    return lambda yy, xx: den(2 * yy + dy, 2 * xx + dx)

  g_gr, r_r, b_b, g_gb = plane(0, 0), plane(0, 1), plane(1, 0), plane(1, 1)
  half = {
    "g_r": lambda y, x: (g_gr(y, x) + g_gr(y, x + 1) + g_gb(y - 1, x) + g_gb(y, x)) / 4,
    "g_b": lambda y, x: (g_gr(y, x) + g_gr(y + 1, x) + g_gb(y, x - 1) + g_gb(y, x)) / 4,
    "r_gr": lambda y, x: (r_r(y, x - 1) + r_r(y, x)) / 2,
    "r_gb": lambda y, x: (r_r(y, x) + r_r(y + 1, x)) / 2,
    "r_b": lambda y, x: (r_r(y, x - 1) + r_r(y, x) + r_r(y + 1, x - 1) + r_r(y + 1, x)) / 4,
    "b_gr": lambda y, x: (b_b(y - 1, x) + b_b(y, x)) / 2,
    "b_gb": lambda y, x: (b_b(y, x) + b_b(y, x + 1)) / 2,
    "b_r": lambda y, x: (b_b(y - 1, x) + b_b(y - 1, x + 1) + b_b(y, x) + b_b(y, x + 1)) / 4,
  }
  y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  hy, hx = y // 2, x // 2
  ey, ex = y % 2 == 0, x % 2 == 0

  def interleave(ee, eo, oe, oo):
    return np.where(ey, np.where(ex, ee(hy, hx), eo(hy, hx)), np.where(ex, oe(hy, hx), oo(hy, hx)))

  rgb = (
    interleave(half["r_gr"], r_r, half["r_b"], half["r_gb"]),
    interleave(g_gr, half["g_r"], half["g_b"], g_gb),
    interleave(half["b_gr"], half["b_r"], b_b, half["b_gb"]),
  )
  corrected = np.stack(
    [sum(m * ch for m, ch in zip(row, rgb, strict=True)) for row in CAMERA_MATRIX]
  )
  i = np.arange(1024, dtype=np.float32)
  v = i / np.float32(1023)
  lut = np.clip(
    v ** (np.float32(1) / np.float32(gamma)) * np.float32(255) + np.float32(0.5), 0, 255
  ).astype(np.uint8)
  return lut[np.clip(np.trunc(corrected).astype(np.int64), 0, 1023)]
