"""Test helper: torchvision's own ResNet definition (`torchvision/models/resnet.py`), without `torchvision`.

`import torchvision` can fail (its compiled ops must match the installed torch exactly), but its
`models/resnet.py` is plain PyTorch. `load_torchvision_resnet()` loads that file from the installed
torchvision under a private package name (`_ma_resnet_tvref.models.resnet`), with minimal stand-ins for the
few torchvision internals it imports (weights enums, API-usage logging, registry decorators). Nothing named
`torchvision` is put into `sys.modules`.

Tests call `torchvision_resnet_or_skip()`, which skips (with the reason) when torch or the file is absent.
"""
from __future__ import annotations

import enum
import functools
import importlib.util
import os
import sys
import types

_PKG = '_ma_resnet_tvref'


def _module(name: str, is_package: bool = False, **attrs) -> types.ModuleType:
  m = types.ModuleType(name)
  if is_package:
    m.__path__ = []
  m.__dict__.update(attrs)
  sys.modules[name] = m
  return m


class _Weights:
  """Stand-in for torchvision.models._api.Weights (the pretrained-weights records are never used)."""

  def __init__(self, url=None, transforms=None, meta=None):
    self.url, self.transforms, self.meta = url, transforms, meta or {}


class _WeightsEnum(enum.Enum):
  @classmethod
  def verify(cls, obj):
    if obj is not None:
      raise NotImplementedError('pretrained weights are not available in this test helper')
    return obj


def _register_model(name=None):
  return lambda fn: fn


def _handle_legacy_interface(**weights):
  return lambda fn: fn


def _ovewrite_named_param(kwargs, param, new_value):
  kwargs[param] = new_value


def _resnet_py_path() -> str:
  spec = importlib.util.find_spec('torchvision')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError('torchvision is not installed')
  for location in spec.submodule_search_locations:
    path = os.path.join(location, 'models', 'resnet.py')
    if os.path.isfile(path):
      return path
  raise ImportError('torchvision/models/resnet.py not found in the installed torchvision')


@functools.cache
def load_torchvision_resnet() -> types.ModuleType:
  """torchvision's `models/resnet.py` as a module (needs torch; raises ImportError when unavailable)."""
  import torch  # noqa: F401  (ImportError when absent)

  path = _resnet_py_path()
  _module(_PKG, is_package=True)
  _module(f'{_PKG}.utils', _log_api_usage_once=lambda obj: None)
  _module(f'{_PKG}.transforms', is_package=True)
  _module(f'{_PKG}.transforms._presets', ImageClassification=lambda *a, **k: None)
  _module(f'{_PKG}.models', is_package=True)
  _module(f'{_PKG}.models._api', register_model=_register_model, Weights=_Weights, WeightsEnum=_WeightsEnum)
  _module(f'{_PKG}.models._meta', _IMAGENET_CATEGORIES=[f'class{i}' for i in range(1000)])
  _module(f'{_PKG}.models._utils', _ovewrite_named_param=_ovewrite_named_param,
          handle_legacy_interface=_handle_legacy_interface)
  name = f'{_PKG}.models.resnet'
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # e.g. a torchvision release importing something this helper does not stub
    del sys.modules[name]
    raise ImportError(f'cannot load {path} without the torchvision package: {type(e).__name__}: {e}') from e
  module.SOURCE_PATH = path
  return module


def torchvision_resnet_or_skip() -> types.ModuleType:
  """`load_torchvision_resnet()`, or pytest.skip saying what is missing."""
  import pytest

  pytest.importorskip('torch', reason='torch is not installed (pip install torch==2.13.0); '
                                      'CI installs it and runs these tests')
  try:
    return load_torchvision_resnet()
  except ImportError as e:
    pytest.skip(f"torchvision's models/resnet.py is unavailable: {e} "
                '(pip install --no-deps torchvision==0.28.0); CI installs it and runs these tests')
