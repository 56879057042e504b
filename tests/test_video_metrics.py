"""Video metrics: mVC_n against a transcription of the VSPW reference loop, the streamed accumulator, the
label-free temporal consistency, and the Evaluator's report (`ma_resnet/video_metrics.py`)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ma_resnet import evaluation, video_metrics
from ma_resnet.video_metrics import VideoMetricOptions, VideoMetrics


def reference_get_common(labels, predictions, clip_num):
  """The VSPW authors' `get_common` (VC_perclip.py), transcribed loop for loop: windows i in range(L - n), each
  the AND over j = 1..n-1 of frame i == frame i + j, acc = sum(G and P) / sum(G) (numpy: 0/0 -> nan)."""
  h, w = labels[0].shape
  accs = []
  for i in range(len(labels) - clip_num):
    global_common = np.ones((h, w))
    predglobal_common = np.ones((h, w))
    for j in range(1, clip_num):
      common = labels[i] == labels[i + j]
      global_common = np.logical_and(global_common, common)
      pred_common = predictions[i] == predictions[i + j]
      predglobal_common = np.logical_and(predglobal_common, pred_common)
    pred = predglobal_common * global_common
    with np.errstate(invalid='ignore', divide='ignore'):
      acc = pred.sum() / global_common.sum()
    accs.append(acc)
  return accs


def reference_score(videos, clip_num):
  """The reference's main loop: videos of <= n frames skipped, acc pooled over all videos, then nanmean."""
  total = []
  for labels, predictions in videos:
    if len(labels) <= clip_num:
      continue
    total.extend(reference_get_common(labels, predictions, clip_num))
  return float(np.nanmean(np.array(total)))


def corrected_windows(labels, predictions, n, ignore=255):
  """The corrected form, written out directly: every window 0..L-n, ignore pixels out, a pixel counts where
  ground truth and prediction are constant and equal."""
  accs = []
  for i in range(len(labels) - n + 1):
    g, p = np.stack(labels[i:i + n]), np.stack(predictions[i:i + n])
    constant_g = np.all(g == g[0], axis=0) & (g[0] != ignore)
    good = constant_g & np.all(p == p[0], axis=0) & (p[0] == g[0])
    accs.append(good.sum() / constant_g.sum() if constant_g.sum() else math.nan)
  return accs


def assert_same(got, want):
  assert len(got) == len(want)
  np.testing.assert_allclose(np.array(got, np.float64), np.array(want, np.float64), rtol=0, atol=1e-15)
  assert [math.isnan(x) for x in got] == [bool(np.isnan(x)) for x in want]


def static_scene(frames=10, size=(6, 8)):
  g = np.zeros(size, np.int32)
  g[2:4, 3:6] = 1
  return [g.copy() for _ in range(frames)]


def moving_object(frames=12, size=(8, 12)):
  labels = []
  for t in range(frames):
    g = np.zeros(size, np.int32)
    g[2:5, t % 9: t % 9 + 3] = 2
    labels.append(g)
  return labels


def noisy(labels, rng, flip=0.1, classes=3):
  out = []
  for g in labels:
    p = g.copy()
    mask = rng.random(g.shape) < flip
    p[mask] = rng.integers(0, classes, mask.sum())
    out.append(p)
  return out


def cases():
  rng = np.random.default_rng(0)
  static = static_scene()
  moving = moving_object()
  changing = [np.full((5, 7), t % 2, np.int32) for t in range(11)]  # ground truth changes every frame
  with_ignore = moving_object(13)
  for t, g in enumerate(with_ignore):
    g[0, :] = 255
    g[-1, : t % 4] = 255
  return {
      'static, perfect': (static, [g.copy() for g in static]),
      'static, noisy': (static, noisy(static, rng)),
      'moving object': (moving, noisy(moving, rng, 0.05)),
      'moving object, static prediction': (moving, [moving[0].copy() for _ in moving]),
      'ground truth changes every frame': (changing, noisy(changing, rng)),
      'ignore pixels': (with_ignore, noisy(with_ignore, rng, 0.05)),
      'random': ([rng.integers(0, 2, (4, 5)) for _ in range(20)], [rng.integers(0, 2, (4, 5)) for _ in range(20)]),
  }


