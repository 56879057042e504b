"""Evaluation protocols: the window grid, slide / flip / scales against direct computations, STF pairing, config
and eval.py checks, the CamVid test lists, the synthetic test split, compare's grouping by protocol."""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import test_training_support as support
from ma_resnet import compare, evaluation, inference, models, protocols, train_config
from ma_resnet import data as data_lib
from ma_resnet.errors import ConfigError
from ma_resnet.models.ops import resize_bilinear
from ma_resnet.protocols import EvalProtocol
from test_predict import _write_random_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_window_grid_is_mmseg_slide_inference():
  # TMANet CamVid (720x960, 640 / 512): the last window is pushed back inside the frame.
  assert protocols.window_grid((720, 960), (640, 640), (512, 512)) == [
      (0, 640, 0, 640), (0, 640, 320, 960), (80, 720, 0, 640), (80, 720, 320, 960)]
  # TMANet Cityscapes (1024x2048, 769 / 513): h_grids = (1024-769+512)//513+1 = 2, w_grids = 1791//513+1 = 4.
  rows = sorted({(y1, y2) for y1, y2, _, _ in protocols.window_grid((1024, 2048), (769, 769), (513, 513))})
  cols = sorted({(x1, x2) for _, _, x1, x2 in protocols.window_grid((1024, 2048), (769, 769), (513, 513))})
  assert rows == [(0, 769), (255, 1024)] and cols == [(0, 769), (513, 1282), (1026, 1795), (1279, 2048)]
  # An exact multiple: no extra window; a frame smaller than the crop: one window clipped to it (no padding).
  assert protocols.window_grid((1024, 512), (512, 512), (512, 512)) == [(0, 512, 0, 512), (512, 1024, 0, 512)]
  assert protocols.window_grid((300, 400), (640, 640), (512, 512)) == [(0, 300, 0, 400)]
  for size, crop, stride in (((37, 53), (16, 20), (7, 9)), ((5, 90), (8, 32), (8, 31))):
    grid = protocols.window_grid(size, crop, stride)
    views = protocols.ScaleViews(1.0, size, (False,), tuple(grid))
    assert protocols.window_counts(views).min() >= 1  # every pixel scored
    assert {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in grid} == {views.window_size}
  assert protocols.scaled_size((720, 960), 0.75) == (540, 720) and protocols.scaled_size((5, 7), 0.5) == (3, 4)


# ---------------------------------------------------------------------------------------------------------
# Against direct computations, on a tiny PCMA model (memory of 2 frames) and a sequence with a reset.

@pytest.fixture(scope='module')
def pcma():
  config = support.load_test_config()
  model = models.build(config.model, 4)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1, 32, 32, 3)))
  frames = np.asarray(jax.random.normal(jax.random.key(1), (5, 2, 32, 48, 3)))  # (T, B, H, W, 3)
  reset = np.array([[True, True], [False, False], [False, True], [False, False], [True, False]])
  return model, variables, frames, reset


def _stream_views(model, variables, frames, reset, protocol, out_size):
  """segment_views over the sequence: scores (T, B, *out_size, K)."""
  streams = protocols.plan(protocol, frames.shape[2:4])
  batch = frames.shape[1]
  memories = tuple(model.init_memory(batch * v.num_views, v.window_size) for v in streams)
  step = jax.jit(functools.partial(inference.segment_views, model, streams, out_size=out_size))
  scores = []
  for x, r in zip(frames, reset):
    s, memories, _ = step(variables, x, memories, r)
    scores.append(np.asarray(s))
  return np.stack(scores)


def _stream_logits(model, variables, frames, reset):
  """model.step over the sequence, memory carried: logits (T, B, h, w, K)."""
  memory = model.init_memory(frames.shape[1], frames.shape[2:4])
  step = jax.jit(functools.partial(model.apply, method=model.step))
  out = []
  for x, r in zip(frames, reset):
    o = step(variables, jnp.asarray(x), memory, jnp.asarray(r))
    memory = o.memory
    out.append(np.asarray(o.logits, np.float64))
  return np.stack(out)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _atol(reference) -> float:
  return 1e-5 * max(1.0, float(np.abs(reference).max()))


