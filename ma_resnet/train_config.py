"""The training configuration: every field `train.py` / `eval.py` read, with defaults and checks.

The experiment files under `configs/` start from `base_config(dataset)` and override what they need; every
field can then be overridden on the command line (`--config.optimizer.lr=0.01`). A key that does not exist is
an error (the config is locked), so a typo never silently trains with a default.

Fields
------
  model                  `ma_resnet.models.default_model_config()` (temporal, depth, variant, head, pcma, tma,
                         remat, ...).
                         `model.dtype` is linked to `compute_dtype`: set either one.
  data                   `ma_resnet.data.default_data_config(name)` (root, clip_length, crop_size, ...).
                         Its own `batch_size` / `seed` are ignored: the top-level fields below win.
  optimizer.name         'sgd' (SGD with momentum, L2 weight decay added to the gradient, as in PaddleSeg) |
                         'adamw' (decoupled weight decay; b1, b2, eps)
  optimizer.lr           peak learning rate (poly decay starts here after warm-up)
  optimizer.end_lr       learning rate reached at `num_steps`
  optimizer.power        poly power: lr(t) = (lr - end_lr) (1 - t / T)^power + end_lr
  optimizer.momentum     SGD momentum (0: plain SGD)
  optimizer.nesterov     Nesterov momentum
  optimizer.weight_decay L2 coefficient (coupled: grad += wd * param)
  optimizer.weight_decay_on  'all' (every parameter, as in PaddleSeg) | 'kernels' (conv/dense kernels only)
  optimizer.warmup       linear warm-up steps from 0 to lr (0: none)
  optimizer.grad_clip_norm  clip gradients to this global norm (0: off)
  optimizer.frozen       parameter path prefixes that never change (e.g. ('backbone',)); the model's own
                         `model.frozen` parts are frozen too (they also run in eval mode, see models.build)
  optimizer.lr_multipliers  {path prefix: m}: those parameters train at m x lr (the longest prefix wins), e.g.
                         {'backbone': 0.01} (optax.multi_transform over the parameter tree)
  num_steps              training steps (one global batch each)
  batch_size             global batch (clips); split evenly over processes and sharded over all devices
  seed                   parameter init, dropout and data order seed
  log_every              steps between progress/scalar logs (and NaN checks)
  eval_every             steps between validation runs (0: only at the end, -1: never)
  eval_split             split evaluated during training ('val')
  eval_batch_size        sequences streamed side by side in evaluation (rounded up to the device count)
  eval_vc_lengths        the n of the video consistency mVC_n reported with mIoU on densely labelled splits
                         ((8, 16): VSPW's mVC8 / mVC16; (): none); see ma_resnet/video_metrics.py
  eval_vc_corrected      also report mVC_n in its corrected form (mvc<n>_corrected: every window, ignore pixels
                         left out, only constant predictions that equal the ground truth count)
  eval_mode              the evaluation protocol (ma_resnet/protocols.py; docs/protocols.md): 'whole' (each frame
                         in one piece at the evaluation size) | 'slide' (windows of eval_crop every eval_stride
                         pixels as mmseg's slide_inference, each window position a lane with its own memory, the
                         windows' logits averaged where they overlap)
  eval_crop              (h, w) of the sliding windows ('slide' only; () with 'whole'); a frame smaller than the
                         crop is one window clipped to it (no padding, as mmseg)
  eval_stride            (h, w) between window starts ('slide' only), 1 <= stride <= crop
  eval_flip              also score the horizontally flipped frame (its own lanes and memory), flipped back
  eval_scales            ratios of the evaluation size, each its own stream with its own memory ((1.0,): the size
                         itself); flips and scales are combined as mmseg's aug_test / PaddleSeg's aug_inference:
                         the mean of the softmax probabilities at the label size, then the arg-max
  checkpoint_every       steps between checkpoints (and one at the end)
  keep_checkpoints       latest checkpoints kept (the best one by validation mIoU is kept in addition)
  init_from              where a new run's variables start from (docs/weights.md; `weights.InitFrom` lists the
                         forms), applied when training starts (not on a resume):
                           ''  the initialisers' values (from scratch)
                           NAME  a catalogue entry (python -m ma_resnet.weights list): ImageNet weights downloaded
                             and converted once into $MA_RESNET_CACHE (~/.cache/ma_resnet); the encoder's ResNet
                           FILE.pth | .pt | .bin | .safetensors | .pdparams, or FRAMEWORK:FILE (torchvision,
                             timm, mmcv, paddle)  ImageNet weights of that framework, converted once into the cache
                           DIR  a converted ResNet (python -m ma_resnet.convert), or a train.py run (its folder: its
                             best checkpoint, the run finished; or a step folder): every variable it shares with
                             this model (same path and shape) is taken, the others keep their initial values
                             (staged recipes); a per-frame run (temporal 'plain') starts any system of its
                             backbone, a run of another system, depth or variant is refused
                           tmanet:FILE | stf_mar:FILE | ma_resnet50:FILE  the authors' trained TMANet, STF + MAR,
                             MA-ResNet50 (as DIR)
                         Every module the config freezes (model.frozen, optimizer.frozen) must come from it, from a
                         run on the same dataset.
  init_from_exclude      variable path prefixes a previous run must not provide (e.g. ('head',): the classifier
                         starts anew, as in the STF recipe); matched against params/... and batch_stats/... paths
  compute_dtype          'float32' | 'bfloat16' (parameters, optimizer state and the loss stay float32)
  aux_loss_weight        weight of the auxiliary head's loss (used when model.aux_head is set)
  class_balance          0: plain cross-entropy. p > 0: each class's pixels weigh (median class frequency /
                         class frequency)^p in the loss (1 = SegNet's median frequency balancing), with the
                         frequencies counted on the training split's labels when training starts
  loss_on_warmup_frames  True: every labelled frame counts in the loss. False: only frames the memory
                         enhanced (`SegmenterOutput.enhanced`), as the authors' code, which outputs nothing
                         for warm-up frames; a plain model (model.temporal=plain) counts every frame either way
  distributed            'auto' | 'yes' | 'no': call jax.distributed.initialize() (auto: when a multi-process
                         launch is detected in the environment)
"""
from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any, Mapping, Sequence

