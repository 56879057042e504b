"""SFNet head (Li et al. 2020, "Semantic Flow for Fast and Accurate Scene Parsing") in PaddleSeg's form.

PaddleSeg's `SFNetHead` is the one the MA-ResNet50 authors ship (their `models/sfnet.py` is PaddleSeg's file);
it ports the SFNet authors' `UperNetAlignHead` (lxtGH/SFSegNets) except for the pyramid pooling module.

Input: the four stage maps C1..C4 (`stages`), (N, h_i, w_i, C_i). fpn_dim d = 128 for basic-block ResNets
(stage4 has 512 channels; PaddleSeg / SFNet ResNet18 config) and 256 otherwise (ResNet50/101 config).
- PPM on C4 (PaddleSeg `PPModule`, dim_reduction): bins 1/2/3/6 -> adaptive average pool, 1x1 conv-BN-ReLU
  to C4 / 4 (with bias), bilinear resize back with align_corners=True; concat [C4, bin6, bin3, bin2, bin1]
  -> 3x3 conv-BN-ReLU (with bias) to d. This is P4, the top of the pyramid.
- Top-down, for i = 3, 2, 1: lateral L_i = 1x1 conv (with bias)-BN-ReLU of C_i to d (`fpn_in`);
  f = L_i + FAM(L_i, f); P_i = 3x3 conv-BN-ReLU (no bias) of f (`fpn_out`).
- FAM (flow alignment module, SFNet's `AlignedModule`) on the fine map L (h, w) and the coarse map f:
  1x1 convs (no bias) of both to d / 2, the coarse one bilinearly resized to (h, w) (align_corners=True),
  concat [coarse, fine] -> 3x3 conv (no bias) to a 2-channel flow (x, y) -> `flow_warp(f, flow)`: the coarse
  map f itself (not its 1x1 projection) sampled on the grid base + flow / (w, h) by bilinear `grid_sample`
  (align_corners=True, zero padding).
- P2..P4 bilinearly resized (align_corners=True) to P1's size, concat [P1, P2, P3, P4] (4d) -> 3x3 conv-BN-ReLU
  (no bias) to d (`fuse`) -> 1x1 conv with bias to the classes. No dropout (as PaddleSeg / SFSegNets).

Output: logits (N, h_1, w_1, classes) at stage-1 resolution.
Parameter tree: `ppm/{bin0..3,bottleneck}/{conv,bn}`, `fpn_in{0,1,2}/{conv,bn}`, `fam{0,1,2}/{down_l,down_h,
flow_make}`, `fpn_out{0,1,2}/{conv,bn}`, `fuse/{conv,bn}`, `classifier` (index i = stage i+1).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ma_resnet.models.heads.pspnet import PyramidPooling
from ma_resnet.models.layers import ConvBN, conv
from ma_resnet.models.ops import resize_bilinear

# PaddlePaddle's default Conv2D initialiser (normal, std sqrt(2 / fan_in)), also SFSegNets' `initialize_weights`.
# Used for the convs with few outputs (flow, classifier), which PaddleSeg leaves at the default: the package's
# fan-out scaling would give the 2-channel flow conv a std of 0.33, i.e. large random initial flows.
_paddle_default_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def grid_sample_bilinear(x, grid, align_corners: bool = True, precision=None):
  """`F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros')` in NHWC.

  Args:
    x: (N, H, W, C) the map to sample.
    grid: (N, h, w, 2) sampling positions, normalised: [..., 0] is x (width), [..., 1] is y (height), -1 and
      1 are the centres of the corner pixels with `align_corners`, their outer edges without.
    align_corners: as PyTorch's / Paddle's argument.
    precision: of the final weighted sum (a matmul over the four neighbours).
  Returns:
    (N, h, w, C): each output the bilinear mix of its four neighbours; neighbours outside the map count as 0.
  """
  n, in_h, in_w, c = x.shape
  out_h, out_w = grid.shape[1:3]
  gx = grid[..., 0].astype(jnp.float32)
  gy = grid[..., 1].astype(jnp.float32)
  if align_corners:
    ix, iy = (gx + 1.0) * 0.5 * (in_w - 1), (gy + 1.0) * 0.5 * (in_h - 1)
  else:
    ix, iy = ((gx + 1.0) * in_w - 1.0) * 0.5, ((gy + 1.0) * in_h - 1.0) * 0.5
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  wx1, wy1 = ix - x0, iy - y0
  wx0, wy0 = 1.0 - wx1, 1.0 - wy1
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)

  # The four neighbours stacked on one axis: one gather instead of four.
  cols = jnp.stack([x0, x0 + 1, x0, x0 + 1], axis=-1)           # (N, h, w, 4)
  rows = jnp.stack([y0, y0, y0 + 1, y0 + 1], axis=-1)
  weights = jnp.stack([wx0 * wy0, wx1 * wy0, wx0 * wy1, wx1 * wy1], axis=-1)
  inside = (cols >= 0) & (cols < in_w) & (rows >= 0) & (rows < in_h)
  weights = jnp.where(inside, weights, 0.0).astype(x.dtype)
  index = jnp.clip(rows, 0, in_h - 1) * in_w + jnp.clip(cols, 0, in_w - 1)
  gathered = jax.vmap(lambda flat, i: flat[i])(x.reshape(n, in_h * in_w, c), index.reshape(n, -1))
  gathered = gathered.reshape(n, out_h, out_w, 4, c)
  return jnp.einsum('nhwkc,nhwk->nhwc', gathered, weights, precision=precision)


def flow_warp(x, flow, size: tuple[int, int], precision=None):
  """SFNet's `flow_warp`: samples x (N, H, W, C) at an (h, w) = `size` grid moved by `flow` (N, h, w, 2).

  grid = base + flow / (w, h), base spanning [-1, 1] on both axes (linspace), then bilinear grid sampling
  with align_corners=True and zero padding. flow[..., 0] moves along the width, flow[..., 1] the height.
  """
  out_h, out_w = size
  base_x = jnp.asarray(np.linspace(-1.0, 1.0, out_w), jnp.float32)
  base_y = jnp.asarray(np.linspace(-1.0, 1.0, out_h), jnp.float32)
  base = jnp.stack(jnp.broadcast_arrays(base_x[None, :], base_y[:, None]), axis=-1)  # (h, w, 2) as (x, y)
  grid = base[None] + flow.astype(jnp.float32) / jnp.asarray([out_w, out_h], jnp.float32)
  return grid_sample_bilinear(x, grid, align_corners=True, precision=precision)


class FlowAlignment(nn.Module):
  """FAM: aligns the coarse map to the fine map's grid with a learned semantic flow. See the module docstring.

  `features` is the width of the two 1x1 projections (fpn_dim / 2). Returns the warped coarse map, with the
  coarse map's channels at the fine map's size.
  """
  features: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, fine, coarse):
    size = fine.shape[1:3]
    fine_proj = conv(self.features, 1, dtype=self.dtype, precision=self.precision, name='down_l')(fine)
    coarse_proj = conv(self.features, 1, dtype=self.dtype, precision=self.precision, name='down_h')(coarse)
    coarse_proj = resize_bilinear(coarse_proj, size, align_corners=True)
    flow = nn.Conv(2, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, kernel_init=_paddle_default_init,
                   dtype=self.dtype, param_dtype=jnp.float32, precision=self.precision, name='flow_make')(
                       jnp.concatenate([coarse_proj, fine_proj], axis=-1))
    return flow_warp(coarse, flow, size, self.precision).astype(coarse.dtype)


class SFNetHead(nn.Module):
  """PaddleSeg SFNetHead over `stages` (finest first). See the module docstring.

  Attributes:
    num_classes: number of classes.
    fpn_dim: width of the pyramid; None = 128 when the top stage has <= 512 channels (ResNet18/34), else 256.
    stages: the stage maps, finest first; the last one feeds the PPM.
    bins: bin sizes of the PPM.
  """
  num_classes: int
  fpn_dim: int | None = None
  stages: Sequence[str] = ('stage1', 'stage2', 'stage3', 'stage4')
  bins: Sequence[int] = (1, 2, 3, 6)
  dtype: Any = jnp.float32
  precision: Any = None

  def stages_read(self) -> tuple[str, ...]:
    """The maps this head reads."""
    return tuple(self.stages)

  @nn.compact
  def __call__(self, features: dict, train: bool = False):
    unit = lambda *a, **k: ConvBN(*a, dtype=self.dtype, precision=self.precision, **k)
    maps = [features[s] for s in self.stages]
    top = maps[-1]
    dim = self.fpn_dim or (128 if top.shape[-1] <= 512 else 256)
    f = PyramidPooling(tuple(self.bins), bin_features=top.shape[-1] // len(self.bins), features=dim,
                       use_bias=True, align_corners=True, reverse_bins=True, dtype=self.dtype,
                       precision=self.precision, name='ppm')(top, train)
    pyramid = [f]
    for i in reversed(range(len(maps) - 1)):
      lateral = unit(dim, 1, use_bias=True, name=f'fpn_in{i}')(maps[i], train)
      f = lateral + FlowAlignment(dim // 2, dtype=self.dtype, precision=self.precision, name=f'fam{i}')(lateral, f)
      pyramid.append(unit(dim, 3, name=f'fpn_out{i}')(f, train))
    pyramid.reverse()  # finest first; the PPM output last
    size = pyramid[0].shape[1:3]
    fused = jnp.concatenate([pyramid[0]] + [resize_bilinear(p, size, align_corners=True) for p in pyramid[1:]],
                            axis=-1)
    x = unit(dim, 3, name='fuse')(fused, train)
    return nn.Conv(self.num_classes, (1, 1), use_bias=True, kernel_init=_paddle_default_init, dtype=self.dtype,
                   param_dtype=jnp.float32, precision=self.precision, name='classifier')(x)
