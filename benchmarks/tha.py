"""LERNet + THA: parameters and FLOPs (paper Tables 3, 5) and per-frame time of key and non-key frames.

    python benchmarks/tha.py                       # both parts
    python benchmarks/tha.py --only=flops
    python benchmarks/tha.py --only=speed --sizes 512x1024 360x480 --frames 5 --rounds 3

flops: parameters and XLA cost analysis of LERNet with its decoder (19 classes) on one 512x1024 frame, for both
  readings of the RDDS branch width and the single-branched ablation, beside the paper's 0.65 M / 12.7 G and
  0.37 M / 5.0 G. XLA counts a multiply-add as 2 FLOPs; the paper's "GFLOPs" match multiply-adds (see docs/systems.md).
speed: the jitted one-frame `step`, batch 1: a key frame (the whole LERNet + THA bookkeeping), a non-key frame
  (P_l + THA + decoder), their average over K = 5 (1 key + 4 non-key), streaming 5 frames in a row, and
  MA-ResNet50-vd + DeepLabV3+ beside them; all interleaved in rounds, medians printed. This prints figures; it
  is not a test.
"""
from __future__ import annotations

import argparse
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from ma_resnet.models import build, default_model_config
from ma_resnet.models.build import lernet_tha
from timing import he_normal_variables, streaming_runner  # benchmarks/timing.py (this folder is on sys.path)

PAPER = {'full': (0.65, 12.7), 'single': (0.37, 5.0)}


def flops():
  print('# LERNet + decoder (19 classes), one 512x1024 frame: parameters, XLA cost analysis')
  print(f'{"variant":<28} {"params":>9} {"GFLOP (XLA)":>12} {"G mult-adds":>12}   paper')
  for name, options in (('double branch, full width', {}), ('double branch, half width', {'branch_width': 'half'}),
                        ('single branch (ablation)', {'single_branch': True})):
    config = lernet_tha(default_model_config(), tha=False)
    config.lernet.update(options)
    model = build(config, 19)
    frame = jax.ShapeDtypeStruct((1, 512, 1024, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 1, 512, 1024, 3), jnp.float32))
    params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables['params']))
    step = jax.jit(functools.partial(model.apply, method=model.step))
    cost = step.lower(variables, frame, {}).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    paper = PAPER['single' if options.get('single_branch') else 'full']
    print(f'{name:<28} {params / 1e6:8.3f}M {cost["flops"] / 1e9:12.2f} {cost["flops"] / 2e9:12.2f}   '
          f'{paper[0]} M, {paper[1]} G')


def speed(sizes, frames: int, rounds: int):
  print(f'# per-frame time, batch 1, jitted step; jax {jax.__version__} on {jax.devices()[0].platform}, '
        f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}')
  for size in sizes:
    runners = {}
    tha = build(lernet_tha(default_model_config(), tha=True, key_interval=5), 19)
    variables = he_normal_variables(tha, (1, 1) + size + (3,))
    frame = jax.random.normal(jax.random.key(1), (1,) + size + (3,))
    empty = tha.init_memory(1, size)
    key_memory = empty.replace(seen=jnp.zeros((1,), jnp.int32))       # position 0: a key frame
    non_key_memory = empty.replace(seen=jnp.ones((1,), jnp.int32))    # position 1: a non-key frame
    runners['key frame'] = streaming_runner(tha, variables, frame, key_memory, advance=False)[1]
    runners['non-key frame'] = streaming_runner(tha, variables, frame, non_key_memory, advance=False)[1]
    runners['streaming, K = 5'] = streaming_runner(tha, variables, frame, empty)[1]
    ma = build(default_model_config(), 19)
    runners['MA-ResNet50 + DeepLabV3+'] = streaming_runner(ma, he_normal_variables(ma, (1, 1) + size + (3,)), frame,
                                                           ma.init_memory(1, size))[1]
    times = {name: [] for name in runners}
    for _ in range(rounds):
      for name, run in runners.items():
        times[name].append(run(frames))
    med = {name: float(np.median(t)) for name, t in times.items()}
    average = (med['key frame'] + (5 - 1) * med['non-key frame']) / 5
    print(f'\n{size[0]}x{size[1]}: {frames} frames x {rounds} rounds')
    print('| frame | ms/frame | frames/s | / key frame |')
    print('| --- | ---: | ---: | ---: |')
    rows = list(med.items()) + [('average over K = 5 (1 key + 4 non-key)', average)]
    for name, t in rows:
      print(f'| {name} | {1e3 * t:.1f} | {1 / t:.1f} | {t / med["key frame"]:.3f} |')


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--only', choices=('flops', 'speed'))
  parser.add_argument('--sizes', nargs='+', default=['512x1024', '360x480'])
  parser.add_argument('--frames', type=int, default=5)
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  if args.only in (None, 'flops'):
    flops()
  if args.only in (None, 'speed'):
    speed([tuple(int(v) for v in s.split('x')) for s in args.sizes], args.frames, args.rounds)


if __name__ == '__main__':
  main()
