"""Loading the authors' TMANet checkpoints (PyTorch, mmsegmentation 0.x: `wanghao9610/TMANet`).

`load_reference(state_dict_or_path, num_classes=..., memory_length=..., align_corners=...)` returns `(model,
variables)`: the reference architecture (ResNetV1c-50 with contract_dilation at output stride 8, `temporal.TMA`,
the classifier head, mmseg's auxiliary FCN head on stage 3), built through `models.build` from
`reference_model_config`, and its Flax variables.

The name mapping is an explicit table (`reference_name_table`) from the reference's state-dict names (as in
`../shared/reference/tmanet/t2_c19/params.tsv`, OIHW kernels) to Flax paths (HWIO), e.g.

    backbone.stem.0.weight                       -> params/backbone/stem/conv1/conv/kernel
    backbone.stem.1.{weight,bias,running_*}      -> {params,batch_stats}/backbone/stem/conv1/bn/...
    backbone.layer3.0.downsample.0.weight        -> params/backbone/stage3/block0/downsample/conv/kernel
    decode_head.memory_key_conv.1.0.conv.weight  -> params/temporal/memory_key_0/conv/conv/kernel
                                                    (layer 1 = the 3x3, slot 0)
    decode_head.query_value_conv.0.bn.*          -> .../temporal/query_value/reduce/bn/...
    decode_head.bottleneck.conv.weight           -> params/temporal/bottleneck/conv/kernel
    decode_head.conv_seg.{weight,bias}           -> params/head/classifier/conv/{kernel,bias}
    auxiliary_head.convs.0.*                     -> .../aux_head/conv0/{conv,bn}/...
    auxiliary_head.conv_seg.{weight,bias}        -> params/aux_head/classifier/conv/{kernel,bias}
    *.num_batches_tracked                        -> (ignored)

A state dict with unknown, missing or mis-shaped names is refused with one `ConversionError` naming them.
torch is imported only to read a `.pth` file.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from ma_resnet.convert.checkpoint_io import ConversionError, Table, apply_table, shaped_table
from ma_resnet.convert.mmcv import MMSEG_V1C
from ma_resnet.convert.resnet_keys import backbone_rows
from ma_resnet.convert.weight_files import state_dict_of
from ma_resnet.models.build import build, default_model_config, tmanet_r50_d8
from ma_resnet.models.segmenter import VideoSegmenter

_CONV, _COPY = 'conv_oihw_to_hwio', 'identity'
_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'), 'running_mean': ('batch_stats', 'mean'),
       'running_var': ('batch_stats', 'var')}


def reference_model_config(*, memory_length: int = 2, align_corners: bool = True, key_channels: int = 64,
                           value_channels: int = 256, precision: str = 'default') -> ml_collections.ConfigDict:
  """`model` config of the authors' TMANet R50-D8 (`models.build.tmanet_r50_d8`). `precision` ('default' |
  'high' | 'highest'): of every convolution and matmul; 'highest' reproduces the authors' float32 numbers on
  GPUs too (default: TF32)."""
  config = tmanet_r50_d8(default_model_config(), memory_length=memory_length, align_corners=align_corners,
                         key_channels=key_channels, value_channels=value_channels)
  config.precision = precision
  return config


def reference_model(num_classes: int, memory_length: int = 2, align_corners: bool = True, key_channels: int = 64,
                    value_channels: int = 256, precision: str = 'default') -> VideoSegmenter:
  """The reference architecture (see the module docstring)."""
  return build(reference_model_config(memory_length=memory_length, align_corners=align_corners,
                                      key_channels=key_channels, value_channels=value_channels,
                                      precision=precision), num_classes)


def _conv_module(rows: dict, ignored: set, name: str, path: tuple):
  """An mmcv ConvModule `name.{conv,bn}` onto a Flax ConvBN at `path/{conv,bn}`."""
  rows[f'{name}.conv.weight'] = ('params', path + ('conv', 'kernel'), _CONV)
  for suffix, (collection, leaf) in _BN.items():
    rows[f'{name}.bn.{suffix}'] = (collection, path + ('bn', leaf), _COPY)
  ignored.add(f'{name}.bn.num_batches_tracked')


def reference_name_table(memory_length: int) -> tuple[dict[str, tuple[str, tuple, str]], set[str]]:
  """(rows: reference name -> (collection, Flax path, transform), names accepted and dropped)."""
  rows, ignored = backbone_rows(MMSEG_V1C, 50)  # backbone.stem.{0,1,3,4,6,7}.*, backbone.layer{s}.{b}.*

  head = 'decode_head'
  for kind, flax_name in (('key', 'memory_key'), ('value', 'memory_value')):
    for slot in range(memory_length):
      for layer, flax_layer in ((0, 'reduce'), (1, 'conv')):
        _conv_module(rows, ignored, f'{head}.memory_{kind}_conv.{layer}.{slot}',
                     ('temporal', f'{flax_name}_{slot}', flax_layer))
    for layer, flax_layer in ((0, 'reduce'), (1, 'conv')):
      _conv_module(rows, ignored, f'{head}.query_{kind}_conv.{layer}', ('temporal', f'query_{kind}', flax_layer))
  _conv_module(rows, ignored, f'{head}.bottleneck', ('temporal', 'bottleneck'))
  for prefix, flax_head in ((head, 'head'), ('auxiliary_head', 'aux_head')):
    rows[f'{prefix}.conv_seg.weight'] = ('params', (flax_head, 'classifier', 'conv', 'kernel'), _CONV)
    rows[f'{prefix}.conv_seg.bias'] = ('params', (flax_head, 'classifier', 'conv', 'bias'), _COPY)
  _conv_module(rows, ignored, 'auxiliary_head.convs.0', ('aux_head', 'conv0'))
  return rows, ignored


def reference_table(model: VideoSegmenter) -> Table:
  """The complete `Table` for `model` (a `reference_model`): row shapes from the model itself."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1, 64, 64, 3)))
  rows, ignored = reference_name_table(model.temporal.options.memory_length)
  return shaped_table(rows, shapes, ignored)


def load_reference(state_dict_or_path: Mapping[str, Any] | str | os.PathLike, *, num_classes: int,
                   memory_length: int, align_corners: bool, key_channels: int = 64, value_channels: int = 256,
                   precision: str = 'default'):
  """Returns `(model, variables)` for an authors' TMANet checkpoint (a `.pth` path or a name -> array dict).

  `model.apply(variables, clip)` with `clip` float32 (B, T+1, H, W, 3) (memory frames oldest first, the
  labelled frame last; normalised as the reference: mean (123.675, 116.28, 103.53), std (58.395, 57.12,
  57.375) on 0-255 RGB) returns `SegmenterOutput` whose first field is the per-frame logits (B, T+1, H, W,
  num_classes); the labelled frame's are at index T (it attends to frames 0..T-1, as in the reference).
  Raises `ConversionError` naming every unknown, missing or mis-shaped name. `precision`: see
  `reference_model_config`.
  """
  state, source = state_dict_of(state_dict_or_path)
  model = reference_model(num_classes, memory_length, align_corners, key_channels, value_channels, precision)
  what = (f'the reference TMANet R50-D8 ({num_classes} classes, T={memory_length}, key {key_channels}, '
          f'value {value_channels})')
  try:
    variables = apply_table(state, reference_table(model), what)
  except ConversionError as e:
    raise ConversionError(source + str(e), missing=e.missing, unexpected=e.unexpected,
                          mismatched=e.mismatched) from None
  return model, variables
