"""The Paddle ResNet_vd converter on Paddle-named state dicts built by renaming timm-named ones (documented
mapping below: converting the renamed dict must give exactly the timm converter's variables), on `.pdparams`
files as paddle writes them, and - for ResNet18_vd, whose stage-1 projection timm lacks - against a torch
network built as PaddleSeg builds it. Paddle itself is never needed.

Where each naming was read (Paddle's own source):
- PaddleClas static-graph names (the SSLD files, e.g. ResNet50_vd_ssld_v2_pretrained.pdparams):
  `PaddlePaddle/PaddleClas` `ppcls/modeling/architectures/resnet_vd.py`: `ConvBNLayer` names its conv
  `name + "_weights"` and its batch norm `"bn" + name[3:]` (`_scale`, `_offset`, `_mean`, `_variance`); the
  stem convs are `conv1_{1,2,3}`, the blocks `res{stage + 2}{a, b, c, ...}` (ResNet101/152 stage 3: `res4a`,
  `res4b1`, ...), their convs `_branch2{a,b,c}` and projection `_branch1`; the classifier `fc_0.w_0` /
  `fc_0.b_0` (a paddle Linear: weight (in, out)). `ppcls/utils/save_load.py` saves with `fluid.save`.
- PaddleSeg dygraph names (PaddleSeg's resnet50_vd_ssld_v2.tar.gz, and the MA-ResNet50 authors' backbone):
  `PaddlePaddle/PaddleSeg` `paddleseg/models/backbones/resnet_vd.py`: `conv1_{1,2,3}`, blocks added as
  `bb_{stage}_{block}` with `conv0..conv2` and `short`, each a ConvBNLayer of `_conv` and `_batch_norm`
  (SyncBatchNorm: `weight`, `bias`, `_mean`, `_variance`); `paddleseg/utils/utils.py`
  `load_pretrained_model` matches these structured keys. PaddleClas 2.0's dygraph `ResNet_vd` (same module
  names) calls its classifier `out`.
- PaddleClas >= 2.1: `ppcls/arch/backbone/legendary_models/resnet.py`: `stem` (Sequential of ConvBNLayer
  `conv` / `bn`), `blocks` (one Sequential over all stages), `fc`.
All three give every stage's first block a projection (`shortcut=False`), stage 1's without the pool.
"""
from __future__ import annotations

import functools
import pickle
import re

import jax
import numpy as np
import pytest

from ma_resnet.convert import ConversionError, paddle_resnet, resnet_keys, timm
from ma_resnet.convert.weight_files import read_pdparams
from ma_resnet.models.backbones.resnet import DEPTHS

try:
  from torch_utils import (flax_resnet_outputs, randomize_batch_norms, relative_error, table_state_dict,
                           timm_or_skip, torch_stage_outputs)
except ImportError:  # tests/ imported as a package
  from tests.torch_utils import (flax_resnet_outputs, randomize_batch_norms, relative_error, table_state_dict,
                                 timm_or_skip, torch_stage_outputs)

# timm's vd names, with a stage-1 projection like the other stages' (downsample.1 conv, .2 BN) for ResNet18/34
TIMM_VD = next(layout for layout in timm.LAYOUTS if layout.variant == 'vd')._replace(stage1_projection=True)
STATIC_BN = {'weight': 'scale', 'bias': 'offset', 'running_mean': 'mean', 'running_var': 'variance'}
DYGRAPH_BN = {'weight': 'weight', 'bias': 'bias', 'running_mean': '_mean', 'running_var': '_variance'}


def timm_vd_state(depth: int, seed: int = 0) -> dict[str, np.ndarray]:
  table = resnet_keys.layout_table(TIMM_VD, depth, num_classes=1000, classifier=('fc.weight', 'fc.bias'))
  return table_state_dict(table, seed)


