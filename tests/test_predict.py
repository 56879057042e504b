"""Video inference: `python -m ma_resnet.predict` / `predict.py`, `inference.predict_file`, `predict_video`,
`runs.load_run`.

Nothing is trained: the run folder holds a checkpoint of the tiny `configs/test.py` model written through the
project's checkpoint API (`TrainCheckpoints.save`) with random (He-initialised, numpy) parameters, which is
enough to check the plumbing: frame count, size, order, the memory carried across frames, colours, errors. What
the colour checks prove: with --alpha=1 and the lossless codec every output pixel is exactly the palette colour
of the class written to its label PNG; with the default (lossy H.264) codec only that the frames are close to the
expected overlay (mean absolute difference), since compression changes colours.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

pytest.importorskip('imageio_ffmpeg', reason='video inference needs imageio-ffmpeg (pip install imageio-ffmpeg)')

from ma_resnet import checkpoints, inference, models, predict, runs, train_config, video_io, visualize  # noqa: E402
from ma_resnet.data import SyntheticVideo  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_CONFIG = os.path.join(REPO, 'configs', 'test.py')
NUM_FRAMES, HEIGHT, WIDTH = 8, 48, 64


def _test_config():
  return train_config.load_config(TEST_CONFIG)


def _write_random_run(workdir: str, config) -> None:
  """A train.py-style run folder (config.json + checkpoints/0) whose state has random parameters."""
  import jax
  from ma_resnet import checkpoints, logging_utils, training
  from ma_resnet import data as data_lib

  model = models.build(config.model, data_lib.num_classes(config.data))
  tx = training.make_optimizer(config, training.learning_rate_schedule(config))
  abstract = training.abstract_train_state(config, model, tx)
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = getattr(path[-1], 'key', '')
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)
    if name in ('scale', 'var'):
      return np.ones(leaf.shape, leaf.dtype)
    return np.zeros(leaf.shape, leaf.dtype)

  state = jax.tree_util.tree_map_with_path(fill, abstract)
  train_iter = data_lib.make_train_iterator(config.data, batch_size=int(config.batch_size), seed=0)
  store = checkpoints.TrainCheckpoints(os.path.join(workdir, 'checkpoints'))
  store.open_for_writing(config)
  store.save(0, state, train_iter)
  store.close()
  data_lib.close_iterator(train_iter)
  logging_utils.write_config(workdir, config)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('predict'))
  config = _test_config()
  workdir = os.path.join(root, 'run')
  _write_random_run(workdir, config)
  frames, _ = SyntheticVideo('val', num_sequences=1, frames_per_sequence=NUM_FRAMES, height=HEIGHT, width=WIDTH,
                             reveal_period=3).generate_sequence(0)
  video = video_io.write_video(os.path.join(root, 'in.mkv'), frames, fps=6, lossless=True)
  assert np.array_equal(video_io.read_video(video), frames)  # the input itself is exact
  return types.SimpleNamespace(root=root, workdir=workdir, config=config, frames=frames, video=video,
                               step_dir=os.path.join(workdir, 'checkpoints', '0'))


@pytest.fixture(scope='module')
def loaded(run):
  restored = runs.load_run(run.workdir)
  return types.SimpleNamespace(**vars(restored), **inference.input_settings(restored.config)._asdict(),
                               run=restored)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  return subprocess.run([sys.executable, '-m', 'ma_resnet.predict', '--noprogress', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _api_labels(loaded, frames, **kwargs) -> np.ndarray:
  return np.stack([p.labels for p in inference.predict_video(loaded.model, loaded.variables, frames,
                                                             mean=loaded.mean, std=loaded.std, **kwargs)])


def _leftovers(folder: str) -> list[str]:
  return [n for n in os.listdir(folder) if '.partial-' in n]


def test_cli_overlay_video_and_label_pngs_are_exact(run, loaded, tmp_path):
  out, labels_dir = str(tmp_path / 'out.mp4'), str(tmp_path / 'labels')
  result = _cli(f'--workdir={run.workdir}', f'--video={run.video}', f'--out={out}', f'--labels-dir={labels_dir}',
                '--alpha=1', '--lossless')
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'wrote {out}: {NUM_FRAMES} frames {WIDTH}x{HEIGHT} (WxH)' in result.stdout

  video = video_io.read_video(out)
  assert video.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)  # same frame count and size as the input
  names = sorted(os.listdir(labels_dir))
  assert names == [f'{i:06d}.png' for i in range(NUM_FRAMES)]
  images = [Image.open(os.path.join(labels_dir, n)) for n in names]
  assert all(i.mode == 'P' for i in images)
  labels = np.stack([np.asarray(i) for i in images])
  assert labels.max() < len(loaded.class_names)
  # alpha=1, lossless: every output pixel is exactly the palette colour of its label.
  np.testing.assert_array_equal(video, loaded.palette[labels])
  # The command line computes what the Python API computes, frame by frame.
  np.testing.assert_array_equal(labels, _api_labels(loaded, run.frames))
  assert _leftovers(str(tmp_path)) == []


def test_streaming_carries_the_memory_like_the_scanned_clip(run, loaded):
  import jax
  from ma_resnet.data import normalize_images
  clip = normalize_images(run.frames, loaded.mean, loaded.std)[None]
  out = jax.jit(loaded.model.apply)(loaded.variables, clip)
  scanned = np.asarray(out.logits[0]).argmax(-1)
  assert np.asarray(out.enhanced)[0].tolist() == [False] + [True] * (NUM_FRAMES - 1)  # the memory is used
  streamed = _api_labels(loaded, run.frames)
  assert np.mean(streamed == scanned) > 0.999
  # Frames restarted without memory would differ: the carried memory matters for this model.
  per_frame = np.stack([_api_labels(loaded, f[None])[0] for f in run.frames])
  assert np.array_equal(per_frame[0], streamed[0]) and not np.array_equal(per_frame, streamed)


def test_default_codec_odd_size_and_model_size(run, loaded, tmp_path):
  frames = run.frames[:, :45, :61]  # odd sizes: H.264 in yuv444p, no padding
  video = video_io.write_video(str(tmp_path / 'odd.mkv'), frames, fps=6, lossless=True)
  out, labels_dir = str(tmp_path / 'odd_out.mp4'), str(tmp_path / 'odd_labels')
  summary = inference.predict_file(loaded.run, video, out, labels_dir=labels_dir, size=(32, 48), alpha=0.5,
                                 progress=False)
  assert (summary.frames, summary.size, summary.model_size) == (NUM_FRAMES, (45, 61), (32, 48))
  written = video_io.read_video(out)
  assert written.shape == (NUM_FRAMES, 45, 61, 3)
  labels = np.stack([np.asarray(Image.open(os.path.join(labels_dir, f'{i:06d}.png'))) for i in range(NUM_FRAMES)])
  assert labels.shape == (NUM_FRAMES, 45, 61)  # predicted at 32x48, resized back to the frame size
  np.testing.assert_array_equal(labels, _api_labels(loaded, frames, size=(32, 48)))
  expected = np.stack([visualize.overlay(f, l, loaded.palette, 0.5) for f, l in zip(frames, labels)])
  difference = np.abs(written.astype(np.int16) - expected.astype(np.int16))
  assert difference.mean() < 4.0, difference.mean()  # lossy H.264: close, not exact


def test_folder_of_frames_in_natural_order(run, loaded, tmp_path):
  folder = tmp_path / 'frames'
  folder.mkdir()
  frames = np.concatenate([run.frames, run.frames[::-1][:3]])  # 11 frames: f1 .. f11
  for i, frame in enumerate(frames, start=1):
    Image.fromarray(frame).save(folder / f'f{i}.png')
  (folder / 'notes.txt').write_text('not a frame')
  out, labels_dir = str(tmp_path / 'folder.mp4'), str(tmp_path / 'folder_labels')
  summary = inference.predict_file(loaded.run, str(folder), out, labels_dir=labels_dir, alpha=1.0, lossless=True,
                                 progress=False)
  assert summary.frames == len(frames) and summary.fps == video_io.DEFAULT_FPS
  assert sorted(os.listdir(labels_dir)) == sorted(f'f{i}.png' for i in range(1, len(frames) + 1))
  labels = np.stack([np.asarray(Image.open(os.path.join(labels_dir, f'f{i}.png')))
                     for i in range(1, len(frames) + 1)])
  np.testing.assert_array_equal(labels, _api_labels(loaded, frames))  # f2 before f10: natural order
  np.testing.assert_array_equal(video_io.read_video(out), loaded.palette[labels])


def _bad_inputs(run, root):
  """name -> (extra CLI flags, expected exit status, text the message must contain)."""
  garbage = os.path.join(root, 'garbage.mp4')
  with open(garbage, 'wb') as f:
    f.write(np.random.default_rng(1).bytes(4000))
  data = open(run.video, 'rb').read()
  truncated = os.path.join(root, 'truncated.mkv')
  with open(truncated, 'wb') as f:
    f.write(data[: len(data) * 6 // 10])
  plain_workdir = os.path.join(root, 'plain_run')  # a run folder whose config has no PCMA
  os.makedirs(plain_workdir, exist_ok=True)
  config = json.loads(run.config.to_json())
  config['model']['temporal'] = 'plain'
  with open(os.path.join(plain_workdir, 'config.json'), 'w') as f:
    json.dump(config, f)
  encoder_dir = os.path.join(root, 'resnet18_converted')  # what python -m ma_resnet.convert writes
  os.makedirs(os.path.join(encoder_dir, 'variables'), exist_ok=True)
  with open(os.path.join(encoder_dir, 'metadata.json'), 'w') as f:
    json.dump({'format': 'ma_resnet.converted'}, f)
  return {
      'missing video': ([f'--workdir={run.workdir}', f'--video={root}/no_such.mp4'], predict.EXIT_DATA,
                        'not found'),
      'not a video': ([f'--workdir={run.workdir}', f'--video={garbage}'], predict.EXIT_DATA, 'cannot read video'),
      'truncated video': ([f'--workdir={run.workdir}', f'--video={truncated}'], predict.EXIT_DATA,
                          'corrupt or truncated'),
      'depth from flags': ([f'--checkpoint={run.step_dir}', f'--config={TEST_CONFIG}', '--config.model.depth=34',
                            f'--video={run.video}'], predict.EXIT_CHECKPOINT, 'params/backbone/stage1/block2'),
      'workdir config': ([f'--workdir={plain_workdir}', f'--checkpoint={run.step_dir}', f'--video={run.video}'],
                         predict.EXIT_CHECKPOINT, 'only in the checkpoint (2): params/temporal'),
      'encoder only': ([f'--checkpoint={encoder_dir}', f'--video={run.video}'], predict.EXIT_CHECKPOINT,
                       'converted encoder'),
  }


@pytest.mark.parametrize('case', ['missing video', 'not a video', 'truncated video', 'depth from flags',
                                  'workdir config', 'encoder only'])
def test_bad_inputs_are_one_clear_error_and_nothing_is_written(run, tmp_path, case):
  flags, status, text = _bad_inputs(run, str(tmp_path))[case]
  out = tmp_path / 'out' / 'result.mp4'
  out.parent.mkdir()
  out.write_bytes(b'previous result')  # an existing output stays as it was
  result = _cli(*flags, f'--out={out}', f'--labels-dir={tmp_path / "out" / "labels"}')
  assert result.returncode == status, result.stderr[-3000:]
  assert text in result.stderr, result.stderr[-3000:]
  assert result.stderr.startswith('error: ') and 'Traceback' not in result.stderr
  assert out.read_bytes() == b'previous result'
  assert sorted(os.listdir(out.parent)) == ['result.mp4']  # no labels folder, no partial file
  if case == 'depth from flags':
    assert 'model.depth: 18 in the checkpoint\'s run, 34 in the config used' in result.stderr


def test_load_run_restores_the_run_and_checks_the_tree(run, loaded):
  assert loaded.step == 0 and loaded.checkpoint_path == run.step_dir and loaded.run_dir == run.workdir
  assert len(loaded.class_names) == 4 and loaded.palette.shape == (4, 3)
  assert (loaded.mean, loaded.std) == (tuple(run.config.data.mean), tuple(run.config.data.std))
  same = runs.load_run(run.step_dir)  # a step folder alone: its stored config
  assert same.config.model.to_dict() == loaded.config.model.to_dict()
  assert runs.load_run(os.path.join(run.workdir, 'checkpoints'), 'latest').step == 0
  with pytest.raises(checkpoints.CheckpointError, match='no checkpoint of step 7'):
    runs.load_run(run.workdir, 7)
  with pytest.raises(checkpoints.CheckpointError, match="expected 'best', 'latest' or a step number"):
    runs.load_run(run.workdir, 'abc')
  with pytest.raises(checkpoints.CheckpointError, match='not a checkpoint'):
    runs.load_run(run.root)
  with pytest.raises(checkpoints.CheckpointError, match='selects a step of a run'):
    predict.load(None, '7')


def test_a_non_causal_model_writes_every_frame_with_its_own_labels(run, tmp_path):
  """STF needs frame t+1 to segment frame t: predict pairs each output with its frame and flushes the last one,
  so every frame comes out, in order, with the labels of the aligned clip."""
  import jax
  from ma_resnet.data import normalize_images
  config = train_config.load_config(os.path.join(REPO, 'configs', 'stf_synthetic.py:stf'), {
      'data.synthetic.height': HEIGHT, 'data.synthetic.width': WIDTH, 'data.crop_size': (HEIGHT, WIDTH),
      'model.pspnet.channels': 16, 'model.stf.ffn_channels': 8, 'model.stf.block_size': (2, 2),
      'model.stf.embedding_size': (6, 8), 'model.frozen': ()})
  workdir = str(tmp_path / 'stf_run')
  _write_random_run(workdir, config)
  restored = runs.load_run(workdir)
  assert restored.model.delay == 1
  settings = inference.input_settings(restored.config)
  predicted = list(inference.predict_video(restored.model, restored.variables, run.frames, mean=settings.mean,
                                           std=settings.std))
  assert [p.index for p in predicted] == list(range(NUM_FRAMES))
  assert all(np.array_equal(p.image, f) for p, f in zip(predicted, run.frames))
  clip = normalize_images(run.frames, settings.mean, settings.std)[None]
  aligned = np.asarray(jax.jit(restored.model.apply)(restored.variables, clip).logits[0]).argmax(-1)
  assert np.mean(np.stack([p.labels for p in predicted]) == aligned) > 0.999
  labels_dir = str(tmp_path / 'labels')
  summary = inference.predict_file(restored, run.video, str(tmp_path / 'out.mp4'), labels_dir=labels_dir,
                                   progress=False)
  assert summary.frames == NUM_FRAMES
  assert summary.frame_kinds == ('sequence edge', 'both neighbours')  # the first and last frame lack one
  assert summary.frames_of_kind(False) == [0, NUM_FRAMES - 1] == [p.index for p in predicted if not p.enhanced]
  assert sorted(os.listdir(labels_dir)) == [f'{i:06d}.png' for i in range(NUM_FRAMES)]
  written = np.stack([np.asarray(Image.open(os.path.join(labels_dir, f'{i:06d}.png'))) for i in range(NUM_FRAMES)])
  np.testing.assert_array_equal(written, np.stack([p.labels for p in predicted]))


def test_key_frames_are_reported(run, tmp_path):
  """LERNet + THA (K = 3): every frame says whether it was a key frame (the full network) and the summary lists
  them; the CLI prints them compactly."""
  config = train_config.load_config(os.path.join(REPO, 'configs', 'lernet_synthetic.py:tha'), {
      'data.synthetic.height': HEIGHT, 'data.synthetic.width': WIDTH, 'data.crop_size': (HEIGHT, WIDTH),
      'model.tha.key_interval': 3, 'model.lernet.dilations': (1, 2)})
  workdir = str(tmp_path / 'tha_run')
  _write_random_run(workdir, config)
  restored = runs.load_run(workdir)
  assert restored.model.frame_kinds == ('key', 'non-key')
  summary = inference.predict_file(restored, run.video, str(tmp_path / 'out.mp4'), progress=False)
  assert summary.frames == NUM_FRAMES
  assert summary.frames_of_kind(False) == list(range(0, NUM_FRAMES, 3))  # key frames
  assert summary.frames_of_kind(True) == [i for i in range(NUM_FRAMES) if i % 3]
  assert predict._index_list([0, 3, 6]) == '0, 3, 6'
  assert predict._index_list(list(range(0, 100, 5))) == '0, 5, 10, 15, 20, 25, 30, 35, ..., 95 (every 5 frames)'
  assert predict._index_list([]) == 'none'
