"""LERNet (paper 004 §3.2, Table 1): a light real-time encoder; no public code exists, the paper is the spec.

    images (N, H, W, 3), H and W multiples of 8
      -> Downsampling 3->32 (/2)  -> 3 x RDDS(32)
      -> Downsampling 32->64 (/4) -> 2 x RDDS(64)
      -> Downsampling 64->128 (/8)                                  = 'low'  (the low-level part P_l)
      -> RDDS(128), RDDS(128, d=2), d=5, d=9, d=2, d=5, d=9          = 'high' (the high-level part P_h)
    decoder (the head): 1x1 conv to the classes, x8 bilinear upsampling (`heads.ClassifierHead` on 'high' with
    dropout 0, the segmenter's resize).

Downsampling (ENet's initial block, as the paper says): concat(max-pool 2x2 stride 2 of the input, 3x3 stride-2
conv to C_out - C_in channels) -> BN -> ReLU. RDDS block on x (C channels): two branches on x, each
depthwise 3x3 -> BN -> pointwise 1x1 -> ReLU -> depthwise 3x3 with the block's dilation -> BN -> pointwise 1x1
-> dropout; the two branch outputs concatenated (2C) -> fused by a 1x1 conv to C; + x; ReLU.

Readings of the paper (each choice is an option where both are plausible):
- P_l / P_h split. The text puts the split "after the second downsampling" but gives the low-level size as
  128 x 64 x 128 (at 512 x 1024 input) and adds low- and high-level maps (same shape): only the output of the
  third downsampling fits both, so 'low' is that (the downsamplings counted from zero).
- Branch width (`branch_width`): 'full' (each branch keeps C channels, "maximum is 128 in each branch") or
  'half' (each branch ends in C/2 channels, so the concatenation has C). The parameter counts of the two
  readings bracket the paper's 0.65 M (see docs/systems.md).
- Convolution biases: none before a batch norm; the pointwise convs that no BN follows (the second of each
  branch, the fusion) carry a bias. Dropout rate 0.03 (not given; LEDNet's value), `dropout`.
- `single_branch=True`: the paper's single-branched ablation (one branch, no concatenation; the fusion 1x1 kept).

Maps: 'low' (N, H/8, W/8, 128), 'high' (N, H/8, W/8, 128). `high_level(low, train)` runs P_h alone (THA runs it
on key frames only).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ma_resnet.models.layers import batch_norm, conv

LOW, HIGH = 'low', 'high'
MAPS = (LOW, HIGH)
# (output channels of the downsampling, number of RDDS blocks after it) for the low-level part.
LOW_LEVEL = ((32, 3), (64, 2), (128, 0))
HIGH_DILATIONS = (1, 2, 5, 9, 2, 5, 9)
WIDTH = 128


class Downsampling(nn.Module):
  """concat(max-pool 2x2 /2, conv3x3 /2 to features - C_in) -> BN -> ReLU. Odd sizes are refused upstream."""
  features: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    pooled = nn.max_pool(x, (2, 2), strides=(2, 2))
    y = conv(self.features - x.shape[-1], 3, stride=2, dtype=self.dtype, precision=self.precision, name='conv')(x)
    y = jnp.concatenate([pooled.astype(y.dtype), y], axis=-1)
    return nn.relu(batch_norm(train, dtype=self.dtype, name='bn')(y))


class Branch(nn.Module):
  """depthwise 3x3 -> BN -> pointwise -> ReLU -> depthwise 3x3 (dilated) -> BN -> pointwise -> dropout."""
  features: int
  dilation: int = 1
  dropout: float = 0.03
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    y = conv(c, 3, groups=c, dtype=self.dtype, precision=self.precision, name='depthwise1')(x)
    y = batch_norm(train, dtype=self.dtype, name='bn1')(y)
    y = nn.relu(conv(self.features, 1, use_bias=True, dtype=self.dtype, precision=self.precision, name='pointwise1')(y))
    y = conv(self.features, 3, dilation=self.dilation, groups=self.features, dtype=self.dtype,
             precision=self.precision, name='depthwise2')(y)
    y = batch_norm(train, dtype=self.dtype, name='bn2')(y)
    y = conv(self.features, 1, use_bias=True, dtype=self.dtype, precision=self.precision, name='pointwise2')(y)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class RDDSBlock(nn.Module):
  """Residual Double-branched Depthwise Separable block (see the module docstring)."""
  dilation: int = 1
  branch_width: str = 'full'
  single_branch: bool = False
  dropout: float = 0.03
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    width = c if self.branch_width == 'full' else c // 2
    branches = 1 if self.single_branch else 2
    y = jnp.concatenate([Branch(width, self.dilation, self.dropout, self.dtype, self.precision, name=f'branch{i}')(x, train)
                         for i in range(branches)], axis=-1)
    y = conv(c, 1, use_bias=True, dtype=self.dtype, precision=self.precision, name='fuse')(y)
    return nn.relu(y + x)


class LERNet(nn.Module):
  """The LERNet encoder. `LERNet()(images, train, stages=('low',))` runs P_l only.

  Attributes:
    branch_width: 'full' | 'half' (see the module docstring).
    single_branch: the paper's single-branched ablation.
    dropout: rate of each branch's dropout.
    dilations: of the high-level part's RDDS blocks (Table 1).
    dtype: compute dtype (parameters stay float32); precision: of every convolution (`layers.lax_precision`).
  """
  branch_width: str = 'full'
  single_branch: bool = False
  dropout: float = 0.03
  dilations: Sequence[int] = HIGH_DILATIONS
  dtype: Any = jnp.float32
  precision: Any = None

  def setup(self):
    if self.branch_width not in ('full', 'half'):
      raise ValueError(f"LERNet branch_width must be 'full' or 'half', got {self.branch_width!r}")
    block = lambda d: RDDSBlock(d, self.branch_width, self.single_branch, self.dropout, self.dtype, self.precision)
    low = []
    for features, blocks in LOW_LEVEL:
      low.append(Downsampling(features, self.dtype, self.precision))
      low.extend(block(1) for _ in range(blocks))
    self.low_layers = low
    self.high_layers = [block(d) for d in self.dilations]

  def feature_shapes(self, image_size: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
    """(h, w, channels) of 'low' and 'high' for frames of `image_size`; ValueError unless divisible by 8."""
    h, w = (int(s) for s in image_size)
    if h % 8 or w % 8:
      raise ValueError(f'LERNet needs frames whose height and width are multiples of 8, got {h}x{w}')
    return {LOW: (h // 8, w // 8, WIDTH), HIGH: (h // 8, w // 8, WIDTH)}

  def stage_names(self, stages: Sequence[str] | None = None) -> tuple[str, ...]:
    if stages is None:
      return MAPS
    unknown = sorted(set(stages) - set(MAPS))
    if unknown:
      raise ValueError(f'LERNet has no map(s) {unknown}; its maps are {list(MAPS)}')
    return MAPS[:max(MAPS.index(s) for s in stages) + 1] if stages else ()

  def low_level(self, images, train: bool = False):
    """P_l: images (N, H, W, 3) -> (N, H/8, W/8, 128)."""
    self.feature_shapes(images.shape[1:3])
    x = images.astype(self.dtype)
    for layer in self.low_layers:
      x = layer(x, train)
    return x

  def high_level(self, low, train: bool = False):
    """P_h: the low-level map (N, h, w, 128) -> the high-level map, same shape."""
    x = low
    for layer in self.high_layers:
      x = layer(x, train)
    return x

  def __call__(self, images, train: bool = False, stages: Sequence[str] | None = None) -> dict:
    """images (N, H, W, 3) -> {'low', 'high'} (only 'low' when `stages` asks for it alone)."""
    names = self.stage_names(stages)
    maps = {LOW: self.low_level(images, train)}
    if HIGH in names:
      maps[HIGH] = self.high_level(maps[LOW], train)
    return maps
