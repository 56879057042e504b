r"""Streaming inference on a video file (or a folder of frames) with a trained model; writes an overlay video.

    python -m ma_resnet.predict --workdir=runs/camvid_ma --video=in.mp4 --out=out.mp4
    python -m ma_resnet.predict --checkpoint=runs/camvid_ma/checkpoints/8000 --video=frames/ --out=out.mp4 \
        --labels-dir=labels/ --size=360,480 --alpha=0.5

Frames are read one at a time (`ma_resnet.video_io`: ffmpeg from the `imageio-ffmpeg` wheel, or the sorted image
files of a folder), resized to --size if given (bilinear, as evaluation's `data.eval_size`; default: the run
config's `data.eval_size`, else the native size), normalised with the run config's `data.mean` / `data.std` as in
training, and passed through the jitted one-frame `model.step`, which carries the PCMA memory from frame to
frame. The logits are resized back to the frame size (bilinear) before the arg-max, so the output video has
exactly the input's frame count, size and frame rate (audio is not copied): every frame with the class colours
of the run's palette blended in at --alpha (1: colours only, 0: the frame). --labels-dir also writes the class
ids of every frame as palette PNGs (`000000.png`, ... or the input image names). The output video (and the labels
folder) is written under a temporary name and renamed at the end: after a failure or Ctrl-C nothing is left at
--out. --lossless writes exact RGB (H.264 RGB, quantiser 0) instead of the default H.264 CRF 18.

Which model: --workdir (a train.py run folder) restores its best checkpoint by validation mIoU, or --checkpoint=
latest | STEP; --checkpoint=PATH names a step folder `<workdir>/checkpoints/<step>` directly. The architecture
comes from the config stored with that checkpoint (else the run's config.json); with --workdir and a checkpoint
PATH, from the workdir's config; --config=FILE (a configs/*.py file, overridable with --config.model.depth=...)
replaces it. The checkpoint's parameter tree is checked against the model of that config before anything is
restored: a checkpoint of another architecture is refused with one message naming the differing parameters.

Exit status: 0 done; 2 bad flags; 3 the input video is missing, unreadable or corrupt; 4 no usable checkpoint
(missing, of another architecture, an encoder-only converted checkpoint); 1 the output cannot be written.

Python (e.g. in a notebook):

    loaded = load_model(workdir='runs/camvid_ma')           # model, variables, config, palette, mean, std, ...
    for p in predict_video(loaded.model, loaded.variables, frames, mean=loaded.mean, std=loaded.std,
                           palette=loaded.palette):
      p.index, p.labels, p.overlay                          # per frame, as they come (a generator)
    predict_file(loaded, 'in.mp4', 'out.mp4', labels_dir='labels')    # what the command line does
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
import time
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from ma_resnet import video_io

EXIT_WRITE, EXIT_USAGE, EXIT_DATA, EXIT_CHECKPOINT = 1, 2, 3, 4
_STEP_SELECTOR = re.compile(r'best|latest|\d+')
_FLAGS = None  # absl flags, defined by run()


class CheckpointError(ValueError):
  """No usable checkpoint at the given place (missing, empty, unreadable): the message says what to give."""


# ---------------------------------------------------------------------------------------------------------
# Loading a trained model.


@dataclasses.dataclass
class LoadedModel:
  """A trained model ready for inference, with what inference needs from its run config."""
  model: Any                   # the `VideoSegmenter`
  variables: dict              # {'params', 'batch_stats'}
  config: Any                  # the run config (ml_collections.ConfigDict) the model was built from
  step: int | None             # training step of the checkpoint
  checkpoint_path: str         # the step folder restored
  config_source: str           # where the config came from (for messages)
  num_classes: int
  class_names: tuple[str, ...]
  palette: np.ndarray          # uint8 (num_classes, 3)
  mean: tuple[float, ...]      # normalisation of the frames, as in training
  std: tuple[float, ...]
  normalize: bool
  eval_size: tuple[int, int] | None  # the run's data.eval_size: the default inference size


def _load_config_file(path: str):
  import importlib.util
  if not os.path.isfile(path):
    raise CheckpointError(f'config file {path} does not exist')
  spec = importlib.util.spec_from_file_location('_predict_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _plain_config(config):
  """A mutable, reference-free copy of a ConfigDict / dict (stored configs come back as dicts)."""
  import ml_collections
  if isinstance(config, ml_collections.ConfigDict):
    config = json.loads(config.to_json())
  return ml_collections.ConfigDict(config)


def _open_store(directory: str):
  from ma_resnet import checkpoints as checkpoints_lib
  store = checkpoints_lib.TrainCheckpoints(directory)
  try:
    steps = store.all_steps()
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'cannot read the checkpoints in {directory}: {e}') from None
  return store, steps


def _select_step(directory: str, selector: str, run_dir: str | None):
  store, _ = _open_store(directory)
  try:
    return store, store.select_step(selector, run_dir)
  except FileNotFoundError as e:
    raise CheckpointError(str(e)) from None


def _resolve_checkpoint(workdir: str | None, checkpoint: str | None):
  """-> (TrainCheckpoints, step, the run folder or None, whether `checkpoint` named a path)."""
  if checkpoint is None or (workdir is not None and _STEP_SELECTOR.fullmatch(str(checkpoint))):
    if workdir is None:
      raise CheckpointError('give a run folder (--workdir) or a checkpoint step folder (--checkpoint)')
    workdir = os.path.abspath(workdir)
    if not os.path.isdir(workdir):
      raise CheckpointError(f'workdir {workdir} does not exist')
    store, step = _select_step(os.path.join(workdir, 'checkpoints'), str(checkpoint or 'best'), workdir)
    return store, step, workdir, False
  path = os.path.abspath(os.fspath(checkpoint))
  if not os.path.exists(path):
    if workdir is None and _STEP_SELECTOR.fullmatch(str(checkpoint)):
      raise CheckpointError(f'checkpoint {checkpoint!r} selects a step of a run: give the run with --workdir')
    raise CheckpointError(f'checkpoint {path} does not exist')
  if os.path.isdir(os.path.join(path, 'checkpoints')):  # a run folder given as --checkpoint
    store, step = _select_step(os.path.join(path, 'checkpoints'), 'best', path)
    return store, step, path, True
  if os.path.isfile(os.path.join(path, 'metadata.json')) and os.path.isdir(os.path.join(path, 'variables')):
    from ma_resnet.checkpoints import CheckpointMismatchError
    raise CheckpointMismatchError(
        f'{path} is a converted encoder (python -m ma_resnet.convert): it holds a ResNet without the PCMA '
        f'modules and the segmentation head, so it cannot segment. Train from it (train.py '
        f'--config.init_from={path}) and predict with the run\'s workdir.')
  name = os.path.basename(path)
  if name.isdigit() and os.path.isdir(os.path.join(path, 'state')):
    directory = os.path.dirname(path)
    store, steps = _open_store(directory)
    if int(name) not in steps:
      raise CheckpointError(f'{path} is not a finished checkpoint (steps in {directory}: {steps})')
    return store, int(name), os.path.dirname(directory), True
  if os.path.isdir(path) and any(n.isdigit() and os.path.isdir(os.path.join(path, n, 'state'))
                                 for n in os.listdir(path)):  # a checkpoints/ folder
    store, step = _select_step(path, 'latest', os.path.dirname(path))
    return store, step, os.path.dirname(path), True
  raise CheckpointError(f'{path} is not a checkpoint: expected a step folder <workdir>/checkpoints/<step> (with '
                        f'state/ in it), or a run folder written by train.py')


def _flat_dict(tree, prefix=''):
  out = {}
  for k, v in (tree or {}).items():
    if isinstance(v, dict):
      out.update(_flat_dict(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = tuple(v) if isinstance(v, list) else v
  return out


def _config_differences(stored: dict | None, config) -> str:
  """'; '-joined model fields where the checkpoint's own stored config differs from `config`."""
  if not stored:
    return ''
  old = _flat_dict(stored.get('model'), 'model.')
  new = _flat_dict(json.loads(config.to_json()).get('model'), 'model.')
  old['data.name'], new['data.name'] = stored.get('data', {}).get('name'), config.data.get('name')
  diffs = [f'{k}: {old.get(k)!r} in the checkpoint\'s run, {new.get(k)!r} in the config used'
           for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
  return ('\n  config differences: ' + '; '.join(diffs)) if diffs else ''


def load_model(workdir: str | None = None, checkpoint: str | None = None, *, config=None,
               config_name: str | None = None, devices: Sequence | None = None) -> LoadedModel:
  """Restores a trained model for inference (see the module docstring for which checkpoint and config).

  Args:
    workdir: a train.py run folder.
    checkpoint: with `workdir`: 'best' (default), 'latest' or a step; otherwise (or a path): a step folder
      `<workdir>/checkpoints/<step>` (a run folder or its checkpoints/ folder are accepted too).
    config: a run config (ConfigDict / dict) or the path of a config file; default: the checkpoint's.
    config_name: how messages name `config` (e.g. the file it came from).
    devices: where the variables go (default: the first local device; inference runs one frame at a time).
  Raises:
    CheckpointError: no usable checkpoint / config. `checkpoints.CheckpointMismatchError`: the checkpoint's
    parameter tree is not the config's model (the message names the differing parameters).
  """
  import jax
  from ma_resnet import checkpoints as checkpoints_lib
  from ma_resnet import data as data_lib
  from ma_resnet import models, parallel, training

  store, step, run_dir, named_path = _resolve_checkpoint(workdir, checkpoint)
  step_path = store.step_path(step)
  try:
    stored = None
    try:
      stored = store.stored_config(step)
    except Exception:  # pylint: disable=broad-except  (older checkpoints have no config item)
      pass
    if config is not None:
      source = config_name or (f'config {config}' if isinstance(config, (str, os.PathLike)) else 'the given config')
      config = _load_config_file(os.fspath(config)) if isinstance(config, (str, os.PathLike)) else config
    elif workdir is not None and named_path:
      path = os.path.join(os.path.abspath(workdir), 'config.json')
      if not os.path.isfile(path):
        raise CheckpointError(f'workdir {workdir} has no config.json to build the model from; pass --config')
      with open(path) as f:
        config, source = json.load(f), path
    elif stored is not None:
      config, source = stored, f'the config stored in {step_path}'
    else:
      path = os.path.join(run_dir or '', 'config.json')
      if not (run_dir and os.path.isfile(path)):
        raise CheckpointError(f'no config stored in {step_path} and no {path}: pass --config')
      with open(path) as f:
        config, source = json.load(f), path
    config = _plain_config(config)
    if 'model' not in config or 'data' not in config:
      raise CheckpointError(f'{source} is not a training config (it needs model and data fields)')

    try:
      num_classes = data_lib.num_classes(config.data)
      model = models.build(config.model, num_classes)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
      raise CheckpointError(f'cannot build the model of {source}: {e}') from None
    clip_shape = (1, 1) + training.example_clip_shape(config)[2:]
    abstract = jax.eval_shape(lambda key: training.init_variables(model, key, clip_shape), jax.random.key(0))
    expected = checkpoints_lib.flat_shapes(abstract)
    try:
      found = {k: v for k, v in store.stored_shapes(step).items()
               if k.startswith('params/') or k.startswith('batch_stats/')}
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'cannot read checkpoint {step_path}: {e}') from None
    message = checkpoints_lib.describe_mismatch(expected, found, what=f'the model of {source}',
                                                found_where=f'checkpoint {step_path}')
    if message is not None:
      raise checkpoints_lib.CheckpointMismatchError(
          message + _config_differences(stored, config)
          + '\nThe checkpoint holds another architecture: predict with the config it was trained with '
          '(its run\'s config.json, or no --config).')
    mesh = parallel.make_mesh(list(devices) if devices is not None else jax.local_devices()[:1])
    try:
      variables = store.restore_variables(step, mesh)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'cannot restore checkpoint {step_path}: {e}') from None
  finally:
    store.close()

  eval_size = config.data.get('eval_size')
  return LoadedModel(
      model=model, variables=dict(variables), config=config, step=step, checkpoint_path=step_path,
      config_source=source, num_classes=num_classes, class_names=tuple(data_lib.class_names(config.data)),
      palette=np.asarray(data_lib.palette(config.data), np.uint8),
      mean=tuple(float(m) for m in config.data.mean), std=tuple(float(s) for s in config.data.std),
      normalize=bool(config.data.get('normalize', True)),
      eval_size=tuple(int(s) for s in eval_size) if eval_size else None)


