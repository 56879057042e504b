"""Shared machinery of the converters: mapping tables, strict state-dict conversion, converted checkpoints.

A converter (e.g. `ma_resnet.convert.torchvision`) builds an explicit table `source key -> Entry` from the
architecture and calls `apply_table`, which refuses any state dict whose keys or shapes do not match the table
exactly (one `ConversionError` naming the offending keys) and returns Flax variables as nested dicts of
float32 numpy arrays: `{'params': {...}, 'batch_stats': {...}}`.

A converted checkpoint is a directory:

    OUT_DIR/
      variables/      Orbax (StandardCheckpointer) checkpoint of {'params', 'batch_stats'}
      metadata.json   architecture (family, depth, variant), source file, converter, ...

written atomically by `save_converted` (into a temporary sibling directory renamed at the end) and read back
by `load_converted(path) -> (variables, metadata)`.

Nothing here imports torch, paddle or orbax at module import time.
"""
from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ma_resnet import trees
from ma_resnet.files import atomic_path

FORMAT = 'ma_resnet.converted/v1'
VARIABLES_DIR = 'variables'
METADATA_FILE = 'metadata.json'
COLLECTIONS = ('params', 'batch_stats')
MAX_LISTED_KEYS = 12  # keys listed per category in an error message


class ConversionError(ValueError):
  """A state dict or checkpoint that cannot be converted / loaded. The message names the offending keys.

  Attributes (possibly empty): `missing`, `unexpected`, `mismatched` (list of (key, detail)).
  """

  def __init__(self, message: str, *, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
               mismatched: Iterable[tuple[str, str]] = ()):
    super().__init__(message)
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mismatched = list(mismatched)


# ---------------------------------------------------------------------------------------------------------
# Mapping tables.

def _conv_oihw_to_hwio(a):
  return np.transpose(a, (2, 3, 1, 0))


def _linear_oi_to_io(a):
  return np.transpose(a, (1, 0))


def _identity(a):
  return a


# name -> (array transform, source shape -> target shape)
TRANSFORMS = {
    'identity': (_identity, lambda s: tuple(s)),
    'conv_oihw_to_hwio': (_conv_oihw_to_hwio, lambda s: (s[2], s[3], s[1], s[0])),
    'linear_oi_to_io': (_linear_oi_to_io, lambda s: (s[1], s[0])),
}


class Entry(NamedTuple):
  """Where one source tensor goes: `collection`/`path` (a tuple of names), via `transform` (a TRANSFORMS
  name); `shape` is the shape the source tensor must have."""
  collection: str
  path: tuple[str, ...]
  transform: str
  shape: tuple[int, ...]

  @property
  def target(self) -> str:
    return '/'.join((self.collection,) + self.path)

  @property
  def target_shape(self) -> tuple[int, ...]:
    return TRANSFORMS[self.transform][1](self.shape)


class Table(NamedTuple):
  """A complete mapping: `entries` (source key -> Entry) and `ignored` (source keys accepted and dropped,
  e.g. BN `num_batches_tracked` or a classifier that is not kept)."""
  entries: dict[str, Entry]
  ignored: frozenset[str] = frozenset()


def _list_keys(keys: list[str]) -> str:
  shown = ', '.join(keys[:MAX_LISTED_KEYS])
  more = len(keys) - MAX_LISTED_KEYS
  return shown + (f', ... and {more} more' if more > 0 else '')


def _as_numpy(value) -> np.ndarray | None:
  """A numpy view of a numpy / torch / jax / paddle array; None if `value` is not an array."""
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, 'detach') and hasattr(value, 'cpu'):  # torch.Tensor, without importing torch
    t = value.detach().cpu()
    if str(t.dtype) in ('torch.bfloat16', 'torch.float16'):
      t = t.float()
    return t.numpy()
  if hasattr(value, '__array__') and hasattr(value, 'shape') and hasattr(value, 'dtype'):
    return np.asarray(value)
  return None


def _is_float(a: np.ndarray) -> bool:
  return a.dtype.kind == 'f' or a.dtype.name == 'bfloat16'


