"""Reading and writing video for inference: frames one at a time, through the ffmpeg binary of `imageio-ffmpeg`.

    with open_frames('in.mp4') as frames:          # a video file, or a folder of image files
      print(frames.info)                            # VideoInfo(width, height, fps, estimated frame count, ...)
      with VideoWriter('out.mp4', (h, w), fps=frames.info.fps) as out:
        for frame in frames:                        # uint8 (H, W, 3) RGB, one at a time (never the whole video)
          out.write(frame)                          # the file appears at out.mp4 only when the block succeeds

Reading. A video file is decoded by one `ffmpeg` process (`imageio_ffmpeg.get_ffmpeg_exe()`: the binary shipped in
the `imageio-ffmpeg` wheel, or $IMAGEIO_FFMPEG_EXE) into raw RGB frames on a pipe: its first video stream, every
decoded frame exactly once (`-fps_mode passthrough`: no frame is dropped or duplicated), rotation metadata applied
(ffmpeg's autorotate), audio ignored. ffmpeg's log is read alongside: a file ffmpeg cannot open (missing, empty,
not a video, no video stream, a truncated MP4 without its index) raises `VideoReadError` with ffmpeg's own
explanation when the reader is opened; an error ffmpeg reports while decoding (a corrupt or truncated stream)
raises `VideoReadError` at that point, unless `ignore_decode_errors=True` (then the frames that decode are
returned and `reader.decode_errors` lists the messages). A folder is read as its image files (.png .jpg .jpeg
.bmp .tif .tiff .webp, hidden files skipped) in natural name order (`f2.png` before `f10.png`) with Pillow; every
image must have the size of the first.

Writing. `VideoWriter` pipes raw RGB frames into ffmpeg, which writes a temporary file next to the target
(`.<name>.partial-<random>.<ext>`); `commit()` (or leaving the `with` block without an exception) waits for ffmpeg
and renames it onto the target, so the target is either the complete new video or untouched. The frame size is
kept exactly (no padding to a multiple of 16). Codecs by extension: .mp4 .m4v .mov .mkv H.264 (libx264, CRF 18,
yuv420p when both sides are even, else yuv444p, which fewer players accept), .webm VP9. `lossless=True` writes
H.264 in RGB with quantiser 0 (libx264rgb -qp 0; .mp4 .m4v .mov .mkv): decoding gives back the exact pixels, for
checks and further processing, at the price of large files and weak player support.

`LabelWriter` writes per-frame class-id PNGs (palette mode: the pixel values are the class ids, viewers show the
palette colours) into a temporary sibling folder renamed onto the target folder at the end, likewise all or
nothing.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import threading
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from ma_resnet.data.errors import DataError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
VIDEO_CODECS = {'.mp4': 'libx264', '.m4v': 'libx264', '.mov': 'libx264', '.mkv': 'libx264', '.webm': 'libvpx-vp9'}
LOSSLESS_EXTENSIONS = ('.mp4', '.m4v', '.mov', '.mkv')
DEFAULT_FPS = 25.0
HEADER_TIMEOUT_S = 60.0


class VideoError(Exception):
  """Base class of the errors of this module."""


class VideoReadError(VideoError, DataError):
  """The input cannot be read (not a video, corrupt, truncated, bad image in a folder): the message says why."""


class VideoNotFoundError(VideoReadError, FileNotFoundError):
  """The input path does not exist (or a folder holds no image file)."""


class VideoWriteError(VideoError, OSError):
  """The output cannot be written (unsupported extension, ffmpeg failed, no permission): nothing was written."""


def ffmpeg_exe() -> str:
  """The ffmpeg binary: $IMAGEIO_FFMPEG_EXE, the one in the imageio-ffmpeg wheel, or ffmpeg on the PATH."""
  try:
    import imageio_ffmpeg
  except ImportError:
    exe = shutil.which('ffmpeg')
    if exe:
      return exe
    raise VideoError('reading and writing video needs ffmpeg: pip install imageio-ffmpeg (it ships the binary)'
                     ) from None
  return imageio_ffmpeg.get_ffmpeg_exe()


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What is known about an input before reading it.

  num_frames is exact for a folder and an estimate (duration x fps, for progress bars) for a video file, None
  when the container does not say; fps is None for a folder (no timing) and when ffmpeg reports none.
  """
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


