"""One builder for every (encoder: plain | MA, depth, variant, output stride) x (head) combination.

    model = build(config.model, num_classes=11)

`config.model` (an `ml_collections.ConfigDict` or any mapping) has the fields of `default_model_config()`.
Configs, tests and notebooks build models here and never assemble them by hand.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax.numpy as jnp
import ml_collections
from absl import logging

from ma_resnet.models.heads import (DeepLabV3PlusHead, DNLHead, FCNHead, PSPHead, SFNetHead, auxiliary_fcn_head,
                                      head_factory)
from ma_resnet.models.pcma import PCMAOptions
from ma_resnet.models.resnet import STAGES, ResNet
from ma_resnet.models.segmenter import Segmenter

# head name -> factory(num_classes, dtype, **head_options) -> head module
HEADS: dict[str, Callable[..., Any]] = {
    'deeplabv3plus': head_factory('deeplabv3plus', DeepLabV3PlusHead),
    'pspnet': head_factory('pspnet', PSPHead),
    'sfnet': head_factory('sfnet', SFNetHead),
    'dnlnet': head_factory('dnlnet', DNLHead),
    'fcn': head_factory('fcn', FCNHead),
}
# auxiliary head name -> factory(num_classes, dtype) -> head module (training only)
AUX_HEADS: dict[str, Callable[..., Any]] = {
    'fcn': auxiliary_fcn_head,  # mmseg's auxiliary FCNHead on stage3 (one conv, C/4 = 256 channels on ResNet50)
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def default_model_config() -> ml_collections.ConfigDict:
  """The reference model (MA-ResNet50-vd, OS 8, DeepLabV3+, PCMA as in the authors' code)."""
  return ml_collections.ConfigDict({
      'encoder': 'ma',            # 'ma' (PCMA memory) | 'plain'
      'depth': 50,                # 18 | 34 | 50 | 101 | 152
      'variant': 'vd',            # 'torchvision' | 'vd' | 'v1c'
      'output_stride': 8,         # 8 | 16 | 32
      'multi_grid': (1, 2, 4),    # dilation multipliers of the last stage, or None
      'head': 'deeplabv3plus',    # see HEADS
      'head_options': ml_collections.ConfigDict({'aspp_rates': (1, 12, 24, 36)}),
      'aux_head': '',             # '' (none) or a name in AUX_HEADS, on stage3 (training only)
      'dtype': 'float32',         # compute dtype: 'float32' | 'bfloat16' (parameters stay float32)
      'pcma': ml_collections.ConfigDict({
          'stages': ('stage1', 'stage2', 'stage3'),
          'ratio': 0.25,
          'memory_length': 1,
          'key_norm': 'softmax10',
          'memory_stores': 'key_value',
          'fusion_mean': 'sample',
          'judge': False,
          'detach_memory': True,
          'warmup': 'full',
          'feed_forward': False,
      }),
  })


def _choice(config: Mapping, key: str, allowed) -> Any:
  value = config[key]
  if value not in allowed:
    raise ValueError(f'model.{key} must be one of {sorted(allowed)}, got {value!r}')
  return value


def stages_read(head) -> set[str]:
  """The stage maps a head reads: its `stages` / `in_stage` / `low_level` / `high_level` fields, else all.

  With enhanced maps going only to the head (the code's behaviour), PCMA on a stage the head does not read
  changes nothing: `build` warns about such a combination.
  """
  if hasattr(head, 'stages'):
    return set(head.stages)
  fields = [getattr(head, name) for name in ('in_stage', 'low_level', 'high_level') if hasattr(head, name)]
  return set(fields) if fields else set(STAGES)


def build(config: Mapping, num_classes: int) -> Segmenter:
  """The `Segmenter` described by `config` (see `default_model_config`) for `num_classes` classes."""
  encoder = _choice(config, 'encoder', ('ma', 'plain'))
  head_name = _choice(config, 'head', HEADS)
  dtype = DTYPES[_choice(config, 'dtype', DTYPES)]
  multi_grid = config.get('multi_grid')
  backbone = ResNet(depth=config['depth'], variant=config['variant'], output_stride=config['output_stride'],
                    multi_grid=tuple(multi_grid) if multi_grid else None, dtype=dtype)
  head_options = dict(config.get('head_options') or {})
  if head_options.get('aspp_rates') is not None:
    head_options['aspp_rates'] = tuple(head_options['aspp_rates'])
  head = HEADS[head_name](num_classes, dtype, **head_options)
  aux_head = None
  if config.get('aux_head'):
    aux_head = AUX_HEADS[_choice(config, 'aux_head', AUX_HEADS)](num_classes, dtype)
  pcma = None
  if encoder == 'ma':
    options = dict(config['pcma'])
    options['stages'] = tuple(options['stages'])
    pcma = PCMAOptions(**options)
    read = stages_read(head)
    if not pcma.feed_forward and not read & set(pcma.stages):
      logging.warning('model.head=%r reads only %s, and PCMA sits on %s without feed_forward: the memory '
                      'cannot change its logits. Put PCMA on a stage the head reads (e.g. stage4) or set '
                      'model.pcma.feed_forward=True.', head_name, sorted(read), pcma.stages)
  return Segmenter(backbone=backbone, head=head, num_classes=num_classes, pcma=pcma, aux_head=aux_head)
