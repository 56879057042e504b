"""The timm converter against timm's own ResNet modules (`timm/models/resnet.py`, timm 1.0.31): its key tables
cover timm's state dicts exactly, and converted weights give timm's numbers (eval mode, random weights and
batch-norm statistics, an odd 67x93 input), stage by stage. Skips, saying why, without torch or timm.

timm's naming, read in `timm/models/resnet.py`: `ResNet.__init__` builds the deep stem as
`conv1 = nn.Sequential(conv 3->32 s2, BN, ReLU, conv 32->32, BN, ReLU, conv 32->64)` followed by `bn1`
(stem_type='deep', stem_width=32: the `c` and `d` models); `downsample_conv` is `Sequential(conv, BN)` and
`downsample_avg` (avg_down=True: the `d` models) `Sequential(AvgPool2d(2, 2, ceil_mode=True,
count_include_pad=False) or Identity, conv, BN)`; a block gets a downsample only when it strides or changes
width (`make_blocks`), so resnet18d / resnet34d have none in stage 1.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma_resnet.convert import ConversionError, resnet_keys, timm as timm_convert
from ma_resnet.models.backbones.resnet import ResNet

try:
  from torch_utils import (flax_resnet_outputs, randomize_batch_norms, relative_error, timm_or_skip,
                           torch_stage_outputs)
except ImportError:  # tests/ imported as a package
  from tests.torch_utils import (flax_resnet_outputs, randomize_batch_norms, relative_error, timm_or_skip,
                                 torch_stage_outputs)

IMAGE = (67, 93)  # odd sizes: ceil-mode pooling and padding at every stride-2 layer
# timm's registered ResNets of the three families, and the variant each converts to
FAMILIES = {f'resnet{d}{s}': v for d in (18, 26, 34, 50, 101, 152) for s, v in (('', 'torchvision'),
                                                                                  ('c', 'v1c'), ('d', 'vd'))}


def _timm_model(name: str):
  """A timm model by registered name, or the v1c variant timm does not register (resnet18c / 26c / 34c) built
  as timm builds resnet50c: ResNet(block, layers, stem_width=32, stem_type='deep')."""
  timm = timm_or_skip()
  from timm.models import resnet
  if timm.is_model(name):
    return timm.create_model(name, pretrained=False)
  depth = int(name[len('resnet'):-1])
  block = resnet.BasicBlock if depth in (18, 34) else resnet.Bottleneck
  layers = {18: [2, 2, 2, 2], 26: [2, 2, 2, 2], 34: [3, 4, 6, 3]}[depth]
  return resnet.ResNet(block=block, layers=layers, stem_width=32, stem_type='deep')


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_tables_cover_timm_state_dicts_exactly(name):
  timm_or_skip()
  import torch
  with torch.device('meta'):  # no memory, no init
    state = _timm_model(name).state_dict()
  depth = int(name[len('resnet'):].rstrip('cd'))
  if FAMILIES[name] == 'vd' and depth in (18, 34):
    with pytest.raises(ConversionError, match=f'this is timm resnet{depth}d, a ResNet-vd without a projection'):
      resnet_keys.identify(state, timm_convert.LAYOUTS, depth, 'timm')
    return
  layout = resnet_keys.identify(state, timm_convert.LAYOUTS, depth, 'timm')
  assert layout.variant == FAMILIES[name] and layout.title(depth) == f'timm {name}'
  table = resnet_keys.layout_table(layout, depth, num_classes=1000, classifier=('fc.weight', 'fc.bias'))
  assert set(state) == set(table.entries) | set(table.ignored)
  assert {k: tuple(v.shape) for k, v in state.items() if k in table.entries} == \
         {k: e.shape for k, e in table.entries.items()}


def test_resnet26_parameter_counts_are_timms():
  """ResNet(26, ...) is timm's resnet26 / resnet26d (its parameter counts, classifier included)."""
  timm = timm_or_skip()
  import torch
  for name, variant in (('resnet26', 'torchvision'), ('resnet26d', 'vd')):
    with torch.device('meta'):
      expected = sum(p.numel() for p in timm.create_model(name).parameters())
    shapes = jax.eval_shape(lambda x: ResNet(26, variant, num_classes=1000).init(jax.random.key(0), x),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes['params'])) == expected


# ---------------------------------------------------------------------------------------------------------
# Numerical parity.

@functools.cache
def _timm_reference(name: str, seed: int = 0):
  """(numpy state dict, NCHW input, timm's outputs) of a randomised timm model in eval mode."""
  timm_or_skip()
  import torch
  torch.manual_seed(seed)
  model = _timm_model(name)
  randomize_batch_norms(model, seed + 1)
  x = np.random.default_rng(seed).standard_normal((2, 3) + IMAGE).astype(np.float32)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  return state, x, torch_stage_outputs(model, x)


def _check_parity(name: str, depth: int):
  state, x, ref = _timm_reference(name)
  variables, layout = timm_convert.convert_state_dict(state, depth)
  assert layout.variant == FAMILIES[name]
  out = flax_resnet_outputs(depth, layout.variant, variables, x)
  errors = {k: relative_error(out[k], ref[k]) for k in ref}
  print(f'{name} ({layout.variant}) relative errors:', {k: f'{e:.1e}' for k, e in errors.items()})
  for k in ref:
    assert out[k].shape == ref[k].shape, k
  assert max(errors.values()) <= 1e-5, errors
  return state, x, ref


@pytest.mark.parametrize('name,depth', [('resnet18', 18), ('resnet18c', 18), ('resnet26d', 26)])
def test_parity_with_timm(name, depth):
  _check_parity(name, depth)


@pytest.mark.full_size
@pytest.mark.parametrize('name', ['resnet50', 'resnet50c', 'resnet50d'])
def test_parity_with_timm_resnet50(name):
  _check_parity(name, 50)


def test_parity_check_sees_a_missing_average_pool():
  """Negative control: resnet26d's weights in the v1c network (strided 1x1 projection, no average pool)."""
  state, x, ref = _timm_reference('resnet26d')
  variables, _ = timm_convert.convert_state_dict(state, 26)
  out = flax_resnet_outputs(26, 'v1c', variables, x)
  assert relative_error(out['stage1'], ref['stage1']) <= 1e-5  # stage 1 has no strided projection
  assert relative_error(out['stage2'], ref['stage2']) > 1e-3
