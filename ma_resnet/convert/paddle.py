"""Loading the authors' PaddlePaddle MA-ResNet50 + DeepLabV3+ checkpoints (no paddle needed).

`load_reference(state_dict_or_path, num_classes=..., memory_length=..., ratio=...)` returns `(model,
variables)`: the model configured as the reference (ResNet50-vd, output stride 8, multi-grid 1/2/4, PCMA
with the code's behaviour on stages 1-3, PaddleSeg DeepLabV3+) and its Flax variables.

The name mapping is an explicit table (`reference_name_table`) from the reference's parameter names (as in
`params.tsv`, NCHW / OIHW) to Flax paths (NHWC / HWIO); its backbone part is PaddleSeg's ResNet_vd naming
(`paddle_resnet.PADDLESEG`) under `backbone.`. A state dict with unknown, missing or mis-shaped names is
refused with one `ConversionError` naming them. `.pdparams` files are read by `weight_files.read_pdparams`
(a restricted unpickler: arrays only, no code).

ImageNet ResNet_vd weights (PaddleClas / PaddleSeg) convert with `ma_resnet.convert.paddle_resnet`.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from ma_resnet.models.backbones.resnet import ResNet, stage_channels
from ma_resnet.models.heads import DeepLabV3PlusHead
from ma_resnet.models.layers import lax_precision
from ma_resnet.models.segmenter import VideoSegmenter
from ma_resnet.models.temporal import PCMA, PCMAOptions

from ma_resnet.convert.checkpoint_io import ConversionError, Table, apply_table, shaped_table
from ma_resnet.convert.paddle_resnet import PADDLESEG
from ma_resnet.convert.resnet_keys import backbone_rows
from ma_resnet.convert.weight_files import read_pdparams

_CONV, _COPY = 'conv_oihw_to_hwio', 'identity'
_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
       '_mean': ('batch_stats', 'mean'), '_variance': ('batch_stats', 'var')}


def _conv_bn(table: dict, reference: str, flax_path: tuple, conv_bias: bool = False,
             bn_infix: str = '._batch_norm.'):
  """Table rows of a reference ConvBN(`_conv`, `_batch_norm`) onto a Flax ConvBN(`conv`, `bn`)."""
  table[f'{reference}._conv.weight'] = ('params', flax_path + ('conv', 'kernel'), _CONV)
  if conv_bias:
    table[f'{reference}._conv.bias'] = ('params', flax_path + ('conv', 'bias'), _COPY)
  _bn(table, f'{reference}{bn_infix}', flax_path + ('bn',))


def _bn(table: dict, prefix: str, flax_path: tuple):
  for suffix, (collection, leaf) in _BN.items():
    table[prefix + suffix] = (collection, flax_path + (leaf,), _COPY)


def reference_name_table(depth: int = 50, pcma_stages=('stage1', 'stage2', 'stage3'),
                         aspp_rates=(1, 12, 24, 36)) -> dict[str, tuple[str, tuple, str]]:
  """reference name -> (collection, Flax path, transform) for MA-ResNet-vd + DeepLabV3+.

  Transforms are `checkpoint_io.TRANSFORMS` names (OIHW -> HWIO for convolution kernels).
  """
  table, _ = backbone_rows(PADDLESEG, depth)  # backbone.conv1_1._conv.weight, backbone.bb_0_0.conv0..., ...
  channels = stage_channels(depth)
  for stage in pcma_stages:
    prefix = f'backbone.mem_{channels[stage]}'
    _conv_bn(table, f'{prefix}.key_enc.0', ('temporal', f'pcma_{stage}', 'key_encoder'))
    _bn(table, f'{prefix}.bn_relu.0.', ('temporal', f'pcma_{stage}', 'readout_bn'))
  aspp = ('head', 'aspp')
  for i, rate in enumerate(aspp_rates):
    reference = f'head.aspp.aspp_blocks.{i}'
    if rate == 1:
      _conv_bn(table, reference, aspp + (f'branch{i}',), conv_bias=True)
    else:
      _conv_bn(table, f'{reference}.depthwise_conv', aspp + (f'branch{i}', 'depthwise'), conv_bias=True)
      _conv_bn(table, f'{reference}.piontwise_conv', aspp + (f'branch{i}', 'pointwise'), conv_bias=True)
  _conv_bn(table, 'head.aspp.global_avg_pool.1', aspp + ('image_pool',))
  _conv_bn(table, 'head.aspp.conv_bn_relu', aspp + ('project',), conv_bias=True)
  decoder = ('head', 'decoder')
  _conv_bn(table, 'head.decoder.conv_bn_relu1', decoder + ('low_level',), conv_bias=True)
  for j in (2, 3):
    for part, flax_part in (('depthwise_conv', 'depthwise'), ('piontwise_conv', 'pointwise')):
      _conv_bn(table, f'head.decoder.conv_bn_relu{j}.{part}', decoder + (f'block{j - 1}', flax_part),
               conv_bias=True)
  table['head.decoder.conv.weight'] = ('params', decoder + ('classifier', 'kernel'), _CONV)
  table['head.decoder.conv.bias'] = ('params', decoder + ('classifier', 'bias'), _COPY)
  return table


def reference_model(num_classes: int, memory_length: int = 1, ratio: float = 0.25,
                    dtype: Any = jnp.float32, precision: str = 'default') -> VideoSegmenter:
  """The reference architecture: MA-ResNet50-vd (OS 8, multi-grid 1/2/4) + PaddleSeg DeepLabV3+, with PCMA on
  stages 1-3 as in the authors' code (stages 2-3 cannot change the logits, but their enhanced maps are the
  reference's stage outputs). `precision` ('default' | 'high' | 'highest', `layers.lax_precision`): of every
  convolution and matmul; 'highest' reproduces the authors' float32 numbers on GPUs too (default: TF32)."""
  options = PCMAOptions.reference(memory_length=memory_length, ratio=ratio)
  channels = stage_channels(50)
  precision = lax_precision(precision)
  return VideoSegmenter(
      backbone=ResNet(50, 'vd', output_stride=8, multi_grid=(1, 2, 4), dtype=dtype, precision=precision),
      temporal=PCMA(options, tuple(channels[s] for s in options.stages), dtype=dtype, precision=precision),
      head=DeepLabV3PlusHead(num_classes, aspp_rates=(1, 12, 24, 36), dtype=dtype, precision=precision),
      num_classes=num_classes,
  )


