"""Per-frame streaming time of each segmentation head, plain ResNet50-vd vs MA-ResNet50 (CPU or accelerator).

For every head: the model from `build` (ResNet50-vd, output stride 8 by default, batch 1, frames H x W),
`model.step` under `jax.jit` with the memory carried from frame to frame (as video inference runs it),
`--warmup` frames first (compilation + first runs, not timed), then `--frames` frames of each model timed one
by one with `block_until_ready`, plain and MA frames interleaved so that both see the same load on a shared
machine. Prints the median per-frame time, frames per second and the MA / plain ratio.

    python benchmarks/heads.py                         # 352x480, OS 8, the four heads, 5 timed frames
    python benchmarks/heads.py --heads pspnet sfnet --frames 20 --memory-length 2
    python benchmarks/heads.py --pcma-stages stage1 stage2 stage3 stage4

Weights are random (He-normal, numpy, from `jax.eval_shape(model.init)`, which avoids compiling the
initialisers): the time does not depend on them. The MA model uses `default_model_config().pcma` with PCMA on
the stages each head reads (`--pcma-stages` overrides; the builder drops a stage the head does not read).
This prints figures; it is not a test.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ma_resnet.models import build, default_model_config

HEADS = ('pspnet', 'sfnet', 'dnlnet', 'fcn')


def random_variables(model, frame_shape, seed: int = 0):
  """He-normal kernels, zero biases, unit batch-norm scales / variances, for the variable tree of `model`."""
  keys = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  shapes = jax.eval_shape(model.init, keys, jax.ShapeDtypeStruct((1, 1) + frame_shape, jnp.float32))
  rng = np.random.default_rng(seed)

  def make(path, s):
    name = getattr(path[-1], 'key', '')
    if name == 'kernel':
      return jnp.asarray((rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))).astype(np.float32))
    return jnp.asarray(np.ones(s.shape, np.float32) if name in ('scale', 'var') else np.zeros(s.shape, np.float32))

  return jax.tree_util.tree_map_with_path(make, shapes)


class Stream:
  """A model streaming frames: `model.step` under `jax.jit`, the memory carried from frame to frame."""

  def __init__(self, config, num_classes: int, size: tuple[int, int]):
    self.model = model = build(config, num_classes)
    h, w = size
    self.variables = random_variables(model, (h, w, 3))
    self.step = jax.jit(lambda v, frame, memory: model.apply(v, frame, memory, method=model.step))
    self.memory = model.init_memory(1, (h, w))
    rng = np.random.default_rng(1)
    self.frames = [jnp.asarray(rng.standard_normal((1, h, w, 3)).astype(np.float32)) for _ in range(4)]
    self.count = 0

  def next_frame(self) -> float:
    """Runs one frame; returns its wall time in seconds (dispatch to `block_until_ready`)."""
    frame = self.frames[self.count % len(self.frames)]
    start = time.perf_counter()
    out = self.step(self.variables, frame, self.memory)
    jax.block_until_ready(out.logits)
    elapsed = time.perf_counter() - start
    self.memory = out.memory
    self.count += 1
    return elapsed


def time_pair(configs: dict, num_classes: int, size: tuple[int, int], warmup: int, frames: int) -> dict:
  """Seconds per frame of each config, the timed frames interleaved (plain, MA, plain, MA, ...) so that both
  see the same load on a shared machine."""
  streams = {name: Stream(config, num_classes, size) for name, config in configs.items()}
  for stream in streams.values():
    for _ in range(warmup):
      stream.next_frame()
  times = {name: [] for name in streams}
  for _ in range(frames):
    for name, stream in streams.items():
      times[name].append(stream.next_frame())
  return times


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--heads', nargs='+', default=list(HEADS), help='heads to time (any name in build.HEADS)')
  parser.add_argument('--size', nargs=2, type=int, default=(352, 480), metavar=('H', 'W'))
  parser.add_argument('--output-stride', type=int, default=8)
  parser.add_argument('--depth', type=int, default=50)
  parser.add_argument('--classes', type=int, default=11)
  parser.add_argument('--warmup', type=int, default=2, help='untimed frames first (the first one compiles)')
  parser.add_argument('--frames', type=int, default=5, help='timed frames per model')
  parser.add_argument('--memory-length', type=int, default=None, help='PCMA memory length T (config default)')
  parser.add_argument('--pcma-stages', nargs='+', default=None,
                      help='PCMA stages (default: every stage the head reads)')
  args = parser.parse_args(argv)

  base = default_model_config()
  base.depth, base.variant, base.output_stride = args.depth, 'vd', args.output_stride
  if args.depth != 50:
    base.multi_grid = None
  if args.memory_length is not None:
    base.pcma.memory_length = args.memory_length
  base.pcma.stages = tuple(args.pcma_stages or ('stage1', 'stage2', 'stage3', 'stage4'))

  print(f'jax {jax.__version__}, device {jax.devices()[0].device_kind} ({jax.default_backend()}), '
        f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {platform.processor() or platform.machine()}')
  print(f'ResNet{args.depth}-vd, output stride {args.output_stride}, batch 1, {args.size[0]}x{args.size[1]}, '
        f'{args.classes} classes; MA: PCMA stages {tuple(base.pcma.stages)} that the head reads, '
        f'T={base.pcma.memory_length}, '
        f'r={base.pcma.ratio}; model.step under jax.jit, memory carried; {args.warmup} warm-up + '
        f'{args.frames} timed frames per model, interleaved')
  rows = []
  for head in args.heads:
    configs = {}
    for encoder in ('plain', 'ma'):
      config = ml_collections.ConfigDict(base.to_dict())
      config.temporal, config.head = 'pcma' if encoder == 'ma' else 'plain', head
      if head != 'deeplabv3plus':
        config.head_options = ml_collections.ConfigDict({})
      configs[encoder] = config
    times = time_pair(configs, args.classes, tuple(args.size), args.warmup, args.frames)
    result = {}
    for encoder, t in times.items():
      result[encoder] = statistics.median(t)
      print(f'  {head:14s} {encoder:5s} median {1e3 * result[encoder]:8.1f} ms/frame '
            f'(mean {1e3 * statistics.fmean(t):.1f}, min {1e3 * min(t):.1f}, max {1e3 * max(t):.1f})', flush=True)
    rows.append((head, result))

  print()
  print('| head | plain ms/frame | MA ms/frame | plain fps | MA fps | MA / plain |')
  print('| --- | ---: | ---: | ---: | ---: | ---: |')
  for head, r in rows:
    plain, ma = r['plain'], r['ma']
    print(f'| {head} | {1e3 * plain:.1f} | {1e3 * ma:.1f} | {1 / plain:.2f} | {1 / ma:.2f} | {ma / plain:.3f} |')
  print('(medians over the timed frames)')


if __name__ == '__main__':
  main()