def list_image_files(folder: str) -> list[str]:
  """The image file names of `folder` in natural order (hidden files and other extensions left out)."""
  names = [n for n in os.listdir(folder) if not n.startswith('.') and os.path.splitext(n)[1].lower()
           in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(folder, n))]
  return sorted(names, key=natural_key)


def read_image(path: str) -> np.ndarray:
  """uint8 (H, W, 3) RGB of an image file; VideoReadError naming it when it cannot be decoded."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise VideoReadError(f'cannot read image {path}: {e}') from None


# ---------------------------------------------------------------------------------------------------------
# Readers.


class FrameReader:
  """Iterates over the frames of an input once, as uint8 (H, W, 3) RGB arrays; `info` describes it.

  Use as a context manager (or call `close()`) so that a decoder process is stopped when not read to the end.
  """

  info: VideoInfo
  decode_errors: list[str]

  def __iter__(self) -> Iterator[np.ndarray]:
    raise NotImplementedError

  def close(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False


class FolderReader(FrameReader):
  """The image files of a folder, in natural name order; every image must have the size of the first."""

  def __init__(self, folder: str):
    self.folder = os.path.abspath(folder)
    names = list_image_files(self.folder)
    if not names:
      raise VideoNotFoundError(f'no image file ({" ".join(IMAGE_EXTENSIONS)}) in folder {self.folder}')
    first = read_image(os.path.join(self.folder, names[0]))
    self._first = first
    self.decode_errors = []
    self.info = VideoInfo(path=self.folder, width=first.shape[1], height=first.shape[0], fps=None,
                          num_frames=len(names), kind='folder', codec='images', frame_names=tuple(names))

  def __iter__(self) -> Iterator[np.ndarray]:
    for i, name in enumerate(self.info.frame_names):
      path = os.path.join(self.folder, name)
      frame = self._first if i == 0 else read_image(path)
      if frame.shape[:2] != self.info.size:
        raise VideoReadError(f'{path} is {frame.shape[0]}x{frame.shape[1]} (HxW) but the first image of the '
                             f'folder ({self.info.frame_names[0]}) is {self.info.height}x{self.info.width}: '
                             f'all frames of a video must have one size')
      yield frame
    self._first = None


_LEVEL = re.compile(r'\[(panic|fatal|error|warning|info)\]')
_DURATION = re.compile(r'Duration: (\d+):(\d+):(\d+(?:\.\d+)?)')
_FPS = re.compile(r'([\d.]+)\s*(?:fps|tbr)\b')
_SIZE = re.compile(r',\s*(\d+)x(\d+)[\s,\[]')
_CODEC = re.compile(r'Video:\s*([^\s,]+)')


def _message(line: str) -> str:
  """An ffmpeg log line without its '[context @ 0x..] [level]' prefixes."""
  return re.sub(r'^(\[[^\]]*\]\s*)+', '', line).strip()


class FFmpegReader(FrameReader):
  """Decodes a video file with ffmpeg into raw RGB frames (see the module docstring)."""

  def __init__(self, path: str, *, ignore_decode_errors: bool = False):
    self.path = os.path.abspath(path)
    self.ignore_decode_errors = bool(ignore_decode_errors)
    self.decode_errors = []
    self._lines: list[str] = []
    self._errors: list[str] = []
    self._header_done = threading.Event()
    self._header_lines: list[str] = []
    command = [ffmpeg_exe(), '-hide_banner', '-nostdin', '-loglevel', 'level+info', '-i', self.path,
               '-map', '0:v:0', '-an', '-sn', '-dn', '-fps_mode', 'passthrough', '-f', 'rawvideo',
               '-pix_fmt', 'rgb24', 'pipe:1']
    try:
      self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
    except OSError as e:
      raise VideoError(f'cannot start ffmpeg ({command[0]}): {e}') from None
    self._log_thread = threading.Thread(target=self._read_log, daemon=True)
    self._log_thread.start()
    try:
      self.info = self._wait_for_header()
    except BaseException:
      self.close()
      raise

  # -- ffmpeg's log ---------------------------------------------------------------------------------------

  def _read_log(self) -> None:
    in_output = False
    buffer = b''
    stream = self._process.stderr
    while True:
      chunk = stream.read1(4096) if hasattr(stream, 'read1') else stream.read(4096)
      if not chunk:
        break
      buffer += chunk
      parts = re.split(rb'[\r\n]', buffer)
      buffer = parts.pop()
      for raw in parts:
        line = raw.decode('utf-8', 'replace').rstrip()
        if not line:
          continue
        self._lines.append(line)
        level = _LEVEL.search(line)
        if level and level.group(1) in ('panic', 'fatal', 'error'):
          self._errors.append(_message(line))
        if not self._header_done.is_set():
          self._header_lines.append(line)
          if 'Output #0' in line:
            in_output = True
          elif in_output and 'Video:' in line:
            self._header_done.set()
    self._header_done.set()  # ffmpeg ended (possibly before any header)

  def _wait_for_header(self) -> VideoInfo:
    if not self._header_done.wait(HEADER_TIMEOUT_S):
      raise VideoReadError(f'cannot read video {self.path}: ffmpeg printed no stream information within '
                           f'{HEADER_TIMEOUT_S:.0f} s')
    text = '\n'.join(_message(l) for l in self._header_lines)
    output = text.split('Output #0', 1)
    if len(output) < 2 or 'Video:' not in output[1]:
      self._process.wait()
      streams = [l for l in output[0].splitlines() if l.lstrip().startswith('Stream #')]
      if streams and not any('Video:' in l for l in streams):
        raise VideoReadError(f'cannot read video {self.path}: the file has no video stream '
                             f'({"; ".join(l.strip() for l in streams[:2])})')
      raise VideoReadError(f'cannot read video {self.path}: {self._explain()}')
    out_stream = next(l for l in output[1].splitlines() if 'Video:' in l)
    size = _SIZE.search(out_stream + ' ')
    if size is None:
      raise VideoReadError(f'cannot read video {self.path}: no frame size in ffmpeg\'s output ({out_stream!r})')
    width, height = int(size.group(1)), int(size.group(2))
    in_stream = next((l for l in output[0].splitlines() if 'Video:' in l), '')
    fps_match = _FPS.search(in_stream)
    fps = float(fps_match.group(1)) if fps_match else None
    if fps is not None and not 0 < fps < 10000:
      fps = None
    duration = _DURATION.search(output[0])
    num_frames = None
    if duration and fps:
      seconds = int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3))
      num_frames = max(int(round(seconds * fps)), 1)
    codec = _CODEC.search(in_stream)
    return VideoInfo(path=self.path, width=width, height=height, fps=fps, num_frames=num_frames, kind='video',
                     codec=codec.group(1) if codec else '')

  def _explain(self) -> str:
    """ffmpeg's reason for failing, in a few lines."""
    errors = [e for e in self._errors if e and not e.startswith('Error opening input file')]
    if errors:
      return '; '.join(dict.fromkeys(errors[-3:]))  # the last distinct ones: the reason comes last
    tail = [_message(l) for l in self._lines[-3:]]
    return '; '.join(tail) if tail else f'ffmpeg exited with status {self._process.returncode}'

  def _check_errors(self, frames_read: int) -> None:
    if not self._errors:
      return
    if self.ignore_decode_errors:
      self.decode_errors.extend(self._errors)
      self._errors.clear()
      return
    raise VideoReadError(
        f'video {self.path} is corrupt or truncated: ffmpeg reports "{self._errors[0]}" (noticed after '
        f'{frames_read} frames). Pass --ignore-decode-errors (ignore_decode_errors=True) to use the frames that decode.')

  # -- frames ---------------------------------------------------------------------------------------------

  def __iter__(self) -> Iterator[np.ndarray]:
    frame_bytes = self.info.width * self.info.height * 3
    stdout = self._process.stdout
    count = 0
    try:
      self._check_errors(0)
      while True:
        data = bytearray()
        while len(data) < frame_bytes:
          chunk = stdout.read(frame_bytes - len(data))
          if not chunk:
            break
          data += chunk
        if not data:
          break
        if len(data) < frame_bytes:
          raise VideoReadError(f'video {self.path}: the last frame is incomplete ({len(data)} of {frame_bytes} '
                               f'bytes)')
        self._check_errors(count)
        count += 1
        yield np.frombuffer(bytes(data), np.uint8).reshape(self.info.height, self.info.width, 3)
      self._process.wait()
      self._log_thread.join(timeout=5)
      self._check_errors(count)
      if self._process.returncode != 0:
        raise VideoReadError(f'cannot read video {self.path}: ffmpeg exited with status '
                             f'{self._process.returncode}: {self._explain()}')
      if count == 0:
        raise VideoReadError(f'video {self.path} has no decodable frame: {self._explain()}')
    finally:
      self.close()

  def close(self) -> None:
    process = getattr(self, '_process', None)
    if process is None:
      return
    if process.poll() is None:
      process.kill()
    process.wait()
    for stream in (process.stdout, process.stderr):
      try:
        stream.close()
      except OSError:
        pass
    self._log_thread.join(timeout=5)