# ---------------------------------------------------------------------------------------------------------
# Streaming prediction.


class PredictedFrame(NamedTuple):
  """One frame's result, in input order."""
  index: int
  image: np.ndarray            # uint8 (H, W, 3): the input frame
  labels: np.ndarray           # int32 (H, W): arg-max class per pixel, at the input size
  overlay: np.ndarray | None   # uint8 (H, W, 3): palette colours blended over the frame (None without palette)


@functools.lru_cache(maxsize=32)
def _step_function(model, model_size: tuple[int, int], out_size: tuple[int, int], donate: bool):
  """jit(variables, frame (1, h, w, 3), memory) -> (labels int32 (1, H, W) at `out_size`, new memory)."""
  import jax
  import jax.numpy as jnp
  from ma_resnet.models.ops import resize_bilinear

  def step(variables, frame, memory):
    out = model.apply(variables, frame, memory, method=model.step)
    logits = out.logits
    if tuple(logits.shape[1:3]) != out_size:
      logits = resize_bilinear(logits, out_size)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), out.memory

  return jax.jit(step, donate_argnums=(2,) if donate else ())


@functools.lru_cache(maxsize=32)
def _memory_function(model, model_size: tuple[int, int]):
  import jax
  return jax.jit(lambda: model.init_memory(1, model_size))


