"""Explicit key tables of the ResNet family, shared by the framework converters (torchvision, timm, mmcv, paddle).

The architecture is walked once (`units`): every conv + batch-norm pair of `ResNet(depth, variant)` is a `Unit`
with its Flax path (`stem/conv1`, `stage2/block0/conv3`, `stage2/block0/downsample`, ...) and shapes. A
framework's `Layout` says where each unit lives in that framework's state dict (conv weight key, batch-norm
prefix) and how its batch norm and classifier are named; `layout_table` turns (layout, depth) into a
`checkpoint_io.Table`, e.g. for timm's resnet50d:

    conv1.0.weight                -> params/stem/conv1/conv/kernel               (OIHW -> HWIO)
    conv1.1.{weight,bias}         -> params/stem/conv1/bn/{scale,bias}
    conv1.1.running_{mean,var}    -> batch_stats/stem/conv1/bn/{mean,var}
    bn1.*                         -> .../stem/conv3/bn/...
    layer2.0.downsample.1.weight  -> params/stage2/block0/downsample/conv/kernel  (after the 2x2 average pool)
    fc.weight                     -> params/fc/kernel                            (transposed)

`identify` decides which layout (hence which ma_resnet variant) a state dict is in, from its keys and shapes,
and `convert` applies it; a state dict that fits no layout, or fits one of another depth, is refused with one
`ConversionError` line saying what it looks like.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

from ma_resnet.convert.checkpoint_io import (ConversionError, Entry, Table, apply_table, check_output_dir,
                                             make_metadata, save_converted)
from ma_resnet.models.backbones.resnet import DEPTHS, STAGES, WIDTHS, expansion

LISTED = 3  # keys listed per category in a one-line refusal


class Unit(NamedTuple):
  """One conv + batch norm of the architecture.

  `stage` is -1 in the stem (then `index` is the stem conv, 0-based), else 0..3 with `block` its index in the
  stage and `flat_block` its index over all stages; `index` is the block's conv (0-based) or -1 for the
  projection shortcut (`downsample`); `stride` is the block's; `depth` the network's."""
  depth: int
  path: tuple[str, ...]
  stage: int
  block: int
  flat_block: int
  index: int
  stride: int
  out_ch: int
  in_ch: int
  kernel: int

  @property
  def is_projection(self) -> bool:
    return self.index < 0


def units(depth: int, variant: str, *, stage1_projection: bool = True) -> list[Unit]:
  """The conv + BN units of `ResNet(depth, variant)` (`models/backbones/resnet.py`), in order.

  `stage1_projection=False` describes a vd network without ma_resnet's (PaddleSeg's) projection shortcut on
  stage 1's first block of a basic-block ResNet (timm's resnet18d / 34d, mmcv's ResNetV1d-18 / 34): used only
  to recognise those files."""
  kind, blocks = DEPTHS[depth]
  exp = expansion(depth)
  out: list[Unit] = []
  if variant == 'torchvision':
    out.append(Unit(depth, ('stem', 'conv1'), -1, 0, 0, 0, 2, 64, 3, 7))
  else:
    for i, (o, c, s) in enumerate(((32, 3, 2), (32, 32, 1), (64, 32, 1))):
      out.append(Unit(depth, ('stem', f'conv{i + 1}'), -1, 0, 0, i, s, o, c, 3))
  in_ch, flat = 64, 0
  for s, (stage, width, n) in enumerate(zip(STAGES, WIDTHS, blocks)):
    out_ch = width * exp
    for b in range(n):
      stride = 2 if (s > 0 and b == 0) else 1
      path = (stage, f'block{b}')
      if kind == 'basic':
        convs = [(width, in_ch, 3), (width, width, 3)]
      else:
        convs = [(width, in_ch, 1), (width, width, 3), (out_ch, width, 1)]
      for i, (o, c, k) in enumerate(convs):
        out.append(Unit(depth, path + (f'conv{i + 1}',), s, b, flat, i, stride, o, c, k))
      vd_first = variant == 'vd' and b == 0 and (s > 0 or stage1_projection)
      if stride != 1 or in_ch != out_ch or vd_first:
        out.append(Unit(depth, path + ('downsample',), s, b, flat, -1, stride, out_ch, in_ch, 1))
      in_ch, flat = out_ch, flat + 1
  return out


class BatchNormNames(NamedTuple):
  """How a framework names a batch norm's tensors: Flax leaf -> format of the key ('{}' = the BN prefix), and
  formats of keys accepted and dropped (e.g. torch's num_batches_tracked)."""
  leaves: tuple[tuple[str, str], ...]
  ignored: tuple[str, ...] = ()


TORCH_BN = BatchNormNames((('scale', '{}.weight'), ('bias', '{}.bias'), ('mean', '{}.running_mean'),
                           ('var', '{}.running_var')), ('{}.num_batches_tracked',))

_COLLECTION = {'scale': 'params', 'bias': 'params', 'mean': 'batch_stats', 'var': 'batch_stats'}


class Layout(NamedTuple):
  """Where one framework keeps one variant's tensors.

  name: what the file is, with `{depth}` (e.g. 'timm resnet{depth}d'), in messages and metadata.
  variant: the ma_resnet variant it converts to.
  keys: Unit -> (conv weight key, batch-norm prefix).
  batch_norm: the batch norm's key names.
  classifiers: (weight key, bias key) of the classifier, alternatives in order of preference.
  classifier_transform: `checkpoint_io.TRANSFORMS` name of the classifier weight ('linear_oi_to_io' for torch's
    (out, in), 'identity' for paddle's (in, out)).
  stage1_projection: see `units`; False makes basic-block depths of a vd layout recognised but refused.
  """
  name: str
  variant: str
  keys: Callable[[Unit], tuple[str, str]]
  batch_norm: BatchNormNames
  classifiers: tuple[tuple[str, str], ...]
  classifier_transform: str = 'linear_oi_to_io'
  stage1_projection: bool = True

  def title(self, depth: int) -> str:
    return self.name.format(depth=depth)


def torch_block_keys(unit: Unit, projection_offset: Callable[[Unit], int] = lambda u: 0) -> tuple[str, str]:
  """torchvision's block names, shared by timm and mmcv: `layer{s}.{b}.conv{i}` / `bn{i}`, and the projection
  `layer{s}.{b}.downsample.{j}` (conv) / `.{j + 1}` (BN), where j = projection_offset(unit) is 1 when an
  average pool sits at index 0 of the downsample Sequential."""
  prefix = f'layer{unit.stage + 1}.{unit.block}'
  if unit.is_projection:
    j = projection_offset(unit)
    return f'{prefix}.downsample.{j}.weight', f'{prefix}.downsample.{j + 1}'
  return f'{prefix}.conv{unit.index + 1}.weight', f'{prefix}.bn{unit.index + 1}'


def torch_layout(name: str, variant: str, stem: Callable[[int], tuple[str, str]],
                 projection_offset: Callable[[Unit], int] = lambda u: 0, *,
                 classifiers: tuple[tuple[str, str], ...] = (('fc.weight', 'fc.bias'),),
                 stage1_projection: bool = True) -> Layout:
  """A Layout with torchvision's block names and batch norm; `stem(i)` names stem conv i."""
  def keys(unit: Unit) -> tuple[str, str]:
    return stem(unit.index) if unit.stage < 0 else torch_block_keys(unit, projection_offset)
  return Layout(name, variant, keys, TORCH_BN, classifiers, stage1_projection=stage1_projection)


def torchvision_stem(i: int) -> tuple[str, str]:
  return 'conv1.weight', 'bn1'


@functools.cache
def layout_table(layout: Layout, depth: int, *, num_classes: int | None = None,
                 classifier: tuple[str, str] | None = None) -> Table:
  """The Table of `layout` at `depth`. With `classifier` (one of `layout.classifiers`) it maps the classifier
  with `num_classes` outputs; otherwise every classifier alternative is accepted and dropped."""
  if depth not in DEPTHS:
    raise ConversionError(f'ResNet depth must be one of {sorted(DEPTHS)}, got {depth!r}')
  entries: dict[str, Entry] = {}
  ignored: set[str] = set()
  for unit in units(depth, layout.variant, stage1_projection=layout.stage1_projection):
    conv_key, bn_prefix = layout.keys(unit)
    entries[conv_key] = Entry('params', unit.path + ('conv', 'kernel'), 'conv_oihw_to_hwio',
                              (unit.out_ch, unit.in_ch, unit.kernel, unit.kernel))
    for leaf, fmt in layout.batch_norm.leaves:
      entries[fmt.format(bn_prefix)] = Entry(_COLLECTION[leaf], unit.path + ('bn', leaf), 'identity',
                                             (unit.out_ch,))
    ignored.update(fmt.format(bn_prefix) for fmt in layout.batch_norm.ignored)
  features = WIDTHS[-1] * expansion(depth)
  if classifier is None:
    ignored.update(k for pair in layout.classifiers for k in pair)
  else:
    if not num_classes or num_classes < 1:
      raise ConversionError(f'num_classes must be a positive int with the classifier, got {num_classes!r}')
    weight, bias = classifier
    shape = ((num_classes, features) if layout.classifier_transform == 'linear_oi_to_io'
             else (features, num_classes))
    entries[weight] = Entry('params', ('fc', 'kernel'), layout.classifier_transform, shape)
    entries[bias] = Entry('params', ('fc', 'bias'), 'identity', (num_classes,))
  return Table(entries, frozenset(ignored - set(entries)))


def backbone_rows(layout: Layout, depth: int, key_prefix: str = 'backbone.', path_prefix: tuple[str, ...] = (
    'backbone',)) -> tuple[dict[str, tuple[str, tuple[str, ...], str]], set[str]]:
  """The ResNet body of `layout` (no classifier) as rows `key -> (collection, Flax path, transform)` under a
  key and path prefix, for the table of a larger model (`checkpoint_io.shaped_table`), and the keys accepted
  and dropped (batch-norm counters)."""
  table = layout_table(layout, depth)
  classifier = {key for pair in layout.classifiers for key in pair}
  rows = {key_prefix + k: (e.collection, path_prefix + e.path, e.transform) for k, e in table.entries.items()}
  return rows, {key_prefix + k for k in table.ignored - classifier}


# ---------------------------------------------------------------------------------------------------------
# Recognising a state dict.

class Fit(NamedTuple):
  """How a state dict differs from a layout's table (classifier optional)."""
  layout: Layout
  depth: int
  missing: list[str]
  unexpected: list[str]
  mismatched: list[tuple[str, str]]

  @property
  def errors(self) -> int:
    return len(self.missing) + len(self.unexpected) + len(self.mismatched)

  def summary(self) -> str:
    parts = []
    for label, items in (('missing', self.missing), ('unexpected', self.unexpected),
                         ('mis-shaped', [f'{k} {d}' for k, d in self.mismatched])):
      if items:
        more = ', ...' if len(items) > LISTED else ''
        parts.append(f'{len(items)} {label} ({", ".join(items[:LISTED])}{more})')
    return ', '.join(parts)


def _shape(value) -> tuple[int, ...] | None:
  shape = getattr(value, 'shape', None)
  return None if shape is None else tuple(int(n) for n in shape)


def fit(state: Mapping[str, Any], layout: Layout, depth: int) -> Fit:
  table = layout_table(layout, depth)
  missing = sorted(k for k in table.entries if k not in state)
  unexpected = sorted(str(k) for k in state if k not in table.entries and k not in table.ignored)
  mismatched = []
  for key, entry in table.entries.items():
    if key in state and _shape(state[key]) != entry.shape:
      mismatched.append((key, f'{_shape(state[key])}, expected {entry.shape}'))
  return Fit(layout, depth, missing, unexpected, mismatched)


def identify(state: Mapping[str, Any], layouts: tuple[Layout, ...], depth: int, framework: str,
             source: str = '') -> Layout:
  """The layout whose ResNet`depth` table `state` fits exactly (keys and shapes; classifier optional), or one
  ConversionError line: the keys are those of another depth (which), a recognised but unsupported file
  (why), or fit nothing (the closest layout and how it differs)."""
  fits = [fit(state, layout, d) for d in sorted(DEPTHS) for layout in layouts]
  exact = [f for f in fits if f.errors == 0]
  here = [f for f in exact if f.depth == depth]
  if here:
    layout = here[0].layout
    if layout.variant == 'vd' and not layout.stage1_projection and DEPTHS[depth][0] == 'basic':
      raise ConversionError(
          f'{source}this is {layout.title(depth)}, a ResNet-vd without a projection shortcut on the first '
          f"block of stage 1, which ma_resnet's vd (PaddleSeg / PaddleClas ResNet_vd) has: not supported; "
          f'use PaddleClas ResNet{depth}_vd weights (framework paddle), or a v1c / torchvision ResNet{depth}')
    return layout
  if exact:
    other = exact[0]
    raise ConversionError(
        f'{source}the keys are those of {other.layout.title(other.depth)} (ResNet{other.depth}, variant '
        f'{other.layout.variant}), not of a {framework} ResNet{depth}: convert with depth={other.depth} '
        f'(--depth {other.depth})')
  closest = min((f for f in fits if f.depth == depth), key=lambda f: f.errors)
  names = ', '.join(layout.title(depth) for layout in layouts)
  raise ConversionError(
      f'{source}the state dict fits no {framework} ResNet{depth} layout ({names}); closest: '
      f'{closest.layout.title(depth)}, with {closest.summary()}',
      missing=closest.missing, unexpected=closest.unexpected, mismatched=closest.mismatched)


def strip_prefix(state: Mapping[str, Any], prefix: str = 'backbone.') -> dict[str, Any]:
  """`state` with `prefix` removed from the keys that have it (mm* and PaddleSeg model files prefix the
  backbone; a classifier `head.fc.*` stays as it is)."""
  if not any(isinstance(k, str) and k.startswith(prefix) for k in state):
    return dict(state)
  return {(k[len(prefix):] if isinstance(k, str) and k.startswith(prefix) else k): v for k, v in state.items()}


def convert(state: Mapping[str, Any], layouts: tuple[Layout, ...], depth: int, framework: str, *,
            include_classifier: bool = True, source: str = '') -> tuple[dict[str, dict], Layout]:
  """(Flax variables, the layout recognised) of a ResNet`depth` state dict in one of `layouts`.

  include_classifier: keep the classifier (required then; its size is read off its weight); False drops it
  (and accepts a state dict without it). Raises ConversionError (`identify`, `checkpoint_io.apply_table`)."""
  state = strip_prefix(state)
  layout = identify(state, layouts, depth, framework, source)
  title = layout.title(depth)
  table = layout_table(layout, depth)
  if include_classifier:
    present = [pair for pair in layout.classifiers if pair[0] in state and pair[1] in state]
    if not present:
      names = ' / '.join(f'{w}, {b}' for w, b in layout.classifiers)
      raise ConversionError(f'{source}the {title} state dict has no classifier ({names}); convert without it: '
                            'include_classifier=False (--no-classifier)')
    shape = _shape(state[present[0][0]]) or (0,)
    num_classes = shape[0] if layout.classifier_transform == 'linear_oi_to_io' else shape[-1]
    table = layout_table(layout, depth, num_classes=max(num_classes, 1), classifier=present[0])
  try:
    return apply_table(state, table, title), layout
  except ConversionError as e:
    raise ConversionError(source + str(e), missing=e.missing, unexpected=e.unexpected,
                          mismatched=e.mismatched) from None


def write_converted(variables: dict[str, dict], out_dir: str | os.PathLike, *, depth: int, variant: str,
                    framework: str, converter: str, source_file: str | os.PathLike | None,
                    **extra) -> tuple[str, dict[str, Any]]:
  """Saves converted variables with their metadata (`checkpoint_io.save_converted`, all or nothing).
  Returns (absolute out_dir, metadata)."""
  fc = variables['params'].get('fc')
  metadata = make_metadata(depth=depth, variant=variant, framework=framework, converter=converter,
                           source_file=None if source_file is None else os.fspath(source_file),
                           num_classes=int(fc['bias'].shape[0]) if fc is not None else None, **extra)
  return save_converted(variables, metadata, out_dir), metadata


class Framework(NamedTuple):
  """A framework's converter: its `name` (in messages and metadata), the `layouts` its ResNet files come in,
  and the `converter` module recorded in metadata."""
  name: str
  layouts: tuple[Layout, ...]
  converter: str

  def convert_state_dict(self, state_dict_or_path: Mapping[str, Any] | str | os.PathLike, depth: int, *,
                         include_classifier: bool = True) -> tuple[dict[str, dict], Layout]:
    """(variables, recognised layout) of a weight file (`weight_files.read_state_dict`) or a loaded mapping of
    key -> array (numpy / torch / jax); see `convert`."""
    from ma_resnet.convert.weight_files import state_dict_of
    if depth not in DEPTHS:  # before reading a possibly large file
      raise ConversionError(f'ResNet depth must be one of {sorted(DEPTHS)}, got {depth!r}')
    state, source = state_dict_of(state_dict_or_path)
    return convert(state, self.layouts, depth, self.name, include_classifier=include_classifier, source=source)

  def convert_file(self, in_path: str | os.PathLike, out_dir: str | os.PathLike, depth: int, *,
                   include_classifier: bool = True) -> tuple[str, dict[str, Any]]:
    """Converts the weight file `in_path` and writes the converted checkpoint to `out_dir` (all or nothing).
    Returns (absolute out_dir, metadata); metadata['architecture']['variant'] is the recognised layout's
    variant and metadata['layout'] its name."""
    check_output_dir(out_dir)  # refuse early, before reading a large file
    variables, layout = self.convert_state_dict(in_path, depth, include_classifier=include_classifier)
    return write_converted(variables, out_dir, depth=depth, variant=layout.variant, framework=self.name,
                           converter=self.converter, source_file=in_path, layout=layout.title(depth))
