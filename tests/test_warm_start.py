"""Warm starts (`init_from`, `warm_start.warm_start`): the paper configs' default initialisations, a catalogue
name through training, a converted ResNet into the 'pspnet' backbone, the authors' trained models, and the
refusals (a run of another system, depth or dataset, an unfinished run, frozen modules left at their
random initialisation), each before anything is written. No network: catalogue entries point at 127.0.0.1."""
from __future__ import annotations

import glob
import os
import re

import jax
import numpy as np
import pytest

import test_training_support as support  # noqa: F401  (the persistent compilation cache of the tests)
import test_weights_support as server_support
from ma_resnet import checkpoints, loop, models, runs, train_config, training, warm_start, weights
from ma_resnet import data as data_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STF_SYNTHETIC = os.path.join(REPO, 'configs', 'stf_synthetic.py')
TINY_STF = {  # 64x64 frames, 8x8 features in one 8x8 block, a 16-channel PSP: a training state in seconds
    'data.synthetic.height': 64, 'data.synthetic.width': 64, 'data.crop_size': (64, 64),
    'data.synthetic.num_train_sequences': 4, 'data.synthetic.num_val_sequences': 1,
    'data.synthetic.frames_per_sequence': 4, 'data.synthetic.num_object_classes': 1, 'data.read_threads': 1,
    'data.prefetch_buffer_size': 2, 'model.pspnet.channels': 16, 'model.stf.ffn_channels': 8,
    'model.stf.block_size': (8, 8), 'model.stf.embedding_size': (8, 8), 'model.stf.memory_per_class': 2,
    'batch_size': 2, 'num_steps': 2, 'checkpoint_every': 2, 'eval_every': -1,
}

# The initialisation each config starts from by default: its paper's (a catalogue entry; for LERNet on CamVid
# the Cityscapes run, as the paper), '' for the later stages of a staged recipe (they chain from runs) and for
# the configs made to run here (synthetic, CPU, tests: they never touch the network).
DEFAULT_INIT = {
    'camvid.py': 'paddleseg_resnet50_vd_ssld_v2', 'vspw.py': 'paddleseg_resnet50_vd_ssld_v2',
    'tmanet_cityscapes.py': 'mmcv_resnet50_v1c', 'tmanet_camvid.py': 'mmcv_resnet50_v1c',
    'stf_cityscapes.py:pspnet': 'mmcv_resnet50_v1c', 'stf_cityscapes.py:stf': '', 'stf_cityscapes.py:mar': '',
    'stf_camvid.py:pspnet': 'mmcv_resnet50_v1c', 'stf_camvid.py:stf': '', 'stf_camvid.py:mar': '',
    'lernet_cityscapes.py:frame': '', 'lernet_cityscapes.py:tha': '',
    'lernet_camvid.py:frame': 'runs/lernet_cs', 'lernet_camvid.py:tha': '',
    'synthetic.py': '', 'camvid_cpu.py': '', 'test.py': '',
    'stf_synthetic.py:pspnet': '', 'stf_synthetic.py:stf': '', 'stf_synthetic.py:mar': '',
    'lernet_synthetic.py:frame': '', 'lernet_synthetic.py:tha': '',
    'lernet_camvid_cpu.py:frame': '', 'lernet_camvid_cpu.py:tha': '',
}


def config_of(name: str, **overrides):
  return train_config.load_config(os.path.join(REPO, 'configs', name), overrides)


def random_state(config, seed: int = 0):
  """A TrainState of `config`'s model with random host values that train (no compilation): He-scaled kernels,
  positive scales and variances."""
  model = models.build(config.model, data_lib.num_classes(config.data))
  tx = training.make_optimizer(config, training.learning_rate_schedule(config))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name, shape = getattr(path[-1], 'key', ''), leaf.shape
    if name == 'kernel':
      return (rng.standard_normal(shape) * np.sqrt(2.0 / max(int(np.prod(shape[:-1])), 1))).astype(leaf.dtype)
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, shape).astype(leaf.dtype)
    return (0.1 * rng.standard_normal(shape)).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, training.abstract_train_state(config, model, tx))


