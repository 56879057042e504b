r"""Segments a video file (or a folder of frames) with a trained model and writes an overlay video.

    python predict.py --workdir=runs/camvid_ma --video=in.mp4 --out=out.mp4
    python predict.py --checkpoint=runs/camvid_ma/checkpoints/8000 --video=frames/ --out=out.mp4 \
        --labels-dir=labels/ --size=360,480 --alpha=0.5
    python -m ma_resnet.predict ...            (the same, from an installed package)

The output has the input's frame count, size and frame rate (audio is not copied): every frame with the
class colours of the run's palette blended in at --alpha (1: colours only, 0: the frame); --labels-dir also
writes the class ids of every frame as palette PNGs (`000000.png`, ... or the input image names). Outputs
are written under temporary names and renamed at the end: after a failure or Ctrl-C nothing is left at --out.
--lossless writes exact RGB (H.264 RGB, quantiser 0) instead of H.264 CRF 18. The work itself is
`ma_resnet.inference.predict_file`.

Which model (`runs.load_run`): --workdir restores the run's best checkpoint by validation mIoU, or
--checkpoint=latest | STEP; --checkpoint=PATH names a step folder `<workdir>/checkpoints/<step>` directly.
The architecture comes from the config stored with that checkpoint (else the run's config.json); with
--workdir and a checkpoint PATH, from the workdir's config.json; --config=FILE (a configs/*.py file,
overridable with --config.model.depth=...) replaces it. A checkpoint of another architecture is refused
before anything is restored, with one message naming the differing parameters.

Exit status: 0 done; 2 bad flags; 3 the input video is missing, unreadable or corrupt; 4 no usable checkpoint
(missing, of another architecture, an encoder-only converted checkpoint); 1 the output cannot be written.
"""
from __future__ import annotations

import os
import re
import sys

from ma_resnet import video_io

EXIT_WRITE, EXIT_USAGE, EXIT_DATA, EXIT_CHECKPOINT = 1, 2, 3, 4
_STEP_SELECTOR = re.compile(r'best|latest|\d+')
_FLAGS = None  # absl flags, defined by run()


def _parse_size(text: str | None) -> tuple[int, int] | None:
  if not text:
    return None
  m = re.fullmatch(r'\s*(\d+)\s*[,x]\s*(\d+)\s*', text)
  if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
    raise ValueError(f'--size must be H,W (two positive integers), got {text!r}')
  return int(m.group(1)), int(m.group(2))


