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

torch is imported only to read `.pth` files, inside `load_state_dict`; the rest works on any mapping of
numpy / torch / jax arrays.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ma_resnet.convert.checkpoint_io import (ConversionError, Entry, Table, apply_table, make_metadata,
                                             save_converted, unwrap_state_dict)
from ma_resnet.models.backbones.resnet import DEPTHS, STAGES, WIDTHS, expansion

VARIANT = 'torchvision'
FRAMEWORK = 'torchvision'
DEFAULT_NUM_CLASSES = 1000


def _conv(table: dict, key: str, path: tuple[str, ...], out_ch: int, in_ch: int, k: int) -> None:
  table[key] = Entry('params', path + ('kernel',), 'conv_oihw_to_hwio', (out_ch, in_ch, k, k))


def _bn(table: dict, ignored: set, prefix: str, path: tuple[str, ...], ch: int) -> None:
  table[f'{prefix}.weight'] = Entry('params', path + ('scale',), 'identity', (ch,))
  table[f'{prefix}.bias'] = Entry('params', path + ('bias',), 'identity', (ch,))
  table[f'{prefix}.running_mean'] = Entry('batch_stats', path + ('mean',), 'identity', (ch,))
  table[f'{prefix}.running_var'] = Entry('batch_stats', path + ('var',), 'identity', (ch,))
  ignored.add(f'{prefix}.num_batches_tracked')


def key_table(depth: int, *, num_classes: int | None = DEFAULT_NUM_CLASSES,
              include_classifier: bool = True) -> Table:
  """The torchvision -> Flax mapping of ResNet`depth` (18, 34, 50, 101, 152).

  With `include_classifier=False` the `fc.*` keys are accepted when present but dropped (so a backbone-only
  state dict converts too); otherwise they are required, with `num_classes` outputs.
  """
  if depth not in DEPTHS:
    raise ConversionError(f'torchvision ResNet depth must be one of {sorted(DEPTHS)}, got {depth!r}')
  kind, blocks = DEPTHS[depth]
  exp = expansion(depth)
  entries: dict[str, Entry] = {}
  ignored: set[str] = set()

  _conv(entries, 'conv1.weight', ('stem', 'conv1', 'conv'), 64, 3, 7)
  _bn(entries, ignored, 'bn1', ('stem', 'conv1', 'bn'), 64)

  in_ch = 64
  for s, (stage, width, n) in enumerate(zip(STAGES, WIDTHS, blocks)):
    out_ch = width * exp
    for b in range(n):
      tp, fp = f'layer{s + 1}.{b}', (stage, f'block{b}')
      if kind == 'basic':
        convs = [(width, in_ch, 3), (width, width, 3)]
      else:
        convs = [(width, in_ch, 1), (width, width, 3), (out_ch, width, 1)]
      for i, (o, c, k) in enumerate(convs, start=1):
        _conv(entries, f'{tp}.conv{i}.weight', fp + (f'conv{i}', 'conv'), o, c, k)
        _bn(entries, ignored, f'{tp}.bn{i}', fp + (f'conv{i}', 'bn'), o)
      stride = 2 if (s > 0 and b == 0) else 1
      if stride != 1 or in_ch != out_ch:
        _conv(entries, f'{tp}.downsample.0.weight', fp + ('downsample', 'conv'), out_ch, in_ch, 1)
        _bn(entries, ignored, f'{tp}.downsample.1', fp + ('downsample', 'bn'), out_ch)
      in_ch = out_ch

  fc = {'fc.weight': Entry('params', ('fc', 'kernel'), 'linear_oi_to_io', (num_classes or 0, in_ch)),
        'fc.bias': Entry('params', ('fc', 'bias'), 'identity', (num_classes or 0,))}
  if include_classifier:
    if not num_classes or num_classes < 1:
      raise ConversionError(f'num_classes must be a positive int with the classifier, got {num_classes!r}')
    entries.update(fc)
  else:
    ignored.update(fc)
  return Table(entries, frozenset(ignored))


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


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a `.pth` file (a state dict, or a checkpoint dict wrapping one under 'state_dict' / 'model') with
  `torch.load(..., map_location='cpu', weights_only=True)`. Raises ConversionError when it cannot."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConversionError(f'input file {path} does not exist' if not os.path.exists(path)
                          else f'input {path} is not a file')
  try:
    import torch
  except ImportError:
    raise ConversionError('reading .pth files needs PyTorch, which is not installed '
                          '(pip install torch==2.13.0: the CPU wheel is enough)') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # corrupt / truncated / not a weights-only pickle: all mean "cannot read it"
    raise ConversionError(f'cannot read {path} as a PyTorch checkpoint: {_describe_load_error(e)}') from None
  return unwrap_state_dict(obj, path)


