"""Evaluation protocols: how a frame is cut into views and how the views' scores become one prediction.

    protocol = EvalProtocol.from_config(config)             # eval_mode, eval_crop, eval_stride, eval_flip, ...
    streams = plan(protocol, (720, 960))                    # one ScaleViews per scale
    views = make_views(frames, streams[0])                  # (V·B, h, w, 3): every view is a lane of its own
    ...  model.step(views, memory, jnp.tile(reset, V)) -> logits (V·B, h, w, K)
    canvases = merge_views(logits, streams[0], batch=B)     # (F, B, H_s, W_s, K): windows merged, flips undone
    scores = combine([softmax(resize(c, label size)) for every scale and flip])   # (B, H_l, W_l, K)

Pure arithmetic (numpy for the grid, jax.numpy for the arrays, NHWC); `evaluation.Evaluator` runs it inside its
one streamed loop. The semantics are those of the authors' evaluation code:

- **whole**: the frame at the evaluation size (`data.eval_size`, else its native size) in one piece.
- **slide** (mmseg 0.x `EncoderDecoder.slide_inference`, as TMANet uses it; PaddleSeg's `infer.slide_inference`
  has the same grid): for a frame of H x W, crop (h_c, w_c) and stride (h_s, w_s),
  h_grids = max(H - h_c + h_s - 1, 0) // h_s + 1 windows down (the same across); window (i, j) is
  y1 = i·h_s, y2 = min(y1 + h_c, H), y1 = max(y2 - h_c, 0) (x likewise): the last window is pushed back inside
  the frame. Each window's logits (at the window size) are summed into the frame and divided by the number of
  windows covering each pixel. A frame smaller than the crop is not padded: the window is clipped to the frame
  (mmseg: "the small patch will be used to decode without padding"), so all windows of a frame have the size
  (min(h_c, H), min(w_c, W)). TMANet crops its memory frames at the same window: here every window position is
  a lane (a batch entry of `model.step`) that carries its own memory through the sequence, which is the same
  thing for a streamed model.
- **flip**: the horizontally flipped frame is a view of its own (its windows on the flipped frame, its own
  memory); its merged logits are flipped back before they are combined (mmseg `inference`: flip of the softmax
  output; PaddleSeg `aug_inference`: flip of the logits — the same after the softmax).
- **scales** (ratios of the evaluation size; 1.0 = as is): each scale is its own stream (its frame size, its own
  jitted step shapes and memory). A scaled size is int(x · ratio + 0.5) per side (PaddleSeg `aug_inference`;
  mmcv's rescale rounds the same way).
- **combination** (mmseg `aug_test`, PaddleSeg `aug_inference`): every (scale, flip) view's merged logits are
  resized (bilinear) to the label size, softmaxed over the classes, and the probabilities averaged; the class
  map is their arg-max. Windows are merged on logits (before the softmax), augmentations on probabilities.

'whole' without flip and with scales (1.0,) is the plain protocol (`EvalProtocol.plain`): the evaluator then
runs exactly its one-frame step (`inference.segment_frames`), logits to arg-max with no softmax.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ma_resnet.errors import ConfigError

MODES = ('whole', 'slide')


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
  """How frames are scored (module docstring). crop / stride: (h, w), only with mode 'slide'."""
  mode: str = 'whole'
  crop: tuple[int, int] | None = None
  stride: tuple[int, int] | None = None
  flip: bool = False
  scales: tuple[float, ...] = (1.0,)

  def __post_init__(self):
    def need(condition, field, message):
      if not condition:
        raise ConfigError(f'invalid config: {field} {message}')
    need(self.mode in MODES, 'eval_mode', f'must be one of {MODES}, got {self.mode!r}')
    for field, value in (('eval_crop', self.crop), ('eval_stride', self.stride)):
      if self.mode == 'whole':
        need(value is None, field, f"is only for eval_mode='slide' (got {value} with eval_mode='whole')")
      else:
        need(value is not None and len(value) == 2 and all(int(v) >= 1 for v in value), field,
             f"must be two positive sizes (h, w) with eval_mode='slide', got {value}")
    if self.mode == 'slide':
      need(all(s <= c for s, c in zip(self.stride, self.crop)), 'eval_stride',
           f'{tuple(self.stride)} must not exceed eval_crop {tuple(self.crop)} (pixels between windows are never '
           'scored)')
    need(len(self.scales) >= 1 and all(float(s) > 0 for s in self.scales), 'eval_scales',
         f'must be one or more positive ratios, got {tuple(self.scales)}')
    need(len(set(self.scales)) == len(self.scales), 'eval_scales', f'lists a ratio twice: {tuple(self.scales)}')

  @classmethod
  def from_config(cls, config, **overrides) -> 'EvalProtocol':
    """From a training config's eval_* fields (absent fields: 'whole'); `overrides` (mode, crop, stride, flip,
    scales; None = keep the config's) win, as eval.py's flags."""
    get = lambda field, default: config.get(field, default) if hasattr(config, 'get') else default
    values = {'mode': get('eval_mode', 'whole'), 'crop': get('eval_crop', ()), 'stride': get('eval_stride', ()),
              'flip': get('eval_flip', False), 'scales': get('eval_scales', (1.0,))}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values['mode'] == 'whole' and 'mode' in overrides and overrides['mode'] is not None:
      values['crop'] = values['stride'] = ()  # --mode=whole on a slide run: its crop and stride no longer apply
    as_pair = lambda v: tuple(int(x) for x in v) if v else None
    return cls(mode=str(values['mode']), crop=as_pair(values['crop']), stride=as_pair(values['stride']),
               flip=bool(values['flip']), scales=tuple(float(s) for s in values['scales']))

  @property
  def plain(self) -> bool:
    """Whole frames, no flip, scale 1: today's one-frame step, nothing combined."""
    return self.mode == 'whole' and not self.flip and self.scales == (1.0,)

  def to_json(self) -> dict[str, Any]:
    return {'mode': self.mode, 'crop': list(self.crop) if self.crop else None,
            'stride': list(self.stride) if self.stride else None, 'flip': self.flip, 'scales': list(self.scales)}

