r"""Every speed figure of the project in one run: one JSON line per figure, then a summary table.

    python benchmarks/suite.py --smoke                          # tiny models and sizes: what CI runs
    python benchmarks/suite.py --size 256,384 --budget 3000     # a 2-core x86 CPU (docs/benchmarks.md)
    python benchmarks/suite.py --only attention                 # PCMA's attention alone, dense vs chunked

On a GPU machine, from the repository root (order: attention, step (+ torchvision, precision), training step,
clip apply; each compile is 30-100 s on a GPU, so a short budget names the systems; the targets are MA vs plain
vs torchvision):

    python benchmarks/suite.py --size 720,960 --budget 540 --systems plain,pcma

Dependencies: jax, flax, numpy, absl (orbax brings it); torch + torchvision for the torchvision figures (they are
skipped, with the reason, without them). The training figures read configs/camvid.py, whose config comes from
`ma_resnet.train_config` (ml_collections, and grain through `ma_resnet.data`): without those packages they are
skipped with the reason and every other figure still runs (models are built from plain dicts,
`build.default_model_options()`).

Figures (one JSON line each: "figure" is the name, then its numbers; batch 1 unless said, random weights):
  attention/<impl>/<dtype>        PCMA's attention alone (`temporal.pcma.attend`: read-out of one frame) at the
                                  stage-1 size of a --attention-size frame (720x960: 90x120 stored and current
                                  positions, Ck 32, Cv 64, T 1): ms per call, peak memory (XLA memory analysis:
                                  arguments + outputs + temporaries), the score matrix 'dense' holds.
                                  attention_grad/...: the same with the gradient (training).
  step/<system>/<dtype>           streaming `step` (memory carried): compile s, ms/frame, frames/s.
                                  Systems: every `build.TEMPORAL_MODULES` entry (plain and pcma: ResNet50-vd OS 8 +
                                  DeepLabV3+; tma: TMANet R50-D8).
  step/torchvision/<dtype>        torchvision deeplabv3_resnet50 per frame (bfloat16: autocast + channels_last).
  clip/<system>/<dtype>           clip `apply` of --clip-length frames, per frame.
  train/<system>/<dtype>          training step of configs/camvid.py (2 clips x 2 frames at --train-size):
                                  compile s, s/step.
  train/torchvision/<dtype>       torchvision deeplabv3_resnet50, SGD step on the same 4 frames.
  precision/pcma                  float32 step at precision 'highest' vs 'default': ms/frame, relative difference
                                  of the logits (on GPUs 'default' is TF32).
  ratio/...                       the targets: MA/plain, MA frames/s, MA/torchvision, training step
                                  MA/torchvision, bfloat16/float32 compile time of the training step.

Timed figures are measured in interleaved rounds (every model once per round; medians), so that machine load
hits all alike. --budget SECONDS: no measurement starts when its expected duration (the longest of its kind so
far, or a first guess) would pass the budget; figures not measured are printed with "skipped".
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import sys
import time
from typing import Any, Callable

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # leave GPU memory to torch as well

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (REPO, os.path.join(REPO, 'tests')):
  if os.path.isdir(path) and path not in sys.path:
    sys.path.insert(0 if path == REPO else len(sys.path), path)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ma_resnet.models import attention as attention_lib  # noqa: E402
from ma_resnet.models import build as build_model  # noqa: E402
from ma_resnet.models.build import TEMPORAL_MODULES, default_model_options, tmanet_r50_d8  # noqa: E402

build_lib = importlib.import_module('ma_resnet.models.build')  # the module (`ma_resnet.models.build` is the function)
from ma_resnet.models.temporal import PCMAOptions, StageMemory, attend  # noqa: E402

NUM_CLASSES = 11  # CamVid
TARGETS_GPU = {'ma_over_plain': 1.05, 'ma_frames_per_s': 250.0, 'ma_over_torchvision': 0.6,
               'train_ma_over_torchvision': 0.8, 'train_compile_bf16_over_fp32': 1.2}
TARGETS_CPU = {'ma_over_plain': 1.02, 'train_compile_bf16_over_fp32': 1.2}
# First guesses (seconds, 720x960 on a GPU / 240x320 on this CPU) of each kind of measurement, before one ran.
FIRST_GUESS = {'attention': 10, 'compile_step': 40, 'compile_clip': 50, 'compile_train': 90, 'torch_setup': 10,
               'round': 5, 'train_round': 10}


# ---------------------------------------------------------------------------------------------------------
# Output and budget.


class Report:
  """Prints one JSON line per figure and keeps them for the summary."""

  def __init__(self):
    self.start = time.perf_counter()
    self.figures: dict[str, dict] = {}

  def emit(self, figure: str, **values):
    record = {'figure': figure, **{k: _plain(v) for k, v in values.items()},
              'elapsed_s': round(time.perf_counter() - self.start, 1)}
    self.figures[figure] = record
    print(json.dumps(record), flush=True)
    return record

  def skip(self, figure: str, reason: str):
    return self.emit(figure, skipped=reason)


def _plain(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  if isinstance(value, float):
    return round(value, 6) if math.isfinite(value) else None
  if isinstance(value, tuple):
    return list(value)
  return value


class Budget:
  """Wall-clock budget: `allows(kind)` is False when the longest measurement of `kind` so far (or its first
  guess) would end past the deadline."""

  def __init__(self, seconds: float, guess_scale: float):
    self.deadline = time.perf_counter() + seconds
    self.guess_scale = guess_scale
    self.longest: dict[str, float] = {}

  def left(self) -> float:
    return self.deadline - time.perf_counter()

  def allows(self, kind: str) -> bool:
    expected = self.longest.get(kind, FIRST_GUESS.get(kind, 10) * self.guess_scale)
    return self.left() > expected

  def run(self, kind: str, fn: Callable[[], Any]):
    start = time.perf_counter()
    try:
      return fn()
    finally:
      self.longest[kind] = max(self.longest.get(kind, 0.0), time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------------------
# Models.


SMOKE_FCN = {'channels': 8, 'num_convs': 1, 'concat_input': False, 'in_stage': 'stage1'}


def _tha_reference(options: dict) -> dict:
  """LERNet + THA (paper 004): the LERNet backbone, its decoder as the classifier on the 'high' map."""
  options.update(temporal='tha', backbone='lernet', head='classifier', aux_head='')
  options['head_options'] = {'in_stage': options['tha']['high']}
  return options


# system -> its reference model (sets a default_model_options() dict in place and returns it). A system not
# named here is built with temporal=<name> on the defaults (its figures say why when that fails): add its preset.
REFERENCE_MODELS = {
    'plain': lambda options: options.update(temporal='plain') or options,  # ResNet50-vd OS 8 + DeepLabV3+
    'pcma': lambda options: options,                                        # MA-ResNet50-vd + DeepLabV3+
    'tma': lambda options: tmanet_r50_d8(options, memory_length=2),        # TMANet R50-D8 (Cityscapes T=2)
    'tha': _tha_reference,                                                  # LERNet + THA
}
if hasattr(build_lib, 'stf_pspnet50'):
  REFERENCE_MODELS['stf'] = build_lib.stf_pspnet50                          # STF + MAR on PSPNet R50-D8


def model_options(system: str, dtype: str, smoke: bool, precision: str = 'default') -> dict:
  """The reference model of each system, as plain dicts (no ml_collections needed). Smoke: ResNet18 and a
  one-conv FCN head on stage 1 (so the backbone stops there), TMA with narrow encoders: every code path,
  compiled fast."""
  options = default_model_options()
  options = REFERENCE_MODELS.get(system, lambda o: o.update(temporal=system) or o)(options)
  options.update(dtype=dtype, precision=precision)
  if smoke and options.get('backbone', 'resnet') in ('resnet', 'pspnet'):
    options.update(depth=18, multi_grid=None)
    if system == 'tma':
      options['tma'].update(key_channels=8, value_channels=16, channels=16)
      options['aux_head'] = ''
    elif system in ('pcma', 'plain'):
      options.update(head='fcn', head_options=dict(SMOKE_FCN))
  return options


def random_variables(model, clip_shape):
  """He-normal kernels, unit batch-norm scales and variances, zero biases and means: finite, realistic maps."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(clip_shape, jnp.float32))

  def value(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(np.random.default_rng(fan_in).normal(0, np.sqrt(2 / fan_in), leaf.shape), leaf.dtype)
    return jnp.ones(leaf.shape, leaf.dtype) if name in ('scale', 'var') else jnp.zeros(leaf.shape, leaf.dtype)
  return jax.tree_util.tree_map_with_path(value, shapes)


def timed_compile(jitted, *args):
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


class Streamer:
  """A model streamed frame by frame with its compiled `step` (memory carried)."""

  def __init__(self, options: dict, size):
    self.model = build_model(options, NUM_CLASSES)
    self.variables = random_variables(self.model, (1, 1) + size + (3,))
    self.frame = jax.random.normal(jax.random.key(1), (1,) + size + (3,))
    self.memory = self.model.init_memory(1, size)
    step = jax.jit(functools.partial(self.model.apply, method=self.model.step))
    self.step, self.compile_seconds = timed_compile(step, self.variables, self.frame, self.memory)
    for _ in range(2):  # fill the memory
      out = self.step(self.variables, self.frame, self.memory)
      self.memory = out.memory
    self.logits = np.asarray(out.logits)

  def __call__(self, frames: int) -> float:
    start = time.perf_counter()
    for _ in range(frames):
      out = self.step(self.variables, self.frame, self.memory)
      self.memory = out.memory
    jax.block_until_ready(out.logits)
    return (time.perf_counter() - start) / frames


class ClipRunner:
  """A model applied to a whole clip (the scan), per frame."""

  def __init__(self, options: dict, size, length: int):
    model = build_model(options, NUM_CLASSES)
    self.variables = random_variables(model, (1, 1) + size + (3,))
    self.clip = jax.random.normal(jax.random.key(2), (1, length) + size + (3,))
    self.apply, self.compile_seconds = timed_compile(jax.jit(model.apply), self.variables, self.clip)
    jax.block_until_ready(self.apply(self.variables, self.clip).logits)
    self.length = length

  def __call__(self, clips: int) -> float:
    start = time.perf_counter()
    for _ in range(clips):
      out = self.apply(self.variables, self.clip)
    jax.block_until_ready(out.logits)
    return (time.perf_counter() - start) / (clips * self.length)


# ---------------------------------------------------------------------------------------------------------
# Training step of configs/camvid.py (needs ml_collections).


def camvid_config(system: str, dtype: str, size, smoke: bool):
  """configs/camvid.py with model.temporal = `system`, compute dtype, crop `size` (2 clips x 2 frames)."""
  spec = importlib.util.spec_from_file_location('_suite_camvid_config', os.path.join(REPO, 'configs', 'camvid.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.model.temporal = system
  config.compute_dtype = dtype
  config.model.dtype = dtype  # linked to compute_dtype in train_config; set both in case the link is gone
  config.data.crop_size = tuple(size)
  if smoke:
    config.model.depth, config.model.multi_grid = 18, None
    config.model.head = 'fcn'
    config.model.head_options = dict(SMOKE_FCN)
  return config


class TrainRunner:
  """The jitted training step of `ma_resnet.training` on random batches of the config's shape."""

  def __init__(self, system: str, dtype: str, size, smoke: bool):
    missing = [name for name in ('ml_collections', 'grain') if importlib.util.find_spec(name) is None]
    if missing:
      raise ModuleNotFoundError(f'{" and ".join(missing)} not installed: configs/camvid.py and ma_resnet.training '
                                'need them (ma_resnet.train_config, ma_resnet.data)')
    from ma_resnet import training
    config = camvid_config(system, dtype, size, smoke)
    b, t = int(config.batch_size), int(config.data.clip_length)
    model = build_model(config.model, NUM_CLASSES)
    schedule = training.learning_rate_schedule(config)
    tx = training.make_optimizer(config, schedule)
    self.state = training.create_train_state(config, model, tx, jax.random.key(0))
    rng = np.random.default_rng(0)
    self.batch = {'frames': jnp.asarray(rng.normal(size=(b, t) + tuple(size) + (3,)), jnp.float32),
                  'labels': jnp.asarray(rng.integers(0, NUM_CLASSES, size=(b, t) + tuple(size)), jnp.int32),
                  'labelled': jnp.ones((b, t), bool), 'sequence_start': jnp.zeros((b, t), bool).at[:, 0].set(True)}
    self.rng = jax.random.key(1)
    step = jax.jit(training.make_train_step(config, schedule, system != 'plain'), donate_argnums=0)
    self.step, self.compile_seconds = timed_compile(step, self.state, self.batch, self.rng)
    self.frames = b * t
    self(1)

  def __call__(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.step(self.state, self.batch, self.rng)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


# ---------------------------------------------------------------------------------------------------------
# torchvision's deeplabv3_resnet50.


def load_deeplabv3():
  """(torch, deeplabv3_resnet50 constructor, how it was loaded)."""
  import torch
  try:
    from torchvision.models.segmentation import deeplabv3_resnet50
    return torch, deeplabv3_resnet50, 'import torchvision'
  except Exception as e:  # e.g. torchvision's compiled ops do not match torch (this CPU machine)
    from torch_utils import load_torchvision_deeplabv3
    reason = f'{type(e).__name__}: {str(e).splitlines()[0][:80]}' if str(e) else type(e).__name__
    return torch, load_torchvision_deeplabv3().deeplabv3_resnet50, f'source files (import failed: {reason})'


class TorchRunner:
  """torchvision deeplabv3_resnet50 (no aux head) per frame, or a training step on `batch` frames."""

  def __init__(self, size, dtype: str, threads: int, train_batch: int = 0):
    torch, constructor, self.loaded = load_deeplabv3()
    self.torch = torch
    if threads:
      torch.set_num_threads(threads)
    self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if self.device.type == 'cuda':
      torch.backends.cudnn.benchmark = True
    self.half = dtype == 'bfloat16'
    net = constructor(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False).to(self.device)
    if self.half:
      net = net.to(memory_format=torch.channels_last)
    self.net = net
    self.train = train_batch > 0
    n = train_batch if self.train else 1
    self.images = torch.randn(n, 3, *size, device=self.device)
    if self.half:
      self.images = self.images.contiguous(memory_format=torch.channels_last)
    if self.train:
      net.train()
      self.labels = torch.randint(0, NUM_CLASSES, (n,) + tuple(size), device=self.device)
      self.optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
      self.loss = torch.nn.CrossEntropyLoss(ignore_index=255)
    else:
      net.eval()
    self(1)

  def _sync(self):
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()

  def _autocast(self):
    return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16, enabled=self.half)

  def __call__(self, count: int) -> float:
    torch = self.torch
    self._sync()
    start = time.perf_counter()
    if self.train:
      for _ in range(count):
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
          loss = self.loss(self.net(self.images)['out'].float(), self.labels)
        loss.backward()
        self.optimizer.step()
    else:
      with torch.inference_mode(), self._autocast():
        for _ in range(count):
          self.net(self.images)
    self._sync()
    return (time.perf_counter() - start) / count


# ---------------------------------------------------------------------------------------------------------
# PCMA's attention alone.


def attention_inputs(size, dtype):
  """StageMemory (T 1, full), key and value of PCMA on stage 1 of ResNet50 OS 8 for frames of `size`."""
  from ma_resnet.models.backbones.resnet import stage_sizes
  from ma_resnet.models.temporal.pcma import memory_size
  h, w = memory_size(stage_sizes(size, 8)['stage1'])
  ck, cv = PCMAOptions().channels(256)
  k = jax.random.split(jax.random.key(3), 3)
  memory = StageMemory(keys=jax.random.normal(k[0], (1, 1, h, w, ck), dtype),
                       values=jax.nn.relu(jax.random.normal(k[1], (1, 1, h, w, cv), dtype)),
                       valid=jnp.ones((1, 1), bool))
  return memory, jax.random.normal(k[2], (1, h, w, ck), dtype), jnp.zeros((1, h, w, cv), dtype)


class AttentionRunner:
  """`attend` (read-out only) compiled for one implementation; with `grad`, the gradient w.r.t. the key too."""

  def __init__(self, implementation: str, dtype: str, size, chunk: int, grad: bool):
    options = PCMAOptions(attention=implementation, attention_chunk=chunk)

    def read(stored_keys, stored_values, valid, key, value):
      return attend(StageMemory(stored_keys, stored_values, valid), key, value, options)[0]

    if grad:  # gradients w.r.t. the current key and the stored keys and values
      def fn(stored_keys, stored_values, valid, key, value):
        loss = lambda k, sk, sv: jnp.sum(read(sk, sv, valid, k, value).astype(jnp.float32) ** 2)
        return jax.grad(loss, argnums=(0, 1, 2))(key, stored_keys, stored_values)
    else:
      fn = read
    memory, key, value = attention_inputs(size, jnp.dtype(dtype))
    self.inputs = (memory.keys, memory.values, memory.valid, key, value)
    self.fn, self.compile_seconds = timed_compile(jax.jit(fn), *self.inputs)
    analysis = self.fn.memory_analysis()
    self.memory = None
    if analysis is not None:
      self.memory = {name: int(getattr(analysis, f'{name}_size_in_bytes', 0) or 0)
                     for name in ('argument', 'output', 'temp', 'alias')}
      self.memory['peak'] = (self.memory['argument'] + self.memory['output'] + self.memory['temp']
                             - self.memory['alias'])
    jax.block_until_ready(self.fn(*self.inputs))

  def __call__(self, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
      out = self.fn(*self.inputs)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


# ---------------------------------------------------------------------------------------------------------
# The run.


def interleave(runners: dict, rounds: int, count: int, budget: Budget, kind: str = 'round') -> dict:
  """(median, rounds, fastest round) over rounds of runner(count) (seconds per unit), every runner once per
  round. The medians make the figures and ratios; the fastest rounds are printed too (on a shared machine they
  are the closer estimate of the unloaded time)."""
  times = {name: [] for name in runners}
  for _ in range(rounds if runners else 0):
    if not budget.allows(kind):
      break
    budget.run(kind, lambda: [times[name].append(run(count)) for name, run in runners.items()])
  return {name: (float(np.median(t)), len(t), float(np.min(t))) for name, t in times.items() if t}


def parse_size(text: str, flag: str):
  size = tuple(int(s) for s in text.replace('x', ',').split(','))
  if len(size) != 2 or min(size) < 32:
    raise SystemExit(f'{flag} must be H,W with both >= 32, got {text!r}')
  return size


GROUPS = ('attention', 'step', 'clip', 'train', 'torchvision', 'precision')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--size', default=None, help='H,W of the frames (default 720,960; smoke 128,128)')
  parser.add_argument('--train-size', default=None, help='H,W of the training crops (default: --size)')
  parser.add_argument('--attention-size', default=None,
                      help='frame H,W whose stage-1 attention is measured (default 720,960; smoke 64,96)')
  parser.add_argument('--budget', type=float, default=3600, help='seconds; no measurement starts past it')
  parser.add_argument('--smoke', action='store_true', help='ResNet18 with narrow heads at tiny sizes (CI)')
  parser.add_argument('--only', default=','.join(GROUPS), help=f'comma list of {GROUPS}')
  parser.add_argument('--systems', default=None,
                      help='temporal systems to step and to apply on clips (default every one in '
                           'build.TEMPORAL_MODULES; smoke plain,pcma and clips of pcma only)')
  parser.add_argument('--train-systems', default=None,
                      help='systems of the training step (pcma,plain; smoke plain: the fastest to compile)')
  parser.add_argument('--dtypes', default=None, help='compute dtypes (float32,bfloat16; smoke float32)')
  parser.add_argument('--rounds', type=int, default=None, help='interleaved timing rounds (GPU 10, CPU 3)')
  parser.add_argument('--frames', type=int, default=None, help='frames per model per round (GPU 20, CPU 2)')
  parser.add_argument('--clip-length', type=int, default=8)
  parser.add_argument('--chunk', type=int, default=attention_lib.DEFAULT_CHUNK, help="'chunked' chunk size")
  parser.add_argument('--torch-threads', type=int, default=None,
                      help="torch CPU threads (default: torch's; smoke 1: OpenMP barriers stall on a loaded CPU)")
  args = parser.parse_args(argv)

  platform = jax.devices()[0].platform
  gpu = platform == 'gpu'
  smoke = args.smoke
  size = parse_size(args.size or ('128,128' if smoke else '720,960'), '--size')
  torch_size = (96, 96) if smoke and not args.size else size  # smoke: torch's fastest small size (64: slow path)
  train_size = parse_size(args.train_size, '--train-size') if args.train_size else size
  attention_size = parse_size(args.attention_size or ('64,96' if smoke else '720,960'), '--attention-size')
  rounds = args.rounds or (1 if smoke else 10 if gpu else 3)
  torch_threads = args.torch_threads if args.torch_threads is not None else (1 if smoke else 0)
  frames = args.frames or (1 if smoke else 20 if gpu else 2)
  clip_length = 2 if smoke and args.clip_length == 8 else args.clip_length
  groups = [g for g in args.only.split(',') if g]
  unknown = sorted(set(groups) - set(GROUPS))
  if unknown:
    raise SystemExit(f'--only: unknown group(s) {unknown}; choose from {GROUPS}')
  systems = [s for s in (args.systems or ('plain,pcma' if smoke else ','.join(TEMPORAL_MODULES))).split(',') if s]
  clip_systems = ['pcma'] if smoke and 'pcma' in systems else systems
  train_systems = [s for s in (args.train_systems or ('plain' if smoke else 'pcma,plain')).split(',') if s]
  dtypes = [d for d in (args.dtypes or ('float32' if smoke else 'float32,bfloat16')).split(',') if d]
  budget = Budget(args.budget, 0.05 if smoke else 1.0)
  report = Report()
  report.emit('context', platform=platform, device=str(jax.devices()[0]), jax=jax.__version__,
              size=size, train_size=train_size, attention_size=attention_size, smoke=smoke, rounds=rounds,
              frames=frames, budget_s=args.budget, cpu_count=os.cpu_count(),
              xla_flags=os.environ.get('XLA_FLAGS', ''))

  def guarded(figure: str, kind: str, make: Callable[[], Any]):
    """make() under the budget; on failure or when over budget, a skipped figure and None."""
    if not budget.allows(kind):
      report.skip(figure, 'budget')
      return None
    try:
      return budget.run(kind, make)
    except Exception as e:  # one figure's failure must not stop the others
      report.skip(figure, f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}')
      return None

  # 1. PCMA's attention alone: before (dense) and after (chunked; fused where cuDNN serves).
  if 'attention' in groups:
    for grad in (False,) if smoke else (False, True):  # the gradient's code path is tests/test_attention's
      prefix = 'attention_grad' if grad else 'attention'
      for dtype in dtypes:
        implementations = ['dense', 'chunked']
        if attention_lib.fused_available(dtype, 32, 64):
          implementations.append('fused')
        runners = {}
        for impl in implementations:
          runner = guarded(f'{prefix}/{impl}/{dtype}', 'attention',
                           lambda: AttentionRunner(impl, dtype, attention_size, args.chunk, grad))
          if runner is not None:
            runners[impl] = runner
        medians = interleave(runners, max(rounds, 3), max(frames, 2 if not smoke else 1), budget, 'attention')
        memory, _, _ = attention_inputs(attention_size, jnp.dtype(dtype))
        positions = int(np.prod(memory.keys.shape[1:4]))
        for impl, runner in runners.items():
          if impl not in medians:
            report.skip(f'{prefix}/{impl}/{dtype}', 'budget')
            continue
          seconds, n, fastest = medians[impl]
          report.emit(f'{prefix}/{impl}/{dtype}', ms=seconds * 1e3, ms_min=fastest * 1e3, rounds=n,
                      compile_s=runner.compile_seconds,
                      peak_bytes=(runner.memory or {}).get('peak'), temp_bytes=(runner.memory or {}).get('temp'),
                      positions=positions, chunk=args.chunk if impl == 'chunked' else None,
                      score_matrix_bytes=attention_lib.score_matrix_bytes(1, positions, positions, jnp.float32))

  # 2. Streaming step of every system, and torchvision beside them (interleaved rounds).
  steppers = {}
  if 'step' in groups:
    for dtype in dtypes:
      for system in systems:
        runner = guarded(f'step/{system}/{dtype}', 'compile_step',
                         lambda: Streamer(model_options(system, dtype, smoke), size))
        if runner is not None:
          steppers[f'step/{system}/{dtype}'] = runner
  torch_dtypes = [d for d in dtypes if gpu or d == 'float32']  # CPU autocast emulates bfloat16: no reference
  if 'torchvision' in groups:
    for dtype in dtypes:
      if dtype not in torch_dtypes:
        report.skip(f'step/torchvision/{dtype}', 'torch bfloat16 autocast on a CPU is emulated (not a reference)')
        continue
      runner = guarded(f'step/torchvision/{dtype}', 'torch_setup',
                       lambda: TorchRunner(torch_size, dtype, torch_threads))
      if runner is not None:
        steppers[f'step/torchvision/{dtype}'] = runner
  if 'precision' in groups and 'float32' in dtypes:
    runner = guarded('precision/pcma', 'compile_step',
                     lambda: Streamer(model_options('pcma', 'float32', smoke, precision='highest'), size))
    if runner is not None:
      steppers['precision/pcma'] = runner
  medians = interleave(steppers, rounds, frames, budget)
  for name, runner in steppers.items():
    if name not in medians:
      report.skip(name, 'budget')
      continue
    seconds, n, fastest = medians[name]
    extra = {'ms_per_frame_min': fastest * 1e3}
    if isinstance(runner, Streamer):
      extra['compile_s'] = runner.compile_seconds
    else:
      extra['loaded'] = runner.loaded
    if name == 'precision/pcma' and 'step/pcma/float32' in steppers:
      default = steppers['step/pcma/float32'].logits
      extra['logits_rel_diff_vs_default'] = float(np.linalg.norm(runner.logits - default) / np.linalg.norm(default))
      extra['precision'] = 'highest'
    extra['size'] = torch_size if isinstance(runner, TorchRunner) else size
    report.emit(name, ms_per_frame=seconds * 1e3, frames_per_s=1.0 / seconds, rounds=n, **extra)

  # 3. Training step of configs/camvid.py, and torchvision's on the same frames.
  if 'train' in groups:
    trainers = {}
    for dtype in dtypes:
      for system in train_systems:
        runner = guarded(f'train/{system}/{dtype}', 'compile_train',
                         lambda: TrainRunner(system, dtype, train_size, smoke))
        if runner is not None:
          trainers[f'train/{system}/{dtype}'] = runner
      if 'torchvision' in groups and dtype in torch_dtypes:
        runner = guarded(f'train/torchvision/{dtype}', 'torch_setup',
                         lambda: TorchRunner(torch_size if smoke else train_size, dtype, torch_threads,
                                             train_batch=4))
        if runner is not None:
          trainers[f'train/torchvision/{dtype}'] = runner
    medians = interleave(trainers, rounds, 1 if smoke or not gpu else 5, budget, 'train_round')
    for name, runner in trainers.items():
      if name not in medians:
        report.skip(name, 'budget')
        continue
      seconds, n, fastest = medians[name]
      if isinstance(runner, TrainRunner):
        extra = {'compile_s': runner.compile_seconds, 'size': train_size}
      else:
        extra = {'loaded': runner.loaded, 'size': torch_size if smoke else train_size}
      extra['s_per_step_min'] = fastest
      report.emit(name, s_per_step=seconds, frames_per_step=4, rounds=n, **extra)

  # 4. Clip apply (the scan over --clip-length frames).
  if 'clip' in groups:
    clips = {}
    for dtype in dtypes:
      for system in clip_systems:
        runner = guarded(f'clip/{system}/{dtype}', 'compile_clip',
                         lambda: ClipRunner(model_options(system, dtype, smoke), size, clip_length))
        if runner is not None:
          clips[f'clip/{system}/{dtype}'] = runner
    medians = interleave(clips, rounds, 1, budget)
    for name, runner in clips.items():
      if name not in medians:
        report.skip(name, 'budget')
        continue
      seconds, n, fastest = medians[name]
      report.emit(name, ms_per_frame=seconds * 1e3, ms_per_frame_min=fastest * 1e3, frames_per_s=1.0 / seconds,
                  clip_length=clip_length,
                  compile_s=runner.compile_seconds, rounds=n, size=size)

  ratios = summary_ratios(report, gpu)
  print_table(report, ratios, gpu)
  return report


def summary_ratios(report: Report, gpu: bool) -> list[dict]:
  """The target ratios from the figures present, as `ratio/...` figures."""
  fig = lambda name, key: report.figures.get(name, {}).get(key)
  targets = TARGETS_GPU if gpu else TARGETS_CPU
  out = []

  def ratio(name, a, b, target_key, upper=True):
    if a is None or b is None:
      return
    value = a / b if b else None
    target = targets.get(target_key)
    ok = None if target is None or value is None else (value <= target if upper else value >= target)
    out.append(report.emit(f'ratio/{name}', value=value, target=target, meets_target=ok))

  for dtype in ('float32', 'bfloat16'):
    ma, plain = fig(f'step/pcma/{dtype}', 'ms_per_frame'), fig(f'step/plain/{dtype}', 'ms_per_frame')
    torch_ms = fig(f'step/torchvision/{dtype}', 'ms_per_frame')
    ratio(f'ma_over_plain/{dtype}', ma, plain, 'ma_over_plain')
    ratio(f'ma_over_plain_fastest_rounds/{dtype}', fig(f'step/pcma/{dtype}', 'ms_per_frame_min'),
          fig(f'step/plain/{dtype}', 'ms_per_frame_min'), '')
    ratio(f'ma_over_torchvision/{dtype}', ma, torch_ms, 'ma_over_torchvision')
    if ma is not None:
      value = 1e3 / ma
      target = targets.get('ma_frames_per_s')
      out.append(report.emit(f'ratio/ma_frames_per_s/{dtype}', value=value, target=target,
                             meets_target=None if target is None else value >= target))
    ratio(f'train_ma_over_torchvision/{dtype}', fig(f'train/pcma/{dtype}', 's_per_step'),
          fig(f'train/torchvision/{dtype}', 's_per_step'), 'train_ma_over_torchvision')
    ratio(f'train_ma_over_plain/{dtype}', fig(f'train/pcma/{dtype}', 's_per_step'),
          fig(f'train/plain/{dtype}', 's_per_step'), '')
    ratio(f'clip_ma_over_plain/{dtype}', fig(f'clip/pcma/{dtype}', 'ms_per_frame'),
          fig(f'clip/plain/{dtype}', 'ms_per_frame'), '')
  for system in ('pcma', 'plain'):
    ratio(f'train_compile_bf16_over_fp32/{system}', fig(f'train/{system}/bfloat16', 'compile_s'),
          fig(f'train/{system}/float32', 'compile_s'), 'train_compile_bf16_over_fp32')
  ratio('attention_chunked_over_dense_ms/float32', fig('attention/chunked/float32', 'ms'),
        fig('attention/dense/float32', 'ms'), '')
  ratio('attention_chunked_over_dense_peak/float32', fig('attention/chunked/float32', 'peak_bytes'),
        fig('attention/dense/float32', 'peak_bytes'), '')
  return out


def print_table(report: Report, ratios: list[dict], gpu: bool):
  rows = []
  for name, f in report.figures.items():
    if name == 'context' or name.startswith('ratio/'):
      continue
    if 'skipped' in f:
      rows.append((name, 'skipped', f['skipped'][:60], ''))
    elif 'ms_per_frame' in f:
      compile_s = f.get('compile_s')
      rows.append((name, f"{f['ms_per_frame']:.2f} ms/frame", f"{f['frames_per_s']:.2f} frames/s",
                   f'compile {compile_s:.1f} s' if compile_s is not None else f.get('loaded', '')))
    elif 's_per_step' in f:
      compile_s = f.get('compile_s')
      rows.append((name, f"{f['s_per_step']:.3f} s/step", '',
                   f'compile {compile_s:.1f} s' if compile_s is not None else f.get('loaded', '')))
    elif 'ms' in f:
      peak = f.get('peak_bytes')
      rows.append((name, f"{f['ms']:.2f} ms", f'peak {peak / 2**20:.1f} MiB' if peak else '',
                   f"scores {f['score_matrix_bytes'] / 2**20:.0f} MiB"))
  for f in ratios:
    target = f.get('target')
    mark = '' if f.get('meets_target') is None else ('ok' if f['meets_target'] else 'MISSED')
    rows.append((f['figure'], f"{f['value']:.3f}" if f.get('value') is not None else '-',
                 f'target {target}' if target is not None else '', mark))
  width = [max(len(str(r[i])) for r in rows) if rows else 0 for i in range(4)]
  print(f"\n# summary ({'GPU targets' if gpu else 'CPU targets'}; one JSON line per figure above)")
  for r in rows:
    print('  '.join(str(c).ljust(w) for c, w in zip(r, width)).rstrip())


if __name__ == '__main__':
  main()