def _as_rgb(frame) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.dtype != np.uint8:
    raise ValueError(f'frames must be uint8 RGB images (H, W, 3), got dtype {frame.dtype}')
  if frame.ndim == 2:
    frame = np.repeat(frame[..., None], 3, axis=-1)
  elif frame.ndim == 3 and frame.shape[-1] == 4:
    frame = frame[..., :3]
  if frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(f'frames must be uint8 RGB images (H, W, 3), got shape {frame.shape}')
  return frame


def prepare_frame(frame: np.ndarray, size: tuple[int, int] | None, mean, std, normalize: bool = True
                  ) -> np.ndarray:
  """uint8 (H, W, 3) -> the model's input (1, h, w, 3) float32: resized to `size` (bilinear, as evaluation's
  `resize_clip`), then (x / 255 - mean) / std as in training (`normalize=False`: raw 0..255 values)."""
  from PIL import Image
  from ma_resnet.data import normalize_images
  if size is not None and tuple(size) != tuple(frame.shape[:2]):
    frame = np.asarray(Image.fromarray(frame).resize((int(size[1]), int(size[0])), Image.BILINEAR))
  x = normalize_images(frame, mean, std) if normalize else frame.astype(np.float32)
  return x[None]


def predict_video(model, variables, frames: Iterable[np.ndarray], *, mean: Sequence[float],
                  std: Sequence[float], size: tuple[int, int] | None = None, palette: np.ndarray | None = None,
                  alpha: float = 0.5, normalize: bool = True) -> Iterator[PredictedFrame]:
  """Segments a stream of frames one at a time, carrying the model's memory; yields a `PredictedFrame` each.

  Args:
    model, variables: a `VideoSegmenter` and its {'params', 'batch_stats'} (e.g. from `load_model`).
    frames: uint8 RGB frames (H, W, 3) of one size, in time order (any iterable: a reader, a list, an array).
    mean, std: the normalisation of the model's training data (`config.data.mean` / `std`).
    size: (h, w) the model sees (frames are resized to it); None: the frames' own size. Labels and overlays
      are always at the frames' size.
    palette: uint8 (K, 3) class colours for the overlays; None: no overlay (`overlay` is None).
    alpha: opacity of the class colours in the overlay (0..1).
    normalize: False when the model was trained on raw 0..255 frames (`data.normalize=False`).

  The one-frame step is jit-compiled once per (model, sizes) and reused across calls; the next frame is sent
  to the device before the previous result is fetched, so decoding and host work overlap the computation.
  """
  import jax
  if not 0.0 <= float(alpha) <= 1.0:
    raise ValueError(f'alpha must be in [0, 1], got {alpha}')
  from ma_resnet import visualize
  donate = jax.default_backend() != 'cpu'
  frame_size = step = memory = model_size = None
  pending = None

  def finish(index, image, labels):
    labels = np.asarray(labels)[0]
    overlay = None if palette is None else visualize.overlay(image, labels, palette, alpha)
    return PredictedFrame(index, image, labels, overlay)

  for index, frame in enumerate(frames):
    frame = _as_rgb(frame)
    if frame_size is None:
      frame_size = tuple(frame.shape[:2])
      model_size = tuple(int(s) for s in size) if size is not None else frame_size
      step = _step_function(model, model_size, frame_size, donate)
      memory = _memory_function(model, model_size)()
    elif tuple(frame.shape[:2]) != frame_size:
      raise ValueError(f'frame {index} is {frame.shape[0]}x{frame.shape[1]}, the first frame '
                       f'{frame_size[0]}x{frame_size[1]}: all frames of a video must have one size')
    labels, memory = step(variables, prepare_frame(frame, model_size, mean, std, normalize), memory)
    if pending is not None:
      yield finish(*pending)
    pending = (index, frame, labels)
  if pending is not None:
    yield finish(*pending)


