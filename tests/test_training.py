"""Training: loss, schedule, optimizer, remat, init_from, data parallelism, checkpoint atomicity, NaN stop."""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import test_training_support as support
from ma_resnet import checkpoints, evaluation, loop, models, runs, training, warm_start
from ma_resnet import data as data_lib


# ---------------------------------------------------------------------------------------------------------
# Pure pieces.


def test_loss_ignores_255_unlabelled_and_warmup_frames():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 3, 4, 5, 6)), jnp.float32)
  labels = rng.integers(0, 6, size=(2, 3, 4, 5)).astype(np.int32)
  labels[0, 0, :2] = 255
  labelled = np.array([[True, True, False], [True, True, True]])
  enhanced = np.array([[False, True, True], [False, True, True]])
  batch = {'labelled': jnp.asarray(labelled)}

  def reference(frame_mask):
    log_p = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
    total, count, correct = 0.0, 0, 0
    for b in range(2):
      for t in range(3):
        if not frame_mask[b, t]:
          continue
        for y in range(4):
          for x in range(5):
            label = labels[b, t, y, x]
            if label == 255:
              continue
            total -= float(log_p[b, t, y, x, label])
            count += 1
            correct += int(np.argmax(logits[b, t, y, x]) == label)
    return total / count, correct / count

  for warmup, frame_mask in ((True, labelled), (False, labelled & enhanced)):
    weights = training.pixel_weights(jnp.asarray(labels), training.frame_weights(
        batch, jnp.asarray(enhanced), loss_on_warmup_frames=warmup, has_memory=True))
    ce_sum, count, correct = training.cross_entropy_sums(logits, jnp.asarray(labels), weights)
    want_loss, want_accuracy = reference(frame_mask)
    np.testing.assert_allclose(float(ce_sum / count), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(correct / count), want_accuracy, rtol=1e-6)
  # A plain model counts every labelled frame, whatever loss_on_warmup_frames says.
  plain = training.frame_weights(batch, jnp.zeros((2, 3), bool), loss_on_warmup_frames=False, has_memory=False)
  np.testing.assert_array_equal(np.asarray(plain), labelled.astype(np.float32))


def test_class_weighted_loss_is_the_weighted_mean_and_accuracy_stays_unweighted():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 1, 3, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=(2, 1, 3, 4)).astype(np.int32)
  labels[1, 0, 0] = 255
  weights = (labels != 255).astype(np.float32)
  class_weights = np.array([0.5, 2.0, 4.0], np.float32)
  ce_sum, weight_sum, correct = training.cross_entropy_sums(jnp.asarray(logits), jnp.asarray(labels),
                                                            jnp.asarray(weights), class_weights)
  log_p = np.asarray(jax.nn.log_softmax(logits.astype(np.float64), axis=-1))
  valid = labels != 255
  safe = np.where(valid, labels, 0)
  picked = np.take_along_axis(log_p, safe[..., None], axis=-1)[..., 0]
  w = np.where(valid, class_weights[safe], 0.0)
  np.testing.assert_allclose(float(ce_sum / weight_sum), np.sum(-picked * w) / np.sum(w), rtol=1e-5)
  want_correct = np.sum((np.argmax(logits, -1) == labels) & valid)
  assert float(correct) == want_correct  # unweighted


def test_class_balance_weights_follow_median_frequency():
  counts = np.array([100, 300, 50, 0, 25])
  weights = training.class_balance_weights(counts, 1.0)
  frequency = counts[[0, 1, 2, 4]] / counts.sum()
  median = np.median(frequency)
  np.testing.assert_allclose(weights[[0, 1, 2, 4]], median / frequency, rtol=1e-6)
  assert weights[3] == 0.0  # a class without pixels
  np.testing.assert_allclose(training.class_balance_weights(counts, 0.5), np.sqrt(weights), rtol=1e-6)
  np.testing.assert_allclose(training.class_balance_weights(counts, 0.0)[[0, 1, 2, 4]], 1.0)
  with pytest.raises(ValueError, match='no labelled pixel'):
    training.class_balance_weights(np.zeros(3), 1.0)