def write_run(workdir: str, config, step: int, iterator_config=None) -> None:
  """A train.py run folder whose checkpoint at `step` holds random values and `config` (the data iterator's
  position comes from `iterator_config`'s data, default `config`'s)."""
  state = random_state(config)
  train_iter = data_lib.make_train_iterator((iterator_config or config).data, batch_size=2, seed=0)
  store = checkpoints.TrainCheckpoints(os.path.join(workdir, checkpoints.CHECKPOINT_DIR))
  store.open_for_writing(config)
  store.save(step, state, train_iter)
  store.close()
  data_lib.close_iterator(train_iter)


def mar_config(tmp_path, **overrides):
  """configs/stf_synthetic.py:mar, tiny, with a MAR memory of the right shape in tmp_path/memory."""
  config = train_config.load_config(f'{STF_SYNTHETIC}:mar', {**TINY_STF, **overrides})
  num_classes = data_lib.num_classes(config.data)
  channels = models.build(config.model, num_classes).temporal.channels
  memory = tmp_path / 'memory'
  memory.mkdir(exist_ok=True)
  np.save(memory / 'key.npy', np.zeros((2 * num_classes, channels), np.float32))
  np.save(memory / 'value.npy', np.zeros((num_classes, channels), np.float32))
  config.model.stf.memory_init = str(memory)
  return config


def refused(config, workdir, error=checkpoints.CheckpointMismatchError) -> str:
  """The one-line message with which training `config` in `workdir` is refused, nothing written there."""
  with pytest.raises(error) as info:
    loop.train_and_evaluate(config, str(workdir), progress=False)
  assert not os.path.exists(workdir) or not os.listdir(workdir)
  message = str(info.value)
  assert '\n' not in message
  return message


# ---------------------------------------------------------------------------------------------------------
# The configs' defaults.


def test_every_config_is_classified():
  names = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))}
  assert names == {key.split(':')[0] for key in DEFAULT_INIT}


@pytest.mark.parametrize('name', sorted(DEFAULT_INIT))
def test_each_config_starts_from_its_papers_initialisation(name, tmp_path, monkeypatch):
  monkeypatch.delenv(weights.CATALOGUE_ENV, raising=False)
  monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / 'cache'))
  config = config_of(name)
  assert config.init_from == DEFAULT_INIT[name]
  spec = weights.parse_init_from(config.init_from)
  if spec.kind == 'catalogue':
    entry = weights.get(spec.value)
    assert (entry.depth, entry.variant) == (config.model.depth, config.model.variant)
    assert config.model.get('backbone', 'resnet') in ('resnet', 'pspnet')
  else:
    assert spec.kind in ('none', 'path')
  if name.startswith('lernet_camvid.py:frame'):
    assert tuple(config.init_from_exclude) == ('head',)  # the Cityscapes run's 19-class decoder is not taken
  if name.startswith(('stf_synthetic.py:mar', 'stf_cityscapes.py:mar', 'stf_camvid.py:mar')):
    return  # validated with its memory files in test_configs.py
  train_config.validate(config)  # the name is checked against the model; nothing is read or fetched
  assert not os.path.exists(tmp_path / 'cache')


def test_a_catalogue_entry_of_another_architecture_is_refused_before_any_download(tmp_path, monkeypatch):
  with server_support.WeightsServer({}) as server:
    server_support.use_catalogue(monkeypatch, str(tmp_path), {'r50': {
        'framework': 'torchvision', 'depth': 50, 'variant': 'torchvision', 'url': server.url('/r50.pth')}})
    message = refused(support.load_test_config(init_from='r50'), tmp_path / 'run', ValueError)
    assert 'init_from=r50 is a ResNet50 (torchvision) but the model is a ResNet18 (torchvision)' in message
    assert server.requests == []
  config = config_of('tmanet_camvid.py', **{'model.variant': 'vd'})
  with pytest.raises(ValueError, match=r'mmcv_resnet50_v1c is a ResNet50 \(v1c\) but the model is a ResNet50 \(vd\)'):
    train_config.validate(config)


