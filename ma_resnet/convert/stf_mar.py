"""Loading the authors' STF + MAR checkpoints (PyTorch, `jfzhuang/ST_Memory`, PSPNet-50 on Cityscapes).

`load_reference(state_dict_or_path, *, num_classes=19)` returns `(model, variables)`: the authors' model built
through `models.build` (`build.stf_pspnet50`: the 'pspnet' backbone = mmseg PSPNet R50-D8's extractor, STF,
MAR, the classifier head on 'psp') and its Flax variables. With the features of frames t-1, t, t+1,

    out = model.apply(variables, features, method=model.refine)   # features float32 (B, 3, h, w, 512)
    out['stf_logits'], out['mar_logits']                           # (B, h, w, classes), before upsampling

(`mutable=['intermediates']` adds the resized embeddings and the encoder, STF and MAR outputs under
`intermediates/temporal`). The whole model (`model.apply(variables, clip)`) needs the PSPNet's variables too:
they are converted when the state dict holds them (`pspnet.backbone.*`, `pspnet.decode_head.psp_modules.*`,
`pspnet.decode_head.bottleneck.*`, as the authors' `SegRefine` saves it); a state dict of only the parameters
after the PSPNet (`../shared/reference/stf_mar/*/params.tsv`) gives the variables `refine` needs.

The name mapping is an explicit table (`reference_rules`) from the reference's names (torch layouts) to Flax
paths, e.g.

    pspnet.decode_head.conv_seg.{weight,bias}               -> params/head/classifier/conv/{kernel,bias}
    STF.pe_enc (1, C, 3, He, We)                            -> params/temporal/stf/pe_enc (3, He, We, C)
    STF.encoder.layers.0.self_attn.self_attn_long.in_proj_weight (3C, C)
                                                            -> .../stf/encoder_layer0/self_attn/long/
                                                               {query,key,value}/kernel (rows 0-C, C-2C, 2C-3C,
                                                               transposed)
    STF.decoder.layers.0.multihead_attn.self_attn_short.out_proj.weight
                                                            -> .../stf/decoder_layer0/cross_attn/short/out/kernel
    STF.decoder.layers.0.linear1.weight                     -> .../stf/decoder_layer0/ffn/linear1/kernel
    STF.decoder.layers.0.norm3.{weight,bias}                -> .../stf/decoder_layer0/norm3/{scale,bias}
    MAR.memory_key (1, R, C)                                -> params/temporal/mar/memory_key (R, C)
    MAR.HEdecoder.attn.to_q.2.weight                        -> params/temporal/mar/to_q/proj2/kernel
    MAR.HEdecoder.attn.to_out.0.{weight,bias}               -> params/temporal/mar/to_out/{kernel,bias}
    MAR.HEdecoder.linear1.weight, norm1.weight              -> .../mar/ffn/linear1/kernel, .../mar/norm1/scale
    pspnet.backbone.layer3.0.conv2.weight                   -> params/backbone/stage3/block0/conv2/conv/kernel
    pspnet.decode_head.psp_modules.2.1.bn.running_mean      -> batch_stats/backbone/psp/bin2/bn/mean
    pspnet.decode_head.bottleneck.conv.weight               -> params/backbone/psp/bottleneck/conv/kernel
    pspnet.auxiliary_head.*, *.num_batches_tracked          -> (accepted and dropped: training only)

A state dict with unknown, missing or mis-shaped names is refused with one `ConversionError` naming them.
torch is imported only to read a `.pth` file.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ma_resnet import trees
from ma_resnet.convert.checkpoint_io import ConversionError, checked_arrays, nested_variables
from ma_resnet.convert.tmanet import reference_name_table as tmanet_name_table
from ma_resnet.convert.weight_files import state_dict_of
from ma_resnet.models.build import build, default_model_config, stf_pspnet50
from ma_resnet.models.segmenter import VideoSegmenter

_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'), 'running_mean': ('batch_stats', 'mean'),
       'running_var': ('batch_stats', 'var')}


class Target(NamedTuple):
  """Where (part of) a source tensor goes: `collection`/`path`, computed by `fn` from the source array."""
  collection: str
  path: tuple[str, ...]
  fn: Callable[[np.ndarray], np.ndarray]


class Rule(NamedTuple):
  """One source tensor: its shape in the reference (torch layout) and where it goes."""
  shape: tuple[int, ...]
  targets: tuple[Target, ...]


def _conv(a):  # (out, in, kh, kw) -> (kh, kw, in, out)
  return np.transpose(a, (2, 3, 1, 0))


def _linear(a):  # (out, in) -> (in, out)
  return np.transpose(a, (1, 0))


def _copy(a):
  return a


def _rows(i: int, n: int, transpose: bool):
  """Block i of n equal row blocks (torch's packed in_proj: q, k, v), transposed for a kernel."""
  def fn(a):
    block = a[i * a.shape[0] // n:(i + 1) * a.shape[0] // n]
    return np.transpose(block, (1, 0)) if transpose else block
  return fn


def _embedding(a):  # (1, C, T, H, W) -> (T, H, W, C)
  return np.transpose(a[0], (1, 2, 3, 0))


def _memory(a):  # (1, R, C) -> (R, C)
  return a[0]


def reference_model_config(*, embedding_size: tuple[int, int] = (128, 256), memory_per_class: int = 10,
                           precision: str = 'default') -> ml_collections.ConfigDict:
  """`model` config of the authors' STF + MAR on PSPNet-50 (`models.build.stf_pspnet50`), dropout as theirs.
  `precision` ('default' | 'high' | 'highest'): of every convolution and matmul."""
  config = stf_pspnet50(default_model_config(), mar=True)
  config.stf.update(embedding_size=tuple(embedding_size), memory_per_class=int(memory_per_class))
  config.precision = precision
  return config


def reference_model(num_classes: int = 19, *, embedding_size: tuple[int, int] = (128, 256),
                    memory_per_class: int = 10, precision: str = 'default') -> VideoSegmenter:
  """The reference architecture (see the module docstring)."""
  return build(reference_model_config(embedding_size=embedding_size, memory_per_class=memory_per_class,
                                      precision=precision), num_classes)


def reference_rules(model: VideoSegmenter, *, with_pspnet: bool) -> tuple[dict[str, Rule], frozenset[str]]:
  """(reference name -> Rule, names accepted and dropped) for `model` (a `reference_model`); source shapes
  from the model's own shapes. `with_pspnet`: also the PSPNet extractor's names (the full authors' model)."""
  shapes = trees.flatten(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1, 128, 128, 3))))
  shape = lambda collection, path: tuple(shapes['/'.join((collection,) + tuple(path))].shape)
  rules: dict[str, Rule] = {}
  ignored: set[str] = set()

  def add(name, collection, path, kind):
    t = shape(collection, path)
    source = {'conv': lambda: (t[3], t[2], t[0], t[1]), 'linear': lambda: (t[1], t[0]), 'copy': lambda: t,
              'embedding': lambda: (1, t[3]) + t[:3], 'memory': lambda: (1,) + t}[kind]()
    fn = {'conv': _conv, 'linear': _linear, 'copy': _copy, 'embedding': _embedding, 'memory': _memory}[kind]
    rules[name] = Rule(source, (Target(collection, path, fn),))

  def linear(name, path, bias=True):
    add(f'{name}.weight', 'params', path + ('kernel',), 'linear')
    if bias:
      add(f'{name}.bias', 'params', path + ('bias',), 'copy')

  def norm(name, path):
    add(f'{name}.weight', 'params', path + ('scale',), 'copy')
    add(f'{name}.bias', 'params', path + ('bias',), 'copy')

  def attention(name, path):  # torch nn.MultiheadAttention -> MultiheadAttention
    c = shape('params', path + ('query', 'kernel'))[0]
    kinds = ('query', 'key', 'value')
    rules[f'{name}.in_proj_weight'] = Rule((3 * c, c), tuple(
        Target('params', path + (k, 'kernel'), _rows(i, 3, True)) for i, k in enumerate(kinds)))
    rules[f'{name}.in_proj_bias'] = Rule((3 * c,), tuple(
        Target('params', path + (k, 'bias'), _rows(i, 3, False)) for i, k in enumerate(kinds)))
    linear(f'{name}.out_proj', path + ('out',))

  add('pspnet.decode_head.conv_seg.weight', 'params', ('head', 'classifier', 'conv', 'kernel'), 'conv')
  add('pspnet.decode_head.conv_seg.bias', 'params', ('head', 'classifier', 'conv', 'bias'), 'copy')
  stf = ('temporal', 'stf')
  add('STF.pe_enc', 'params', stf + ('pe_enc',), 'embedding')
  add('STF.pe_dec', 'params', stf + ('pe_dec',), 'embedding')
  options = model.temporal.options
  for i in range(options.layers):
    for part, layer, blocks, norms in (('encoder', f'encoder_layer{i}', (('self_attn', 'self_attn'),), 2),
                                       ('decoder', f'decoder_layer{i}',
                                        (('self_attn', 'self_attn'), ('multihead_attn', 'cross_attn')), 3)):
      name = f'STF.{part}.layers.{i}'
      for block, flax_block in blocks:
        for step in ('long', 'short'):
          attention(f'{name}.{block}.self_attn_{step}', stf + (layer, flax_block, step))
      linear(f'{name}.linear1', stf + (layer, 'ffn', 'linear1'))
      linear(f'{name}.linear2', stf + (layer, 'ffn', 'linear2'))
      for n in range(1, norms + 1):
        norm(f'{name}.norm{n}', stf + (layer, f'norm{n}'))
  mar = ('temporal', 'mar')
  add('MAR.memory_key', 'params', mar + ('memory_key',), 'memory')
  add('MAR.memory_value', 'params', mar + ('memory_value',), 'memory')
  for kind in ('q', 'k', 'v'):
    for j in range(3):
      linear(f'MAR.HEdecoder.attn.to_{kind}.{j}', mar + (f'to_{kind}', f'proj{j}'), bias=False)
  linear('MAR.HEdecoder.attn.to_out.0', mar + ('to_out',))
  linear('MAR.HEdecoder.linear1', mar + ('ffn', 'linear1'))
  linear('MAR.HEdecoder.linear2', mar + ('ffn', 'linear2'))
  norm('MAR.HEdecoder.norm1', mar + ('norm1',))
  norm('MAR.HEdecoder.norm2', mar + ('norm2',))

  if with_pspnet:
    backbone_rows, backbone_ignored = tmanet_name_table(memory_length=1)
    kinds = {'conv_oihw_to_hwio': 'conv', 'identity': 'copy'}
    for name, (collection, path, transform) in backbone_rows.items():
      if name.startswith('backbone.'):
        add(f'pspnet.{name}', collection, path, kinds[transform])
    ignored |= {f'pspnet.{n}' for n in backbone_ignored if n.startswith('backbone.')}
    modules = [(f'pspnet.decode_head.psp_modules.{i}.1', ('backbone', 'psp', f'bin{i}'))
               for i in range(len(model.backbone.pool_scales))]
    for name, path in modules + [('pspnet.decode_head.bottleneck', ('backbone', 'psp', 'bottleneck'))]:
      add(f'{name}.conv.weight', 'params', path + ('conv', 'kernel'), 'conv')
      for suffix, (collection, leaf) in _BN.items():
        add(f'{name}.bn.{suffix}', collection, path + ('bn', leaf), 'copy')
      ignored.add(f'{name}.bn.num_batches_tracked')
    aux = 'pspnet.auxiliary_head'  # mmseg's auxiliary FCN: training only, not part of the model here
    ignored |= {f'{aux}.conv_seg.weight', f'{aux}.conv_seg.bias', f'{aux}.convs.0.conv.weight'}
    ignored |= {f'{aux}.convs.0.bn.{s}' for s in ('weight', 'bias', 'running_mean', 'running_var',
                                                   'num_batches_tracked')}
  return rules, frozenset(ignored - set(rules))


