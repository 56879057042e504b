"""The clip pipeline (grain): training batches of T-frame clips and the in-order evaluation stream.

Entry points
------------
  default_data_config(name)                 -> ml_collections.ConfigDict with every field below
  make_train_iterator(data_config, *, batch_size=None, seed=None, shard_index=None, shard_count=None)
                                            -> grain DataLoaderIterator of batches (get_state()/set_state())
  make_train_loader(...)                    -> the grain.DataLoader behind it (same arguments)
  close_iterator(iterator)                  stops its threads / worker processes
  make_eval_stream(data_config, split=None, *, shard_index=0, shard_count=1)
                                            -> EvalStream: every frame of every sequence, in time order
  make_sequences(data_config, split)        -> the SequenceDataset of a split
  num_classes(data_config), class_names(data_config), palette(data_config)   (the dataset's `DatasetSpec`)

Training batch (a dict of numpy arrays; B = batch size per process, T = clip_length, (H, W) = crop_size):
  frames          float32 (B, T, H, W, 3), normalised with mean/std (uint8 0..255 when normalize is False)
  labels          int32 (B, T, H, W), class ids, 255 = ignore (also in padding)
  labelled        bool (B, T), False for a frame without annotation (its labels are all 255)
  sequence_start  bool (B, T), True where a new sequence starts: at t = 0 for every training clip

A clip is T consecutive frames of one sequence (never across sequences); every valid start (every
`clip_start_stride`-th position with T frames after it) is indexed once. grain's IndexSampler shuffles the clips
(seeded, a new order each epoch), shards them per process (ShardOptions(shard_index, shard_count), by default
jax.process_index() / jax.process_count()), and hands every clip its own numpy Generator derived from (seed, global
position in the stream): the augmentation is drawn once per clip from it and applied identically to all T frames
(random scale, padding + random crop to crop_size, photometric jitter, horizontal flip; see
`ma_resnet.data.augment`). Batches are therefore a pure function of (config, seed, shard, step) and an iterator
restored with `set_state(state)` continues with exactly the batches an uninterrupted one would produce. A clip's
augmentation does not depend on worker_count either, but with worker processes (worker_count > 0) each worker
batches its own share of the clips, so worker_count changes how clips are grouped into batches (and a state saved
with one worker_count can only be restored with the same). Call `close_iterator(it)` to stop worker processes and
reading threads before dropping an iterator.

Evaluation stream items (per frame, with batch and time axes of size 1 so models take them like training batches):
  frames float32 (1, 1, H, W, 3) (uint8 when normalize is False), labels int32 (1, 1, H, W), labelled bool (1, 1),
  sequence_start bool (1, 1) (True on the first frame of each sequence), and metadata: sequence (str),
  sequence_index, frame_index (position in the sequence), frame_number (number in the source video) as ints.
Frames are at their native size, or resized to eval_size (images bilinear, labels nearest; labels stay native with
eval_native_labels).

Data config fields (defaults of default_data_config('camvid'); other datasets differ where noted)
------------------------------------------------------------------------------------------------
  name                 'camvid'        a registered dataset (`data.registry`): 'synthetic' | 'camvid' | 'vspw' |
                                       'cityscapes'; its `DatasetSpec` gives its reader, classes and defaults
  root                 ''              dataset folder; '' = <repo>/../shared/data/<name>
  source               'folder'        'folder' (read files under root) | 'tfds' (a prepared TFDS dataset; camvid
                                       and vspw only)
  tfds_data_dir        ''              TFDS data_dir for source='tfds' (prepare with tfds_builders.prepare_dataset)
  split                'train'         training split
  eval_split           'val'           default split of make_eval_stream
  clip_length          2               T, frames per clip (synthetic: 4; cityscapes: 3)
  pair_gaps            ()              (g1, g2, ...): clips are frame pairs (t, t + g) for every gap instead of T
                                       consecutive frames (key-frame propagation training, THA); clip_length 2
  labelled_last        False           keep only the clips whose last frame is labelled
  clip_start_stride    1               clip starts at positions 0, s, 2s, ... (synthetic: synthetic.reveal_period,
                                       a copy: change both together)
  crop_size            (360, 480)      (h, w) of training frames (vspw: (480, 480); synthetic: (64, 64);
                                       cityscapes: (512, 1024), a CPU-sane default; TMANet trains on (769, 769))
  eval_size            None            (h, w) to resize evaluation frames to; None = native size
  eval_native_labels   False           with eval_size: keep the labels at their native size (the evaluator then
                                       scores logits resized to them, bilinear) instead of resizing them too
  batch_size           2               clips per batch per process
  shuffle              True            shuffle clips (seeded)
  num_epochs           None            None = repeat forever
  scale_range          (0.5, 2.0)      random scale range (synthetic: (1.0, 1.0))
  flip                 True            random horizontal flip
  jitter               0.1             brightness/contrast/saturation factors in [1 - j, 1 + j] (synthetic: 0.0)
  normalize            True            float32 (x/255 - mean)/std; False: uint8 frames
  mean, std            CamVid train statistics (0.412, 0.425, 0.433), (0.307, 0.312, 0.307); vspw: ImageNet
                       (IMAGENET_MEAN/STD); cityscapes: ImageNet; synthetic: SYNTHETIC_MEAN/STD. Padding uses
                       the mean colour.
  seed                 0               sampling + augmentation seed (32-bit, >= 0)
  worker_count         0               grain worker processes (0: in the calling process)
  worker_buffer_size   2               batches buffered per worker
  read_threads         4               threads reading/decoding clips ahead of the consumer
  prefetch_buffer_size 8               clips read ahead
  vspw_mode            'semantic'      'semantic' (124 classes) | 'person' (background/person)
  person_class         60              VSPW class id used as "person" in person mode
  cityscapes           ConfigDict      frames_before None, frames_after None (ints, placeholder(int) so the command
                                       line can set them): every sequence is the labelled frame n with the frames
                                       n-frames_before .. n+frames_after of its snippet; None = the snippet's
                                       frames on disk (19 before, 10 after). Training as TMANet: frames_before =
                                       clip_length - 1, frames_after = 0 (one clip per sequence, labelled frame
                                       last); with None most clips hold no labelled frame.
  camvid               ConfigDict      video_frames '' : the frames before each labelled frame: '' = the earlier
                                       labelled frames (1 fps; val 15 fps); 'auto' = <root>/video_frames when
                                       `python -m ma_resnet.data.prepare camvid` has written it (else ''); a folder
                                       = that prepared folder. With video frames a sequence is a run of consecutive
                                       30 fps frames (labelled and not): clip_length T+1 with labelled_last = TMANet's
                                       sample, pair_gaps count video frames (THA). Which one is used is said once
                                       on the console. frame_list '': the split's list; 'tmanet': TMANet's
                                       lists (without Seq05VD_f00000: the 232-frame test list), data/camvid.py.
  synthetic            ConfigDict      height 64, width 64, frames_per_sequence 8, num_object_classes 3,
                                       num_objects 3, reveal_period 4, num_train_sequences 512,
                                       num_val_sequences 32, num_test_sequences 32, min_size 0.2, max_size 0.4,
                                       max_speed 3.0, noise 8, seed 0 (the content seed, separate from `seed`),
                                       test_frames_per_sequence 24 (the test split's length: long enough for
                                       mVC8 / mVC16; data/synthetic.py `split_layout`)
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import grain
import ml_collections
import numpy as np
from absl import logging

from ma_resnet.data import registry
from ma_resnet.data.augment import (IMAGENET_MEAN, IMAGENET_STD, augment_clip, normalize_images, pad_color_for,
                                    resize_clip, sample_clip_augmentation)
from ma_resnet.data.errors import DataError, DataNotFoundError
from ma_resnet.data.sequences import SequenceDataset

# --- configuration ------------------------------------------------------------------------------------------------


def default_data_config(name: str = "synthetic") -> ml_collections.ConfigDict:
  """A data config with every field (see the module docstring) set to the defaults for dataset `name`: the common
  ones, every registered dataset's own fields (`DatasetSpec.options`), then `name`'s values (`crop_size`,
  `eval_size`, `DatasetSpec.defaults`)."""
  spec = registry.get(name)
  fields = {
      "name": name,
      "root": "",
      "source": "folder",
      "tfds_data_dir": "",
      "split": "train",
      "eval_split": "val",
      "clip_length": 2,
      "clip_start_stride": 1,
      "pair_gaps": (),
      "labelled_last": False,
      "crop_size": tuple(spec.crop_size),
      "eval_size": spec.eval_size,
      "eval_native_labels": False,
      "batch_size": 2,
      "shuffle": True,
      "num_epochs": None,
      "scale_range": (0.5, 2.0),
      "flip": True,
      "jitter": 0.1,
      "normalize": True,
      "mean": IMAGENET_MEAN,
      "std": IMAGENET_STD,
      "seed": 0,
      "worker_count": 0,
      "worker_buffer_size": 2,
      "read_threads": 4,
      "prefetch_buffer_size": 8,
  }
  for other in registry.DATASETS.values():
    fields.update(copy.deepcopy(dict(other.options)))
  fields.update(spec.defaults)
  return ml_collections.ConfigDict(fields)


def _get(config: Any, field: str, default: Any = None) -> Any:
  """config.field for a ConfigDict, a dict or any attribute holder; `default` when absent."""
  if isinstance(config, dict):
    return config.get(field, default)
  try:
    return getattr(config, field)
  except (AttributeError, KeyError):
    return default


_MISSING = object()


def _field(config: Any, field: str) -> Any:
  """Like `_get`, with the default of default_data_config(config.name) for a field the config lacks."""
  value = _get(config, field, _MISSING)
  if value is _MISSING:
    value = _get(default_data_config(_get(config, "name", "synthetic")), field)
  return value


def _repo_root() -> Path:
  return Path(__file__).resolve().parents[2]


class _Settings:
  """Attribute access to a data config (`_field`): what a `DatasetSpec` reader and class names are given."""

  def __init__(self, data_config: Any):
    self._config = data_config

  def __getattr__(self, field: str) -> Any:
    return _field(self._config, field)


def resolve_root(data_config: Any) -> str:
  """The dataset folder: `root`, or <repo>/../shared/data/<name> when root is empty."""
  root = _get(data_config, "root", "") or ""
  if root:
    return os.fspath(root)
  name = _field(data_config, "name")
  default = _repo_root().parent / "shared" / "data" / name
  if not default.is_dir():
    raise DataNotFoundError(f"no root set for dataset {name!r} and the default folder {default} does not exist; "
                            f"set data_config.root")
  return os.fspath(default)


# --- datasets and class metadata ---------------------------------------------------------------------------------


def make_sequences(data_config: Any, split: str | None = None) -> SequenceDataset:
  """The SequenceDataset of `split` (default data_config.split) for the configured dataset and source."""
  spec = registry.get(_field(data_config, "name"))
  split = split or _field(data_config, "split")
  source = _field(data_config, "source") if spec.needs_root else "folder"
  if source == "tfds":  # camvid, vspw: `tfds_builders.BUILDERS`
    from ma_resnet.data.tfds_builders import TfdsSequences  # tensorflow_datasets only when asked for
    data_dir = _field(data_config, "tfds_data_dir")
    if not data_dir:
      raise ValueError("source='tfds' needs data_config.tfds_data_dir")
    return TfdsSequences(spec.name, data_dir, split, vspw_mode=_field(data_config, "vspw_mode"),
                         person_class=_field(data_config, "person_class"))
  if source != "folder":
    raise ValueError(f"data_config.source must be 'folder' or 'tfds', got {source!r}")
  sequences = spec.read(_Settings(data_config), split, resolve_root(data_config) if spec.needs_root else None)
  if getattr(sequences, "memory_frames", None):  # which frames precede a labelled one (CamVid)
    _say_once(sequences.memory_frames)
  return sequences


_said: set[str] = set()


def _say_once(message: str) -> None:
  """A line for the person running the program (stderr, process 0, once per process), also in the log."""
  if message in _said:
    return
  _said.add(message)
  logging.info("%s", message)
  import jax  # only to ask for the process layout
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def class_pixel_counts(data_config: Any, split: str | None = None) -> np.ndarray:
  """int64 (num_classes,): labelled pixels of each class over every frame of `split` (default: data.split)."""
  sequences = make_sequences(data_config, split)
  counts = np.zeros((sequences.num_classes,), np.int64)
  for sequence_index in range(sequences.num_sequences):
    for position in range(sequences.sequence_length(sequence_index)):
      frame = sequences.read_frame(sequence_index, position)
      if frame.labelled:
        counts += np.bincount(frame.label.ravel(), minlength=256)[:sequences.num_classes]
  return counts


def class_names(data_config: Any) -> tuple[str, ...]:
  """Class names of the configured dataset (index = class id); no file is read."""
  return registry.get(_field(data_config, "name")).names_of_classes(_Settings(data_config))


def num_classes(data_config: Any) -> int:
  """Number of classes (label ids 0..num_classes-1; 255 is ignore) of the configured dataset."""
  return len(class_names(data_config))


def palette(data_config: Any) -> np.ndarray:
  """uint8 (num_classes, 3) RGB colour per class id of the configured dataset."""
  return registry.get(_field(data_config, "name")).colours(_Settings(data_config))


# --- grain sources and transforms --------------------------------------------------------------------------------


class ClipSource:
  """Random-access source of clips: T consecutive frames of one sequence (grain RandomAccessDataSource).

  With `pair_gaps` (e.g. (1, 2, 3, 4)), a clip is instead two frames of one sequence, t and t + g, for every
  start t (every `clip_start_stride`-th) and every gap g: the (key frame, later frame) pairs of key-frame
  propagation training (THA: the later frame sees the key frame g frames before it). `labelled_last` keeps
  only the clips whose last frame has a label (Cityscapes snippets: one labelled frame in 30).

  Record i: images uint8 (T, H, W, 3), labels uint8 (T, H, W), labelled bool (T,), sequence_index int,
  start int (position of the first frame). `clip_sequence` / `clip_start` / `clip_gap` (int arrays
  (num_clips,)) index them.
  """

  def __init__(self, sequences: SequenceDataset, clip_length: int, clip_start_stride: int = 1,
               pair_gaps: tuple[int, ...] = (), labelled_last: bool = False):
    if clip_length < 1 or clip_start_stride < 1:
      raise ValueError(f"clip_length and clip_start_stride must be >= 1, got {clip_length}, {clip_start_stride}")
    self.pair_gaps = tuple(int(g) for g in pair_gaps or ())
    if self.pair_gaps and (clip_length != 2 or min(self.pair_gaps) < 1):
      raise ValueError(f"pair_gaps {self.pair_gaps} need clip_length 2 and gaps >= 1 (got clip_length {clip_length})")
    self.sequences = sequences
    self.clip_length = int(clip_length)
    self.clip_start_stride = int(clip_start_stride)
    starts, owners, gaps = [], [], []
    for index, length in enumerate(sequences.sequence_lengths):
      for gap in self.pair_gaps or (self.clip_length - 1,):
        positions = np.arange(0, length - gap, self.clip_start_stride)
        if labelled_last:  # only clips whose last frame has a label (the others would add nothing to the loss)
          positions = positions[[sequences.is_labelled(index, int(p) + gap) for p in positions]].astype(np.int64)
        starts.append(positions)
        owners.append(np.full(positions.shape, index))
        gaps.append(np.full(positions.shape, gap))
    self.clip_start = np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)
    self.clip_sequence = np.concatenate(owners).astype(np.int64) if owners else np.zeros(0, np.int64)
    self.clip_gap = np.concatenate(gaps).astype(np.int64) if gaps else np.zeros(0, np.int64)
    if self.clip_start.size == 0:
      raise DataError(f"{sequences!r} has no clip of {self.clip_length} consecutive frames "
                      f"(longest sequence: {max(sequences.sequence_lengths, default=0)} frames)")

  def __len__(self) -> int:
    return int(self.clip_start.size)

  def __getitem__(self, index: int) -> dict[str, Any]:
    sequence_index, start = int(self.clip_sequence[index]), int(self.clip_start[index])
    if self.pair_gaps:
      frames = [self.sequences.read_frame(sequence_index, p) for p in (start, start + int(self.clip_gap[index]))]
      if frames[0].image.shape != frames[1].image.shape:
        raise DataError(f"{self.sequences!r}: sequence {self.sequences.sequence_names[sequence_index]} changes "
                        f"frame size between positions {start} and {start + int(self.clip_gap[index])}")
      images, labels = np.stack([f.image for f in frames]), np.stack([f.label for f in frames])
      labelled = np.array([f.labelled for f in frames], bool)
    else:
      images, labels, labelled = self.sequences.read_clip(sequence_index, start, self.clip_length)
    return {"images": images, "labels": labels, "labelled": labelled, "sequence_index": sequence_index,
            "start": start}

  def __repr__(self) -> str:
    gaps = f", pair_gaps={self.pair_gaps}" if self.pair_gaps else ""
    return (f"ClipSource({self.sequences!r}, clip_length={self.clip_length}, "
            f"clip_start_stride={self.clip_start_stride}{gaps})")


class AugmentClip(grain.transforms.RandomMap):
  """Draws one augmentation per clip from the clip's rng and applies it to all its frames (training)."""

  def __init__(self, crop_size, scale_range, flip: bool, jitter: float, pad_color):
    self.crop_size = tuple(int(s) for s in crop_size)
    self.scale_range = tuple(float(s) for s in scale_range)
    self.flip = bool(flip)
    self.jitter = float(jitter)
    self.pad_color = tuple(int(c) for c in pad_color)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    params = sample_clip_augmentation(rng, scale_range=self.scale_range, flip=self.flip, jitter=self.jitter)
    images, labels = augment_clip(element["images"], element["labels"], params, self.crop_size, self.pad_color)
    return {**element, "images": images, "labels": labels}


