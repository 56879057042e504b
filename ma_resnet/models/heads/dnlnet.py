"""DNLNet head (Yin et al. 2020, "Disentangled Non-Local Neural Networks") in mmsegmentation's `DNLHead` form.

On x = `features['stage4']` (N, h, w, C_in), with c = `channels` (512 on ResNet50) and P = h * w positions:
- `conv0`: 3x3 conv-BN-ReLU C_in -> c;
- `dnl`: the disentangled non-local block (`DisentangledNonLocal`) on that map, c -> c, residual;
- `conv1`: 3x3 conv-BN-ReLU c -> c;
- with `concat_input` (mmseg FCNHead default, True): concat [x, y] -> 3x3 conv-BN-ReLU to c (`conv_cat`);
- `Classifier`: Dropout2d 0.1, 1x1 conv with bias to the classes.
This is mmseg's DNLHead = FCNHead(num_convs=2, concat_input=True) with the DNL block between its two convs.

The DNL block on y (N, h, w, c), inter = c / `reduction` (256):
  value g, query theta, key phi: 1x1 convs with bias (normal(0, 0.01) init, as mmcv's NonLocal2d)
  whitened pairwise term: softmax over keys of (q - mean_P q)(k - mean_P k)^T / sqrt(inter) / temperature
                          (means over positions; `use_scale` gives the 1/sqrt(inter); temperature 0.05)
  unary term:             softmax over positions of `conv_mask` (1x1 conv c -> 1, with bias) on y
  out = y + BN(conv_out(pairwise @ g + unary @ g))      conv_out: 1x1, no bias, inter -> c; BN scale
                                                        initialised to 0 (mmcv `zeros_init`): identity at init
Choice where the two public codes differ: mmseg applies `conv_out` (conv + BN) separately to the pairwise and
unary terms and adds them (the BN bias then counts twice, and in training the BN of the 1x1 unary map sees
only one value per sample); PaddleSeg and the paper's equation apply it once to the sum. Here: once to the
sum (same parameters as mmseg). PaddleSeg's conv_out also has a ReLU; mmseg's and this one have none.

Output: logits (N, h, w, classes) at stage-4 resolution.
Parameter tree: `conv0`, `conv1`, `conv_cat` (each `{conv,bn}`), `dnl/{g,theta,phi,conv_mask,conv_out,conv_out_bn}`,
`classifier/conv`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ma_resnet.models.heads.fcn import Classifier, ReadsOneMap, default_channels
from ma_resnet.models.layers import ConvBN, batch_norm, conv


class DisentangledNonLocal(nn.Module):
  """Disentangled non-local block (mmseg `DisentangledNonLocal2d`, embedded-Gaussian mode). (N, h, w, c) -> same."""
  reduction: int = 2
  temperature: float = 0.05
  use_scale: bool = True
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    n, h, w, c = x.shape
    inter = c // self.reduction
    projection = lambda name: nn.Conv(inter, (1, 1), use_bias=True, kernel_init=nn.initializers.normal(0.01),
                                      dtype=self.dtype, param_dtype=jnp.float32, precision=self.precision,
                                      name=name)
    value = projection('g')(x).reshape(n, h * w, inter)
    query = projection('theta')(x).reshape(n, h * w, inter)
    key = projection('phi')(x).reshape(n, h * w, inter)
    # Whitening: subtract the mean over positions.
    query = query - jnp.mean(query, axis=1, keepdims=True)
    key = key - jnp.mean(key, axis=1, keepdims=True)

    logits = jnp.einsum('bqc,bkc->bqk', query, key, precision=self.precision).astype(jnp.float32)
    if self.use_scale:
      logits = logits / jnp.sqrt(jnp.float32(inter))
    pairwise = jax.nn.softmax(logits / self.temperature, axis=-1).astype(self.dtype)  # (N, P, P), over keys
    y = jnp.einsum('bqk,bkc->bqc', pairwise, value, precision=self.precision)

    mask = nn.Conv(1, (1, 1), use_bias=True, dtype=self.dtype, param_dtype=jnp.float32, precision=self.precision,
                   name='conv_mask')(x)
    unary = jax.nn.softmax(mask.reshape(n, h * w).astype(jnp.float32), axis=-1).astype(self.dtype)  # over P
    y = y + jnp.einsum('bk,bkc->bc', unary, value, precision=self.precision)[:, None, :]

    y = conv(c, 1, dtype=self.dtype, precision=self.precision, name='conv_out')(y.reshape(n, h, w, inter))
    y = batch_norm(train, dtype=self.dtype, scale_init=nn.initializers.zeros, name='conv_out_bn')(y)
    return x + y


class DNLHead(ReadsOneMap, nn.Module):
  """mmseg DNLHead on `features[in_stage]`. See the module docstring.

  Attributes:
    num_classes: number of classes.
    channels: width of the head; None = input channels / 4 (512 on ResNet50).
    reduction: channel reduction of the DNL block's query / key / value (inter = channels / reduction).
    temperature: of the pairwise softmax.
    use_scale: divide the pairwise logits by sqrt(inter).
    concat_input: concatenate the input with the block's output, then a 3x3 conv-BN-ReLU.
    dropout: channel-dropout rate before the classifier.
    in_stage: which stage map the head reads.
  """
  num_classes: int
  channels: int | None = None
  reduction: int = 2
  temperature: float = 0.05
  use_scale: bool = True
  concat_input: bool = True
  dropout: float = 0.1
  in_stage: str = 'stage4'
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, features: dict, train: bool = False):
    x = features[self.in_stage]
    channels = default_channels(self.channels, x.shape[-1])
    unit = lambda *a, **k: ConvBN(*a, dtype=self.dtype, precision=self.precision, **k)
    y = unit(channels, 3, name='conv0')(x, train)
    y = DisentangledNonLocal(self.reduction, self.temperature, self.use_scale, dtype=self.dtype,
                             precision=self.precision, name='dnl')(y, train)
    y = unit(channels, 3, name='conv1')(y, train)
    if self.concat_input:
      y = unit(channels, 3, name='conv_cat')(jnp.concatenate([x, y], axis=-1), train)
    return Classifier(self.num_classes, self.dropout, dtype=self.dtype, precision=self.precision,
                      name='classifier')(y, train)
