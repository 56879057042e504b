"""Encoder (plain or MA) + head over video clips, with the PCMA memory as explicit state.

How one clip (B, T, H, W, 3) flows through `Segmenter.__call__`:

  frames (B*T, H, W, 3) -> ResNet, batched over all frames -> stage maps
  PCMA.encode, batched          -> key (B, T, h, w, Ck), value (B, T, h, w, Cv) per PCMA stage
  jax.lax.scan over T (`_scan_memory`, pure):  reset flagged samples, attend, push   -> read-outs
  PCMA.fuse, batched            -> enhanced stage maps (the ones handed to the head)
  head, batched                 -> logits, bilinearly resized to (H, W)

With `PCMAOptions.feed_forward` the enhanced maps also feed the next stage, so the later stages depend on
the memory: then the frames are run one after another (`nn.scan` over the per-frame encoder).
A plain encoder (`pcma=None`) goes through the same interface with an empty memory.
`step` is the same computation for one frame (T = 1), for streaming video.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ma_resnet.models import memory as memory_lib
from ma_resnet.models.ops import resize_bilinear
from ma_resnet.models.pcma import PCMA, PCMAOptions, attend, memory_size
from ma_resnet.models.resnet import STAGES, ResNet, stage_channels, stage_sizes


class SegmenterOutput(NamedTuple):
  """What a segmenter returns for a clip (per frame, frames in order)."""
  logits: jax.Array           # (B, T, H, W, classes), float32, at the input size
  memory: memory_lib.Memory   # the memory after the last frame
  enhanced: jax.Array         # (B, T) bool: the frame was enhanced by memory (False in warm-up / plain)
  stage_features: dict        # stage name -> (B, T, h, w, C): the maps handed to the head
  aux_logits: jax.Array | None = None  # (B, T, H, W, classes) of the auxiliary head, when it exists


def _scan_memory(memory: memory_lib.Memory, keys: dict, values: dict, reset, options: PCMAOptions):
  """Threads the memory through the frames. keys/values: stage -> (B, T, h, w, C); reset: (B, T) bool.

  Returns read-outs (stage -> (B, T, h, w, Cv)), enhanced (stage -> (B, T)), the final memory.
  """
  def body(memory, frame):
    keys_t, values_t, reset_t = frame
    memory = memory_lib.reset(memory, reset_t)
    readouts, enhanced = {}, {}
    for stage in memory:
      readouts[stage], enhanced[stage], memory[stage] = attend(memory[stage], keys_t[stage],
                                                               values_t[stage], options)
    return memory, (readouts, enhanced)

  time_major = lambda tree: jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), tree)
  memory, (readouts, enhanced) = jax.lax.scan(body, dict(memory),
                                              time_major((keys, values, reset)))
  return time_major(readouts), time_major(enhanced), memory


class Segmenter(nn.Module):
  """A video segmenter: ResNet encoder, optional PCMA memory on some stages, a segmentation head.

  Attributes:
    backbone: the `ResNet` (its `dtype` is the compute dtype of the whole model).
    head: a head module: `head(stage_maps: dict, train) -> logits (N, h, w, classes)`.
    num_classes: number of classes.
    pcma: `PCMAOptions`, or None for the plain per-frame encoder.
    aux_head: optional auxiliary head (training only), same interface as `head`.
  """
  backbone: ResNet
  head: nn.Module
  num_classes: int
  pcma: PCMAOptions | None = None
  aux_head: nn.Module | None = None

  # -- memory ---------------------------------------------------------------------------------------

  def init_memory(self, batch_size: int, image_size: tuple[int, int]) -> memory_lib.Memory:
    """An empty memory for `batch_size` videos of frames `image_size` = (H, W). Plain encoder: {}."""
    if self.pcma is None:
      return {}
    sizes = stage_sizes(image_size, self.backbone.output_stride)
    channels = stage_channels(self.backbone.depth)
    memory = {}
    for stage in self.pcma.stages:
      key_channels, value_channels = self.pcma.channels(channels[stage])
      memory[stage] = memory_lib.empty_stage_memory(batch_size, self.pcma.memory_length,
                                                    memory_size(sizes[stage]), key_channels,
                                                    value_channels, self.backbone.dtype)
    return memory

  # -- clips ----------------------------------------------------------------------------------------

  @nn.compact
  def __call__(self, clip, memory: memory_lib.Memory | None = None, reset=None, *,
               train: bool = False) -> SegmenterOutput:
    """Segments a clip.

    Args:
      clip: (B, T, H, W, 3) float, normalised frames in time order.
      memory: the memory before the first frame (`init_memory`); None means empty.
      reset: optional (B, T) bool: clear a sample's memory before that frame (a new sequence starts).
      train: batch norm on batch statistics (updates `batch_stats`) and dropout on (needs a 'dropout' rng).
    Returns:
      `SegmenterOutput`, logits first.
    """
    b, t, h, w, _ = clip.shape
    if memory is None:
      memory = self.init_memory(b, (h, w))
    if reset is None:
      reset = jnp.zeros((b, t), bool)
    unfold = lambda a: a.reshape((b, t) + a.shape[1:])
    enhanced = jnp.zeros((b, t), bool)

    channels = stage_channels(self.backbone.depth)
    modules = {s: PCMA(channels[s], self.pcma, dtype=self.backbone.dtype, name=f'pcma_{s}')
               for s in (self.pcma.stages if self.pcma is not None else ())}
    if self.pcma is not None and self.pcma.feed_forward:
      features, enhanced, memory = self._feed_forward(clip, memory, reset, modules, train)
    else:
      frames = clip.reshape((b * t, h, w, clip.shape[-1]))
      features = {name: unfold(x) for name, x in self.backbone(frames, train).items() if name in STAGES}
      if modules:
        keys, values = {}, {}
        for s, module in modules.items():
          key, value = module.encode(features[s].reshape((b * t,) + features[s].shape[2:]), train)
          keys[s], values[s] = unfold(key), unfold(value)
        readouts, enhanced_by_stage, memory = _scan_memory(memory, keys, values, reset, self.pcma)
        for s, module in modules.items():
          features[s] = module.fuse(features[s], readouts[s], enhanced_by_stage[s], train)
        enhanced = enhanced_by_stage[self.pcma.stages[0]]

    fold = lambda d: {k: v.reshape((b * t,) + v.shape[2:]) for k, v in d.items()}
    to_input_size = lambda logits: unfold(resize_bilinear(logits, (h, w)).astype(jnp.float32))
    logits = to_input_size(self.head(fold(features), train))
    aux_logits = None
    if self.aux_head is not None and (train or self.is_initializing()):
      aux_logits = to_input_size(self.aux_head(fold(features), train))
    return SegmenterOutput(logits, memory, enhanced, features, aux_logits)

  def _feed_forward(self, clip, memory, reset, modules, train):
    """`feed_forward` mode: each frame's enhanced maps feed its next stage, so every stage after the
    first PCMA stage depends on the memory and frames run one after another (unrolled over T)."""
    memory, per_frame, enhanced = dict(memory), [], []
    for i in range(clip.shape[1]):
      memory = memory_lib.reset(memory, reset[:, i])
      x = self.backbone.run_stem(clip[:, i], train)
      frame_features, frame_enhanced = {}, jnp.zeros(clip.shape[:1], bool)
      for index, stage in enumerate(STAGES):
        x = self.backbone.run_stage(index, x, train)
        if stage in modules:
          key, value = modules[stage].encode(x, train)
          readout, frame_enhanced, memory[stage] = attend(memory[stage], key, value, self.pcma)
          x = modules[stage].fuse(x[:, None], readout[:, None], frame_enhanced[:, None], train)[:, 0]
        frame_features[stage] = x
      per_frame.append(frame_features)
      enhanced.append(frame_enhanced)
    features = {s: jnp.stack([f[s] for f in per_frame], axis=1) for s in STAGES}
    return features, jnp.stack(enhanced, axis=1), memory

  # -- streaming ------------------------------------------------------------------------------------

  def step(self, frame, memory: memory_lib.Memory, reset=None, *, train: bool = False) -> SegmenterOutput:
    """One frame (B, H, W, 3) -> `SegmenterOutput` for that frame (no time axis) and the new memory.

    Equal to `__call__` on the clip of consecutive frames, one frame at a time.
    """
    out = self(frame[:, None], memory, None if reset is None else reset[:, None], train=train)
    squeeze = lambda a: None if a is None else a[:, 0]
    return SegmenterOutput(squeeze(out.logits), out.memory, squeeze(out.enhanced),
                           {k: squeeze(v) for k, v in out.stage_features.items()},
                           squeeze(out.aux_logits))