def checked_arrays(state_dict: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], ignored: Iterable[str],
                   what: str, hint: str | None = None) -> dict[str, np.ndarray]:
  """The arrays of `state_dict` named in `shapes` (source name -> expected shape) as float32 numpy, or one
  ConversionError naming every missing, unexpected (neither in `shapes` nor `ignored`) and mis-shaped key.

  `what` names the expected architecture in the message (e.g. 'torchvision ResNet50'); `hint` is appended to
  the message when the keys do not match (e.g. which depth they do match).
  """
  ignored = set(ignored)
  keys = set(state_dict)
  missing = sorted(k for k in shapes if k not in keys)
  unexpected = sorted((k for k in keys if k not in shapes and k not in ignored), key=str)
  mismatched = []
  arrays = {}
  for key, shape in shapes.items():
    if key not in keys:
      continue
    a = _as_numpy(state_dict[key])
    if a is None:
      mismatched.append((key, f'not an array ({type(state_dict[key]).__name__})'))
    elif not _is_float(a):
      mismatched.append((key, f'dtype {a.dtype} is not floating point'))
    elif tuple(a.shape) != tuple(shape):
      mismatched.append((key, f'shape {tuple(a.shape)}, expected {tuple(shape)}'))
    else:
      arrays[key] = np.asarray(a, np.float32)
  if missing or unexpected or mismatched:
    lines = [f'state dict does not match {what}:']
    if missing:
      lines.append(f'  missing keys ({len(missing)}): {_list_keys(missing)}')
    if unexpected:
      lines.append(f'  unexpected keys ({len(unexpected)}): {_list_keys([str(k) for k in unexpected])}')
    if mismatched:
      shown = [f'{k}: {d}' for k, d in mismatched[:MAX_LISTED_KEYS]]
      more = len(mismatched) - MAX_LISTED_KEYS
      lines.append(f'  mis-shaped keys ({len(mismatched)}): ' + '; '.join(shown)
                   + (f'; ... and {more} more' if more > 0 else ''))
    if hint and (missing or unexpected):
      lines.append(f'  hint: {hint}')
    raise ConversionError('\n'.join(lines), missing=missing, unexpected=unexpected, mismatched=mismatched)
  return arrays


def nested_variables(values: Iterable[tuple[str, np.ndarray]]) -> dict[str, dict]:
  """('params/a/b', array) pairs -> {'params': {'a': {'b': ...}}} of contiguous float32 arrays (`trees.unflatten`);
  a path given twice is a bug in a table."""
  flat: dict[str, np.ndarray] = {}
  for path, value in values:
    if path in flat:
      raise AssertionError(f'two source keys map to {path}')
    flat[path] = np.ascontiguousarray(value, dtype=np.float32)
  return trees.unflatten(flat)


def apply_table(state_dict: Mapping[str, Any], table: Table, what: str, hint: str | None = None
                ) -> dict[str, dict]:
  """Converts `state_dict` with `table`, or raises one ConversionError naming every offending key
  (`checked_arrays`)."""
  arrays = checked_arrays(state_dict, {k: e.shape for k, e in table.entries.items()}, table.ignored, what, hint)
  return nested_variables((entry.target, TRANSFORMS[entry.transform][0](arrays[key]))
                          for key, entry in table.entries.items())


def shaped_table(rows: Mapping[str, tuple[str, tuple[str, ...], str]], model_shapes: Mapping[str, Any],
                 ignored: Iterable[str] = ()) -> Table:
  """A `Table` from rows `source name -> (collection, Flax path, transform)`, each row's expected source shape
  read off `model_shapes` (e.g. `jax.eval_shape(model.init, ...)`): the model defines the shapes."""
  entries = {}
  flat = trees.flatten(model_shapes)
  for name, (collection, path, transform) in rows.items():
    shape = tuple(flat['/'.join((collection,) + tuple(path))].shape)
    if transform == 'conv_oihw_to_hwio':
      shape = (shape[3], shape[2], shape[0], shape[1])
    elif transform == 'linear_oi_to_io':
      shape = (shape[1], shape[0])
    entries[name] = Entry(collection, tuple(path), transform, shape)
  return Table(entries, frozenset(ignored) - frozenset(entries))


def table_target_shapes(table: Table) -> dict[str, dict]:
  """The variables tree a table produces, with shape tuples as leaves (to compare with a Flax model)."""
  return trees.unflatten({entry.target: entry.target_shape for entry in table.entries.values()})


def unwrap_state_dict(obj: Any, source: str) -> dict[str, Any]:
  """The state dict in a loaded checkpoint: `obj` itself, or `obj['state_dict']` / `obj['model']` when those
  wrap it. A uniform `module.` prefix (DataParallel) is removed."""
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{source} does not contain a state dict (it holds a {type(obj).__name__})')
  if not any(_as_numpy(v) is not None for v in obj.values()):
    for wrapper in ('state_dict', 'model'):
      if isinstance(obj.get(wrapper), Mapping):
        obj = obj[wrapper]
        break
    else:
      raise ConversionError(f'{source} does not contain a state dict of arrays (top-level keys: '
                            f'{_list_keys(sorted(map(str, obj)))})')
  keys = list(obj)
  if keys and all(isinstance(k, str) and k.startswith('module.') for k in keys):
    obj = {k[len('module.'):]: v for k, v in obj.items()}
  return dict(obj)


