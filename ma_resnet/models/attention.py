"""Attention of current positions over a memory of T stored frames, with or without the score matrix.

The temporal systems read their memory the same way: every current position n (a *query*, N = h*w of them)
takes a softmax over all M = T*P stored positions (P = h'*w' per slot) of its dot product with their keys,
and mixes their values:

    out[b, n] = sum_m softmax_m(scale * query[b, n] . keys[b, m]) values[b, m]

PCMA (`temporal/pcma.py`: keys pre-normalised by the softmax over channels x10, scale 1, empty slots masked)
and TMANet (`temporal/tma.py`: no normalisation, no mask) are both this. At a 720x960 frame PCMA's stage 1
has N = M = 90*120 = 10 800, so the score matrix alone is 117 M entries per frame. Implementations
(`PCMAOptions.attention` / `TMAOptions.attention`, model config `pcma.attention` / `tma.attention`):

  'dense'    the scores (B, N, M) in memory, softmax, read-out: the formulation of the authors' code.
  'chunked'  online softmax (the flash-attention recurrence) over chunks of `chunk_size` memory positions in
             plain JAX, with the query axis whole: the largest intermediate is (B, N, chunk_size); running
             max, normaliser and read-out accumulate in float32. Its gradient (`jax.custom_vjp`) recomputes
             each chunk's probabilities from the saved running max and normaliser instead of storing them,
             so training does not hold the score matrix either. Float32 results equal 'dense' up to rounding
             (its sums run in another order: ~1e-6 relative on PCMA's sharp softmax, whose float32 error
             against float64 is itself ~1e-5; 5e-8 relative on the logits of MA-ResNet50 at 240x320).
  'fused'    `jax.nn.dot_product_attention`: cuDNN's fused flash attention on GPUs for bfloat16/float16
             inputs, XLA's implementation elsewhere (which does build the scores). The code's key
             normalisation is applied to the inputs first (scale 1); empty slots are moved behind the full
             ones and cut off by `key_value_seq_lengths` (cuDNN's padding mask); the channels are padded /
             split into heads as cuDNN needs (value and key heads of one width, <= 128, a multiple of 8).
  'auto'     (default) 'fused' on a GPU backend for bfloat16/float16 when cuDNN accepts the shapes, else
             'chunked' when the memory has more than `chunk_size` positions, else 'dense'.

Empty slots (`slot_valid` False) get the logit -1e30 in 'dense' and 'chunked': a query whose memory is all
empty then reads the plain mean of the stored values (a finite read-out the callers discard); 'fused'
returns the same mean for it.

`precision` (None | jax.lax.Precision) goes to every matmul of 'dense' and 'chunked' ('fused' takes none:
cuDNN runs bf16/fp16, XLA's path follows `jax.default_matmul_precision`).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ('auto', 'dense', 'chunked', 'fused')
DEFAULT_CHUNK = 1024
MASKED = -1e30  # attention logit of an empty memory slot
_HALF = (jnp.bfloat16, jnp.float16)
_CUDNN_MAX_HEAD = 128  # head width limit of cuDNN flash attention before Hopper (Hopper: 256)


def check_implementation(implementation: str, chunk_size: int, owner: str) -> None:
  """Raises ValueError naming `owner` (e.g. 'PCMAOptions') for an unknown implementation or chunk size."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'{owner}.attention must be one of {IMPLEMENTATIONS}, got {implementation!r}')
  if int(chunk_size) < 1:
    raise ValueError(f'{owner}.attention_chunk must be >= 1, got {chunk_size}')


# ---------------------------------------------------------------------------------------------------
# Entry point.


