"""Parameter counts of the models against the papers' formulas, written out here."""

import pytest
from flax import nnx

from jaxsched import models as M


def _abstract(ctor):
  return nnx.eval_shape(lambda: ctor(rngs=nnx.Rngs(0)))


def dense(i, o, bias=True):
  return i * o + (o if bias else 0)


def conv(f, i, o, bias=True):
  return f * f * i * o + (o if bias else 0)


def generator(n_z, n_in, n_out, f):
  d = n_z
  w_i, b_i = n_in * d * n_z, n_in * d  # a_i = W_i z + B_i, i = 1..N_in
  w_out, b_out = f * f * n_out * d, f * f * n_out  # K_i = <W_out, a_i> + B_out
  return w_i + b_i + w_out + b_out


def test_hypermnist_generator_plus_embedding_is_4244():
  model = _abstract(M.HyperMNIST)
  gen = M.count_params(model.conv2.generator)
  emb = model.conv2.embedding.size
  assert (gen, emb) == (generator(4, 16, 16, 7), 4)
  assert gen + emb == 4244  # the paper's number
  assert M.hyper_generator_param_count(z_dim=4, in_features=16, out_features=16, kernel_size=7) == (
    4240
  )
  head = conv(7, 1, 16) + dense(784, 10)
  assert M.count_params(model) == head + 4244 + 16  # + conv2's ordinary bias


def test_convmnist_conv2_has_12544_weights():
  model = _abstract(M.ConvMNIST)
  assert model.conv2.kernel.size == 12544 == 7 * 7 * 16 * 16
  assert M.count_params(model) == conv(7, 1, 16) + conv(7, 16, 16) + dense(784, 10)


@pytest.mark.parametrize(
  "ctor,expected",
  [
    (lambda rngs: M.MLP((800, 800), rngs=rngs), dense(784, 800) + dense(800, 800) + dense(800, 10)),
    (
      lambda rngs: M.MLP((1200, 1200), rngs=rngs),
      dense(784, 1200) + dense(1200, 1200) + dense(1200, 10),
    ),
    (M.LeNet300100, dense(784, 300) + dense(300, 100) + dense(100, 10)),
    (M.LeNet5, conv(5, 1, 20) + conv(5, 20, 50) + dense(800, 500) + dense(500, 10)),
  ],
)
def test_small_mnist_models(ctor, expected):
  assert M.count_params(_abstract(ctor)) == expected


def mobilenet_formula(alpha, num_classes, in_channels=3):
  def w(c):
    return max(8, int(c * alpha))

  blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
  blocks += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
  c = w(32)
  total = conv(3, in_channels, c, bias=False) + 2 * c  # stem + BN (scale, bias)
  for out, _ in blocks:
    total += 9 * c + 2 * c  # depthwise 3x3 + BN
    total += c * w(out) + 2 * w(out)  # pointwise 1x1 + BN
    c = w(out)
  return total + dense(c, num_classes)


@pytest.mark.parametrize("alpha,classes", [(1.0, 1000), (0.5, 10), (0.25, 10)])
def test_mobilenet_v1(alpha, classes):
  model = _abstract(lambda rngs: M.MobileNetV1(alpha, num_classes=classes, rngs=rngs))
  assert M.count_params(model) == mobilenet_formula(alpha, classes)
  if alpha == 1.0:
    assert round(M.count_params(model) / 1e6, 1) == 4.2  # the paper's 4.2M


def wrn_formula(depth, k, hyper=False, n_z=64, classes=10):
  n = (depth - 4) // 6
  total = conv(3, 3, 16, bias=False) + 2 * 64 * k + dense(64 * k, classes)  # stem, last BN, fc
  cin = 16
  blocks = 0
  for width in (16 * k, 32 * k, 64 * k):
    for b in range(n):
      total += 2 * cin + 2 * width  # two BNs
      if hyper:
        blocks += (cin // 16) * (width // 16) + (width // 16) ** 2
      else:
        total += conv(3, cin, width, bias=False) + conv(3, width, width, bias=False)
      stride = 2 if b == 0 and width != 16 * k else 1
      if cin != width or stride != 1:
        total += cin * width  # 1x1 projection shortcut
      cin = width
  if hyper:
    total += generator(n_z, 16, 16, 3) + blocks * n_z
  return total


@pytest.mark.parametrize("depth,k", [(40, 2), (16, 4), (10, 1)])
def test_wrn(depth, k):
  model = _abstract(lambda rngs: M.WRN(depth, k, rngs=rngs))
  assert M.count_params(model) == wrn_formula(depth, k)
  if (depth, k) == (40, 2):
    assert round(M.count_params(model) / 1e6, 1) == 2.2  # the paper's 2.2M


@pytest.mark.parametrize("depth,k", [(40, 2), (16, 4)])
def test_hyperwrn(depth, k):
  model = _abstract(lambda rngs: M.HyperWRN(depth, k, rngs=rngs))
  assert M.count_params(model) == wrn_formula(depth, k, hyper=True)


@pytest.mark.parametrize(
  "ctor,match",
  [
    (lambda r: M.WRN(12, 2, rngs=r), "depth=12"),
    (lambda r: M.MobileNetV1(kernels="cuda", rngs=r), "valid choices"),
    (lambda r: M.HyperConv(24, 16, 3, z_dim=4, block_in=16, rngs=r), "in_features=24"),
  ],
)
def test_bad_hyperparameters(ctor, match):
  with pytest.raises(ValueError, match=match):
    ctor(nnx.Rngs(0))
