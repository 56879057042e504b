"""Cityscapes video: the 30-frame snippets around the finely labelled frames (19 train classes, 1024x2048 frames).

Layout under `root` (the `leftImg8bit_sequence` and `gtFine` packages; `test` is laid out like `val`):

  leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png   every frame of every snippet
  gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png        the labelled frame of each snippet

`<seq>` and `<frame>` are 6-digit numbers. A snippet holds frames n-19 .. n+10 of its video, where n is its one
labelled frame (`CITYSCAPES_SNIPPET_BEFORE` / `_AFTER`). Each snippet is one sequence, named `<city>_<seq>_<n>`
(e.g. `aachen_000000_000019`), with its frames in time order: the labelled frame carries its gtFine label, the
others are unlabelled (`labelled=False`, all-255 label). `frames_before=T, frames_after=A` narrows every sequence to
frames n-T .. n+A (TMANet: T memory frames and the labelled frame last, A = 0); the default (None) keeps the snippet
as present on disk. The label files are the `labelTrainIds` PNGs written by cityscapesscripts'
`createTrainIdLabelImgs`: values 0..18 are the classes below, 255 is ignored; anything else is a DataError.

Errors (DataError naming the file or folder): a missing `leftImg8bit_sequence` split folder, a frame missing from a
sequence, frames that belong to no labelled frame's snippet, two labelled frames in one snippet, a split without
labelled frames. Frames: image uint8 (1024, 2048, 3), label uint8 (1024, 2048).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

import numpy as np
from ml_collections.config_dict import placeholder

from ma_resnet.data.augment import IMAGENET_MEAN, IMAGENET_STD
from ma_resnet.data.errors import DataError, DataNotFoundError, require_dir
from ma_resnet.data.image_files import IGNORE_INDEX, LabelMapping
from ma_resnet.data.sequences import FileFrame, FileSequenceDataset, list_files
from ma_resnet.data.spec import DatasetSpec

CITYSCAPES_CLASS_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                          "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                          "motorcycle", "bicycle")
CITYSCAPES_NUM_CLASSES = len(CITYSCAPES_CLASS_NAMES)  # 19
# The standard Cityscapes colours (cityscapesscripts' labels.py), RGB, one row per train id.
CITYSCAPES_PALETTE = np.array([
    [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
    [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60], [255, 0, 0],
    [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32],
], np.uint8)
CITYSCAPES_SNIPPET_BEFORE = 19  # frames of a snippet before its labelled frame
CITYSCAPES_SNIPPET_AFTER = 10  # and after it
CITYSCAPES_LABEL_MAPPING_TABLE = {**{v: v for v in range(CITYSCAPES_NUM_CLASSES)}, IGNORE_INDEX: IGNORE_INDEX}

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelTrainIds.png"
_FRAME_NAME = re.compile(r"^(?P<city>.+)_(?P<sequence>\d+)_(?P<number>\d+)$")


def parse_cityscapes_name(file_name: str, suffix: str) -> tuple[str, str, str]:
  """'aachen_000000_000019_leftImg8bit.png' -> ('aachen', '000000', '000019'); DataError naming a bad name."""
  match = _FRAME_NAME.match(os.path.basename(file_name)[:-len(suffix)])
  if match is None:
    raise DataError(f"Cityscapes file name {file_name!r} is not <city>_<seq>_<frame>{suffix}")
  return match["city"], match["sequence"], match["number"]


def _numbered_files(folder: str, suffix: str) -> dict[tuple[str, int], tuple[str, str]]:
  """{(seq, frame number): (frame digits, path)} of the files named <city>_<seq>_<frame><suffix> in `folder`."""
  files = {}
  for name in list_files(folder, (suffix.lower(),)):
    _, sequence, number = parse_cityscapes_name(name, suffix)
    files[sequence, int(number)] = (number, os.path.join(folder, name))
  return files


class CityscapesSequences(FileSequenceDataset):
  """One Cityscapes split as video sequences, one per labelled frame; see the module docstring.

  Args:
    root: the folder holding leftImg8bit_sequence/ and gtFine/.
    split: 'train', 'val' or 'test'.
    frames_before: frames before the labelled one in every sequence, 0..19 (None: those on disk).
    frames_after: frames after it, 0..10 (None: those on disk).
  Frames: image uint8 (1024, 2048, 3), label uint8 (1024, 2048) in 0..18 or 255 (all 255 when unlabelled).
  """

  dataset_name = "cityscapes"
  class_names = CITYSCAPES_CLASS_NAMES
  palette = CITYSCAPES_PALETTE

  def __init__(self, root: str | os.PathLike, split: str = "train", *, frames_before: int | None = None,
               frames_after: int | None = None):
    for value, limit, what in ((frames_before, CITYSCAPES_SNIPPET_BEFORE, "frames_before"),
                               (frames_after, CITYSCAPES_SNIPPET_AFTER, "frames_after")):
      if value is not None and not 0 <= value <= limit:
        raise ValueError(f"{what} must be None or in 0..{limit} (a snippet's extent), got {value}")
    self.root = os.fspath(root)
    self.split = split
    self.frames_before, self.frames_after = frames_before, frames_after
    require_dir(self.root, "Cityscapes root")
    image_dir = os.path.join(self.root, "leftImg8bit_sequence", split)
    if not os.path.isdir(image_dir):
      raise DataNotFoundError(f"Cityscapes video needs the leftImg8bit_sequence package "
                              f"(leftImg8bit_sequence_trainvaltest.zip): folder not found: {image_dir}")
    label_dir = os.path.join(self.root, "gtFine", split)
    require_dir(label_dir, f"Cityscapes {split!r} labels")
    cities = sorted({c for folder in (image_dir, label_dir) for c in os.listdir(folder)
                     if os.path.isdir(os.path.join(folder, c)) and not c.startswith(".")})
    labels = {}
    for city in cities:
      require_dir(os.path.join(label_dir, city), f"Cityscapes {split!r} labels of {city}")
      labels[city] = _numbered_files(os.path.join(label_dir, city), LABEL_SUFFIX)
    if not any(labels.values()):
      raise DataNotFoundError(f"Cityscapes split {split!r} has no labelled frames: no *{LABEL_SUFFIX} in {label_dir} "
                              f"(cityscapesscripts' createTrainIdLabelImgs writes them)")
    sequences = []
    for city in cities:
      city_dir = os.path.join(image_dir, city)
      require_dir(city_dir, f"Cityscapes {split!r} frames of {city} (leftImg8bit_sequence)")
      sequences += self._city_sequences(city, city_dir, _numbered_files(city_dir, IMAGE_SUFFIX), labels[city])
    super().__init__(sequences, LabelMapping(CITYSCAPES_LABEL_MAPPING_TABLE))

  def _city_sequences(self, city: str, city_dir: str, images: dict, labels: dict) -> list[tuple[str, list[FileFrame]]]:
    """One (name, frames) per labelled frame of `city`, checking that every frame on disk has one snippet."""
    before, after = CITYSCAPES_SNIPPET_BEFORE, CITYSCAPES_SNIPPET_AFTER
    labelled = defaultdict(list)  # seq -> its labelled frame numbers, ascending
    for sequence, number in sorted(labels):
      if labelled[sequence] and number - labelled[sequence][-1] <= before + after:
        first, second = labels[sequence, labelled[sequence][-1]][1], labels[sequence, number][1]
        raise DataError(f"Cityscapes video {city}_{sequence} in {city_dir} has two labelled frames in one snippet "
                        f"({before + after + 1} frames): {first} and {second}")
      labelled[sequence].append(number)
    orphans = [path for (sequence, number), (_, path) in sorted(images.items())
               if not any(-after <= n - number <= before for n in labelled[sequence])]
    if orphans:
      raise DataError(f"Cityscapes frames in {city_dir} belong to no labelled frame's snippet (no {LABEL_SUFFIX} "
                      f"within {after} frames before or {before} after them): {orphans[0]} .. {orphans[-1]} "
                      f"({len(orphans)} frames)")
    sequences = []
    for sequence, number in sorted(labels):
      digits, label_path = labels[sequence, number]
      present = [n for n in range(number - before, number + after + 1) if (sequence, n) in images] + [number]
      first = min(present) if self.frames_before is None else number - self.frames_before
      last = max(present) if self.frames_after is None else number + self.frames_after
      frames = []
      for n in range(first, last + 1):
        if (sequence, n) not in images:
          name = f"{city}_{sequence}_{str(n).zfill(len(digits))}{IMAGE_SUFFIX}"
          raise DataNotFoundError(f"Cityscapes sequence {city}_{sequence}_{digits}: frame file not found: "
                                  f"{os.path.join(city_dir, name)}")
        frames.append(FileFrame(n, images[sequence, n][1], label_path if n == number else None))
      sequences.append((f"{city}_{sequence}_{digits}", frames))
    return sequences


def read_cityscapes(config, split: str, root: str) -> CityscapesSequences:
  """The `DatasetSpec` reader: `split` under `root`, snippets cut to `data.cityscapes.frames_before / after`."""
  return CityscapesSequences(root, split, frames_before=config.cityscapes.get("frames_before"),
                             frames_after=config.cityscapes.get("frames_after"))


# crop_size: CPU-sane; TMANet crops 769x769. frames_before / after: placeholders, so that the command line can set
# them (None: the snippet's frames on disk).
SPEC = DatasetSpec(
    name="cityscapes", read=read_cityscapes, splits=("train", "val", "test"), class_names=CITYSCAPES_CLASS_NAMES,
    palette=CITYSCAPES_PALETTE, crop_size=(512, 1024),
    defaults={"clip_length": 3, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    options={"cityscapes": {"frames_before": placeholder(int), "frames_after": placeholder(int)}})