WHOLE = EvalProtocol()


def protocol_of_report(report: dict) -> dict[str, Any]:
  """The protocol an `eval_<split>.json` (or a stored validation) records (`EvalProtocol.to_json()` + split and
  list); reports written before protocols existed: whole frames."""
  return dict(report.get('protocol') or WHOLE.to_json())


def describe(record: dict[str, Any]) -> str:
  """A recorded protocol (`EvalProtocol.to_json()`) in words: 'whole frames', 'slide 640x640 stride 512x512 + flip'."""
  text = 'whole frames' if record.get('mode', 'whole') == 'whole' else (
      f"slide {record['crop'][0]}x{record['crop'][1]} stride {record['stride'][0]}x{record['stride'][1]}")
  if record.get('flip'):
    text += ' + flip'
  scales = [float(s) for s in record.get('scales') or [1.0]]
  if scales != [1.0]:
    text += ', scales ' + ','.join(f'{s:g}' for s in scales)
  return text


def window_grid(size: tuple[int, int], crop: tuple[int, int], stride: tuple[int, int]
                ) -> list[tuple[int, int, int, int]]:
  """The sliding windows (y1, y2, x1, x2) of a frame of `size` (H, W), row by row, as mmseg's slide_inference."""
  def axis(n, c, s):
    spans = []
    for i in range(max(n - c + s - 1, 0) // s + 1):
      end = min(i * s + c, n)
      spans.append((max(end - c, 0), end))
    return spans
  return [(y1, y2, x1, x2) for y1, y2 in axis(size[0], crop[0], stride[0]) for x1, x2 in axis(size[1], crop[1], stride[1])]


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
  """(int(H · scale + 0.5), int(W · scale + 0.5)); the size itself for scale 1."""
  return tuple(int(s * scale + 0.5) for s in size)


@dataclasses.dataclass(frozen=True)
class ScaleViews:
  """The views of one scale: frames resized to `size` (H_s, W_s), then per flip (False, then True), per window.

  View v = f · len(windows) + w; every view of every frame is one lane of the model's step, batch V·B ordered
  view-major (view v of frame b at index v · B + b). window_size: (h, w) of every window (the model's input).
  """
  scale: float
  size: tuple[int, int]
  flips: tuple[bool, ...]
  windows: tuple[tuple[int, int, int, int], ...]

  @property
  def num_views(self) -> int:
    return len(self.flips) * len(self.windows)

  @property
  def window_size(self) -> tuple[int, int]:
    y1, y2, x1, x2 = self.windows[0]
    return y2 - y1, x2 - x1


def plan(protocol: EvalProtocol, frame_size: tuple[int, int]) -> tuple[ScaleViews, ...]:
  """One `ScaleViews` per scale of `protocol` for frames of `frame_size` (H, W) (the evaluation size)."""
  streams = []
  for scale in protocol.scales:
    size = scaled_size(frame_size, scale)
    if min(size) < 1:
      raise ConfigError(f'invalid config: eval_scales: {scale:g} of a {frame_size[0]}x{frame_size[1]} frame is '
                        f'{size[0]}x{size[1]}')
    windows = (window_grid(size, protocol.crop, protocol.stride) if protocol.mode == 'slide'
               else [(0, size[0], 0, size[1])])
    streams.append(ScaleViews(scale, size, (False, True) if protocol.flip else (False,), tuple(windows)))
  return tuple(streams)


def make_views(frames: jax.Array, views: ScaleViews) -> jax.Array:
  """frames (B, H_s, W_s, C) at the scale's size -> (V·B, h, w, C): flipped (horizontally) or not, cropped."""
  out = []
  for flip in views.flips:
    source = frames[:, :, ::-1] if flip else frames
    out += [source[:, y1:y2, x1:x2] for y1, y2, x1, x2 in views.windows]
  return jnp.concatenate(out, axis=0)


def window_counts(views: ScaleViews) -> np.ndarray:
  """float32 (H_s, W_s, 1): how many windows cover each pixel (>= 1 everywhere for a window grid)."""
  count = np.zeros(views.size + (1,), np.float32)
  for y1, y2, x1, x2 in views.windows:
    count[y1:y2, x1:x2] += 1
  return count


def merge_views(logits: jax.Array, views: ScaleViews, batch: int) -> jax.Array:
  """logits (V·B, h, w, K) of `make_views`' views -> (F, B, H_s, W_s, K): per flip, the windows' logits summed
  into the frame and divided by the per-pixel window count, then the flip undone."""
  per_window = logits.reshape((views.num_views, batch) + logits.shape[1:])
  inverse = jnp.asarray(1.0 / window_counts(views), logits.dtype)
  merged = []
  for f, flip in enumerate(views.flips):
    # Each window zero-padded to the frame (as mmseg's F.pad), then summed.
    canvas = sum(jnp.pad(per_window[f * len(views.windows) + w],
                         ((0, 0), (y1, views.size[0] - y2), (x1, views.size[1] - x2), (0, 0)))
                 for w, (y1, y2, x1, x2) in enumerate(views.windows)) * inverse
    merged.append(canvas[:, :, ::-1] if flip else canvas)
  return jnp.stack(merged)


def combine(probabilities: Sequence[jax.Array]) -> jax.Array:
  """The mean of the views' class probabilities (each (B, H_l, W_l, K), softmax at the label size)."""
  return sum(probabilities[1:], probabilities[0]) / len(probabilities)