@dataclasses.dataclass
class PredictionSummary:
  out: str
  labels_dir: str | None
  frames: int
  size: tuple[int, int]        # (H, W) of the input and output frames
  model_size: tuple[int, int]  # (h, w) the model saw
  fps: float                   # frame rate of the output video
  seconds: float
  frames_per_second: float     # excluding the first frame (compilation)
  decode_errors: list[str]


def predict_file(loaded: LoadedModel, video: str | video_io.FrameReader, out: str, *,
                 labels_dir: str | None = None, size: tuple[int, int] | None = None, alpha: float = 0.5,
                 fps: float | None = None, lossless: bool = False, ignore_decode_errors: bool = False,
                 progress: bool = True) -> PredictionSummary:
  """What `python -m ma_resnet.predict` does: `video` (a file, a frame folder or an open reader) -> the
  overlay video `out` (+ label PNGs in `labels_dir`), each written completely or not at all.

  size: the model's input size (None: the run's data.eval_size, else the native size). fps: of the output
  (None: the input's; 25 for a frame folder). Raises video_io.VideoReadError / VideoWriteError.
  """
  reader = video if isinstance(video, video_io.FrameReader) else video_io.open_frames(
      video, ignore_decode_errors=ignore_decode_errors)
  with reader:
    info = reader.info
    if os.path.abspath(out) == os.path.abspath(info.path):
      raise video_io.VideoWriteError(f'--out {out} is the input video')
    model_size = tuple(size) if size is not None else (loaded.eval_size or info.size)
    out_fps = float(fps or info.fps or video_io.DEFAULT_FPS)
    labels = video_io.LabelWriter(labels_dir, loaded.palette) if labels_dir else None
    writer = None
    try:
      writer = video_io.VideoWriter(out, info.size, fps=out_fps, lossless=lossless)
      bar = None
      if progress:
        from tqdm import tqdm
        bar = tqdm(total=info.num_frames, unit='frame', dynamic_ncols=True, file=sys.stderr, mininterval=0.5,
                   desc=os.path.basename(info.path))
      start = time.time()
      first_done = None
      count = 0
      try:
        for p in predict_video(loaded.model, loaded.variables, reader, mean=loaded.mean, std=loaded.std,
                               size=model_size, palette=loaded.palette, alpha=alpha,
                               normalize=loaded.normalize):
          writer.write(p.overlay)
          if labels is not None:
            name = (os.path.splitext(info.frame_names[p.index])[0] if info.frame_names
                    else f'{p.index:06d}')
            labels.write(name, p.labels)
          count += 1
          if first_done is None:
            first_done = time.time()
          if bar is not None:
            bar.update(1)
      finally:
        if bar is not None:
          bar.close()
      end = time.time()
      writer.commit()
      if labels is not None:
        labels.commit()
    except BaseException:
      if writer is not None:
        writer.abort()
      if labels is not None:
        labels.abort()
      raise
  steady = end - first_done if first_done is not None else 0.0
  return PredictionSummary(
      out=writer.path, labels_dir=labels.folder if labels is not None else None, frames=count,
      size=info.size, model_size=tuple(model_size), fps=out_fps, seconds=end - start,
      frames_per_second=(count - 1) / steady if count > 1 and steady > 0 else float('nan'),
      decode_errors=list(reader.decode_errors))


