"""Per-frame cost of STF and MAR beside the PSPNet-50 feature extractor they run on (paper 003, Table 6).

    python benchmarks/stf_mar.py                          # 352x480 and 384x512, 3 timed frames x 3 rounds,
                                                          # XLA FLOPs at 1024x2048
    python benchmarks/stf_mar.py --sizes 384 512 --frames 5 --rounds 5 --flops-size 0 0   # no FLOP count

The authors' model (`models.build.stf_pspnet50`, random weights: times do not depend on them), batch 1, each
part jitted alone on the maps it takes, per output frame:
  pspnet   the extractor of one frame: ResNetV1c-50 (output stride 8) + the PSP bottleneck -> 'psp' (h, w, 512).
           Streaming extracts every frame once; the paper's Table 6 counts the 3 frames of a window.
  stf      STF on the window (t-1, t, t+1) of 'psp' maps -> the fused map (embeddings resized included)
  mar      MAR on the fused map
  head     the classifier (1x1 conv to 19 classes)
  step     the whole streamed step (extractor of the new frame + STF + MAR + classifier + x8 upsampling)
STF needs feature maps of whole 16x16 blocks (frames multiples of 128): at 352x480 the features are 44x60, which
the authors' code (and this one) refuse, so STF and the step are timed at 384x512 (48x64) and marked n/a at
352x480. Times are medians over rounds, the parts interleaved within each round (load on a shared machine hits
all alike).

FLOPs: XLA's cost analysis of each compiled part at --flops-size (default 1024x2048, the paper's frames; 1/8
features 128x256, the embeddings' stored size), beside the paper's MACs. XLA counts a multiply-add as 2 FLOPs,
so GMAC = GFLOPs / 2. This prints figures; it is not a test.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ma_resnet.models import build, default_model_config
from ma_resnet.models.build import stf_pspnet50
from timing import streaming_runner  # benchmarks/timing.py (this folder is on sys.path)

NUM_CLASSES = 19
PAPER_GMAC = {'pspnet x3': 4285.9, 'stf': 563.5, 'mar': 31.5, 'head': 0.5}  # Table 6, 1024x2048 frames


def make_model():
  config = stf_pspnet50(default_model_config(), mar=True)
  model = build(config, NUM_CLASSES)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1, 128, 128, 3)))
  return model, variables


def part_functions(model) -> dict:
  """name -> (jitted fn(variables, x), input shape for frames of size (H, W))."""
  stage = model.temporal.options.stage
  channels = model.temporal.channels

  def feature_shape(size):
    return model.backbone.feature_shapes(size)[stage][:2]

  fns = {
      'pspnet': (lambda v, x: model.apply(v, x, method=lambda m, x: m.backbone(x, stages=(stage,))[stage]),
                 lambda size: (1,) + tuple(size) + (3,)),
      'stf': (lambda v, x: model.apply(v, x, method=lambda m, x: m.temporal.stf(x, False)),
              lambda size: (1, 3) + feature_shape(size) + (channels,)),
      'mar': (lambda v, x: model.apply(v, x, method=lambda m, x: m.temporal.mar(x, False)),
              lambda size: (1,) + feature_shape(size) + (channels,)),
      'head': (lambda v, x: model.apply(v, x, method=lambda m, x: m.head({stage: x})),
               lambda size: (1,) + feature_shape(size) + (channels,)),
  }
  return {name: (jax.jit(fn), shape) for name, (fn, shape) in fns.items()}


def fits(model, size) -> bool:
  h, w = model.backbone.feature_shapes(size)[model.temporal.options.stage][:2]
  bh, bw = model.temporal.options.block_size
  return h % bh == 0 and w % bw == 0


def streamed_step(model, variables, size):
  """run(frames) -> seconds per frame of the jitted `step` (memory carried; 2 frames fed first)."""
  frame = jax.random.normal(jax.random.key(1), (1,) + tuple(size) + (3,))
  return streaming_runner(model, variables, frame, model.init_memory(1, size), warmup=2)[1]


def timed(fn, variables, x):
  jax.block_until_ready(fn(variables, x))  # compile

  def run(frames):
    start = time.perf_counter()
    for _ in range(frames):
      out = fn(variables, x)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / frames
  return run


def xla_flops(fn, variables, shape) -> float:
  compiled = jax.jit(fn).lower(variables, jax.ShapeDtypeStruct(shape, jnp.float32)).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get('flops', float('nan')))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sizes', type=int, nargs='+', default=(352, 480, 384, 512),
                      help='frame sizes H W [H W ...]')
  parser.add_argument('--frames', type=int, default=3, help='timed frames per part and round')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--flops-size', type=int, nargs=2, default=(1024, 2048), metavar=('H', 'W'),
                      help='frame size of the XLA FLOP count (0 0: none)')
  args = parser.parse_args()
  if len(args.sizes) % 2:
    parser.error('--sizes takes pairs H W')
  sizes = [tuple(args.sizes[i:i + 2]) for i in range(0, len(args.sizes), 2)]
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs, '
        f'load average {os.getloadavg()[0]:.1f}; batch 1, STF + MAR on PSPNet-50 (random weights)', flush=True)
  model, variables = make_model()
  parts = part_functions(model)
  runners = {}
  for size in sizes:
    for name, (fn, shape) in parts.items():
      if name in ('stf',) and not fits(model, size):
        continue
      x = jax.random.uniform(jax.random.key(2), shape(size))
      runners[size, name] = timed(fn, variables, x)
    if fits(model, size):
      runners[size, 'step'] = streamed_step(model, variables, size)
    print(f'{size[0]}x{size[1]}: compiled {", ".join(n for s, n in runners if s == size)}', flush=True)
  times = {key: [] for key in runners}
  for r in range(args.rounds):
    for key, run in runners.items():
      times[key].append(run(args.frames))
    print(f'round {r + 1}: ' + ', '.join(f'{s[0]}x{s[1]} {n} {1e3 * t[-1]:.0f} ms' for (s, n), t in times.items()),
          flush=True)

  print('\n| frame | features | part | ms / frame (median) | / pspnet (1 frame) |')
  print('| --- | --- | --- | ---: | ---: |')
  for size in sizes:
    fh, fw = model.backbone.feature_shapes(size)['psp'][:2]
    base = np.median(times[size, 'pspnet'])
    for name in ('pspnet', 'stf', 'mar', 'head', 'step'):
      if (size, name) not in times:
        print(f'| {size[0]}x{size[1]} | {fh}x{fw} | {name} | n/a: {fh}x{fw} is not whole 16x16 blocks | - |')
        continue
      median = float(np.median(times[size, name]))
      print(f'| {size[0]}x{size[1]} | {fh}x{fw} | {name} | {1e3 * median:.1f} | {median / base:.3f} |')

  if args.flops_size[0] > 0:
    size = tuple(args.flops_size)
    print(f'\nXLA cost analysis at {size[0]}x{size[1]} (features '
          f'{"x".join(map(str, model.backbone.feature_shapes(size)["psp"][:2]))}); GMAC = GFLOPs / 2:', flush=True)
    flops = {name: xla_flops(fn, variables, shape(size)) for name, (fn, shape) in parts.items()}
    flops['pspnet x3'] = 3 * flops['pspnet']
    print('\n| part | XLA GFLOPs | GMAC (= GFLOPs / 2) | paper GMAC (Table 6) | ours / paper | / pspnet x3 (ours) | '
          '/ pspnet x3 (paper) |')
    print('| --- | ---: | ---: | ---: | ---: | ---: | ---: |')
    for name in ('pspnet', 'pspnet x3', 'stf', 'mar', 'head'):
      gflops = flops[name] / 1e9
      paper = PAPER_GMAC.get(name)
      ours_ratio = flops[name] / flops['pspnet x3']
      paper_ratio = f'{paper / PAPER_GMAC["pspnet x3"]:.4f}' if paper else '-'
      vs = f'{gflops / 2 / paper:.3f}' if paper else '-'
      print(f'| {name} | {gflops:.1f} | {gflops / 2:.1f} | {paper if paper else "-"} | {vs} | {ours_ratio:.4f} | '
            f'{paper_ratio} |')


if __name__ == '__main__':
  main()
