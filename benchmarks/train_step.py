"""Seconds per training step of any config (random data of the config's batch shape), without data loading.

    python benchmarks/train_step.py --config=configs/camvid_cpu.py
    python benchmarks/train_step.py --config=configs/camvid_cpu.py --set model.temporal="'plain'"
    python benchmarks/train_step.py --config=configs/camvid_cpu.py --set batch_size=2 \
        --set data.crop_size="(240, 320)" --set model.head_options="{'aspp_rates': (1, 3, 6, 9)}"

Each --set is `dotted.key=python literal` (`train_config.load_config`). Prints the compile time, the time of each timed step and the
median per step and per frame (B x T frames a step). The figures behind `configs/camvid_cpu.py`'s choices
came from this script.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ma_resnet import models, train_config, training
from ma_resnet import data as data_lib


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True, help='an experiment file under configs/')
  parser.add_argument('--set', action='append', default=[], help='dotted.key=python literal (repeatable)')
  parser.add_argument('--steps', type=int, default=3, help='timed steps after the first (compiling) one')
  args = parser.parse_args()
  config = train_config.load_config(args.config, args.set)
  b, t = int(config.batch_size), int(config.data.clip_length)
  h, w = (int(s) for s in config.data.crop_size)
  num_classes = data_lib.num_classes(config.data)
  model = models.build(config.model, num_classes)
  schedule = training.learning_rate_schedule(config)
  state = training.create_train_state(config, model, training.make_optimizer(config, schedule), jax.random.key(0))
  step = jax.jit(training.make_train_step(config, schedule, config.model.temporal != 'plain'))
  rng = np.random.default_rng(0)
  batch = {'frames': jnp.asarray(rng.normal(size=(b, t, h, w, 3)), jnp.float32),
           'labels': jnp.asarray(rng.integers(0, num_classes, size=(b, t, h, w)), jnp.int32),
           'labelled': jnp.ones((b, t), bool), 'sequence_start': jnp.zeros((b, t), bool).at[:, 0].set(True)}
  start = time.perf_counter()
  state, metrics = step(state, batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  print(f'{args.config} {" ".join(args.set)}: batch {b} clips x {t} frames at {h}x{w}; '
        f'compile + first step {time.perf_counter() - start:.1f} s')
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = step(state, batch, jax.random.key(1))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  median = float(np.median(times))
  print(f'steps {", ".join(f"{x:.2f}" for x in times)} s; median {median:.2f} s/step, '
        f'{median / (b * t):.3f} s/frame')


if __name__ == '__main__':
  main()
