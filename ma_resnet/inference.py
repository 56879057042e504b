"""Inference on video: the shared one-frame step, a frame-by-frame generator, and whole files.

    run = runs.load_run('runs/camvid_ma')                          # model, variables, config, ...
    for p in predict_video(run.model, run.variables, frames, mean=..., std=..., palette=...):
      p.index, p.labels, p.overlay                                        # per frame, as they come
    predict_file(run, 'in.mp4', 'out.mp4', labels_dir='labels')          # what `python predict.py` does

`segment_frames` (model `step` -> logits resized to the label size -> arg-max) is the one streamed step of
both inference and `evaluation.Evaluator`. Frames are resized to the model's input size (bilinear, as
evaluation's `data.eval_size`), normalised as in training, and passed through the jitted one-frame step,
which carries the memory from frame to frame; logits are resized back to the frame size before the arg-max,
so outputs have exactly the input's frame count and size. The command line is `predict.py` (and
`python -m ma_resnet.predict`).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Iterable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ma_resnet import protocols, streaming, video_io, video_metrics, visualize
from ma_resnet.data import normalize_images
from ma_resnet.models.ops import resize_bilinear


class PredictedFrame(NamedTuple):
  """One frame's result, in input order."""
  index: int
  image: np.ndarray            # uint8 (H, W, 3): the input frame
  labels: np.ndarray           # int32 (H, W): arg-max class per pixel, at the input size
  overlay: np.ndarray | None   # uint8 (H, W, 3): palette colours blended over the frame (None without palette)
  enhanced: bool = False       # the output used the carried memory (`model.frame_kinds` names both kinds:
                               # THA: False = a key frame, True = a non-key frame)


class InputSettings(NamedTuple):
  """What inference needs from a run's data config to feed frames as in training and draw the results."""
  mean: tuple[float, ...]
  std: tuple[float, ...]
  normalize: bool
  eval_size: tuple[int, int] | None   # the run's data.eval_size: the default model input size
  palette: np.ndarray                 # uint8 (num_classes, 3)
  class_names: tuple[str, ...]


def input_settings(config) -> InputSettings:
  """The `InputSettings` of a training config (e.g. `runs.load_run(...).config`)."""
  from ma_resnet import data as data_lib
  eval_size = config.data.get('eval_size')
  return InputSettings(mean=tuple(float(m) for m in config.data.mean), std=tuple(float(s) for s in config.data.std),
                       normalize=bool(config.data.get('normalize', True)),
                       eval_size=tuple(int(s) for s in eval_size) if eval_size else None,
                       palette=np.asarray(data_lib.palette(config.data), np.uint8),
                       class_names=tuple(data_lib.class_names(config.data)))


def segment_frames(model, variables, frames, memory, reset=None, *, out_size: tuple[int, int] | None = None):
  """One streamed frame per lane: the model's `step`, logits resized (bilinear) to `out_size`, arg-max.

  frames (B, h, w, 3) normalised; memory: the model's memory (`init_memory`); reset: optional (B,) bool.
  Returns (labels int32 (B, *out_size), the new memory, enhanced (B,) bool: the output used the memory, see
  `model.frame_kinds`). Pure: jit it (evaluation adds shardings).
  """
  out = model.apply(variables, frames, memory, reset, method=model.step)
  logits = out.logits
  if out_size is not None and tuple(logits.shape[1:3]) != tuple(out_size):
    logits = resize_bilinear(logits, tuple(out_size))
  return jnp.argmax(logits, axis=-1).astype(jnp.int32), out.memory, out.enhanced


