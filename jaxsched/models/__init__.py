"""Flax NNX models: hypernetwork convnets, WRNs, MobileNetV1, MLPs/LeNets, distillation, pruning.

Models take explicit hyperparameters and do no I/O; `train/` drives them.
"""

from jaxsched.models import pruning
from jaxsched.models._distill import distillation_loss
from jaxsched.models._hyper import HyperConv, HyperGenerator, hyper_generator_param_count
from jaxsched.models._mnist import MLP, ConvMNIST, HyperMNIST, LeNet5, LeNet300100
from jaxsched.models._mobilenet import KERNELS, MOBILENET_V1_BLOCKS, MobileNetV1
from jaxsched.models._utils import count_nonzeros, count_params
from jaxsched.models._wrn import WRN, HyperWRN
from jaxsched.models.pruning import gradual_pruning, polynomial_sparsity, sparsity_report

__all__ = [
  "KERNELS",
  "MLP",
  "MOBILENET_V1_BLOCKS",
  "WRN",
  "ConvMNIST",
  "HyperConv",
  "HyperGenerator",
  "HyperMNIST",
  "HyperWRN",
  "LeNet300100",
  "LeNet5",
  "MobileNetV1",
  "count_nonzeros",
  "count_params",
  "distillation_loss",
  "gradual_pruning",
  "hyper_generator_param_count",
  "polynomial_sparsity",
  "pruning",
  "sparsity_report",
]
