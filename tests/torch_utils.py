"""Test helper: torchvision's own ResNet and DeepLabV3 definitions, without the `torchvision` package.

`import torchvision` can fail (its compiled ops must match the installed torch exactly), but its
`models/resnet.py` is plain PyTorch. `load_torchvision_resnet()` loads that file from the installed
torchvision under a private package name (`_ma_resnet_tvref.models.resnet`), with minimal stand-ins for the
few torchvision internals it imports (weights enums, API-usage logging, registry decorators). Nothing named
`torchvision` is put into `sys.modules`.

Tests call `torchvision_resnet_or_skip()`, which skips (with the reason) when torch or the file is absent.
`load_torchvision_deeplabv3()` loads `models/segmentation/deeplabv3.py` the same way (with torchvision's real
`IntermediateLayerGetter` from `models/_utils.py`), for `benchmarks/peers.py`.

`load_timm()` / `timm_or_skip()` import timm (whose import pulls in torchvision) with stand-in `torchvision`
modules, removed again afterwards.
"""
from __future__ import annotations

import enum
import functools
import importlib.abc
import importlib.machinery
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


# ---------------------------------------------------------------------------------------------------------
# timm, without the torchvision package.

class _Placeholder(type):
  """A class whose every attribute is another placeholder class (e.g. `InterpolationMode.BILINEAR`)."""

  def __getattr__(cls, name):
    if name.startswith('__'):
      raise AttributeError(name)
    return _Placeholder(name, (), {})


class _StandInModule(types.ModuleType):
  def __getattr__(self, name):
    if name.startswith('__'):
      raise AttributeError(name)
    return _Placeholder(name, (), {})


class _StandInTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Serves every `torchvision.*` import with a stand-in module of placeholders (timm imports torchvision's
  transforms, datasets and FrozenBatchNorm2d at import time; its ResNet uses none of them)."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname == 'torchvision' or fullname.startswith('torchvision.'):
      return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    return None

  def create_module(self, spec):
    module = _StandInModule(spec.name)
    module.__path__ = []
    return module

  def exec_module(self, module):
    pass


@functools.cache
def load_timm() -> types.ModuleType:
  """`timm` (needs torch and timm; raises ImportError when unavailable), imported with stand-in `torchvision`
  modules that are removed from `sys.modules` again afterwards, so that nothing else sees them."""
  import torch  # noqa: F401  (ImportError when absent)

  if importlib.util.find_spec('timm') is None:
    raise ImportError('timm is not installed')
  finder = _StandInTorchvision()
  saved = {n: m for n, m in sys.modules.items() if n == 'torchvision' or n.startswith('torchvision.')}
  for name in saved:
    del sys.modules[name]
  sys.meta_path.insert(0, finder)
  try:
    import timm
    import timm.models.resnet  # noqa: F401
  finally:
    sys.meta_path.remove(finder)
    for name in [n for n in sys.modules if n == 'torchvision' or n.startswith('torchvision.')]:
      del sys.modules[name]
    sys.modules.update(saved)
  return timm


def timm_or_skip() -> types.ModuleType:
  """`load_timm()`, or pytest.skip saying what is missing."""
  import pytest

  pytest.importorskip('torch', reason='torch is not installed (pip install torch==2.13.0)')
  try:
    return load_timm()
  except ImportError as e:
    pytest.skip(f'timm is unavailable: {e} (pip install timm==1.0.31)')


# ---------------------------------------------------------------------------------------------------------
# Parity helpers shared by the converter tests (numpy; torch only where a torch module is passed).

def table_state_dict(table, seed: int = 0) -> dict:
  """A random numpy state dict with exactly the keys and shapes of a `checkpoint_io.Table` (positive values
  for batch-norm variances), plus its ignored `*num_batches_tracked` counters."""
  import numpy as np

  rng = np.random.default_rng(seed)
  state = {}
  for key, entry in table.entries.items():
    a = rng.standard_normal(entry.shape, dtype=np.float32)
    state[key] = np.abs(a) + 0.5 if entry.path[-1] == 'var' else a
  state.update({k: np.array(0, np.int64) for k in table.ignored if k.endswith('num_batches_tracked')})
  return state


def randomize_batch_norms(model, seed: int) -> None:
  """Non-trivial batch-norm affine parameters and running statistics (and classifier) in a torch model, so
  that a mix-up of scale / bias / mean / var shows in its outputs."""
  import torch

  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0.0, 0.1, generator=g)
        m.running_mean.normal_(0.0, 0.1, generator=g)
        m.running_var.uniform_(0.5, 2.0, generator=g)
      elif isinstance(m, torch.nn.Linear):
        m.weight.normal_(0.0, 0.05, generator=g)
        m.bias.normal_(0.0, 0.1, generator=g)


def torch_stage_outputs(model, x_nchw, stages=('layer1', 'layer2', 'layer3', 'layer4')) -> dict:
  """{'stage1'..'stage4' (NHWC numpy), 'logits'} of a torchvision-style torch ResNet in eval mode."""
  import torch

  outputs = {}
  handles = [getattr(model, name).register_forward_hook(
      lambda mod, inp, out, key=f'stage{i + 1}': outputs.__setitem__(key, out.numpy().transpose(0, 2, 3, 1)))
      for i, name in enumerate(stages)]
  model.eval()
  with torch.no_grad():
    outputs['logits'] = model(torch.from_numpy(x_nchw)).numpy()
  for h in handles:
    h.remove()
  return outputs


def relative_error(a, b) -> float:
  """||a - b|| / ||b|| in float64."""
  import numpy as np

  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@functools.cache
def _flax_resnet_apply(depth: int, variant: str):
  import jax

  from ma_resnet.models.backbones.resnet import ResNet

  model = ResNet(depth=depth, variant=variant, num_classes=1000)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def flax_resnet_outputs(depth: int, variant: str, variables, x_nchw) -> dict:
  """{'stage1'..'stage4', 'logits'} of `ResNet(depth, variant, num_classes=1000)` in eval mode, full float32."""
  import jax
  import jax.numpy as jnp

  with jax.default_matmul_precision('float32'):  # no TF32 / bf16 passes on accelerators
    return jax.device_get(_flax_resnet_apply(depth, variant)(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1))))
