"""Per-frame inference time beside the PyTorch model people use today, all measured in this one run.

    python benchmarks/peers.py                         # 352x480, batch 1, 3 rounds of 4 frames each
    python benchmarks/peers.py --rounds=5 --frames=6 --torch-threads=2

At 352x480, output stride 8, batch 1, 11 classes (CamVid), random weights (speed does not depend on them):
  (a) our MA-ResNet50-vd + DeepLabV3+ streaming with the jitted one-frame `step` (memory carried, PCMA on
      stages 1-3, r = 0.25, T = 1: the authors' configuration),
  (b) our plain ResNet50-vd + DeepLabV3+ (same `step`, no memory),
  (c) torchvision's `deeplabv3_resnet50` (ResNet50 with dilation in stages 3-4 = output stride 8, ASPP,
      no auxiliary head) in `torch.inference_mode()`, one frame at a time (it has no memory).
The three run interleaved in rounds (a, b, c, a, b, c, ...) so that machine load hits them alike; the medians
over rounds are reported, with the ratios (a)/(c) (target <= 0.8), (b)/(c) and (a)/(b).

torchvision is loaded from its installed source files without `import torchvision` (its compiled ops need a
CUDA-matched build; see tests/torch_utils.py): `pip install torch==2.13.0` and
`pip install --no-deps torchvision==0.28.0`, as in `.ci/run`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

from pcma import reference_config, streaming_step  # benchmarks/pcma.py (this folder is on sys.path)
from timing import streaming_runner

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests'))

NUM_CLASSES = 11


def ours(temporal: str, size):
  """A `run(frames) -> seconds per frame` for our model streamed with `step` (compiled and memory filled)."""
  from ma_resnet.models import build
  model = build(reference_config(temporal), num_classes=NUM_CLASSES)
  variables, _ = streaming_step(model, size)
  frame = jax.random.normal(jax.random.key(1), (1,) + size + (3,))
  _, run = streaming_runner(model, variables, frame, model.init_memory(1, size))  # compiled, memory filled
  params = sum(x.size for x in jax.tree.leaves(variables['params']))
  return run, params


def torchvision_deeplabv3(size, threads: int):
  """A `run(frames) -> seconds per frame` for torchvision's deeplabv3_resnet50 (eval mode, inference_mode)."""
  import torch
  from torch_utils import load_torchvision_deeplabv3
  torch.set_num_threads(threads)
  module = load_torchvision_deeplabv3()
  net = module.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                  aux_loss=False).eval()
  frame = torch.randn(1, 3, *size)
  with torch.inference_mode():
    for _ in range(2):
      out = net(frame)['out']
  assert tuple(out.shape) == (1, NUM_CLASSES) + tuple(size), out.shape
  params = sum(p.numel() for p in net.parameters())

  def run(frames: int) -> float:
    with torch.inference_mode():
      start = time.perf_counter()
      for _ in range(frames):
        net(frame)
      return (time.perf_counter() - start) / frames
  return run, params


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--size', default='352,480', help='H,W of the frames')
  parser.add_argument('--frames', type=int, default=4, help='frames timed per model per round')
  parser.add_argument('--rounds', type=int, default=3, help='interleaved rounds (medians reported)')
  parser.add_argument('--torch-threads', type=int, default=os.cpu_count(),
                      help='torch intra-op threads (default: every core, as XLA uses)')
  args = parser.parse_args()
  size = tuple(int(s) for s in args.size.split(','))
  if len(size) != 2 or min(size) < 32:
    parser.error(f'--size must be H,W with both >= 32, got {args.size!r}')

  print(f'# per-frame time, batch 1, {size[0]}x{size[1]}, output stride 8, {NUM_CLASSES} classes; '
        f'{args.rounds} interleaved rounds of {args.frames} frames; jax {jax.__version__} on '
        f'{jax.devices()[0].platform} ({os.cpu_count()} cores, XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}), '
        f'torch threads {args.torch_threads}')
  runners = {}
  names = {'a': 'MA-ResNet50-vd + DeepLabV3+ (ours, step)', 'b': 'ResNet50-vd + DeepLabV3+ (ours, plain)',
           'c': 'torchvision deeplabv3_resnet50'}
  for key, make in (('a', lambda: ours('pcma', size)), ('b', lambda: ours('plain', size)),
                    ('c', lambda: torchvision_deeplabv3(size, args.torch_threads))):
    start = time.perf_counter()
    runners[key] = make()
    print(f'  built + warmed up {names[key]}: {time.perf_counter() - start:.1f} s, '
          f'{runners[key][1] / 1e6:.2f} M parameters', flush=True)
  times = {key: [] for key in runners}
  for r in range(args.rounds):
    for key, (run, _) in runners.items():
      times[key].append(run(args.frames))
    print(f'  round {r + 1}: ' + ', '.join(f'({k}) {t[-1] * 1e3:.0f} ms' for k, t in times.items()), flush=True)
  med = {key: float(np.median(t)) for key, t in times.items()}
  for key in runners:
    print(f'({key}) {names[key]:<44} {med[key] * 1e3:9.1f} ms/frame  {1 / med[key]:6.2f} frames/s')
  print(f'(a)/(c) {med["a"] / med["c"]:.3f}   (target <= 0.8: temporal memory for less than the per-frame '
        'PyTorch model costs)')
  print(f'(b)/(c) {med["b"] / med["c"]:.3f}')
  print(f'(a)/(b) {med["a"] / med["b"]:.3f}   (PCMA overhead)')


if __name__ == '__main__':
  main()