def test_training_starts_from_a_catalogue_name(tmp_path, monkeypatch, capsys):
  data = server_support.torch_bytes(server_support.resnet18_state_dict())
  with server_support.WeightsServer({'/r18.pth': data}) as server:
    server_support.use_catalogue(monkeypatch, str(tmp_path), {'r18': {
        'framework': 'torchvision', 'depth': 18, 'variant': 'torchvision', 'url': server.url('/r18.pth'),
        'sha256': server_support.sha256(data)}})
    config = support.load_test_config(**{'init_from': 'r18', 'num_steps': 1, 'optimizer.lr': 1e-9,
                                         'optimizer.end_lr': 1e-9})
    loop.train_and_evaluate(config, str(tmp_path / 'run'), progress=False)
    assert server.requests == ['/r18.pth']
  line = capsys.readouterr().err.strip().splitlines()[0]
  converted = weights.converted_path(weights.get('r18'))
  run = runs.load_run(str(tmp_path / 'run'))
  backbone = len(jax.tree.leaves([run.variables[c]['backbone'] for c in ('params', 'batch_stats')]))
  # configs/test.py builds stem + stage 1 (its head reads stage 1): all of them are copied, nothing else.
  assert re.fullmatch(rf'Initialised from r18 \(converted copy {re.escape(converted)}\): copied backbone '
                      rf'{backbone} of {backbone}, temporal 0 of \d+, head 0 of \d+ arrays', line), line
  from ma_resnet.convert import load_converted
  encoder = load_converted(converted)[0]['params']
  np.testing.assert_allclose(run.variables['params']['backbone']['stage1']['block1']['conv2']['conv']['kernel'],
                             encoder['stage1']['block1']['conv2']['conv']['kernel'], atol=1e-6)


def _converted_resnet(folder, depth: int, variant: str) -> str:
  from ma_resnet.convert.checkpoint_io import make_metadata, save_converted
  shapes = jax.eval_shape(models.ResNet(depth=depth, variant=variant).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), dict(shapes))
  metadata = make_metadata(depth=depth, variant=variant, framework='test', converter='test', source_file=None,
                           num_classes=None)
  return save_converted(variables, metadata, folder)


def test_the_pspnet_backbone_takes_a_converted_v1c_and_keeps_its_psp_module(tmp_path):
  """STF's 'pspnet' backbone is a ResNet + the PSP module: a converted ResNetV1c fills the ResNet (deep stem,
  stages) under the same paths; 'psp' keeps its values. With the backbone frozen (the stf stage) that is refused:
  the PSP module would stay at its random initialisation."""
  path = _converted_resnet(tmp_path / 'r18_v1c', 18, 'v1c')
  config = train_config.load_config(f'{STF_SYNTHETIC}:pspnet', {**TINY_STF, 'model.variant': 'v1c', 'init_from': path})
  state = random_state(config)
  assert set(state.params['backbone']) == {'stem', 'stage1', 'stage2', 'psp'}  # the PSP module reads stage 2
  new, line = warm_start.warm_start(state, config)
  from ma_resnet.convert import load_converted
  encoder = load_converted(path)[0]
  for part in ('stem', 'stage1', 'stage2'):
    for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(new.params['backbone'][part])[0],
                         jax.tree.leaves(encoder['params'][part])):
      np.testing.assert_array_equal(np.asarray(a), b, err_msg=f'{part} {p}')
  assert {'conv1', 'conv2', 'conv3'} <= set(new.params['backbone']['stem'])  # V1c's deep stem
  np.testing.assert_array_equal(np.asarray(new.params['backbone']['psp']['bottleneck']['conv']['kernel']),
                                state.params['backbone']['psp']['bottleneck']['conv']['kernel'])
  shapes = checkpoints.flat_shapes({'params': state.params, 'batch_stats': state.batch_stats})
  resnet = sum(k.split('/')[2] in ('stem', 'stage1', 'stage2') for k in shapes if k.split('/')[1] == 'backbone')
  whole = sum(k.split('/')[1] == 'backbone' for k in shapes)
  assert f'copied backbone {resnet} of {whole}, temporal' not in line and f'backbone {resnet} of {whole}' in line
  frozen = train_config.load_config(f'{STF_SYNTHETIC}:stf', {**TINY_STF, 'model.variant': 'v1c', 'init_from': path})
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'freezes backbone \(model.frozen\) but .* not in it \(.*params/backbone/psp'):
    warm_start.warm_start(random_state(frozen), frozen)