def test_poly_schedule_with_warmup():
  config = support.load_test_config(**{'optimizer.lr': 0.1, 'optimizer.end_lr': 0.001, 'optimizer.power': 0.9,
                                       'optimizer.warmup': 10, 'num_steps': 110})
  schedule = training.learning_rate_schedule(config)
  np.testing.assert_allclose(float(schedule(0)), 0.0, atol=1e-9)
  np.testing.assert_allclose(float(schedule(5)), 0.05, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(10)), 0.1, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(60)), (0.1 - 0.001) * 0.5 ** 0.9 + 0.001, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(110)), 0.001, rtol=1e-5)


def test_sgd_weight_decay_is_added_to_the_gradient():
  config = support.load_test_config(**{'optimizer.momentum': 0.0, 'optimizer.weight_decay': 0.5,
                                       'optimizer.lr': 0.1, 'optimizer.end_lr': 0.1})
  tx = training.make_optimizer(config, training.learning_rate_schedule(config))
  params = {'conv': {'kernel': jnp.ones(3)}, 'bn': {'scale': jnp.full(2, 2.0)}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates['conv']['kernel']), -0.1 * (1 + 0.5), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(updates['bn']['scale']), -0.1 * (1 + 0.5 * 2.0), rtol=1e-6)
  config.optimizer.weight_decay_on = 'kernels'
  tx = training.make_optimizer(config, training.learning_rate_schedule(config))
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates['bn']['scale']), -0.1, rtol=1e-6)


def _abstract_step(config):
  """Traces one train_step of `config` (no compilation): (state, metrics) shapes, and the jaxpr text."""
  model = models.build(config.model, 4)
  schedule = training.learning_rate_schedule(config)
  tx = training.make_optimizer(config, schedule)
  state = training.abstract_train_state(config, model, tx)
  b, (t, h, w) = 2, (config.data.clip_length, *config.data.crop_size)
  batch = {'frames': jax.ShapeDtypeStruct((b, t, h, w, 3), jnp.float32),
           'labels': jax.ShapeDtypeStruct((b, t, h, w), jnp.int32),
           'labelled': jax.ShapeDtypeStruct((b, t), bool), 'sequence_start': jax.ShapeDtypeStruct((b, t), bool)}
  step = training.make_train_step(config, schedule, has_memory=True)
  rng = jax.random.key(0)
  shapes = jax.eval_shape(step, state, batch, rng)
  jaxpr = str(jax.make_jaxpr(step)(state, batch, rng))
  return state, shapes, jaxpr


def test_remat_and_bfloat16_options_trace_with_the_same_parameters():
  config = support.load_test_config()
  state, (new_state, metrics), jaxpr = _abstract_step(config)
  assert 'checkpoint' not in jaxpr and 'remat' not in jaxpr
  config.model.remat = True
  config.compute_dtype = 'bfloat16'
  assert config.model.dtype == 'bfloat16'  # linked
  remat_state, (remat_new, remat_metrics), remat_jaxpr = _abstract_step(config)
  assert 'checkpoint' in remat_jaxpr or 'remat' in remat_jaxpr  # the backbone is rematerialised
  assert 'bf16' in remat_jaxpr
  # Same parameter tree, parameters and optimizer state stay float32, metrics float32 scalars.
  assert checkpoints.flat_shapes(state) == checkpoints.flat_shapes(remat_state) == \
      checkpoints.flat_shapes(remat_new)
  assert all(m.dtype == jnp.float32 and m.shape == () for m in remat_metrics.values())


