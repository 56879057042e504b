"""Video for inference, one frame at a time, with the ffmpeg of `imageio-ffmpeg`.

    with open_frames('in.mp4') as frames, VideoWriter('out.mp4', frames.info.size, fps=frames.info.fps) as out:
      for frame in frames:        # uint8 (H, W, 3) RGB; a video file or a folder of images (natural name order)
        out.write(frame)          # out.mp4 appears only when the block succeeds (`files.atomic_path`)

Reading: `imageio_ffmpeg.read_frames` reads the header (an unusable file fails there, with ffmpeg's reason);
the frames come from one ffmpeg process (first video stream, every frame once) whose error log is watched,
because neither `read_frames` nor PyAV report a stream that ends early (both return the 6 decodable frames
of a 12-frame MKV cut at 60%, silently). Errors raise `VideoReadError` unless `ignore_decode_errors`.
Writing: `imageio_ffmpeg.write_frames` at the exact frame size: H.264 CRF 18 (.mp4 .m4v .mov .mkv), VP9
(.webm), or `lossless` H.264 RGB (exact pixels back). `LabelWriter`: class-id PNGs into a folder, all or
nothing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import tempfile
from typing import Iterator, Sequence

import imageio_ffmpeg
import numpy as np
from PIL import Image

from ma_resnet.data.errors import DataError
from ma_resnet import visualize
from ma_resnet.files import atomic_path

# imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp unless this is set; a preexec_fn makes Python fork()
# the multithreaded JAX process (a deadlock risk, and JAX warns about it): its documented switch turns it off.
os.environ.setdefault('IMAGEIO_FFMPEG_NO_PREVENT_SIGINT', '1')

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
VIDEO_CODECS = {'.mp4': 'libx264', '.m4v': 'libx264', '.mov': 'libx264', '.mkv': 'libx264', '.webm': 'libvpx-vp9'}
LOSSLESS_EXTENSIONS = ('.mp4', '.m4v', '.mov', '.mkv')
DEFAULT_FPS = 25.0


class VideoError(Exception):
  """Base class of the errors of this module."""


class VideoReadError(VideoError, DataError):
  """The input cannot be read (not a video, corrupt, truncated, bad image in a folder): the message says why."""


class VideoNotFoundError(VideoReadError, FileNotFoundError):
  """The input path does not exist (or a folder holds no image file)."""


class VideoWriteError(VideoError, OSError):
  """The output cannot be written (unsupported extension, ffmpeg failed, no permission): nothing was written."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """num_frames: exact for a folder, else duration x fps or None; fps: None for a folder or when unknown."""
  path: str
  width: int
  height: int
  fps: float | None
  num_frames: int | None
  kind: str  # 'video' | 'folder'
  codec: str = ''
  frame_names: tuple[str, ...] = ()  # a folder's image file names, in reading order

  @property
  def size(self) -> tuple[int, int]:
    """(height, width)."""
    return self.height, self.width


def natural_key(name: str):
  """Sort key that orders digit runs by value: 'f2.png' < 'f10.png'."""
  return [int(part) if part.isdigit() else part.lower() for part in re.split(r'(\d+)', name)]


def read_image(path: str) -> np.ndarray:
  """uint8 (H, W, 3) RGB of an image file; VideoReadError naming it when it cannot be decoded."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise VideoReadError(f'cannot read image {path}: {e}') from None


class FrameReader(contextlib.AbstractContextManager):
  """Iterates once over the frames of an input as uint8 (H, W, 3) RGB; `info` describes it. Use it as a
  context manager (or `close()`) so that a decoder is stopped when not read to the end."""
  info: VideoInfo
  decode_errors: list

  def __iter__(self) -> Iterator[np.ndarray]:
    raise NotImplementedError

  def close(self) -> None:
    pass

  def __exit__(self, *exc):
    self.close()
    return False


class FolderReader(FrameReader):
  """The image files of a folder, in natural name order; every image must have the size of the first."""

  def __init__(self, folder: str):
    self.folder = os.path.abspath(folder)
    names = sorted((n for n in os.listdir(self.folder) if not n.startswith('.')
                    and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
                    and os.path.isfile(os.path.join(self.folder, n))), key=natural_key)
    if not names:
      raise VideoNotFoundError(f'no image file ({" ".join(IMAGE_EXTENSIONS)}) in folder {self.folder}')
    first = read_image(os.path.join(self.folder, names[0]))
    self.decode_errors = []
    self.info = VideoInfo(path=self.folder, width=first.shape[1], height=first.shape[0], fps=None,
                          num_frames=len(names), kind='folder', codec='images', frame_names=tuple(names))

  def __iter__(self) -> Iterator[np.ndarray]:
    for name in self.info.frame_names:
      path = os.path.join(self.folder, name)
      frame = read_image(path)
      if frame.shape[:2] != self.info.size:
        raise VideoReadError(f'{path} is {frame.shape[0]}x{frame.shape[1]} (HxW) but the first image of the '
                             f'folder ({self.info.frame_names[0]}) is {self.info.height}x{self.info.width}: '
                             f'all frames of a video must have one size')
      yield frame


