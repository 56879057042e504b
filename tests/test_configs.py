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


def docstring(path) -> str:
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.__doc__


@pytest.mark.parametrize('path', CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_validates_and_builds(path):
  assert 'python train.py --config=configs/' + os.path.basename(path) in docstring(path)  # the command is shown
  config = train_config.load_config(path)
  train_config.validate(config)
  model = models.build(config.model, data_lib.num_classes(config.data))
  clip = jax.ShapeDtypeStruct(training.example_clip_shape(config), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), clip)
  assert shapes['params']['backbone'] and shapes['params']['head']
  if config.model.temporal != 'plain':
    assert config.data.clip_length >= 2  # a clip writes the memory and reads it


def test_camvid_cpu_recipe_spends_nothing_on_dead_pcma_and_scores_native_labels():
  config = train_config.load_config(os.path.join(REPO, 'configs', 'camvid_cpu.py'))
  model = models.build(config.model, data_lib.num_classes(config.data))
  assert set(config.model.pcma.stages) <= set(stages_read(model.head)), 'PCMA on a stage the head never reads'
  assert model.temporal.options.stages == tuple(config.model.pcma.stages)  # nothing dropped by the builder
  assert config.data.eval_size and config.data.eval_native_labels  # mIoU on the original 360x480 labels
  plain = train_config.load_config(os.path.join(REPO, 'configs', 'camvid_cpu.py'))
  plain.model.temporal = 'plain'
  differing = [k for k in _flatten(config) if _flatten(config)[k] != _flatten(plain).get(k)]
  assert differing == ['model.temporal']  # the comparison run differs only by the memory switch


@pytest.mark.parametrize('name', ['synthetic.py', 'camvid_cpu.py'])
def test_one_switch_selects_each_temporal_module(name):
  """`--config.model.temporal=tma|plain` alone gives a model whose head reads what the module writes."""
  path = os.path.join(REPO, 'configs', name)
  for temporal in ('pcma', 'tma', 'plain'):
    config = train_config.load_config(path, {'model.temporal': temporal})
    model = models.build(config.model, data_lib.num_classes(config.data))
    clip = jax.ShapeDtypeStruct(training.example_clip_shape(config), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), clip)
    assert ('temporal' in shapes['params']) == (temporal != 'plain')


@pytest.mark.parametrize('name, memory_length, align_corners', [('tmanet_cityscapes.py', 2, True),
                                                                 ('tmanet_camvid.py', 4, False)])
def test_tmanet_configs_build_the_authors_model(name, memory_length, align_corners):
  from ma_resnet.convert import tmanet
  config = train_config.load_config(os.path.join(REPO, 'configs', name))
  assert config.data.clip_length == memory_length + 1 and config.aux_loss_weight == 0.4
  ours = models.build(config.model, 19)
  reference = tmanet.reference_model(19, memory_length, align_corners)
  shape = jax.ShapeDtypeStruct((1, 1, 64, 64, 3), jnp.float32)
  tree = lambda m: jax.tree.map(lambda a: a.shape, jax.eval_shape(lambda x: m.init(jax.random.key(0), x), shape))
  assert tree(ours) == tree(reference) and ours.align_corners == align_corners


def _flatten(config, prefix=''):
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out
