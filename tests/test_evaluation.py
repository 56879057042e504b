"""Evaluation: confusion-matrix scores, streaming with memory, eval.py report and overlays."""
from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

import test_training_support as support
from ma_resnet import checkpoints, evaluation, models, training, visualize
from ma_resnet import data as data_lib
from ma_resnet.models.ops import resize_bilinear


def test_confusion_matrix_and_scores():
  labels = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
  preds = np.array([[0, 1, 1, 1], [2, 0, 2, 3]])
  conf = evaluation.confusion_matrix(labels, preds, num_classes=4)
  assert conf.dtype == np.int64 and conf.sum() == 7
  assert conf[0, 0] == 1 and conf[0, 1] == 1 and conf[1, 1] == 2 and conf[1, 3] == 1
  assert conf[2, 2] == 1 and conf[2, 0] == 1
  iou = evaluation.iou_per_class(conf)
  np.testing.assert_allclose(iou[:4], [1 / 3, 2 / 4, 1 / 2, 0.0])
  np.testing.assert_allclose(evaluation.mean_iou(conf), np.mean([1 / 3, 2 / 4, 1 / 2, 0.0]))
  np.testing.assert_allclose(evaluation.pixel_accuracy(conf), 4 / 7)
  # A class in neither ground truth nor prediction has no IoU and is left out of the mean.
  conf5 = evaluation.confusion_matrix(labels, preds, num_classes=5)
  assert np.isnan(evaluation.iou_per_class(conf5)[4])
  np.testing.assert_allclose(evaluation.mean_iou(conf5), evaluation.mean_iou(conf))
  with pytest.raises(ValueError, match='outside'):
    evaluation.confusion_matrix(np.array([7]), np.array([0]), num_classes=4)


def _independent_miou(labels, predictions, num_classes):
  """mIoU from boolean masks, frame list by frame list (no confusion matrix)."""
  inter = np.zeros(num_classes)
  union = np.zeros(num_classes)
  for label, pred in zip(labels, predictions):
    valid = label != 255
    for k in range(num_classes):
      inter[k] += np.sum((label == k) & (pred == k) & valid)
      union[k] += np.sum(((label == k) | (pred == k)) & valid)
  present = union > 0
  return float(np.mean(inter[present] / union[present]))


def _evaluate_reference_run(config, lanes: int = 1):
  """The reference run's latest checkpoint streamed over val with `config`: (metrics, frames seen, model,
  variables, num_classes)."""
  num_classes = data_lib.num_classes(config.data)
  model = models.build(config.model, num_classes)
  store = checkpoints.TrainCheckpoints(os.path.join(support.reference_run(), 'checkpoints'))
  variables = store.restore_variables(store.latest_step())
  store.close()
  seen = []
  metrics = evaluation.Evaluator(model, config.data, 'val', lanes=lanes).evaluate(variables, callback=seen.append)
  return metrics, seen, model, variables, num_classes


@pytest.mark.parametrize('lanes', [1, 2])
def test_streaming_miou_equals_an_independent_numpy_computation(lanes):
  config = support.load_test_config()
  metrics, seen, model, variables, num_classes = _evaluate_reference_run(config, lanes)
  sequences = data_lib.make_sequences(config.data, 'val')
  assert metrics.frames == len(seen) == sequences.num_frames
  # Every sequence in time order, each frame once.
  by_sequence = {}
  for frame in seen:
    by_sequence.setdefault(frame.sequence, []).append(frame.frame_index)
  assert all(v == list(range(len(v))) for v in by_sequence.values())
  labels = [f.label for f in seen if f.labelled]
  predictions = [f.prediction for f in seen if f.labelled]
  np.testing.assert_allclose(metrics.miou, _independent_miou(labels, predictions, num_classes), rtol=1e-12)

  # The predictions are the model's: one sequence replayed through the clip interface gives the same.
  first = sequences.sequence_names[0]
  frames = np.stack([f.frames for f in seen if f.sequence == first])[None]
  out = jax.jit(lambda v, c: model.apply(v, c))(variables, frames)
  clip_predictions = np.argmax(np.asarray(out.logits[0]), axis=-1)
  stream_predictions = np.stack([f.prediction for f in seen if f.sequence == first])
  assert np.mean(clip_predictions == stream_predictions) > 0.999


