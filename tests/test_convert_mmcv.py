"""The mmcv converter on OpenMMLab-named state dicts built by renaming timm-named ones (documented mapping
below): converting the renamed dict must give exactly the variables the timm converter gives for the
original, whose numbers test_convert_timm.py checks against timm's modules. No torch needed.

Where the naming was read (OpenMMLab's own source):
- mmseg (and mmcv's model zoo files, e.g. `open-mmlab://resnet50_v1c`, which mmseg loads into its
  ResNetV1c): `open-mmlab/mmsegmentation` `mmseg/models/backbones/resnet.py` (`ResNet._make_stem_layer`:
  `self.stem = nn.Sequential(conv, norm, ReLU, conv, norm, ReLU, conv, norm, ReLU)`; blocks name their norms
  `bn1..bn3` via `build_norm_layer(..., postfix=i)`; ResNetV1c = deep_stem, ResNetV1d = deep_stem + avg_down)
  and `mmseg/models/utils/res_layer.py` (`ResLayer`: with avg_down an `nn.AvgPool2d(kernel_size=stride, ...)`
  is put first in every downsample, so the conv is `downsample.1`, the norm `downsample.2`).
- mmcls / mmpretrain: `open-mmlab/mmpretrain` `mmpretrain/models/backbones/resnet.py` (the stem is three
  `ConvModule`s, `stem.{i}.conv` / `stem.{i}.bn`; `ResLayer` adds the AvgPool2d only when `stride != 1`, so a
  stride-1 projection is `downsample.0` / `.1`); the classifier of its ImageClassifier is `head.fc`.

timm -> mmseg:      conv1.{0,1,3,4,6}.* -> stem.{0,1,3,4,6}.*,  bn1.* -> stem.7.*  (deep stem), rest the same.
timm -> mmpretrain: conv1.{0,1,3,4,6}.* -> stem.{0.conv,0.bn,1.conv,1.bn,2.conv}.*, bn1.* -> stem.2.bn.*;
                    in vd, a stride-1 block's downsample.{1,2} -> downsample.{0,1}.
"""
from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from ma_resnet.convert import ConversionError, mmcv, resnet_keys, timm

try:
  from torch_utils import table_state_dict
except ImportError:  # tests/ imported as a package
  from tests.torch_utils import table_state_dict

TIMM = {layout.variant: layout for layout in timm.LAYOUTS}
MMPRETRAIN_STEM = {'0': '0.conv', '1': '0.bn', '3': '1.conv', '4': '1.bn', '6': '2.conv'}


def timm_state(depth: int, variant: str, seed: int = 0) -> dict[str, np.ndarray]:
  layout = TIMM[variant]
  return table_state_dict(resnet_keys.layout_table(layout, depth, num_classes=1000, classifier=('fc.weight',
                                                                                               'fc.bias')), seed)


def to_mmseg(key: str, variant: str) -> str:
  if variant == 'torchvision':
    return key
  key = re.sub(r'^conv1\.(\d)\.', r'stem.\1.', key)
  return re.sub(r'^bn1\.', 'stem.7.', key)


def to_mmpretrain(key: str, variant: str) -> str:
  if variant == 'torchvision':
    return key
  key = re.sub(r'^conv1\.(\d)\.', lambda m: f'stem.{MMPRETRAIN_STEM[m.group(1)]}.', key)
  key = re.sub(r'^bn1\.', 'stem.2.bn.', key)
  if variant == 'vd':  # layer1's first block is the only one that projects without striding
    key = re.sub(r'^layer1\.0\.downsample\.(\d)\.', lambda m: f'layer1.0.downsample.{int(m.group(1)) - 1}.', key)
  return key


def _same(a, b) -> bool:
  return jax.tree.structure(a) == jax.tree.structure(b) and jax.tree.all(jax.tree.map(np.array_equal, a, b))


@pytest.mark.parametrize('depth,variant', [(18, 'v1c'), (50, 'v1c'), (50, 'vd'), (26, 'vd'), (101, 'vd'),
                                           (34, 'torchvision')])
@pytest.mark.parametrize('rename,family', [(to_mmseg, 'mmseg'), (to_mmpretrain, 'mmpretrain')])
def test_renamed_timm_weights_convert_to_the_same_variables(depth, variant, rename, family):
  state = timm_state(depth, variant, seed=depth)
  expected, _ = timm.convert_state_dict(state, depth)
  renamed = {rename(k, variant): v for k, v in state.items()}
  assert len(renamed) == len(state)
  variables, layout = mmcv.convert_state_dict(renamed, depth)
  assert layout.variant == variant
  assert layout.title(depth) == ('mmcv ResNet-{} (V1b)'.format(depth) if variant == 'torchvision' else
                                 f'{family} ResNetV1{"c" if variant == "v1c" else "d"}-{depth}')
  assert _same(variables, expected)


def test_mmseg_and_mmpretrain_vd_differ_in_the_stage1_projection():
  state = timm_state(50, 'vd')
  mmseg_keys = {to_mmseg(k, 'vd') for k in state}
  mmpretrain_keys = {to_mmpretrain(k, 'vd') for k in state}
  assert 'layer1.0.downsample.1.weight' in mmseg_keys and 'layer1.0.downsample.2.bias' in mmseg_keys
  assert 'layer1.0.downsample.0.weight' in mmpretrain_keys and 'layer1.0.downsample.2.bias' not in mmpretrain_keys
  assert 'layer2.0.downsample.2.bias' in mmpretrain_keys  # strided: the pool is at index 0


def test_model_checkpoint_with_prefix_and_head():
  """An mmseg / mmpretrain model checkpoint: `state_dict` wrapping `backbone.*` (and `head.fc.*`)."""
  state = timm_state(18, 'v1c')
  expected, _ = timm.convert_state_dict(state, 18)
  body = {f'backbone.{to_mmseg(k, "v1c")}': v for k, v in state.items() if not k.startswith('fc.')}
  head = {'head.fc.weight': state['fc.weight'], 'head.fc.bias': state['fc.bias']}
  variables, _ = mmcv.convert_state_dict({'state_dict': {**body, **head}, 'meta': {}}, 18)
  assert _same(variables, expected)
  # an mmseg segmentor (decode_head, auxiliary_head) is not an ImageNet backbone: refused, naming them
  segmentor = {**body, 'decode_head.conv_seg.weight': np.zeros((19, 512, 1, 1), np.float32)}
  with pytest.raises(ConversionError, match=r'closest: mmseg ResNetV1c-18, with 1 unexpected '
                                            r'\(decode_head.conv_seg.weight\)'):
    mmcv.convert_state_dict(segmentor, 18, include_classifier=False)
