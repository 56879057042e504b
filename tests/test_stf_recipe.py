"""The STF + MAR staged recipe end to end on the synthetic video (configs/stf_synthetic.py, shrunk): per-frame
PSPNet -> STF on the frozen extractor (init_from) -> MAR memory from the STF run (python -m ma_resnet.mar_memory)
-> MAR with STF fixed, starting from that memory; and the memory command's errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import test_training_support as support
from ma_resnet import loop, mar_memory, train_config
from ma_resnet.runs import load_run

CONFIG = os.path.join(support.REPO, 'configs', 'stf_synthetic.py')
TINY = {  # 64x64 frames: 8x8 features, one 8x8 block; one object class shown on every frame: a few steps
    # per stage predict every class somewhere (the memory needs a correct pixel of each)
    'data.synthetic.height': 64, 'data.synthetic.width': 64, 'data.crop_size': (64, 64),
    'data.synthetic.num_train_sequences': 8, 'data.synthetic.num_val_sequences': 2,
    'data.synthetic.frames_per_sequence': 4, 'data.synthetic.num_object_classes': 1,
    'data.synthetic.reveal_period': 1, 'data.read_threads': 1, 'data.prefetch_buffer_size': 2,
    'model.pspnet.channels': 16, 'model.stf.ffn_channels': 8, 'model.stf.block_size': (8, 8),
    'model.stf.embedding_size': (8, 8), 'model.stf.memory_per_class': 2,
    'optimizer.warmup': 0, 'batch_size': 4, 'log_every': 1, 'eval_every': 0, 'eval_batch_size': 2,
}
STEPS = {'pspnet': 6, 'stf': 6, 'mar': 2}
LR = {'pspnet': (0.05, 0.05), 'stf': (1e-2, 1e-2), 'mar': (1e-6, 1e-6)}  # mar: the memory barely moves


def stage_config(stage: str, **overrides):
  lr, end_lr = LR[stage]
  return train_config.load_config(f'{CONFIG}:{stage}', {
      **TINY, 'num_steps': STEPS[stage], 'checkpoint_every': STEPS[stage], 'optimizer.lr': lr,
      'optimizer.end_lr': end_lr, **overrides})


def flat(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if hasattr(value, 'items'):
      out.update(flat(value, f'{prefix}{key}/'))
    else:
      out[f'{prefix}{key}'] = np.asarray(value)
  return out


@pytest.fixture(scope='module')
def recipe(tmp_path_factory):
  root = tmp_path_factory.mktemp('stf_recipe')
  runs = {stage: str(root / stage) for stage in ('pspnet', 'stf', 'mar')}
  memory = str(root / 'memory')
  results = {'pspnet': loop.train_and_evaluate(stage_config('pspnet'), runs['pspnet'], progress=False)}
  results['stf'] = loop.train_and_evaluate(stage_config('stf', init_from=runs['pspnet']), runs['stf'],
                                           progress=False)
  code = mar_memory.main([f'--workdir={runs["stf"]}', f'--out={memory}', '--keys_per_class=2', '--noprogress'])
  assert code == 0
  results['mar'] = loop.train_and_evaluate(
      stage_config('mar', init_from=runs['stf'], **{'model.stf.memory_init': memory}), runs['mar'], progress=False)
  variables = {stage: flat(load_run(path, 'latest').variables) for stage, path in runs.items()}
  return dict(runs=runs, memory=memory, results=results, variables=variables)


def test_each_stage_starts_from_the_previous_one(recipe):
  v = recipe['variables']
  extractor = [k for k in v['pspnet'] if k.startswith(('params/backbone', 'batch_stats/backbone'))]
  assert extractor and any('/psp/' in k for k in extractor)
  for key in extractor:  # loaded from stage 1, then frozen: unchanged through stages 2 and 4
    np.testing.assert_array_equal(v['stf'][key], v['pspnet'][key], err_msg=key)
    np.testing.assert_array_equal(v['mar'][key], v['pspnet'][key], err_msg=key)
  stf = [k for k in v['stf'] if k.startswith('params/temporal/stf/')]
  assert stf
  for key in stf:  # STF fixed in stage 4
    np.testing.assert_array_equal(v['mar'][key], v['stf'][key], err_msg=key)
  assert not any(k.startswith('params/temporal/mar/') for k in v['stf'])
  # The classifier starts anew at each stage (init_from_exclude=('head',)), as the authors' conv_seg.
  kernel = 'params/head/classifier/conv/kernel'
  assert not np.allclose(v['stf'][kernel], v['pspnet'][kernel], atol=1e-3)
  for stage in ('pspnet', 'stf', 'mar'):
    assert 0.0 <= recipe['results'][stage].eval_metrics['miou'] <= 1.0  # evaluation ran (non-causal included)


def test_mar_starts_from_the_generated_memory(recipe):
  keys = np.load(os.path.join(recipe['memory'], 'key.npy'))
  prototypes = np.load(os.path.join(recipe['memory'], 'value.npy'))
  with open(os.path.join(recipe['memory'], 'memory.json')) as f:
    metadata = json.load(f)
  classes = len(metadata['class_names'])
  assert keys.shape == (2 * classes, 16) and prototypes.shape == (classes, 16)
  assert metadata['labelled_frames'] == 8 * 4 and metadata['split'] == 'train' and classes == 2
  assert all(np.all(np.diff(c) >= 0) for c in metadata['key_confidence'])  # least confident first
  mar = recipe['variables']['mar']
  # lr 1e-6 for 2 steps: the trained memory is still the generated one (to Adam's step size).
  np.testing.assert_allclose(mar['params/temporal/mar/memory_key'], keys, atol=1e-4)
  np.testing.assert_allclose(mar['params/temporal/mar/memory_value'], np.repeat(prototypes, 2, axis=0), atol=1e-4)


def test_memory_command_errors_are_one_line(recipe, tmp_path, capsys):
  assert mar_memory.main([f'--workdir={tmp_path / "none"}', f'--out={tmp_path / "m"}', '--noprogress']) == 4
  assert mar_memory.main([f'--workdir={recipe["runs"]["pspnet"]}', f'--out={tmp_path / "m"}', '--noprogress']) == 2
  assert mar_memory.main([f'--workdir={recipe["runs"]["stf"]}', f'--out={recipe["memory"]}', '--noprogress']) == 1
  errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
  assert len(errors) == 3
  assert 'does not exist' in errors[0] and "temporal module 'plain'" in errors[1] and 'not an empty' in errors[2]
  assert not os.path.exists(tmp_path / 'm')


def test_a_class_never_predicted_correctly_is_named():
  sampler = mar_memory.MemorySampler(num_classes=3, channels=2, keys_per_class=2, values_per_class=2)
  features = np.arange(10, dtype=np.float32).reshape(5, 2)
  sampler.update(features, np.array([0.9, 0.5, 0.7, 0.6, 0.95], np.float32), np.array([0, 0, 0, 2, 2]))
  with pytest.raises(mar_memory.MemoryBankError, match=r'class 1 \(b\) never predicted correctly'):
    sampler.memory(['a', 'b', 'c'])
  sampler.update(features[:1], np.array([0.3], np.float32), np.array([1]))
  keys, values = sampler.memory(['a', 'b', 'c'])
  np.testing.assert_array_equal(keys[:2], features[[1, 2]])  # class 0: the 2 least confident, ascending
  np.testing.assert_array_equal(values[0], features[[0, 2]].mean(0))  # the 2 most confident
  np.testing.assert_array_equal(keys[2:4], features[[0, 0]])  # one feature: repeated, as the authors
  np.testing.assert_array_equal(keys[4:], features[[3, 4]])