def test_native_labels_score_upsampled_logits_of_resized_frames():
  config = support.load_test_config(**{'data.eval_size': (16, 16), 'data.eval_native_labels': True})
  metrics, seen, model, variables, num_classes = _evaluate_reference_run(config)
  sequences = data_lib.make_sequences(config.data, 'val')
  native = sequences.read_frame(0, 0)
  assert seen[0].frames.shape[:2] == (16, 16)
  assert seen[0].label.shape == seen[0].prediction.shape == native.label.shape == (32, 32)
  np.testing.assert_array_equal(seen[0].label, native.label)
  labels = [f.label for f in seen if f.labelled]
  predictions = [f.prediction for f in seen if f.labelled]
  np.testing.assert_allclose(metrics.miou, _independent_miou(labels, predictions, num_classes), rtol=1e-12)
  # The predictions are the 16x16 logits resized (bilinear) to 32x32.
  first = sequences.sequence_names[0]
  frames = np.stack([f.frames for f in seen if f.sequence == first])[None]
  logits = jax.jit(lambda v, c: model.apply(v, c).logits)(variables, frames)[0]
  upsampled = np.argmax(np.asarray(resize_bilinear(logits, (32, 32))), axis=-1)
  stream = np.stack([f.prediction for f in seen if f.sequence == first])
  assert np.mean(upsampled == stream) > 0.999


def test_eval_cli_writes_report_table_and_overlays():
  workdir = support.copy_workdir(support.reference_run(), 'eval_cli')
  result = support.run_train(workdir, '--overlays=3', '--checkpoint=latest', script='eval.py')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'mIoU' in result.stdout and 'object_1' in result.stdout
  with open(os.path.join(workdir, 'eval_val.json')) as f:
    report = json.load(f)
  assert report['checkpoint']['step'] == support.REFERENCE_STEPS
  conf = np.array(report['confusion_matrix'])
  np.testing.assert_allclose(report['miou'], evaluation.mean_iou(conf))
  assert set(report['per_class_iou']) == {'background', 'object_1', 'object_2', 'object_3'}
  assert len(report['overlays']) == 3
  for path in report['overlays']:
    image = np.asarray(Image.open(path))
    assert image.ndim == 3 and image.shape[0] == 32 and image.shape[1] > 3 * 32
  assert report['input_size'] == 'native' and report['labels'] == 'native'

  # Every 3rd frame of the stream, at native label size when the frames are resized.
  shutil.rmtree(os.path.join(workdir, 'overlays'))
  result = support.run_train(workdir, '--overlays=2', '--overlay_stride=3', '--checkpoint=latest',
                             '--native_labels', script='eval.py')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'eval_val.json')) as f:
    report = json.load(f)
  sequences = data_lib.make_sequences(support.load_test_config().data, 'val')
  stream = [(sequences.sequence_names[i], sequences.frame_number(i, p))
            for i in range(sequences.num_sequences) for p in range(sequences.sequence_length(i))]
  want = sorted(f'{name}_{number:06d}.png' for name, number in (stream[0], stream[3]))
  assert [os.path.basename(p) for p in report['overlays']] == want


def test_eval_cli_without_checkpoint_is_a_clear_error(tmp_path):
  result = support.run_train(str(tmp_path), script='eval.py')
  assert result.returncode != 0
  assert 'no checkpoint' in result.stderr and 'Traceback' not in result.stderr


def test_visualize_palette_and_overlay(tmp_path):
  palette = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)
  labels = np.array([[0, 1], [255, 1]])
  colors = visualize.colorize(labels, palette)
  np.testing.assert_array_equal(colors[0, 1], [255, 0, 0])
  np.testing.assert_array_equal(colors[1, 0], visualize.IGNORE_COLOR)
  image = np.full((2, 2, 3), 100, np.uint8)
  blended = visualize.overlay(image, labels, palette, alpha=0.5)
  np.testing.assert_array_equal(blended[0, 1], [178, 50, 50])
  np.testing.assert_array_equal(blended[1, 0], [100, 100, 100])
  path = visualize.save_png(str(tmp_path / 'a' / 'b.png'), visualize.panel(image, labels, labels, palette))
  assert Image.open(path).size == (2 * 3 + 2 * 4, 2)
  frames = (np.array([[[0.5, 0.5, 0.5]]], np.float32) - 0.2) / 0.25
  np.testing.assert_array_equal(visualize.denormalize(frames, (0.2,) * 3, (0.25,) * 3), [[[128, 128, 128]]])