def open_frames(path: str, *, ignore_decode_errors: bool = False) -> FrameReader:
  """A reader of the video file or image folder at `path` (see the module docstring); raises VideoReadError
  (VideoNotFoundError when the path does not exist) before any frame is read when the input is unusable."""
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


# ---------------------------------------------------------------------------------------------------------
# Writers.


def _partial_path(path: str, suffix: str = '') -> str:
  folder, name = os.path.split(os.path.abspath(path))
  base, ext = os.path.splitext(name)
  fd, tmp = tempfile.mkstemp(prefix=f'.{base}.partial-', suffix=ext + suffix, dir=folder or '.')
  os.close(fd)
  return tmp


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


def encoder_arguments(ext: str, size: tuple[int, int], lossless: bool) -> list[str]:
  """ffmpeg output options for a file of extension `ext` holding frames of `size` = (h, w)."""
  even = size[0] % 2 == 0 and size[1] % 2 == 0
  if lossless:
    return ['-c:v', 'libx264rgb', '-qp', '0', '-preset', 'medium', '-pix_fmt', 'rgb24']
  if VIDEO_CODECS[ext] == 'libvpx-vp9':
    return ['-c:v', 'libvpx-vp9', '-crf', '30', '-b:v', '0', '-pix_fmt', 'yuv420p' if even else 'yuv444p']
  args = ['-c:v', 'libx264', '-crf', '18', '-preset', 'medium', '-pix_fmt', 'yuv420p' if even else 'yuv444p']
  if ext in ('.mp4', '.m4v', '.mov'):
    args += ['-movflags', '+faststart']
  return args


