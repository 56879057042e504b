"""The ResNet family as pure-functional `flax.linen` modules (NHWC).

Depths 18/34 (basic blocks) and 26/50/101/152 (bottleneck blocks; 26 = 2 blocks per stage, timm's `resnet26`),
in three variants that real checkpoints use:

- `torchvision`: 7x7 stride-2 stem; the stride sits on the 3x3 conv; 1x1 stride-2 projection shortcut.
- `vd` (PaddleSeg ResNet_vd): deep stem of three 3x3 convs (32, 32, 64); the projection of a strided block
  is a 2x2 average pool (stride 2, ceil mode) followed by a 1x1 stride-1 conv; as in PaddleSeg, the first
  block of every stage has a projection shortcut (this adds one to stage 1 of ResNet18/34_vd).
- `v1c` (mmsegmentation ResNetV1c): the same deep stem, the torchvision projection.

Output stride 32, 16 or 8 by dilation (padding = dilation): a stage that stops striding dilates all its
blocks by the accumulated factor (PaddleSeg / mmseg convention), and `multi_grid` multiplies the dilation of
each block of the last stage (DeepLab's multi-grid, e.g. (1, 2, 4)). With `contract_dilation` (mmseg's
ResNetV1c option, used by TMANet and the STF PSPNet) the first block of a dilated stage uses half the stage's
dilation: at output stride 8, stage 3 runs 1, 2, 2, ... and stage 4 2, 4, 4 (the same as torchvision's
`replace_stride_with_dilation=[False, True, True]`); it does not apply to a stage with a multi-grid.

`ResNet(...)(images, train)` returns a dict of the four stage outputs `stage1`..`stage4` (strides 4, 8,
16, 32 at output stride 32) and, when `num_classes` is set, the classifier `logits`. With
`stages=('stage1',)` it runs (and creates parameters for) only the stages up to the deepest one named, so a
head that reads stage 1 never pays for stages 2-4. `remat` rematerialises each stage in the backward pass
(activation memory of one stage at a time, for about one more forward pass of compute).

Parameter tree: `stem/conv{1,2,3}/{conv,bn}`, `stage{s}/block{b}/conv{1,2,3}/{conv,bn}`,
`stage{s}/block{b}/downsample/{conv,bn}`, `fc`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ma_resnet.models.layers import ConvBN
from ma_resnet.models.ops import avg_pool_2x2_ceil

STAGES = ('stage1', 'stage2', 'stage3', 'stage4')
VARIANTS = ('torchvision', 'vd', 'v1c')
# depth -> (block kind, blocks per stage)
DEPTHS = {
    18: ('basic', (2, 2, 2, 2)),
    26: ('bottleneck', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}
WIDTHS = (64, 128, 256, 512)
# output stride -> (stride, dilation) of each stage
STAGE_GEOMETRY = {
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
}


def expansion(depth: int) -> int:
  return 4 if DEPTHS[depth][0] == 'bottleneck' else 1


def stage_channels(depth: int) -> dict[str, int]:
  """Channels of each stage output, e.g. 256/512/1024/2048 for ResNet50."""
  return {name: w * expansion(depth) for name, w in zip(STAGES, WIDTHS)}


def stage_sizes(image_size: tuple[int, int], output_stride: int) -> dict[str, tuple[int, int]]:
  """Spatial size of each stage output for an input of `image_size` = (H, W).

  Every stride-2 layer of the family (3x3 pad 1, 7x7 pad 3, 1x1 pad 0, 3x3 max-pool pad 1, 2x2 ceil-mode
  average pool) maps a size n to ceil(n / 2).
  """
  strides, _ = STAGE_GEOMETRY[output_stride]
  h, w = image_size
  h, w = math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)  # stem conv, max-pool
  sizes = {}
  for name, s in zip(STAGES, strides):
    if s == 2:
      h, w = math.ceil(h / 2), math.ceil(w / 2)
    sizes[name] = (h, w)
  return sizes


class Block(nn.Module):
  """A residual block: `basic` (3x3, 3x3) or `bottleneck` (1x1, 3x3 strided, 1x1 x4)."""
  kind: str
  width: int
  stride: int = 1
  dilation: int = 1
  avg_down: bool = False  # vd: 2x2 average pool before the 1x1 projection of a strided block
  project: bool = False  # projection shortcut even when shapes match (vd: every stage's first block)
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    unit = lambda *a, **k: ConvBN(*a, dtype=self.dtype, precision=self.precision, **k)
    if self.kind == 'basic':
      out_features = self.width
      y = unit(self.width, 3, stride=self.stride, dilation=self.dilation, name='conv1')(x, train)
      y = unit(self.width, 3, dilation=self.dilation, relu=False, name='conv2')(y, train)
    else:
      out_features = self.width * 4
      y = unit(self.width, 1, name='conv1')(x, train)
      y = unit(self.width, 3, stride=self.stride, dilation=self.dilation, name='conv2')(y, train)
      y = unit(out_features, 1, relu=False, name='conv3')(y, train)
    if self.project or self.stride != 1 or x.shape[-1] != out_features:
      if self.avg_down and self.stride != 1:
        x = unit(out_features, 1, relu=False, name='downsample')(avg_pool_2x2_ceil(x), train)
      else:
        x = unit(out_features, 1, stride=self.stride, relu=False, name='downsample')(x, train)
    return nn.relu(y + x)


class Stem(nn.Module):
  """7x7 stride-2 conv (torchvision) or three 3x3 convs 32/32/64 (vd, v1c), then 3x3 stride-2 max-pool."""
  deep: bool
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    unit = lambda *a, **k: ConvBN(*a, dtype=self.dtype, precision=self.precision, **k)
    if self.deep:
      x = unit(32, 3, stride=2, name='conv1')(x, train)
      x = unit(32, 3, name='conv2')(x, train)
      x = unit(64, 3, name='conv3')(x, train)
    else:
      x = unit(64, 7, stride=2, name='conv1')(x, train)
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class Stage(nn.Module):
  """One ResNet stage: `num_blocks` blocks, the first one strided, with per-block dilations."""
  kind: str
  width: int
  num_blocks: int
  stride: int
  dilations: Sequence[int]
  avg_down: bool
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    for b in range(self.num_blocks):
      x = Block(self.kind, self.width, stride=self.stride if b == 0 else 1, dilation=self.dilations[b],
                avg_down=self.avg_down, project=self.avg_down and b == 0, dtype=self.dtype,
                precision=self.precision, name=f'block{b}')(x, train)
    return x


class ResNet(nn.Module):
  """ResNet backbone returning named stage outputs. See the module docstring.

  Attributes:
    depth: 18, 26, 34, 50, 101 or 152.
    variant: 'torchvision', 'vd' or 'v1c'.
    output_stride: 32, 16 or 8.
    multi_grid: dilation multipliers of the last stage's blocks (one per block), or None for all 1.
    contract_dilation: the first block of a dilated stage (without multi-grid) uses half its dilation.
    num_classes: if set, adds the global-pool + dense classifier and returns its `logits`.
    remat: rematerialise each stage in the backward pass (`nn.remat`; same parameters).
    dtype: compute dtype (parameters stay float32).
    precision: of every convolution and of the classifier (None | jax.lax.Precision; `layers.lax_precision`).
  """
  depth: int = 50
  variant: str = 'torchvision'
  output_stride: int = 32
  multi_grid: Sequence[int] | None = None
  contract_dilation: bool = False
  num_classes: int | None = None
  remat: bool = False
  dtype: Any = jnp.float32
  precision: Any = None

  def setup(self):
    if self.depth not in DEPTHS:
      raise ValueError(f'ResNet depth must be one of {sorted(DEPTHS)}, got {self.depth}')
    if self.variant not in VARIANTS:
      raise ValueError(f'ResNet variant must be one of {VARIANTS}, got {self.variant!r}')
    if self.output_stride not in STAGE_GEOMETRY:
      raise ValueError(f'output_stride must be one of {sorted(STAGE_GEOMETRY)}, got {self.output_stride}')
    kind, blocks = DEPTHS[self.depth]
    if self.multi_grid and len(self.multi_grid) != blocks[3]:
      raise ValueError(f'multi_grid needs {blocks[3]} rates (one per block of the last stage of '
                       f'ResNet{self.depth}), got {tuple(self.multi_grid)}')
    stage_class = nn.remat(Stage, static_argnums=(2,)) if self.remat else Stage  # (self, x, train)
    self.stem = Stem(deep=self.variant != 'torchvision', dtype=self.dtype, precision=self.precision)
    self.stages = [
        stage_class(kind, WIDTHS[i], blocks[i], STAGE_GEOMETRY[self.output_stride][0][i], self.dilations(i),
                    avg_down=self.variant == 'vd', dtype=self.dtype, precision=self.precision, name=STAGES[i])
        for i in range(4)
    ]
    self.fc = (nn.Dense(self.num_classes, dtype=self.dtype, precision=self.precision, name='fc')
               if self.num_classes else None)

  def dilations(self, index: int) -> list[int]:
    """The dilation of each block of stage `index` (0..3)."""
    _, blocks = DEPTHS[self.depth]
    dilation = STAGE_GEOMETRY[self.output_stride][1][index]
    if index == 3 and self.multi_grid:
      return [dilation * g for g in self.multi_grid]
    first = dilation // 2 if self.contract_dilation and dilation > 1 else dilation
    return [first] + [dilation] * (blocks[index] - 1)

  def stage_names(self, stages: Sequence[str] | None = None) -> tuple[str, ...]:
    """The stages that run to produce `stages` (all four when None or with the classifier)."""
    if stages is None or self.num_classes:
      return STAGES
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
      raise ValueError(f'ResNet has no map(s) {unknown}; its maps are {list(STAGES)}')
    return STAGES[:max((STAGES.index(s) for s in stages), default=-1) + 1]

  def feature_shapes(self, image_size: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
    """(h, w, channels) of each stage map for frames of `image_size` = (H, W)."""
    channels = stage_channels(self.depth)
    return {name: size + (channels[name],)
            for name, size in stage_sizes(image_size, self.output_stride).items()}

  def __call__(self, images, train: bool = False, stages: Sequence[str] | None = None) -> dict[str, jnp.ndarray]:
    """images (N, H, W, 3) -> {'stage1'..'stage4': (N, h_s, w_s, C_s)} (+ 'logits' (N, classes)).

    stages: run only as far as these stages need (None: all); every stage that ran is returned.
    """
    x = self.stem(images, train)
    features = {}
    for name, stage in zip(self.stage_names(stages), self.stages):
      x = stage(x, train)
      features[name] = x
    if self.fc is not None:
      features['logits'] = self.fc(jnp.mean(x, axis=(1, 2)))
    return features

  def run_stem(self, images, train: bool = False):
    return self.stem(images, train)

  def run_stage(self, index: int, x, train: bool = False):
    """Stage `index` (0..3) alone, for encoders whose later stages depend on per-frame state."""
    return self.stages[index](x, train)
