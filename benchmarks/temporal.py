"""Per-frame streaming time and compile time of every temporal system, in one interleaved run.

    python benchmarks/temporal.py                              # 352x480, 4 timed frames x 3 rounds
    python benchmarks/temporal.py --size 720 960 --frames 10 --rounds 5

Models (ResNet50 at output stride 8, batch 1, random weights: the time does not depend on them), each through
`models.build` and streamed with the jitted one-frame `step`, the memory carried from frame to frame:
  plain   ResNet50-vd + DeepLabV3+, no memory (the per-frame baseline of MA-ResNet)
  pcma    MA-ResNet50-vd + DeepLabV3+, PCMA as in the authors' code (T = 1, r = 0.25)
  tma     TMANet R50-D8 as in the authors' Cityscapes config (ResNetV1c-50, TMA on stage 4, T = 2, key 64,
          value 256, classifier head)
Compile time = lowering + XLA compilation of `step` for that frame size. Frames are timed in rounds, the
models interleaved within each round, so that load on a shared machine hits all alike; medians are printed.
This prints figures; it is not a test.
"""
from __future__ import annotations

import argparse
import os

import jax
import numpy as np

from ma_resnet.models import build, default_model_config
from ma_resnet.models.build import tmanet_r50_d8
from timing import he_normal_variables, streaming_runner  # benchmarks/timing.py (this folder is on sys.path)

NUM_CLASSES = 19


def model_configs() -> dict:
  plain, pcma = default_model_config(), default_model_config()
  plain.temporal = 'plain'
  return {'plain': plain, 'pcma': pcma, 'tma': tmanet_r50_d8(default_model_config(), memory_length=2)}


def streamer(config, size):
  """(compile seconds, run(frames) -> seconds per frame) for a model streamed with its jitted `step`."""
  model = build(config, NUM_CLASSES)
  variables = he_normal_variables(model, (1, 1) + size + (3,))
  frame = jax.random.normal(jax.random.key(1), (1,) + size + (3,))
  return streaming_runner(model, variables, frame, model.init_memory(1, size))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--size', type=int, nargs=2, default=(352, 480), metavar=('H', 'W'))
  parser.add_argument('--frames', type=int, default=4, help='timed frames per model and round')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--models', nargs='+', default=('plain', 'pcma', 'tma'))
  args = parser.parse_args()
  size = tuple(args.size)
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs, '
        f'load average {os.getloadavg()[0]:.1f}; batch 1, {size[0]}x{size[1]}, output stride 8', flush=True)
  configs = model_configs()
  runners, compile_seconds = {}, {}
  for name in args.models:
    compile_seconds[name], runners[name] = streamer(configs[name], size)
    print(f'{name}: compiled in {compile_seconds[name]:.1f} s', flush=True)
  times = {name: [] for name in runners}
  for r in range(args.rounds):
    for name, run in runners.items():
      times[name].append(run(args.frames))
    print(f'round {r + 1}: ' + ', '.join(f'{n} {1e3 * t[-1]:.0f} ms' for n, t in times.items()), flush=True)
  base = np.median(times['plain']) if 'plain' in times else None
  print('\n| model | ms/frame (median) | frames/s | / plain | step compile s |')
  print('| --- | ---: | ---: | ---: | ---: |')
  for name, t in times.items():
    median = float(np.median(t))
    ratio = f'{median / base:.3f}' if base else '-'
    print(f'| {name} | {1e3 * median:.1f} | {1 / median:.2f} | {ratio} | {compile_seconds[name]:.1f} |')


if __name__ == '__main__':
  main()
