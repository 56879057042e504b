r"""Runs a folder written by `python -m ma_resnet.export`: jax and numpy only (a file of its own: copy it out).

    python -m ma_resnet.exported EXPORT --video=in.mp4 --out=out.mp4 --labels-dir=labels/
    python exported.py EXPORT --video=frames/ --out=out.mp4            (this file alone, anywhere)

    import exported
    stream = exported.load('EXPORT')            # checks the manifest and every file's sha256
    for frame in frames:                        # uint8 RGB (H, W, 3) at the export's frame size
      out = stream.step(frame)                  # out.labels (H, W) int32, out.logits (H, W, K), out.ready, ...
    last = stream.flush()                       # a non-causal model's last frame (delay 1), else None
    stream.reset()                              # a new sequence: the same as flush (returns its output)

Needs `jax` and `numpy` (and `flatbuffers`, which `jax.export` reads its files with); the command line also
needs `imageio-ffmpeg` for video files, or Pillow for a folder of images (both imported only then). It
writes what `predict.py` writes, with the same flags: the overlay video (the input's frame count, size and
rate), and with --labels-dir one palette PNG of class ids per frame (`000000.png`, ... or the input image
names), each output all or nothing. A non-causal model (delay 1: frame t needs frame t+1) gives each frame's
labels one step later; they are paired with their own frame and the last one comes from the flush.

The folder is untrusted input: the manifest must name every file with its size and sha256 (a truncated or
altered folder is refused), arrays are read with `np.load(allow_pickle=False)`, nothing is unpickled. The
functions are compiled code (StableHLO): run exports whose author you trust; the hashes detect damage, not
an author who rewrote the manifest too.

Exit status: 0 done; 1 the output cannot be written; 2 bad flags; 3 the input video is missing, unreadable,
corrupt or of another size than the export's frames; 4 the folder is not a usable export (not an export,
damaged, lowered for other platforms).
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Iterable, Iterator, NamedTuple

import numpy as np

FORMAT = 'ma_resnet.export'
FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
EXIT_WRITE, EXIT_USAGE, EXIT_DATA, EXIT_EXPORT = 1, 2, 3, 4
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
VIDEO_CODECS = {'.mp4': 'libx264', '.m4v': 'libx264', '.mov': 'libx264', '.mkv': 'libx264', '.webm': 'libvpx-vp9'}
LOSSLESS_EXTENSIONS = ('.mp4', '.m4v', '.mov', '.mkv')
DEFAULT_FPS = 25.0


class ExportError(ValueError):
  """The folder is not a usable export: the message says which file or field, and why."""


class InputError(ValueError):
  """A frame or video the export cannot take (size, dtype, unreadable): the message names both sides."""


class Output(NamedTuple):
  """A step's result; with a batch of frames every field has the batch first."""
  labels: np.ndarray    # int32 (H, W): arg-max class per pixel at the frame size
  logits: np.ndarray    # float32 (H, W, K)
  ready: bool           # the outputs are of a frame that exists (False: a non-causal model's first frame)
  enhanced: bool        # that frame used the memory (the manifest's frame_kinds name both kinds)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def read_manifest(folder: str) -> dict:
  """The manifest of an export folder, after checking that every file it names is there with its size and
  sha256; ExportError naming the file or field otherwise."""
  folder = os.path.abspath(os.fspath(folder))
  path = os.path.join(folder, MANIFEST)
  if not os.path.isdir(folder):
    raise ExportError(f'{folder} is not a folder (an export written by python -m ma_resnet.export)')
  if not os.path.isfile(path):
    raise ExportError(f'{folder} is not an export: it has no {MANIFEST}')
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise ExportError(f'{path} is not valid JSON: {e}') from None
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
    raise ExportError(f'{path} is not the manifest of an export (format {FORMAT!r} expected)')
  if manifest.get('format_version') != FORMAT_VERSION:
    raise ExportError(f'{path}: format_version {manifest.get("format_version")!r}, this runner reads '
                      f'{FORMAT_VERSION}')
  listed = manifest.get('files')
  needed = [f['file'] for f in manifest.get('functions', {}).values()] + [manifest.get('weights', {}).get('file')]
  if not isinstance(listed, dict) or 'step' not in manifest.get('functions', {}) or None in needed:
    raise ExportError(f'{path} lacks the files, functions or weights fields')
  for name in needed:
    if name not in listed:
      raise ExportError(f'{path}: {name} is used but has no sha256 in files')
  for name, entry in listed.items():
    file = os.path.join(folder, name)
    if os.path.basename(name) != name or not os.path.isfile(file):
      raise ExportError(f'{folder}: {name} is missing (the manifest lists it)')
    if os.path.getsize(file) != entry.get('bytes') or _sha256(file) != entry.get('sha256'):
      raise ExportError(f'{file} does not match the manifest (size {os.path.getsize(file)} bytes, manifest '
                        f'{entry.get("bytes")}; or another sha256): the folder is damaged or was altered')
  return manifest


