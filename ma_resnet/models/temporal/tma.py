"""Temporal Memory Attention (TMA): TMANet, paper 002 §3, as the authors' code (`TMAHead`) computes it.

Reference: `../shared/reference/tmanet/` (the authors' PyTorch code, mmseg 0.x; `README.md` is the spec).

State (`FeatureWindow`): the `stage` maps (stage 4) of the T previous frames, oldest first, and how many frames
of the current sequence have been seen. The parts of the temporal interface:

1. `encode`: nothing to compute (the window stores raw stage maps, because the memory encoders below have one
   set of weights per slot: a frame is encoded differently as it moves through the window).
2. `scan_body` (pure, one frame): emits the window of the T previous frames, then pushes this frame (FIFO).
3. `fuse` (parameters, batched over all B x T frames): per-slot key and value encoders on the window (slot i
   has its own ConvModule 1x1 -> ConvModule 3x3, for keys and for values), query key/value encoders on the
   frame's own map; attention of the query key over all T*h*w memory positions at once, without scaling,
   softmax over the last axis; read = attention . memory values; [query value, read] -> 3x3 bottleneck
   ConvModule. The bottleneck output (`channels`) replaces the stage map handed to the head; the head of
   TMANet is then a classifier (`heads.ClassifierHead`: Dropout2d(0.1), 1x1 conv with bias).
   ConvModule = conv (no bias) -> BN -> ReLU.

Warm-up (fixed, not an option): the authors' data pipeline always gives T real earlier frames (Cityscapes: the
labelled 20th frame of a 30-frame snippet; CamVid: earlier frames of the 30 fps video), so the model never sees
a missing slot. At the start of a sequence we repeat its first frame: an empty window is filled with the
current frame, which makes the window for frame t exactly frames max(t-T, 0) .. max(t-1, 0), every slot a real
frame the slot encoders were trained on. `enhanced` is True once T earlier frames exist (the frames the
reference would have produced an output for).

Intermediates (`mutable=['intermediates']`, under `temporal`), one row per frame of the clip: `memory_keys`
(B*T', T, h, w, Ck), `memory_values` (B*T', T, h, w, Cv), `query_keys`, `query_values`, `read`, `bottleneck_out`
(B*T', h, w, C), for the parity checks.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from ma_resnet.models import attention as attention_lib
from ma_resnet.models.layers import ConvBN
from ma_resnet.models.temporal.base import BuildContext, FeatureShapes, TemporalModule, parse_options, push


@dataclasses.dataclass(frozen=True)
class TMAOptions:
  """What TMA computes. Defaults: the authors' Cityscapes config (T=2, key 64, value 256, bottleneck 512).

  Attributes:
    memory_length: T, the number of previous frames attended to (code: Cityscapes 2, CamVid 4).
    key_channels, value_channels: widths of the key and value encoders.
    channels: width of the bottleneck (mmseg's decode-head `channels`).
    stage: the backbone map TMA reads and replaces.
    matmul_norm: scale the attention logits by key_channels^-1/2 (off in the code).
    detach_memory: no gradient through the stored maps (off in the code: memory frames are trained too).
    attention: how the memory is read (`ma_resnet.models.attention`): 'auto' (cuDNN fused attention on a
      GPU in bfloat16, else chunked when the memory has more than `attention_chunk` positions, else dense),
      'dense' (the code's score matrix), 'chunked' (online softmax over memory chunks), 'fused'
      (`jax.nn.dot_product_attention`). The same numbers up to rounding.
    attention_chunk: memory positions per chunk of 'chunked'.
  """
  memory_length: int = 2
  key_channels: int = 64
  value_channels: int = 256
  channels: int = 512
  stage: str = 'stage4'
  matmul_norm: bool = False
  detach_memory: bool = False
  attention: str = 'auto'
  attention_chunk: int = attention_lib.DEFAULT_CHUNK

  def __post_init__(self):
    attention_lib.check_implementation(self.attention, self.attention_chunk, 'TMAOptions')
    if self.memory_length < 1:
      raise ValueError(f'TMAOptions.memory_length must be >= 1, got {self.memory_length}')
    for field in ('key_channels', 'value_channels', 'channels'):
      if getattr(self, field) < 1:
        raise ValueError(f'TMAOptions.{field} must be >= 1, got {getattr(self, field)}')


@flax.struct.dataclass
class FeatureWindow:
  """TMA's state: maps (B, T, h, w, C) of the T previous frames, oldest first; seen (B,) int32 = frames of
  the current sequence seen so far, capped at T (0 = empty window)."""
  maps: jax.Array
  seen: jax.Array


class Encoder(nn.Module):
  """ConvModule 1x1 -> ConvModule 3x3 (mmseg `memory_key_conv` / `query_key_conv` ...): `reduce`, `conv`."""
  features: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = ConvBN(self.features, 1, dtype=self.dtype, precision=self.precision, name='reduce')(x, train)
    return ConvBN(self.features, 3, dtype=self.dtype, precision=self.precision, name='conv')(x, train)


def memory_attention(query_key, memory_keys, memory_values, matmul_norm: bool = False, *,
                     implementation: str = 'dense', chunk_size: int = attention_lib.DEFAULT_CHUNK,
                     precision: Any = None):
  """TMANet's `MemoryModule` read.

  query_key (N, h, w, Ck); memory_keys (N, T, h, w, Ck); memory_values (N, T, h, w, Cv) -> (N, h, w, Cv):
  softmax over all T*h*w memory positions of query . key (scaled by Ck^-1/2 with `matmul_norm`).
  `implementation` ('auto' | 'dense' | 'chunked' | 'fused', see `ma_resnet.models.attention`): 'dense' is the
  code's formulation (scores (N, h*w, T*h*w)); the others read the same without the scores. Except on the
  'fused' path the scores, softmax and read-out are float32 whatever the inputs' dtype (the read-out is cast back).
  `precision` (None | jax.lax.Precision): of the matmuls.
  """
  n, h, w, ck = query_key.shape
  t, cv = memory_keys.shape[1], memory_values.shape[-1]
  dtype = memory_values.dtype
  chosen = attention_lib.resolve_implementation(implementation, dtype, ck, cv, t * h * w, chunk_size)
  scale = ck ** -0.5 if matmul_norm else 1.0
  if chosen != 'fused':  # float32 scores and read-out whatever the compute dtype (as PCMA's `attend`)
    query_key, memory_keys, memory_values = (a.astype(jnp.float32) for a in (query_key, memory_keys,
                                                                              memory_values))
  if chosen != 'dense':
    read = attention_lib.memory_attention(
        query_key.reshape(n, h * w, ck), memory_keys.reshape(n, t, h * w, ck),
        memory_values.reshape(n, t, h * w, cv), scale=scale, implementation=implementation,
        chunk_size=chunk_size, precision=precision)
    return read.reshape(n, h, w, cv).astype(dtype)
  keys = memory_keys.reshape(n, -1, ck)
  values = memory_values.reshape(n, keys.shape[1], -1)
  logits = jnp.einsum('nqc,nmc->nqm', query_key.reshape(n, h * w, ck), keys, precision=precision)
  if matmul_norm:
    logits = logits * ck ** -0.5
  attention = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(values.dtype)
  return jnp.einsum('nqm,nmc->nqc', attention, values, precision=precision).reshape(n, h, w, -1).astype(dtype)


class TMA(TemporalModule):
  """Temporal memory attention on `options.stage`. See the module docstring.

  Parameter tree: `memory_key_{i}`, `memory_value_{i}` (i = slot), `query_key`, `query_value` (each
  `{reduce,conv}/{conv,bn}`), `bottleneck/{conv,bn}`. `precision` (None | jax.lax.Precision) goes to every
  convolution and to the attention's matmuls.
  """
  options: TMAOptions = TMAOptions()
  dtype: Any = jnp.float32
  precision: Any = None

  @classmethod
  def from_config(cls, options: Mapping, context: BuildContext) -> 'TMA':
    """TMA on `stage`, a map of the backbone that the head reads (TMA replaces it)."""
    options = parse_options(TMAOptions, options)
    context.require_map(options.stage, 'stage')
    context.require_read(options.stage, 'stage', "TMANet's head is model.head='classifier' with "
                         'head_options.in_stage = model.tma.stage')
    return cls(options, dtype=context.dtype, precision=context.precision)

  def setup(self):
    o = self.options
    encoder = lambda features: Encoder(features, self.dtype, self.precision)
    self.memory_key = [encoder(o.key_channels) for _ in range(o.memory_length)]
    self.memory_value = [encoder(o.value_channels) for _ in range(o.memory_length)]
    self.query_key = encoder(o.key_channels)
    self.query_value = encoder(o.value_channels)
    self.bottleneck = ConvBN(o.channels, 3, dtype=self.dtype, precision=self.precision)

  def stages_read(self) -> tuple[str, ...]:
    return (self.options.stage,)

  def init_state(self, batch_size: int, feature_shapes: FeatureShapes, dtype: Any = jnp.float32) -> FeatureWindow:
    h, w, c = feature_shapes[self.options.stage]
    return FeatureWindow(maps=jnp.zeros((batch_size, self.options.memory_length, h, w, c), dtype),
                         seen=jnp.zeros((batch_size,), jnp.int32))

  def encode(self, maps: dict, train: bool) -> dict:
    del train
    return {'maps': maps[self.options.stage]} if self.options.stage in maps else {}

  def scan_body(self, state: FeatureWindow, encodings_t: dict):
    current = encodings_t['maps']  # (B, h, w, C)
    if self.options.detach_memory:
      current = jax.lax.stop_gradient(current)
    empty = (state.seen == 0)[:, None, None, None, None]
    window = jnp.where(empty, current[:, None].astype(state.maps.dtype), state.maps)  # repeat the first frame
    enhanced = state.seen >= self.options.memory_length
    state = FeatureWindow(maps=push(window, current),
                          seen=jnp.minimum(state.seen + 1, self.options.memory_length))
    return state, {'window': window}, enhanced

  def fuse(self, maps: dict, reads: dict, enhanced: jax.Array, train: bool) -> dict:
    del enhanced  # every frame has a full window (see the module docstring)
    if 'window' not in reads:
      return maps
    o = self.options
    x = maps[o.stage]
    b, t = x.shape[:2]
    query = x.reshape((b * t,) + x.shape[2:])
    window = reads['window'].reshape((b * t,) + reads['window'].shape[2:])  # (B*T, slots, h, w, C)
    memory_keys = jnp.stack([self.memory_key[i](window[:, i], train) for i in range(o.memory_length)], 1)
    memory_values = jnp.stack([self.memory_value[i](window[:, i], train) for i in range(o.memory_length)], 1)
    query_key = self.query_key(query, train)
    query_value = self.query_value(query, train)
    read = memory_attention(query_key, memory_keys, memory_values, o.matmul_norm, implementation=o.attention,
                            chunk_size=o.attention_chunk, precision=self.precision)
    out = self.bottleneck(jnp.concatenate([query_value, read], axis=-1), train)
    for name, value in (('memory_keys', memory_keys), ('memory_values', memory_values), ('query_keys', query_key),
                        ('query_values', query_value), ('read', read), ('bottleneck_out', out)):
      self.sow('intermediates', name, value)
    return {**maps, o.stage: out.reshape((b, t) + out.shape[1:])}
