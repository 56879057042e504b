"""Evaluation frames/s under each protocol (whole, slide, flip, slide + flip, two scales), in one run.

    python benchmarks/protocols.py                              # configs/synthetic.py's model, synthetic val
    python benchmarks/protocols.py --temporal=tma --split=test  # another system, the 24-frame test split

Prints the figures; it is not a test. The model of configs/synthetic.py (any temporal module) with initial
weights, streamed by `evaluation.Evaluator` over the split under each protocol, one after another in this
process; frames/s as the evaluator counts them (every frame after the first step, host reading and scoring
included). Slide uses 48x48 windows with stride 16 on the 64x64 frames (2x2 windows: 4 lanes per frame), flip
doubles the lanes, scales 0.75 and 1.0 add a 48x48 stream.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ma_resnet import evaluation, models  # noqa: E402
from ma_resnet import data as data_lib  # noqa: E402
from ma_resnet.protocols import EvalProtocol  # noqa: E402
from ma_resnet.train_config import load_config  # noqa: E402

PROTOCOLS = {
    'whole': EvalProtocol(),
    'slide 48/16': EvalProtocol(mode='slide', crop=(48, 48), stride=(16, 16)),
    'flip': EvalProtocol(flip=True),
    'slide 48/16 + flip': EvalProtocol(mode='slide', crop=(48, 48), stride=(16, 16), flip=True),
    'scales 0.75,1': EvalProtocol(scales=(0.75, 1.0)),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--temporal', default='pcma', help='model.temporal of configs/synthetic.py')
  parser.add_argument('--split', default='val')
  parser.add_argument('--lanes', type=int, default=4, help='sequences streamed side by side')
  args = parser.parse_args()
  config = load_config(os.path.join(REPO, 'configs', 'synthetic.py'), {'model.temporal': args.temporal})
  model = models.build(config.model, data_lib.num_classes(config.data))
  size = tuple(config.data.crop_size)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1) + size + (3,)))
  print(f'{os.cpu_count()}-core {platform.machine()} CPU; {args.temporal}, synthetic {args.split}, '
        f'{args.lanes} lanes, frames {size[0]}x{size[1]}')
  base = None
  for name, protocol in PROTOCOLS.items():
    evaluator = evaluation.Evaluator(model, config.data, args.split, lanes=args.lanes, protocol=protocol)
    metrics = evaluator.evaluate(variables)
    base = base or metrics.frames_per_second
    print(f'{name:<20} {metrics.frames_per_second:8.1f} frames/s  x{metrics.frames_per_second / base:.2f} of whole'
          f'  ({metrics.frames} frames)')


if __name__ == '__main__':
  main()
