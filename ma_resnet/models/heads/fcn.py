"""FCN head (Long et al. 2015) in mmsegmentation's `FCNHead` form, and the classifier the mmseg-style heads share.

FCNHead on one stage map x (N, h, w, C_in) (`in_stage`, default `stage4`):
- `num_convs` k x k conv-BN-ReLU to `channels` (conv without bias, dilation `dilation`, padding
  dilation * (k - 1) / 2);
- with `concat_input`: concatenate [x, convs(x)] (C_in + channels) -> k x k conv-BN-ReLU to `channels`
  (mmseg's `conv_cat`, not dilated);
- `Classifier`: channel dropout (PyTorch `Dropout2d`, as mmseg's `BaseDecodeHead.dropout`) then a 1x1 conv
  with bias to the classes (mmseg's `conv_seg`, initialised normal(0, 0.01), bias 0).

Output: logits (N, h, w, classes) at the stage's resolution; the segmenter resizes them to the input size.

mmseg configs and the defaults here: the decode head of `fcn_r50-d8` is FCNHead(in 2048, channels 512,
num_convs 2, concat_input True, dropout 0.1); the auxiliary head of every mmseg R50-D8 model is FCNHead(in
1024 = stage3, channels 256, num_convs 1, concat_input False, dropout 0.1) -> `auxiliary_fcn_head`.
`channels=None` means C_in / 4, which gives mmseg's choice for both ResNet50 (512 / 256) and ResNet18
(128 / 64) configs.

Parameter tree: `conv{i}/{conv,bn}`, `conv_cat/{conv,bn}`, `classifier/conv`.

`ClassifierHead` is the classifier alone on one map (for temporal modules that end in their own bottleneck).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ma_resnet.models.layers import ConvBN


class ReadsOneMap:
  """Mixin of the heads that read one map, their field `in_stage`: declares it (`stages_read`)."""

  def stages_read(self) -> tuple[str, ...]:
    """The maps this head reads."""
    return (self.in_stage,)


class Classifier(nn.Module):
  """mmseg's `cls_seg`: Dropout2d (whole channels of a sample, `broadcast_dims` over H, W), 1x1 conv with bias.

  Dropout is active with `train=True` and then needs a 'dropout' rng.
  """
  num_classes: int
  dropout: float = 0.1
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
    return nn.Conv(self.num_classes, (1, 1), use_bias=True, kernel_init=nn.initializers.normal(0.01),
                   dtype=self.dtype, param_dtype=jnp.float32, precision=self.precision, name='conv')(x)


def default_channels(channels: int | None, in_channels: int) -> int:
  """`channels`, or in_channels / 4 when None (mmseg's choice for its R18 / R50 configs)."""
  return channels if channels else max(in_channels // 4, 1)


class FCNHead(ReadsOneMap, nn.Module):
  """mmseg FCNHead on `features[in_stage]`. See the module docstring.

  Attributes:
    num_classes: number of classes.
    channels: width of the convs; None = input channels / 4.
    num_convs: number of k x k conv-BN-ReLU before the (optional) concat conv; at least 1.
    kernel: conv kernel size.
    dilation: dilation of the `num_convs` convs.
    concat_input: concatenate the input with the convs' output, then one more conv-BN-ReLU.
    dropout: channel-dropout rate before the classifier.
    in_stage: which stage map the head reads.
  """
  num_classes: int
  channels: int | None = None
  num_convs: int = 2
  kernel: int = 3
  dilation: int = 1
  concat_input: bool = True
  dropout: float = 0.1
  in_stage: str = 'stage4'
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, features: dict, train: bool = False):
    if self.num_convs < 1:
      raise ValueError(f'FCNHead.num_convs must be >= 1, got {self.num_convs}')
    x = features[self.in_stage]
    channels = default_channels(self.channels, x.shape[-1])
    unit = lambda *a, **k: ConvBN(*a, dtype=self.dtype, precision=self.precision, **k)
    y = x
    for i in range(self.num_convs):
      y = unit(channels, self.kernel, dilation=self.dilation, name=f'conv{i}')(y, train)
    if self.concat_input:
      y = unit(channels, self.kernel, name='conv_cat')(jnp.concatenate([x, y], axis=-1), train)
    return Classifier(self.num_classes, self.dropout, dtype=self.dtype, precision=self.precision,
                      name='classifier')(y, train)


class ClassifierHead(ReadsOneMap, nn.Module):
  """Only mmseg's `cls_seg` on `features[in_stage]`: Dropout2d, then a 1x1 conv with bias to the classes.

  The head of a model whose temporal module ends in its own bottleneck (TMANet: `temporal.TMA` replaces
  stage 4 with the attention bottleneck's output). Parameter tree: `classifier/conv`.
  """
  num_classes: int
  dropout: float = 0.1
  in_stage: str = 'stage4'
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, features: dict, train: bool = False):
    return Classifier(self.num_classes, self.dropout, dtype=self.dtype, precision=self.precision,
                      name='classifier')(features[self.in_stage], train)


def auxiliary_fcn_head(num_classes: int, dtype: Any = jnp.float32, precision: Any = None) -> FCNHead:
  """mmseg's auxiliary head: FCNHead on stage3, one 3x3 conv-BN-ReLU (256 channels on ResNet50), no concat."""
  return FCNHead(num_classes, num_convs=1, concat_input=False, in_stage='stage3', dtype=dtype, precision=precision)
