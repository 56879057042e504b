"""Building blocks shared by the encoders and heads (NHWC).

`batch_norm` is the one place where train vs eval mode becomes batch-norm behaviour: `train=True` normalises
with batch statistics and updates the `batch_stats` collection; `train=False` uses the running statistics.
Every module in the package builds its batch norms here.

`precision` (model config `precision`: 'default' | 'high' | 'highest', see `lax_precision`) reaches every
convolution and matmul of the model through the `precision` field of the modules here, the backbone, the heads
and the temporal modules. 'default' (None) leaves the choice to the backend and to
`jax.default_matmul_precision` (on GPUs: TF32 for float32 convolutions and matmuls); 'highest' computes float32
in full float32 on every backend, which is what reproduces the authors' numbers off CPU.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Precision = Any  # None (backend default) | jax.lax.Precision

PRECISIONS = {'default': None, 'high': jax.lax.Precision.HIGH, 'highest': jax.lax.Precision.HIGHEST}


def lax_precision(name: str | None) -> Precision:
  """The `precision` argument of convolutions and matmuls for a config value.

  'default' (or None): None, the backend's default (full float32 on CPU; TF32 on Ampere+ GPUs; bfloat16
  passes on TPUs); 'high': bfloat16x3 / TF32-class; 'highest': full float32.
  """
  if name is None:
    return None
  if name not in PRECISIONS:
    raise ValueError(f'model.precision must be one of {tuple(PRECISIONS)}, got {name!r}')
  return PRECISIONS[name]

# He (Kaiming) normal, fan-out: torchvision's and PaddleSeg's initialisation of conv kernels.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

BN_MOMENTUM = 0.9  # weight of the old running value (PyTorch momentum 0.1)
BN_EPSILON = 1e-5


def batch_norm(train: bool, *, dtype: Dtype = jnp.float32, name: str | None = None, **kwargs) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      dtype=dtype, param_dtype=jnp.float32, name=name, **kwargs)


def conv(features: int, kernel: int, *, stride: int = 1, dilation: int = 1, groups: int = 1,
         use_bias: bool = False, dtype: Dtype = jnp.float32, precision: Precision = None,
         name: str | None = None) -> nn.Conv:
  """A k x k convolution with symmetric padding dilation * (k - 1) / 2, as in PyTorch and Paddle."""
  pad = dilation * (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 kernel_dilation=(dilation, dilation), feature_group_count=groups, use_bias=use_bias,
                 kernel_init=conv_kernel_init, dtype=dtype, param_dtype=jnp.float32, precision=precision,
                 name=name)


class ConvBN(nn.Module):
  """conv -> batch norm -> optional ReLU. Submodules are named `conv` and `bn`."""
  features: int
  kernel: int = 1
  stride: int = 1
  dilation: int = 1
  groups: int = 1
  use_bias: bool = False
  relu: bool = True
  dtype: Dtype = jnp.float32
  precision: Precision = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = conv(self.features, self.kernel, stride=self.stride, dilation=self.dilation, groups=self.groups,
             use_bias=self.use_bias, dtype=self.dtype, precision=self.precision, name='conv')(x)
    x = batch_norm(train, dtype=self.dtype, name='bn')(x)
    return nn.relu(x) if self.relu else x


class SeparableConvBN(nn.Module):
  """Depthwise k x k conv + BN, then pointwise 1x1 conv + BN + ReLU (PaddleSeg `SeparableConvBNReLU`).

  Both convolutions carry a bias, as in PaddleSeg.
  """
  features: int
  kernel: int = 3
  dilation: int = 1
  dtype: Dtype = jnp.float32
  precision: Precision = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = ConvBN(x.shape[-1], self.kernel, dilation=self.dilation, groups=x.shape[-1], use_bias=True,
               relu=False, dtype=self.dtype, precision=self.precision, name='depthwise')(x, train)
    return ConvBN(self.features, 1, use_bias=True, dtype=self.dtype, precision=self.precision,
                  name='pointwise')(x, train)
