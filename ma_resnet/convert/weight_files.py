"""Reading weight files that may come from anywhere, without running code they carry.

Three formats, chosen by the file's suffix (`read_state_dict`):

- `.safetensors`: `safetensors.numpy.load_file` (a header and raw buffers; nothing is executed; no torch).
- `.pdparams` (PaddlePaddle): a pickle, read by `read_pdparams` with `RestrictedUnpickler`, which admits only
  the globals a Paddle state dict needs (`PDPARAMS_GLOBALS`: numpy's array / dtype / scalar reconstruction
  helpers, `collections.OrderedDict`, `builtins.tuple`, `_codecs.encode`) and refuses any other one, so a
  pickled `__reduce__` payload (`os.system`, `eval`, ...) is refused before it can run.
- anything else (`.pth`, `.pt`, `.bin`, `.ckpt`): `torch.load(..., weights_only=True)` (torch's own restricted
  unpickler: tensors and plain containers only). torch is imported only here.

Every failure is one `ConversionError` line naming the file: missing, unreadable, truncated, or holding a
refused global (named).
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ma_resnet.convert.checkpoint_io import ConversionError, unwrap_state_dict

# (module, name) -> why it is safe. numpy's pickles of arrays name these helpers: `_reconstruct` + `ndarray` +
# `dtype` (protocols <= 4), `_frombuffer` (protocol 5), `scalar` (numpy scalars); numpy >= 2 spells
# `numpy.core` as `numpy._core`. Python 3 pickles bytes as `_codecs.encode(str, 'latin1')` at protocol 2
# (paddle.static.save, fluid.save). paddle >= 2.1 pickles a Tensor nested in a non-state-dict object as
# `tuple((name, ndarray))` (`paddle/framework/io.py`, `_pickle_save.reduce_varbase`).
PDPARAMS_GLOBALS = frozenset({
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
    ('collections', 'OrderedDict'),
    ('builtins', 'tuple'), ('__builtin__', 'tuple'),
    ('_codecs', 'encode'),
})
# Names paddle.save adds beside the parameters (structured name -> parameter name; big-array split records).
PADDLE_BOOKKEEPING_PREFIXES = ('StructuredToParameterName', 'UnpackBigParamInfor')


class RefusedGlobal(pickle.UnpicklingError):
  """The pickle names a global outside the allowed set (the unpickler stopped before calling it)."""

  def __init__(self, module: str, name: str):
    super().__init__(f'{module}.{name}')
    self.module, self.name = module, name


class RestrictedUnpickler(pickle.Unpickler):
  """A `pickle.Unpickler` that resolves only the (module, name) globals in `allowed`; any other global (the
  way a pickle calls code: `__reduce__`, INST/OBJ, extension codes) raises `RefusedGlobal`. Persistent ids
  are refused by `pickle.Unpickler` itself."""

  def __init__(self, file, *, allowed: frozenset[tuple[str, str]], **kwargs):
    super().__init__(file, **kwargs)
    self.allowed = allowed

  def find_class(self, module: str, name: str):
    if (module, name) not in self.allowed:
      raise RefusedGlobal(module, name)
    return super().find_class(module, name)


def _check_file(path: str) -> None:
  if not os.path.exists(path):
    raise ConversionError(f'input file {path} does not exist (no such file)')
  if not os.path.isfile(path):
    raise ConversionError(f'input {path} is not a file')


def read_pdparams(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A `.pdparams` file (a pickle of name -> array) as name -> numpy array, without paddle and without running
  anything the pickle names beyond `PDPARAMS_GLOBALS`. paddle's bookkeeping entries are dropped; values
  pickled as paddle 2.1's `(name, ndarray)` tuples give their array."""
  path = os.fspath(path)
  _check_file(path)
  try:
    with open(path, 'rb') as f:
      state = RestrictedUnpickler(f, allowed=PDPARAMS_GLOBALS, encoding='latin1').load()
  except RefusedGlobal as e:
    raise ConversionError(f'{path}: refused to load: the pickle calls {e.module}.{e.name}, which a .pdparams '
                          'state dict (arrays in a dict) never needs; the file may run code when unpickled, '
                          'so it was not read further') from None
  except Exception as e:  # pickle raises many kinds of errors on corrupt input
    raise ConversionError(f'{path}: not a readable .pdparams pickle ({type(e).__name__}: {e})') from None
  if not isinstance(state, Mapping):
    raise ConversionError(f'{path}: expected a dict of name -> array, got {type(state).__name__}')
  out = {}
  for key, value in state.items():
    if isinstance(key, str) and key.startswith(PADDLE_BOOKKEEPING_PREFIXES):
      continue
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
      value = value[1]
    out[key] = value if isinstance(value, np.ndarray) else np.asarray(value)
  return out


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A `.safetensors` file as name -> numpy array (no torch)."""
  path = os.fspath(path)
  _check_file(path)
  try:
    from safetensors.numpy import load_file
  except ImportError:
    raise ConversionError(f'reading {path} needs the safetensors package (pip install safetensors)') from None
  try:
    return load_file(path)
  except Exception as e:  # safetensors raises SafetensorError / ValueError / OSError on bad files
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise ConversionError(f'cannot read {path} as a safetensors file ({type(e).__name__}: {first})') from None


def read_torch(path: str | os.PathLike) -> dict[str, Any]:
  """A `.pth`-style file (a state dict, or a checkpoint dict wrapping one under 'state_dict' / 'model') read
  with `torch.load(..., map_location='cpu', weights_only=True)`. Raises ConversionError when it cannot."""
  path = os.fspath(path)
  _check_file(path)
  try:
    import torch
  except ImportError:
    raise ConversionError(f'reading {path} needs PyTorch, which is not installed '
                          '(pip install torch==2.13.0: the CPU wheel is enough)') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # corrupt / truncated / refused by the weights-only unpickler
    raise ConversionError(f'cannot read {path} as a PyTorch checkpoint: {describe_torch_load_error(e)}') from None
  return unwrap_state_dict(obj, path)


def describe_torch_load_error(e: Exception) -> str:
  """One line saying why torch.load failed (its messages are long, multi-line, and advise weights_only=False).

  A global refused by torch's weights-only unpickler is named ('refused to load ... posix.system'): the file
  holds code to run, not (only) tensors."""
  text = re.sub(r'\x1b\[[0-9;]*m', '', str(e)).strip()
  refused = re.search(r'[Uu]nsupported (?:global:\s*)?GLOBAL\s+([\w.]+)', text)
  if refused:
    return (f'refused to load: the pickle calls {refused.group(1)}, which is not a tensor or a plain '
            'container (the file may run code when unpickled); save and convert model.state_dict() instead')
  m = re.search(r'WeightsUnpickler error:\s*(.+)', text)
  if m:
    detail = m.group(1).strip().split('. ')[0].rstrip('.')
    return f'corrupt file, or not a PyTorch checkpoint ({type(e).__name__}: {detail})'
  if isinstance(e, EOFError):
    return 'empty or truncated file'
  first = text.splitlines()[0].split('. ')[0].rstrip('.') if text else ''
  return f'corrupt or truncated file, or not a PyTorch checkpoint ({type(e).__name__}: {first})'


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
  """The state dict in the weight file `path`, by suffix: `.safetensors`, `.pdparams`, else a torch file."""
  suffix = os.path.splitext(os.fspath(path))[1].lower()
  if suffix == '.safetensors':
    return read_safetensors(path)
  if suffix == '.pdparams':
    return read_pdparams(path)
  return read_torch(path)


def state_dict_of(state_dict_or_path: Mapping[str, Any] | str | os.PathLike) -> tuple[dict[str, Any], str]:
  """(the state dict, 'path: ' or '') of a weight file (`read_state_dict`) or of a loaded dict (wrappers and a
  DataParallel prefix removed): the second item prefixes the loaders' errors."""
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    return read_state_dict(state_dict_or_path), f'{os.fspath(state_dict_or_path)}: '
  return unwrap_state_dict(state_dict_or_path, 'the state dict'), ''