@pytest.mark.parametrize('name', list(cases()))
@pytest.mark.parametrize('n', [2, 3, 8])
def test_video_consistency_is_the_reference(name, n):
  labels, predictions = cases()[name]
  got = evaluation.video_consistency(labels, predictions, n)
  assert_same(got, reference_get_common(labels, predictions, n))
  assert len(got) == max(0, len(labels) - n)  # the last full window is skipped, as in the reference
  assert_same(video_metrics.video_consistency(labels, predictions, n, corrected=True),
              corrected_windows(labels, predictions, n))


def test_hand_made_values():
  static = static_scene(5)
  assert evaluation.video_consistency(static, static, 3) == [1.0, 1.0]
  # The prediction flickers on 2 of the 48 pixels in frame 1: those are not constant in windows 0 and 1.
  flicker = [g.copy() for g in static]
  flicker[1][0, :2] = 1
  assert evaluation.video_consistency(static, flicker, 3) == [46 / 48, 46 / 48]
  # A constant prediction counts whether or not it is right (the reference never compares p with g) ...
  wrong = [np.full_like(g, 5) for g in static]
  assert evaluation.video_consistency(static, wrong, 3) == [1.0, 1.0]
  # ... which the corrected form does (and it scores the last window too).
  assert video_metrics.video_consistency(static, wrong, 3, corrected=True) == [0.0, 0.0, 0.0]
  # Ground truth that changes every frame at every pixel: no window has a constant pixel -> nan.
  changing = [np.full((2, 2), t % 2) for t in range(5)]
  assert all(math.isnan(a) for a in evaluation.video_consistency(changing, changing, 2))


def test_videos_of_n_and_n_plus_one_frames():
  moving = moving_object(9)
  predictions = [g.copy() for g in moving]
  predictions[3][0, 0] = 1
  assert evaluation.video_consistency(moving[:8], predictions[:8], 8) == []      # L = n: no window
  assert evaluation.video_consistency(moving[:3], predictions[:3], 8) == []      # L < n
  got = evaluation.video_consistency(moving, predictions, 8)                     # L = n + 1: one window
  assert len(got) == 1
  assert_same(got, reference_get_common(moving, predictions, 8))
  assert len(video_metrics.video_consistency(moving[:8], predictions[:8], 8, corrected=True)) == 1


def test_ignore_pixels_are_an_ordinary_value_in_the_reference():
  # 4 pixels: ignore (255) throughout, class 1 throughout, two that change.
  g = np.array([[255, 1], [0, 0]])
  labels = [g, g, g.copy()]
  labels[1] = np.array([[255, 1], [1, 1]])
  predictions = [np.array([[3, 1], [0, 0]])] * 3   # constant everywhere; wrong on the ignore pixel
  # Reference: constant ground truth at the ignore pixel and at the class-1 pixel; both predicted constantly.
  assert evaluation.video_consistency(labels + [g], predictions + [predictions[0]], 3) == [1.0]
  # Corrected: the ignore pixel is left out; class 1 is constant and right.
  assert video_metrics.video_consistency(labels, predictions, 3, corrected=True) == [1.0]
  wrong = [np.array([[3, 2], [0, 0]])] * 3
  assert video_metrics.video_consistency(labels, wrong, 3, corrected=True) == [0.0]
  assert evaluation.video_consistency(labels + [g], wrong + [wrong[0]], 3) == [1.0]


def test_bad_inputs_are_named():
  static = static_scene(4)
  with pytest.raises(ValueError, match='3 predictions'):
    evaluation.video_consistency(static, static[:3], 2)
  with pytest.raises(ValueError, match='frame 2'):
    evaluation.video_consistency(static, static[:2] + [np.zeros((3, 3))] + static[3:], 2)
  with pytest.raises(ValueError, match='positive integer'):
    evaluation.video_consistency(static, static, 0)


