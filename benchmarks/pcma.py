"""PCMA benchmarks: per-frame overhead, scan compile time, and the paper's Table 4 from XLA cost analysis.

    python benchmarks/pcma.py                 # all three
    python benchmarks/pcma.py --only=overhead --frames=20
    python benchmarks/pcma.py --only=compile
    python benchmarks/pcma.py --only=flops

overhead: per-frame time of MA-ResNet50-vd + DeepLabV3+ over plain ResNet50-vd + DeepLabV3+ at 352x480,
  output stride 8, batch 1, streaming with the jitted one-frame `step` (memory carried), both measured in
  this run, interleaved in rounds so that machine load hits both alike. Target <= 1.05.
compile: lowering + XLA compile time of the scanned clip `apply` for T=2 vs T=16 frames. Target <= x1.2.
flops: FLOPs of the MA-ResNet50 encoder (one streaming frame, memory full) over ResNet50's, for
  r in {0.125, 0.25, 0.5} and T in {1, 2, 3}, beside the paper's Table 4 (224x224, output stride 32).
"""
from __future__ import annotations

import argparse
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ma_resnet.models import PCMA, PCMAOptions, Plain, ResNet, VideoSegmenter, build, default_model_config
from ma_resnet.models.backbones.resnet import stage_channels

PAPER_TABLE4 = {  # (r, T) -> MA-ResNet50 FLOPs as % of ResNet50
    (0.125, 1): 102.59, (0.125, 2): 104.43, (0.125, 3): 106.01,
    (0.25, 1): 107.08, (0.25, 2): 110.38, (0.25, 3): 113.80,
    (0.5, 1): 121.13, (0.5, 2): 128.03, (0.5, 3): 134.80,
}


def reference_config(temporal: str):
  config = default_model_config()
  config.temporal = temporal
  return config


def streaming_step(model, size, batch=1):
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((batch, 1) + size + (3,)))
  step = jax.jit(functools.partial(model.apply, method=model.step))
  return variables, step


def overhead(frames: int, rounds: int, size=(352, 480)):
  print(f'# per-frame time, batch 1, {size[0]}x{size[1]}, ResNet50-vd OS8 + DeepLabV3+, jitted step')
  runners = {}
  for encoder in ('plain', 'ma'):
    model = build(reference_config('pcma' if encoder == 'ma' else 'plain'), num_classes=11)
    variables, step = streaming_step(model, size)
    frame = jax.random.normal(jax.random.key(1), (1,) + size + (3,))
    memory = model.init_memory(1, size)
    for _ in range(3):  # compile, fill the memory
      out = step(variables, frame, memory)
      memory = out.memory
    jax.block_until_ready(out.logits)
    runners[encoder] = (step, variables, frame, memory)
  times = {'plain': [], 'ma': []}
  for _ in range(rounds):
    for encoder, (step, variables, frame, memory) in runners.items():
      start = time.perf_counter()
      for _ in range(frames):
        out = step(variables, frame, memory)
        memory = out.memory
      jax.block_until_ready(out.logits)
      times[encoder].append((time.perf_counter() - start) / frames)
  plain, ma = np.median(times['plain']), np.median(times['ma'])
  print(f'plain ResNet50 + DeepLabV3+   {plain * 1e3:8.1f} ms/frame')
  print(f'MA-ResNet50 + DeepLabV3+      {ma * 1e3:8.1f} ms/frame')
  print(f'MA / plain                    {ma / plain:8.3f}   (target <= 1.05; paper V100 fps ratio x1.19)')


def compile_time(size=(96, 128)):
  print(f'# compile time of the scanned clip apply, MA-ResNet50-vd + DeepLabV3+, {size[0]}x{size[1]}')
  model = build(reference_config('pcma'), num_classes=11)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1) + size + (3,)))
  results = {}
  for t in (2, 16):
    clip = jnp.zeros((1, t) + size + (3,))
    apply = jax.jit(model.apply)  # a fresh jit: nothing cached from the other length
    start = time.perf_counter()
    apply.lower(variables, clip).compile()
    results[t] = time.perf_counter() - start
    print(f'T={t:2d}: {results[t]:6.1f} s')
  print(f'T=16 / T=2: {results[16] / results[2]:.2f}   (target <= 1.2)')


class _ConsumeAllStages(nn.Module):
  """A head that only reads every stage map, so XLA keeps all of the encoder in the FLOP count."""
  @nn.compact
  def __call__(self, features, train=False):
    total = sum(jnp.mean(x) for x in features.values())
    return features['stage1'][..., :1] + total


def encoder_flops(pcma: PCMAOptions | None, size=(224, 224)) -> float:
  channels = stage_channels(50)
  temporal = Plain() if pcma is None else PCMA(pcma, tuple(channels[s] for s in pcma.stages))
  model = VideoSegmenter(ResNet(50, 'torchvision', output_stride=32), temporal, _ConsumeAllStages(), 1)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1) + size + (3,))))
  memory = model.init_memory(1, size)
  frame = jax.ShapeDtypeStruct((1,) + size + (3,), jnp.float32)
  step = jax.jit(functools.partial(model.apply, method=model.step))
  cost = step.lower(variables, frame, memory).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def flops():
  print('# FLOPs (XLA cost analysis), one frame 224x224, OS32, encoder only, MA / ResNet50 in %')
  base = encoder_flops(None)
  print(f'ResNet50: {base / 1e9:.2f} GFLOP (XLA counts a multiply-add as 2)')
  print(f'{"r":>6} {"T":>2} {"stages 1-3 (code)":>18} {"stages 1-4":>11} {"paper":>7}')
  for (r, t), paper in PAPER_TABLE4.items():
    code = encoder_flops(PCMAOptions(ratio=r, memory_length=t, stages=('stage1', 'stage2', 'stage3'))) / base * 100
    all4 = encoder_flops(PCMAOptions(ratio=r, memory_length=t,
                                     stages=('stage1', 'stage2', 'stage3', 'stage4'))) / base * 100
    print(f'{r:6.3f} {t:2d} {code:17.2f}% {all4:10.2f}% {paper:6.2f}%')


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--only', choices=('overhead', 'compile', 'flops'))
  parser.add_argument('--frames', type=int, default=5, help='frames per timing round')
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  print(f'jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s))')
  if args.only in (None, 'overhead'):
    overhead(args.frames, args.rounds)
  if args.only in (None, 'compile'):
    compile_time()
  if args.only in (None, 'flops'):
    flops()


if __name__ == '__main__':
  main()
