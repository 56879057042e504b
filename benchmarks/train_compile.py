r"""Compile time of the training step, float32 vs bfloat16, and what XLA makes of it (optimized HLO counts).

    python benchmarks/train_compile.py                                  # configs/camvid.py at 96x128, MA and plain
    python benchmarks/train_compile.py --size 240,320 --repeats 3 --set model.remat=True

For each system (model.temporal) and compute dtype, in interleaved repeats: seconds to lower (trace to
StableHLO) and to compile the jitted `training.make_train_step` of the config on batches of its shape
(2 clips x 2 frames for camvid.py), then the optimized HLO's instruction count and its converts, fusions,
convolutions and while loops. Medians per variant and the bfloat16 / float32 compile ratio (the target:
<= 1.2). On a backend that emulates bfloat16 (XLA:CPU) the converts show the emulation.
This prints figures; it is not a test.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from ma_resnet import models, train_config, training
from ma_resnet import data as data_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(config) -> dict:
  b, t = int(config.batch_size), int(config.data.clip_length)
  h, w = (int(s) for s in config.data.crop_size)
  model = models.build(config.model, data_lib.num_classes(config.data))
  schedule = training.learning_rate_schedule(config)
  state = jax.eval_shape(lambda: training.create_train_state(
      config, model, training.make_optimizer(config, schedule), jax.random.key(0)))
  batch = {'frames': jax.ShapeDtypeStruct((b, t, h, w, 3), jnp.float32),
           'labels': jax.ShapeDtypeStruct((b, t, h, w), jnp.int32),
           'labelled': jax.ShapeDtypeStruct((b, t), jnp.bool_),
           'sequence_start': jax.ShapeDtypeStruct((b, t), jnp.bool_)}
  step = jax.jit(training.make_train_step(config, schedule, config.model.temporal != 'plain'))
  start = time.perf_counter()
  lowered = step.lower(state, batch, jax.random.key(1))
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  done = time.perf_counter()
  ops = collections.Counter(re.findall(r'= \S+ ([a-z][\w-]*)\(', compiled.as_text()))
  return {'lower_s': lowered_at - start, 'compile_s': done - lowered_at, 'instructions': sum(ops.values()),
          'convert': ops['convert'], 'fusion': ops['fusion'], 'convolution': ops['convolution'], 'while': ops['while']}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default=os.path.join(REPO, 'configs', 'camvid.py'))
  parser.add_argument('--size', default='96,128', help='H,W of the training crops')
  parser.add_argument('--systems', default='pcma,plain')
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--set', action='append', default=[], help='dotted.key=python literal (repeatable)')
  args = parser.parse_args()
  size = tuple(int(s) for s in args.size.split(','))
  variants = [(s, d) for s in args.systems.split(',') for d in args.dtypes.split(',')]
  print(f'jax {jax.__version__} on {jax.devices()[0].platform}; {os.path.relpath(args.config)} at {size[0]}x{size[1]} '
        f'{" ".join(args.set)}', flush=True)
  results = collections.defaultdict(list)
  for repeat in range(args.repeats):
    for system, dtype in variants:
      config = train_config.load_config(args.config, [*args.set, f'model.temporal={system!r}',
                                                      f'compute_dtype={dtype!r}', f'model.dtype={dtype!r}',
                                                      f'data.crop_size={size!r}'])
      figures = measure(config)
      results[system, dtype].append(figures)
      print(f'  repeat {repeat + 1} {system}/{dtype}: lower {figures["lower_s"]:.1f} s, compile '
            f'{figures["compile_s"]:.1f} s', flush=True)
  print('\n| system | dtype | lower s | compile s | HLO instructions | converts | fusions | convolutions | whiles |')
  print('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  medians = {}
  for (system, dtype), runs in results.items():
    med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    medians[system, dtype] = med
    print(f'| {system} | {dtype} | {med["lower_s"]:.1f} | {med["compile_s"]:.1f} | {med["instructions"]:.0f} | '
          f'{med["convert"]:.0f} | {med["fusion"]:.0f} | {med["convolution"]:.0f} | {med["while"]:.0f} |')
  for system in args.systems.split(','):
    if (system, 'float32') in medians and (system, 'bfloat16') in medians:
      ratio = medians[system, 'bfloat16']['compile_s'] / medians[system, 'float32']['compile_s']
      print(f'{system}: bfloat16 / float32 compile time {ratio:.2f} (target <= 1.2)')


if __name__ == '__main__':
  main()
