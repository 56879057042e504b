"""Temporal Holistic Attention (THA): LERNet + THA, paper 004 §3.3-3.4. No public code: the paper is the spec.

Key frames (every K-th frame of a sequence, `key_interval`) run the whole LERNet; the others run only its
low-level part P_l and reuse the last key frame's high-level features, gated by an attention map computed from
the low-level features of both frames:

  A[i, j] = F^kl_i . F^nl_j          F^kl, F^nl = 1x1 conv (C -> C' = C/32) of the key / current low-level map
  W = sigmoid(conv5x5([max_i A[i, j], mean_i A[i, j]]))          (1 x h x w: one weight per current position j)
  F^n = F_l^n + W * F_h^k                                         (then the decoder, as for a key frame)

The N x N matrix A is never materialised: the mean over key positions is a dot product with the mean key
(mean_i F^kl_i . F^nl_j), and the max is taken over chunks of `chunk` key positions (`holistic_attention`).

State (`KeyFrame`): the last key frame's projected low-level map, its high-level map, and the frames of the
sequence seen so far (a reset makes the next frame a key frame). The parts of the temporal interface:
1. `encode` (batched, parameters): the projections of every frame, and P_h on the key frames only. In a clip
   that starts from an empty memory the schedule is static (frames 0, K, 2K, ...): P_h runs batched on those
   (in training a clip always starts its sequence; resets inside a training clip are not supported). In
   evaluation, when a carried memory or a reset moves the schedule, a `lax.cond` (`nn.cond`) falls back to P_h
   on every frame and selects the key frames (same numbers); in `step` (one frame) it runs P_h only when a
   lane is at a key frame.
2. `scan_body` (pure): a key frame replaces the stored key frame; every frame reads the stored one.
3. `fuse` (batched, parameters): the attention map and F^n for non-key frames; key frames keep their own F_h.
   The result is the 'high' map the decoder (head) reads. `enhanced` = the frame reused a key frame.

Paper readings (options): one 1x1 projection shared by both frames (`shared_projection`; "a 1x1 convolution
layer is first applied"), with bias; the sigmoid limits W to [0, 1] (the text's "[-1, 1]" cannot come from a
sigmoid); the 5x5 conv has a bias; one decoder for key and non-key frames (Fig. 3's caption mentions different
convolutions per kind of frame; `separate_decoder` is not offered: eq. 4 feeds F^n to "the decoder").
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from ma_resnet.models.layers import conv
from ma_resnet.models.temporal.base import BuildContext, FeatureShapes, TemporalModule, parse_options


@dataclasses.dataclass(frozen=True)
class THAOptions:
  """key_interval: K, one key frame every K frames (1: every frame is a key frame). reduced_channels: C'
  (paper: C/32 = 4). chunk: key positions per chunk of the max. low/high: the backbone maps THA reads / writes."""
  key_interval: int = 5
  reduced_channels: int = 4
  shared_projection: bool = True
  chunk: int = 2048
  low: str = 'low'
  high: str = 'high'

  def __post_init__(self):
    if self.key_interval < 1:
      raise ValueError(f'THAOptions.key_interval must be >= 1, got {self.key_interval}')
    if self.reduced_channels < 1 or self.chunk < 1:
      raise ValueError('THAOptions.reduced_channels and chunk must be >= 1')


@flax.struct.dataclass
class KeyFrame:
  """THA's state: projected low-level map (B, h, w, C') and high-level map (B, h, w, C) of the last key frame,
  and the frames of the current sequence seen so far (B,) int32 (0 = none: the next frame is a key frame)."""
  projection: jax.Array
  high: jax.Array
  seen: jax.Array


def holistic_attention(key, current, chunk: int = 2048, precision=None):
  """[max_i A[i, j], mean_i A[i, j]] with A[i, j] = key_i . current_j, without the (N, N) matrix.

  key, current: (B, h, w, C'). Returns (B, h, w, 2): for every current position j, the max and the mean over
  the key positions i. The max runs over chunks of `chunk` key positions (a scan), the mean is one dot product
  with the mean key.
  """
  b, h, w, c = key.shape
  keys = key.reshape(b, h * w, c)
  queries = current.reshape(b, h * w, c)
  mean = jnp.einsum('bc,bnc->bn', jnp.mean(keys, axis=1), queries, precision=precision)
  n = keys.shape[1]
  size = min(int(chunk), n)
  pad = -n % size
  if pad:  # padded key positions repeat the first one: the max is unchanged
    keys = jnp.concatenate([keys, jnp.repeat(keys[:, :1], pad, axis=1)], axis=1)
  chunks = keys.reshape(b, -1, size, c).swapaxes(0, 1)  # (chunks, B, size, C')

  def body(best, block):
    return jnp.maximum(best, jnp.max(jnp.einsum('bkc,bnc->bkn', block, queries, precision=precision), axis=1)), None

  best, _ = jax.lax.scan(body, jnp.full((b, h * w), -jnp.inf, queries.dtype), chunks)
  return jnp.stack([best, mean], axis=-1).reshape(b, h, w, 2)


def schedule(seen, reset, key_interval: int):
  """(B, T) bool: which frames are key frames, from the frames seen before the clip (B,) and the resets (B, T)."""
  def body(position, reset_t):
    position = jnp.where(reset_t, 0, position)
    return position + 1, position % key_interval == 0
  _, is_key = jax.lax.scan(body, seen, reset.swapaxes(0, 1))
  return is_key.swapaxes(0, 1)


class THA(TemporalModule):
  """Temporal holistic attention over the last key frame (see the module docstring).

  Parameter tree: `projection` (or `key_projection` / `current_projection`), `gate` (the 5x5 conv). P_h is the
  backbone's (`backbone.high_level`), run here on key frames only.
  """
  options: THAOptions = THAOptions()
  dtype: Any = jnp.float32
  precision: Any = None

  needs_backbone: ClassVar[bool] = True
  frame_kinds: ClassVar[tuple[str, str]] = ('key', 'non-key')

  @classmethod
  def from_config(cls, options: Mapping, context: BuildContext) -> 'THA':
    """THA on LERNet (it runs the backbone's high-level part, `high_level`, on key frames only); the head reads
    the 'high' map THA writes."""
    options = parse_options(THAOptions, options)
    if not callable(getattr(context.backbone, 'high_level', None)):
      raise ValueError("model.temporal='tha' needs model.backbone='lernet' (it runs LERNet's high-level part on "
                       'key frames only)')
    context.require_map(options.low, 'low')
    context.require_read(options.high, 'high', "LERNet's decoder is model.head='classifier' with "
                         "head_options.in_stage='high'")
    return cls(options, dtype=context.dtype, precision=context.precision)

  def setup(self):
    o = self.options
    if o.shared_projection:
      self.projection = conv(o.reduced_channels, 1, use_bias=True, dtype=self.dtype, precision=self.precision)
    else:
      self.key_projection = conv(o.reduced_channels, 1, use_bias=True, dtype=self.dtype, precision=self.precision)
      self.current_projection = conv(o.reduced_channels, 1, use_bias=True, dtype=self.dtype, precision=self.precision)
    self.gate = conv(1, 5, use_bias=True, dtype=self.dtype, precision=self.precision)

  def stages_read(self) -> tuple[str, ...]:
    return (self.options.low,)

  def stages_written(self) -> tuple[str, ...]:
    return (self.options.high,)

  def init_state(self, batch_size: int, feature_shapes: FeatureShapes, dtype: Any = jnp.float32) -> KeyFrame:
    h, w, c = feature_shapes[self.options.high]
    return KeyFrame(projection=jnp.zeros((batch_size, h, w, self.options.reduced_channels), dtype),
                    high=jnp.zeros((batch_size, h, w, c), dtype), seen=jnp.zeros((batch_size,), jnp.int32))

  def _project(self, x, which: str):
    if self.options.shared_projection:
      return self.projection(x)
    return (self.key_projection if which == 'key' else self.current_projection)(x)

  def encode(self, maps: dict, train: bool, *, backbone=None, memory: KeyFrame | None = None, reset=None) -> dict:
    """Projections of every frame and P_h of the key frames. maps[low]: (B, T, h, w, C)."""
    o = self.options
    low = maps[o.low]
    b, t = low.shape[:2]
    flat = low.reshape((b * t,) + low.shape[2:])
    unfold = lambda a: a.reshape((b, t) + a.shape[1:])
    seen = memory.seen if memory is not None else jnp.zeros((b,), jnp.int32)
    reset = reset if reset is not None else jnp.zeros((b, t), bool)
    is_key = schedule(seen, reset, o.key_interval)
    encodings = {'is_key': is_key, 'projection': unfold(self._project(flat, 'current'))}
    if not o.shared_projection:
      encodings['key_projection'] = unfold(self._project(flat, 'key'))

    def every_frame(module):
      high = unfold(module.high_level(flat, train))
      return jnp.where(is_key[:, :, None, None, None], high, jnp.zeros_like(high))

    def no_frame(module):
      del module
      return jnp.zeros_like(low)

    static = list(range(0, t, o.key_interval))
    static_mask = jnp.zeros((t,), bool).at[jnp.asarray(static)].set(True)

    def static_frames(module):
      picked = low[:, static].reshape((b * len(static),) + low.shape[2:])
      high = module.high_level(picked, train).reshape((b, len(static)) + low.shape[2:])
      return jnp.zeros_like(low).at[:, static].set(high)

    def dynamic(module):
      return nn.cond(jnp.any(is_key), every_frame, no_frame, module)

    if self.is_initializing() or (train and memory is not None):
      encodings['high'] = every_frame(backbone)
    elif train:  # a training clip starts a sequence: key frames 0, K, 2K, ... (resets only at frame 0)
      encodings['high'] = static_frames(backbone)
    elif t == 1:
      encodings['high'] = dynamic(backbone)
    else:
      encodings['high'] = nn.cond(jnp.all(is_key == static_mask[None]), static_frames, dynamic, backbone)
    return encodings

  def scan_body(self, state: KeyFrame, encodings_t: dict):
    key = encodings_t['is_key']
    stored = encodings_t.get('key_projection', encodings_t['projection'])
    pick = lambda new, old: jnp.where(key.reshape(key.shape + (1,) * (new.ndim - 1)), new.astype(old.dtype), old)
    state = KeyFrame(projection=pick(stored, state.projection), high=pick(encodings_t['high'], state.high),
                     seen=state.seen + 1)
    return state, {'projection': encodings_t['projection'], 'key_projection': state.projection,
                   'key_high': state.high, 'is_key': key}, ~key

  def fuse(self, maps: dict, reads: dict, enhanced: jax.Array, train: bool) -> dict:
    del train
    o = self.options
    low = maps[o.low]
    b, t = low.shape[:2]
    fold = lambda a: a.reshape((b * t,) + a.shape[2:])
    current = fold(reads['projection'])
    key_projection, key_high = fold(reads['key_projection']), fold(reads['key_high'])
    weight = jax.nn.sigmoid(self.gate(holistic_attention(key_projection, current, o.chunk, self.precision)))  # (B*T, h, w, 1)
    propagated = fold(low) + weight * key_high
    high = jnp.where(fold(reads['is_key'])[:, None, None, None], key_high, propagated)
    self.sow('intermediates', 'gate', weight)
    return {**maps, o.high: high.reshape((b, t) + high.shape[1:])}