def _position(key: str):
  """(unit, part, leaf) of a timm vd key: unit ('stem', i) / ('block', stage 0-3, block, conv 0-2) /
  ('short', stage, block); part 'conv' or 'bn'; leaf the torch name ('weight', 'running_mean', ...)."""
  m = re.fullmatch(r'conv1\.(\d)\.(\w+)', key)
  if m:
    i = int(m.group(1))
    return ('stem', i // 3), ('conv' if i % 3 == 0 else 'bn'), m.group(2)
  m = re.fullmatch(r'bn1\.(\w+)', key)
  if m:
    return ('stem', 2), 'bn', m.group(1)
  m = re.fullmatch(r'layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)', key)
  if m:
    return ('block', int(m.group(1)) - 1, int(m.group(2)), int(m.group(4)) - 1), m.group(3), m.group(5)
  m = re.fullmatch(r'layer(\d)\.(\d+)\.downsample\.(\d)\.(\w+)', key)
  return ('short', int(m.group(1)) - 1, int(m.group(2))), ('conv' if m.group(3) == '1' else 'bn'), m.group(4)


def _static_name(unit, depth: int) -> str:
  if unit[0] == 'stem':
    return f'conv1_{unit[1] + 1}'
  stage, block = unit[1], unit[2]
  letter = (('a' if block == 0 else f'b{block}') if depth in (101, 152) and stage == 2 else chr(97 + block))
  return f'res{stage + 2}{letter}_branch' + ('1' if unit[0] == 'short' else '2' + 'abc'[unit[3]])


def to_paddle(state: dict, depth: int, naming: str) -> dict:
  """timm vd keys -> `naming` ('static', 'paddleseg', 'paddleclas'); fc.weight transposed to (in, out)."""
  flat = np.cumsum((0,) + DEPTHS[depth][1])
  out = {}
  for key, value in state.items():
    if key.endswith('num_batches_tracked'):
      continue
    if key.startswith('fc.'):
      name = {'static': 'fc_0.w_0', 'paddleseg': 'out.weight', 'paddleclas': 'fc.weight'}[naming]
      if key == 'fc.bias':
        name = {'static': 'fc_0.b_0', 'paddleseg': 'out.bias', 'paddleclas': 'fc.bias'}[naming]
      out[name] = value.T if key == 'fc.weight' else value
      continue
    unit, part, leaf = _position(key)
    if naming == 'static':
      conv = _static_name(unit, depth)
      out[f'{conv}_weights' if part == 'conv' else f'bn{conv[3:]}_{STATIC_BN[leaf]}'] = value
      continue
    if naming == 'paddleseg':
      prefix = (f'conv1_{unit[1] + 1}' if unit[0] == 'stem' else f'bb_{unit[1]}_{unit[2]}.'
                + ('short' if unit[0] == 'short' else f'conv{unit[3]}'))
      conv_name, bn_name = '_conv', '_batch_norm'
    else:
      prefix = (f'stem.{unit[1]}' if unit[0] == 'stem' else f'blocks.{flat[unit[1]] + unit[2]}.'
                + ('short' if unit[0] == 'short' else f'conv{unit[3]}'))
      conv_name, bn_name = 'conv', 'bn'
    out[f'{prefix}.{conv_name}.weight' if part == 'conv' else f'{prefix}.{bn_name}.{DYGRAPH_BN[leaf]}'] = value
  return out


def _same(a, b) -> bool:
  return jax.tree.structure(a) == jax.tree.structure(b) and jax.tree.all(jax.tree.map(np.array_equal, a, b))


@pytest.mark.parametrize('naming,layout', [('static', paddle_resnet.PADDLECLAS_STATIC),
                                           ('paddleseg', paddle_resnet.PADDLESEG),
                                           ('paddleclas', paddle_resnet.PADDLECLAS)])
@pytest.mark.parametrize('depth', (18, 50, 101))
def test_renamed_timm_weights_convert_to_the_same_variables(naming, layout, depth):
  state = timm_vd_state(depth, seed=depth)
  expected = resnet_keys.convert(state, (TIMM_VD,), depth, 'timm-like')[0]
  renamed = to_paddle(state, depth, naming)
  variables, found = paddle_resnet.convert_state_dict(renamed, depth)
  assert found == layout
  assert _same(variables, expected)
  if naming == 'static':
    assert 'bnv1_1_scale' in renamed and (depth != 101 or 'res4b22_branch2c_weights' in renamed)


def test_static_names_of_resnet50_vd_ssld():
  """The keys of ResNet50_vd_ssld_v2_pretrained.pdparams, as the PaddleClas source names them: 3 stem convs,
  16 blocks of 3 convs, 4 projections, each with a batch norm of 4 tensors, and the classifier."""
  keys = set(to_paddle(timm_vd_state(50), 50, 'static'))
  assert len(keys) == (3 + 16 * 3 + 4) * 5 + 2
  for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
    for b in range(blocks):
      assert f'res{stage}{chr(97 + b)}_branch2c_weights' in keys
    assert f'bn{stage}a_branch1_variance' in keys


@functools.cache
def _paddleseg_resnet18_vd(seed: int = 0):
  """(numpy state dict with timm names, NCHW input, outputs) of timm's resnet18d given, as PaddleSeg's
  ResNet18_vd has, a projection (1x1 conv + BN, no pool) on stage 1's first block."""
  timm_or_skip()
  import torch
  torch.manual_seed(seed)
  model = timm_or_skip().create_model('resnet18d', pretrained=False)
  model.layer1[0].downsample = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Conv2d(64, 64, 1, bias=False),
                                                   torch.nn.BatchNorm2d(64))
  randomize_batch_norms(model, seed + 1)
  x = np.random.default_rng(seed).standard_normal((2, 3, 67, 93)).astype(np.float32)
  return {k: v.numpy() for k, v in model.state_dict().items()}, x, torch_stage_outputs(model, x)


