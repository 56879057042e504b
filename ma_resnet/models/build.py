"""One builder: backbone x temporal module x head, from a config.

    model = build(config.model, num_classes=11)

`config.model` (an `ml_collections.ConfigDict` or any mapping) has the fields of `default_model_config()`
(`default_model_options()` is the same as plain dicts: building a model does not need ml_collections).
Configs, evaluation, predict, notebooks, benchmarks and tests build models here and never assemble them by hand
(the converters of the authors' checkpoints build their exact reference models themselves).

The parts and their contracts: `BACKBONES[name](config, dtype, precision)` (maps + `feature_shapes`),
`HEADS[name](num_classes, dtype, precision, **head_options)` (each head declares the maps it reads,
`stages_read()`), `TEMPORAL_MODULES[name].from_config(config[name], BuildContext)` (each module checks its own
options against the backbone's description and what the heads read). `model_parts` assembles and checks them
without building a model (config validation, `check_frame_size`); `build` puts them into a `VideoSegmenter`.

Build only what is read: the segmenter runs the backbone only as deep as the head, the auxiliary head and
the temporal module read, and PCMA is built only on the stages the heads read (with `feed_forward` off,
PCMA on any other stage could not change a prediction; those stages are dropped with a warning).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax.numpy as jnp
from absl import logging

from ma_resnet.errors import ConfigError
from ma_resnet.models.attention import DEFAULT_CHUNK
from ma_resnet.models.backbones.lernet import LERNet
from ma_resnet.models.backbones.pspnet import PSPNetBackbone
from ma_resnet.models.backbones.resnet import ResNet
from ma_resnet.models.heads import (ClassifierHead, DeepLabV3PlusHead, DNLHead, FCNHead, PSPHead, SFNetHead,
                                    auxiliary_fcn_head, head_factory)
from ma_resnet.models.layers import PRECISIONS, lax_precision
from ma_resnet.models.segmenter import VideoSegmenter
from ma_resnet.models.temporal import PCMA, STF, THA, TMA, Plain, TemporalModule
from ma_resnet.models.temporal.base import BuildContext

# head name -> factory(num_classes, dtype, precision=None, **head_options) -> head module
HEADS: dict[str, Callable[..., Any]] = {
    'deeplabv3plus': head_factory('deeplabv3plus', DeepLabV3PlusHead),
    'pspnet': head_factory('pspnet', PSPHead),
    'sfnet': head_factory('sfnet', SFNetHead),
    'dnlnet': head_factory('dnlnet', DNLHead),
    'fcn': head_factory('fcn', FCNHead),
    'classifier': head_factory('classifier', ClassifierHead),
}
# auxiliary head name -> factory(num_classes, dtype, precision=None) -> head module (training only)
AUX_HEADS: dict[str, Callable[..., Any]] = {
    'fcn': auxiliary_fcn_head,  # mmseg's auxiliary FCNHead on stage3 (one conv, C/4 = 256 channels on ResNet50)
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def default_model_config():
  """The reference model: MA-ResNet50-vd, OS 8, DeepLabV3+, PCMA as in the authors' code, as an
  `ml_collections.ConfigDict` (`default_model_options()` as plain dicts).

  The authors' code puts PCMA on stages 1-3, but DeepLabV3+ reads only stages 1 and 4 and the enhanced maps
  go only to the head, so stages 2-3 cannot change a prediction: the default builds stage 1 only (same
  logits). `convert.paddle.load_reference` builds all three, as the authors' checkpoints hold them.
  """
  import ml_collections  # only here: `build` takes any mapping
  return ml_collections.ConfigDict(default_model_options())


def default_model_options() -> dict:
  """`default_model_config()`'s fields as nested plain dicts."""
  return {
      'temporal': 'pcma',         # see TEMPORAL_MODULES: 'pcma' | 'tma' | 'tha' | 'stf' | 'plain'
      'backbone': 'resnet',       # see BACKBONES: 'resnet' (depth, variant, ... below) | 'lernet' (lernet.*) |
                                  # 'pspnet' (the ResNet + mmseg's PSP bottleneck as the map 'psp', pspnet.*)
      'depth': 50,                # 18 | 34 | 50 | 101 | 152
      'variant': 'vd',            # 'torchvision' | 'vd' | 'v1c'
      'output_stride': 8,         # 8 | 16 | 32
      'multi_grid': (1, 2, 4),    # dilation multipliers of the last stage, or None
      'contract_dilation': False,  # first block of a dilated stage at half dilation (mmseg ResNetV1c)
      'head': 'deeplabv3plus',    # see HEADS
      'head_options': {'aspp_rates': (1, 12, 24, 36)},
      'aux_head': '',             # '' (none) or a name in AUX_HEADS, on stage3 (training only)
      'align_corners': False,     # of the logits' bilinear resize to the input size
      'dtype': 'float32',         # compute dtype: 'float32' | 'bfloat16' (parameters stay float32)
      'precision': 'default',     # of every convolution and matmul: 'default' | 'high' | 'highest' (layers.py)
      'remat': False,             # rematerialise each backbone stage in the backward pass
      'frozen': (),               # parts that do not train: 'backbone' | 'temporal' | 'head' | 'aux_head'
      'pcma': {
          'stages': ('stage1',),
          'ratio': 0.25,
          'memory_length': 1,
          'key_norm': 'softmax10',
          'memory_stores': 'key_value',
          'fusion_mean': 'sample',
          'judge': False,
          'detach_memory': True,
          'warmup': 'full',
          'feed_forward': False,
          'attention': 'auto',    # 'auto' | 'dense' | 'chunked' | 'fused' (models/attention.py)
          'attention_chunk': DEFAULT_CHUNK,
      },
      'tma': {
          'memory_length': 2,
          'key_channels': 64,
          'value_channels': 256,
          'channels': 512,
          'stage': 'stage4',
          'matmul_norm': False,
          'detach_memory': False,
          'attention': 'auto',
          'attention_chunk': DEFAULT_CHUNK,
      },
      'tha': {
          'key_interval': 5,
          'reduced_channels': 4,
          'shared_projection': True,
          'chunk': 2048,
          'low': 'low',
          'high': 'high',
      },
      'pspnet': {
          'stage': 'stage4',        # the stage map the pyramid pooling reads (mmseg PSPHead: stage4)
          'channels': 0,            # of the bins and the bottleneck; 0 = the stage's channels / 4 (512 on R50)
          'pool_scales': (1, 2, 3, 6),
      },
      'stf': {                      # temporal/stf.py (STFOptions): STF + MAR, the authors' Cityscapes model
          'stage': 'psp',
          'heads': 2,
          'layers': 1,
          'ffn_channels': 256,
          'block_size': (16, 16),
          'embedding_size': (128, 256),
          'dropout': 0.1,
          'edge': 'repeat',         # 'repeat' | 'mirror': a missing frame t-1 / t+1 at a sequence's edges
          'freeze_stf': False,      # STF in eval mode without gradient (the MAR stage; + optimizer.frozen)
          'mar': False,
          'memory_per_class': 10,   # K_L
          'mar_channels': 0,        # 0: d / 2
          'memory_init': '',        # '' | folder of key.npy / value.npy (python -m ma_resnet.mar_memory)
      },
      'lernet': {
          'branch_width': 'full',   # 'full' | 'half' (backbones/lernet.py: the two readings of the paper)
          'single_branch': False,
          'dropout': 0.03,
          'dilations': (1, 2, 5, 9, 2, 5, 9),  # of the high-level part's RDDS blocks (Table 1)
      },
  }


