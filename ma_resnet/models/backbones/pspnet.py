"""The PSPNet feature extractor of STF + MAR (paper 003): a ResNet and mmseg's PSP bottleneck, as one backbone.

The authors of STF + MAR (`jfzhuang/ST_Memory`) start from an mmseg PSPNet R50-D8 (ResNetV1c-50, deep stem,
contract_dilation, output stride 8) trained per frame, and take for every frame the PSP head's 512-channel
bottleneck output at 1/8 (`decode_head(x, return_feat=True)`: pyramid pooling + 3x3 conv-BN-ReLU, before the
dropout and `conv_seg`). `PSPNetBackbone` is that extractor: the ResNet stage maps plus the map 'psp'

  psp = PyramidPooling(stage map `psp_stage`)   (N, h, w, psp_channels), mmseg form: bins (1, 2, 3, 6), each
        adaptive average pool -> 1x1 conv-BN-ReLU -> bilinear back (align_corners False); [x, bins] -> 3x3
        conv-BN-ReLU; no conv biases (`heads.pspnet.PyramidPooling` with use_bias False)

so that the per-frame PSPNet is this backbone + `temporal.Plain` + `heads.ClassifierHead` reading 'psp' (mmseg's
Dropout2d + `conv_seg`), numerically mmseg's PSPNet, and STF (`temporal.stf`) replaces 'psp' by its fused map
before the same classifier: the variable paths of the per-frame model and of the STF model agree, so a staged
recipe carries the extractor over with `init_from`.

Maps: 'stage1'..'stage4' as `ResNet` (only as deep as asked) and 'psp'. `stages=('psp',)` runs the ResNet up to
`psp_stage` and the PSP bottleneck. Parameter tree: the ResNet's (`stem/...`, `stage{s}/...`) and
`psp/{bin0..3,bottleneck}/{conv,bn}`.

The synthetic recipe uses a tiny variant: ResNet18 with the PSP bottleneck on stage 2 (stride 8 at any output
stride, so stages 3-4 are never built), `psp_stage='stage2'`.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from ma_resnet.models.backbones.resnet import STAGES, ResNet, stage_channels, stage_sizes
from ma_resnet.models.heads.fcn import default_channels
from ma_resnet.models.heads.pspnet import PyramidPooling

PSP = 'psp'


class PSPNetBackbone(ResNet):
  """ResNet + mmseg's PSP bottleneck as the map 'psp'. See the module docstring.

  Attributes (beyond `ResNet`'s):
    psp_stage: the stage map the pyramid pooling reads (mmseg PSPHead: stage4, `in_index=3`).
    psp_channels: channels of the bins and of the bottleneck; 0 = the stage's channels / 4 (512 on ResNet50).
    pool_scales: output sizes of the adaptive average pools.
  """
  psp_stage: str = 'stage4'
  psp_channels: int = 0
  pool_scales: Sequence[int] = (1, 2, 3, 6)

  def setup(self):
    super().setup()
    if self.psp_stage not in STAGES:
      raise ValueError(f'PSPNetBackbone.psp_stage must be one of {STAGES}, got {self.psp_stage!r}')
    self.psp = PyramidPooling(tuple(self.pool_scales), bin_features=self.channels(), features=self.channels(),
                              use_bias=False, align_corners=False, dtype=self.dtype, precision=self.precision)

  def channels(self) -> int:
    """Channels of the 'psp' map."""
    return default_channels(self.psp_channels, stage_channels(self.depth)[self.psp_stage])

  def stage_names(self, stages: Sequence[str] | None = None) -> tuple[str, ...]:
    if stages is not None and PSP in stages:
      stages = tuple(s for s in stages if s != PSP) + (self.psp_stage,)
    return super().stage_names(stages)

  def feature_shapes(self, image_size: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
    """(h, w, channels) of every map, 'psp' included, for frames of `image_size` = (H, W)."""
    shapes = super().feature_shapes(image_size)
    shapes[PSP] = stage_sizes(image_size, self.output_stride)[self.psp_stage] + (self.channels(),)
    return shapes

  def __call__(self, images, train: bool = False, stages: Sequence[str] | None = None) -> dict[str, jnp.ndarray]:
    """images (N, H, W, 3) -> the stage maps that ran and, when asked (or `stages` is None), 'psp'."""
    maps = super().__call__(images, train, stages)
    if stages is None or PSP in stages:
      maps[PSP] = self.psp(maps[self.psp_stage], train)
    return maps
