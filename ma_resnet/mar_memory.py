r"""MAR's memory from a trained STF run: stage 3 of the STF + MAR recipe (paper 003 §3.3, Fig. 8).

    python -m ma_resnet.mar_memory --workdir=runs/stf_cityscapes --out=runs/stf_cityscapes_memory
    python train.py --config=configs/stf_cityscapes.py:mar ... \
        --config.model.stf.memory_init=runs/stf_cityscapes_memory

The run's STF model (its best checkpoint; MAR left out if the run has it) segments every labelled frame of the
training split with its real neighbours, as in evaluation (frames at the run's evaluation size: full
resolution unless `data.eval_size` is set). For each labelled frame, at the feature resolution (1/8): the
logits are the classifier on the STF output before upsampling, the confidence of a pixel is its largest
softmax probability, and the label is resized to the feature size by nearest neighbour (cv2 INTER_NEAREST, as
the authors). A pixel counts when its arg-max equals its label (ignored pixels never do). For every class c:

  keys    the K_L counted features of class c with the lowest confidence (the "hard", boundary features),
          in increasing confidence: rows c*K_L .. c*K_L + K_L - 1 of key.npy (K_L x classes, d)
  values  the mean of the K_H counted features of class c with the highest confidence (the prototype): row c
          of value.npy (classes, d)

written to --out (a folder, all or nothing) with memory.json (the run, checkpoint, split, frames, per-class
counts and confidences). `model.stf.memory_init=<out>` makes a MAR config start from them (each prototype
repeated K_L times, as the authors load it).

The authors' procedure (`generate_memory/python/test.py`) streams pixels through two sorted lists per class;
what is kept differs only in corner cases: (1) a pixel goes to their keys or to their values, never both,
and a value candidate must beat the lowest kept value even when fewer than K_H are kept, so their prototype can
average fewer than the K_H most confident features; here keys and values are the exact K_L lowest and K_H
highest (ties: the pixel seen first). (2) As theirs, a class with fewer counted features than K_L (K_H) repeats
its list cyclically to fill the rows (the prototype is then the mean of that cyclic list).

A class never predicted correctly has no key and no prototype: the command fails naming it (train STF longer,
or check the split). Exit status: 0 done; 2 bad arguments or a run without STF; 3 data missing or unreadable;
4 no usable checkpoint; 1 the memory cannot be made (a class never correct) or written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

import numpy as np

from ma_resnet.errors import EXIT_USAGE

EXIT_FAILED = 1


class MemoryBankError(ValueError):
  """The memory cannot be made from what the model predicted (the message names the classes)."""


class MemorySampler:
  """Per class, the K_L least and the K_H most confident correctly classified features seen so far.

  `update(features (N, d), confidence (N,), labels (N,))` with the counted pixels of one frame, in the order
  they were seen; ties keep the pixel seen first.
  """

  def __init__(self, num_classes: int, channels: int, keys_per_class: int = 10, values_per_class: int = 10):
    if keys_per_class < 1 or values_per_class < 1:
      raise ValueError(f'keys_per_class and values_per_class must be >= 1, got {keys_per_class}, '
                       f'{values_per_class}')
    self.num_classes, self.channels = int(num_classes), int(channels)
    self.keys_per_class, self.values_per_class = int(keys_per_class), int(values_per_class)
    empty = lambda: (np.zeros((0, self.channels), np.float32), np.zeros((0,), np.float32))
    self.low = [empty() for _ in range(self.num_classes)]   # ascending confidence
    self.high = [empty() for _ in range(self.num_classes)]  # descending confidence
    self.counts = np.zeros(self.num_classes, np.int64)

  def update(self, features: np.ndarray, confidence: np.ndarray, labels: np.ndarray) -> None:
    features = np.asarray(features, np.float32)
    confidence = np.asarray(confidence, np.float32)
    labels = np.asarray(labels)
    for c in np.unique(labels):
      c = int(c)
      if not 0 <= c < self.num_classes:
        continue
      mine = labels == c
      f, s = features[mine], confidence[mine]
      self.counts[c] += len(s)
      for kept, sign, k in ((self.low, 1.0, self.keys_per_class), (self.high, -1.0, self.values_per_class)):
        if len(s) > k:  # the k best of this frame first (stable: earlier pixels win ties)
          order = np.argsort(sign * s, kind='stable')[:k]
          f_new, s_new = f[order], s[order]
        else:
          f_new, s_new = f, s
        all_f = np.concatenate([kept[c][0], f_new])
        all_s = np.concatenate([kept[c][1], s_new])
        order = np.argsort(sign * all_s, kind='stable')[:k]  # what was kept came first: it wins ties
        kept[c] = (all_f[order], all_s[order])

  def missing_classes(self) -> list[int]:
    return [c for c in range(self.num_classes) if self.counts[c] == 0]

  @staticmethod
  def _cyclic(rows: np.ndarray, k: int) -> np.ndarray:
    """The authors' fill of a short list: repeated cyclically, cut to k."""
    return np.concatenate([rows] * (k // len(rows) + 1))[:k]

  def memory(self, class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(key (K_L x classes, d), value (classes, d)) float32; MemoryBankError naming every class never counted."""
    missing = self.missing_classes()
    if missing:
      names = [f'{c} ({class_names[c]})' if class_names else str(c) for c in missing]
      raise MemoryBankError(f'class{"es" if len(missing) > 1 else ""} {", ".join(names)} never predicted correctly: '
                         'MAR needs at least one correctly classified feature of every class (train the STF '
                         'model longer, or use a split where every class appears)')
    keys = np.concatenate([self._cyclic(self.low[c][0], self.keys_per_class) for c in range(self.num_classes)])
    values = np.stack([self._cyclic(self.high[c][0][::-1], self.values_per_class).mean(axis=0)
                       for c in range(self.num_classes)])  # ascending, as the authors' list, then cyclic
    return keys.astype(np.float32), values.astype(np.float32)

  def summary(self) -> dict:
    return {'counted_pixels': self.counts.tolist(),
            'key_confidence': [self.low[c][1].tolist() for c in range(self.num_classes)],
            'value_confidence': [self.high[c][1].tolist() for c in range(self.num_classes)]}


def resize_labels_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(H, W) -> (h, w) by nearest neighbour, source index floor(i * H / h) (cv2 INTER_NEAREST)."""
  in_h, in_w = labels.shape
  rows = np.minimum(np.floor(np.arange(size[0]) * (in_h / size[0])).astype(np.int64), in_h - 1)
  cols = np.minimum(np.floor(np.arange(size[1]) * (in_w / size[1])).astype(np.int64), in_w - 1)
  return labels[rows][:, cols]


def stf_feature_model(run):
  """(model, variables) of the run's STF model without MAR (the memory is made from the STF output)."""
  import ml_collections
  from ma_resnet import data as data_lib
  from ma_resnet import models
  from ma_resnet.errors import ConfigError
  config = ml_collections.ConfigDict(json.loads(run.config.to_json()))
  if config.model.temporal != 'stf':
    raise ConfigError(f"the run's model has temporal module {config.model.temporal!r}: the MAR memory is made "
                     "with an STF model (model.temporal='stf', stage 2 of the recipe)")
  variables = dict(run.variables)
  if config.model.stf.mar:
    config.model.stf.mar = False
    params = dict(variables['params'])
    params['temporal'] = {k: v for k, v in dict(params['temporal']).items() if k != 'mar'}
    variables['params'] = params
  return models.build(config.model, data_lib.num_classes(config.data)), variables


def generate(run, *, split: str = 'train', keys_per_class: int = 10, values_per_class: int = 10,
             max_frames: int | None = None, progress: bool = False) -> tuple[MemorySampler, dict]:
  """Streams the labelled frames of `split` through the run's STF model (see the module docstring) and returns
  the filled `MemorySampler` and facts for memory.json."""
  import jax
  import jax.numpy as jnp
  from ma_resnet import data as data_lib
  from ma_resnet import streaming
  model, variables = stf_feature_model(run)
  data_config = run.config.data
  data_config.eval_native_labels = False  # labels at the frames' size, then nearest to the feature size
  stage = model.temporal.options.stage
  num_classes = data_lib.num_classes(data_config)

  @jax.jit
  def apply_step(variables, frame, memory, reset):
    out = model.apply(variables, frame, memory, reset, method=model.step)
    features = out.stage_features[stage]  # the STF output (1, h, w, d) of the frame this step returns
    logits = model.apply(variables, {stage: features}, method=lambda m, maps: m.head(maps)).astype(jnp.float32)
    probabilities = jax.nn.softmax(logits, axis=-1)
    return (features, jnp.max(probabilities, -1), jnp.argmax(logits, -1)), out.memory

  sampler = None
  size = None
  frames = labelled = 0
  start = time.time()

  def collect(paired):
    nonlocal sampler, labelled
    for _, item, outputs in paired:
      if not bool(item['labelled'][0, 0]):
        continue
      features, confidence, prediction = (np.asarray(a) for a in outputs)
      h, w, d = features.shape
      if sampler is None:
        sampler = MemorySampler(num_classes, d, keys_per_class, values_per_class)
      label = resize_labels_nearest(np.asarray(item['labels'][0, 0]), (h, w))
      counted = prediction == label  # 255 (ignored) is never a prediction
      sampler.update(features[counted], confidence[counted], label[counted])
      labelled += 1

  stream = streaming.FrameStream.of_model(
      model, lambda frame, memory, reset, due: apply_step(variables, frame, memory, reset))
  for item in data_lib.make_eval_stream(data_config, split):
    frame = item['frames'][:, 0]
    if tuple(frame.shape[1:3]) != size:  # a new size starts a sequence: the previous one's frames come out first
      size = tuple(frame.shape[1:3])
      collect(stream.restart(model.init_memory(1, size)))
    collect(stream.feed(frame, item['sequence_start'][:, 0], [item]))
    frames += 1
    if progress and frames % 100 == 0:
      print(f'{frames} frames, {labelled} labelled, {time.time() - start:.0f} s', file=sys.stderr, flush=True)
    if max_frames is not None and frames >= max_frames:
      break
  collect(stream.end())
  if sampler is None:
    raise MemoryBankError(f'split {split!r} has no labelled frame: nothing to make the memory from')
  facts = {'split': split, 'frames': frames, 'labelled_frames': labelled, 'seconds': time.time() - start,
           'keys_per_class': keys_per_class, 'values_per_class': values_per_class,
           'input_size': list(size) if size else None}
  return sampler, facts


def write_memory(out: str, keys: np.ndarray, values: np.ndarray, metadata: dict) -> str:
  """Writes out/key.npy, out/value.npy, out/memory.json, all or nothing (`out` must be absent or empty)."""
  from ma_resnet.files import atomic_path
  out = os.path.abspath(out)
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise OSError(f'--out {out} exists and is not an empty folder')
  text = json.dumps(metadata, indent=2) + '\n'
  with atomic_path(out, folder=True) as tmp:
    np.save(os.path.join(tmp, 'key.npy'), keys)
    np.save(os.path.join(tmp, 'value.npy'), values)
    with open(os.path.join(tmp, 'memory.json'), 'w') as f:
      f.write(text)
  return out


def make_memory(workdir: str, out: str, *, checkpoint: str = 'best', split: str = 'train',
                keys_per_class: int = 10, values_per_class: int = 10, data_root: str | None = None,
                max_frames: int | None = None, progress: bool = False) -> dict:
  """Loads the run, generates the memory and writes it (what the command does). Returns memory.json's content."""
  from ma_resnet import checkpoints, runs
  from ma_resnet import data as data_lib
  if not os.path.isdir(workdir):
    raise checkpoints.CheckpointError(f'workdir {os.path.abspath(workdir)} does not exist')
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise OSError(f'--out {os.path.abspath(out)} exists and is not an empty folder')
  run = runs.load_run(workdir, checkpoint)
  if data_root:
    run.config.data.root = data_root
  sampler, facts = generate(run, split=split, keys_per_class=keys_per_class, values_per_class=values_per_class,
                            max_frames=max_frames, progress=progress)
  class_names = list(data_lib.class_names(run.config.data))
  keys, values = sampler.memory(class_names)
  metadata = {'workdir': os.path.abspath(workdir), 'checkpoint': run.checkpoint_path, 'step': run.step,
              'class_names': class_names, 'key_shape': list(keys.shape), 'value_shape': list(values.shape),
              **facts, **sampler.summary()}
  write_memory(out, keys, values, metadata)
  return metadata


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m ma_resnet.mar_memory', description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='the STF run (stage 2 of the recipe)')
  parser.add_argument('--out', required=True, help='folder to write key.npy, value.npy, memory.json into '
                      '(absent or empty)')
  parser.add_argument('--checkpoint', default='best', help="'best' (default), 'latest' or a step number")
  parser.add_argument('--split', default='train', help='split the memory is made from (default: train)')
  parser.add_argument('--keys_per_class', type=int, default=10, help='K_L (default 10)')
  parser.add_argument('--values_per_class', type=int, default=10, help='K_H (default 10)')
  parser.add_argument('--data_root', default=None, help="override the run's data.root")
  parser.add_argument('--max_frames', type=int, default=None, help='stop after this many frames (quick checks)')
  parser.add_argument('--noprogress', action='store_true', help='no progress lines on stderr')
  args = parser.parse_args(argv)

  from ma_resnet import checkpoints
  from ma_resnet.data import DataError
  from ma_resnet.errors import ConfigError

  def fail(message: str, code: int) -> int:
    print(f'error: {message}', file=sys.stderr, flush=True)
    return code

  if args.keys_per_class < 1 or args.values_per_class < 1:
    return fail('--keys_per_class and --values_per_class must be >= 1', EXIT_USAGE)
  try:
    metadata = make_memory(args.workdir, args.out, checkpoint=args.checkpoint, split=args.split,
                           keys_per_class=args.keys_per_class, values_per_class=args.values_per_class,
                           data_root=args.data_root, max_frames=args.max_frames, progress=not args.noprogress)
  except (checkpoints.CheckpointError, DataError, ConfigError) as e:
    return fail(str(e), e.exit_code)
  except MemoryBankError as e:
    return fail(str(e), EXIT_FAILED)
  except OSError as e:
    return fail(f'cannot write the memory: {e}', EXIT_FAILED)
  print(f'MAR memory of {len(metadata["class_names"])} classes from {metadata["labelled_frames"]} labelled '
        f'frames ({metadata["split"]}) in {metadata["seconds"]:.0f} s: {args.out}/key.npy '
        f'{tuple(metadata["key_shape"])}, value.npy {tuple(metadata["value_shape"])}')
  return 0


if __name__ == '__main__':
  from absl import logging
  logging.set_verbosity(logging.ERROR)  # the console: this command's lines and errors, no library chatter (orbax)
  sys.exit(main())