def _stream(metrics: VideoMetrics, videos, lanes: int):
  """Plays `videos` on `lanes` interleaved streams as the Evaluator does (lane g: videos g, g + lanes, ...)."""
  queues = [[(v, t) for v in range(g, len(videos), lanes) for t in range(len(videos[v][0]))] for g in range(lanes)]
  for tick in range(max(len(q) for q in queues)):
    for lane, queue in enumerate(queues):
      if tick < len(queue):
        v, t = queue[tick]
        metrics.update(lane, v, t, videos[v][0][t], True, videos[v][1][t])


def test_pooled_nanmean_across_videos_and_the_streamed_accumulator():
  rng = np.random.default_rng(1)
  long = moving_object(30)
  short = static_scene(10, (8, 12))
  videos = [(long, noisy(long, rng, 0.02)), (short, noisy(short, rng, 0.3)), (short[:8], short[:8]),
            (short[:9], noisy(short[:9], rng, 0.3))]
  n = 8
  pooled = reference_score(videos, n)
  per_video = [np.nanmean(reference_get_common(g, p, n)) for g, p in videos if len(g) > n]
  assert abs(pooled - np.mean(per_video)) > 0.01  # the case where the pooled mean and the mean of means differ
  windows = [a for g, p in videos for a in evaluation.video_consistency(g, p, n)]
  np.testing.assert_allclose(np.nanmean(windows), pooled, rtol=1e-12)

  for lanes in (1, 3):
    metrics = VideoMetrics(3, VideoMetricOptions(vc_lengths=(n, 2), vc_corrected=True))
    _stream(metrics, videos, lanes)
    result = metrics.results(['a', 'b', 'c'])
    np.testing.assert_allclose(result['mvc8'], pooled, rtol=1e-12)
    np.testing.assert_allclose(result['mvc2'], reference_score(videos, 2), rtol=1e-12)
    corrected = [a for g, p in videos for a in corrected_windows(g, p, n)]
    np.testing.assert_allclose(result['mvc8_corrected'], np.nanmean(corrected), rtol=1e-12)
    assert result['mvc_windows']['mvc8'] == [len(windows), 0]


def test_consistency_without_labels():
  static = static_scene(5)
  metrics = VideoMetrics(3)
  for t, g in enumerate(static):
    metrics.update('s', 'video', t, np.full_like(g, 255), False, g)
  result = metrics.results(['bg', 'object', 'other'])
  assert result['consistency'] == 1.0
  assert result['consistency_per_class'] == {'bg': 1.0, 'object': 1.0, 'other': None}
  assert 'mvc8' not in result and 'sparse labels: 5 of 5 frames' in result['mvc_absent']

  # A 1x4 object shifted right by one pixel per frame on a 4x10 background: of its 4 pixels, 3 stay object,
  # and of the 36 background pixels 35 stay background (one is covered by the object's new column).
  frames = []
  for t in range(4):
    p = np.zeros((4, 10), np.int32)
    p[1, t:t + 4] = 1
    frames.append(p)
  metrics = VideoMetrics(2)
  for t, p in enumerate(frames):
    metrics.update(0, 7, t, p, True, p)
  result = metrics.results(['bg', 'object'])
  assert result['consistency_per_class'] == {'bg': 35 / 36, 'object': 3 / 4}
  assert result['consistency'] == 38 / 40
  assert result['mvc8'] is None and result['mvc_windows']['mvc8'] == [0, 0]  # 4 frames: no window
  assert video_metrics.table_lines(result)[0] == 'mVC8: no window (every sequence has too few frames)'
  # A new sequence on the same stream does not pair its first frame with the last one of the previous.
  metrics.update(0, 8, 0, 1 - frames[-1], True, 1 - frames[-1])
  assert metrics.results(['bg', 'object'])['consistency'] == 38 / 40


def test_one_unlabelled_frame_makes_mvc_absent_never_zero():
  static = static_scene(12)
  metrics = VideoMetrics(2)
  for t, g in enumerate(static):
    metrics.update(0, 0, t, g, t != 5, g)
  result = metrics.results(['bg', 'object'])
  assert not any(k.startswith('mvc') and k != 'mvc_absent' for k in result)
  assert video_metrics.scalars(result) == {'consistency': 1.0}
  assert any('mVC: absent (sparse labels: 1 of 12' in line for line in video_metrics.table_lines(result))