class FormatClip(grain.transforms.Map):
  """Clip record -> training example: frames (T, H, W, 3) float32 normalised (or uint8), labels int32 (T, H, W),
  labelled bool (T,), sequence_start bool (T,) (True at t = 0)."""

  def __init__(self, normalize: bool, mean, std):
    self.normalize = bool(normalize)
    self.mean = tuple(float(m) for m in mean)
    self.std = tuple(float(s) for s in std)

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    images = element["images"]
    frames = normalize_images(images, self.mean, self.std) if self.normalize else images
    sequence_start = np.zeros(images.shape[0], bool)
    sequence_start[0] = True
    return {"frames": frames, "labels": element["labels"].astype(np.int32),
            "labelled": np.asarray(element["labelled"], bool), "sequence_start": sequence_start}


class GlobalBatchSampler:
  """Every process reads its rows of the *global* batches, so N processes with one device each train on
  exactly the batches (same clips, same augmentation draws, same row order) one process with N devices does.

  grain's DataLoader with `ShardOptions(i, N)` asks the sampler for indices k*N + i. This sampler maps the
  k-th request of process i to global stream position (k // b) * B + i * b + k % b (B = global batch, b = B / N
  rows per process): process i reads rows i*b .. (i+1)*b-1 of each global batch. The clip at a position and
  its rng come from grain's `IndexSampler` over all clips (a seeded shuffle per epoch, rng from the position),
  exactly as in a single-process run, where the mapping is the identity.
  """

  def __init__(self, num_records: int, *, global_batch: int, shard_index: int, shard_count: int, shuffle: bool,
               num_epochs: int | None, seed: int):
    if global_batch % shard_count:
      raise ValueError(f"the global batch ({global_batch}) must split evenly over the {shard_count} processes")
    self._stream = grain.samplers.IndexSampler(num_records=num_records, shuffle=shuffle, num_epochs=num_epochs,
                                               seed=seed)
    self._global_batch, self._shard_count = int(global_batch), int(shard_count)
    self._rows = self._global_batch // self._shard_count
    self._repr = (f"GlobalBatchSampler(num_records={num_records}, global_batch={global_batch}, "
                  f"shard_index={shard_index}, shard_count={shard_count}, shuffle={shuffle}, "
                  f"num_epochs={num_epochs}, seed={seed})")

  def position(self, index: int) -> int:
    """The global stream position that grain's sampler index `index` (= k * N + i) reads."""
    k, i = divmod(index, self._shard_count)
    return (k // self._rows) * self._global_batch + i * self._rows + k % self._rows

  def __len__(self) -> int:
    length = len(self._stream)
    return length if length == sys.maxsize else length - length % self._global_batch

  def __getitem__(self, index: int):
    return dataclasses.replace(self._stream[self.position(index)], index=index)

  def __repr__(self) -> str:
    return self._repr


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  if shard_index is None or shard_count is None:
    import jax  # only to ask for the process layout
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  return int(shard_index), int(shard_count)


def _ensure_absl_flags_parsed() -> None:
  """grain's worker processes read absl flags; outside an absl app nobody parses them, so take the defaults."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def validate_data(data_config: Any, splits) -> list[str]:
  """Checks every file of `splits` (`FileSequenceDataset.validate`) before a run writes anything: one DataError
  naming the first bad file. Returns warnings, one per kind: frames that are not RGB, and sequences of the
  training split too short for one clip (they give no training example)."""
  notes = []
  for split in dict.fromkeys(splits):
    sequences = make_sequences(data_config, split)
    unusual = sequences.validate() if hasattr(sequences, "validate") else {}
    for mode, paths in sorted(unusual.items()):
      notes.append(f"{len(paths)} {split} frame(s) are {mode} images, read as RGB, e.g. {paths[0]}")
    if split == _field(data_config, "split"):
      clip_length = int(_field(data_config, "clip_length"))
      short = [name for name, length in zip(sequences.sequence_names, sequences.sequence_lengths)
               if length < clip_length]
      if short:
        notes.append(f"{len(short)} {split} sequence(s) have fewer than clip_length={clip_length} frames and give "
                     f"no training clip: {', '.join(short[:5])}{' ...' if len(short) > 5 else ''}")
  return notes


def make_train_loader(data_config: Any, *, batch_size: int | None = None, seed: int | None = None,
                      shard_index: int | None = None, shard_count: int | None = None,
                      split: str | None = None) -> grain.DataLoader:
  """The grain.DataLoader of training batches (see the module docstring); arguments override the config.

  batch_size: clips per batch in this process; shard_index / shard_count: this process's shard (default
  jax.process_index() / jax.process_count()); split: default data_config.split.
  """
  batch_size = int(batch_size if batch_size is not None else _field(data_config, "batch_size"))
  seed = int(seed if seed is not None else _field(data_config, "seed"))
  shard_index, shard_count = _shard(shard_index, shard_count)
  source = ClipSource(make_sequences(data_config, split), _field(data_config, "clip_length"),
                      _field(data_config, "clip_start_stride"), tuple(_field(data_config, "pair_gaps") or ()),
                      bool(_field(data_config, "labelled_last")))
  shard_options = grain.sharding.ShardOptions(shard_index=shard_index, shard_count=shard_count,
                                              drop_remainder=True)
  if len(source) < batch_size * shard_count:
    raise DataError(f"{source!r} has {len(source)} clips, fewer than one global batch ({batch_size} x "
                    f"{shard_count} processes)")
  num_epochs = _field(data_config, "num_epochs")
  sampler = GlobalBatchSampler(len(source), global_batch=batch_size * shard_count, shard_index=shard_index,
                               shard_count=shard_count, shuffle=bool(_field(data_config, "shuffle")),
                               num_epochs=None if num_epochs is None else int(num_epochs), seed=seed)
  worker_count = int(_field(data_config, "worker_count"))
  if worker_count > 0:
    _ensure_absl_flags_parsed()
  mean, std = _field(data_config, "mean"), _field(data_config, "std")
  operations = [
      AugmentClip(_field(data_config, "crop_size"), _field(data_config, "scale_range"), _field(data_config, "flip"),
                  _field(data_config, "jitter"), pad_color_for(mean)),
      FormatClip(_field(data_config, "normalize"), mean, std),
      grain.transforms.Batch(batch_size=batch_size, drop_remainder=True),
  ]
  return grain.DataLoader(
      data_source=source, sampler=sampler, operations=operations, shard_options=shard_options,
      worker_count=worker_count,
      worker_buffer_size=int(_field(data_config, "worker_buffer_size")),
      read_options=grain.ReadOptions(num_threads=int(_field(data_config, "read_threads")),
                                     prefetch_buffer_size=int(_field(data_config, "prefetch_buffer_size"))))


def make_train_iterator(data_config: Any, *, batch_size: int | None = None, seed: int | None = None,
                        shard_index: int | None = None, shard_count: int | None = None,
                        split: str | None = None) -> grain.DataLoaderIterator:
  """Iterator of training batches with `get_state()` -> bytes and `set_state(bytes)` (exact resume).

  Batches: frames float32 (B, T, H, W, 3) (uint8 without normalisation), labels int32 (B, T, H, W),
  labelled bool (B, T), sequence_start bool (B, T). See make_train_loader for the arguments.
  """
  return iter(make_train_loader(data_config, batch_size=batch_size, seed=seed, shard_index=shard_index,
                                shard_count=shard_count, split=split))


def close_iterator(iterator: Any) -> None:
  """Stops the reading threads and worker processes behind a training iterator (idempotent)."""
  inner = getattr(iterator, "_iterator", iterator)
  close = getattr(inner, "close", None)
  if close is not None:
    close()


# --- evaluation stream -------------------------------------------------------------------------------------------


class _FrameList:
  """Random-access (sequence_index, position) list of the frames of the selected sequences, in stream order."""

  def __init__(self, sequences: SequenceDataset, sequence_indices: list[int]):
    self.sequences = sequences
    self.entries = [(i, p) for i in sequence_indices for p in range(sequences.sequence_length(i))]

  def __len__(self) -> int:
    return len(self.entries)

  def __getitem__(self, index: int) -> dict[str, Any]:
    sequence_index, position = self.entries[index]
    frame = self.sequences.read_frame(sequence_index, position)
    return {"image": frame.image, "label": frame.label, "labelled": frame.labelled,
            "sequence_index": sequence_index, "frame_index": position}

  def __repr__(self) -> str:
    return f"_FrameList({self.sequences!r}, frames={len(self.entries)})"


class _FormatEvalFrame(grain.transforms.Map):

  def __init__(self, sequences: SequenceDataset, eval_size, normalize: bool, mean, std,
               native_labels: bool = False):
    self.sequences = sequences
    self.eval_size = None if eval_size is None else tuple(int(s) for s in eval_size)
    self.native_labels = bool(native_labels)
    self.normalize = bool(normalize)
    self.mean, self.std = tuple(mean), tuple(std)

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    native = element["label"][None]
    images, labels = resize_clip(element["image"][None], None if self.native_labels else native, self.eval_size)
    if labels is None:
      labels = native
    frames = normalize_images(images, self.mean, self.std) if self.normalize else images
    sequence_index, position = element["sequence_index"], element["frame_index"]
    return {
        "frames": frames[None], "labels": labels[None].astype(np.int32),
        "labelled": np.array([[element["labelled"]]], bool), "sequence_start": np.array([[position == 0]], bool),
        "sequence": self.sequences.sequence_names[sequence_index], "sequence_index": sequence_index,
        "frame_index": position, "frame_number": self.sequences.frame_number(sequence_index, position),
    }


class EvalStream:
  """Iterable over every frame of the selected sequences of a split, sequence after sequence, in time order.

  Each pass (`iter(stream)`) starts from the first frame again. Items: see the module docstring.
  Attributes: sequences (the SequenceDataset), sequence_indices (the ones in this shard), num_frames.
  """

  def __init__(self, sequences: SequenceDataset, sequence_indices: list[int], dataset: grain.IterDataset):
    self.sequences = sequences
    self.sequence_indices = sequence_indices
    self.num_frames = sum(sequences.sequence_length(i) for i in sequence_indices)
    self._dataset = dataset

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return iter(self._dataset)

  def __len__(self) -> int:
    return self.num_frames


def make_eval_stream(data_config: Any, split: str | None = None, *, shard_index: int = 0,
                     shard_count: int = 1) -> EvalStream:
  """Every frame of `split` (default data_config.eval_split) in time order, sequence after sequence.

  With shard_count > 1 this process gets sequences shard_index, shard_index + shard_count, ... (whole sequences,
  so memory is never split). Frames are read ahead by `read_threads` threads; order is preserved.
  """
  split = split or _field(data_config, "eval_split")
  sequences = make_sequences(data_config, split)
  indices = list(range(shard_index, sequences.num_sequences, shard_count))
  mean, std = _field(data_config, "mean"), _field(data_config, "std")
  dataset = (grain.MapDataset.source(_FrameList(sequences, indices))
             .map(_FormatEvalFrame(sequences, _field(data_config, "eval_size"), _field(data_config, "normalize"),
                                   mean, std, native_labels=_get(data_config, "eval_native_labels", False)))
             .to_iter_dataset(grain.ReadOptions(num_threads=int(_field(data_config, "read_threads")),
                                                prefetch_buffer_size=int(_field(data_config,
                                                                                "prefetch_buffer_size")))))
  return EvalStream(sequences, indices, dataset)