import ml_collections

from ma_resnet.data import default_data_config
from ma_resnet.errors import ConfigError
from ma_resnet.models import default_model_config

OPTIMIZERS = ('sgd', 'adamw')
COMPUTE_DTYPES = ('float32', 'bfloat16')


def base_config(dataset: str = 'synthetic') -> ml_collections.ConfigDict:
  """Every training field with its default, for `dataset` (a registered name, `data.registry`: 'synthetic' |
  'camvid' | 'cityscapes' | 'vspw')."""
  config = ml_collections.ConfigDict()
  config.compute_dtype = 'float32'
  config.model = default_model_config()
  config.model.dtype = config.get_ref('compute_dtype')
  config.data = default_data_config(dataset)

  config.optimizer = ml_collections.ConfigDict({
      'name': 'sgd',
      'lr': 0.1,
      'end_lr': 0.001,
      'power': 0.9,
      'momentum': 0.9,
      'nesterov': False,
      'weight_decay': 4e-5,
      'weight_decay_on': 'all',
      'warmup': 0,
      'grad_clip_norm': 0.0,
      'b1': 0.9,
      'b2': 0.999,
      'eps': 1e-8,
      'frozen': (),
      'lr_multipliers': ml_collections.ConfigDict(),
  })
  config.num_steps = 1000
  config.batch_size = 2
  config.seed = 0

  config.log_every = 50
  config.eval_every = 0
  config.eval_split = 'val'
  config.eval_batch_size = 1
  config.eval_vc_lengths = (8, 16)
  config.eval_vc_corrected = False
  config.eval_mode = 'whole'
  config.eval_crop = ()
  config.eval_stride = ()
  config.eval_flip = False
  config.eval_scales = (1.0,)
  config.checkpoint_every = 1000
  config.keep_checkpoints = 2

  config.init_from = ''
  config.init_from_exclude = ()
  config.aux_loss_weight = 0.4
  config.class_balance = 0.0
  config.loss_on_warmup_frames = True
  config.distributed = 'auto'
  return config