def _ffmpeg_message(text: str) -> str:
  """ffmpeg's reason, in one line: its last few distinct lines without '[context @ 0x..]' prefixes."""
  lines = [re.sub(r'^(\[[^\]]*\]\s*)+', '', line).strip() for line in text.splitlines()]
  lines = [line for line in lines if line and not line.startswith(('===', 'Could not load meta'))]
  return '; '.join(dict.fromkeys(lines[-3:])) or 'ffmpeg reported no reason'


class FFmpegReader(FrameReader):
  """Decodes a video file with ffmpeg into raw RGB frames (see the module docstring)."""

  def __init__(self, path: str, *, ignore_decode_errors: bool = False):
    self.path = os.path.abspath(path)
    self.ignore_decode_errors = bool(ignore_decode_errors)
    self.decode_errors = []
    self._process = None
    header = imageio_ffmpeg.read_frames(self.path)
    try:
      meta = next(header)
    except (OSError, RuntimeError) as e:
      raise VideoReadError(f'cannot read video {self.path}: {_ffmpeg_message(str(e))}') from None
    finally:
      header.close()
    width, height = meta['size']
    fps = float(meta.get('fps') or 0) or None
    duration = float(meta.get('duration') or 0)
    self.info = VideoInfo(path=self.path, width=int(width), height=int(height), fps=fps,
                          num_frames=max(int(round(duration * fps)), 1) if fps and duration else None,
                          kind='video', codec=str(meta.get('codec', '')))

  def _errors_so_far(self, frames_read: int) -> None:
    self._log.seek(0)
    errors = [line for line in self._log.read().decode('utf-8', 'replace').splitlines() if line.strip()]
    new = errors[len(self.decode_errors):]
    if not new:
      return
    if not self.ignore_decode_errors:
      raise VideoReadError(f'video {self.path} is corrupt or truncated: ffmpeg reports "{_ffmpeg_message(new[0])}" '
                           f'(noticed after {frames_read} frames). Pass --ignore-decode-errors '
                           '(ignore_decode_errors=True) to use the frames that decode.')
    self.decode_errors.extend(_ffmpeg_message(line) for line in new)

  def __iter__(self) -> Iterator[np.ndarray]:
    frame_bytes = self.info.width * self.info.height * 3
    self._log = tempfile.TemporaryFile()
    self._process = subprocess.Popen(
        [imageio_ffmpeg.get_ffmpeg_exe(), '-hide_banner', '-nostdin', '-v', 'error', '-i', self.path, '-map',
         '0:v:0', '-fps_mode', 'passthrough', '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:1'],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log)
    count = 0
    try:
      while data := self._process.stdout.read(frame_bytes):
        if len(data) < frame_bytes:
          raise VideoReadError(f'video {self.path}: the last frame is incomplete ({len(data)} of {frame_bytes} '
                               'bytes)')
        self._errors_so_far(count)
        count += 1
        yield np.frombuffer(data, np.uint8).reshape(self.info.height, self.info.width, 3)
      self._process.wait()
      self._errors_so_far(count)
      if self._process.returncode != 0 or count == 0:
        raise VideoReadError(f'cannot read video {self.path}: no decodable frame (ffmpeg exit status '
                             f'{self._process.returncode})')
    finally:
      self.close()

  def close(self) -> None:
    if self._process is not None:
      if self._process.poll() is None:
        self._process.kill()
      self._process.wait()
      self._process.stdout.close()
      self._log.close()
      self._process = None


def open_frames(path: str, *, ignore_decode_errors: bool = False) -> FrameReader:
  """A reader of the video file or image folder at `path`; raises VideoReadError (VideoNotFoundError when the
  path does not exist) before any frame is read when the input is unusable."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise VideoNotFoundError(f'input video not found: {os.path.abspath(path)}')
  if os.path.isdir(path):
    return FolderReader(path)
  if not os.access(path, os.R_OK):
    raise VideoReadError(f'cannot read video {os.path.abspath(path)}: permission denied')
  if os.path.getsize(path) == 0:
    raise VideoReadError(f'cannot read video {os.path.abspath(path)}: the file is empty')
  return FFmpegReader(path, ignore_decode_errors=ignore_decode_errors)


def read_video(path: str, **kwargs) -> np.ndarray:
  """Every frame of a (short) video or image folder as uint8 (T, H, W, 3); for tests and small clips."""
  with open_frames(path, **kwargs) as reader:
    return np.stack(list(reader))


def check_output_path(path: str, *, lossless: bool = False) -> str:
  """The lower-case extension of a writable video path; VideoWriteError when it is not supported."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in VIDEO_CODECS:
    raise VideoWriteError(f'output {path}: unsupported video extension {ext or "(none)"!r}; use one of '
                          f'{" ".join(VIDEO_CODECS)}')
  if lossless and ext not in LOSSLESS_EXTENSIONS:
    raise VideoWriteError(f'output {path}: lossless video needs one of {" ".join(LOSSLESS_EXTENSIONS)}')
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise VideoWriteError(f'output {path}: folder {folder} does not exist')
  if not os.access(folder, os.W_OK):
    raise VideoWriteError(f'output {path}: folder {folder} is not writable')
  if os.path.isdir(path):
    raise VideoWriteError(f'output {path} is a folder')
  return ext


