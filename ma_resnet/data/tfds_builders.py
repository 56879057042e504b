"""TFDS builders for CamVid and VSPW that read a local folder and write array_record files (no TensorFlow).

`CamvidVideo` (name 'camvid_video') and `VspwVideo` (name 'vspw_video') are `tfds.core.GeneratorBasedBuilder`s.
They never download: the dataset folder is the builder's `manual_dir` (CamVid in the SegNet layout of
`ma_resnet.data.camvid`; VSPW as in `ma_resnet.data.vspw`), read through this package's readers, so the same checks
and label mappings apply. Every split found in the folder is written (CamVid: train/val/test where present;
VSPW: those whose list file exists). Examples keep time order (shuffling is disabled): sequence after sequence,
frame after frame. Features (all `tfds.features.Tensor`/`Scalar`/`Text`, readable with `tfds.data_source` without
TensorFlow):

  image        uint8 (H, W, 3)                zlib-compressed
  label        uint8 (H, W)                   class ids, 255 = ignore (VSPW: the 124-class ids)
  labelled     bool                           False where the frame has no annotation
  sequence     text                           sequence (video) name
  sequence_id  int32                          index of the sequence within its split
  frame_index  int32                          position of the frame within its sequence (0-based)
  frame_number int32                          the frame's number in the source video

`builder.info.metadata[split]` holds {'sequences': [names], 'lengths': [frames per sequence], 'offsets': [first
record of each sequence], 'frame_numbers': [[per frame]], 'reader': repr of the reader that wrote it}, so
`TfdsSequences` gives a prepared split the `SequenceDataset` interface without scanning the records.

Usage:
  builder = CamvidVideo(data_dir=data_dir)        # or prepare_dataset('camvid', manual_dir, data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=camvid_root))
  source = tfds.data_source('camvid_video', data_dir=data_dir)['train']   # after importing this module
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ma_resnet.data.camvid import CAMVID_CLASS_NAMES, CAMVID_PALETTE, CamVidSequences
from ma_resnet.data.errors import DataError, DataNotFoundError
from ma_resnet.data.image_files import IGNORE_INDEX
from ma_resnet.data.sequences import Frame, SequenceDataset
from ma_resnet.data.vspw import (VSPW_CLASS_NAMES, VSPW_NUM_CLASSES, VSPW_PALETTE, VSPW_PERSON_CLASS,
                                 VSPW_PERSON_CLASS_NAMES, VSPW_PERSON_PALETTE, VspwSequences)

SPLITS = ("train", "val", "test")


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
      "label": tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding="zlib"),
      "labelled": tfds.features.Scalar(dtype=np.bool_),
      "sequence": tfds.features.Text(),
      "sequence_id": tfds.features.Scalar(dtype=np.int32),
      "frame_index": tfds.features.Scalar(dtype=np.int32),
      "frame_number": tfds.features.Scalar(dtype=np.int32),
  })


class _SequenceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Common part: one split = one SequenceDataset written frame by frame in time order."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Frames in time order, Tensor features, array_record."}
  _DESCRIPTION = ""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This module's file. (TFDS's default looks the package up with importlib_resources, an optional etils
    dependency; the path only serves to look for a checksums file next to the code, and there is none.)"""
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self._DESCRIPTION, features=_features(),
                                 metadata=tfds.core.MetadataDict(), disable_shuffling=True)

  def _open_split(self, root: str, split: str) -> SequenceDataset | None:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    generators = {}
    for split in SPLITS:
      sequences = self._open_split(root, split)
      if sequences is None:
        continue
      lengths = list(sequences.sequence_lengths)
      offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
      frame_numbers = [[sequences.frame_number(i, p) for p in range(n)] for i, n in enumerate(lengths)]
      self.info.metadata[split] = {"sequences": list(sequences.sequence_names), "lengths": lengths,
                                   "offsets": offsets, "frame_numbers": frame_numbers, "reader": repr(sequences)}
      generators[split] = self._generate_examples(sequences)
    if not generators:
      raise DataNotFoundError(f"{self.name}: no split ({', '.join(SPLITS)}) found in manual_dir {root}")
    return generators

  def _generate_examples(self, sequences: SequenceDataset):
    key = 0
    for sequence_id, name in enumerate(sequences.sequence_names):
      for position in range(sequences.sequence_length(sequence_id)):
        frame = sequences.read_frame(sequence_id, position)
        yield key, {
            "image": frame.image, "label": frame.label, "labelled": bool(frame.labelled), "sequence": name,
            "sequence_id": sequence_id, "frame_index": position,
            "frame_number": sequences.frame_number(sequence_id, position),
        }
        key += 1