def memory_attention(query: jax.Array, keys: jax.Array, values: jax.Array, slot_valid: jax.Array | None = None,
                     *, scale: float = 1.0, implementation: str = 'auto', chunk_size: int = DEFAULT_CHUNK,
                     precision: Any = None) -> jax.Array:
  """Reads a memory of T slots.

  Args:
    query: (B, N, Ck) current positions.
    keys: (B, T, P, Ck) stored keys, T slots of P positions each; values: (B, T, P, Cv).
    slot_valid: (B, T) bool, False = empty slot (masked); None = every slot holds a frame.
    scale: multiplies the logits.
    implementation: see the module docstring.
    chunk_size: memory positions per chunk of 'chunked' (and the 'auto' threshold).
    precision: of the matmuls of 'dense' and 'chunked'.
  Returns:
    (B, N, Cv) in the values' dtype (which also decides 'auto': 'fused' needs bfloat16 / float16 values).
  """
  b, n, ck = query.shape
  if keys.ndim != 4 or values.ndim != 4 or keys.shape[:3] != values.shape[:3] or keys.shape[0] != b \
      or keys.shape[-1] != ck:
    raise ValueError(f'memory_attention: query (B, N, Ck) {query.shape}, keys (B, T, P, Ck) {keys.shape} and '
                     f'values (B, T, P, Cv) {values.shape} do not match')
  if slot_valid is not None and slot_valid.shape != keys.shape[:2]:
    raise ValueError(f'memory_attention: slot_valid must be (B, T) = {keys.shape[:2]}, got {slot_valid.shape}')
  check_implementation(implementation, chunk_size, 'memory_attention')
  t, p = keys.shape[1:3]
  chosen = resolve_implementation(implementation, values.dtype, ck, values.shape[-1], t * p, chunk_size)
  if chosen == 'fused':
    try:
      return fused_attention(query, keys, values, slot_valid, scale=scale)
    except (NotImplementedError, ValueError, RuntimeError) as e:
      if implementation == 'fused':
        raise ValueError(f"attention='fused': jax.nn.dot_product_attention refused these inputs (query "
                         f'{query.shape} {query.dtype}, keys {keys.shape}, values {values.shape}): {e}. Use '
                         "attention='chunked'.") from e
      chosen = 'chunked' if t * p > chunk_size else 'dense'
  flat_keys = keys.reshape(b, t * p, ck)
  flat_values = values.reshape(b, t * p, values.shape[-1])
  position_valid = None if slot_valid is None else jnp.repeat(slot_valid, p, axis=1)
  if chosen == 'dense':
    return dense_attention(query, flat_keys, flat_values, position_valid, scale=scale, precision=precision)
  return chunked_attention(query, flat_keys, flat_values, position_valid, scale=scale, chunk_size=chunk_size,
                           precision=precision)


def resolve_implementation(implementation: str, dtype, key_channels: int, value_channels: int, positions: int,
                           chunk_size: int = DEFAULT_CHUNK) -> str:
  """What `implementation` means for these inputs: 'dense' | 'chunked' | 'fused'.

  'auto': 'fused' where `fused_available`, else 'chunked' for more than `chunk_size` memory positions, else
  'dense' (one chunk: nothing to save). Decided at trace time, on `jax.default_backend()`.
  """
  if implementation != 'auto':
    return implementation
  if fused_available(dtype, key_channels, value_channels):
    return 'fused'
  return 'chunked' if positions > chunk_size else 'dense'


def fused_available(dtype, key_channels: int, value_channels: int) -> bool:
  """Whether cuDNN flash attention can serve: a CUDA GPU backend, bfloat16/float16 inputs, head widths it
  takes (<= 256 after padding)."""
  if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _HALF]:
    return False
  try:
    if jax.default_backend() != 'gpu' or 'cuda' not in jax.devices()[0].client.platform_version.lower():
      return False
  except Exception:  # no backend information: stay on the portable path
    return False
  return _fused_heads(key_channels, value_channels)[1] <= 256


# ---------------------------------------------------------------------------------------------------
# 'dense': the score matrix in memory.


def dense_attention(query, keys, values, position_valid=None, *, scale: float = 1.0, precision=None):
  """query (B, N, Ck), keys (B, M, Ck), values (B, M, Cv), position_valid (B, M) | None -> (B, N, Cv).

  Scores and softmax in float32 (for bfloat16 inputs the probabilities are cast back for the read-out).
  """
  logits = jnp.einsum('bnc,bmc->bnm', query, keys, precision=precision,
                      preferred_element_type=jnp.float32) * scale
  if position_valid is not None:
    logits = jnp.where(position_valid[:, None, :], logits, MASKED)
  attention = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
  return jnp.einsum('bnm,bmc->bnc', attention, values, precision=precision)


# ---------------------------------------------------------------------------------------------------
# 'chunked': online softmax over memory chunks, gradient by recomputation.


def chunked_attention(query, keys, values, position_valid=None, *, scale: float = 1.0,
                      chunk_size: int = DEFAULT_CHUNK, precision=None):
  """`dense_attention` without the (B, N, M) scores: online softmax over chunks of `chunk_size` positions.

  query (B, N, Ck), keys (B, M, Ck), values (B, M, Cv), position_valid (B, M) bool | None -> (B, N, Cv) in
  the values' dtype. Differentiable in query, keys and values (`jax.custom_vjp`, flash-attention backward).
  """
  if position_valid is None:
    position_valid = jnp.ones(keys.shape[:2], bool)
  return _chunked(query, keys, values, position_valid, float(scale), int(chunk_size), precision)


