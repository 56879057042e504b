"""PSPNet head (Zhao et al. 2017, "Pyramid Scene Parsing Network") in mmsegmentation's `PSPHead` form.

On x = `features['stage4']` (N, h, w, C_in):
- pyramid pooling: for each bin size b in `pool_scales` (1, 2, 3, 6): adaptive average pool to b x b
  (PyTorch's bin boundaries, `adaptive_avg_pool`), 1x1 conv-BN-ReLU to `channels`, bilinear resize back to
  h x w (align_corners False, as mmseg / PaddleSeg PSPNet);
- concatenate [x, bin1, bin2, bin3, bin6] (C_in + 4 * channels) -> 3x3 conv-BN-ReLU to `channels`
  (mmseg's `bottleneck`);
- `Classifier`: Dropout2d 0.1, 1x1 conv with bias to the classes.
Convolutions other than the classifier have no bias (mmseg's ConvModule with a norm layer).

Channel choice: mmseg's (`pspnet_r50-d8`: channels 512 for C_in 2048, i.e. C_in / 4; `channels=None`
means C_in / 4, which is also mmseg's R18 config, 128). PaddleSeg's PSPNet differs: bins reduced to C_in / 4
with biased convs, concatenated in reverse order, then a 3x3 conv to 1024 (`pp_out_channels`).
`PyramidPooling` covers both layouts (`use_bias`, `reverse_bins`); SFNet uses it in PaddleSeg's.

Output: logits (N, h, w, classes) at stage-4 resolution.
Parameter tree: `psp/{bin0..3,bottleneck}/{conv,bn}`, `classifier/conv`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ma_resnet.models.heads.fcn import Classifier, ReadsOneMap, default_channels
from ma_resnet.models.layers import ConvBN
from ma_resnet.models.ops import resize_bilinear


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) averaging weights of 1-D adaptive average pooling, PyTorch's / Paddle's bins.

  Bin i covers [floor(i * in / out), ceil((i + 1) * in / out)): bins may overlap, and when out > in several
  bins repeat the same input element. Integer arithmetic, so the bounds are exact for any sizes.
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f'adaptive pooling needs positive sizes, got in={in_size}, out={out_size}')
  weights = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x, output_size: tuple[int, int], precision=None):
  """`nn.AdaptiveAvgPool2d(output_size)` on x (N, H, W, C) -> (N, oh, ow, C), as a separable weighted sum
  (two matmuls at `precision`)."""
  oh, ow = output_size
  rows = jnp.asarray(adaptive_pool_matrix(x.shape[1], oh), x.dtype)
  cols = jnp.asarray(adaptive_pool_matrix(x.shape[2], ow), x.dtype)
  x = jnp.einsum('ih,nhwc->niwc', rows, x, precision=precision)
  return jnp.einsum('jw,niwc->nijc', cols, x, precision=precision)


class PyramidPooling(nn.Module):
  """Pyramid pooling module: x and its pooled bins, concatenated, then a 3x3 conv-BN-ReLU.

  Attributes:
    bins: output sizes of the adaptive average pools.
    bin_features: channels of each bin's 1x1 conv-BN-ReLU.
    features: channels of the final 3x3 conv-BN-ReLU.
    use_bias: biases on the convolutions (PaddleSeg: yes; mmseg: no).
    align_corners: of the bilinear resize of each bin back to the input size.
    reverse_bins: concatenate [x, bin_n, ..., bin_1] (PaddleSeg `PPModule`) instead of [x, bin_1, ..., bin_n].
  """
  bins: Sequence[int] = (1, 2, 3, 6)
  bin_features: int = 512
  features: int = 512
  use_bias: bool = False
  align_corners: bool = False
  reverse_bins: bool = False
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    size = x.shape[1:3]
    pooled = []
    for i, b in enumerate(self.bins):
      y = adaptive_avg_pool(x, (b, b), self.precision)
      y = ConvBN(self.bin_features, 1, use_bias=self.use_bias, dtype=self.dtype, precision=self.precision,
                 name=f'bin{i}')(y, train)
      pooled.append(resize_bilinear(y, size, align_corners=self.align_corners))
    if self.reverse_bins:
      pooled = pooled[::-1]
    return ConvBN(self.features, 3, use_bias=self.use_bias, dtype=self.dtype, precision=self.precision,
                  name='bottleneck')(jnp.concatenate([x] + pooled, axis=-1), train)


class PSPHead(ReadsOneMap, nn.Module):
  """mmseg PSPHead on `features[in_stage]`. See the module docstring.

  Attributes:
    num_classes: number of classes.
    pool_scales: bin sizes of the pyramid.
    channels: channels of the bins and of the bottleneck; None = input channels / 4 (512 on ResNet50).
    dropout: channel-dropout rate before the classifier.
    align_corners: of the bins' bilinear upsampling.
    in_stage: which stage map the head reads.
  """
  num_classes: int
  pool_scales: Sequence[int] = (1, 2, 3, 6)
  channels: int | None = None
  dropout: float = 0.1
  align_corners: bool = False
  in_stage: str = 'stage4'
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, features: dict, train: bool = False):
    x = features[self.in_stage]
    channels = default_channels(self.channels, x.shape[-1])
    y = PyramidPooling(tuple(self.pool_scales), bin_features=channels, features=channels,
                       align_corners=self.align_corners, dtype=self.dtype, precision=self.precision,
                       name='psp')(x, train)
    return Classifier(self.num_classes, self.dropout, dtype=self.dtype, precision=self.precision,
                      name='classifier')(y, train)