def _platform() -> str:
  import jax
  return jax.export.default_export_platform()


class Stream:
  """Streams frames through an export: the model's memory is carried from one `step` to the next.

  Frames are uint8 RGB (H, W, 3) (one stream) or (B, H, W, 3) (B streams side by side) at the export's frame
  size; the first step fixes B.
  """

  def __init__(self, folder: str):
    import jax
    self.folder = os.path.abspath(os.fspath(folder))
    self.manifest = manifest = read_manifest(self.folder)
    platform = _platform()
    if platform not in manifest.get('platforms', []):
      raise ExportError(f'{self.folder} was lowered for {",".join(manifest.get("platforms", [])) or "no platform"}, '
                        f'not for {platform} (JAX\'s platform here): export it again with --platforms=...,{platform}')
    frame = manifest['frame']
    self.frame_shape = (int(frame['height']), int(frame['width']), 3)
    self.delay = int(manifest['delay'])
    self.frame_kinds = tuple(manifest['frame_kinds']) if manifest.get('frame_kinds') else None
    self.class_names = tuple(manifest['classes']['names'])
    self.palette = np.asarray(manifest['classes']['palette'], np.uint8).reshape(-1, 3)
    self.batch = manifest['batch'] if isinstance(manifest['batch'], int) else None
    self._functions = {}
    for name, entry in manifest['functions'].items():
      with open(os.path.join(self.folder, entry['file']), 'rb') as f:
        try:
          exported = jax.export.deserialize(bytearray(f.read()))
        except Exception as e:  # pylint: disable=broad-except  (a file that is not a serialized Exported)
          raise ExportError(f'{entry["file"]} cannot be read by jax.export.deserialize: {type(e).__name__}: '
                            f'{str(e).splitlines()[0] if str(e) else ""}') from None
      if platform not in exported.platforms:
        raise ExportError(f'{entry["file"]} was lowered for {",".join(exported.platforms)}, not for {platform}')
      self._functions[name] = jax.jit(exported.call)
    self.weights = jax.device_put(self._read_weights())
    self._state = self._streams = self._single = None

  def _read_weights(self) -> dict:
    entry = self.manifest['weights']
    path = os.path.join(self.folder, entry['file'])
    expected = entry['arrays']
    try:
      with np.load(path, allow_pickle=False) as arrays:
        weights = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError) as e:
      raise ExportError(f'cannot read {path}: {e}') from None
    if sorted(weights) != sorted(expected):
      missing = sorted(set(expected) - set(weights)) + sorted(set(weights) - set(expected))
      raise ExportError(f'{path}: its arrays differ from the manifest\'s ({", ".join(missing[:5])})')
    for name, spec in expected.items():
      if list(weights[name].shape) != spec['shape'] or str(weights[name].dtype) != spec['dtype']:
        raise ExportError(f'{path}: {name} is {weights[name].dtype} {weights[name].shape}, the manifest says '
                          f'{spec["dtype"]} {tuple(spec["shape"])}')
    return weights

  def _frames(self, frame) -> tuple[np.ndarray, bool]:
    frame = np.asarray(frame)
    single = frame.ndim == 3
    batch = frame[None] if single else frame
    if frame.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != self.frame_shape:
      raise InputError(f'the frame is {frame.dtype} {tuple(frame.shape)}; this export takes uint8 '
                       f'{self.frame_shape} (or a batch (B, {", ".join(map(str, self.frame_shape))}))')
    if self.batch is not None and batch.shape[0] != self.batch:
      raise InputError(f'the batch has {batch.shape[0]} frames; this export takes exactly {self.batch}')
    if self._streams is not None and batch.shape[0] != self._streams:
      raise InputError(f'the batch has {batch.shape[0]} frames; this stream carries {self._streams} (reset() '
                       'first to start another batch)')
    return batch, single

  @staticmethod
  def _output(result, single: bool) -> Output:
    out = Output(*(np.asarray(result[k]) for k in Output._fields))
    return Output(out.labels[0], out.logits[0], bool(out.ready[0]), bool(out.enhanced[0])) if single else out

  def step(self, frame, reset=False) -> Output:
    """Feeds one frame per stream; returns the outputs of the frame that is ready (the frame fed, or with
    delay 1 the one before it: `ready` False when there is none). reset: this frame starts a new sequence
    (bool, or (B,) bool); a non-causal model then returns the previous sequence's last frame."""
    batch, single = self._frames(frame)
    if self._state is None:
      self._state = self._functions['init'](batch)
      self._streams, self._single = batch.shape[0], single
    reset = np.broadcast_to(np.asarray(reset, bool), (batch.shape[0],))
    result, self._state = self._functions['step'](self.weights, batch, self._state, reset)
    return self._output(result, single)

  def flush(self) -> Output | None:
    """Ends the streams: a non-causal model's last frame (its edge rule for the missing next frame), None for a
    causal model or when nothing was fed. The next `step` starts new sequences."""
    result = None
    if self._state is not None and 'flush' in self._functions:
      result = self._output(self._functions['flush'](self.weights, self._state), self._single)
    self._state = self._streams = self._single = None
    return result

  reset = flush


