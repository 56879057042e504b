"""CamVid in the SegNet release layout (11 classes, 360x480 frames, labelled at 1 fps).

Layout under `root` (the `test` split is laid out like `val`):

  train/  trainannot/  train.txt        images <seq>_<frame>.png (RGB) and label PNGs of the same name
  val/    valannot/    val.txt
  test/   testannot/   test.txt

A list file holds one `image label` pair per line, written with the release's absolute paths
(`/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png`): only the file names count; they are resolved as
`<root>/<split>/<image name>` and `<root>/<split>annot/<label name>`. Without a list file the split is every PNG in
`<root>/<split>/` (with the label of the same name).

Frames are grouped by sequence (the name before the first `_`) and ordered by frame number (`0001TP_006690`,
`0016E5_00390`, `0006R0_f00930`, `Seq05VD_f00000`: digits after an optional `f`). Label values 0..10 are the classes
below, 11 (void) and 255 become the ignore value 255; anything else is a DataError.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

import numpy as np

from ma_resnet.data.errors import DataError, DataNotFoundError, require_dir
from ma_resnet.data.image_files import IGNORE_INDEX, LabelMapping
from ma_resnet.data.sequences import FileFrame, FileSequenceDataset, list_files

CAMVID_CLASS_NAMES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                      "Pedestrian", "Bicyclist")
CAMVID_NUM_CLASSES = len(CAMVID_CLASS_NAMES)
CAMVID_VOID_VALUE = 11  # 'Unlabelled' in the label PNGs; mapped to IGNORE_INDEX
# The standard CamVid 11-class colours (SegNet release), RGB, one row per class id.
CAMVID_PALETTE = np.array([
    [128, 128, 128],  # Sky
    [128, 0, 0],  # Building
    [192, 192, 128],  # Pole
    [128, 64, 128],  # Road
    [60, 40, 222],  # Pavement
    [128, 128, 0],  # Tree
    [192, 128, 128],  # SignSymbol
    [64, 64, 128],  # Fence
    [64, 0, 128],  # Car
    [64, 64, 0],  # Pedestrian
    [0, 128, 192],  # Bicyclist
], np.uint8)
CAMVID_VOID_COLOR = (0, 0, 0)
# RGB statistics of the train split on a 0..1 scale.
CAMVID_MEAN = (0.412, 0.425, 0.433)
CAMVID_STD = (0.307, 0.312, 0.307)

CAMVID_LABEL_MAPPING_TABLE = {**{v: v for v in range(CAMVID_NUM_CLASSES)}, CAMVID_VOID_VALUE: IGNORE_INDEX,
                              IGNORE_INDEX: IGNORE_INDEX}

_FRAME_NAME = re.compile(r"^(?P<sequence>[^_]+)_(?P<prefix>f?)(?P<number>\d+)$")


def parse_frame_name(file_name: str) -> tuple[str, int]:
  """'0006R0_f00930.png' -> ('0006R0', 930). DataError naming the file when the name has another shape."""
  stem = os.path.splitext(os.path.basename(file_name))[0]
  match = _FRAME_NAME.match(stem)
  if match is None:
    raise DataError(f"CamVid file name {file_name!r} is not <sequence>_<frame number> (e.g. 0001TP_006690.png)")
  return match["sequence"], int(match["number"])


def read_list_file(list_path: str) -> list[tuple[str, str]]:
  """The (image file name, label file name) pairs of a SegNet list file; directories in it are dropped."""
  pairs = []
  with open(list_path) as f:
    for line_number, line in enumerate(f, start=1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 2:
        raise DataError(f"{list_path}, line {line_number}: expected 'image label', got {line.strip()!r}")
      pairs.append((os.path.basename(fields[0]), os.path.basename(fields[1])))
  return pairs


class CamVidSequences(FileSequenceDataset):
  """One CamVid split (SegNet layout) as sequences; see the module docstring.

  Args:
    root: the folder holding train/, trainannot/, train.txt, ...
    split: 'train', 'val' or 'test' (any name with `<split>/` and `<split>annot/` folders works).
  Frames: image uint8 (360, 480, 3), label uint8 (360, 480) in 0..10 or 255.
  """

  dataset_name = "camvid"
  class_names = CAMVID_CLASS_NAMES
  palette = CAMVID_PALETTE

  def __init__(self, root: str | os.PathLike, split: str = "train"):
    self.root = os.fspath(root)
    self.split = split
    require_dir(self.root, "CamVid root")
    image_dir = os.path.join(self.root, split)
    label_dir = os.path.join(self.root, split + "annot")
    require_dir(image_dir, f"CamVid {split!r} images")
    require_dir(label_dir, f"CamVid {split!r} labels")
    list_path = os.path.join(self.root, split + ".txt")
    if os.path.isfile(list_path):
      pairs = read_list_file(list_path)
      source = list_path
    else:
      pairs = [(name, name) for name in list_files(image_dir, (".png",))]
      source = image_dir
    if not pairs:
      raise DataNotFoundError(f"CamVid split {split!r} is empty: no frames in {source}")

    by_sequence: dict[str, list[FileFrame]] = defaultdict(list)
    for image_name, label_name in pairs:
      sequence, number = parse_frame_name(image_name)
      image_path = os.path.join(image_dir, image_name)
      label_path = os.path.join(label_dir, label_name)
      for path in (image_path, label_path):
        if not os.path.isfile(path):
          raise DataNotFoundError(f"CamVid {split!r}: file listed in {source} not found: {path}")
      by_sequence[sequence].append(FileFrame(number, image_path, label_path))
    sequences = []
    for name in sorted(by_sequence):
      frames = sorted(by_sequence[name], key=lambda f: f.number)
      numbers = [f.number for f in frames]
      if len(set(numbers)) != len(numbers):
        duplicate = next(n for n in numbers if numbers.count(n) > 1)
        raise DataError(f"CamVid {split!r}: sequence {name} lists frame {duplicate} twice in {source}")
      sequences.append((name, frames))
    super().__init__(sequences, LabelMapping(CAMVID_LABEL_MAPPING_TABLE))
