"""torchvision ResNet state dicts -> `ma_resnet.models.backbones.resnet.ResNet(depth, variant='torchvision')` variables.

The mapping is an explicit table built from the depth (`key_table(depth)`), e.g. for ResNet50:

    conv1.weight                 -> params/stem/conv1/conv/kernel                 (OIHW -> HWIO)
    bn1.weight / bn1.bias        -> params/stem/conv1/bn/scale / bias
    bn1.running_mean / _var      -> batch_stats/stem/conv1/bn/mean / var
    layer1.0.conv1.weight        -> params/stage1/block0/conv1/conv/kernel        (OIHW -> HWIO)
    layer1.0.bn1.*               -> {params,batch_stats}/stage1/block0/conv1/bn/...
    layer1.0.downsample.0.weight -> params/stage1/block0/downsample/conv/kernel   (OIHW -> HWIO)
    layer1.0.downsample.1.*      -> {params,batch_stats}/stage1/block0/downsample/bn/...
    fc.weight                    -> params/fc/kernel                              (transposed)
    fc.bias                      -> params/fc/bias
    *.num_batches_tracked        -> (ignored)

Every key of the table must be present with exactly the table's shape, and no other key may be present;
otherwise one `ConversionError` names the missing / unexpected / mis-shaped keys (and, when the keys are
those of another depth, says which).

The table is `resnet_keys.layout_table` of the torchvision layout. torch is imported only to read `.pth` files
(`weight_files.read_torch`, weights-only); the rest works on any mapping of numpy / torch / jax arrays.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ma_resnet.convert.checkpoint_io import ConversionError, Table, apply_table, check_output_dir
from ma_resnet.convert.resnet_keys import (fit, layout_table, strip_prefix, torch_layout, torchvision_stem,
                                            write_converted)
from ma_resnet.convert.weight_files import state_dict_of
from ma_resnet.models.backbones.resnet import DEPTHS

VARIANT = 'torchvision'
FRAMEWORK = 'torchvision'
DEFAULT_NUM_CLASSES = 1000
# torchvision's names (`torchvision/models/resnet.py`): also timm's plain resnet{depth} and mmcv's ResNet (V1b).
LAYOUT = torch_layout('torchvision resnet{depth}', VARIANT, torchvision_stem)


def key_table(depth: int, *, num_classes: int | None = DEFAULT_NUM_CLASSES,
              include_classifier: bool = True) -> Table:
  """The torchvision -> Flax mapping of ResNet`depth` (18, 26, 34, 50, 101, 152; 26 is timm's).

  With `include_classifier=False` the `fc.*` keys are accepted when present but dropped (so a backbone-only
  state dict converts too); otherwise they are required, with `num_classes` outputs.
  """
  if depth not in DEPTHS:
    raise ConversionError(f'torchvision ResNet depth must be one of {sorted(DEPTHS)}, got {depth!r}')
  if not include_classifier:
    return layout_table(LAYOUT, depth)
  return layout_table(LAYOUT, depth, num_classes=num_classes, classifier=('fc.weight', 'fc.bias'))


def _infer_num_classes(state_dict: Mapping[str, Any]) -> int:
  shape = getattr(state_dict.get('fc.weight'), 'shape', None)
  if shape is not None and len(shape) == 2 and int(shape[0]) > 0:
    return int(shape[0])
  return DEFAULT_NUM_CLASSES  # fc.weight absent or odd: the table reports it


def _matching_depths(keys: set[str]) -> list[int]:
  """Depths whose table (classifier optional) accepts exactly these keys."""
  found = []
  for d in DEPTHS:
    t = key_table(d, include_classifier=False)
    body = keys - t.ignored
    if body == set(t.entries):
      found.append(d)
  return found


def _other_framework_hint(state_dict: Mapping[str, Any]) -> str | None:
  """Which timm / mmcv ResNet the keys are exactly, if any (deep stems: not a torchvision file)."""
  from ma_resnet.convert import mmcv, timm
  for framework in (timm.FRAMEWORK, mmcv.FRAMEWORK):
    for depth in sorted(DEPTHS):
      for layout in framework.layouts:
        if layout.variant != VARIANT and fit(strip_prefix(state_dict), layout, depth).errors == 0:
          return (f'the keys are those of {layout.title(depth)} (variant {layout.variant}): convert with the '
                  f'{framework.name} converter (python -m ma_resnet.convert {framework.name} ...)')
  return None


def convert_state_dict(state_dict_or_path: Mapping[str, Any] | str | os.PathLike, depth: int, *,
                       include_classifier: bool = True, num_classes: int | None = None) -> dict[str, dict]:
  """torchvision ResNet`depth` weights -> `{'params': ..., 'batch_stats': ...}` (nested dicts of float32 numpy).

  Args:
    state_dict_or_path: a `.pth` / `.safetensors` path, or a mapping of key -> array (numpy / torch / jax),
      possibly wrapped under 'state_dict' or 'model'.
    depth: 18, 26, 34, 50, 101 or 152.
    include_classifier: keep `fc` (required then); False drops it (and accepts a state dict without it).
    num_classes: expected classifier size; by default, that of `fc.weight`.

  The result fits `ResNet(depth=depth, variant='torchvision', num_classes=num_classes or None)`.
  Raises ConversionError (a ValueError) naming every missing / unexpected / mis-shaped key.
  """
  if depth not in DEPTHS:  # before reading a possibly large file
    raise ConversionError(f'torchvision ResNet depth must be one of {sorted(DEPTHS)}, got {depth!r}')
  state_dict, _ = state_dict_of(state_dict_or_path)
  if include_classifier and num_classes is None:
    num_classes = _infer_num_classes(state_dict)
  table = key_table(depth, num_classes=num_classes, include_classifier=include_classifier)
  hint = None
  keys = {k for k in state_dict if isinstance(k, str)}
  missing = set(table.entries) - keys
  if missing or keys - set(table.entries) - table.ignored:
    others = [d for d in _matching_depths(keys) if d != depth]
    if others:
      hint = (f'the keys are those of torchvision ResNet{others[0]}; convert with depth={others[0]} '
              f'(--depth {others[0]})')
    elif include_classifier and missing == {'fc.weight', 'fc.bias'}:
      hint = 'only the classifier (fc) is missing; use include_classifier=False (--no-classifier)'
    else:
      hint = _other_framework_hint(state_dict)
  return apply_table(state_dict, table, f'torchvision ResNet{depth}', hint=hint)


def convert_file(in_path: str | os.PathLike, out_dir: str | os.PathLike, depth: int, *,
                 include_classifier: bool = True) -> tuple[str, dict[str, Any]]:
  """Converts the weight file `in_path` (`.pth`, or `.safetensors`) and writes the converted checkpoint to
  `out_dir` (all or nothing).

  Returns (absolute out_dir, metadata). Read it back with `ma_resnet.convert.load_converted`.
  """
  check_output_dir(out_dir)  # refuse early, before reading a large file
  variables = convert_state_dict(in_path, depth, include_classifier=include_classifier)
  return write_converted(variables, out_dir, depth=depth, variant=VARIANT, framework=FRAMEWORK,
                         converter=__name__, source_file=in_path)