# ---------------------------------------------------------------------------------------------------------
# Command line.


def _parse_size(text: str | None) -> tuple[int, int] | None:
  if not text:
    return None
  m = re.fullmatch(r'\s*(\d+)\s*[,x]\s*(\d+)\s*', text)
  if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
    raise ValueError(f'--size must be H,W (two positive integers), got {text!r}')
  return int(m.group(1)), int(m.group(2))


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  flags.DEFINE_string('workdir', None, 'Run folder written by train.py (its best checkpoint unless --checkpoint).')
  flags.DEFINE_string('checkpoint', None, "With --workdir: 'best' (default), 'latest' or a step number. "
                      'Otherwise: a checkpoint step folder <workdir>/checkpoints/<step>.')
  config_flags.DEFINE_config_file('config', None, 'Config file of the model (default: the checkpoint\'s own).',
                                  lock_config=True)
  flags.DEFINE_string('video', None, 'Input video file, or a folder of frames (image files in name order).')
  flags.DEFINE_string('out', None, 'Output overlay video (.mp4 .m4v .mov .mkv .webm).')
  flags.DEFINE_string('labels-dir', None, 'Also write per-frame class-id PNGs into this new (or empty) folder.')
  flags.DEFINE_string('size', None, 'H,W: the size the model sees (default: the run\'s data.eval_size, else '
                      'the native size). The output keeps the input size.')
  flags.DEFINE_float('alpha', 0.5, 'Opacity of the class colours in the overlay (0..1).')
  flags.DEFINE_float('fps', None, 'Frame rate of the output (default: the input\'s; 25 for a frame folder).')
  flags.DEFINE_bool('lossless', False, 'Exact RGB output (H.264 RGB, quantiser 0): large files.')
  flags.DEFINE_bool('ignore-decode-errors', False, 'Segment the frames that decode from a corrupt or truncated '
                    'video instead of stopping.')
  flags.DEFINE_bool('progress', True, 'Show a progress bar (frames/s).')
  flags.mark_flags_as_required(['video', 'out'])
  return flags.FLAGS