# ---------------------------------------------------------------------------------------------------------
# Converted checkpoints.

def _sha256(path: str) -> str:
  import pooch
  return pooch.file_hash(path, alg='sha256')


def make_metadata(*, depth: int, variant: str, framework: str, converter: str, source_file: str | None,
                  num_classes: int | None, **extra) -> dict[str, Any]:
  """The metadata.json content of a converted ResNet."""
  from ma_resnet import __version__
  source: dict[str, Any] = {'framework': framework, 'file': None}
  if source_file is not None:
    source.update(file=os.path.abspath(source_file), size_bytes=os.path.getsize(source_file),
                  sha256=_sha256(source_file))
  return {
      'format': FORMAT,
      'architecture': {'family': 'resnet', 'depth': depth, 'variant': variant},
      'num_classes': num_classes,  # None: no classifier (`fc`) in the variables
      'source': source,
      'converter': converter,
      'ma_resnet_version': __version__,
      'created_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      **extra,
  }


def check_output_dir(out_dir: str | os.PathLike) -> None:
  """Refuses an `out_dir` that exists and is not an empty directory."""
  out_dir = os.fspath(out_dir)
  if os.path.lexists(out_dir):
    if not os.path.isdir(out_dir) or os.path.islink(out_dir):
      raise ConversionError(f'output path {out_dir} already exists and is not a directory')
    if os.listdir(out_dir):
      raise ConversionError(f'output directory {out_dir} already exists and is not empty')


def save_converted(variables: Mapping[str, Any], metadata: Mapping[str, Any], out_dir: str | os.PathLike
                   ) -> str:
  """Writes `variables` (Orbax) and `metadata` (JSON) to `out_dir`, all or nothing.

  Everything is written into a temporary sibling directory that is renamed to `out_dir` at the end
  (`files.atomic_path`); on any error it is removed (as are parent directories created here). `out_dir` must not exist or be an empty
  directory. Returns the absolute path of `out_dir`.
  """
  import orbax.checkpoint as ocp

  out_dir = os.path.abspath(os.fspath(out_dir))
  check_output_dir(out_dir)
  missing = [c for c in COLLECTIONS if c not in variables]
  if missing:
    raise ConversionError(f'variables lack the collections {missing}')
  text = json.dumps(metadata, indent=2, sort_keys=True) + '\n'  # fails before anything is written
  tree = {c: variables[c] for c in COLLECTIONS}
  with atomic_path(out_dir, folder=True) as tmp:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, VARIABLES_DIR), tree)
      ckptr.wait_until_finished()
    with open(os.path.join(tmp, METADATA_FILE), 'w') as f:
      f.write(text)
  return out_dir


def is_converted(path: str | os.PathLike) -> bool:
  """Whether `path` is a converted checkpoint (`save_converted`: metadata.json and variables/ in it)."""
  return os.path.isfile(os.path.join(path, METADATA_FILE)) and os.path.isdir(os.path.join(path, VARIABLES_DIR))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
  """The metadata.json of the converted checkpoint at `path` (checked to be one)."""
  path = os.fspath(path)
  meta_file = os.path.join(path, METADATA_FILE)
  if not is_converted(path):
    raise ConversionError(f'{path} is not a converted checkpoint (expected {METADATA_FILE} and '
                          f'{VARIABLES_DIR}/ in it)')
  try:
    with open(meta_file) as f:
      metadata = json.load(f)
  except (OSError, ValueError) as e:
    raise ConversionError(f'cannot read {meta_file}: {e}') from None
  if not isinstance(metadata, dict) or metadata.get('format') != FORMAT:
    raise ConversionError(f'{meta_file} is not {FORMAT} metadata '
                          f'(format: {metadata.get("format") if isinstance(metadata, dict) else None!r})')
  return metadata


def load_converted(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, Any]]:
  """Reads a converted checkpoint: `(variables, metadata)`.

  `variables` is `{'params': ..., 'batch_stats': ...}` (nested dicts of float32 numpy arrays), ready for
  `ResNet(depth=metadata['architecture']['depth'], variant=metadata['architecture']['variant'],
  num_classes=metadata['num_classes']).apply(variables, images)`, or to be grafted into a larger model.
  """
  import orbax.checkpoint as ocp

  path = os.path.abspath(os.fspath(path))
  metadata = read_metadata(path)
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.join(path, VARIABLES_DIR))
  variables = {c: restored[c] for c in COLLECTIONS if c in restored}
  return _to_numpy_tree(variables), metadata


def _to_numpy_tree(tree):
  if isinstance(tree, Mapping):
    return {k: _to_numpy_tree(v) for k, v in tree.items()}
  return np.asarray(tree, dtype=np.float32)