class _AtomicOutput:
  """Context manager of a writer with `commit()` (rename into place) and `abort()` (remove the partial)."""

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      self.commit()
    else:
      self.abort()
    return False


class VideoWriter(_AtomicOutput):
  """Writes RGB frames of one size to a video file, all or nothing (see the module docstring).

  Args:
    path: the video to write (.mp4 .m4v .mov .mkv .webm); replaced only by `commit()`.
    size: (height, width) of every frame.
    fps: frames per second (None: 25).
    lossless: exact RGB (H.264 RGB, quantiser 0).
  """

  def __init__(self, path: str, size: tuple[int, int], *, fps: float | None = None, lossless: bool = False):
    self.path = os.path.abspath(os.fspath(path))
    self.size = (int(size[0]), int(size[1]))
    self.fps = float(fps) if fps else DEFAULT_FPS
    self.lossless = bool(lossless)
    self.frames = 0
    ext = check_output_path(self.path, lossless=self.lossless)
    self._tmp = _partial_path(self.path)
    self._log = tempfile.TemporaryFile()
    h, w = self.size
    command = [ffmpeg_exe(), '-hide_banner', '-nostdin', '-loglevel', 'error', '-y',
               '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', f'{w}x{h}', '-framerate', f'{self.fps:.6g}',
               '-i', 'pipe:0', '-an', *encoder_arguments(ext, self.size, self.lossless), '-f',
               {'.mkv': 'matroska', '.webm': 'webm', '.mov': 'mov'}.get(ext, 'mp4'), self._tmp]
    try:
      self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=self._log)
    except OSError as e:
      self._cleanup()
      raise VideoWriteError(f'cannot start ffmpeg ({command[0]}): {e}') from None
    self._done = False

  def _ffmpeg_log(self) -> str:
    self._log.seek(0)
    text = self._log.read().decode('utf-8', 'replace').strip()
    return ' '.join(text.splitlines()[-3:]) or f'ffmpeg exited with status {self._process.returncode}'

  def write(self, frame: np.ndarray) -> None:
    """Appends one uint8 (H, W, 3) RGB frame of the writer's size."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.shape != self.size + (3,):
      raise ValueError(f'expected a uint8 frame of shape {self.size + (3,)}, got {frame.dtype} {frame.shape}')
    try:
      self._process.stdin.write(np.ascontiguousarray(frame).tobytes())
    except (BrokenPipeError, OSError):
      self._process.wait()
      message = self._ffmpeg_log()
      self.abort()
      raise VideoWriteError(f'cannot write video {self.path}: {message}') from None
    self.frames += 1

  def commit(self) -> str:
    """Finishes the file and renames it onto `path`; returns `path`."""
    if self._done:
      return self.path
    try:
      self._process.stdin.close()
    except OSError:
      pass
    code = self._process.wait()
    if code != 0 or self.frames == 0:
      message = self._ffmpeg_log() if code != 0 else 'no frame was written'
      self.abort()
      raise VideoWriteError(f'cannot write video {self.path}: {message}')
    try:
      os.replace(self._tmp, self.path)
    except OSError as e:
      self.abort()
      raise VideoWriteError(f'cannot write video {self.path}: {e}') from None
    self._done = True
    self._log.close()
    return self.path

  def abort(self) -> None:
    """Stops ffmpeg and deletes the temporary file; the target is left as it was."""
    if self._done:
      return
    self._done = True
    if self._process.poll() is None:
      self._process.kill()
    try:
      self._process.stdin.close()
    except OSError:
      pass
    self._process.wait()
    self._cleanup()

  def _cleanup(self) -> None:
    if os.path.exists(self._tmp):
      os.remove(self._tmp)
    self._log.close()


def check_labels_dir(path: str) -> str:
  """The absolute path of a labels folder to create: it must not exist, or be an empty folder."""
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise VideoWriteError(f'labels folder {path} already exists and is not empty: give a new or empty folder')
  parent = os.path.dirname(path)
  if not os.path.isdir(parent):
    raise VideoWriteError(f'labels folder {path}: parent folder {parent} does not exist')
  return path


def label_image(labels: np.ndarray, palette: np.ndarray | None = None) -> Image.Image:
  """A palette-mode ('P') PIL image of class ids (H, W) < 256; `palette` (K, 3) gives the display colours."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() > 255):
    raise ValueError('class ids must be in 0..255 for a PNG label image')
  image = Image.fromarray(labels.astype(np.uint8), mode='P')
  if palette is not None:
    flat = np.zeros((256, 3), np.uint8)
    palette = np.asarray(palette, np.uint8)[:256]
    flat[:len(palette)] = palette
    image.putpalette(flat.ravel().tolist())
  return image


class LabelWriter(_AtomicOutput):
  """Writes one class-id PNG per frame into `folder`, all or nothing (a temporary sibling folder, renamed)."""

  def __init__(self, folder: str, palette: np.ndarray | None = None):
    self.folder = check_labels_dir(folder)
    self.palette = palette
    parent, name = os.path.split(self.folder)
    self._tmp = tempfile.mkdtemp(prefix=f'.{name}.partial-', dir=parent)
    self.names: list[str] = []
    self._done = False

  def write(self, name: str, labels: np.ndarray) -> None:
    """Writes `labels` (H, W) as `<name>.png` (a name without extension)."""
    file_name = f'{name}.png'
    label_image(labels, self.palette).save(os.path.join(self._tmp, file_name), format='PNG')
    self.names.append(file_name)

  def commit(self) -> str:
    if self._done:
      return self.folder
    if os.path.isdir(self.folder):
      os.rmdir(self.folder)  # empty (checked); a folder that filled up meanwhile makes this fail loudly
    os.replace(self._tmp, self.folder)
    self._done = True
    return self.folder

  def abort(self) -> None:
    if not self._done:
      self._done = True
      shutil.rmtree(self._tmp, ignore_errors=True)


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