def load(workdir: str | None, checkpoint: str | None, config=None, config_name: str | None = None):
  """The `runs.Run` that --workdir / --checkpoint / --config name (see the module docstring), its
  variables on the first local device (inference runs one frame at a time)."""
  import jax
  from ma_resnet import checkpoints, parallel, runs
  mesh = parallel.make_mesh(jax.local_devices()[:1])
  if checkpoint is None or (workdir is not None and _STEP_SELECTOR.fullmatch(str(checkpoint))):
    if workdir is None:
      raise checkpoints.CheckpointError('give a run folder (--workdir) or a checkpoint step folder (--checkpoint)')
    if not os.path.isdir(workdir):
      raise checkpoints.CheckpointError(f'workdir {os.path.abspath(workdir)} does not exist')
    return runs.load_run(workdir, checkpoint or 'best', config=config, config_name=config_name, mesh=mesh)
  if workdir is None and _STEP_SELECTOR.fullmatch(str(checkpoint)) and not os.path.exists(checkpoint):
    raise checkpoints.CheckpointError(f'checkpoint {checkpoint!r} selects a step of a run: give the run with '
                                      '--workdir')
  if workdir is not None and config is None:  # a checkpoint path with its run: the run's config.json
    config = os.path.join(os.path.abspath(workdir), 'config.json')
    if not os.path.isfile(config):
      raise checkpoints.CheckpointError(f'workdir {workdir} has no config.json to build the model from; pass '
                                        '--config')
    import json
    with open(config) as f:
      config, config_name = json.load(f), config
  return runs.load_run(checkpoint, 'best', config=config, config_name=config_name, mesh=mesh)


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
  from ma_resnet import cli, inference
  from ma_resnet.checkpoints import CheckpointError
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
  try:  # the output must be writable before hours of work
    video_io.check_output_path(FLAGS.out, lossless=FLAGS.lossless)
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
      run = load(FLAGS.workdir, FLAGS.checkpoint, config=FLAGS.config, config_name=config_name)
    except CheckpointError as e:
      cli.fail(str(e), EXIT_CHECKPOINT)
    if size is not None:  # a --size the model cannot take (STF: whole 16x16 blocks) is a usage error
      try:
        _check_model_size(run.model, size)
      except ValueError as e:
        cli.fail(f'--size {size[0]},{size[1]}: {e}', EXIT_USAGE)
    info = reader.info
    model = run.config.model
    backbone = model.get('backbone', 'resnet')
    backbone = f'resnet{model.depth}' if backbone == 'resnet' else backbone
    print(f'model: {model.temporal} + {backbone} + {model.head}, step {run.step} ({run.checkpoint_path})',
          flush=True)
    print(f'input: {info.path} ({info.kind}, {info.width}x{info.height}, '
          f'{info.num_frames if info.num_frames is not None else "?"} frames'
          f'{f", {info.fps:g} fps" if info.fps else ""})', flush=True)
    try:
      summary = inference.predict_file(run, reader, FLAGS.out, labels_dir=labels_dir, size=size,
                                       alpha=FLAGS.alpha, fps=FLAGS.fps, lossless=FLAGS.lossless,
                                       progress=FLAGS.progress)
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
  print(summary_line(summary), flush=True)
  if summary.consistency.get('consistency') is not None:
    print(f'temporal consistency: {100 * summary.consistency["consistency"]:.2f}% of pixels keep their class from '
          'one frame to the next', flush=True)
  if summary.frame_kinds:  # which frames ran without the memory (THA: the key frames, the full network)
    plain = summary.frames_of_kind(False)
    print(f'{summary.frame_kinds[0]} frames: {len(plain)} of {summary.frames} ({_index_list(plain)}); the other '
          f'{summary.frames - len(plain)}: {summary.frame_kinds[1]}', flush=True)


def summary_line(summary) -> str:
  """The line predict.py ends with: what was written, and the speed after the first frame (compilation)."""
  labels_note = f', labels in {summary.labels_dir}' if summary.labels_dir else ''
  speed = (f'{summary.frames_per_second:.1f} frames/s after the first' if summary.frames > 1
           else f'{summary.seconds:.1f} s for the one frame, compilation included')
  return (f'wrote {summary.out}: {summary.frames} frame{"s" if summary.frames != 1 else ""} {summary.size[1]}x'
          f'{summary.size[0]} (WxH) at {summary.fps:g} fps (model input {summary.model_size[1]}x'
          f'{summary.model_size[0]}){labels_note}; {speed}')


def _check_model_size(model, size: tuple[int, int]) -> None:
  """ValueError (the model's own message) when `model` cannot segment frames of `size` = (H, W); traces the
  model's shapes only, nothing is computed."""
  import jax
  import numpy as np
  jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 1, *size, 3), np.float32))


def _index_list(indices: list[int], shown: int = 8) -> str:
  """'0, 5, 10' or '0, 5, 10, 15, 20, 25, 30, 35, ..., 95 (every 5 frames)' for long lists."""
  if not indices:
    return 'none'
  text = ', '.join(str(i) for i in indices[:shown])
  if len(indices) <= shown:
    return text
  gaps = {b - a for a, b in zip(indices, indices[1:])}
  pattern = f' (every {gaps.pop()} frames)' if len(gaps) == 1 else ''
  return f'{text}, ..., {indices[-1]}{pattern}'


def run(argv=None) -> None:
  """Entry point of `predict.py` and `python -m ma_resnet.predict`."""
  from absl import app
  from ma_resnet import cli
  global _FLAGS
  _FLAGS = _define_flags()  # defined here, not at import: importing this module adds no absl flags
  app.run(main, argv=argv, flags_parser=cli.make_flags_parser('config'))


if __name__ == '__main__':
  run()