def tmanet_r50_d8(model, *, memory_length: int = 2, align_corners: bool = True, key_channels: int = 64,
                  value_channels: int = 256):
  """Sets `model` (a `default_model_config()` or `default_model_options()`) to the authors' TMANet R50-D8 and
  returns it: ResNetV1c-50 with contract_dilation at output stride 8, TMA on stage 4 (bottleneck 512),
  classifier head (dropout 0.1), mmseg's auxiliary FCN on stage 3. Cityscapes config: T = 2, align_corners
  True; CamVid: T = 4, False."""
  model.update(temporal='tma', depth=50, variant='v1c', output_stride=8, multi_grid=None, contract_dilation=True,
               head='classifier', aux_head='fcn', align_corners=align_corners)
  model['head_options'] = {'in_stage': 'stage4', 'dropout': 0.1}
  model['tma'].update(memory_length=memory_length, key_channels=key_channels, value_channels=value_channels,
                   channels=512, stage='stage4', matmul_norm=False, detach_memory=False)
  return model


def stf_pspnet50(model, *, mar: bool = True, align_corners: bool = False):
  """Sets `model` (a `default_model_config()` or `default_model_options()`) to the authors' STF (+ MAR) model on
  mmseg's PSPNet R50-D8 and returns it: backbone 'pspnet' (ResNetV1c-50, contract_dilation, output stride 8, PSP
  bottleneck 512 on stage 4), temporal 'stf' (d 512, 2 heads, one encoder / decoder layer, FFN 256, 16x16
  blocks, embeddings 128x256; MAR with K_L = 10 when `mar`), the classifier head (Dropout2d 0.1 + conv_seg) on
  'psp', no auxiliary head; logits upsampled bilinearly (align_corners False, the code's x8 `interpolate`)."""
  model.update(temporal='stf', backbone='pspnet', depth=50, variant='v1c', output_stride=8, multi_grid=None,
               contract_dilation=True, head='classifier', aux_head='', align_corners=align_corners)
  model['head_options'] = {'in_stage': 'psp', 'dropout': 0.1}
  model['pspnet'].update(stage='stage4', channels=512, pool_scales=(1, 2, 3, 6))
  model['stf'].update(stage='psp', heads=2, layers=1, ffn_channels=256, block_size=(16, 16),
                      embedding_size=(128, 256), dropout=0.1, mar=mar, memory_per_class=10, mar_channels=0)
  return model