def _stf_test_config(**overrides):
  """configs/test.py's data with a tiny non-causal model: the 'pspnet' extractor on stage 2 (4x4 features of the
  32x32 frames), STF in 2x2 blocks, the classifier on 'psp'."""
  return support.load_test_config(**{
      'model.temporal': 'stf', 'model.backbone': 'pspnet', 'model.head': 'classifier',
      'model.head_options': {'in_stage': 'psp'}, 'model.pspnet.stage': 'stage2', 'model.pspnet.channels': 16,
      'model.stf.block_size': (2, 2), 'model.stf.embedding_size': (4, 4), 'model.stf.ffn_channels': 8,
      **overrides})


@pytest.mark.parametrize('lanes', [1, 2])
def test_a_non_causal_model_scores_every_frame_against_its_own_label(lanes):
  """STF returns frame t's prediction when frame t+1 is fed: each prediction is paired with its frame (and label),
  a lane's next sequence ends its previous one, and a last step flushes the final frames."""
  config = _stf_test_config()
  num_classes = data_lib.num_classes(config.data)
  model = models.build(config.model, num_classes)
  assert model.delay == 1
  variables = jax.jit(model.init)(jax.random.key(3), np.zeros((1, 1, 32, 32, 3), np.float32))
  seen = []
  metrics = evaluation.Evaluator(model, config.data, 'val', lanes=lanes).evaluate(variables, callback=seen.append)
  sequences = data_lib.make_sequences(config.data, 'val')
  assert metrics.frames == len(seen) == sequences.num_frames
  by_sequence = {}
  for frame in seen:
    by_sequence.setdefault(frame.sequence, []).append(frame)
  for name, frames in by_sequence.items():
    assert [f.frame_index for f in frames] == list(range(len(frames)))
    clip = np.stack([f.frames for f in frames])[None]
    aligned = np.argmax(np.asarray(jax.jit(model.apply)(variables, clip).logits[0]), axis=-1)
    assert np.mean(aligned == np.stack([f.prediction for f in frames])) > 0.999, name
  labels = [f.label for f in seen if f.labelled]
  predictions = [f.prediction for f in seen if f.labelled]
  np.testing.assert_allclose(metrics.miou, _independent_miou(labels, predictions, num_classes), rtol=1e-12)


def test_key_frames_are_counted_and_scored_apart():
  """LERNet + THA (K = 2): evaluation reports the key frames (each sequence's frames 0, 2, 4, ...) and the non-key
  frames, with an mIoU for each kind; the two kinds' confusion matrices add up to the whole one."""
  config = support.load_test_config(**{
      'model.temporal': 'tha', 'model.backbone': 'lernet', 'model.head': 'classifier',
      'model.head_options': {'in_stage': 'high', 'dropout': 0.0}, 'model.tha.key_interval': 2,
      'model.lernet.dilations': (1, 2)})
  model = models.build(config.model, data_lib.num_classes(config.data))
  assert model.frame_kinds == ('key', 'non-key')
  variables = jax.jit(model.init)(jax.random.key(3), np.zeros((1, 1, 32, 32, 3), np.float32))
  metrics = evaluation.Evaluator(model, config.data, 'val', lanes=2).evaluate(variables)
  sequences = data_lib.make_sequences(config.data, 'val')
  lengths = [sequences.sequence_length(i) for i in range(sequences.num_sequences)]
  key_frames = sum((n + 1) // 2 for n in lengths)
  assert metrics.kind_frames == (key_frames, sum(lengths) - key_frames)
  assert sum(metrics.kind_labelled) == metrics.labelled_frames
  np.testing.assert_array_equal(metrics.kind_confusion.sum(0), metrics.confusion)
  kinds = {k['kind']: k for k in metrics.to_json()['frame_kinds']}
  assert kinds['key']['frames'] == key_frames and set(kinds) == {'key', 'non-key'}
  assert f'key frames: {key_frames} (' in metrics.table()
  assert metrics.scalars()['miou_non_key'] == kinds['non-key']['miou']  # TensorBoard / metrics.jsonl