def segment_views(model, streams, variables, frames, memories, reset=None, *, out_size: tuple[int, int]):
  """One streamed frame per lane under an evaluation protocol (`protocols`: windows, flips, scales).

  streams: `protocols.plan(protocol, frames' size)`; frames (B, H, W, 3) normalised at the evaluation size;
  memories: one model memory per scale, of batch V_s·B (every view a lane with its own memory,
  `model.init_memory(V_s·B, streams[s].window_size)`); reset: optional (B,) bool, applied to every view of the
  frame. Each scale's frames are resized (bilinear) to its size, cut into views, stepped, merged back
  (`protocols.merge_views`), resized to `out_size` and softmaxed; the probabilities are averaged over
  scales and flips (`protocols.combine`). Returns (scores float32 (B, *out_size, K): the mean probabilities,
  the new memories (a tuple), enhanced (B,) bool). Pure: jit it.
  """
  batch = frames.shape[0]
  reset = jnp.zeros((batch,), bool) if reset is None else reset
  probabilities, new_memories, enhanced = [], [], None
  for views, memory in zip(streams, memories):
    scaled = frames if tuple(frames.shape[1:3]) == views.size else resize_bilinear(frames, views.size)
    out = model.apply(variables, protocols.make_views(scaled, views), memory, jnp.tile(reset, views.num_views),
                      method=model.step)
    for logits in protocols.merge_views(out.logits.astype(jnp.float32), views, batch):
      if tuple(logits.shape[1:3]) != tuple(out_size):
        logits = resize_bilinear(logits, tuple(out_size))
      probabilities.append(jax.nn.softmax(logits, axis=-1))
    new_memories.append(out.memory)
    enhanced = out.enhanced[:batch] if enhanced is None else enhanced
  return protocols.combine(probabilities), tuple(new_memories), enhanced


@functools.lru_cache(maxsize=32)
def _step_function(model, out_size: tuple[int, int], donate: bool):
  """jit(variables, frame (1, h, w, 3), memory, reset (1,)) -> (labels int32 (1, H, W) at `out_size`, new memory,
  enhanced (1,))."""
  return jax.jit(functools.partial(segment_frames, model, out_size=out_size),
                 donate_argnums=(2,) if donate else ())


@functools.lru_cache(maxsize=32)
def _memory_function(model, model_size: tuple[int, int]):
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
  if size is not None and tuple(size) != tuple(frame.shape[:2]):
    frame = np.asarray(Image.fromarray(frame).resize((int(size[1]), int(size[0])), Image.BILINEAR))
  x = normalize_images(frame, mean, std) if normalize else frame.astype(np.float32)
  return x[None]


def predict_video(model, variables, frames: Iterable[np.ndarray], *, mean: Sequence[float],
                  std: Sequence[float], size: tuple[int, int] | None = None, palette: np.ndarray | None = None,
                  alpha: float = 0.5, normalize: bool = True) -> Iterator[PredictedFrame]:
  """Segments a stream of frames one at a time, carrying the model's memory; yields a `PredictedFrame` each.

  Args:
    model, variables: a `VideoSegmenter` and its {'params', 'batch_stats'} (e.g. `runs.load_run`).
    frames: uint8 RGB frames (H, W, 3) of one size, in time order (any iterable: a reader, a list, an array).
    mean, std: the normalisation of the model's training data (`config.data.mean` / `std`).
    size: (h, w) the model sees (frames are resized to it); None: the frames' own size. Labels and overlays
      are always at the frames' size.
    palette: uint8 (K, 3) class colours for the overlays; None: no overlay (`overlay` is None).
    alpha: opacity of the class colours in the overlay (0..1).
    normalize: False when the model was trained on raw 0..255 frames (`data.normalize=False`).

  The one-frame step is jit-compiled once per (model, sizes) and reused across calls; the next frame is sent
  to the device before the previous result is fetched, so decoding and host work overlap the computation.
  `streaming.FrameStream` pairs every result with its own frame (also when the model returns it later: STF
  needs the next frame), so every frame is yielded, in order.
  """
  if not 0.0 <= float(alpha) <= 1.0:
    raise ValueError(f'alpha must be in [0, 1], got {alpha}')
  donate = jax.default_backend() != 'cpu'
  frame_size = model_size = jitted = stream = None
  fetched = []  # results whose labels are fetched after the next frame is sent (overlap)

  def step(x, memory, reset, due):
    del due
    labels, memory, enhanced = jitted(variables, x, memory, reset)
    return (labels, enhanced), memory

  def finish(paired):
    index, image = paired.tag
    labels, enhanced = np.asarray(paired.output[0]), bool(paired.output[1])
    overlay = None if palette is None else visualize.overlay(image, labels, palette, alpha)
    return PredictedFrame(index, image, labels, overlay, enhanced)

  for index, frame in enumerate(frames):
    frame = _as_rgb(frame)
    if frame_size is None:
      frame_size = tuple(frame.shape[:2])
      model_size = tuple(int(s) for s in size) if size is not None else frame_size
      jitted = _step_function(model, frame_size, donate)
      stream = streaming.FrameStream.of_model(model, step)
      stream.restart(_memory_function(model, model_size)())
    elif tuple(frame.shape[:2]) != frame_size:
      raise ValueError(f'frame {index} is {frame.shape[0]}x{frame.shape[1]}, the first frame '
                       f'{frame_size[0]}x{frame_size[1]}: all frames of a video must have one size')
    paired = stream.feed(prepare_frame(frame, model_size, mean, std, normalize), np.array([index == 0]),
                         [(index, frame)])
    yield from map(finish, fetched)
    fetched = paired
  yield from map(finish, fetched + (stream.end() if stream is not None else []))


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
  frame_kinds: tuple[str, str] | None = None  # `model.frame_kinds` (None: a per-frame model)
  enhanced: list[bool] = dataclasses.field(default_factory=list)  # per frame: the output used the memory
  # Label-free temporal consistency of the labels (`video_metrics`): 'consistency', 'consistency_per_class'.
  consistency: dict = dataclasses.field(default_factory=dict)

  def frames_of_kind(self, enhanced: bool) -> list[int]:
    """Indices of the frames whose output did (True) or did not (False: THA's key frames) use the memory."""
    return [i for i, e in enumerate(self.enhanced) if e == enhanced]


