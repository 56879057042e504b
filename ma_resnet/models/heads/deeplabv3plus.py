"""DeepLabV3+ head in PaddleSeg's form (`DeepLabV3PHead`), so the authors' checkpoints load.

- ASPP on the high-level map (`stage4`): a 1x1 conv-BN-ReLU branch, separable 3x3 branches (depthwise conv +
  BN, pointwise conv + BN + ReLU, both with bias) at the dilation `rates`, and an image-pooling branch
  (global average pool, 1x1 conv without bias + BN + ReLU, resized back); the five branches concatenated
  -> 1x1 conv-BN-ReLU -> dropout 0.1.
- Decoder: the low-level map (`stage1`) projected to 48 channels (1x1 conv-BN-ReLU); the ASPP output
  bilinearly resized to its size; concatenated (256 + 48); two separable 3x3 blocks to 256; 1x1 conv with
  bias to the classes.

Input: dict of stage maps (N, h, w, C) (NHWC). Output: logits (N, h1, w1, classes) at the low-level
resolution; the segmenter resizes them to the input size.
Parameter tree: `aspp/{branch0..3,image_pool,project}`, `decoder/{low_level,block1,block2,classifier}`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ma_resnet.models.layers import ConvBN, SeparableConvBN, conv
from ma_resnet.models.ops import resize_bilinear


class ASPP(nn.Module):
  rates: Sequence[int] = (1, 12, 24, 36)
  features: int = 256
  dropout: float = 0.1
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    unit = lambda *a, **k: ConvBN(*a, dtype=self.dtype, precision=self.precision, **k)
    branches = []
    for i, rate in enumerate(self.rates):
      if rate == 1:
        branch = unit(self.features, 1, use_bias=True, name=f'branch{i}')
      else:
        branch = SeparableConvBN(self.features, 3, dilation=rate, dtype=self.dtype, precision=self.precision,
                                 name=f'branch{i}')
      branches.append(branch(x, train))
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = unit(self.features, 1, name='image_pool')(pooled, train)
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.features,)))
    y = unit(self.features, 1, use_bias=True, name='project')(jnp.concatenate(branches, axis=-1), train)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class Decoder(nn.Module):
  num_classes: int
  low_level_features: int = 48
  features: int = 256
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, low_level, train: bool):
    low_level = ConvBN(self.low_level_features, 1, use_bias=True, dtype=self.dtype, precision=self.precision,
                       name='low_level')(low_level, train)
    x = resize_bilinear(x, low_level.shape[1:3])
    x = jnp.concatenate([x, low_level], axis=-1)
    x = SeparableConvBN(self.features, 3, dtype=self.dtype, precision=self.precision, name='block1')(x, train)
    x = SeparableConvBN(self.features, 3, dtype=self.dtype, precision=self.precision, name='block2')(x, train)
    return conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, precision=self.precision,
                name='classifier')(x)


class DeepLabV3PlusHead(nn.Module):
  """PaddleSeg DeepLabV3+ head: ASPP on `high_level`, decoder with `low_level`.

  `channels` (ASPP and decoder width, 256 in the paper and PaddleSeg) and `low_level_channels` (48) can be
  lowered for small budgets: the decoder runs at stride 4, so its cost grows with `channels` squared.
  """
  num_classes: int
  aspp_rates: Sequence[int] = (1, 12, 24, 36)
  low_level: str = 'stage1'
  high_level: str = 'stage4'
  channels: int = 256
  low_level_channels: int = 48
  dtype: Any = jnp.float32
  precision: Any = None

  def stages_read(self) -> tuple[str, ...]:
    """The maps this head reads."""
    return (self.low_level, self.high_level)

  @nn.compact
  def __call__(self, features: dict, train: bool = False):
    x = ASPP(self.aspp_rates, features=self.channels, dtype=self.dtype, precision=self.precision, name='aspp')(
        features[self.high_level], train)
    decoder = Decoder(self.num_classes, low_level_features=self.low_level_channels, features=self.channels,
                      dtype=self.dtype, precision=self.precision, name='decoder')
    return decoder(x, features[self.low_level], train)
