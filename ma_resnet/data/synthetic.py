"""Synthetic video: the project's embedded default dataset, generated procedurally (no files, no downloads).

Each sequence is `frames_per_sequence` frames of size (height, width). Class 0 is the background (a dark, noisy
field); classes 1..K (`num_object_classes`) are objects: `num_objects` axis-aligned squares per sequence, each of a
class drawn uniformly at random, of a random size, moving in a straight line at constant speed and bouncing off the
borders (later objects are drawn over earlier ones). An object shows its class colour only on *reveal frames*,
positions t with t % reveal_period == 0 (only t = 0 when reveal_period is 0); on every other frame all objects are
the same grey. Labels always give the true class. Class, size and motion are drawn independently, so a grey frame
carries no information about which class an object is: only earlier (reveal) frames do.

The bound for a per-frame model. On grey frames any per-frame predictor assigns object pixels to classes
independently of their true class. If n_k is the number of class-k pixels on grey frames and N = sum_k n_k, a
predictor that gives a fraction q_k of the object pixels to class k reaches (in expectation over the class draws)
IoU_k = q_k n_k / (n_k + q_k (N - n_k)). The best q is q_k proportional to n_k / (N - n_k); with even class shares
each object class gets IoU 1/(2K-1). Counting the background as perfectly recognised (IoU 1), the per-frame mIoU on
grey frames is at most

    (1 + K / (2K - 1)) / (K + 1)        = 0.40 for K = 3, 0.56 for K = 2, 0.32 for K = 5,

which `per_frame_miou_bound` computes exactly from the generated ground truth. A model that remembers the last
reveal frame (and follows the smoothly moving squares) can be perfect: on reveal frames a pixel's colour decodes to
its class exactly, and in training clips that start on reveal frames (`clip_start_stride = reveal_period`) every
frame has a reveal frame at or before it in the clip.

Everything is deterministic from (seed, split, sequence index, frame position) through numpy Generators, so frames
are random-access and identical in every process; train/val/test differ by the split's salt in the seed. The test
split's sequences are longer (`split_layout`: 24 frames by default) so that mVC8 / mVC16 have windows.
Generation is vectorised numpy (about 6,000 64x64 frames per second on one core of a 2-core VM).
"""

from __future__ import annotations

import colorsys
import zlib

import numpy as np

from ma_resnet.data.errors import DataNotFoundError
from ma_resnet.data.sequences import Frame, SequenceDataset
from ma_resnet.data.spec import DatasetSpec

SYNTHETIC_BACKGROUND_COLOR = (24, 28, 40)
SYNTHETIC_GREY = (128, 128, 128)
SYNTHETIC_MEAN = (0.2, 0.2, 0.22)
SYNTHETIC_STD = (0.22, 0.22, 0.22)
_SPLIT_SALTS = {"train": 0, "val": 1, "test": 2}


def split_layout(config, split: str) -> tuple[int, int]:
  """(sequences, frames per sequence) of a split of the synthetic config block (`data.synthetic`): train and val
  have `frames_per_sequence` frames, test `test_frames_per_sequence` (default 24: long enough for mVC8 and mVC16,
  which need sequences of more than 16 frames). DataNotFoundError for another split."""
  get = lambda field, default=None: config.get(field, default) if hasattr(config, "get") else getattr(config, field)
  counts = {"train": get("num_train_sequences"), "val": get("num_val_sequences"), "test": get("num_test_sequences")}
  if split not in counts:
    raise DataNotFoundError(f"the synthetic video has no split {split!r}; its splits are {sorted(counts)}")
  frames = get("test_frames_per_sequence", 24) if split == "test" else get("frames_per_sequence")
  return int(counts[split]), int(frames)


def synthetic_class_colors(num_object_classes: int) -> np.ndarray:
  """uint8 (K, 3): saturated colours spread over the hue circle, far from grey and from the background."""
  return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(k / num_object_classes, 0.85, 0.95)]
                   for k in range(num_object_classes)], np.uint8)


def _split_salt(split: str) -> int:
  return _SPLIT_SALTS.get(split, 1000 + zlib.crc32(split.encode()) % 1_000_000)