def pspnet_r50_d8(model, *, align_corners: bool = False):
  """Sets `model` to the per-frame PSPNet R50-D8 of mmseg (stage 1 of the STF recipe) and returns it: the same
  'pspnet' backbone as `stf_pspnet50`, no temporal module, the classifier head on 'psp', mmseg's auxiliary FCN
  on stage 3 (loss weight 0.4 in the config)."""
  stf_pspnet50(model, mar=False, align_corners=align_corners)
  model.update(temporal='plain', aux_head='fcn')
  return model


def lernet_tha(model, *, tha: bool, key_interval: int = 5):
  """Sets `model` (a `default_model_config()`) to LERNet (+ THA when `tha`) and returns it: the LERNet backbone,
  its decoder (a 1x1 conv on 'high', no dropout; the segmenter upsamples x8 bilinearly), THA with one key frame
  every `key_interval` frames."""
  model.backbone = 'lernet'
  model.temporal = 'tha' if tha else 'plain'
  model.head = 'classifier'
  model.head_options = {'in_stage': 'high', 'dropout': 0.0}
  model.aux_head = ''
  model.tha.key_interval = key_interval
  return model


def _choice(config: Mapping, key: str, allowed) -> Any:
  value = config[key]
  if value not in allowed:
    raise ConfigError(f'invalid config: model.{key} must be one of {sorted(allowed)}, got {value!r}')
  return value


def _check_choices(config: Mapping) -> None:
  """ConfigError('invalid config: model.<field> ...') for a field outside its set of values."""
  from ma_resnet.models.backbones.resnet import DEPTHS, STAGE_GEOMETRY, VARIANTS
  _choice(config, 'temporal', TEMPORAL_MODULES)
  if 'backbone' in config:
    _choice(config, 'backbone', BACKBONES)
  _choice(config, 'depth', DEPTHS)
  _choice(config, 'variant', VARIANTS)
  _choice(config, 'output_stride', STAGE_GEOMETRY)
  _choice(config, 'head', HEADS)
  _choice(config, 'dtype', DTYPES)
  if 'precision' in config:
    _choice(config, 'precision', PRECISIONS)
  if config.get('aux_head'):
    _choice(config, 'aux_head', AUX_HEADS)
  bad = sorted(set(config.get('frozen') or ()) - {'backbone', 'temporal', 'head', 'aux_head'})
  if bad:
    raise ConfigError(f"invalid config: model.frozen may name 'backbone', 'temporal', 'head', 'aux_head'; got {bad}")
  multi_grid = config.get('multi_grid')
  blocks = DEPTHS[config['depth']][1][3]
  if multi_grid and len(tuple(multi_grid)) != blocks:
    raise ConfigError(f'invalid config: model.multi_grid needs {blocks} rates for ResNet{config["depth"]} (one per '
                      f'block of the last stage), got {tuple(multi_grid)}')


