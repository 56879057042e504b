"""VideoSegmenter: backbone x temporal module x head over video clips, the memory an explicit pytree.

How one clip (B, T, H, W, 3) flows through `VideoSegmenter.__call__`:

  frames (B*T, H, W, 3) -> backbone, batched over all frames, only as deep as the head and the temporal
                           module read -> maps {'stage1', ...} (B, T, h, w, C)
  temporal.encode, batched                          -> encodings (B, T, ...)
  jax.lax.scan over T (pure, no parameters): reset the samples that start a sequence (their memory is
                           zeroed = emptied), temporal.scan_body -> reads (B, T, ...), enhanced (B, T)
  temporal.fuse, batched                            -> the maps handed to the head
  head, batched                                     -> logits, bilinearly resized to (H, W)

The memory is the temporal module's state (`init_memory`). `step` is the same computation for one frame
(T = 1), for streaming video: stepping frame by frame equals the scan.

Non-causal modules (`temporal.delay = 1`, STF: frame t's output needs frame t+1). A clip's outputs stay aligned
to its frames: output t is frame t's, computed from the emission of frame t+1 and, for the last frame, from one
flush step (a reset after it: the module applies its edge rule, e.g. repeats the frame as its own t+1). `step`
streams: fed frame t, it returns the output of frame t-1 and `ready` (B,) says whether that frame exists (False
on the first frame of a sequence); a step whose `reset` starts a new sequence returns the previous sequence's
last frame, and `flush` returns the last frame of a stream. Stepping then flushing equals the clip. A temporal module with `interleaved`
(PCMA's feed-forward option) feeds its fused maps to the next backbone stage; then the frames run one after
another, stage by stage (`_interleaved`).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ma_resnet.models.ops import resize_bilinear
from ma_resnet.models.temporal.base import reset_state

Memory = Any  # the temporal module's state: a pytree of (B, ...) arrays


class SegmenterOutput(NamedTuple):
  """What a segmenter returns for a clip (per frame, frames in order)."""
  logits: jax.Array           # (B, T, H, W, classes), float32, at the input size
  memory: Memory              # the memory after the last frame
  enhanced: jax.Array         # (B, T) bool: the frame's output used a full memory (False in warm-up / plain)
  stage_features: dict        # map name -> (B, T, h, w, C): the maps handed to the head
  aux_logits: jax.Array | None = None  # (B, T, H, W, classes) of the auxiliary head, when it exists
  # (B, T) bool: the logits at t are of a frame that exists. Always True but for `step` with a non-causal module
  # (`VideoSegmenter.delay` > 0), whose outputs are those of the frame `delay` steps before the one fed (and
  # whose stage_features then hold that frame's fused maps); False where there is none (a sequence's start).
  ready: jax.Array | None = None


class VideoSegmenter(nn.Module):
  """A video segmenter: backbone, temporal module, segmentation head (and an optional auxiliary head).

  Attributes:
    backbone: maps images (N, H, W, 3) to named maps; `backbone(images, train, stages=...)` runs only as
      far as the named stages need, `feature_shapes((H, W))` gives each map's (h, w, C). Its `dtype` is the
      compute dtype of the whole model.
    temporal: a `temporal.TemporalModule` (`Plain()` for a per-frame model).
    head: `head(maps: dict, train) -> logits (N, h, w, classes)`.
    num_classes: number of classes.
    aux_head: optional auxiliary head (training only), same interface as `head`.
    align_corners: of the bilinear resize of the logits to the input size (mmseg configs set it per model).
    frozen: parts that do not train ('backbone', 'temporal', 'head'): they run in eval mode (running batch-norm
      statistics, no dropout) and pass no gradient back (a frozen feature extractor, as in staged recipes).
  """
  backbone: nn.Module
  temporal: nn.Module
  head: nn.Module
  num_classes: int
  aux_head: nn.Module | None = None
  align_corners: bool = False
  frozen: tuple[str, ...] = ()

  def _trains(self, part: str, train: bool) -> bool:
    return train and part not in self.frozen

  def _out(self, part: str, tree):
    return jax.lax.stop_gradient(tree) if part in self.frozen else tree

  def stages_needed(self) -> tuple[str, ...]:
    """The backbone maps something reads: the head, the auxiliary head, the temporal module."""
    needed = set(self.head.stages_read()) | set(self.temporal.stages_read())
    if self.aux_head is not None:
      needed |= set(self.aux_head.stages_read())
    return tuple(sorted((needed - set(self.temporal.stages_written())) | set(self.temporal.stages_read())))

  @property
  def has_state(self) -> bool:
    """Whether the model carries a memory from frame to frame (False: a per-frame model, `Plain`)."""
    return bool(self.temporal.has_state)

  @property
  def delay(self) -> int:
    """Frames of look-ahead of the temporal module: `step` returns the output of the frame fed `delay` steps
    before (0: causal, the frame fed)."""
    return int(getattr(self.temporal, 'delay', 0))

  @property
  def frame_kinds(self) -> tuple[str, str] | None:
    """What reports call frames whose `enhanced` is False / True (THA: 'key' / 'non-key'); None for a
    per-frame model (nothing is carried)."""
    return tuple(self.temporal.frame_kinds) if self.temporal.has_state else None

  def init_memory(self, batch_size: int, frame_size: tuple[int, int]) -> Memory:
    """An empty memory for `batch_size` videos of frames `frame_size` = (H, W). Plain: {}."""
    return self.temporal.init_state(batch_size, self.backbone.feature_shapes(frame_size), self.backbone.dtype)

  @nn.compact
  def __call__(self, clip, memory: Memory | None = None, reset=None, *, train: bool = False,
               stream: bool = False) -> SegmenterOutput:
    """Segments a clip.

    Args:
      clip: (B, T, H, W, 3) float, normalised frames in time order.
      memory: the memory before the first frame (`init_memory`); None means empty.
      reset: optional (B, T) bool: empty a sample's memory before that frame (a new sequence starts).
      train: batch norm on batch statistics (updates `batch_stats`) and dropout on (needs a 'dropout' rng).
      stream: only with a non-causal module (`delay` > 0): True returns what `step` returns (the outputs of the
        frames fed `delay` steps before, with `ready`); False (default) aligns the outputs to the clip's frames.
    Returns:
      `SegmenterOutput`, logits first.
    """
    b, t, h, w, _ = clip.shape
    given_memory = memory
    if memory is None:
      memory = self.init_memory(b, (h, w))
    if reset is None:
      reset = jnp.zeros((b, t), bool)
    unfold = lambda a: a.reshape((b, t) + a.shape[1:])
    fold = lambda a: a.reshape((b * t,) + a.shape[2:])
    temporal = self.temporal
    if temporal.has_state and temporal.interleaved:
      maps, enhanced, memory = self._interleaved(clip, memory, reset, train)
      ready = jnp.ones((b, t), bool)
    else:
      maps = self.backbone(clip.reshape((b * t, h, w, clip.shape[-1])), self._trains('backbone', train),
                           stages=self.stages_needed())
      maps = self._out('backbone', {name: unfold(x) for name, x in maps.items()})
      enhanced = jnp.zeros((b, t), bool)
      ready = jnp.ones((b, t), bool)
      if temporal.has_state:
        if temporal.needs_backbone:
          encodings = temporal.encode(maps, self._trains('temporal', train), backbone=self.backbone,
                                      memory=given_memory, reset=reset)
        else:
          encodings = temporal.encode(maps, self._trains('temporal', train))
        reads, enhanced, memory, ready = self._scan(memory, encodings, reset, aligned=not stream)
        maps = self._out('temporal', temporal.fuse(maps, reads, enhanced, self._trains('temporal', train)))

    to_input_size = lambda logits: unfold(
        resize_bilinear(logits, (h, w), align_corners=self.align_corners).astype(jnp.float32))
    head_maps = {name: fold(x) for name, x in maps.items()}
    logits = to_input_size(self.head(head_maps, self._trains('head', train)))
    aux_logits = None
    if self.aux_head is not None and (train or self.is_initializing()):
      aux_logits = to_input_size(self.aux_head(head_maps, self._trains('aux_head', train)))
    return SegmenterOutput(logits, memory, enhanced, maps, aux_logits, ready)

  def _scan(self, memory, encodings, reset, aligned: bool = True):
    """Threads the memory through the frames: encodings (B, T, ...) -> reads (B, T, ...), enhanced (B, T),
    the memory after the last frame, ready (B, T).

    A non-causal module (delay 1) resets itself and emits, at each frame, the reads of the frame before; with
    `aligned` they are shifted back onto their frames and the last frame's come from one more step, a reset
    (the flush), whose memory is discarded.
    """
    delay = self.delay
    if delay not in (0, 1):
      raise ValueError(f'{type(self.temporal).__name__}.delay = {delay}: only delays 0 and 1 are supported')

    def body(memory, frame):
      encodings_t, reset_t = frame
      if delay:
        memory, reads_t, enhanced_t, ready_t = self.temporal.scan_body(memory, encodings_t, reset_t)
      else:
        memory = reset_state(memory, reset_t)
        memory, reads_t, enhanced_t = self.temporal.scan_body(memory, encodings_t)
        ready_t = jnp.ones_like(reset_t)
      return memory, (reads_t, enhanced_t, ready_t)

    time_major = lambda tree: jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), tree)
    inputs = time_major((encodings, reset))
    memory, (reads, enhanced, ready) = jax.lax.scan(body, memory, inputs)
    if delay and aligned:
      last = jax.tree.map(lambda a: a[-1], inputs[0])
      _, flushed = body(memory, (last, jnp.ones_like(reset[:, 0])))
      reads, enhanced, _ = jax.tree.map(lambda a, f: jnp.concatenate([a[1:], f[None]], axis=0),
                                        (reads, enhanced, ready), flushed)
      ready = jnp.ones_like(ready)
    return time_major(reads), time_major(enhanced), memory, time_major(ready)

  def _interleaved(self, clip, memory, reset, train):
    """Interleaved modules: each frame's fused maps feed its next backbone stage, so every stage after the
    first temporal one depends on the memory and the frames run one after another (unrolled over T)."""
    per_frame, enhanced = [], []
    needed = self.stages_needed()
    backbone_train, temporal_train = self._trains('backbone', train), self._trains('temporal', train)
    for i in range(clip.shape[1]):
      memory = reset_state(memory, reset[:, i])
      x = self.backbone.run_stem(clip[:, i], backbone_train)
      frame_maps, frame_enhanced = {}, jnp.zeros(clip.shape[:1], bool)
      for index, stage in enumerate(self.backbone.stage_names(needed)):
        x = self._out('backbone', self.backbone.run_stage(index, x, backbone_train))
        maps = {stage: x[:, None]}
        encodings = self.temporal.encode(maps, temporal_train)
        if encodings:
          squeeze = lambda tree: jax.tree.map(lambda a: a[:, 0], tree)
          memory, reads, frame_enhanced = self.temporal.scan_body(memory, squeeze(encodings))
          expand = lambda tree: jax.tree.map(lambda a: a[:, None], tree)
          maps = self._out('temporal', self.temporal.fuse(maps, expand(reads), frame_enhanced[:, None],
                                                          temporal_train))
          x = maps[stage][:, 0]
        frame_maps[stage] = x
      per_frame.append(frame_maps)
      enhanced.append(frame_enhanced)
    maps = {s: jnp.stack([f[s] for f in per_frame], axis=1) for s in per_frame[0]}
    return maps, jnp.stack(enhanced, axis=1), memory

  def step(self, frame, memory: Memory, reset=None, *, train: bool = False) -> SegmenterOutput:
    """One frame (B, H, W, 3) -> `SegmenterOutput` for that frame (no time axis) and the new memory.

    Equal to `__call__` on the clip of consecutive frames, one frame at a time. With a non-causal module
    (`delay` 1) the output is the previous frame's (`ready` (B,): it exists); `flush` gives the last one.
    """
    out = self(frame[:, None], memory, None if reset is None else reset[:, None], train=train, stream=True)
    squeeze = lambda a: None if a is None else a[:, 0]
    return SegmenterOutput(squeeze(out.logits), out.memory, squeeze(out.enhanced),
                           {k: squeeze(v) for k, v in out.stage_features.items()}, squeeze(out.aux_logits),
                           squeeze(out.ready))

  def flush(self, frame, memory: Memory, *, train: bool = False) -> SegmenterOutput:
    """The output of the last frame fed to a non-causal module (`delay` 1), with its edge rule for the missing
    next frame: a `step` whose reset ends the sequence. `frame` (B, H, W, 3) only gives the size (any frame of
    the stream); the memory returned holds it as a new sequence's first frame."""
    return self.step(frame, memory, jnp.ones(frame.shape[:1], bool), train=train)

  def refine(self, features, *, train: bool = False) -> dict:
    """The temporal module's refinement of given maps, then the head on each of its outputs.

    features: what the module's `refine` takes (STF: the maps of frames t-1, t, t+1 (B, 3, h, w, C)).
    Returns {'<output>_logits': (B, h, w, classes)} at the map's size, before any resizing (STF: 'stf_logits'
    and, with MAR, 'mar_logits'). The head reads each output as the map the module replaces.
    """
    if not hasattr(self.temporal, 'refine'):
      raise ValueError(f'{type(self.temporal).__name__} has no refinement of given features (refine)')
    stage = self.temporal.stages_read()[0]
    outputs = self.temporal.refine(features, self._trains('temporal', train))
    return {f'{name}_logits': self.head({stage: x}, self._trains('head', train)) for name, x in outputs.items()}