def predict_file(run, video: str | video_io.FrameReader, out: str, *,
                 labels_dir: str | None = None, size: tuple[int, int] | None = None, alpha: float = 0.5,
                 fps: float | None = None, lossless: bool = False, ignore_decode_errors: bool = False,
                 progress: bool = True) -> PredictionSummary:
  """What `predict.py` does: the model of `run` (a `runs.Run`) on `video` (a file, a frame folder or
  an open reader) -> the overlay video `out` (+ label PNGs in `labels_dir`), each written completely or not
  at all.

  size: the model's input size (None: the run's data.eval_size, else the native size). fps: of the output
  (None: the input's; 25 for a frame folder). Raises video_io.VideoReadError / VideoWriteError.
  """
  reader = video if isinstance(video, video_io.FrameReader) else video_io.open_frames(
      video, ignore_decode_errors=ignore_decode_errors)
  with reader:
    info = reader.info
    if os.path.abspath(out) == os.path.abspath(info.path):
      raise video_io.VideoWriteError(f'--out {out} is the input video')
    settings = input_settings(run.config)
    model_size = tuple(size) if size is not None else (settings.eval_size or info.size)
    out_fps = float(fps or info.fps or video_io.DEFAULT_FPS)
    labels = video_io.LabelWriter(labels_dir, settings.palette) if labels_dir else None
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
      enhanced = []
      # No labels here: only the label-free temporal consistency (no mVC lengths).
      consistency = video_metrics.VideoMetrics(len(settings.class_names), video_metrics.VideoMetricOptions(()))
      try:
        for p in predict_video(run.model, run.variables, reader, mean=settings.mean, std=settings.std,
                               size=model_size, palette=settings.palette, alpha=alpha,
                               normalize=settings.normalize):
          writer.write(p.overlay)
          if labels is not None:
            name = (os.path.splitext(info.frame_names[p.index])[0] if info.frame_names
                    else f'{p.index:06d}')
            labels.write(name, p.labels)
          count += 1
          enhanced.append(p.enhanced)
          consistency.update(0, 0, p.index, None, False, p.labels)
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
      decode_errors=list(reader.decode_errors), frame_kinds=run.model.frame_kinds, enhanced=enhanced,
      consistency=consistency.results(settings.class_names))


