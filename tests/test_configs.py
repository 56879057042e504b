"""Every experiment file under configs/ loads, validates and builds its model (shapes only, no compute)."""
from __future__ import annotations

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from ma_resnet import models, train_config, training
from ma_resnet import data as data_lib
from ma_resnet.models.heads import stages_read

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
  model = models.build(config.model, data_lib.num_classes(config.data))
  clip = jax.ShapeDtypeStruct(training.example_clip_shape(config), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), clip)
  assert shapes['params']['backbone'] and shapes['params']['head']
  if config.model.temporal != 'plain':
    assert config.data.clip_length >= 2  # a clip writes the memory and reads it


def test_camvid_cpu_recipe_spends_nothing_on_dead_pcma_and_scores_native_labels():
  config = load(os.path.join(REPO, 'configs', 'camvid_cpu.py')).get_config()
  model = models.build(config.model, data_lib.num_classes(config.data))
  assert set(config.model.pcma.stages) <= set(stages_read(model.head)), 'PCMA on a stage the head never reads'
  assert model.temporal.options.stages == tuple(config.model.pcma.stages)  # nothing dropped by the builder
  assert config.data.eval_size and config.data.eval_native_labels  # mIoU on the original 360x480 labels
  plain = load(os.path.join(REPO, 'configs', 'camvid_cpu.py')).get_config()
  plain.model.temporal = 'plain'
  differing = [k for k in _flatten(config) if _flatten(config)[k] != _flatten(plain).get(k)]
  assert differing == ['model.temporal']  # the comparison run differs only by the memory switch


def _flatten(config, prefix=''):
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out
