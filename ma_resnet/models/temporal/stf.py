"""STF + MAR (paper 003, Zhuang, Wang, Li §3.2-3.3), as the authors' code (`jfzhuang/ST_Memory`) computes it.

Reference: `../shared/reference/stf_mar/README.md` (the exact spec of everything after the PSPNet, with golden
outputs); `ST_Memory/lib/net/{transformer,transformer_block}.py` at commit f253c05.

STF (spatial-temporal fusion) fuses the PSP features of frames t-1, t, t+1 (each (h, w, d), d = 512 on
PSPNet-50) into one map for frame t; MAR (memory-augmented refinement, optional: `STFOptions.mar`) refines every
pixel of it with attention over a memory of class features from the training set. Both replace the map
`stage` ('psp', the PSP bottleneck of `backbones.pspnet.PSPNetBackbone`) that the classifier head reads.

STF, one frame (shapes without the batch; d channels, (bh, bw) = `block_size`, h and w multiples of it):
  pe_enc (3, He, We, d), pe_dec (1, He, We, d): learned positional embeddings stored at `embedding_size` and
      resized to (h, w) per frame slot: linear along rows and columns, align_corners False, no antialiasing,
      source coordinates in float32 (torch's trilinear `interpolate`; the frame axis is kept as it is).
  ICSA(q, kv, Pq, Pk): interlaced cross-self attention, two steps, no residual or norm between them:
    long range: one multi-head attention per in-block offset (i, j): queries q + Pq at that offset in every
      frame and block, keys kv + Pk at the same offset, values kv (no positions);
    short range: one multi-head self-attention per block: queries and keys y + Pq, values y, over the block's
      pixels in every frame of q (Pq for both: in the decoder's cross-attention only the long step sees kv).
  MHA: torch `nn.MultiheadAttention(d, heads)`: q/k/v projections with bias, softmax((Q / sqrt(d/heads)) K^T)
      per head (attention dropout in training), heads concatenated, output projection with bias.
  encoder layer (x = frames (3, h, w, d), t-1, t, t+1): x = LN1(x + ICSA(x, x, pe_enc, pe_enc));
      x = LN2(x + linear2(ReLU(linear1(x))))                                       (post-norm, `layers` of them)
  decoder layer (q = f_t (1, h, w, d)): q = LN1(q + ICSA(q, q, pe_dec, pe_dec));
      q = LN2(q + ICSA(q, enc, pe_dec, pe_enc)); q = LN3(q + linear2(ReLU(linear1(q))))
  LayerNorm over the d channels of a token (biased variance, eps 1e-5). Dropout (0.1 in the code) after every
  attention and FFN, as torch's transformer layers, active only in training.
MAR, every pixel x (d) of the STF output, memory keys Mk and values Mv (R = K_L x classes rows, d):
  q = to_q(x), k = to_k(Mk), v = to_v(Mv) (each three bias-free linear layers d -> d -> w -> w, w = d / 2);
  o = to_out(softmax(q k^T) v) (no scaling; linear w -> d with bias); x = LN1(x + o);
  x = LN2(x + linear2(ReLU(linear1(x)))) (d -> w -> d). Memory row i belongs to class i // K_L: keys are the
  K_L least confident correct training features of the class, values its prototype (the mean of the K_H most
  confident) repeated K_L times, as the authors store it (`ma_resnet.mar_memory` generates them;
  `memory_init` is the folder of its key.npy / value.npy). The memory is a parameter (trainable, as in the code).

Non-causal: STF needs frame t+1 to segment frame t (`delay = 1`). State (`NeighbourWindow`): the features of
the last two frames fed and how many of the current sequence were seen. The temporal interface with a delay:
1. `encode`: the 'psp' maps themselves.
2. `scan_body(state, encodings_t, reset_t)` (pure, one frame fed) emits the window of the frame fed *before*:
   (its t-1, itself, the frame fed now), with the edge rule where a neighbour is missing, and whether such a
   frame exists (`ready`, False on the first frame of a sequence). A reset (the frame fed starts a new
   sequence) makes the emitted frame the last of its sequence: its t+1 is missing; then the state restarts.
3. `fuse` (batched, parameters): STF (and MAR) on every emitted window; the result replaces `stage`.
The segmenter aligns a clip (`VideoSegmenter.__call__`: output t is frame t's, from the emission of step t+1
and one flush at the end), while `step` returns the emitted frame (the previous one) with `ready`.

Edge rule (`edge`), where a neighbour does not exist (the first frame of a sequence has no t-1, the last frame of
a sequence or of a clip no t+1; the authors' data always has both): 'repeat' (default) uses the frame itself;
'mirror' uses the other neighbour (the frame itself when there is none). `enhanced` = both neighbours real.

Feature sizes must be multiples of `block_size` (16 x 16 in the code: frames multiples of 128 at output
stride 8); others are refused with a clear error, as the code cannot run on them.

Parameter tree: `stf/pe_enc` (3, He, We, d), `stf/pe_dec` (1, He, We, d),
`stf/encoder_layer{i}/{self_attn/{long,short}/{query,key,value,out},ffn/{linear1,linear2},norm1,norm2}`,
`stf/decoder_layer{i}/{self_attn,cross_attn}/{long,short}/...`, `.../{ffn/{linear1,linear2},norm1,norm2,norm3}`;
`mar/memory_key`, `mar/memory_value` (R, d), `mar/{to_q,to_k,to_v}/proj{0,1,2}`, `mar/{to_out,ffn/{linear1,
linear2},norm1,norm2}` (`convert.stf_mar` maps the authors' names onto these). Intermediates (`mutable=['intermediates']`, under `temporal`): `pe_enc`, `pe_dec` (resized),
`encoder_out`, `stf_out`, `mar_out` (when MAR is on), for the parity checks.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ma_resnet.errors import ConfigError
from ma_resnet.models.temporal.base import BuildContext, FeatureShapes, TemporalModule, parse_options

EDGE_RULES = ('repeat', 'mirror')
MEMORY_FILES = ('key.npy', 'value.npy')


@dataclasses.dataclass(frozen=True)
class STFOptions:
  """What STF (and MAR) compute. Defaults: the authors' Cityscapes PSPNet-50 model.

  Attributes:
    stage: the map STF reads and replaces (the PSP bottleneck of the 'pspnet' backbone).
    heads: attention heads of every multi-head attention (code: 2).
    layers: encoder and decoder layers (code: 1 each).
    ffn_channels: width of the feed-forward networks (code: 256 for d = 512).
    block_size: (rows, columns) of the ICSA blocks (code: 16 x 16); feature sizes must be multiples of it.
    embedding_size: (rows, columns) the positional embeddings are stored at (code: 128 x 256, the 1/8 map of a
      1024 x 2048 frame); resized to the feature size.
    dropout: of attention weights and residual branches in training (code: 0.1).
    edge: where frame t-1 or t+1 does not exist: 'repeat' (the frame itself) | 'mirror' (the other neighbour).
    freeze_stf: STF runs in eval mode and passes no gradient (the MAR stage of the recipe trains MAR and the
      classifier with STF fixed; freeze its parameters with optimizer.frozen=('temporal/stf',)).
    mar: MAR after STF.
    memory_per_class: K_L, memory rows per class (code: 10).
    mar_channels: projection and FFN width of MAR; 0 = d / 2 (the code's, whatever mlp_dim says).
    memory_init: '' (memory initialised at random, Xavier-uniform as the code before it loads the bank) or a
      folder holding key.npy (K_L x classes, d) and value.npy (classes, d) (`python -m ma_resnet.mar_memory`):
      the memory's initial values, keys as stored and each prototype repeated K_L times.
  """
  stage: str = 'psp'
  heads: int = 2
  layers: int = 1
  ffn_channels: int = 256
  block_size: tuple[int, int] = (16, 16)
  embedding_size: tuple[int, int] = (128, 256)
  dropout: float = 0.1
  edge: str = 'repeat'
  freeze_stf: bool = False
  mar: bool = False
  memory_per_class: int = 10
  mar_channels: int = 0
  memory_init: str = ''

  def __post_init__(self):
    for name in ('block_size', 'embedding_size'):
      value = tuple(int(v) for v in getattr(self, name))
      if len(value) != 2 or min(value) < 1:
        raise ValueError(f'STFOptions.{name} must be two positive sizes (rows, columns), got {getattr(self, name)}')
      object.__setattr__(self, name, value)
    if self.edge not in EDGE_RULES:
      raise ValueError(f'STFOptions.edge must be one of {EDGE_RULES}, got {self.edge!r}')
    for name in ('heads', 'layers', 'ffn_channels', 'memory_per_class'):
      if int(getattr(self, name)) < 1:
        raise ValueError(f'STFOptions.{name} must be >= 1, got {getattr(self, name)}')
    if self.mar_channels < 0:
      raise ValueError(f'STFOptions.mar_channels must be >= 0 (0: d / 2), got {self.mar_channels}')
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'STFOptions.dropout must be in [0, 1), got {self.dropout}')


@flax.struct.dataclass
class NeighbourWindow:
  """STF's state: maps (B, 2, h, w, C) of the last two frames fed (older, newer) and seen (B,) int32, the frames
  of the current sequence among them (0 = empty, 1 = the newer one starts its sequence, 2 = both)."""
  maps: jax.Array
  seen: jax.Array


# ---------------------------------------------------------------------------------------------------------
# Positional embeddings.


def embedding_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source rows i0, i1 (int32 (out,)) and weight of i1 (float32 (out,)) of torch's linear interpolation with
  align_corners=False, computed in float32 as torch does: s = max((in/out)(o + 0.5) - 0.5, 0), i0 = floor(s),
  i1 = min(i0 + 1, in - 1), weight s - i0."""
  scale = np.float32(in_size) / np.float32(out_size)
  s = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
  i0 = np.minimum(np.floor(s).astype(np.int32), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  return i0, i1, (s - i0.astype(np.float32)).astype(np.float32)


def resize_embedding(embedding: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(T, He, We, C) -> (T, h, w, C): torch's trilinear `interpolate` to (T, h, w), align_corners False, no
  antialiasing (the frame axis keeps its size, which is the identity). The identity at (He, We)."""
  for axis, out_size in ((1, size[0]), (2, size[1])):
    in_size = embedding.shape[axis]
    if in_size == out_size:
      continue
    i0, i1, w1 = embedding_taps(in_size, out_size)
    shape = [1] * embedding.ndim
    shape[axis] = out_size
    w1 = jnp.asarray(w1, embedding.dtype).reshape(shape)
    embedding = jnp.take(embedding, i0, axis=axis) * (1 - w1) + jnp.take(embedding, i1, axis=axis) * w1
  return embedding


def _embedding_init(key, shape, dtype=jnp.float32):
  """Xavier-uniform of the code's (1, C, T, He, We) tensor: bound sqrt(6 / ((C + 1) T He We)) (close to 0)."""
  t, he, we, c = shape
  bound = float(np.sqrt(6.0 / ((c + 1) * t * he * we)))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


# ---------------------------------------------------------------------------------------------------------
# Attention.


def _dense(features: int, module, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=nn.initializers.xavier_uniform(), dtype=module.dtype,
                  param_dtype=jnp.float32, precision=module.precision, name=name)


def _layer_norm(module, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=module.dtype, param_dtype=jnp.float32, name=name)


class MultiheadAttention(nn.Module):
  """torch `nn.MultiheadAttention(features, heads)` without masks, batch first.

  query (G, Lq, C), key (G, Lk, C), value (G, Lk, C) -> (G, Lq, C): `query`, `key`, `value` projections (with
  bias: torch's in_proj rows 0-C, C-2C, 2C-3C), Q scaled by (C / heads)^-1/2, softmax over the keys in float32,
  dropout of the attention weights in training, heads concatenated (head 0 first), `out` projection.
  """
  features: int
  heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, query, key, value, train: bool):
    g, lq, c = query.shape
    lk = key.shape[1]
    d = c // self.heads
    q = _dense(c, self, 'query')(query) * (d ** -0.5)
    k = _dense(c, self, 'key')(key)
    v = _dense(c, self, 'value')(value)
    q = q.reshape(g, lq, self.heads, d)
    k = k.reshape(g, lk, self.heads, d)
    v = v.reshape(g, lk, self.heads, d)
    logits = jnp.einsum('gqhd,gkhd->ghqk', q, k, precision=self.precision)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    weights = nn.Dropout(self.dropout, deterministic=not train)(weights)
    out = jnp.einsum('ghqk,gkhd->gqhd', weights, v, precision=self.precision).reshape(g, lq, c)
    return _dense(c, self, 'out')(out)


def _long_groups(x, block):
  """(N, t, H, W, C) -> (N * bh * bw, t * H/bh * W/bw, C): one group per in-block offset (i, j); sequence
  order (frame, block row, block column)."""
  n, t, h, w, c = x.shape
  bh, bw = block
  x = x.reshape(n, t, h // bh, bh, w // bw, bw, c).transpose(0, 3, 5, 1, 2, 4, 6)
  return x.reshape(n * bh * bw, t * (h // bh) * (w // bw), c)


def _from_long_groups(x, shape, block):
  n, t, h, w, c = shape
  bh, bw = block
  x = x.reshape(n, bh, bw, t, h // bh, w // bw, c).transpose(0, 3, 4, 1, 5, 2, 6)
  return x.reshape(shape)


def _short_groups(x, block):
  """(N, t, H, W, C) -> (N * H/bh * W/bw, t * bh * bw, C): one group per block; sequence order (frame, i, j)."""
  n, t, h, w, c = x.shape
  bh, bw = block
  x = x.reshape(n, t, h // bh, bh, w // bw, bw, c).transpose(0, 2, 4, 1, 3, 5, 6)
  return x.reshape(n * (h // bh) * (w // bw), t * bh * bw, c)


def _from_short_groups(x, shape, block):
  n, t, h, w, c = shape
  bh, bw = block
  x = x.reshape(n, h // bh, w // bw, t, bh, bw, c).transpose(0, 3, 1, 4, 2, 5, 6)
  return x.reshape(shape)


class ICSA(nn.Module):
  """Interlaced cross-self attention (the code's `ISA_Block` / `ISA_Block_CA`): `long` then `short`.

  q (N, tq, H, W, C), kv (N, tk, H, W, C), pos_q (tq, H, W, C), pos_k (tk, H, W, C) -> (N, tq, H, W, C).
  """
  features: int
  heads: int
  block_size: tuple[int, int]
  dropout: float = 0.0
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, q, kv, pos_q, pos_k, train: bool):
    attention = lambda name: MultiheadAttention(self.features, self.heads, self.dropout, self.dtype,
                                                self.precision, name=name)
    block = self.block_size
    y = attention('long')(_long_groups(q + pos_q[None], block), _long_groups(kv + pos_k[None], block),
                          _long_groups(kv, block), train)
    y = _from_long_groups(y, q.shape, block)
    keyed = _short_groups(y + pos_q[None], block)
    z = attention('short')(keyed, keyed, _short_groups(y, block), train)
    return _from_short_groups(z, q.shape, block)


class FeedForward(nn.Module):
  """x + linear2(dropout(ReLU(linear1(x)))) with dropout on the branch, then the layer norm `norm`: the FFN
  half of a post-norm transformer layer on (..., C)."""
  channels: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, norm, train: bool):
    y = nn.relu(_dense(self.channels, self, 'linear1')(x))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = _dense(x.shape[-1], self, 'linear2')(y)
    return norm(x + nn.Dropout(self.dropout, deterministic=not train)(y))


class EncoderLayer(nn.Module):
  """x (N, 3, h, w, C): ICSA self-attention with pe on queries and keys, post-norm residuals, FFN."""
  options: STFOptions
  features: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, pos, train: bool):
    o = self.options
    drop = nn.Dropout(o.dropout, deterministic=not train)
    a = ICSA(self.features, o.heads, o.block_size, o.dropout, self.dtype, self.precision, name='self_attn')(
        x, x, pos, pos, train)
    x = _layer_norm(self, 'norm1')(x + drop(a))
    ffn = FeedForward(o.ffn_channels, o.dropout, self.dtype, self.precision, name='ffn')
    return ffn(x, _layer_norm(self, 'norm2'), train)


class DecoderLayer(nn.Module):
  """q (N, 1, h, w, C): ICSA self-attention (pe_dec), ICSA cross-attention on the encoder output (pe_dec on
  queries, pe_enc on keys), FFN; post-norm residuals."""
  options: STFOptions
  features: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, q, memory, pos_q, pos_k, train: bool):
    o = self.options
    drop = nn.Dropout(o.dropout, deterministic=not train)
    icsa = lambda name: ICSA(self.features, o.heads, o.block_size, o.dropout, self.dtype, self.precision, name=name)
    q = _layer_norm(self, 'norm1')(q + drop(icsa('self_attn')(q, q, pos_q, pos_q, train)))
    q = _layer_norm(self, 'norm2')(q + drop(icsa('cross_attn')(q, memory, pos_q, pos_k, train)))
    ffn = FeedForward(o.ffn_channels, o.dropout, self.dtype, self.precision, name='ffn')
    return ffn(q, _layer_norm(self, 'norm3'), train)


def check_feature_size(size: tuple[int, int], block_size: tuple[int, int]) -> None:
  """ConfigError (a ValueError) unless the feature map (h, w) is a whole number of ICSA blocks."""
  h, w = size
  bh, bw = block_size
  if h % bh or w % bw:
    raise ConfigError(
        f'STF needs a feature map whose height and width are multiples of the {bh}x{bw} ICSA blocks '
        f'(model.stf.block_size), got {h}x{w}: at output stride 8 use frames whose size is a multiple of '
        f'{8 * bh}x{8 * bw} (e.g. resize or crop to {8 * bh * max(1, -(-h // bh))}x{8 * bw * max(1, -(-w // bw))})')


class STFTransformer(nn.Module):
  """The STF transformer: window (N, 3, h, w, C) (frames t-1, t, t+1) -> fused map (N, h, w, C) for frame t."""
  options: STFOptions
  features: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, window, train: bool):
    o = self.options
    n, t, h, w, c = window.shape
    if t != 3:
      raise ValueError(f'STF fuses frames t-1, t, t+1: expected a window of 3 frames, got {t}')
    check_feature_size((h, w), o.block_size)
    pe_enc = self.param('pe_enc', _embedding_init, (3,) + o.embedding_size + (c,))
    pe_dec = self.param('pe_dec', _embedding_init, (1,) + o.embedding_size + (c,))
    pe_enc = resize_embedding(pe_enc, (h, w)).astype(window.dtype)
    pe_dec = resize_embedding(pe_dec, (h, w)).astype(window.dtype)
    self.sow('intermediates', 'pe_enc', pe_enc)
    self.sow('intermediates', 'pe_dec', pe_dec)
    encoded = window
    for i in range(o.layers):
      encoded = EncoderLayer(o, c, self.dtype, self.precision, name=f'encoder_layer{i}')(encoded, pe_enc, train)
    self.sow('intermediates', 'encoder_out', encoded)
    query = window[:, 1:2]
    for i in range(o.layers):
      query = DecoderLayer(o, c, self.dtype, self.precision, name=f'decoder_layer{i}')(
          query, encoded, pe_dec, pe_enc, train)
    return query[:, 0]


# ---------------------------------------------------------------------------------------------------------
# MAR.


def load_memory(folder: str, num_classes: int, memory_per_class: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
  """(keys (K_L x classes, C), values (K_L x classes, C)) from `folder`/key.npy (K_L x classes, C) and value.npy
  (classes, C), each prototype repeated K_L times as the authors load it. ValueError naming the file and the
  expected shape, dtype or finiteness otherwise (an empty, truncated, pickled or NaN file included)."""
  rows = num_classes * memory_per_class
  arrays = []
  for name, shape in zip(MEMORY_FILES, ((rows, channels), (num_classes, channels))):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      raise ValueError(f'MAR memory {path} does not exist: generate it with python -m ma_resnet.mar_memory '
                       f'--workdir=<the STF run> --out={folder} (model.stf.memory_init)')
    try:
      array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # EOFError: an empty or truncated file
      detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ValueError(f'MAR memory {path} is not a readable .npy array ({os.path.getsize(path)} bytes: '
                       f'{detail}); generate it again with python -m ma_resnet.mar_memory') from None
    if not isinstance(array, np.ndarray):  # a .npz archive under a .npy name
      raise ValueError(f'MAR memory {path} is a .npz archive, not a .npy array')
    if array.shape != shape or array.dtype.kind != 'f':
      raise ValueError(f'MAR memory {path} holds a {array.dtype} array of shape {array.shape}; the model needs '
                       f'float {shape} ({memory_per_class} rows per class x {num_classes} classes, {channels} '
                       'channels)')
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
      raise ValueError(f'MAR memory {path} holds {bad} NaN/inf values of {array.size}; generate it again with '
                       'python -m ma_resnet.mar_memory')
    arrays.append(array.astype(np.float32))
  keys, prototypes = arrays
  return keys, np.repeat(prototypes, memory_per_class, axis=0)


class MAR(nn.Module):
  """Memory-augmented refinement (the code's `MAR` / `TransformerHELayer`): x (N, h, w, C) -> (N, h, w, C)."""
  options: STFOptions
  features: int
  num_classes: int
  dtype: Any = jnp.float32
  precision: Any = None

  def _memory_init(self, which: int):
    o = self.options

    def init(key, shape, dtype=jnp.float32):
      if o.memory_init:
        try:
          return jnp.asarray(load_memory(o.memory_init, self.num_classes, o.memory_per_class, self.features)[which],
                             dtype)
        except ValueError as e:  # training refuses this up front (train_config.validate); a restored run does not
          logging.warning('%s; the memory starts at random (a checkpoint restored afterwards replaces it)', e)
      return nn.initializers.xavier_uniform()(key, shape, dtype)
    return init

  @nn.compact
  def __call__(self, x, train: bool):
    o = self.options
    n, h, w, c = x.shape
    width = o.mar_channels or c // 2
    rows = o.memory_per_class * self.num_classes
    memory_key = self.param('memory_key', self._memory_init(0), (rows, c))
    memory_value = self.param('memory_value', self._memory_init(1), (rows, c))
    drop = nn.Dropout(o.dropout, deterministic=not train)
    tokens = x.reshape(n, h * w, c)
    q = _Projection(width, self.dtype, self.precision, name='to_q')(tokens)
    k = _Projection(width, self.dtype, self.precision, name='to_k')(memory_key.astype(x.dtype))
    v = _Projection(width, self.dtype, self.precision, name='to_v')(memory_value.astype(x.dtype))
    logits = jnp.einsum('nqc,mc->nqm', q, k, precision=self.precision)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    read = jnp.einsum('nqm,mc->nqc', weights, v, precision=self.precision)
    out = drop(drop(_dense(c, self, 'to_out')(read)))  # the code's to_out dropout, then the residual dropout
    tokens = _layer_norm(self, 'norm1')(tokens + out)
    ffn = FeedForward(width, o.dropout, self.dtype, self.precision, name='ffn')
    return ffn(tokens, _layer_norm(self, 'norm2'), train).reshape(n, h, w, c)


class _Projection(nn.Module):
  """MAR's bias-free chain d -> d -> w -> w (`to_q` / `to_k` / `to_v`): `proj0`, `proj1`, `proj2`."""
  width: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    for i, features in enumerate((x.shape[-1], self.width, self.width)):
      x = _dense(features, self, f'proj{i}', use_bias=False)(x)
    return x


# ---------------------------------------------------------------------------------------------------------
# The temporal module.


class STF(TemporalModule):
  """STF (+ MAR) on `options.stage`, non-causal (one frame of delay). See the module docstring.

  Attributes:
    options: `STFOptions`.
    channels: d, the channels of the map STF reads.
    num_classes: classes of the segmenter (MAR's memory has `memory_per_class` rows per class).
    precision: of every matmul (None | jax.lax.Precision).
  """
  options: STFOptions = STFOptions()
  channels: int = 512
  num_classes: int = 19
  dtype: Any = jnp.float32
  precision: Any = None

  delay: ClassVar[int] = 1
  frame_kinds: ClassVar[tuple[str, str]] = ('sequence edge', 'both neighbours')

  @classmethod
  def from_config(cls, options: Mapping, context: BuildContext) -> 'STF':
    """STF on `stage` (the PSP bottleneck of the 'pspnet' backbone), which the classifier head reads."""
    options = parse_options(STFOptions, options)
    try:
      channels = context.require_map(options.stage, 'stage')
    except ValueError as e:
      raise ValueError(f"{e}: STF reads the PSP bottleneck, model.backbone='pspnet' and stage 'psp'") from None
    context.require_read(options.stage, 'stage', "STF's head is model.head='classifier' with "
                         'head_options.in_stage = model.stf.stage')
    return cls(options, channels=channels, num_classes=context.num_classes, dtype=context.dtype,
               precision=context.precision)

  def check_feature_shapes(self, feature_shapes: FeatureShapes) -> None:
    check_feature_size(feature_shapes[self.options.stage][:2], self.options.block_size)

  def setup(self):
    self.stf = STFTransformer(self.options, self.channels, self.dtype, self.precision)
    self.mar = (MAR(self.options, self.channels, self.num_classes, self.dtype, self.precision)
                if self.options.mar else None)

  def stages_read(self) -> tuple[str, ...]:
    return (self.options.stage,)

  def init_state(self, batch_size: int, feature_shapes: FeatureShapes, dtype: Any = jnp.float32) -> NeighbourWindow:
    h, w, c = feature_shapes[self.options.stage]
    return NeighbourWindow(maps=jnp.zeros((batch_size, 2, h, w, c), dtype), seen=jnp.zeros((batch_size,), jnp.int32))

  def encode(self, maps: dict, train: bool) -> dict:
    del train
    return {'maps': maps[self.options.stage]} if self.options.stage in maps else {}

  def scan_body(self, state: NeighbourWindow, encodings_t: dict, reset_t: jax.Array):
    """One frame fed: (state, {'window': (B, 3, h, w, C)} of the frame fed before, enhanced (B,), ready (B,))."""
    fed = encodings_t['maps'].astype(state.maps.dtype)  # (B, h, w, C)
    older, current = state.maps[:, 0], state.maps[:, 1]
    ready = state.seen >= 1
    has_prev = state.seen >= 2
    has_next = ~reset_t
    expand = lambda flags: flags[:, None, None, None]
    if self.options.edge == 'repeat':
      prev = jnp.where(expand(has_prev), older, current)
      nxt = jnp.where(expand(has_next), fed, current)
    else:  # mirror
      prev = jnp.where(expand(has_prev), older, jnp.where(expand(has_next), fed, current))
      nxt = jnp.where(expand(has_next), fed, prev)
    window = jnp.stack([prev, current, nxt], axis=1)
    window = jnp.where(expand(ready)[..., None], window, fed[:, None])  # nothing to emit: a harmless window
    state = NeighbourWindow(maps=jnp.stack([current, fed], axis=1),
                            seen=jnp.where(reset_t, 1, jnp.minimum(state.seen + 1, 2)).astype(jnp.int32))
    return state, {'window': window}, ready & has_prev & has_next, ready

  def refine(self, window: jax.Array, train: bool = False) -> dict:
    """window (N, 3, h, w, C) (frames t-1, t, t+1) -> {'stf': (N, h, w, C)} and, with MAR, 'mar'."""
    o = self.options
    fused = self.stf(window, train and not o.freeze_stf)
    if o.freeze_stf:
      fused = jax.lax.stop_gradient(fused)
    self.sow('intermediates', 'stf_out', fused)
    out = {'stf': fused}
    if self.mar is not None:
      out['mar'] = self.mar(fused, train)
      self.sow('intermediates', 'mar_out', out['mar'])
    return out

  def fuse(self, maps: dict, reads: dict, enhanced: jax.Array, train: bool) -> dict:
    del enhanced
    if 'window' not in reads:
      return maps
    window = reads['window']  # (B, T, 3, h, w, C)
    b, t = window.shape[:2]
    out = self.refine(window.reshape((b * t,) + window.shape[2:]), train)
    fused = out['mar'] if 'mar' in out else out['stf']
    return {**maps, self.options.stage: fused.reshape((b, t) + fused.shape[1:])}