def load(folder: str) -> Stream:
  """A `Stream` of the export in `folder` (checked: ExportError naming what is wrong)."""
  return Stream(folder)


def segment(stream: Stream, frames: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray, Output]]:
  """(index, frame, its output) for every frame, in order, the delay undone (the last frames from the flush)."""
  waiting = collections.deque()
  for index, frame in enumerate(frames):
    waiting.append((index, frame))
    out = stream.step(frame)
    if out.ready:
      yield waiting.popleft() + (out,)
  out = stream.flush()
  if out is not None and waiting:
    yield waiting.popleft() + (out,)
  if waiting:
    raise RuntimeError(f'{len(waiting)} frames got no output (delay {stream.delay})')


# -- the command line: what predict.py writes -----------------------------------------------------------------

def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float) -> np.ndarray:
  """The frame with class colours blended in at opacity `alpha` (ids outside the palette left as the frame)."""
  valid = ((labels >= 0) & (labels < len(palette)))[..., None]
  colors = palette[np.clip(labels, 0, len(palette) - 1)].astype(np.float32)
  blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colors
  return np.where(valid, np.clip(np.rint(blended), 0, 255), image).astype(np.uint8)


def png_bytes(labels: np.ndarray, palette: np.ndarray) -> bytes:
  """A palette PNG (8-bit, 256 colours, `palette` first, the rest black) of class ids (H, W) in 0..255."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() > 255):
    raise ValueError('class ids must be in 0..255 for a PNG label image')
  h, w = labels.shape
  table = np.zeros((256, 3), np.uint8)
  table[:min(len(palette), 256)] = np.asarray(palette, np.uint8)[:256]
  rows = np.concatenate([np.zeros((h, 1), np.uint8), labels.astype(np.uint8)], axis=1)  # filter 0 per row
  compressor = zlib.compressobj(6, zlib.DEFLATED, 15, 9)
  data = compressor.compress(rows.tobytes()) + compressor.flush()

  def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 3, 0, 0, 0))
          + chunk(b'PLTE', table.tobytes()) + chunk(b'IDAT', data) + chunk(b'IEND', b''))


def _imageio_ffmpeg():
  try:
    import imageio_ffmpeg
  except ImportError:
    raise InputError('video files need imageio-ffmpeg (pip install imageio-ffmpeg)') from None
  return imageio_ffmpeg


def _natural_key(name: str):
  return [int(part) if part.isdigit() else part.lower() for part in re.split(r'(\d+)', name)]


class VideoInput:
  """The frames of a video file (ffmpeg of imageio-ffmpeg) or of a folder of images (Pillow), uint8 RGB."""

  def __init__(self, path: str, ignore_decode_errors: bool = False):
    self.path = os.path.abspath(path)
    self.ignore_decode_errors = ignore_decode_errors
    self.decode_errors: list[str] = []
    self.names: tuple[str, ...] = ()
    self.fps = None
    self.num_frames = None
    if not os.path.exists(self.path):
      raise InputError(f'input video not found: {self.path}')
    if os.path.isdir(self.path):
      self.kind = 'folder'
      self.names = tuple(sorted((n for n in os.listdir(self.path) if not n.startswith('.')
                                 and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
                                 and os.path.isfile(os.path.join(self.path, n))), key=_natural_key))
      if not self.names:
        raise InputError(f'no image file ({" ".join(IMAGE_EXTENSIONS)}) in folder {self.path}')
      self.num_frames = len(self.names)
      self.size = self._image(self.names[0]).shape[:2]
      return
    self.kind = 'video'
    if os.path.getsize(self.path) == 0:
      raise InputError(f'cannot read video {self.path}: the file is empty')
    imageio_ffmpeg = _imageio_ffmpeg()
    header = imageio_ffmpeg.read_frames(self.path)
    try:
      meta = next(header)
    except (OSError, RuntimeError) as e:
      raise InputError(f'cannot read video {self.path}: {str(e).strip().splitlines()[-1]}') from None
    finally:
      header.close()
    self.size = (int(meta['size'][1]), int(meta['size'][0]))
    self.fps = float(meta.get('fps') or 0) or None
    duration = float(meta.get('duration') or 0)
    self.num_frames = max(int(round(duration * self.fps)), 1) if self.fps and duration else None

  def _image(self, name: str) -> np.ndarray:
    try:
      from PIL import Image
    except ImportError:
      raise InputError('reading a folder of images needs Pillow (pip install pillow); a video file needs '
                       'imageio-ffmpeg') from None
    path = os.path.join(self.path, name)
    try:
      with Image.open(path) as image:
        return np.asarray(image.convert('RGB'))
    except (OSError, ValueError) as e:
      raise InputError(f'cannot read image {path}: {e}') from None

  def __iter__(self) -> Iterator[np.ndarray]:
    if self.kind == 'folder':
      for name in self.names:
        frame = self._image(name)
        if frame.shape[:2] != self.size:
          raise InputError(f'{os.path.join(self.path, name)} is {frame.shape[0]}x{frame.shape[1]} (HxW) but the '
                           f'first image is {self.size[0]}x{self.size[1]}: all frames must have one size')
        yield frame
      return
    imageio_ffmpeg = _imageio_ffmpeg()
    frame_bytes = self.size[0] * self.size[1] * 3
    with tempfile.TemporaryFile() as log:
      process = subprocess.Popen(
          [imageio_ffmpeg.get_ffmpeg_exe(), '-hide_banner', '-nostdin', '-v', 'error', '-i', self.path, '-map',
           '0:v:0', '-fps_mode', 'passthrough', '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:1'],
          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
      count = 0
      try:
        while data := process.stdout.read(frame_bytes):
          if len(data) < frame_bytes:
            raise InputError(f'video {self.path}: the last frame is incomplete')
          count += 1
          yield np.frombuffer(data, np.uint8).reshape(self.size + (3,))
        process.wait()
        log.seek(0)
        errors = [line for line in log.read().decode('utf-8', 'replace').splitlines() if line.strip()]
        if errors and not self.ignore_decode_errors:
          raise InputError(f'video {self.path} is corrupt or truncated: ffmpeg reports "{errors[0].strip()}". Pass '
                           '--ignore-decode-errors to use the frames that decode.')
        self.decode_errors = errors
        if process.returncode != 0 or count == 0:
          raise InputError(f'cannot read video {self.path}: no decodable frame (ffmpeg exit status '
                           f'{process.returncode})')
      finally:
        if process.poll() is None:
          process.kill()
        process.wait()
        process.stdout.close()


class VideoOutput:
  """Writes RGB frames to a temporary sibling of `path` with imageio-ffmpeg (H.264 CRF 18, VP9 for .webm,
  or lossless H.264 RGB), renamed onto `path` by `commit()`."""

  def __init__(self, path: str, size: tuple[int, int], fps: float, lossless: bool):
    imageio_ffmpeg = _imageio_ffmpeg()
    self.path = os.path.abspath(path)
    ext = os.path.splitext(self.path)[1].lower()
    fd, self.tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(self.path)}.partial-', suffix=ext,
                                    dir=os.path.dirname(self.path))
    os.close(fd)
    even = size[0] % 2 == 0 and size[1] % 2 == 0
    codec, pix_fmt, params = VIDEO_CODECS[ext], 'yuv420p' if even else 'yuv444p', ['-crf', '18', '-preset', 'medium']
    if lossless:
      codec, pix_fmt, params = 'libx264rgb', 'rgb24', ['-qp', '0', '-preset', 'medium']
    elif codec == 'libvpx-vp9':
      params = ['-crf', '30', '-b:v', '0']
    if ext in ('.mp4', '.m4v', '.mov'):
      params += ['-movflags', '+faststart']
    self._writer = imageio_ffmpeg.write_frames(
        self.tmp, (size[1], size[0]), fps=fps, codec=codec, pix_fmt_out=pix_fmt, quality=None, macro_block_size=1,
        ffmpeg_log_level='error', output_params=params)
    self._writer.send(None)

  def write(self, frame: np.ndarray) -> None:
    self._writer.send(np.ascontiguousarray(frame))

  def commit(self) -> None:
    self._writer.close()
    os.replace(self.tmp, self.path)

  def abort(self) -> None:
    try:
      self._writer.close()
    except Exception:  # pylint: disable=broad-except  (ffmpeg already failed)
      pass
    if os.path.exists(self.tmp):
      os.remove(self.tmp)


def _check_outputs(out: str, labels_dir: str | None, lossless: bool, video: str) -> None:
  ext = os.path.splitext(out)[1].lower()
  if ext not in VIDEO_CODECS:
    raise InputError(f'output {out}: unsupported video extension {ext or "(none)"!r}; use one of '
                     f'{" ".join(VIDEO_CODECS)}')
  if lossless and ext not in LOSSLESS_EXTENSIONS:
    raise InputError(f'output {out}: lossless video needs one of {" ".join(LOSSLESS_EXTENSIONS)}')
  folder = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(folder) or os.path.isdir(out):
    raise InputError(f'output {out}: folder {folder} does not exist' if not os.path.isdir(folder)
                     else f'output {out} is a folder')
  if os.path.abspath(out) == os.path.abspath(video):
    raise InputError(f'--out {out} is the input video')
  if labels_dir:
    path = os.path.abspath(labels_dir)
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
      raise InputError(f'labels folder {path} already exists and is not empty: give a new or empty folder')
    if not os.path.isdir(os.path.dirname(path)):
      raise InputError(f'labels folder {path}: parent folder {os.path.dirname(path)} does not exist')


def _index_list(indices: list[int], shown: int = 8) -> str:
  if not indices:
    return 'none'
  text = ', '.join(str(i) for i in indices[:shown])
  if len(indices) <= shown:
    return text
  gaps = {b - a for a, b in zip(indices, indices[1:])}
  pattern = f' (every {gaps.pop()} frames)' if len(gaps) == 1 else ''
  return f'{text}, ..., {indices[-1]}{pattern}'


def predict(stream: Stream, video: str, out: str, *, labels_dir: str | None = None, alpha: float = 0.5,
            fps: float | None = None, lossless: bool = False, ignore_decode_errors: bool = False,
            progress: bool = False) -> dict:
  """What `python -m ma_resnet.exported` does (and `predict.py` with the run): the overlay video `out` and the
  label PNGs in `labels_dir`, each written completely or not at all. Returns a summary."""
  reader = VideoInput(video, ignore_decode_errors)
  if reader.size != stream.frame_shape[:2]:
    raise InputError(f'{reader.path} has {reader.size[0]}x{reader.size[1]} (HxW) frames; this export takes '
                     f'{stream.frame_shape[0]}x{stream.frame_shape[1]} (export it again with --frame-size='
                     f'{reader.size[0]},{reader.size[1]})')
  out_fps = float(fps or reader.fps or DEFAULT_FPS)
  labels_tmp = writer = None
  enhanced, start, first_done = [], time.time(), None
  try:
    if labels_dir:
      labels_dir = os.path.abspath(labels_dir)
      labels_tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(labels_dir)}.partial-',
                                    dir=os.path.dirname(labels_dir))
    writer = VideoOutput(out, reader.size, out_fps, lossless)
    for index, frame, result in segment(stream, reader):
      writer.write(overlay(frame, result.labels, stream.palette, alpha))
      if labels_tmp:
        name = os.path.splitext(reader.names[index])[0] if reader.names else f'{index:06d}'
        with open(os.path.join(labels_tmp, f'{name}.png'), 'wb') as f:
          f.write(png_bytes(result.labels, stream.palette))
      enhanced.append(result.enhanced)
      first_done = first_done or time.time()
      if progress:
        print(f'\r{len(enhanced)}/{reader.num_frames or "?"} frames', end='', file=sys.stderr, flush=True)
    end = time.time()
    writer.commit()
    if labels_tmp:
      if os.path.isdir(labels_dir):
        os.rmdir(labels_dir)  # empty (checked): a folder that filled up meanwhile makes this fail
      os.replace(labels_tmp, labels_dir)
  except BaseException:
    if writer is not None:
      writer.abort()
    if labels_tmp and os.path.isdir(labels_tmp):
      shutil.rmtree(labels_tmp, ignore_errors=True)
    raise
  finally:
    if progress:
      print(file=sys.stderr)
  count = len(enhanced)
  steady = end - first_done if first_done else 0.0
  return {'out': writer.path, 'labels_dir': labels_dir, 'frames': count, 'size': reader.size, 'fps': out_fps,
          'seconds': end - start, 'enhanced': enhanced, 'decode_errors': reader.decode_errors,
          'frames_per_second': (count - 1) / steady if count > 1 and steady > 0 else float('nan')}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m ma_resnet.exported', description=__doc__.split('\n')[0])
  parser.add_argument('export', help='Folder written by python -m ma_resnet.export.')
  parser.add_argument('--video', required=True, help='Input video file, or a folder of frames (image files).')
  parser.add_argument('--out', required=True, help='Output overlay video (.mp4 .m4v .mov .mkv .webm).')
  parser.add_argument('--labels-dir', help='Also write per-frame class-id PNGs into this new (or empty) folder.')
  parser.add_argument('--alpha', type=float, default=0.5, help='Opacity of the class colours (0..1).')
  parser.add_argument('--fps', type=float, help="Frame rate of the output (default: the input's; 25 for a "
                      'frame folder).')
  parser.add_argument('--lossless', action='store_true', help='Exact RGB output (H.264 RGB, quantiser 0).')
  parser.add_argument('--ignore-decode-errors', action='store_true', help='Segment the frames that decode from '
                      'a corrupt or truncated video instead of stopping.')
  parser.add_argument('--progress', dest='progress', action='store_true', default=True)
  parser.add_argument('--noprogress', dest='progress', action='store_false', help='No progress line.')
  return parser


def _fail(message: str, code: int) -> int:
  print(f'error: {message}', file=sys.stderr, flush=True)
  return code


def main(argv: list[str] | None = None) -> int:
  """The command line (see the module docstring); returns the exit status."""
  parser = _parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:
    return int(e.code or 0) and EXIT_USAGE
  if not 0.0 <= args.alpha <= 1.0:
    return _fail(f'--alpha must be in [0, 1], got {args.alpha}', EXIT_USAGE)
  if args.fps is not None and args.fps <= 0:
    return _fail(f'--fps must be > 0, got {args.fps}', EXIT_USAGE)
  try:
    _check_outputs(args.out, args.labels_dir, args.lossless, args.video)
  except InputError as e:
    return _fail(str(e), EXIT_USAGE)
  try:
    stream = load(args.export)
  except ExportError as e:
    return _fail(str(e), EXIT_EXPORT)
  manifest = stream.manifest
  print(f'export: {stream.folder} ({manifest.get("model", "model")}, delay {stream.delay}, frames '
        f'{stream.frame_shape[1]}x{stream.frame_shape[0]}, platforms {",".join(manifest["platforms"])})', flush=True)
  try:
    summary = predict(stream, args.video, args.out, labels_dir=args.labels_dir, alpha=args.alpha, fps=args.fps,
                      lossless=args.lossless, ignore_decode_errors=args.ignore_decode_errors, progress=args.progress)
  except InputError as e:
    return _fail(f'{e}\n  (nothing was written to {args.out})', EXIT_DATA)
  except OSError as e:
    return _fail(f'cannot write {args.out}: {e}\n  (nothing was written to {args.out})', EXIT_WRITE)
  h, w = summary['size']
  labels_note = f', labels in {summary["labels_dir"]}' if summary['labels_dir'] else ''
  model_size = manifest['model_input']['size']
  print(f'wrote {summary["out"]}: {summary["frames"]} frames {w}x{h} (WxH) at {summary["fps"]:g} fps (model input '
        f'{model_size[1]}x{model_size[0]}){labels_note}; {summary["frames_per_second"]:.1f} frames/s after the first',
        flush=True)
  if stream.frame_kinds:
    plain = [i for i, e in enumerate(summary['enhanced']) if not e]
    print(f'{stream.frame_kinds[0]} frames: {len(plain)} of {summary["frames"]} ({_index_list(plain)}); the other '
          f'{summary["frames"] - len(plain)}: {stream.frame_kinds[1]}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