class _AtomicOutput(contextlib.AbstractContextManager):
  """A writer whose target appears on `commit()` (the `with` block's success) and never after `abort()`."""

  def __init__(self, target: str, folder: bool):
    self._context = atomic_path(target, folder=folder)
    self._tmp = self._context.__enter__()

  def commit(self):
    self._context.__exit__(None, None, None)

  def abort(self) -> None:
    with contextlib.suppress(VideoError):
      self._context.__exit__(VideoError, VideoError('aborted'), None)

  def __exit__(self, exc_type, exc, tb):
    self.commit() if exc_type is None else self.abort()
    return False


class VideoWriter(_AtomicOutput):
  """Writes RGB frames of one `size` = (height, width) to `path` at `fps` (None: 25), all or nothing."""

  def __init__(self, path: str, size: tuple[int, int], *, fps: float | None = None, lossless: bool = False):
    self.path = os.path.abspath(os.fspath(path))
    self.size = (int(size[0]), int(size[1]))
    self.fps = float(fps) if fps else DEFAULT_FPS
    self.frames = 0
    ext = check_output_path(self.path, lossless=lossless)
    super().__init__(self.path, folder=False)
    even = self.size[0] % 2 == 0 and self.size[1] % 2 == 0
    codec, pix_fmt, params = VIDEO_CODECS[ext], 'yuv420p' if even else 'yuv444p', ['-crf', '18', '-preset', 'medium']
    if lossless:
      codec, pix_fmt, params = 'libx264rgb', 'rgb24', ['-qp', '0', '-preset', 'medium']
    elif codec == 'libvpx-vp9':
      params = ['-crf', '30', '-b:v', '0']
    if ext in ('.mp4', '.m4v', '.mov'):
      params += ['-movflags', '+faststart']
    self._writer = imageio_ffmpeg.write_frames(
        self._tmp, (self.size[1], self.size[0]), fps=self.fps, codec=codec, pix_fmt_out=pix_fmt, quality=None,
        macro_block_size=1, ffmpeg_log_level='error', output_params=params)
    self._writer.send(None)

  def write(self, frame: np.ndarray) -> None:
    """Appends one uint8 (H, W, 3) RGB frame of the writer's size."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.shape != self.size + (3,):
      raise ValueError(f'expected a uint8 frame of shape {self.size + (3,)}, got {frame.dtype} {frame.shape}')
    try:
      self._writer.send(np.ascontiguousarray(frame))
    except OSError as e:
      self.abort()
      raise VideoWriteError(f'cannot write video {self.path}: ffmpeg stopped ({str(e).splitlines()[0]})') from None
    self.frames += 1

  def commit(self) -> str:
    """Finishes the file (checked readable, of the right size) and renames it onto `path`; returns `path`."""
    self._writer.close()
    try:
      if self.frames == 0:
        raise VideoWriteError('no frame was written')
      with FFmpegReader(self._tmp) as check:
        if check.info.size != self.size:
          raise VideoWriteError(f'ffmpeg wrote {check.info.height}x{check.info.width} frames')
    except VideoError as e:
      self.abort()
      raise VideoWriteError(f'cannot write video {self.path}: {e}') from None
    super().commit()
    return self.path

  def abort(self) -> None:
    self._writer.close()
    super().abort()


def check_labels_dir(path: str) -> str:
  """The absolute path of a labels folder to create: it must not exist, or be an empty folder."""
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise VideoWriteError(f'labels folder {path} already exists and is not empty: give a new or empty folder')
  if not os.path.isdir(os.path.dirname(path)):
    raise VideoWriteError(f'labels folder {path}: parent folder {os.path.dirname(path)} does not exist')
  return path


class LabelWriter(_AtomicOutput):
  """Writes one class-id PNG per frame into `folder`, all or nothing (a temporary sibling folder, renamed)."""

  def __init__(self, folder: str, palette: np.ndarray | None = None):
    self.folder = check_labels_dir(folder)
    self.palette = palette
    self.names: list[str] = []
    super().__init__(self.folder, folder=True)

  def write(self, name: str, labels: np.ndarray) -> None:
    """Writes `labels` (H, W) as `<name>.png` (a name without extension)."""
    visualize.label_image(labels, self.palette).save(os.path.join(self._tmp, f'{name}.png'), format='PNG')
    self.names.append(f'{name}.png')

  def commit(self) -> str:
    super().commit()
    return self.folder


def write_video(path: str, frames: Sequence[np.ndarray] | np.ndarray, *, fps: float | None = None,
                lossless: bool = False) -> str:
  """Writes a short sequence of uint8 (H, W, 3) frames (all of one size) as a video file; returns the path."""
  frames = list(frames)
  if not frames:
    raise ValueError('no frame to write')
  with VideoWriter(path, frames[0].shape[:2], fps=fps, lossless=lossless) as writer:
    for frame in frames:
      writer.write(frame)
  return writer.path
