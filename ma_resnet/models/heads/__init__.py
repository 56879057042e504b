"""Segmentation heads. Each takes the dict of named stage maps (N, h, w, C) and returns logits
(N, h', w', classes) at its own output resolution; the segmenter resizes logits to the input size.

| head | module | follows | reads |
| --- | --- | --- | --- |
| DeepLabV3+ | deeplabv3plus.py | PaddleSeg DeepLabV3PHead | stage1, stage4 |
| PSPNet | pspnet.py | mmseg PSPHead | stage4 |
| SFNet | sfnet.py | PaddleSeg SFNetHead (the MA-ResNet50 authors' file) | stage1..4 |
| DNLNet | dnlnet.py | mmseg DNLHead | stage4 |
| FCN | fcn.py | mmseg FCNHead (also the auxiliary head on stage3) | stage4 / stage3 |
| classifier | fcn.py | mmseg `cls_seg` alone (TMANet's head after its attention bottleneck) | stage4 |

Every head declares the maps it reads, `head.stages_read()` (the segmenter runs the backbone only as far as
they need; `build` checks that the temporal module's output is among them).

`head_factory` makes the `build.HEADS` factories: `factory(num_classes, dtype, precision=None, **options)`,
where options are the head's own fields and anything else is refused.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ma_resnet.errors import ConfigError
from ma_resnet.models.heads.deeplabv3plus import DeepLabV3PlusHead
from ma_resnet.models.heads.dnlnet import DisentangledNonLocal, DNLHead
from ma_resnet.models.heads.fcn import Classifier, ClassifierHead, FCNHead, auxiliary_fcn_head
from ma_resnet.models.heads.pspnet import PSPHead, PyramidPooling, adaptive_avg_pool, adaptive_pool_matrix
from ma_resnet.models.heads.sfnet import FlowAlignment, SFNetHead, flow_warp, grid_sample_bilinear

_NOT_OPTIONS = ('num_classes', 'dtype', 'precision', 'parent', 'name')


def head_options(head_class) -> tuple[str, ...]:
  """The options (configurable fields) of a head class: its fields but num_classes, dtype and precision."""
  return tuple(f.name for f in dataclasses.fields(head_class) if f.name not in _NOT_OPTIONS)


def head_factory(name: str, head_class, **fixed) -> Callable[..., Any]:
  """A `build.HEADS` factory `(num_classes, dtype, precision=None, **options) -> head_class(...)` for the head
  called `name`.

  `fixed` are preset fields (e.g. `in_stage` of an auxiliary head); options override them. Unknown options
  raise a ConfigError naming the head and its options; list values become tuples (configs from the command
  line or JSON carry lists).
  """
  allowed = head_options(head_class)

  def factory(num_classes: int, dtype, precision=None, **options):
    unknown = sorted(set(options) - set(allowed))
    if unknown:
      raise ConfigError(
          f'invalid config: model.head_options has option(s) {unknown} that the {name!r} head does not take; '
          f'its options are {list(allowed)}. head_options must hold the options of the chosen head only (the '
          f"default config holds 'aspp_rates', which is deeplabv3plus's): set model.head_options to {{}} or to "
          "this head's options.")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in {**fixed, **options}.items()}
    return head_class(num_classes, dtype=dtype, precision=precision, **options)

  factory.__name__ = f'{name}_head_factory'
  factory.__doc__ = (f'{head_class.__name__}(num_classes, dtype=dtype, precision=precision, **options); '
                     f'options: {list(allowed)}.')
  return factory


__all__ = ['DeepLabV3PlusHead', 'PSPHead', 'SFNetHead', 'DNLHead', 'FCNHead', 'ClassifierHead',
           'auxiliary_fcn_head',
           'Classifier', 'PyramidPooling', 'FlowAlignment', 'DisentangledNonLocal', 'adaptive_avg_pool',
           'adaptive_pool_matrix', 'grid_sample_bilinear', 'flow_warp', 'head_factory', 'head_options']
