"""timm ResNet weights (`resnet{18,26,34,50,101,152}{,c,d}`) -> `ResNet(depth, variant)` variables.

The variant is read off the keys (`resnet_keys.identify`), following timm's `timm/models/resnet.py`:

    timm resnet{depth}   conv1.weight, bn1.*                       -> variant 'torchvision'
    timm resnet{depth}c  conv1.{0,3,6}.weight (deep stem 32/32/64),  -> variant 'v1c'
                         conv1.{1,4}.* and bn1.* (its batch norms),
                         layer{s}.0.downsample.{0,1} (strided 1x1 conv, BN)
    timm resnet{depth}d  the deep stem, layer{s}.0.downsample.{1,2} -> variant 'vd'
                         (index 0: the 2x2 average pool, or Identity where the block does not stride)

The blocks are torchvision's names (`layer{s}.{b}.conv{i}` / `bn{i}`), the classifier `fc.{weight,bias}`.
timm's resnet18d / resnet34d are refused: they have no projection shortcut on stage 1's first block, which
ma_resnet's vd (PaddleSeg's ResNet_vd) has. Other stems (resnet50t's 24/32/64, resnet50s' 64/64/128) fit no
layout and are refused too, naming how they differ.

Files: `.safetensors` (read without torch) or `.pth` / `.bin` (torch, weights-only).
"""
from __future__ import annotations

from ma_resnet.convert.resnet_keys import Framework, Layout, torch_layout, torchvision_stem


def deep_stem(i: int) -> tuple[str, str]:
  """timm's deep stem: conv1 = Sequential(conv, BN, ReLU, conv, BN, ReLU, conv); its last BN is `bn1`."""
  return f'conv1.{3 * i}.weight', (f'conv1.{3 * i + 1}' if i < 2 else 'bn1')


LAYOUTS: tuple[Layout, ...] = (
    torch_layout('timm resnet{depth}', 'torchvision', torchvision_stem),
    torch_layout('timm resnet{depth}c', 'v1c', deep_stem),
    torch_layout('timm resnet{depth}d', 'vd', deep_stem, lambda unit: 1, stage1_projection=False),
)
FRAMEWORK = Framework('timm', LAYOUTS, __name__)
# (variables, layout) of a path or a mapping; and path -> converted checkpoint directory.
convert_state_dict = FRAMEWORK.convert_state_dict
convert_file = FRAMEWORK.convert_file