def _bounce(start: np.ndarray, velocity: np.ndarray, times: np.ndarray, span: np.ndarray) -> np.ndarray:
  """Position on [0, span] of a point moving from `start` at `velocity` and reflecting at both ends.

  start, velocity, span: (N, 2); times: (T,). Returns float (T, N, 2).
  """
  travelled = start[None] + velocity[None] * times[:, None, None]
  period = 2.0 * np.maximum(span, 1e-6)[None]
  phase = np.mod(travelled, period)
  return np.where(phase <= span[None], phase, period - phase)


class SyntheticVideo(SequenceDataset):
  """Procedural video split (see the module docstring); frames image uint8 (H, W, 3), label uint8 (H, W).

  Args:
    split: 'train', 'val', 'test' (any other name gets its own salt).
    num_sequences: number of sequences in the split.
    frames_per_sequence: frames per sequence.
    height, width: frame size.
    num_object_classes: K object classes (class ids 1..K; 0 is background); at most 12.
    num_objects: squares per sequence.
    reveal_period: frames t with t % reveal_period == 0 show class colours (0: only t = 0).
    min_size, max_size: square side range as a fraction of min(height, width).
    max_speed: largest speed per axis, pixels per frame.
    noise: amplitude of the uniform per-pixel noise added to every colour.
    seed: base seed.
  """

  dataset_name = "synthetic"

  def __init__(self, split: str = "train", *, num_sequences: int = 256, frames_per_sequence: int = 8,
               height: int = 64, width: int = 64, num_object_classes: int = 3, num_objects: int = 3,
               reveal_period: int = 4, min_size: float = 0.2, max_size: float = 0.4, max_speed: float = 3.0,
               noise: int = 8, seed: int = 0):
    if not 1 <= num_object_classes <= 12:
      raise ValueError(f"num_object_classes must be in 1..12, got {num_object_classes}")
    if num_sequences < 1 or frames_per_sequence < 1 or num_objects < 1:
      raise ValueError("num_sequences, frames_per_sequence and num_objects must be >= 1")
    if not 0 < min_size <= max_size <= 1:
      raise ValueError(f"need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}")
    self.split = split
    self.num_sequences_in_split = int(num_sequences)
    self.frames_per_sequence = int(frames_per_sequence)
    self.height, self.width = int(height), int(width)
    self.num_object_classes = int(num_object_classes)
    self.num_objects = int(num_objects)
    self.reveal_period = int(reveal_period)
    self.min_size, self.max_size = float(min_size), float(max_size)
    self.max_speed = float(max_speed)
    self.noise = int(noise)
    self.seed = int(seed)
    self.class_colors = synthetic_class_colors(self.num_object_classes)
    self.class_names = ("background",) + tuple(f"object_{k}" for k in range(1, self.num_object_classes + 1))
    self.palette = np.concatenate([np.array([SYNTHETIC_BACKGROUND_COLOR], np.uint8), self.class_colors])
    self._salt = _split_salt(split)

  # --- SequenceDataset interface -------------------------------------------------------------------------------
  @property
  def sequence_names(self) -> tuple[str, ...]:
    return tuple(f"{self.split}{i:05d}" for i in range(self.num_sequences_in_split))

  @property
  def num_sequences(self) -> int:
    return self.num_sequences_in_split

  def sequence_length(self, sequence_index: int) -> int:
    return self.frames_per_sequence

  @property
  def num_frames(self) -> int:
    return self.num_sequences_in_split * self.frames_per_sequence

  def frame_number(self, sequence_index: int, position: int) -> int:
    return position

  def read_frame(self, sequence_index: int, position: int) -> Frame:
    images, labels = self.render(sequence_index, np.array([position]))
    return Frame(images[0], labels[0], True)

  def read_clip(self, sequence_index: int, start: int, length: int):
    images, labels = self.render(sequence_index, np.arange(start, start + length))
    return images, labels, np.ones(length, bool)

  def fingerprint(self) -> str:
    fields = (self.split, self.num_sequences_in_split, self.frames_per_sequence, self.height, self.width,
              self.num_object_classes, self.num_objects, self.reveal_period, self.min_size, self.max_size,
              self.max_speed, self.noise, self.seed)
    return f"{zlib.crc32(repr(fields).encode()):08x}"

  def __repr__(self) -> str:
    return (f"SyntheticVideo(split={self.split!r}, sequences={self.num_sequences_in_split}, "
            f"frames={self.frames_per_sequence}, size={self.height}x{self.width}, "
            f"classes={self.num_object_classes}, objects={self.num_objects}, reveal_period={self.reveal_period}, "
            f"seed={self.seed}, fingerprint={self.fingerprint()})")

  # --- generation ------------------------------------------------------------------------------------------------
  def is_reveal_frame(self, positions: np.ndarray) -> np.ndarray:
    """bool, same shape as `positions`: True where objects show their class colour."""
    positions = np.asarray(positions)
    if self.reveal_period <= 0:
      return positions == 0
    return positions % self.reveal_period == 0

  def sequence_objects(self, sequence_index: int) -> dict[str, np.ndarray]:
    """The objects of one sequence: classes int (N,) in 1..K, sizes int (N,), start float (N, 2) as (y, x),
    velocity float (N, 2) in pixels per frame."""
    if not 0 <= sequence_index < self.num_sequences_in_split:
      raise IndexError(f"sequence index {sequence_index} out of range 0..{self.num_sequences_in_split - 1}")
    rng = np.random.default_rng([self.seed, self._salt, sequence_index])
    n = self.num_objects
    short_side = min(self.height, self.width)
    sizes = rng.integers(max(1, round(self.min_size * short_side)), max(1, round(self.max_size * short_side)) + 1,
                         size=n)
    span = np.stack([self.height - sizes, self.width - sizes], axis=1).astype(np.float64)
    start = rng.uniform(0.0, 1.0, size=(n, 2)) * span
    speed = rng.uniform(0.5, 1.0, size=(n, 2)) * self.max_speed
    velocity = speed * rng.choice(np.array([-1.0, 1.0]), size=(n, 2))
    classes = rng.integers(1, self.num_object_classes + 1, size=n)
    return {"classes": classes, "sizes": sizes, "start": start, "velocity": velocity, "span": span}

  def render(self, sequence_index: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames at `positions` (T,) of one sequence: images uint8 (T, H, W, 3), labels uint8 (T, H, W)."""
    positions = np.asarray(positions, np.int64)
    if positions.size and (positions.min() < 0 or positions.max() >= self.frames_per_sequence):
      raise IndexError(f"frame positions {positions.tolist()} out of range 0..{self.frames_per_sequence - 1}")
    objects = self.sequence_objects(sequence_index)
    corners = np.floor(_bounce(objects["start"], objects["velocity"], positions.astype(np.float64),
                               objects["span"])).astype(np.int64)  # (T, N, 2)
    sizes = objects["sizes"]
    rows = np.arange(self.height)[None, None, :]
    cols = np.arange(self.width)[None, None, :]
    in_rows = (rows >= corners[..., 0:1]) & (rows < corners[..., 0:1] + sizes[None, :, None])  # (T, N, H)
    in_cols = (cols >= corners[..., 1:2]) & (cols < corners[..., 1:2] + sizes[None, :, None])  # (T, N, W)
    masks = in_rows[..., :, None] & in_cols[..., None, :]  # (T, N, H, W)

    labels = np.zeros(masks.shape[:1] + masks.shape[2:], np.uint8)  # (T, H, W)
    for n in range(self.num_objects):  # painter's order: later objects on top
      np.copyto(labels, np.uint8(objects["classes"][n]), where=masks[:, n])

    # Colour lookup: table row (grey ? K+1 : 0) + label; grey frames keep the background colour.
    num_labels = self.palette.shape[0]
    grey_table = np.broadcast_to(np.array(SYNTHETIC_GREY, np.int16), (num_labels, 3)).copy()
    grey_table[0] = SYNTHETIC_BACKGROUND_COLOR
    colour_table = np.concatenate([self.palette.astype(np.int16), grey_table])  # (2 (K+1), 3)
    grey = ~self.is_reveal_frame(positions)  # (T,)
    table_index = labels + (grey.astype(np.uint8) * np.uint8(num_labels))[:, None, None]
    images = np.take(colour_table, table_index, axis=0)  # int16 (T, H, W, 3)
    if self.noise > 0:
      for t, position in enumerate(positions):
        noise_rng = np.random.default_rng([self.seed, self._salt, sequence_index, 1_000_000 + int(position)])
        images[t] += noise_rng.integers(-self.noise, self.noise + 1, size=images.shape[1:], dtype=np.int16)
    return np.clip(images, 0, 255).astype(np.uint8), labels

  def generate_sequence(self, sequence_index: int) -> tuple[np.ndarray, np.ndarray]:
    """All frames of one sequence: images uint8 (L, H, W, 3), labels uint8 (L, H, W)."""
    return self.render(sequence_index, np.arange(self.frames_per_sequence))


def best_class_blind_miou(object_pixel_counts: np.ndarray, background_iou: float = 1.0) -> float:
  """Largest expected mIoU of a predictor that cannot tell object classes apart (see the module docstring).

  Args:
    object_pixel_counts: int (K,) pixels of each object class (classes 1..K) on the frames considered.
    background_iou: IoU credited to the background class (1.0: an upper bound).
  Returns: (background_iou + sum_k IoU_k) / (1 + number of present object classes), with the best q.
  """
  counts = np.asarray(object_pixel_counts, np.float64)
  present = counts > 0
  counts = counts[present]
  if counts.size == 0:
    return float(background_iou)
  if counts.size == 1:
    return (background_iou + 1.0) / 2.0
  total = counts.sum()
  odds = counts / (total - counts)
  shares = odds / odds.sum()  # the optimum q_k, from d IoU_k / d q_k being equal across classes
  ious = shares * counts / (counts + shares * (total - counts))
  return float((background_iou + ious.sum()) / (1 + counts.size))


def per_frame_miou_bound(dataset: SyntheticVideo) -> float:
  """Upper bound on a per-frame model's mIoU over the grey (non-reveal) frames of `dataset`, from its labels."""
  counts = np.zeros(dataset.num_object_classes + 1, np.int64)
  grey_positions = np.flatnonzero(~dataset.is_reveal_frame(np.arange(dataset.frames_per_sequence)))
  if grey_positions.size == 0:
    return 1.0
  for i in range(dataset.num_sequences):
    _, labels = dataset.render(i, grey_positions)
    counts += np.bincount(labels.ravel(), minlength=counts.size)
  return best_class_blind_miou(counts[1:])


# data.synthetic: the video's fields (`seed` is the content seed, separate from data.seed).
SYNTHETIC_OPTIONS = {
    "height": 64, "width": 64, "frames_per_sequence": 8, "num_object_classes": 3, "num_objects": 3,
    "reveal_period": 4, "num_train_sequences": 512, "num_val_sequences": 32, "num_test_sequences": 32,
    "test_frames_per_sequence": 24, "min_size": 0.2, "max_size": 0.4, "max_speed": 3.0, "noise": 8, "seed": 0,
}
SYNTHETIC_SPLITS = ("train", "val", "test")  # `split_layout`: data.synthetic.num_<split>_sequences each


def read_synthetic(config, split: str, root=None) -> SyntheticVideo:
  """The `DatasetSpec` reader: the split drawn from `data.synthetic` (no files)."""
  options = config.synthetic
  num_sequences, frames_per_sequence = split_layout(options, split)
  return SyntheticVideo(
      split, num_sequences=num_sequences, frames_per_sequence=frames_per_sequence,
      height=options["height"], width=options["width"], num_object_classes=options["num_object_classes"],
      num_objects=options["num_objects"], reveal_period=options["reveal_period"], min_size=options["min_size"],
      max_size=options["max_size"], max_speed=options["max_speed"], noise=options["noise"], seed=options["seed"])


def _object_classes(config) -> int:
  return int(config.synthetic["num_object_classes"])


# Clips start on reveal frames (the only frames showing classes), so memory can make every frame exact.
SPEC = DatasetSpec(
    name="synthetic", read=read_synthetic, splits=SYNTHETIC_SPLITS,
    class_names=lambda config: ("background",) + tuple(f"object_{i}" for i in range(1, _object_classes(config) + 1)),
    palette=lambda config: np.concatenate([np.array([SYNTHETIC_BACKGROUND_COLOR], np.uint8),
                                           synthetic_class_colors(_object_classes(config))]),
    crop_size=(SYNTHETIC_OPTIONS["height"], SYNTHETIC_OPTIONS["width"]), needs_root=False,
    defaults={"clip_length": 4, "clip_start_stride": SYNTHETIC_OPTIONS["reveal_period"] or
              SYNTHETIC_OPTIONS["frames_per_sequence"], "scale_range": (1.0, 1.0), "jitter": 0.0,
              "mean": SYNTHETIC_MEAN, "std": SYNTHETIC_STD},
    options={"synthetic": SYNTHETIC_OPTIONS})