def test_one_window_covering_the_frame_is_the_whole_frame_memory_path(pcma):
  model, variables, frames, reset = pcma
  want = _softmax(_stream_logits(model, variables, frames, reset))
  for protocol in (EvalProtocol(mode='slide', crop=(64, 64), stride=(8, 8)), EvalProtocol(scales=(1.0,)),
                   EvalProtocol(mode='slide', crop=(32, 48), stride=(32, 48))):
    got = _stream_views(model, variables, frames, reset, protocol, (32, 48))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def test_slide_windows_each_carry_their_own_memory(pcma):
  """Each window position is a sequence of its own (its crop of every frame, its own memory); the merged logits
  are the per-pixel mean over the windows that cover it."""
  model, variables, frames, reset = pcma
  protocol = EvalProtocol(mode='slide', crop=(24, 32), stride=(8, 16))
  grid = protocols.window_grid((32, 48), (24, 32), (8, 16))
  assert len(grid) == 4
  total = np.zeros(frames.shape[:4] + (4,))
  count = np.zeros((32, 48, 1))
  for y1, y2, x1, x2 in grid:
    total[:, :, y1:y2, x1:x2] += _stream_logits(model, variables, frames[:, :, y1:y2, x1:x2], reset)
    count[y1:y2, x1:x2] += 1
  want = _softmax(total / count)
  got = _stream_views(model, variables, frames, reset, protocol, (32, 48))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  # Not the whole-frame path: the memory and the receptive field differ per window.
  assert np.abs(want - _softmax(_stream_logits(model, variables, frames, reset))).max() > 1e-3


def test_flip_and_scales(pcma):
  model, variables, frames, reset = pcma
  flip = EvalProtocol(flip=True)
  scores = _stream_views(model, variables, frames, reset, flip, (32, 48))
  mirrored = _stream_views(model, variables, frames[:, :, :, ::-1], reset, flip, (32, 48))
  np.testing.assert_allclose(mirrored, scores[:, :, :, ::-1], rtol=0, atol=1e-6)
  plain = _softmax(_stream_logits(model, variables, frames, reset))
  flipped = _softmax(_stream_logits(model, variables, frames[:, :, :, ::-1], reset))[:, :, :, ::-1]
  np.testing.assert_allclose(scores, (plain + flipped) / 2, rtol=0, atol=1e-6)
  # Two scales: each its own stream (its own size and memory), probabilities at the label size averaged.
  two = _stream_views(model, variables, frames, reset, EvalProtocol(scales=(0.5, 1.0)), (32, 48))
  half = np.asarray(resize_bilinear(jnp.asarray(frames), (16, 24)))
  half_logits = np.asarray(resize_bilinear(jnp.asarray(_stream_logits(model, variables, half, reset), jnp.float32),
                                           (32, 48)), np.float64)
  np.testing.assert_allclose(two, (_softmax(half_logits) + plain) / 2, rtol=0, atol=1e-5)
  assert np.abs(two - plain).max() > 1e-3


# ---------------------------------------------------------------------------------------------------------
# The Evaluator: whole vs slide on the synthetic split, and STF (delay 1) with slide.


def _evaluate(config, protocol, model=None, variables=None, lanes=2):
  model = model or models.build(config.model, data_lib.num_classes(config.data))
  if variables is None:
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1, 32, 32, 3)))
  seen = []
  metrics = evaluation.Evaluator(model, config.data, 'val', lanes=lanes, protocol=protocol).evaluate(
      variables, callback=seen.append)
  return metrics, {(f.sequence_index, f.frame_index): f.prediction for f in seen}