class CamvidVideo(_SequenceBuilder):
  """CamVid (SegNet layout) from `manual_dir`: 11 classes, 360x480 frames, splits train/val/test where present."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point manual_dir at the CamVid folder in the SegNet layout: train/, trainannot/, "
                                  "train.txt, val/, valannot/, val.txt (test/ optional).")
  _DESCRIPTION = "CamVid video frames in time order (SegNet release layout), labels 0..10, 255 = void."

  def _open_split(self, root, split):
    if not (os.path.isdir(os.path.join(root, split)) and os.path.isdir(os.path.join(root, split + "annot"))):
      return None
    return CamVidSequences(root, split)


class VspwVideo(_SequenceBuilder):
  """VSPW from `manual_dir` (data/<video>/origin|mask, <split>.txt): 124-class ids, 255 = ignore."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point manual_dir at the VSPW folder: data/<video>/origin/*.jpg, "
                                  "data/<video>/mask/*.png and train.txt / val.txt / test.txt.")
  _DESCRIPTION = "VSPW video frames in time order, 124 classes (mask value v -> class v-1, 0 and 255 -> 255)."

  def _open_split(self, root, split):
    if not os.path.isfile(os.path.join(root, split + ".txt")):
      return None
    return VspwSequences(root, split)


BUILDERS = {"camvid": CamvidVideo, "vspw": VspwVideo}


def prepare_dataset(name: str, manual_dir: str | os.PathLike, data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
  """Builds (once) the array_record files of dataset `name` ('camvid' | 'vspw') from `manual_dir` into `data_dir`."""
  if name not in BUILDERS:
    raise ValueError(f"no TFDS builder for dataset {name!r}; known: {sorted(BUILDERS)}")
  builder = BUILDERS[name](data_dir=os.fspath(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


class TfdsSequences(SequenceDataset):
  """A split prepared by one of the builders above, as a SequenceDataset read through `tfds.data_source`.

  Args:
    name: 'camvid' or 'vspw'.
    data_dir: the TFDS data_dir the dataset was prepared into.
    split: a split present in it.
    vspw_mode, person_class: as for `VspwSequences` (applied to the stored 124-class ids).
  """

  def __init__(self, name: str, data_dir: str | os.PathLike, split: str = "train", *, vspw_mode: str = "semantic",
               person_class: int = VSPW_PERSON_CLASS):
    if name not in BUILDERS:
      raise ValueError(f"no TFDS builder for dataset {name!r}; known: {sorted(BUILDERS)}")
    self.data_dir = os.fspath(data_dir)
    self.split = split
    self.dataset_name = name
    builder = BUILDERS[name](data_dir=self.data_dir, file_format="array_record")
    if not builder.is_prepared():
      raise DataNotFoundError(f"TFDS dataset {builder.name} is not prepared in {self.data_dir} "
                              f"(run ma_resnet.data.tfds_builders.prepare_dataset first)")
    metadata = builder.info.metadata.get(split)
    if metadata is None or split not in builder.info.splits:
      raise DataNotFoundError(f"TFDS dataset {builder.name} in {self.data_dir} has no split {split!r}")
    self._names = tuple(metadata["sequences"])
    self._lengths = tuple(int(n) for n in metadata["lengths"])
    self._offsets = tuple(int(n) for n in metadata["offsets"])
    self._frame_numbers = tuple(tuple(int(n) for n in numbers) for numbers in metadata["frame_numbers"])
    self._source = builder.as_data_source(split=split)
    if len(self._source) != sum(self._lengths):
      raise DataError(f"TFDS dataset {builder.name} split {split!r} in {self.data_dir} holds {len(self._source)} "
                      f"records but its metadata lists {sum(self._lengths)} frames")
    self._lookup = None
    if name == "camvid":
      self.class_names, self.palette = CAMVID_CLASS_NAMES, CAMVID_PALETTE
    elif vspw_mode == "semantic":
      self.class_names, self.palette = VSPW_CLASS_NAMES, VSPW_PALETTE
    elif vspw_mode == "person":
      self.class_names, self.palette = VSPW_PERSON_CLASS_NAMES, VSPW_PERSON_PALETTE
      self.dataset_name = f"vspw_person{person_class}"
      self._lookup = np.full(256, IGNORE_INDEX, np.uint8)
      self._lookup[:VSPW_NUM_CLASSES] = 0
      self._lookup[person_class] = 1
    else:
      raise ValueError(f"vspw_mode must be 'semantic' or 'person', got {vspw_mode!r}")
    self._repr = (f"TfdsSequences(dataset={self.dataset_name!r}, split={split!r}, sequences={len(self._names)}, "
                  f"frames={sum(self._lengths)}, source={metadata.get('reader', '')!r})")

  @property
  def sequence_names(self) -> tuple[str, ...]:
    return self._names

  def sequence_length(self, sequence_index: int) -> int:
    return self._lengths[sequence_index]

  def _record(self, sequence_index: int, position: int) -> dict:
    if not 0 <= position < self._lengths[sequence_index]:
      raise IndexError(f"position {position} outside sequence {self._names[sequence_index]}")
    return self._source[self._offsets[sequence_index] + position]

  def frame_number(self, sequence_index: int, position: int) -> int:
    return self._frame_numbers[sequence_index][position]

  def read_frame(self, sequence_index: int, position: int) -> Frame:
    record = self._record(sequence_index, position)
    label = record["label"] if self._lookup is None else self._lookup[record["label"]]
    return Frame(np.asarray(record["image"], np.uint8), np.asarray(label, np.uint8), bool(record["labelled"]))

  def fingerprint(self) -> str:
    return self._repr

  def __repr__(self) -> str:
    return self._repr