def _chunks(m: int, chunk: int) -> tuple[int, int, int]:
  """(chunk width, number of full chunks, remainder) for m positions: equal chunks of at most `chunk` when some
  count up to twice the fewest needed divides m (10 800 positions by 1024: 12 chunks of 900), so that every
  chunk is one shape (one kernel to compile and tune); else chunks of `chunk` and a remainder."""
  if chunk >= m:
    return m, 1, 0
  fewest = -(-m // chunk)
  for count in range(fewest, 2 * fewest + 1):
    if m % count == 0:
      return m // count, count, 0
  return chunk, m // chunk, m % chunk


def _scores(q, k, valid, scale, precision):
  """Masked float32 logits (B, N, C) of one chunk."""
  s = jnp.einsum('bnc,bmc->bnm', q, k, precision=precision, preferred_element_type=jnp.float32) * scale
  return jnp.where(valid[:, None, :], s, MASKED)


def _forward(q, k, v, valid, scale, chunk, precision):
  """(out (B, N, Cv) float32, running max (B, N), normaliser (B, N)): softmax = exp(s - max) / normaliser."""
  b, n, _ = q.shape
  m_total, cv = v.shape[1], v.shape[2]
  width, full, rest = _chunks(m_total, chunk)

  def update(carry, kc, vc, validc):
    running_max, normaliser, acc = carry
    s = _scores(q, kc, validc, scale, precision)
    new_max = jnp.maximum(running_max, jnp.max(s, axis=-1))
    p = jnp.exp(s - new_max[..., None])
    correction = jnp.exp(running_max - new_max)
    normaliser = normaliser * correction + jnp.sum(p, axis=-1)
    read = jnp.einsum('bnm,bmc->bnc', p.astype(vc.dtype), vc, precision=precision,
                      preferred_element_type=jnp.float32)
    return new_max, normaliser, acc * correction[..., None] + read

  def body(carry, start):
    sl = lambda a: jax.lax.dynamic_slice_in_dim(a, start, width, axis=1)
    return update(carry, sl(k), sl(v), sl(valid)), None

  carry = (jnp.full((b, n), -jnp.inf, jnp.float32), jnp.zeros((b, n), jnp.float32),
           jnp.zeros((b, n, cv), jnp.float32))
  carry, _ = jax.lax.scan(body, carry, jnp.arange(full) * width)
  if rest:
    start = full * width
    carry = update(carry, k[:, start:], v[:, start:], valid[:, start:])
  running_max, normaliser, acc = carry
  return acc / normaliser[..., None], running_max, normaliser


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _chunked(q, k, v, valid, scale, chunk, precision):
  return _forward(q, k, v, valid, scale, chunk, precision)[0].astype(v.dtype)


def _chunked_fwd(q, k, v, valid, scale, chunk, precision):
  out, running_max, normaliser = _forward(q, k, v, valid, scale, chunk, precision)
  out = out.astype(v.dtype)
  return out, (q, k, v, valid, out, running_max, 1.0 / normaliser)


def _chunked_bwd(scale, chunk, precision, residuals, d_out):
  # (max, 1 / normaliser) rather than the log-sum-exp: with every logit at -1e30 (all slots empty) the
  # log-sum-exp -1e30 + log(M) rounds to -1e30 and would lose the 1 / M of the uniform softmax.
  q, k, v, valid, out, running_max, inverse = residuals
  m_total = k.shape[1]
  width, full, rest = _chunks(m_total, chunk)
  d_out = d_out.astype(jnp.float32)
  delta = jnp.sum(d_out * out.astype(jnp.float32), axis=-1)  # (B, N)
  mm = functools.partial(jnp.einsum, precision=precision, preferred_element_type=jnp.float32)

  def grads(kc, vc, validc):
    p = jnp.exp(_scores(q, kc, validc, scale, precision) - running_max[..., None]) * inverse[..., None]
    d_v = mm('bnm,bnc->bmc', p, d_out)
    d_s = p * (mm('bnc,bmc->bnm', d_out, vc.astype(jnp.float32)) - delta[..., None]) * scale
    d_s = jnp.where(validc[:, None, :], d_s, 0.0)
    d_q = mm('bnm,bmc->bnc', d_s, kc.astype(jnp.float32))
    d_k = mm('bnm,bnc->bmc', d_s, q.astype(jnp.float32))
    return d_q, d_k, d_v

  def body(d_q, start):
    sl = lambda a: jax.lax.dynamic_slice_in_dim(a, start, width, axis=1)
    dq_c, dk_c, dv_c = grads(sl(k), sl(v), sl(valid))
    return d_q + dq_c, (dk_c, dv_c)

  d_q, (d_k, d_v) = jax.lax.scan(body, jnp.zeros(q.shape, jnp.float32), jnp.arange(full) * width)
  unchunk = lambda a: jnp.moveaxis(a, 0, 1).reshape((a.shape[1], full * width) + a.shape[3:])
  d_k, d_v = unchunk(d_k), unchunk(d_v)
  if rest:
    start = full * width
    dq_c, dk_c, dv_c = grads(k[:, start:], v[:, start:], valid[:, start:])
    d_q, d_k, d_v = d_q + dq_c, jnp.concatenate([d_k, dk_c], 1), jnp.concatenate([d_v, dv_c], 1)
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


# ---------------------------------------------------------------------------------------------------
# 'fused': jax.nn.dot_product_attention (cuDNN flash attention on GPUs in bf16/fp16).


def _round8(x: int) -> int:
  return -(-x // 8) * 8


def _fused_heads(key_channels: int, value_channels: int) -> tuple[int, int]:
  """(heads, head width) for cuDNN: the values split into heads of <= 128 channels, every head width a
  multiple of 8 and at least the key width (queries and keys are zero-padded to it and repeated per head:
  zero channels add nothing to a dot product)."""
  heads = -(-value_channels // _CUDNN_MAX_HEAD)
  width = max(_round8(-(-value_channels // heads)), _round8(key_channels))
  return heads, width


def fused_attention(query, keys, values, slot_valid=None, *, scale: float = 1.0):
  """`memory_attention` through `jax.nn.dot_product_attention`.

  query (B, N, Ck), keys (B, T, P, Ck), values (B, T, P, Cv), slot_valid (B, T) | None -> (B, N, Cv).
  implementation='cudnn' on a CUDA backend for bfloat16/float16 inputs, 'xla' otherwise. Empty slots are
  sorted behind the full ones (attention does not depend on the order of memory positions) and excluded by
  `key_value_seq_lengths`; a query with no full slot reads the mean of the values, as 'dense' does.
  """
  b, n, ck = query.shape
  t, p, cv = values.shape[1:]
  dtype = values.dtype
  query, keys = query.astype(dtype), keys.astype(dtype)
  lengths = None
  if slot_valid is not None:
    order = jnp.argsort(~slot_valid, axis=1, stable=True)  # full slots first, in their order
    keys = jnp.take_along_axis(keys, order[:, :, None, None], axis=1)
    values_sorted = jnp.take_along_axis(values, order[:, :, None, None], axis=1)
    count = jnp.sum(slot_valid, axis=1, dtype=jnp.int32)
    lengths = jnp.where(count > 0, count * p, t * p).astype(jnp.int32)  # all empty: any finite read-out
  else:
    values_sorted = values
  heads, width = _fused_heads(ck, cv)
  m = t * p
  pad = lambda a, c: jnp.pad(a, ((0, 0), (0, 0), (0, c - a.shape[-1])))
  q = jnp.broadcast_to(pad(query, width)[:, :, None], (b, n, heads, width))
  k = jnp.broadcast_to(pad(keys.reshape(b, m, ck), width)[:, :, None], (b, m, heads, width))
  v = pad(values_sorted.reshape(b, m, cv), heads * width).reshape(b, m, heads, width)
  use_cudnn = fused_available(dtype, ck, cv)
  out = jax.nn.dot_product_attention(q, k, v, scale=scale, key_value_seq_lengths=lengths,
                                     implementation='cudnn' if use_cudnn else 'xla')
  out = out.reshape(b, n, heads * width)[..., :cv]
  if slot_valid is not None:
    mean = jnp.mean(values.reshape(b, m, cv).astype(jnp.float32), axis=1, keepdims=True).astype(dtype)
    out = jnp.where(jnp.any(slot_valid, axis=1)[:, None, None], out, mean)
  return out.astype(dtype)


def score_matrix_bytes(batch: int, queries: int, positions: int, dtype=jnp.float32) -> int:
  """Bytes of the (B, N, M) score matrix that 'dense' materialises (for reports)."""
  return int(batch) * int(queries) * int(positions) * np.dtype(dtype).itemsize
