"""OpenMMLab ResNet weights (mmcv model zoo / mmseg / mmdet, and mmcls / mmpretrain) -> `ResNet(depth, variant)`.

E.g. `open-mmlab://resnet50_v1c` (`resnet50_v1c-2cccc1ad.pth`, TMANet's and STF + MAR's PSPNet backbone).
The variant is read off the keys (`resnet_keys.identify`). Two stem namings exist:

- mmseg / mmdet / mmcv (`mmseg/models/backbones/resnet.py`, `ResNet._make_stem_layer`): a Sequential of bare
  layers, `stem.{0,3,6}.weight` (convs) and `stem.{1,4,7}.*` (batch norms);
- mmcls / mmpretrain (`mmpretrain/models/backbones/resnet.py`): a Sequential of ConvModules,
  `stem.{0,1,2}.conv.weight` and `stem.{0,1,2}.bn.*`.

Blocks are torchvision's names (`layer{s}.{b}.conv{i}`, `bn{i}`). The projection shortcut:

- ResNetV1c (deep_stem=True, avg_down=False) -> variant 'v1c': `downsample.0` (strided 1x1 conv), `.1` (BN);
- ResNetV1d (deep_stem=True, avg_down=True) -> variant 'vd': an AvgPool2d at `downsample.0`, so the conv is
  `.1` and the BN `.2`. mmseg's ResLayer (`mmseg/models/utils/res_layer.py`) adds the pool to every projection
  (kernel 1 where the block does not stride); mmpretrain's only to strided ones, so its stage-1 projection
  (ResNet50+) is `.0` / `.1`.
- ResNet (V1b: the 7x7 stem `conv1`, `bn1`) -> variant 'torchvision'.

ResNetV1d-18/34 are refused (no projection on stage 1's first block, which ma_resnet's vd has). Keys may carry
a `backbone.` prefix (a model checkpoint); the classifier is `fc.*` or (mmpretrain ImageClassifier)
`head.fc.*`; checkpoints wrapping the state dict under `state_dict` are unwrapped (torch files).
"""
from __future__ import annotations

from ma_resnet.convert.resnet_keys import Framework, Layout, torch_layout, torchvision_stem

CLASSIFIERS = (('fc.weight', 'fc.bias'), ('head.fc.weight', 'head.fc.bias'))


def mmseg_stem(i: int) -> tuple[str, str]:
  return f'stem.{3 * i}.weight', f'stem.{3 * i + 1}'


def mmpretrain_stem(i: int) -> tuple[str, str]:
  return f'stem.{i}.conv.weight', f'stem.{i}.bn'


MMSEG_V1C = torch_layout('mmseg ResNetV1c-{depth}', 'v1c', mmseg_stem, classifiers=CLASSIFIERS)
LAYOUTS: tuple[Layout, ...] = (
    MMSEG_V1C,
    torch_layout('mmseg ResNetV1d-{depth}', 'vd', mmseg_stem, lambda unit: 1, classifiers=CLASSIFIERS,
                 stage1_projection=False),
    torch_layout('mmpretrain ResNetV1c-{depth}', 'v1c', mmpretrain_stem, classifiers=CLASSIFIERS),
    torch_layout('mmpretrain ResNetV1d-{depth}', 'vd', mmpretrain_stem, lambda unit: int(unit.stride != 1),
                 classifiers=CLASSIFIERS, stage1_projection=False),
    torch_layout('mmcv ResNet-{depth} (V1b)', 'torchvision', torchvision_stem, classifiers=CLASSIFIERS),
)
FRAMEWORK = Framework('mmcv', LAYOUTS, __name__)
# (variables, layout) of a path or a mapping; and path -> converted checkpoint directory.
convert_state_dict = FRAMEWORK.convert_state_dict
convert_file = FRAMEWORK.convert_file
