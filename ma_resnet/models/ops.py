"""Resizing and pooling with the exact semantics of PyTorch / PaddlePaddle (NHWC).

`jax.image.resize` differs from `torch.nn.functional.interpolate` where it matters here: its 'nearest'
samples at half-pixel centres and its linear methods antialias when shrinking. These functions reproduce
the framework semantics the reference code uses, so numbers match the authors' code.
"""
from __future__ import annotations

import numpy as np
import jax.numpy as jnp


def _linear_taps(in_size: int, out_size: int, align_corners: bool):
  """Source indices and weights of 1-D linear interpolation (PyTorch's rule, no antialiasing)."""
  i = np.arange(out_size, dtype=np.float64)
  if align_corners:
    src = i * ((in_size - 1) / (out_size - 1)) if out_size > 1 else np.zeros_like(i)
  else:
    src = np.maximum((i + 0.5) * (in_size / out_size) - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = (src - i0).astype(np.float32)
  return i0, i1, 1.0 - w1, w1


def _resize_axis_linear(x, axis: int, out_size: int, align_corners: bool):
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  i0, i1, w0, w1 = _linear_taps(in_size, out_size, align_corners)
  shape = [1] * x.ndim
  shape[axis] = out_size
  w0 = jnp.asarray(w0, x.dtype).reshape(shape)
  w1 = jnp.asarray(w1, x.dtype).reshape(shape)
  return jnp.take(x, i0, axis=axis) * w0 + jnp.take(x, i1, axis=axis) * w1


def resize_bilinear(x, size: tuple[int, int], align_corners: bool = False):
  """Bilinear resize of `x` (..., H, W, C) to `size` = (h, w), as `interpolate(mode='bilinear')`.

  Half-pixel centres when `align_corners` is False (the default of both frameworks); no antialiasing,
  also when shrinking.
  """
  h, w = size
  x = _resize_axis_linear(x, x.ndim - 3, h, align_corners)
  return _resize_axis_linear(x, x.ndim - 2, w, align_corners)


def resize_nearest(x, size: tuple[int, int]):
  """Nearest-neighbour resize of `x` (..., H, W, C): source index floor(i * in / out).

  This is PyTorch's / Paddle's 'nearest' (on an exact 2x halving it keeps rows 0, 2, 4, ...).
  """
  h, w = size
  in_h, in_w = x.shape[-3], x.shape[-2]
  rows = np.floor(np.arange(h) * (in_h / h)).astype(np.int32)
  cols = np.floor(np.arange(w) * (in_w / w)).astype(np.int32)
  x = jnp.take(x, np.minimum(rows, in_h - 1), axis=x.ndim - 3)
  return jnp.take(x, np.minimum(cols, in_w - 1), axis=x.ndim - 2)


def avg_pool_2x2_ceil(x):
  """2x2 average pool, stride 2, `ceil_mode=True`, padding excluded from the average (NHWC).

  This is the pool of the ResNet-vd projection shortcut (Paddle `AvgPool2D(2, 2, ceil_mode=True)`).
  """
  n, h, w, c = x.shape
  ph, pw = h % 2, w % 2
  if ph or pw:
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    ones = jnp.pad(jnp.ones((1, h, w, 1), x.dtype), ((0, 0), (0, ph), (0, pw), (0, 0)))
    count = ones.reshape(1, (h + ph) // 2, 2, (w + pw) // 2, 2, 1).sum(axis=(2, 4))
  else:
    count = 4.0
  total = x.reshape(n, (h + ph) // 2, 2, (w + pw) // 2, 2, c).sum(axis=(2, 4))
  return total / count