def test_init_from_converted_encoder(tmp_path):
  from ma_resnet.convert.checkpoint_io import make_metadata, save_converted
  config = support.load_test_config()
  model = models.build(config.model, 4)
  tx = training.make_optimizer(config, training.learning_rate_schedule(config))
  state = training.create_train_state(config, model, tx, jax.random.key(0))
  rng = np.random.default_rng(0)
  other = lambda tree: jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), tree)
  backbone = {'params': other(state.params['backbone']), 'batch_stats': other(state.batch_stats['backbone'])}
  meta = make_metadata(depth=18, variant='torchvision', framework='torchvision', converter='test',
                       source_file=None, num_classes=None)
  path = save_converted(backbone, meta, tmp_path / 'r18')
  loaded = warm_start.load_pretrained_encoder(state, path, config.model)
  for a, b in zip(jax.tree.leaves(loaded.params['backbone']), jax.tree.leaves(backbone['params'])):
    np.testing.assert_array_equal(np.asarray(a), b)
  # Everything else is untouched.
  for a, b in zip(jax.tree.leaves(loaded.params['head']), jax.tree.leaves(state.params['head'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  config.model.depth = 34
  with pytest.raises(checkpoints.CheckpointMismatchError, match='ResNet18.*ResNet34'):
    warm_start.load_pretrained_encoder(state, path, config.model)
  # Right depth in the metadata, wrong tree: the paths are named.
  config.model.depth = 18
  broken = {'params': dict(backbone['params']), 'batch_stats': backbone['batch_stats']}
  del broken['params']['stage1']
  path2 = save_converted(broken, meta, tmp_path / 'r18_broken')
  with pytest.raises(checkpoints.CheckpointMismatchError, match='missing in the checkpoint.*params/stage1'):
    warm_start.load_pretrained_encoder(state, path2, config.model)
  # A whole converted ResNet18 initialises a model that builds only stem and stage 1 (test config): the
  # stages it does not build are dropped.
  assert set(state.params['backbone']) == {'stem', 'stage1'}
  shapes = jax.eval_shape(models.ResNet(depth=18).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  whole = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), dict(shapes))
  path3 = save_converted(whole, meta, tmp_path / 'r18_whole')
  loaded = warm_start.load_pretrained_encoder(state, path3, config.model)
  np.testing.assert_array_equal(np.asarray(loaded.params['backbone']['stage1']['block0']['conv1']['conv']['kernel']),
                                whole['params']['stage1']['block0']['conv1']['conv']['kernel'])


# ---------------------------------------------------------------------------------------------------------
# Runs (share the reference run of test_training_support).


def test_four_devices_match_one_device():
  reference = support.reference_run()
  workdir = os.path.join(support.session_dir(), 'four_devices')
  # Same global batch of 4 clips, one per device; validation at the end, streamed on the 4 devices.
  result = support.run_train(workdir, '--config.num_steps=4', '--config.eval_every=0', devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  one, four = support.read_metrics(reference), support.read_metrics(workdir)
  for step in range(1, 5):
    np.testing.assert_allclose(four[step]['loss'], one[step]['loss'], rtol=1e-5, atol=1e-6)
  a = checkpoints.TrainCheckpoints(os.path.join(reference, 'checkpoints')).restore_variables(4)
  b = checkpoints.TrainCheckpoints(os.path.join(workdir, 'checkpoints')).restore_variables(4)
  worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
              zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert worst <= 1e-5, worst
  # The sharded evaluation scores the 4-device checkpoint as a 1-device evaluation does.
  config = support.load_test_config()
  model = models.build(config.model, data_lib.num_classes(config.data))
  metrics = evaluation.Evaluator(model, config.data, 'val', lanes=1).evaluate(b)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    sharded = [json.loads(line) for line in f if 'eval/miou' in line][-1]
  np.testing.assert_allclose(sharded['eval/miou'], metrics.miou, rtol=1e-6)
  # The video metrics too (4 lanes on 4 devices vs 1 lane): the label-free consistency, logged as eval/consistency.
  np.testing.assert_allclose(sharded['eval/consistency'], metrics.video['consistency'], rtol=1e-6)


def test_unfinished_checkpoint_is_ignored_and_training_resumes_from_the_previous_one():
  reference = support.reference_run()
  last = support.REFERENCE_STEPS
  workdir = support.copy_workdir(reference, 'partial_write')
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  # A write of step `last` that was killed before Orbax renamed it: a temporary folder, files cut short.
  tmp = os.path.join(ckpt_dir, f'{last}.orbax-checkpoint-tmp-1700000000000000')
  shutil.move(os.path.join(ckpt_dir, str(last)), tmp)
  for root, _, files in os.walk(tmp):
    for name in files[: len(files) // 2 + 1]:
      with open(os.path.join(root, name), 'r+b') as f:
        f.truncate(max(os.path.getsize(os.path.join(root, name)) // 2, 0))
  store = checkpoints.TrainCheckpoints(ckpt_dir)
  assert store.latest_step() == last - 2
  store.close()

  config = support.load_test_config(num_steps=last)
  result = loop.train_and_evaluate(config, workdir, progress=False)
  assert result.step == last
  assert not any('orbax-checkpoint-tmp' in n for n in os.listdir(ckpt_dir))
  ref, got = support.read_metrics(reference), support.read_metrics(workdir)
  assert sorted(got) == list(range(1, last + 1))
  for step in (last - 1, last):
    assert got[step]['loss'] == ref[step]['loss'], step


class _PoisonedIterator:
  """Wraps the training iterator: frames become NaN from the `after`-th batch on."""

  def __init__(self, inner, after):
    self._inner, self._after, self._count = inner, after, 0

  def __next__(self):
    batch = next(self._inner)
    self._count += 1
    if self._count > self._after:
      batch = dict(batch, frames=np.full_like(batch['frames'], np.nan))
    return batch

  def __iter__(self):
    return self

  def __getattr__(self, name):  # get_state / set_state / start_prefetch
    return getattr(self._inner, name)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(monkeypatch):
  reference = support.reference_run()
  last = support.REFERENCE_STEPS
  workdir = support.copy_workdir(reference, 'nan')
  original = loop.data_lib.make_train_iterator
  monkeypatch.setattr(loop.data_lib, 'make_train_iterator',
                      lambda *a, **k: _PoisonedIterator(original(*a, **k), after=1))
  config = support.load_test_config(num_steps=last + 6, log_every=4)
  with pytest.raises(training.NonFiniteLossError, match=rf'loss is nan at step {last + 2}.*kept.*step {last}'):
    loop.train_and_evaluate(config, workdir, progress=False)
  store = checkpoints.TrainCheckpoints(os.path.join(workdir, 'checkpoints'))
  assert store.latest_step() == last
  variables = store.restore_variables(last)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(variables))
  store.close()
  # The good step before the NaN is logged, nothing after it.
  assert max(support.read_metrics(workdir)) == last + 1


def test_checkpoints_keep_the_latest_and_the_best_and_restore_the_data_position(tmp_path):
  config = support.load_test_config()
  state = {'step': jnp.zeros((), jnp.int32), 'params': {'w': jnp.arange(3.0)}}
  iterator = data_lib.make_train_iterator(config.data, batch_size=2, seed=0, shard_index=0,
                                                   shard_count=1)
  store = checkpoints.TrainCheckpoints(str(tmp_path / 'checkpoints'), keep=2)
  assert store.latest_step() is None and not (tmp_path / 'checkpoints').exists()  # reading writes nothing
  store.open_for_writing(config)
  for step, miou in ((2, 0.5), (4, None), (6, 0.3), (8, None)):
    next(iterator)
    state = dict(state, step=jnp.asarray(step), params={'w': jnp.arange(3.0) + step})
    store.save(step, state, iterator, metrics=None if miou is None else {'miou': miou})
  store.close()
  reader = checkpoints.TrainCheckpoints(str(tmp_path / 'checkpoints'), keep=2)
  assert reader.all_steps() == [2, 6, 8]  # the latest two, and the best by mIoU
  assert reader.best_step() == 2 and reader.latest_step() == 8
  assert reader.stored_config(8)['num_steps'] == config.num_steps
  # The iterator restored from step 8 continues with the 5th batch, as the saved one would.
  fresh = data_lib.make_train_iterator(config.data, batch_size=2, seed=0, shard_index=0, shard_count=1)
  restored = reader.restore(8, jax.eval_shape(lambda: state), fresh)
  np.testing.assert_array_equal(np.asarray(restored['params']['w']), np.arange(3.0) + 8)
  np.testing.assert_array_equal(next(fresh)['frames'], next(iterator)['frames'])
  reader.close()


def test_multi_process_launch_detection():
  from ma_resnet import parallel
  assert not parallel.multi_process_launch_detected({})
  assert not parallel.multi_process_launch_detected({'SLURM_NTASKS': '1'})
  assert parallel.multi_process_launch_detected({'SLURM_NTASKS': '4'})
  assert parallel.multi_process_launch_detected({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'})


def test_only_what_the_head_reads_is_built_and_every_statistic_trains():
  # configs/test.py: the FCN head reads stage1 only, so the backbone stops after stage 1: stages 2-4 have no
  # parameters and no batch-norm statistics at all, and every statistic that exists changes in training.
  reference = support.reference_run()
  store = checkpoints.TrainCheckpoints(os.path.join(reference, 'checkpoints'))
  early, late = store.restore_variables(2), store.restore_variables(16)
  store.close()
  for collection in ('params', 'batch_stats'):
    assert set(early[collection]['backbone']) == {'stem', 'stage1'}
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(early['batch_stats'])[0],
                          jax.tree.leaves(late['batch_stats'])):
    assert not np.array_equal(np.asarray(a), np.asarray(b)), f'{jax.tree_util.keystr(path)} never updated'


# ---------------------------------------------------------------------------------------------------------
# Parameter groups, frozen parts, AdamW, init_from a previous run (the staged recipes).


def _steps(config, n=2):
  model = models.build(config.model, 4)
  schedule = training.learning_rate_schedule(config)
  tx = training.make_optimizer(config, schedule)
  state = training.create_train_state(config, model, tx, jax.random.key(0))
  rng = np.random.default_rng(0)
  b, t, (h, w) = 2, config.data.clip_length, config.data.crop_size
  batch = {'frames': jnp.asarray(rng.normal(size=(b, t, h, w, 3)), jnp.float32),
           'labels': jnp.asarray(rng.integers(0, 4, size=(b, t, h, w)), jnp.int32),
           'labelled': jnp.ones((b, t), bool), 'sequence_start': jnp.zeros((b, t), bool).at[:, 0].set(True)}
  step = jax.jit(training.make_train_step(config, schedule, has_memory=True))
  new = state
  for _ in range(n):
    new, _ = step(new, batch, jax.random.key(1))
  return state, new


def _changed(a, b) -> bool:
  return any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_frozen_parts_and_lr_multipliers():
  config = support.load_test_config(**{'model.frozen': ('backbone',), 'optimizer.lr_multipliers': {'head': 0.5},
                                       'optimizer.momentum': 0.0, 'optimizer.weight_decay': 1e-3})
  before, after = _steps(config, n=1)
  # The frozen backbone: no update (no weight decay either), batch norm in eval mode (statistics unchanged).
  assert not _changed(before.params['backbone'], after.params['backbone'])
  assert not _changed(before.batch_stats['backbone'], after.batch_stats['backbone'])
  assert _changed(before.params['temporal'], after.params['temporal'])
  # Plain SGD: the head's update is half what the same gradient would give at the base learning rate.
  reference = support.load_test_config(**{'model.frozen': ('backbone',), 'optimizer.momentum': 0.0,
                                          'optimizer.weight_decay': 1e-3})
  _, full = _steps(reference, n=1)
  delta = lambda s: np.asarray(s.params['head']['classifier']['conv']['kernel'] -
                               before.params['head']['classifier']['conv']['kernel'])
  np.testing.assert_allclose(delta(after), 0.5 * delta(full), rtol=1e-4, atol=1e-9)


def test_adamw_with_clipping_trains():
  config = support.load_test_config(**{'optimizer.name': 'adamw', 'optimizer.lr': 1e-3, 'optimizer.end_lr': 1e-3,
                                       'optimizer.weight_decay': 1e-4, 'optimizer.grad_clip_norm': 0.1})
  before, after = _steps(config)
  assert _changed(before.params, after.params)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(after.params))


def test_init_from_a_previous_run_takes_the_shared_variables(tmp_path):
  reference = support.reference_run()  # configs/test.py: PCMA + FCN head
  config = support.load_test_config(**{'model.temporal': 'tma', 'model.tma.stage': 'stage1',
                                       'model.tma.memory_length': 1, 'model.tma.channels': 64,
                                       'model.tma.key_channels': 8, 'model.tma.value_channels': 8})
  model = models.build(config.model, 4)
  tx = training.make_optimizer(config, training.learning_rate_schedule(config))
  state = training.create_train_state(config, model, tx, jax.random.key(3))
  loaded, report = warm_start.init_from_run(state, reference)
  run = runs.load_run(reference)
  np.testing.assert_array_equal(np.asarray(loaded.params['backbone']['stem']['conv1']['conv']['kernel']),
                                np.asarray(run.variables['params']['backbone']['stem']['conv1']['conv']['kernel']))
  assert any(k.startswith('params/temporal/bottleneck') for k in report['new'])
  assert not any(k.startswith('params/temporal') for k in report['loaded'])  # PCMA's are not TMA's
  np.testing.assert_array_equal(np.asarray(loaded.params['temporal']['bottleneck']['conv']['kernel']),
                                np.asarray(state.params['temporal']['bottleneck']['conv']['kernel']))
  other = support.load_test_config(**{'model.head_options': {'channels': 24, 'num_convs': 1,
                                                             'concat_input': False, 'in_stage': 'stage1'}})
  other_model = models.build(other.model, 4)
  other_state = training.create_train_state(other, other_model, tx, jax.random.key(3))
  with pytest.raises(checkpoints.CheckpointMismatchError, match='other shapes'):
    warm_start.init_from_run(other_state, reference)