# ---------------------------------------------------------------------------------------------------------
# Runs of another system, depth, dataset; unfinished runs; frozen modules.


def test_a_run_of_another_system_is_refused(tmp_path):
  """A TMA run into an STF config: it would have started with the frozen extractor partly random."""
  source = support.load_test_config(**{'model.temporal': 'tma', 'model.tma.stage': 'stage1',
                                       'model.tma.memory_length': 1, 'model.tma.channels': 16,
                                       'model.tma.key_channels': 8, 'model.tma.value_channels': 8,
                                       'model.output_stride': 8, 'num_steps': 2})
  write_run(str(tmp_path / 'tma'), source, step=2)
  config = train_config.load_config(f'{STF_SYNTHETIC}:stf', {**TINY_STF, 'init_from': str(tmp_path / 'tma')})
  message = refused(config, tmp_path / 'stf')
  assert ("is a model of temporal 'tma' on backbone 'resnet'; the config builds temporal 'stf' on backbone "
          "'pspnet'") in message


def test_a_run_of_another_depth_is_refused(tmp_path):
  """A ResNet-101 run into a ResNet-50 config: every ResNet-50 variable exists in it with the same shape."""
  write_run(str(tmp_path / 'r101'), support.load_test_config(**{'model.depth': 101, 'num_steps': 2}), step=2)
  config = support.load_test_config(**{'model.depth': 50, 'init_from': str(tmp_path / 'r101')})
  message = refused(config, tmp_path / 'r50')
  assert 'is a ResNet101 (torchvision) model; the config builds a ResNet50 (torchvision)' in message


def test_the_mar_stage_refuses_an_unfinished_stf_run(tmp_path):
  stf = train_config.load_config(f'{STF_SYNTHETIC}:stf', {**TINY_STF, 'num_steps': 6})
  write_run(str(tmp_path / 'stf'), stf, step=2)
  message = refused(mar_config(tmp_path, init_from=str(tmp_path / 'stf')), tmp_path / 'mar')
  assert 'is an unfinished run (its last checkpoint is step 2 of 6)' in message
  assert os.path.join(str(tmp_path / 'stf'), 'checkpoints', '2') in message  # how to start from it anyway


def test_the_mar_stage_refuses_an_stf_run_of_another_dataset(tmp_path):
  """An STF run on VSPW (2 classes, as this synthetic video: every shape agrees) into the synthetic MAR stage,
  which freezes the extractor and STF."""
  stf = train_config.load_config(f'{STF_SYNTHETIC}:stf', TINY_STF)
  vspw = train_config.load_config(f'{STF_SYNTHETIC}:stf', TINY_STF)
  vspw.data.name, vspw.data.vspw_mode = 'vspw', 'person'
  assert data_lib.num_classes(vspw.data) == data_lib.num_classes(stf.data) == 2
  write_run(str(tmp_path / 'stf_vspw'), vspw, step=2, iterator_config=stf)
  message = refused(mar_config(tmp_path, init_from=str(tmp_path / 'stf_vspw')), tmp_path / 'mar')
  assert ('was trained on vspw; the config trains on synthetic and freezes backbone (model.frozen), temporal/stf '
          '(optimizer.frozen)') in message


