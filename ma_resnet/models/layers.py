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


class DepthwiseConv(nn.Module):
  """A k x k depthwise convolution (one filter per channel, stride 1, padding dilation * (k - 1) / 2) with the
  variables of `nn.Conv(features=C, feature_group_count=C)`: `kernel` (k, k, 1, C), optional `bias` (C,).

  XLA:CPU runs grouped convolutions slowly (a 3x3 depthwise conv on 8x32x32x64: 20 ms, its gradient 73 ms);
  written as k*k shifted multiply-adds it takes 0.9 ms / 14 ms, with the same numbers up to float rounding.
  `shifts` picks the formulation: None = the shifts on CPU, XLA's grouped convolution elsewhere (cuDNN on GPUs).
  """
  kernel_size: int
  dilation: int = 1
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  precision: Precision = None
  shifts: bool | None = None

  @nn.compact
  def __call__(self, x):
    c, k, d = x.shape[-1], self.kernel_size, self.dilation
    kernel = self.param('kernel', conv_kernel_init, (k, k, 1, c), jnp.float32).astype(self.dtype)
    x = x.astype(self.dtype)
    pad = d * (k - 1) // 2
    use_shifts = jax.default_backend() == 'cpu' if self.shifts is None else self.shifts
    if use_shifts:
      h, w = x.shape[-3:-1]
      padded = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(pad, pad), (pad, pad), (0, 0)])
      y = sum(padded[..., i * d:i * d + h, j * d:j * d + w, :] * kernel[i, j, 0]
              for i in range(k) for j in range(k))
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), [(pad, pad), (pad, pad)], rhs_dilation=(d, d),
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c,
                                       precision=self.precision)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (c,), jnp.float32).astype(self.dtype)
    return y


def conv(features: int, kernel: int, *, stride: int = 1, dilation: int = 1, groups: int = 1,
         use_bias: bool = False, dtype: Dtype = jnp.float32, precision: Precision = None,
         name: str | None = None) -> nn.Module:
  """A k x k convolution with symmetric padding dilation * (k - 1) / 2, as in PyTorch and Paddle. A depthwise
  one (groups = features, stride 1) is a `DepthwiseConv` (same variables, fast on CPU too)."""
  if groups > 1 and groups == features and stride == 1:
    return DepthwiseConv(kernel, dilation=dilation, use_bias=use_bias, dtype=dtype, precision=precision, name=name)
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