def state_dict_of(state_dict_or_path: Mapping[str, Any] | str | os.PathLike) -> tuple[dict[str, Any], str]:
  """(the state dict, 'path: ' or '') of a `.pth` path (`load_state_dict`) or of a loaded dict (wrappers and
  a DataParallel prefix removed): the second item prefixes the loaders' errors."""
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    return load_state_dict(state_dict_or_path), f'{os.fspath(state_dict_or_path)}: '
  return unwrap_state_dict(state_dict_or_path, 'the state dict'), ''


def _describe_load_error(e: Exception) -> str:
  """One line saying why torch.load failed (its messages are long, multi-line, and advise weights_only=False)."""
  text = re.sub(r'\x1b\[[0-9;]*m', '', str(e)).strip()
  m = re.search(r'WeightsUnpickler error:\s*(.+)', text)
  if m:
    detail = m.group(1).strip().split('. ')[0].rstrip('.')
    if 'Unsupported global' in detail:
      return (f'it pickles objects other than tensors ({detail}); save and convert model.state_dict() '
              'instead')
    return f'corrupt file, or not a PyTorch checkpoint ({type(e).__name__}: {detail})'
  if isinstance(e, EOFError):
    return 'empty or truncated file'
  first = text.splitlines()[0].split('. ')[0].rstrip('.') if text else ''
  return f'corrupt or truncated file, or not a PyTorch checkpoint ({type(e).__name__}: {first})'


def convert_state_dict(state_dict_or_path: Mapping[str, Any] | str | os.PathLike, depth: int, *,
                       include_classifier: bool = True, num_classes: int | None = None) -> dict[str, dict]:
  """torchvision ResNet`depth` weights -> `{'params': ..., 'batch_stats': ...}` (nested dicts of float32 numpy).

  Args:
    state_dict_or_path: a `.pth` path, or a mapping of key -> array (numpy / torch / jax), possibly wrapped
      under 'state_dict' or 'model'.
    depth: 18, 34, 50, 101 or 152.
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
  return apply_table(state_dict, table, f'torchvision ResNet{depth}', hint=hint)


def convert_file(in_path: str | os.PathLike, out_dir: str | os.PathLike, depth: int, *,
                 include_classifier: bool = True) -> tuple[str, dict[str, Any]]:
  """Converts the `.pth` file `in_path` and writes the converted checkpoint to `out_dir` (all or nothing).

  Returns (absolute out_dir, metadata). Read it back with `ma_resnet.convert.load_converted`.
  """
  from ma_resnet.convert.checkpoint_io import check_output_dir
  check_output_dir(out_dir)  # refuse early, before reading a large file
  variables = convert_state_dict(in_path, depth, include_classifier=include_classifier)
  fc = variables['params'].get('fc')
  metadata = make_metadata(depth=depth, variant=VARIANT, framework=FRAMEWORK, converter=__name__,
                           source_file=os.fspath(in_path),
                           num_classes=int(fc['bias'].shape[0]) if fc is not None else None)
  return save_converted(variables, metadata, out_dir), metadata