def main(argv) -> None:
  from absl import logging
  from ma_resnet import cli
  from ma_resnet.checkpoints import CheckpointMismatchError
  FLAGS = _FLAGS  # pylint: disable=invalid-name

  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}', EXIT_USAGE)
  logging.set_verbosity(logging.ERROR)
  try:
    size = _parse_size(FLAGS.size)
  except ValueError as e:
    cli.fail(str(e), EXIT_USAGE)
  if not 0.0 <= FLAGS.alpha <= 1.0:
    cli.fail(f'--alpha must be in [0, 1], got {FLAGS.alpha}', EXIT_USAGE)
  if FLAGS.fps is not None and FLAGS.fps <= 0:
    cli.fail(f'--fps must be > 0, got {FLAGS.fps}', EXIT_USAGE)
  if FLAGS.workdir is None and FLAGS.checkpoint is None:
    cli.fail('give --workdir (a train.py run folder) or --checkpoint (a checkpoint step folder)', EXIT_USAGE)
  labels_dir = FLAGS['labels-dir'].value
  lossless = FLAGS.lossless
  try:  # the output must be writable before hours of work
    video_io.check_output_path(FLAGS.out, lossless=lossless)
    if labels_dir:
      video_io.check_labels_dir(labels_dir)
  except video_io.VideoWriteError as e:
    cli.fail(str(e), EXIT_USAGE)
  if os.path.abspath(FLAGS.out) == os.path.abspath(FLAGS.video):
    cli.fail(f'--out {FLAGS.out} is the input video', EXIT_USAGE)

  try:  # opening the input reads its header: a missing or unreadable video fails here, in a second
    reader = video_io.open_frames(FLAGS.video, ignore_decode_errors=FLAGS['ignore-decode-errors'].value)
  except video_io.VideoReadError as e:
    cli.fail(str(e), EXIT_DATA)
  except video_io.VideoError as e:
    cli.fail(str(e), EXIT_USAGE)
  with reader:
    try:
      config_name = None
      if FLAGS.config is not None:
        from ml_collections import config_flags
        config_name = f'--config={config_flags.get_config_filename(FLAGS["config"])} (with its overrides)'
      loaded = load_model(FLAGS.workdir, FLAGS.checkpoint, config=FLAGS.config, config_name=config_name)
    except (CheckpointError, CheckpointMismatchError) as e:
      cli.fail(str(e), EXIT_CHECKPOINT)
    info = reader.info
    print(f'model: {loaded.config.model.temporal} + resnet{loaded.config.model.depth} + {loaded.config.model.head}, '
          f'{loaded.num_classes} classes, step {loaded.step} ({loaded.checkpoint_path})', flush=True)
    print(f'input: {info.path} ({info.kind}, {info.width}x{info.height}, '
          f'{info.num_frames if info.num_frames is not None else "?"} frames'
          f'{f", {info.fps:g} fps" if info.fps else ""})', flush=True)
    try:
      summary = predict_file(loaded, reader, FLAGS.out, labels_dir=labels_dir, size=size, alpha=FLAGS.alpha,
                             fps=FLAGS.fps, lossless=lossless, progress=FLAGS.progress)
    except video_io.VideoReadError as e:
      cli.fail(f'{e}\n  (nothing was written to {FLAGS.out})', EXIT_DATA)
    except (video_io.VideoWriteError, OSError) as e:
      cli.fail(f'{e}\n  (nothing was written to {FLAGS.out})', EXIT_WRITE)
    except ValueError as e:  # e.g. frames of different sizes in a folder
      cli.fail(f'{e}\n  (nothing was written to {FLAGS.out})', EXIT_DATA)
  for message in summary.decode_errors[:5]:
    print(f'warning: decoding: {message}', file=sys.stderr)
  if summary.decode_errors and info.num_frames and summary.frames < info.num_frames:
    print(f'warning: {summary.frames} frames decoded, the container announced about {info.num_frames}',
          file=sys.stderr)
  labels_note = f', labels in {summary.labels_dir}' if summary.labels_dir else ''
  print(f'wrote {summary.out}: {summary.frames} frames {summary.size[1]}x{summary.size[0]} (WxH) at {summary.fps:g} '
        f'fps (model input {summary.model_size[1]}x{summary.model_size[0]}){labels_note}; '
        f'{summary.frames_per_second:.1f} frames/s after the first', flush=True)


def run(argv=None) -> None:
  """Entry point of `python -m ma_resnet.predict`."""
  from absl import app
  from ma_resnet import cli
  global _FLAGS
  _FLAGS = _define_flags()  # defined here, not at import: importing this module adds no absl flags
  app.run(main, argv=argv, flags_parser=cli.make_flags_parser('config'))


if __name__ == '__main__':
  run()