def test_evaluator_slide_covering_the_frame_equals_whole():
  config = support.load_test_config()
  whole, whole_predictions = _evaluate(config, None)
  slide, slide_predictions = _evaluate(config, EvalProtocol(mode='slide', crop=(64, 64), stride=(32, 32)))
  assert whole_predictions.keys() == slide_predictions.keys() and len(whole_predictions) == 12
  for key, prediction in whole_predictions.items():
    np.testing.assert_array_equal(slide_predictions[key], prediction)
  np.testing.assert_array_equal(slide.confusion, whole.confusion)
  assert whole.protocol == {'mode': 'whole', 'crop': None, 'stride': None, 'flip': False, 'scales': [1.0],
                            'split': 'val', 'list': 'all'}
  assert slide.protocol['mode'] == 'slide' and slide.protocol['crop'] == [64, 64]
  assert 'protocol: slide 64x64 stride 32x32' in slide.table() and 'protocol' not in whole.table()


def test_stf_with_slide_gives_every_frame_its_own_prediction():
  """STF returns frame t one step late: with 2 windows per frame every frame still gets the merge of its own two
  windows' outputs, each computed as a clip of that window (aligned outputs)."""
  from test_stf import tiny_config
  config = support.load_test_config(**{'data.synthetic.height': 64, 'data.synthetic.width': 48,
                                       'data.crop_size': (64, 48), 'data.synthetic.num_val_sequences': 2})
  config.model = tiny_config()
  model = models.build(config.model, 4)
  assert model.delay == 1
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1, 32, 48, 3), np.float32))
  protocol = EvalProtocol(mode='slide', crop=(32, 48), stride=(32, 48))
  metrics, predictions = _evaluate(config, protocol, model, variables)
  sequences = data_lib.make_sequences(config.data, 'val')
  stream = list(data_lib.make_eval_stream(config.data, 'val'))
  assert len(predictions) == metrics.frames == len(stream) == 8
  apply = jax.jit(model.apply)
  for index in range(sequences.num_sequences):
    clip = np.concatenate([it['frames'][0] for it in stream if it['sequence_index'] == index])  # (T, H, W, 3)
    halves = [np.asarray(apply(variables, clip[None, :, y1:y2]).logits[0])
              for y1, y2 in ((0, 32), (32, 64))]
    want = np.concatenate(halves, axis=1).argmax(-1)
    for t in range(len(clip)):
      np.testing.assert_array_equal(predictions[(index, t)], want[t])


# ---------------------------------------------------------------------------------------------------------
# Configuration, eval.py, data, compare.


@pytest.mark.parametrize('overrides, field', [
    ({'eval_mode': 'tile'}, 'eval_mode'),
    ({'eval_crop': (16, 16)}, 'eval_crop'),
    ({'eval_mode': 'slide', 'eval_crop': (16, 16)}, 'eval_stride'),
    ({'eval_mode': 'slide', 'eval_crop': (16, 16), 'eval_stride': (32, 8)}, 'eval_stride'),
    ({'eval_mode': 'slide', 'eval_crop': (16, 16), 'eval_stride': (0, 8)}, 'eval_stride'),
    ({'eval_scales': ()}, 'eval_scales'),
    ({'eval_scales': (1.0, -0.5)}, 'eval_scales'),
    ({'data.camvid.frame_list': 'mine'}, 'data.camvid.frame_list'),
])
def test_bad_protocol_fields_are_one_line_naming_the_field(overrides, field):
  config = support.load_test_config(**overrides)
  with pytest.raises(ConfigError) as error:
    train_config.validate(config)
  assert field in str(error.value) and '\n' not in str(error.value)


def test_a_good_protocol_validates_with_its_view_sizes():
  config = support.load_test_config(eval_mode='slide', eval_crop=(24, 24), eval_stride=(16, 16), eval_flip=True,
                                    eval_scales=(0.75, 1.0))
  train_config.validate(config, eval_frame_size=(32, 32))
  assert EvalProtocol.from_config(config) == EvalProtocol('slide', (24, 24), (16, 16), True, (0.75, 1.0))
  assert EvalProtocol.from_config(config, mode='whole') == EvalProtocol(flip=True, scales=(0.75, 1.0))
  assert EvalProtocol.from_config({}).plain  # a config from before the fields: whole frames