@pytest.mark.parametrize('naming', ['static', 'paddleseg'])
def test_resnet18_vd_parity_with_a_paddleseg_structured_network(naming):
  state, x, ref = _paddleseg_resnet18_vd()
  variables, layout = paddle_resnet.convert_state_dict(to_paddle(state, 18, naming), 18)
  out = flax_resnet_outputs(18, 'vd', variables, x)
  errors = {k: relative_error(out[k], ref[k]) for k in ref}
  print(f'{layout.title(18)} relative errors:', {k: f'{e:.1e}' for k, e in errors.items()})
  assert max(errors.values()) <= 1e-5, errors


# ---------------------------------------------------------------------------------------------------------
# .pdparams files as paddle writes them.

def test_pdparams_as_paddle_writes_them(tmp_path):
  """fluid.save (protocol 2: bytes through _codecs.encode), paddle.save of a state dict (protocol 4, plus its
  StructuredToParameterName@@ table) and of nested tensors (paddle 2.1: tuple(name, ndarray))."""
  state = to_paddle(timm_vd_state(18), 18, 'paddleseg')
  expected, _ = paddle_resnet.convert_state_dict(state, 18)
  variants = {
      'fluid': (dict(state), 2),
      'paddle_save': ({**state, 'StructuredToParameterName@@': {k: f'param_{i}' for i, k in enumerate(state)}}, 4),
      'tuples': ({k: (f'param_{i}', v) for i, (k, v) in enumerate(state.items())}, 4),
  }
  for name, (obj, protocol) in variants.items():
    path = tmp_path / f'{name}.pdparams'
    with open(path, 'wb') as f:
      pickle.dump(obj, f, protocol=protocol)
    read = read_pdparams(path)
    assert set(read) == set(state), name
    variables, _ = paddle_resnet.convert_state_dict(path, 18)
    assert _same(variables, expected), name


def test_pdparams_refusals_name_the_file(tmp_path):
  with pytest.raises(ConversionError, match=r'absent.pdparams does not exist'):
    paddle_resnet.convert_state_dict(tmp_path / 'absent.pdparams', 18)
  truncated = tmp_path / 'truncated.pdparams'
  truncated.write_bytes(pickle.dumps({'a': np.zeros(3)}, protocol=4)[:-20])
  with pytest.raises(ConversionError, match=r'truncated.pdparams: not a readable .pdparams pickle'):
    paddle_resnet.convert_state_dict(truncated, 18)
  listed = tmp_path / 'list.pdparams'
  listed.write_bytes(pickle.dumps([np.zeros(3)], protocol=4))
  with pytest.raises(ConversionError, match=r'list.pdparams: expected a dict of name -> array, got list'):
    paddle_resnet.convert_state_dict(listed, 18)