class Parts(NamedTuple):
  """The parts of a model described by a config (module descriptions: no parameters exist yet)."""
  backbone: Any
  temporal: Any
  head: Any
  aux_head: Any
  notes: list  # warnings for the user (what the config asks for that is not built)

  def check_frame_size(self, size: tuple[int, int], what: str) -> None:
    """ConfigError naming `what` (e.g. 'data.crop_size') when the model cannot take frames of `size` (h, w): the
    backbone's geometry (`feature_shapes`) and the temporal module's rule (`check_feature_shapes`, e.g. STF's
    whole ICSA blocks)."""
    h, w = (int(s) for s in size)
    try:
      self.temporal.check_feature_shapes(self.backbone.feature_shapes((h, w)))
    except ValueError as e:
      raise ConfigError(f'invalid config: {what} {h}x{w}: {e}') from None


def model_parts(config: Mapping, num_classes: int) -> Parts:
  """The backbone, temporal module and heads of `config` (see `default_model_config`), each checked; no model is
  built. ConfigError('invalid config: model.<field> ...') naming the field at fault."""
  _check_choices(config)
  dtype = DTYPES[config['dtype']]
  precision = lax_precision(config.get('precision', 'default'))
  backbone = BACKBONES[config.get('backbone', 'resnet')](config, dtype, precision)
  head = HEADS[config['head']](num_classes, dtype, precision, **dict(config.get('head_options') or {}))
  aux_head = AUX_HEADS[config['aux_head']](num_classes, dtype, precision) if config.get('aux_head') else None
  heads_read = set(head.stages_read()) | (set(aux_head.stages_read()) if aux_head is not None else set())
  context = BuildContext(backbone, frozenset(heads_read), num_classes, dtype, precision)
  name = config['temporal']
  try:
    temporal = TEMPORAL_MODULES[name].from_config(config.get(name), context)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'invalid config: model.{name}: {e}') from None
  return Parts(backbone, temporal, head, aux_head, context.notes)


# temporal module name -> its class: `from_config(the model config's block of that name, BuildContext)`
TEMPORAL_MODULES: dict[str, type[TemporalModule]] = {
    'plain': Plain,
    'pcma': PCMA,
    'tma': TMA,
    'tha': THA,
    'stf': STF,
}


def _resnet(config: Mapping, dtype, precision):
  multi_grid = config.get('multi_grid')
  return ResNet(depth=config['depth'], variant=config['variant'], output_stride=config['output_stride'],
                multi_grid=tuple(multi_grid) if multi_grid else None,
                contract_dilation=bool(config.get('contract_dilation', False)),
                remat=bool(config.get('remat', False)), dtype=dtype, precision=precision)


def _pspnet(config: Mapping, dtype, precision):
  options = dict(config.get('pspnet') or {})
  multi_grid = config.get('multi_grid')
  return PSPNetBackbone(depth=config['depth'], variant=config['variant'], output_stride=config['output_stride'],
                        multi_grid=tuple(multi_grid) if multi_grid else None,
                        contract_dilation=bool(config.get('contract_dilation', False)),
                        remat=bool(config.get('remat', False)), dtype=dtype, precision=precision,
                        psp_stage=options.get('stage', 'stage4'), psp_channels=int(options.get('channels', 0)),
                        pool_scales=tuple(options.get('pool_scales', (1, 2, 3, 6))))


def _lernet(config: Mapping, dtype, precision):
  options = dict(config.get('lernet') or {})
  if options.get('dilations') is not None:
    options['dilations'] = tuple(options['dilations'])
  return LERNet(**options, dtype=dtype, precision=precision)


# backbone name -> factory(model config, dtype, precision) -> backbone module (maps + feature_shapes + stages=)
BACKBONES: dict[str, Callable[..., Any]] = {
    'resnet': _resnet,
    'lernet': _lernet,
    'pspnet': _pspnet,
}


def build(config: Mapping, num_classes: int) -> VideoSegmenter:
  """The `VideoSegmenter` described by `config` (see `default_model_config`) for `num_classes` classes."""
  parts = model_parts(config, num_classes)
  for note in parts.notes:
    logging.warning('%s', note)
  return VideoSegmenter(backbone=parts.backbone, temporal=parts.temporal, head=parts.head, num_classes=num_classes,
                        aux_head=parts.aux_head, align_corners=bool(config.get('align_corners', False)),
                        frozen=tuple(config.get('frozen') or ()))
