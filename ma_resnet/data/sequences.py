"""The one interface every video dataset offers to the pipeline: a split as a list of frame sequences.

A `SequenceDataset` is one split (train/val/test) of a dataset: `sequence_names[i]` is a video, its frames are
positions 0..sequence_length(i)-1 in time order, and `read_frame(i, position)` returns one `Frame`:

  image     uint8 (H, W, 3) RGB
  label     uint8 (H, W): class ids 0..num_classes-1, 255 (`IGNORE_INDEX`) = ignore
  labelled  bool: False for a frame without annotation (its label is all 255)

CamVid, VSPW, Cityscapes video, the synthetic video and a prepared TFDS dataset all implement it, so the clip pipeline
(`ma_resnet.data.pipeline`) treats them uniformly. `repr()` of a dataset is stable and path-free (name, split, sizes
and a fingerprint of the frame list): grain checks it when an iterator state is restored.
"""

from __future__ import annotations

import abc
import hashlib
import os
from typing import NamedTuple, Sequence

import numpy as np

from ma_resnet.data.errors import DataError
from ma_resnet.data.image_files import (IGNORE_INDEX, LabelMapping, check_same_size, read_label_image, read_rgb_image,
                                       verify_image)


class Frame(NamedTuple):
  """One frame: image uint8 (H, W, 3), label uint8 (H, W) with 255 = ignore, labelled bool."""
  image: np.ndarray
  label: np.ndarray
  labelled: bool


class SequenceDataset(abc.ABC):
  """One split of a video dataset as sequences of frames in time order (see the module docstring)."""

  dataset_name: str = ""
  split: str = ""
  class_names: tuple[str, ...] = ()
  palette: np.ndarray = np.zeros((0, 3), np.uint8)  # uint8 (num_classes, 3)
  ignore_index: int = IGNORE_INDEX

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  @abc.abstractmethod
  def sequence_names(self) -> tuple[str, ...]:
    """Names of the sequences (videos), in a fixed order."""

  @abc.abstractmethod
  def sequence_length(self, sequence_index: int) -> int:
    """Number of frames of sequence `sequence_index`."""

  @abc.abstractmethod
  def frame_number(self, sequence_index: int, position: int) -> int:
    """The frame's number in its source video (e.g. 6690 for CamVid's 0001TP_006690)."""

  def is_labelled(self, sequence_index: int, position: int) -> bool:
    """Whether the frame has an annotation, without reading it (datasets that cannot tell say True)."""
    del sequence_index, position
    return True

  @abc.abstractmethod
  def read_frame(self, sequence_index: int, position: int) -> Frame:
    """Reads the frame at `position` (0-based, time order) of sequence `sequence_index`."""

  def read_clip(self, sequence_index: int, start: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames start..start+length-1 of one sequence.

    Returns: images uint8 (T, H, W, 3), labels uint8 (T, H, W), labelled bool (T,). The frames of a clip must have
    one size (true of every dataset here: a video has one resolution); DataError otherwise.
    """
    frames = [self.read_frame(sequence_index, start + t) for t in range(length)]
    shapes = {f.image.shape for f in frames}
    if len(shapes) > 1:
      raise DataError(f"{self!r}: sequence {self.sequence_names[sequence_index]} changes frame size within "
                      f"positions {start}..{start + length - 1}: {sorted(shapes)}")
    return (np.stack([f.image for f in frames]), np.stack([f.label for f in frames]),
            np.array([f.labelled for f in frames], bool))

  @property
  def num_sequences(self) -> int:
    return len(self.sequence_names)

  @property
  def sequence_lengths(self) -> tuple[int, ...]:
    return tuple(self.sequence_length(i) for i in range(self.num_sequences))

  @property
  def num_frames(self) -> int:
    return sum(self.sequence_lengths)

  def fingerprint(self) -> str:
    """Short hash of the sequence names, lengths and frame numbers (identifies the frame list, not the pixels)."""
    digest = hashlib.sha1()
    for i, name in enumerate(self.sequence_names):
      numbers = [self.frame_number(i, p) for p in range(self.sequence_length(i))]
      digest.update(f"{name}:{numbers};".encode())
    return digest.hexdigest()[:12]

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(dataset={self.dataset_name!r}, split={self.split!r}, "
            f"sequences={self.num_sequences}, frames={self.num_frames}, fingerprint={self.fingerprint()})")


class FileFrame(NamedTuple):
  """Where one frame lives on disk: its number in the video, its image file and its label file (None: unlabelled)."""
  number: int
  image_path: str
  label_path: str | None


class FileSequenceDataset(SequenceDataset):
  """A SequenceDataset over image/label files; subclasses only build the per-sequence frame lists.

  Args:
    sequences: list of (sequence name, frames in time order).
    label_mapping: raw label file values -> class ids / 255.
  """

  def __init__(self, sequences: Sequence[tuple[str, Sequence[FileFrame]]], label_mapping: LabelMapping):
    self._names = tuple(name for name, _ in sequences)
    self._frames = tuple(tuple(frames) for _, frames in sequences)
    self._label_mapping = label_mapping
    self._repr = None

  @property
  def sequence_names(self) -> tuple[str, ...]:
    return self._names

  def sequence_length(self, sequence_index: int) -> int:
    return len(self._frames[sequence_index])

  def frame_number(self, sequence_index: int, position: int) -> int:
    return self._frames[sequence_index][position].number

  def is_labelled(self, sequence_index: int, position: int) -> bool:
    return self._frames[sequence_index][position].label_path is not None

  def frame_files(self, sequence_index: int, position: int) -> FileFrame:
    return self._frames[sequence_index][position]

  def read_frame(self, sequence_index: int, position: int) -> Frame:
    entry = self._frames[sequence_index][position]
    image = read_rgb_image(entry.image_path)
    if entry.label_path is None:
      return Frame(image, np.full(image.shape[:2], IGNORE_INDEX, np.uint8), False)
    raw = read_label_image(entry.label_path)
    check_same_size(image.shape, raw.shape, entry.image_path, entry.label_path)
    return Frame(image, self._label_mapping(raw, entry.label_path), True)

  def validate(self) -> dict[str, list[str]]:
    """Checks every file of the split before training touches it: image data intact (without decoding the
    pixels), every label decodable, single-channel, of its image's size and with known values. Raises one
    DataError naming the first bad file; returns the image files that are not RGB, by mode ('RGBA': ...),
    which are read as RGB (alpha dropped, grey replicated)."""
    unusual: dict[str, list[str]] = {}
    for frames in self._frames:
      for entry in frames:
        (h, w), mode = verify_image(entry.image_path)
        if mode != "RGB":
          unusual.setdefault(mode, []).append(entry.image_path)
        if entry.label_path is not None:
          raw = read_label_image(entry.label_path)
          check_same_size((h, w), raw.shape, entry.image_path, entry.label_path)
          self._label_mapping(raw, entry.label_path)
    return unusual

  def __repr__(self) -> str:
    if self._repr is None:  # the fingerprint walks every frame: compute once
      self._repr = super().__repr__()
    return self._repr


def list_files(folder: str, suffixes: tuple[str, ...]) -> list[str]:
  """Sorted names of the files in `folder` whose lower-cased name ends with one of `suffixes`."""
  return sorted(n for n in os.listdir(folder) if n.lower().endswith(suffixes) and not n.startswith("."))