def test_a_config_that_freezes_modules_needs_init_from(tmp_path):
  config = train_config.load_config(f'{STF_SYNTHETIC}:stf', TINY_STF)
  assert config.init_from == ''
  message = refused(config, tmp_path / 'stf', ValueError)
  assert 'invalid config: the config freezes backbone (model.frozen) but init_from is empty' in message


def test_a_staged_run_says_what_was_copied(tmp_path):
  """pspnet -> stf (the recipe): the whole extractor, nothing of STF, not the classifier (init_from_exclude)."""
  pspnet = train_config.load_config(f'{STF_SYNTHETIC}:pspnet', TINY_STF)
  write_run(str(tmp_path / 'pspnet'), pspnet, step=2)
  config = train_config.load_config(f'{STF_SYNTHETIC}:stf', {**TINY_STF, 'init_from': str(tmp_path / 'pspnet')})
  state = random_state(config)
  new, line = warm_start.warm_start(state, config)
  counts = {m: sum(k.split('/')[1] == m for k in checkpoints.flat_shapes({'params': state.params,
                                                                           'batch_stats': state.batch_stats}))
            for m in ('backbone', 'temporal', 'head')}
  assert line == (f'Initialised from {tmp_path / "pspnet"} (step 2, trained on synthetic): copied backbone '
                  f'{counts["backbone"]} of {counts["backbone"]}, temporal 0 of {counts["temporal"]}, head 0 of '
                  f'{counts["head"]} arrays')
  run = runs.load_run(str(tmp_path / 'pspnet'))
  np.testing.assert_array_equal(np.asarray(new.params['backbone']['psp']['bottleneck']['conv']['kernel']),
                                np.asarray(run.variables['params']['backbone']['psp']['bottleneck']['conv']['kernel']))


# ---------------------------------------------------------------------------------------------------------
# The authors' trained models.


def test_an_authors_model_of_another_system_is_refused_before_it_is_read(tmp_path):
  empty = tmp_path / 'tmanet.pth'
  empty.write_bytes(b'')
  config = config_of('camvid.py', init_from=f'tmanet:{empty}')
  with pytest.raises(checkpoints.CheckpointMismatchError, match=r"temporal 'tma' on backbone 'resnet'; the config "
                     r"builds temporal 'pcma'"):
    warm_start.warm_start(random_state(config_of('camvid.py', **{'data.crop_size': (64, 64)})), config)


def test_the_authors_ma_resnet50_starts_the_camvid_config(tmp_path):
  """A .pdparams of the authors' MA-ResNet50 + DeepLabV3+ (random values, their names) through
  `convert.paddle.load_reference`: everything the CamVid config builds is taken (its PCMA on stage 1 only; the
  authors' stages 2-3 are dropped)."""
  import pickle
  from ma_resnet.convert import paddle
  rng = np.random.default_rng(0)
  state_dict = {k: rng.standard_normal(e.shape, dtype=np.float32)
                for k, e in paddle.reference_table(11).entries.items()}
  with open(tmp_path / 'model.pdparams', 'wb') as f:
    pickle.dump(state_dict, f)
  config = config_of('camvid.py', **{'data.crop_size': (64, 64), 'init_from': f'ma_resnet50:{tmp_path}/model.pdparams'})
  state = random_state(config)
  new, line = warm_start.warm_start(state, config)
  total = len(checkpoints.flat_shapes({'params': state.params, 'batch_stats': state.batch_stats}))
  assert line.startswith(f"Initialised from ma_resnet50:{tmp_path}/model.pdparams (the authors' ma_resnet50 model)")
  assert sum(int(copied) for copied, _ in re.findall(r'(\d+) of (\d+)', line)) == total  # every array
  _, reference = paddle.load_reference(state_dict, num_classes=11)
  np.testing.assert_array_equal(np.asarray(new.params['head']['decoder']['classifier']['kernel']),
                                reference['params']['head']['decoder']['classifier']['kernel'])
