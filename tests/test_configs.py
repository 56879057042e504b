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
  assert set(config.model.pcma.stages) <= set(model.head.stages_read()), 'PCMA on a stage the head never reads'
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


STF_CONFIGS = ('stf_synthetic.py', 'stf_cityscapes.py', 'stf_camvid.py')


def _stf_stage(name: str, stage: str, memory_dir: str):
  """The config and parameter shapes of one stage of an STF recipe (the 'mar' stage with a memory of the right
  shape in `memory_dir`)."""
  import numpy as np
  config = train_config.load_config(os.path.join(REPO, 'configs', f'{name}:{stage}'))
  num_classes = data_lib.num_classes(config.data)
  model = models.build(config.model, num_classes)
  if stage == 'mar':
    rows, channels = int(config.model.stf.memory_per_class) * num_classes, model.temporal.channels
    os.makedirs(memory_dir, exist_ok=True)
    np.save(os.path.join(memory_dir, 'key.npy'), np.zeros((rows, channels), np.float32))
    np.save(os.path.join(memory_dir, 'value.npy'), np.zeros((num_classes, channels), np.float32))
    config.model.stf.memory_init = memory_dir
  train_config.validate(config)
  clip = jax.ShapeDtypeStruct(training.example_clip_shape(config), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), clip)
  flat = {jax.tree_util.keystr(p): leaf.shape for p, leaf in jax.tree_util.tree_flatten_with_path(
      {k: shapes[k] for k in ('params', 'batch_stats') if k in shapes})[0]}
  return config, model, flat


@pytest.mark.parametrize('name', STF_CONFIGS)
def test_stf_recipe_stages_chain_through_init_from(name, tmp_path):
  """pspnet -> stf -> mar: each stage finds the previous one's variables under the same paths and shapes, the
  extractor is frozen from stage 2 on, STF from stage 4 on, and each stage's classifier starts anew."""
  stages = {stage: _stf_stage(name, stage, str(tmp_path / 'memory')) for stage in ('pspnet', 'stf', 'mar')}
  (c1, m1, v1), (c2, m2, v2), (c4, m4, v4) = (stages[s] for s in ('pspnet', 'stf', 'mar'))
  assert m1.delay == 0 and m2.delay == m4.delay == 1
  extractor = lambda flat: {k: v for k, v in flat.items() if "['backbone']" in k}
  assert extractor(v2) and all(v1.get(k) == shape for k, shape in extractor(v2).items())
  assert {k: v for k, v in v4.items() if "['mar']" not in k} == v2  # stage 4 = stage 2 + MAR
  assert any("['mar']" in k for k in v4)
  assert c2.model.frozen == ('backbone',) and c4.model.frozen == ('backbone',)
  assert c4.model.stf.freeze_stf and tuple(c4.optimizer.frozen) == ('temporal/stf',)
  assert tuple(c2.init_from_exclude) == tuple(c4.init_from_exclude) == ('head',)
  assert c2.optimizer.name == 'adamw' and c2.optimizer.weight_decay == 1e-4 and c2.optimizer.grad_clip_norm == 0.1
  assert c2.data.clip_length == 3 and not c2.model.stf.mar
  if name == 'stf_cityscapes.py':
    from ma_resnet.convert import stf_mar
    assert c2.optimizer.lr == 1e-5 and c1.aux_loss_weight == 0.4
    assert (c2.data.cityscapes.frames_before, c2.data.cityscapes.frames_after) == (1, 1)
    reference = stf_mar.reference_model(19)
    shape = jax.ShapeDtypeStruct((1, 1, 128, 128, 3), jnp.float32)
    tree = lambda m: jax.tree.map(lambda a: a.shape, jax.eval_shape(lambda x: m.init(jax.random.key(0), x), shape))
    assert tree(m4) == tree(reference)  # the mar stage is the authors' model


def test_stf_configs_refuse_a_mar_stage_without_its_memory(tmp_path):
  config = train_config.load_config(os.path.join(REPO, 'configs', 'stf_synthetic.py:mar'),
                                    {'model.stf.memory_init': str(tmp_path / 'none')})
  with pytest.raises(ValueError, match='model.stf.memory_init.*mar_memory'):
    train_config.validate(config)
  with pytest.raises(ValueError, match='stage must be one of'):
    train_config.load_config(os.path.join(REPO, 'configs', 'stf_synthetic.py:plain'))


@pytest.mark.parametrize('name', ['lernet_synthetic.py', 'lernet_camvid.py', 'lernet_camvid_cpu.py',
                                  'lernet_cityscapes.py'])
def test_lernet_stages_chain_through_init_from(name):
  """Stage 2 (THA) shares every variable of stage 1 (LERNet per frame) and adds only THA's own."""
  path = os.path.join(REPO, 'configs', name)
  shapes = {}
  for stage in ('frame', 'tha'):
    config = train_config.load_config(f'{path}:{stage}')
    train_config.validate(config)
    model = models.build(config.model, data_lib.num_classes(config.data))
    clip = jax.ShapeDtypeStruct((1, 1, 64, 64, 3), jnp.float32)
    shapes[stage] = jax.tree.map(lambda a: a.shape, jax.eval_shape(lambda x: model.init(jax.random.key(0), x), clip))
  frame, tha = shapes['frame']['params'], shapes['tha']['params']
  assert set(tha) - set(frame) == {'temporal'} and {k: tha[k] for k in frame} == frame
  config = train_config.load_config(f'{path}:tha')
  assert config.data.clip_length == 2 and tuple(config.data.pair_gaps) == (1, 2, 3, 4)
  assert config.model.tha.key_interval == 5 and set(config.optimizer.lr_multipliers) == {'backbone', 'head'}
  with pytest.raises(ValueError, match="'frame' or 'tha'"):
    train_config.load_config(f'{path}:other')