def test_a_dataset_labelled_on_some_video_frames_only_has_no_mvc():
  # CamVid's streamed frames all have labels, 30 video frames apart: mVC would not be VSPW's measure.
  static = static_scene(12)
  for dataset, defined in (('camvid', False), ('cityscapes', False), ('vspw', True), ('synthetic', True)):
    metrics = VideoMetrics(2, dataset=dataset)
    for t, g in enumerate(static):
      metrics.update(0, 0, t, g, True, g)
    result = metrics.results(['bg', 'object'])
    assert ('mvc8' in result) == defined and ('mvc_absent' in result) != defined
    assert result['consistency'] == 1.0
    if not defined:
      assert dataset in result['mvc_absent']


# ---------------------------------------------------------------------------------------------------------
# In the Evaluator's streamed pass and in predict_file.


@pytest.fixture(scope='module')
def tiny_model():
  import jax
  import test_training_support as support
  from ma_resnet import models
  from ma_resnet import data as data_lib
  config = support.load_test_config(**{'data.synthetic.frames_per_sequence': 6})
  model = models.build(config.model, data_lib.num_classes(config.data))
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 2, 32, 32, 3), np.float32))
  return config, model, variables


@pytest.mark.parametrize('lanes', [1, 2])
def test_the_evaluator_reports_what_the_functions_give_on_its_predictions(tiny_model, lanes):
  config, model, variables = tiny_model
  seen = []
  options = VideoMetricOptions(vc_lengths=(2, 3), vc_corrected=True)
  metrics = evaluation.Evaluator(model, config.data, 'val', lanes=lanes, video_options=options).evaluate(
      variables, callback=seen.append)
  videos = {}
  for frame in sorted(seen, key=lambda f: (f.sequence_index, f.frame_index)):
    videos.setdefault(frame.sequence_index, []).append(frame)
  assert len(videos) == 3 and all(len(v) == 6 for v in videos.values())
  for n in (2, 3):
    for corrected in (False, True):
      accs = [a for v in videos.values()
              for a in video_metrics.video_consistency([f.label for f in v], [f.prediction for f in v], n,
                                                       corrected=corrected)]
      assert len(accs) == 3 * (6 - n + corrected)
      key = f'mvc{n}' + ('_corrected' if corrected else '')
      np.testing.assert_allclose(metrics.video[key], np.nanmean(accs), rtol=1e-12)
      assert metrics.scalars()[key] == metrics.video[key]
  pairs = [(a.prediction, b.prediction) for v in videos.values() for a, b in zip(v, v[1:])]
  kept = sum(int(np.sum(a == b)) for a, b in pairs)
  assert metrics.video['consistency'] == kept / sum(a.size for a, _ in pairs)
  assert metrics.to_json()['video_metrics'] == metrics.video
  assert 'mVC2: ' in metrics.table() and 'temporal consistency' in metrics.table()


def test_predict_file_reports_the_consistency_of_its_labels(tiny_model, tmp_path):
  pytest.importorskip('imageio_ffmpeg', reason='video inference needs imageio-ffmpeg')
  from PIL import Image
  from ma_resnet import inference, runs
  from ma_resnet.data import SyntheticVideo
  config, model, variables = tiny_model
  frames, _ = SyntheticVideo('val', num_sequences=1, frames_per_sequence=5, height=32, width=32).generate_sequence(0)
  folder = tmp_path / 'frames'
  folder.mkdir()
  for t, frame in enumerate(frames):
    Image.fromarray(frame).save(folder / f'{t:03d}.png')
  run = runs.Run(config=config, model=model, variables=variables, step=0, checkpoint_path='',
                        config_source='test', run_dir=None, metrics=None)
  summary = inference.predict_file(run, str(folder), str(tmp_path / 'out.mp4'), labels_dir=str(tmp_path / 'labels'),
                                   progress=False)
  labels = [np.asarray(Image.open(tmp_path / 'labels' / f'{t:03d}.png')) for t in range(5)]
  kept = sum(int(np.sum(a == b)) for a, b in zip(labels, labels[1:]))
  assert summary.consistency['consistency'] == kept / (4 * 32 * 32)
  assert 'mvc_absent' not in summary.consistency
