"""Test helper: torchvision's own ResNet and DeepLabV3 definitions, without the `torchvision` package.

`import torchvision` can fail (its compiled ops must match the installed torch exactly), but its
`models/resnet.py` is plain PyTorch. `load_torchvision_resnet()` loads that file from the installed
torchvision under a private package name (`_ma_resnet_tvref.models.resnet`), with minimal stand-ins for the
few torchvision internals it imports (weights enums, API-usage logging, registry decorators). Nothing named
`torchvision` is put into `sys.modules`.

Tests call `torchvision_resnet_or_skip()`, which skips (with the reason) when torch or the file is absent.
`load_torchvision_deeplabv3()` loads `models/segmentation/deeplabv3.py` the same way (with torchvision's real
`IntermediateLayerGetter` from `models/_utils.py`), for `benchmarks/peers.py`.
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


def _torchvision_file(*parts: str) -> str:
  spec = importlib.util.find_spec('torchvision')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError('torchvision is not installed')
  for location in spec.submodule_search_locations:
    path = os.path.join(location, *parts)
    if os.path.isfile(path):
      return path
  raise ImportError(f"torchvision/{'/'.join(parts)} not found in the installed torchvision")


def _exec_file(name: str, path: str) -> types.ModuleType:
  """Runs the source file `path` as module `name` (registered in sys.modules)."""
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


@functools.cache
def load_torchvision_resnet() -> types.ModuleType:
  """torchvision's `models/resnet.py` as a module (needs torch; raises ImportError when unavailable)."""
  import torch  # noqa: F401  (ImportError when absent)

  _module(_PKG, is_package=True)
  _module(f'{_PKG}.utils', _log_api_usage_once=lambda obj: None)
  _module(f'{_PKG}.transforms', is_package=True)
  _module(f'{_PKG}.transforms._presets', ImageClassification=lambda *a, **k: None)
  _module(f'{_PKG}.models', is_package=True)
  _module(f'{_PKG}.models._api', register_model=_register_model, Weights=_Weights, WeightsEnum=_WeightsEnum)
  _module(f'{_PKG}.models._meta', _IMAGENET_CATEGORIES=[f'class{i}' for i in range(1000)])
  _module(f'{_PKG}.models._utils', _ovewrite_named_param=_ovewrite_named_param,
          handle_legacy_interface=_handle_legacy_interface)
  return _exec_file(f'{_PKG}.models.resnet', _torchvision_file('models', 'resnet.py'))


class _NoWeights:
  """Stand-in for weights enums of models that are not loaded (only attribute access happens)."""
  IMAGENET1K_V1 = None


@functools.cache
def load_torchvision_deeplabv3() -> types.ModuleType:
  """torchvision's `models/segmentation/deeplabv3.py` as a module (`deeplabv3_resnet50(weights=None,
  weights_backbone=None, num_classes=N)` builds the model); raises ImportError when unavailable."""
  load_torchvision_resnet()
  _module(f'{_PKG}._utils', sequence_to_str=lambda seq, separate_last='': ', '.join(map(str, seq)))
  real_utils = _exec_file(f'{_PKG}.models._torchvision_utils', _torchvision_file('models', '_utils.py'))
  stub_utils = sys.modules[f'{_PKG}.models._utils']
  stub_utils.IntermediateLayerGetter = real_utils.IntermediateLayerGetter
  stub_utils._ovewrite_value_param = real_utils._ovewrite_value_param
  sys.modules[f'{_PKG}.transforms._presets'].SemanticSegmentation = lambda *a, **k: None
  sys.modules[f'{_PKG}.models._meta']._VOC_CATEGORIES = [f'class{i}' for i in range(21)]
  _module(f'{_PKG}.models.mobilenetv3', mobilenet_v3_large=None, MobileNet_V3_Large_Weights=_NoWeights,
          MobileNetV3=object)
  _module(f'{_PKG}.models.segmentation', is_package=True)
  _exec_file(f'{_PKG}.models.segmentation._utils', _torchvision_file('models', 'segmentation', '_utils.py'))
  _exec_file(f'{_PKG}.models.segmentation.fcn', _torchvision_file('models', 'segmentation', 'fcn.py'))
  return _exec_file(f'{_PKG}.models.segmentation.deeplabv3',
                    _torchvision_file('models', 'segmentation', 'deeplabv3.py'))


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