def load_config(path: str, overrides: Mapping[str, Any] | Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config of an experiment file (`configs/x.py`, or `configs/x.py:arg` for `get_config('arg')`), with
  dotted overrides: a mapping {'optimizer.lr': 0.01} or strings 'optimizer.lr=0.01' (Python literals; a
  bare word is a string). The one loader behind train.py, eval.py, predict, the benchmarks and the tests
  (train.py's `--config.a.b=...` flags are ml_collections' `config_flags`, which load the same files).

  FileNotFoundError when the file does not exist; KeyError naming an override's unknown key.
  """
  path, _, argument = os.fspath(path).partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path} does not exist' if not os.path.exists(path)
                            else f'config {path} is not a file')
  spec = importlib.util.spec_from_file_location(f'_experiment_{os.path.basename(path)[:-3]}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(argument) if argument else module.get_config()
  if not isinstance(overrides, Mapping):
    parsed = {}
    for item in overrides:
      key, sep, text = item.partition('=')
      if not sep:
        raise ConfigError(f'override {item!r} is not key=value')
      try:
        parsed[key.strip()] = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        parsed[key.strip()] = text
    overrides = parsed
  for key in overrides:
    node, parts = config, key.split('.')
    for i, part in enumerate(parts):
      if not hasattr(node, 'keys') or part not in node:
        raise KeyError(f"config {path} has no field {'.'.join(parts[:i + 1])!r} (override {key!r})")
      node = node[part]
  config.update_from_flattened_dict(dict(overrides))
  return config


def mmseg_schedule(config: ml_collections.ConfigDict, num_steps: int = 80_000) -> None:
  """mmsegmentation's `schedule_80k` (TMANet's, STF's PSPNet): SGD lr 0.01, momentum 0.9, weight decay 5e-4 on
  every parameter, poly (power 0.9) to min_lr 1e-4, no warm-up."""
  config.optimizer.update(name='sgd', lr=0.01, end_lr=1e-4, power=0.9, momentum=0.9, nesterov=False,
                          weight_decay=5e-4, weight_decay_on='all', warmup=0, grad_clip_norm=0.0)
  config.num_steps = num_steps


def stf_mar_stage(config: ml_collections.ConfigDict, stage: str, memory_init: str) -> None:
  """Stage 2 ('stf') or 4 ('mar') of the authors' STF + MAR recipe (jfzhuang/ST_Memory) on a config whose model
  is `models.build.stf_pspnet50`: the extractor frozen (`model.frozen`: eval mode, no gradient), a new classifier
  (`init_from_exclude`: the authors drop conv_seg), AdamW lr 1e-5 (constant), weight decay 1e-4 on every
  parameter, gradient clipping to norm 0.1. 'mar': STF fixed as well (`model.stf.freeze_stf`,
  `optimizer.frozen`), MAR's memory starting from `memory_init` (`python -m ma_resnet.mar_memory --out`)."""
  model = config.model
  model.frozen = ('backbone',)
  if stage == 'mar':
    model.stf.freeze_stf = True
    model.stf.memory_init = memory_init
    config.optimizer.frozen = ('temporal/stf',)
  config.init_from_exclude = ('head',)
  config.optimizer.update(name='adamw', lr=1e-5, end_lr=1e-5, weight_decay=1e-4, weight_decay_on='all', warmup=0,
                          grad_clip_norm=0.1, b1=0.9, b2=0.999, eps=1e-8)


def validate(config: ml_collections.ConfigDict, eval_frame_size: tuple[int, int] | None = None) -> None:
  """Raises ConfigError naming the field when a value is out of range (before anything is written); builds no
  model.

  Frame sizes: the model must take every size the run uses: `data.crop_size`, and the evaluation frames
  (`data.eval_size`, else `eval_frame_size`: the evaluation split's native size, which the caller reads from the
  data; None: not checked).
  """
  def need(condition, message):
    if not condition:
      raise ConfigError(f'invalid config: {message}')

  opt = config.optimizer
  need(opt.name in OPTIMIZERS, f'optimizer.name must be one of {OPTIMIZERS}, got {opt.name!r}')
  need(opt.weight_decay_on in ('all', 'kernels'),
       f"optimizer.weight_decay_on must be 'all' or 'kernels', got {opt.weight_decay_on!r}")
  need(opt.warmup >= 0, f'optimizer.warmup must be >= 0, got {opt.warmup}')
  need(opt.lr > 0 and opt.end_lr >= 0, f'optimizer.lr must be > 0 and end_lr >= 0, got {opt.lr}, {opt.end_lr}')
  need(config.num_steps >= 1, f'num_steps must be >= 1, got {config.num_steps}')
  need(config.batch_size >= 1, f'batch_size must be >= 1, got {config.batch_size}')
  need(config.log_every >= 1, f'log_every must be >= 1, got {config.log_every}')
  need(config.checkpoint_every >= 1, f'checkpoint_every must be >= 1, got {config.checkpoint_every}')
  need(config.eval_every >= -1, f'eval_every must be >= -1, got {config.eval_every}')
  need(config.eval_batch_size >= 1, f'eval_batch_size must be >= 1, got {config.eval_batch_size}')
  need(all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in config.eval_vc_lengths),
       f'eval_vc_lengths must be positive integers, got {config.eval_vc_lengths}')
  from ma_resnet.protocols import EvalProtocol
  protocol = EvalProtocol.from_config(config)  # ConfigError naming the eval_* field at fault
  need(config.keep_checkpoints >= 1, f'keep_checkpoints must be >= 1, got {config.keep_checkpoints}')
  need(config.compute_dtype in COMPUTE_DTYPES,
       f'compute_dtype must be one of {COMPUTE_DTYPES}, got {config.compute_dtype!r}')
  need(config.model.dtype == config.compute_dtype,
       f'model.dtype ({config.model.dtype!r}) and compute_dtype ({config.compute_dtype!r}) differ; set one')
  need(config.distributed in ('auto', 'yes', 'no'),
       f"distributed must be 'auto', 'yes' or 'no', got {config.distributed!r}")
  need(config.class_balance >= 0, f'class_balance must be >= 0, got {config.class_balance}')
  need(config.aux_loss_weight >= 0, f'aux_loss_weight must be >= 0, got {config.aux_loss_weight}')
  data = config.data
  from ma_resnet.data import registry
  registry.get(data.name)  # ConfigError: data.name must be one of the registered datasets
  need(data.get('source', 'folder') in ('folder', 'tfds'),
       f"data.source must be 'folder' or 'tfds', got {data.get('source')!r}")
  need(data.get('source', 'folder') == 'folder' or data.get('tfds_data_dir'),
       "data.source='tfds' needs data.tfds_data_dir (prepare it with ma_resnet.data.tfds_builders)")
  from ma_resnet.data.camvid import FRAME_LISTS
  frame_list = (data.get('camvid') or {}).get('frame_list', '')
  need(frame_list in FRAME_LISTS, f'data.camvid.frame_list must be one of {sorted(FRAME_LISTS)}, got {frame_list!r}')
  need(data.clip_length >= 1, f'data.clip_length must be >= 1, got {data.clip_length}')
  stride = data.get('clip_start_stride', 1)
  need(stride >= 1, f'data.clip_start_stride must be >= 1, got {stride}')
  gaps = tuple(data.get('pair_gaps') or ())
  need(not gaps or (data.clip_length == 2 and min(gaps) >= 1),
       f'data.pair_gaps {gaps} need data.clip_length 2 and gaps >= 1 (got clip_length {data.clip_length})')
  sizes = [('data.crop_size', data.crop_size)]
  if data.get('eval_size'):
    sizes.append(('data.eval_size', data.eval_size))
  for field, size in sizes:
    need(len(tuple(size)) == 2 and min(int(s) for s in size) >= 1,
         f'{field} must be two positive sizes (height, width), got {size}')
  from ma_resnet.data import num_classes
  from ma_resnet.models.build import model_parts
  classes = num_classes(data)
  parts = model_parts(config.model, classes)
  if config.eval_every >= 0 and not data.get('eval_size') and eval_frame_size is not None:
    sizes.append((f'the native frame size of the {config.eval_split!r} split (data.eval_size is unset)',
                  eval_frame_size))
  if not protocol.plain:  # the model sees the protocol's windows of every scale, not the frames
    from ma_resnet.protocols import plan
    sizes = sizes[:1] + [(f'{field}: the {views.window_size[0]}x{views.window_size[1]} views of eval_mode='
                          f'{protocol.mode!r} at scale {views.scale:g}', views.window_size)
                         for field, size in sizes[1:] for views in plan(protocol, tuple(int(s) for s in size))]
  for field, size in sizes:
    parts.check_frame_size(size, field)
  from ma_resnet.weights import check_init_from
  check_init_from(config)  # a catalogue entry of the model's architecture (no file read, no request)
  _validate_mar_memory(config, parts.temporal, classes)


def _validate_mar_memory(config: ml_collections.ConfigDict, temporal, num_classes: int) -> None:
  """The MAR memory files a config starts from (model.stf.memory_init) exist and fit the model, before anything
  is written (a restored run does not need them: its checkpoint holds the memory)."""
  model = config.model
  if model.temporal != 'stf' or not model.stf.get('mar') or not model.stf.get('memory_init'):
    return
  from ma_resnet.models.temporal.stf import load_memory
  try:
    load_memory(model.stf.memory_init, num_classes, int(model.stf.memory_per_class), temporal.channels)
  except ValueError as e:
    raise ConfigError(f'invalid config: model.stf.memory_init: {e}') from None