@pytest.fixture(scope='module')
def random_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('protocols') / 'ma')
  _write_random_run(workdir, support.load_test_config())
  return workdir


def test_eval_py_flags_score_a_run_another_way(random_run):
  command = [sys.executable, os.path.join(REPO, 'eval.py'), f'--workdir={random_run}', '--checkpoint=latest',
             '--mode=slide', '--crop=24,24', '--stride=8,8', '--flip', '--scales=0.75,1', '--vc_lengths=2']
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=support.subprocess_env())
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'protocol: slide 24x24 stride 8x8 + flip, scales 0.75,1' in result.stdout
  with open(os.path.join(random_run, 'eval_val.json')) as f:
    report = json.load(f)
  assert report['protocol'] == {'mode': 'slide', 'crop': [24, 24], 'stride': [8, 8], 'flip': True,
                                'scales': [0.75, 1.0], 'split': 'val', 'list': 'all'}
  bad = subprocess.run(command[:2] + [f'--workdir={random_run}', '--crop=24'], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env=support.subprocess_env())
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith('error: --crop must be H,W')


def test_compare_groups_runs_by_protocol(random_run, tmp_path, capsys):
  whole = str(tmp_path / 'whole')
  shutil.copytree(random_run, whole)
  os.remove(os.path.join(whole, 'eval_val.json'))
  evaluation.evaluate_run(whole, checkpoint='latest', vc_lengths=(2,))
  slide = str(tmp_path / 'slide')
  shutil.copytree(whole, slide)
  evaluation.evaluate_run(slide, checkpoint='latest', vc_lengths=(2,), mode='slide', crop=(16, 16), stride=(16, 16))
  old = str(tmp_path / 'old')  # a report from before protocols were recorded counts as whole frames
  shutil.copytree(whole, old)
  path = os.path.join(old, 'eval_val.json')
  with open(path) as f:
    report = json.load(f)
  del report['protocol']
  with open(path, 'w') as f:
    json.dump(report, f)
  assert compare.main([whole, old, slide, '--no-speed']) == compare.EXIT_USAGE
  err = capsys.readouterr().err
  assert 'whole frames: whole, old' in err and 'slide 16x16 stride 16x16: slide' in err
  assert compare.main([whole, old, slide, '--no-speed', '--group']) == 0
  assert capsys.readouterr().out.count('\n## ') == 2


def test_camvid_test_split_and_tmanet_list(tmp_path):
  from fake_trees import write_camvid_tree
  write_camvid_tree(tmp_path, {'test': {'Seq05VD': ['f00000', 'f00030', 'f00060'], '0001TP': ['008550']}})
  config = data_lib.default_data_config('camvid')
  config.root = str(tmp_path)
  segnet = data_lib.make_sequences(config, 'test')
  assert segnet.num_frames == 4 and segnet.sequence_lengths == (1, 3)
  config.camvid.frame_list = 'tmanet'
  tmanet = data_lib.make_sequences(config, 'test')
  assert tmanet.num_frames == 3 and tmanet.sequence_lengths == (1, 2)
  assert [tmanet.frame_number(1, p) for p in range(2)] == [30, 60]
  assert evaluation.frame_list(config) == 'tmanet'


def test_synthetic_test_split_is_long_enough_for_mvc16():
  config = data_lib.default_data_config('synthetic')
  test, val = data_lib.make_sequences(config, 'test'), data_lib.make_sequences(config, 'val')
  assert test.sequence_length(0) == 24 > 16 and val.sequence_length(0) == 8
  first = test.read_frame(3, 20)
  again = data_lib.make_sequences(config, 'test').read_frame(3, 20)
  np.testing.assert_array_equal(first.image, again.image)
  assert test.read_frame(0, 0).image.shape == (64, 64, 3)
