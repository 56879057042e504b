"""Every experiment file under configs/ loads, validates and builds its model (shapes only, no compute)."""
from __future__ import annotations

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from ma_resnet import train_config, training
from ma_resnet import data as data_lib
from ma_resnet.models.build import stages_read

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, 'configs', '*.py')))


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('path', CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_validates_and_builds(path):
  module = load(path)
  assert 'python train.py --config=configs/' + os.path.basename(path) in module.__doc__  # the command is shown
  config = module.get_config()
  train_config.validate(config)
  model = training.build_model(config, data_lib.num_classes(config.data))
  clip = jax.ShapeDtypeStruct(training.example_clip_shape(config), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), clip)
  assert shapes['params']['backbone'] and shapes['params']['head']
  if config.model.encoder == 'ma':
    assert config.data.clip_length >= 2  # a clip writes the memory and reads it


def test_camvid_cpu_recipe_spends_nothing_on_dead_pcma_and_scores_native_labels():
  config = load(os.path.join(REPO, 'configs', 'camvid_cpu.py')).get_config()
  model = training.build_model(config, data_lib.num_classes(config.data))
  # (camvid.py keeps the authors' stages 1-3, of which DeepLabV3+ reads only stage 1.)
  assert set(config.model.pcma.stages) <= stages_read(model.head), 'PCMA on a stage the head never reads'
  assert config.data.eval_size and config.data.eval_native_labels  # mIoU on the original 360x480 labels
  plain = load(os.path.join(REPO, 'configs', 'camvid_cpu.py')).get_config()
  plain.model.encoder = 'plain'
  differing = [k for k in _flatten(config) if _flatten(config)[k] != _flatten(plain).get(k)]
  assert differing == ['model.encoder']  # the comparison run differs only by the memory switch


def _flatten(config, prefix=''):
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out
