"""Partial Channel Memory Attention (PCMA): MA-ResNet50, paper 001 §3.2, with the authors' code as reference.

Reference: `../shared/reference/paddle_ma_resnet/` (the authors' PaddlePaddle code; `PCMAOptions.reference()`).

State: per PCMA stage, the keys and values of the T previous frames (`StageMemory`, slots oldest first) and
which slots hold a frame. PCMA on a stage output x (B, T, H, W, C) with ratio r splits into the three parts of
the temporal interface, so that everything with parameters runs batched over all frames:

1. `encode` (parameters, batched): `selected` = the last r*C channels of x; key = ReLU(BN(conv3x3(selected)))
   with r*C/2 channels, value = ReLU(selected), both resized to (floor(H/2), floor(W/2)) by nearest
   neighbour (framework rule: rows 0, 2, 4, ...).
2. `scan_body` -> `attend` (pure, one frame): attention of the current key over the keys of the stored frames
   -> read-out (B, h, w, r*C); the memory is updated first in, first out.
3. `fuse` (parameters, batched): read-out resized back to exactly (H, W) (bilinear, half-pixel centres),
   ReLU(BN(.)), mean-scaled fusion with `selected` (paper eq. 3), optional judge (eq. 4-5), concatenated after
   the (1-r)*C untouched channels. The enhanced map replaces the stage map handed to the head.

Where paper and code differ, `PCMAOptions` offers both (see its fields); `PCMAOptions.reference()` is
the code's behaviour, number for number.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from ma_resnet.models import attention as attention_lib
from ma_resnet.models.layers import BN_EPSILON, BN_MOMENTUM, ConvBN
from ma_resnet.models.ops import resize_bilinear, resize_nearest
from ma_resnet.models.temporal.base import BuildContext, FeatureShapes, TemporalModule, parse_options, push

_MASKED = attention_lib.MASKED  # attention logit of an empty memory slot


@dataclasses.dataclass(frozen=True)
class PCMAOptions:
  """What PCMA computes. Defaults are the authors' code, except `fusion_mean='sample'`.

  Attributes:
    stages: stage outputs that carry PCMA (code: stage1-3; stage4's parameters exist there but are unused).
    ratio: r, the share of channels that attend to memory (the last r*C channels).
    memory_length: T, the number of stored frames.
    key_norm: 'softmax10' (code: softmax over channels, times 10, for memory and current keys) or
      'dot' (plain scaled dot product, logits / sqrt(Ck)).
    memory_stores: 'key_value' (code: the current frame's key and value) or 'enhanced' (paper: the key and
      the attention read-out, i.e. the enhanced feature).
    fusion_mean: 'sample' (the means of eq. 3 and 4 per sample: results do not depend on the rest of the
      batch) or 'batch' (code: means over the whole batch of the frame).
    judge: the paper's judge module (eq. 4-5), absent from the code.
    detach_memory: stored keys/values carry no gradient (code) or keep it (backprop through time).
    warmup: 'full' (code: no enhancement until T frames are stored) or 'partial' (attend to whatever is
      stored; a frame with an empty memory passes through).
    feed_forward: enhanced maps also feed the next stage (False in the code: they only go to the head).
    attention: how the memory is read (`ma_resnet.models.attention`): 'auto' (cuDNN fused attention on a
      GPU in bfloat16, else chunked when the memory has more than `attention_chunk` positions, else dense),
      'dense' (the code's score matrix), 'chunked' (online softmax over memory chunks, no score matrix),
      'fused' (`jax.nn.dot_product_attention`). The same numbers up to rounding.
    attention_chunk: memory positions per chunk of 'chunked'.
  """
  stages: tuple[str, ...] = ('stage1', 'stage2', 'stage3')
  ratio: float = 0.25
  memory_length: int = 1
  key_norm: str = 'softmax10'
  memory_stores: str = 'key_value'
  fusion_mean: str = 'sample'
  judge: bool = False
  detach_memory: bool = True
  warmup: str = 'full'
  feed_forward: bool = False
  attention: str = 'auto'
  attention_chunk: int = attention_lib.DEFAULT_CHUNK

  def __post_init__(self):
    choices = dict(key_norm=('softmax10', 'dot'), memory_stores=('key_value', 'enhanced'),
                   fusion_mean=('sample', 'batch'), warmup=('full', 'partial'))
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f'PCMAOptions.{field} must be one of {allowed}, got {getattr(self, field)!r}')
    if not 0.0 < self.ratio <= 1.0:
      raise ValueError(f'PCMAOptions.ratio must be in (0, 1], got {self.ratio}')
    if self.memory_length < 1:
      raise ValueError(f'PCMAOptions.memory_length must be >= 1, got {self.memory_length}')
    attention_lib.check_implementation(self.attention, self.attention_chunk, 'PCMAOptions')
    bad = [s for s in self.stages if s not in ('stage1', 'stage2', 'stage3', 'stage4')]
    if bad:
      raise ValueError(f'PCMAOptions.stages: unknown stage(s) {bad}; use stage1..stage4')
    object.__setattr__(self, 'stages', tuple(self.stages))

  @classmethod
  def reference(cls, **overrides) -> 'PCMAOptions':
    """The authors' code exactly (batch-wide fusion means)."""
    return cls(**{'fusion_mean': 'batch', **overrides})

  @classmethod
  def paper(cls, **overrides) -> 'PCMAOptions':
    """The paper's text: judge module, enhanced features stored in memory, plain dot-product attention."""
    return cls(**{'judge': True, 'memory_stores': 'enhanced', 'key_norm': 'dot', **overrides})

  def channels(self, stage_channels: int) -> tuple[int, int]:
    """(key channels, value channels) = (r*C/2, r*C) for a stage of C channels."""
    value_channels = int(stage_channels * self.ratio)
    if value_channels < 2 or value_channels % 2:
      raise ValueError(f'ratio {self.ratio} on {stage_channels} channels selects {value_channels} channels; '
                       'it must select an even number >= 2')
    return value_channels // 2, value_channels


@flax.struct.dataclass
class StageMemory:
  """The memory of one PCMA stage (T = memory length, slots oldest first: slot T-1 is the newest).

  keys (B, T, h, w, Ck) with Ck = r*C/2; values (B, T, h, w, Cv) with Cv = r*C; valid (B, T) bool.
  """
  keys: jax.Array
  values: jax.Array
  valid: jax.Array

  @property
  def length(self) -> int:
    return self.valid.shape[1]


def empty_stage_memory(batch_size: int, length: int, size: tuple[int, int], key_channels: int,
                       value_channels: int, dtype=jnp.float32) -> StageMemory:
  h, w = size
  return StageMemory(keys=jnp.zeros((batch_size, length, h, w, key_channels), dtype),
                     values=jnp.zeros((batch_size, length, h, w, value_channels), dtype),
                     valid=jnp.zeros((batch_size, length), bool))


def push_stage_memory(memory: StageMemory, key: jax.Array, value: jax.Array) -> StageMemory:
  """Stores this frame's `key` (B, h, w, Ck) and `value` (B, h, w, Cv) as the newest slot (FIFO)."""
  return StageMemory(keys=push(memory.keys, key), values=push(memory.values, value),
                     valid=push(memory.valid, jnp.ones(key.shape[:1], bool)))


def memory_size(stage_size: tuple[int, int]) -> tuple[int, int]:
  """Spatial size of stored keys/values for a stage map of `stage_size`: (floor(H/2), floor(W/2))."""
  h, w = stage_size
  if h < 2 or w < 2:
    raise ValueError(f'a PCMA stage map must be at least 2x2, got {h}x{w}: the input is too small')
  return h // 2, w // 2


# ---------------------------------------------------------------------------------------------------
# The scan body: one frame, no parameters.


def attend(memory: StageMemory, key: jax.Array, value: jax.Array, options: PCMAOptions, precision: Any = None):
  """Reads the memory with this frame's key and stores this frame.

  Args:
    memory: the stage's memory before this frame (slots oldest first).
    key: (B, h, w, Ck) this frame's key; value: (B, h, w, Cv) its value.
    options: `key_norm`, `warmup`, `memory_stores`, `detach_memory` and the `attention` implementation.
    precision: of the attention's matmuls (None | jax.lax.Precision).
  Returns:
    readout (B, h, w, Cv), enhanced (B,) bool (whether the frame was enhanced), the updated memory.
  """
  b, h, w, ck = key.shape
  t = memory.length
  cv = memory.values.shape[-1]
  if options.warmup == 'full':
    enhanced = jnp.all(memory.valid, axis=1)
  else:
    enhanced = jnp.any(memory.valid, axis=1)

  implementation = attention_lib.resolve_implementation(options.attention, key.dtype, ck, cv, t * h * w,
                                                        options.attention_chunk)
  # The keys' normalisation and the attention run in float32 whatever the compute dtype: after the softmax x10
  # the logits reach 100, where bfloat16's 8 bits would move them by ~0.4 (the weights by ~1.5x); and on
  # backends that emulate bfloat16 (CPU) the bfloat16 body doubled the compile time of the training step.
  # 'fused' (cuDNN, bfloat16) gets the normalised keys cast back to the compute dtype.
  f32 = jnp.float32
  stored_keys = memory.keys.reshape(b, t * h * w, ck).astype(f32)
  current = key.reshape(b, h * w, ck).astype(f32)
  if options.key_norm == 'softmax10':
    stored_keys = jax.nn.softmax(stored_keys, axis=-1) * 10.0
    current = jax.nn.softmax(current, axis=-1) * 10.0
    scale = 1.0
  else:
    scale = ck ** -0.5
  stored_values = memory.values.reshape(b, t * h * w, cv)
  if implementation != 'fused':
    stored_values = stored_values.astype(f32)
  if implementation == 'dense':  # the code's formulation: scores (B, T*h*w, h*w), softmax over the memory
    logits = jnp.einsum('bmc,bnc->bmn', stored_keys, current, precision=precision) * scale
    slot_valid = jnp.repeat(memory.valid, h * w, axis=1)  # (B, T*h*w)
    logits = jnp.where(slot_valid[:, :, None], logits, _MASKED)
    attention = jax.nn.softmax(logits, axis=1)  # over the memory positions
    readout = jnp.einsum('bmn,bmc->bnc', attention, stored_values, precision=precision)
  else:  # the current positions are the queries; the same softmax over the memory, without the scores
    readout = attention_lib.memory_attention(
        current, stored_keys.reshape(b, t, h * w, ck), stored_values.reshape(b, t, h * w, cv), memory.valid,
        scale=scale, implementation=options.attention, chunk_size=options.attention_chunk, precision=precision)
  readout = readout.astype(memory.values.dtype)
  readout = readout.reshape(b, h, w, cv)

  stored_value = value
  if options.memory_stores == 'enhanced':
    stored_value = jnp.where(enhanced[:, None, None, None], readout, value)
  if options.detach_memory:
    key, stored_value = jax.lax.stop_gradient(key), jax.lax.stop_gradient(stored_value)
  return readout, enhanced, push_stage_memory(memory, key, stored_value)


# ---------------------------------------------------------------------------------------------------
# The batched parts, with parameters.


class MaskedBatchNorm(nn.Module):
  """Batch norm whose training statistics come only from the frames flagged in `mask` (N,).

  The read-out of a frame that was not enhanced (warm-up) is meaningless; it must not enter the batch
  statistics, and a batch with no enhanced frame leaves the running statistics unchanged. Variables are
  named like `flax.linen.BatchNorm`'s (`scale`, `bias`; `batch_stats`: `mean`, `var`).
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask, train: bool):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    if train:
      xf = x.astype(jnp.float32)
      weight = mask.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
      count = jnp.sum(weight) * (xf.size // xf.shape[0] // c)
      safe = jnp.maximum(count, 1.0)
      mean = jnp.sum(xf * weight, axis=tuple(range(x.ndim - 1))) / safe
      var = jnp.sum(jnp.square(xf - mean) * weight, axis=tuple(range(x.ndim - 1))) / safe
      if not self.is_initializing():
        any_frame = count > 0
        ra_mean.value = jnp.where(any_frame, BN_MOMENTUM * ra_mean.value + (1 - BN_MOMENTUM) * mean,
                                  ra_mean.value)
        ra_var.value = jnp.where(any_frame, BN_MOMENTUM * ra_var.value + (1 - BN_MOMENTUM) * var,
                                 ra_var.value)
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x - mean.astype(x.dtype)) * (jax.lax.rsqrt(var + BN_EPSILON) * scale).astype(x.dtype)
    return (y + bias.astype(x.dtype)).astype(self.dtype)


def _mean(x, weight, per_sample: bool):
  """Mean of x (B, T, H, W, C) per sample-frame (per_sample) or per frame over the weighted batch."""
  if per_sample:
    return jnp.mean(x, axis=(2, 3, 4), keepdims=True)
  w = weight.astype(x.dtype)[:, :, None, None, None]
  total = jnp.sum(jnp.mean(x, axis=(2, 3, 4), keepdims=True) * w, axis=0, keepdims=True)
  return total / jnp.maximum(jnp.sum(w, axis=0, keepdims=True), 1.0)


class PCMAStage(nn.Module):
  """The parameterised parts of PCMA for one stage of `channels` channels. See the module docstring.

  Parameter tree: `key_encoder/{conv,bn}` (3x3, no bias), `readout_bn`.
  """
  channels: int
  options: PCMAOptions
  dtype: Any = jnp.float32
  precision: Any = None

  def setup(self):
    key_channels, self.value_channels = self.options.channels(self.channels)
    self.key_encoder = ConvBN(key_channels, 3, dtype=self.dtype, precision=self.precision)
    self.readout_bn = MaskedBatchNorm(dtype=jnp.float32)  # the fusion runs in float32 (see `fuse`)

  def encode(self, x, train: bool):
    """x (N, H, W, C) -> key (N, h, w, Ck), value (N, h, w, Cv) at (h, w) = floor((H, W) / 2)."""
    selected = x[..., self.channels - self.value_channels:]
    size = memory_size(x.shape[1:3])
    key = resize_nearest(self.key_encoder(selected, train), size)
    value = resize_nearest(nn.relu(selected), size)
    return key, value

  def fuse(self, x, readout, enhanced, train: bool):
    """Fuses the read-out into x.

    Args:
      x: (B, T, H, W, C) stage output; readout: (B, T, h, w, Cv); enhanced: (B, T) bool.
    Returns:
      (B, T, H, W, C): x with its last Cv channels fused with the memory read-out where `enhanced`.

    The fusion (resize, masked batch norm, means, judge) runs in float32 and the fused channels are cast back
    to x's dtype: its means and ratios are float32 work anyway, and a bfloat16 fusion on a backend that
    emulates bfloat16 (CPU) cost more to compile than the rest of PCMA.
    """
    b, t, h, w, c = x.shape
    selected = x[..., c - self.value_channels:].astype(jnp.float32)
    readout = resize_bilinear(readout.astype(jnp.float32), (h, w))
    readout = self.readout_bn(readout.reshape((b * t, h, w, -1)), enhanced.reshape(-1), train)
    readout = nn.relu(readout).reshape(selected.shape)
    per_sample = self.options.fusion_mean == 'sample'
    readout_mean = _mean(readout, enhanced, per_sample)
    readout_mean = jnp.where(readout_mean == 0, 1.0, readout_mean)  # all-zero read-out: fuse nothing
    fused = readout * (_mean(selected, enhanced, per_sample) / readout_mean) + selected
    if self.options.judge:
      lo = jnp.min(fused, axis=(2, 3, 4), keepdims=True)
      hi = jnp.max(fused, axis=(2, 3, 4), keepdims=True)
      if not per_sample:
        lo, hi = jnp.min(lo, axis=0, keepdims=True), jnp.max(hi, axis=0, keepdims=True)
      a = (_mean(fused, enhanced, per_sample) - lo) / jnp.maximum(hi - lo, 1e-12)
      fused = jnp.where((a > 0.1) & (a < 0.9), fused, selected)
    fused = jnp.where(enhanced[:, :, None, None, None], fused, selected).astype(x.dtype)
    return jnp.concatenate([x[..., :c - self.value_channels], fused], axis=-1)


class PCMA(TemporalModule):
  """PCMA on `options.stages` of a backbone whose maps have `channels` channels (one per stage, same order).

  State: stage name -> `StageMemory`. Parameter tree: `pcma_<stage>/{key_encoder/{conv,bn},readout_bn}`.
  `precision` (None | jax.lax.Precision) goes to the key encoders' convolutions and the attention's matmuls.
  """
  options: PCMAOptions
  channels: tuple[int, ...]
  dtype: Any = jnp.float32
  precision: Any = None

  @property
  def interleaved(self) -> bool:  # enhanced maps also feed the next stage
    return self.options.feed_forward

  @classmethod
  def from_config(cls, options: Mapping, context: BuildContext) -> 'PCMA':
    """PCMA on the configured stages the heads read: with `feed_forward` off the enhanced maps go only to the
    head, so a stage it does not read is dropped (a note), and none left is an error."""
    options = parse_options(PCMAOptions, options)
    stages = options.stages
    if not options.feed_forward:
      unread = [s for s in stages if s not in context.heads_read]
      if unread and len(unread) == len(stages):
        raise ValueError(f'stages={stages}, but the head reads only {sorted(context.heads_read)} and the '
                         'enhanced maps go only to the head: the memory could not change a prediction. Put PCMA on '
                         'a stage the head reads, or set model.pcma.feed_forward=True.')
      if unread:
        context.notes.append(f'PCMA on {unread} is not built: the head reads only {sorted(context.heads_read)}, '
                             f'so it could not change a prediction (model.pcma.stages={stages}).')
        options = dataclasses.replace(options, stages=tuple(s for s in stages if s in context.heads_read))
    channels = tuple(context.require_map(s, 'stages') for s in options.stages)
    for c in channels:
      options.channels(c)  # r*C must be even
    return cls(options, channels, dtype=context.dtype, precision=context.precision)

  def check_feature_shapes(self, feature_shapes: FeatureShapes) -> None:
    for stage in self.options.stages:
      memory_size(feature_shapes[stage][:2])

  def setup(self):
    if len(self.channels) != len(self.options.stages):
      raise ValueError(f'PCMA: {len(self.options.stages)} stages {self.options.stages} but '
                       f'{len(self.channels)} channel counts {self.channels}')
    self.pcma = {s: PCMAStage(c, self.options, dtype=self.dtype, precision=self.precision)
                 for s, c in zip(self.options.stages, self.channels)}

  def stages_read(self) -> tuple[str, ...]:
    return self.options.stages

  def init_state(self, batch_size: int, feature_shapes: FeatureShapes, dtype: Any = jnp.float32) -> dict:
    memory = {}
    for stage in self.options.stages:
      h, w, c = feature_shapes[stage]
      key_channels, value_channels = self.options.channels(c)
      memory[stage] = empty_stage_memory(batch_size, self.options.memory_length, memory_size((h, w)),
                                         key_channels, value_channels, dtype)
    return memory

  def encode(self, maps: dict, train: bool) -> dict:
    """stage -> (key (B, T, h', w', Ck), value (B, T, h', w', Cv)) for the PCMA stages present in `maps`."""
    encodings = {}
    for stage in self.options.stages:
      if stage in maps:
        x = maps[stage]
        key, value = self.pcma[stage].encode(x.reshape((-1,) + x.shape[2:]), train)
        unfold = lambda a: a.reshape(x.shape[:2] + a.shape[1:])
        encodings[stage] = (unfold(key), unfold(value))
    return encodings

  def scan_body(self, state: dict, encodings_t: dict):
    state, readouts, enhanced = dict(state), {}, None
    for stage, (key, value) in encodings_t.items():
      readouts[stage], enhanced, state[stage] = attend(state[stage], key, value, self.options, self.precision)
    return state, readouts, enhanced

  def fuse(self, maps: dict, reads: dict, enhanced: jax.Array, train: bool) -> dict:
    maps = dict(maps)
    for stage, readout in reads.items():
      maps[stage] = self.pcma[stage].fuse(maps[stage], readout, enhanced, train)
    return maps