def apply_rules(state: Mapping[str, Any], rules: Mapping[str, Rule], ignored: frozenset[str], what: str) -> dict:
  """Converts `state` with `rules`, or raises one ConversionError naming every unknown, missing and
  mis-shaped name (`checkpoint_io.checked_arrays`). Returns {'params': ..., ('batch_stats': ...)} of float32
  numpy arrays."""
  arrays = checked_arrays(state, {name: rule.shape for name, rule in rules.items()}, ignored, what)
  return nested_variables(('/'.join((target.collection,) + tuple(target.path)), target.fn(arrays[name]))
                          for name, rule in rules.items() for target in rule.targets)


def load_reference(state_dict_or_path: Mapping[str, Any] | str | os.PathLike, *, num_classes: int = 19,
                   precision: str = 'default'):
  """Returns `(model, variables)` for an authors' STF + MAR checkpoint (a `.pth` path or a name -> array dict).

  `model.apply(variables, features, method=model.refine)` with `features` float32 (B, 3, h, w, 512) (the PSP
  bottleneck maps of frames t-1, t, t+1; h, w multiples of 16) returns {'stf_logits', 'mar_logits'}, each
  (B, h, w, num_classes) before upsampling (the segmenter's bilinear resize to the frame size is the authors'
  x8 `interpolate`). The embeddings' stored size and K_L are read off `STF.pe_enc` and `MAR.memory_key`.
  `precision` ('default' | 'high' | 'highest'): of every matmul ('highest' reproduces the float32 numbers on
  GPUs). Raises `ConversionError` naming every unknown, missing or mis-shaped name.
  """
  state, source = state_dict_of(state_dict_or_path)
  embedding_size, memory_per_class = (128, 256), 10
  pe = np.shape(state['STF.pe_enc']) if 'STF.pe_enc' in state else ()
  if len(pe) == 5:
    embedding_size = (int(pe[3]), int(pe[4]))
  memory = np.shape(state['MAR.memory_key']) if 'MAR.memory_key' in state else ()
  if len(memory) == 3 and memory[1] % num_classes == 0 and memory[1] >= num_classes:
    memory_per_class = memory[1] // num_classes
  model = reference_model(num_classes, embedding_size=embedding_size, memory_per_class=memory_per_class,
                          precision=precision)
  with_pspnet = any(str(k).startswith('pspnet.backbone.') for k in state)
  rules, ignored = reference_rules(model, with_pspnet=with_pspnet)
  what = (f'the reference STF + MAR ({num_classes} classes, embeddings {embedding_size[0]}x{embedding_size[1]}, '
          f'K_L {memory_per_class}{", with the PSPNet-50 extractor" if with_pspnet else ""})')
  try:
    variables = apply_rules(state, rules, ignored, what)
  except ConversionError as e:
    raise ConversionError(source + str(e), missing=e.missing, unexpected=e.unexpected,
                          mismatched=e.mismatched) from None
  return model, variables