def reference_table(num_classes: int, ratio: float = 0.25) -> Table:
  """The complete `Table` for the reference model: shapes from the model itself; the parameters of the
  unused stage-4 PCMA (`mem_2048`, present in the authors' checkpoints) are accepted and dropped."""
  model = reference_model(num_classes, ratio=ratio)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1, 64, 64, 3))))
  unused = reference_name_table(pcma_stages=('stage1', 'stage2', 'stage3', 'stage4'))
  return shaped_table(reference_name_table(), expected, ignored=unused)


def load_reference(state_dict_or_path, *, num_classes: int, memory_length: int = 1, ratio: float = 0.25,
                   precision: str = 'default'):
  """Returns `(model, variables)` for an authors' checkpoint (path to `.pdparams`, or a name -> array dict).

  `model.apply(variables, clip)` with `clip` float32 (B, T, H, W, 3) gives `SegmenterOutput`, whose first
  field is the per-frame logits (B, T, H, W, num_classes). Raises `ConversionError` naming every unknown,
  missing or mis-shaped name. `precision`: see `reference_model`.
  """
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    state = read_pdparams(state_dict_or_path)
    source = f'{state_dict_or_path}: '
  else:
    state = dict(state_dict_or_path)
    source = ''
  what = f'the reference MA-ResNet50-vd + DeepLabV3+ ({num_classes} classes, ratio {ratio})'
  try:
    variables = apply_table(state, reference_table(num_classes, ratio), what)
  except ConversionError as e:
    raise ConversionError(source + str(e), missing=e.missing, unexpected=e.unexpected,
                          mismatched=e.mismatched) from None
  return reference_model(num_classes, memory_length, ratio, precision=precision), variables
