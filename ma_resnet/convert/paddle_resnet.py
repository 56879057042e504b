"""PaddlePaddle ResNet_vd ImageNet weights (`.pdparams`, read without paddle) -> `ResNet(depth, 'vd')` variables.

The published files come in three namings, all recognised from the keys (`resnet_keys.identify`):

- PaddleClas static-graph parameter names (`ppcls/modeling/architectures/resnet_vd.py`, ParamAttr names; saved
  by `fluid.save`): e.g. `ResNet50_vd_ssld_v2_pretrained.pdparams`, the weights MA-ResNet50 starts from.

      conv1_1_weights, bnv1_1_{scale,offset,mean,variance}                   stem conv i (1..3)
      res2a_branch2a_weights, bn2a_branch2a_*  (branch2a/b/c: conv 1..3)     stage 1 block 0
      res2a_branch1_weights, bn2a_branch1_*                                  its projection shortcut
      res4b12_*  (ResNet101/152, stage 3: a, b1, b2, ...)                    stage 3 block 12
      fc_0.w_0 (in, out), fc_0.b_0                                           classifier

  (a batch norm is named 'bn' + its conv's name[3:]: `bnv1_1` for `conv1_1`, `bn2a_branch2a`).

- PaddleSeg dygraph structured names (`paddleseg/models/backbones/resnet_vd.py`; also PaddleClas 2.0 dygraph):
  e.g. PaddleSeg's `resnet50_vd_ssld_v2.tar.gz` (`model.pdparams`), loaded by key into the backbone.

      conv1_{1,2,3}._conv.weight, conv1_i._batch_norm.{weight,bias,_mean,_variance}
      bb_{stage}_{block}.conv{0,1,2}._conv.weight / ._batch_norm.*, bb_{stage}_{block}.short.*
      out.weight (in, out), out.bias  (PaddleClas 2.0's classifier; PaddleSeg files have none)

- PaddleClas >= 2.1 "legendary" structured names (`ppcls/arch/backbone/legendary_models/resnet.py`):

      stem.{0,1,2}.conv.weight, stem.i.bn.{weight,bias,_mean,_variance}
      blocks.{n}.conv{0,1,2}.conv.weight / .bn.*, blocks.{n}.short.*     (n counts blocks over all stages)
      fc.weight (in, out), fc.bias

All three give a projection shortcut to the first block of every stage (stage 1's without the average pool),
as ma_resnet's vd does; for ResNet18/34 this is the stage-1 projection timm's resnet18d / 34d lack. Paddle
kernels are OIHW like torch's; a Linear weight is (in, out) and is kept as is. A `backbone.` prefix is removed.
"""
from __future__ import annotations

from typing import Callable

from ma_resnet.convert.resnet_keys import BatchNormNames, Framework, Layout, Unit

PADDLE_BN = BatchNormNames((('scale', '{}.weight'), ('bias', '{}.bias'), ('mean', '{}._mean'),
                            ('var', '{}._variance')))
PADDLE_STATIC_BN = BatchNormNames((('scale', '{}_scale'), ('bias', '{}_offset'), ('mean', '{}_mean'),
                                   ('var', '{}_variance')))


def _static_block_name(unit: Unit) -> str:
  """PaddleClas's `res{stage + 2}{letter}`; stage 3 of ResNet101/152 numbers its blocks a, b1, b2, ..."""
  if unit.depth in (101, 152) and unit.stage == 2:
    return f'res4{"a" if unit.block == 0 else f"b{unit.block}"}'
  return f'res{unit.stage + 2}{chr(97 + unit.block)}'


def paddleclas_static_keys(unit: Unit) -> tuple[str, str]:
  if unit.stage < 0:
    name = f'conv1_{unit.index + 1}'
  else:
    name = f'{_static_block_name(unit)}_branch' + ('1' if unit.is_projection else '2' + 'abc'[unit.index])
  return f'{name}_weights', f'bn{name[3:]}'


def dygraph_keys(stem: Callable[[int], str], block: Callable[[Unit], str], conv: str, bn: str
                 ) -> Callable[[Unit], tuple[str, str]]:
  """Paddle dygraph structured names: a ConvBNLayer at `prefix` holds `{prefix}.{conv}.weight` and the batch
  norm `{prefix}.{bn}`; prefix = stem(i) for stem conv i, else block(unit) + `.conv{i}` / `.short`."""
  def keys(unit: Unit) -> tuple[str, str]:
    if unit.stage < 0:
      prefix = stem(unit.index)
    else:
      prefix = block(unit) + ('.short' if unit.is_projection else f'.conv{unit.index}')
    return f'{prefix}.{conv}.weight', f'{prefix}.{bn}'
  return keys


paddleseg_keys = dygraph_keys(lambda i: f'conv1_{i + 1}', lambda u: f'bb_{u.stage}_{u.block}', '_conv',
                              '_batch_norm')
paddleclas_keys = dygraph_keys(lambda i: f'stem.{i}', lambda u: f'blocks.{u.flat_block}', 'conv', 'bn')

PADDLECLAS_STATIC = Layout('PaddleClas ResNet{depth}_vd (static-graph names)', 'vd', paddleclas_static_keys,
                           PADDLE_STATIC_BN, (('fc_0.w_0', 'fc_0.b_0'),), 'identity')
PADDLESEG = Layout('PaddleSeg ResNet{depth}_vd', 'vd', paddleseg_keys, PADDLE_BN, (('out.weight', 'out.bias'),),
                   'identity')
PADDLECLAS = Layout('PaddleClas ResNet{depth}_vd (2.1+ names)', 'vd', paddleclas_keys, PADDLE_BN,
                    (('fc.weight', 'fc.bias'),), 'identity')
LAYOUTS: tuple[Layout, ...] = (PADDLECLAS_STATIC, PADDLESEG, PADDLECLAS)
FRAMEWORK = Framework('paddle', LAYOUTS, __name__)
# (variables, layout) of a path or a mapping; and path -> converted checkpoint directory.
convert_state_dict = FRAMEWORK.convert_state_dict
convert_file = FRAMEWORK.convert_file
