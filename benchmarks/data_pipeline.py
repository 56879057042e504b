"""Throughput of the training data pipeline on CamVid (clips per second), optionally beside one training step.

    python benchmarks/data_pipeline.py                      # CamVid, crop 360x480, T = 2, batch 2
    python benchmarks/data_pipeline.py --workers 2 --read-threads 8
    python benchmarks/data_pipeline.py --dataset synthetic  # no files needed
    python benchmarks/data_pipeline.py --source tfds        # read a TFDS array_record copy (prepared once)
    python benchmarks/data_pipeline.py --train-step         # also time one step of the default model

Prints the figures; it is not a test. The pipeline figure is the steady rate of `make_train_iterator` after a few
warm-up batches (full augmentation: scale 0.5-2, pad + crop, jitter, flip, normalisation). The per-stage line times
one clip's read (PNG decode), augmentation and formatting in a single thread. `--train-step` builds the default
model of `ma_resnet.training` for the same batch shape and times one jitted training step after compilation (on
whatever device JAX has: slow on a CPU-only machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ma_resnet.data import close_iterator, default_data_config, make_sequences, make_train_iterator  # noqa: E402
from ma_resnet.data.augment import pad_color_for  # noqa: E402
from ma_resnet.data.pipeline import AugmentClip, ClipSource, FormatClip  # noqa: E402


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", default="camvid", choices=("camvid", "synthetic", "vspw"))
  parser.add_argument("--root", default="", help="dataset folder (default: ../shared/data/<dataset>)")
  parser.add_argument("--source", default="folder", choices=("folder", "tfds"),
                      help="read the image files, or a TFDS array_record copy (prepared into --tfds-data-dir)")
  parser.add_argument("--tfds-data-dir", default="/tmp/ma_resnet_tfds", help="TFDS data_dir for --source tfds")
  parser.add_argument("--crop", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
  parser.add_argument("--clip-length", type=int, default=2)
  parser.add_argument("--batch-size", type=int, default=2)
  parser.add_argument("--batches", type=int, default=40, help="batches timed after warm-up")
  parser.add_argument("--warmup", type=int, default=5, help="batches before timing")
  parser.add_argument("--workers", type=int, default=0, help="grain worker processes")
  parser.add_argument("--read-threads", type=int, default=4)
  parser.add_argument("--prefetch", type=int, default=8, help="clips read ahead")
  parser.add_argument("--train-step", action="store_true", help="also time one training step of the default model")
  parser.add_argument("--steps", type=int, default=5, help="training steps timed with --train-step")
  return parser.parse_args()


def data_config_from(args):
  config = default_data_config(args.dataset)
  config.root = args.root
  config.source = args.source
  config.tfds_data_dir = args.tfds_data_dir
  config.crop_size = tuple(args.crop)
  config.clip_length = args.clip_length
  config.clip_start_stride = 1
  config.batch_size = args.batch_size
  config.worker_count = args.workers
  config.read_threads = args.read_threads
  config.prefetch_buffer_size = args.prefetch
  if args.dataset == "synthetic":
    config.synthetic.height, config.synthetic.width = args.crop
    config.synthetic.frames_per_sequence = max(8, args.clip_length)
  return config


def time_pipeline(config, args) -> float:
  """Steady clips/s of the training iterator."""
  iterator = make_train_iterator(config, shard_index=0, shard_count=1)
  for _ in range(args.warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(args.batches):
    batch = next(iterator)
  elapsed = time.perf_counter() - start
  shapes = {k: (tuple(v.shape), str(v.dtype)) for k, v in batch.items()}
  close_iterator(iterator)
  del iterator, batch
  print(f"batch: {shapes}")
  return args.batches * args.batch_size / elapsed


def time_stages(config, clips: int = 12) -> dict[str, float]:
  """Milliseconds per clip of each stage, single-threaded."""
  source = ClipSource(make_sequences(config), config.clip_length)
  augment = AugmentClip(config.crop_size, config.scale_range, config.flip, config.jitter, pad_color_for(config.mean))
  format_clip = FormatClip(config.normalize, config.mean, config.std)
  rng = np.random.default_rng(0)
  indices = np.linspace(0, len(source) - 1, clips).astype(int)
  start = time.perf_counter()
  elements = [source[int(i)] for i in indices]
  read = time.perf_counter() - start
  start = time.perf_counter()
  augmented = [augment.random_map(e, rng) for e in elements]
  aug = time.perf_counter() - start
  start = time.perf_counter()
  for e in augmented:
    format_clip.map(e)
  fmt = time.perf_counter() - start
  return {"read": 1e3 * read / clips, "augment": 1e3 * aug / clips, "format": 1e3 * fmt / clips}


def time_train_step(config_data, args) -> str:
  """One training step of ma_resnet.training's default model on a batch of the same shape, or why not."""
  try:
    import jax
    import jax.numpy as jnp
    from ma_resnet import models, train_config, training
  except ImportError as error:
    return f"training step not timed: {error}"
  needed = ("learning_rate_schedule", "make_optimizer", "create_train_state", "make_train_step")
  missing = [name for name in needed if not hasattr(training, name)] + (
      [] if hasattr(train_config, "base_config") else ["train_config.base_config"])
  if missing:
    return f"training step not timed: ma_resnet.training lacks {missing}"
  config = train_config.base_config(args.dataset)
  config.data = config_data
  config.batch_size = args.batch_size
  num_classes = {"camvid": 11, "vspw": 124}.get(args.dataset, 4)
  model = models.build(config.model, num_classes)
  schedule = training.learning_rate_schedule(config)
  tx = training.make_optimizer(config, schedule)
  state = training.create_train_state(config, model, tx, jax.random.key(0))
  step = jax.jit(training.make_train_step(config, schedule, has_memory=config.model.temporal != "plain"))
  h, w = config_data.crop_size
  t = config_data.clip_length
  rng = np.random.default_rng(0)
  batch = {
      "frames": jnp.asarray(rng.standard_normal((args.batch_size, t, h, w, 3)), jnp.float32),
      "labels": jnp.asarray(rng.integers(0, num_classes, (args.batch_size, t, h, w)), jnp.int32),
      "labelled": jnp.ones((args.batch_size, t), bool),
      "sequence_start": jnp.asarray(np.tile(np.arange(t) == 0, (args.batch_size, 1))),
  }
  start = time.perf_counter()
  state, metrics = step(state, batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step(state, batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / args.steps
  device = jax.devices()[0]
  return (f"training step ({config.model.encoder}-resnet{config.model.depth} + {config.model.head}, "
          f"{device.platform}:{device.device_kind}): {1e3 * step_s:.1f} ms/step = "
          f"{args.batch_size / step_s:.1f} clips/s (first call with compilation {compile_s:.1f} s)")


def main():
  args = parse_args()
  config = data_config_from(args)
  if args.source == "tfds":
    from ma_resnet.data.pipeline import resolve_root
    from ma_resnet.data.tfds_builders import prepare_dataset
    start = time.perf_counter()
    prepare_dataset(args.dataset, resolve_root(config), args.tfds_data_dir)  # a no-op once prepared
    print(f"TFDS copy in {args.tfds_data_dir} ready ({time.perf_counter() - start:.1f} s)")
  print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; dataset {args.dataset} "
        f"({args.source}), crop {tuple(args.crop)}, T = {args.clip_length}, "
        f"batch {args.batch_size}, workers {args.workers}, read threads {args.read_threads}")
  stages = time_stages(config)
  print("single-thread ms per clip: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
        + f" (total {sum(stages.values()):.1f} = {1e3 / sum(stages.values()):.1f} clips/s)")
  clips_per_second = time_pipeline(config, args)
  print(f"pipeline: {clips_per_second:.1f} clips/s = {clips_per_second / args.batch_size:.1f} batches/s "
        f"({args.batches} batches after {args.warmup} warm-up)")
  if args.train_step:
    print(time_train_step(config, args))
  else:
    print("training step not timed (pass --train-step to time one step of ma_resnet.training's default model)")


if __name__ == "__main__":
  main()
