"""VSPW (Video Scene Parsing in the Wild), 124 classes, and the paper's binary "Person" video-object mode.

Layout under `root` (as released, e.g. VSPW_480p):

  data/<video>/origin/<frame>.jpg     RGB frames
  data/<video>/mask/<frame>.png       single-channel masks, same stem as the frame
  train.txt  val.txt  test.txt        one video name per line

Mask values follow the VSPW toolkit: v in 1..124 is class v-1; 0 (unlabelled) and 255 are ignored (255). Any other
value is a DataError. A frame without a mask file (or a video without `mask/`, as in the test split) is returned
with `labelled=False` and an all-255 label.

`mode='person'` (MA-ResNet50's video object segmentation task) gives two classes, 0 = background (every other
class) and 1 = person (class `person_class`, default `VSPW_PERSON_CLASS`, the most frequent VSPW class); ignored
pixels stay 255.
"""

from __future__ import annotations

import os
import re

import numpy as np

from ma_resnet.data.augment import IMAGENET_MEAN, IMAGENET_STD
from ma_resnet.data.errors import DataError, DataNotFoundError, require_dir, require_file
from ma_resnet.data.image_files import IGNORE_INDEX, LabelMapping
from ma_resnet.data.sequences import FileFrame, FileSequenceDataset, list_files
from ma_resnet.data.spec import DatasetSpec
from ma_resnet.visualize import default_palette

VSPW_CLASS_NAMES = (
    "wall", "ceiling", "door", "stair", "ladder", "escalator", "Playground_slide", "handrail_or_fence", "window",
    "rail", "goal", "pillar", "pole", "floor", "ground", "grass", "sand", "athletic_field", "road", "path",
    "crosswalk", "building", "house", "bridge", "tower", "windmill", "well_or_well_lid", "other_construction", "sky",
    "mountain", "stone", "wood", "ice", "snowfield", "grandstand", "sea", "river", "lake", "waterfall", "water",
    "billboard_or_Bulletin_Board", "sculpture", "pipeline", "flag", "parasol_or_umbrella", "cushion_or_carpet",
    "tent", "roadblock", "car", "bus", "truck", "bicycle", "motorcycle", "wheeled_machine", "ship_or_boat", "raft",
    "airplane", "tyre", "traffic_light", "lamp", "person", "cat", "dog", "horse", "cattle", "other_animal", "tree",
    "flower", "other_plant", "toy", "ball_net", "backboard", "skateboard", "bat", "ball",
    "cupboard_or_showcase_or_storage_rack", "box", "traveling_case_or_trolley_case", "basket", "bag_or_package",
    "trash_can", "cage", "plate", "tub_or_bowl_or_pot", "bottle_or_cup", "barrel", "fishbowl", "bed", "pillow",
    "table_or_desk", "chair_or_seat", "bench", "sofa", "shelf", "bathtub", "gun", "commode", "roaster",
    "other_machine", "refrigerator", "washing_machine", "Microwave_oven", "fan", "curtain", "textiles", "clothes",
    "painting_or_poster", "mirror", "flower_pot_or_vase", "clock", "book", "tool", "blackboard", "tissue",
    "screen_or_television", "computer", "printer", "Mobile_phone", "keyboard", "other_electronic_product", "fruit",
    "food", "instrument", "train")
VSPW_NUM_CLASSES = len(VSPW_CLASS_NAMES)  # 124
VSPW_PERSON_CLASS = VSPW_CLASS_NAMES.index("person")  # class id 60 (mask value 61)
VSPW_PERSON_CLASS_NAMES = ("background", "person")
VSPW_MODES = ("semantic", "person")


VSPW_PALETTE = default_palette(VSPW_NUM_CLASSES + 1)[1:]  # bit-interleaved colours, no black class
VSPW_PERSON_PALETTE = np.array([[0, 0, 0], [220, 20, 60]], np.uint8)


def vspw_label_table(mode: str = "semantic", person_class: int = VSPW_PERSON_CLASS) -> dict[int, int]:
  """Raw mask value -> class id / 255 for `mode` ('semantic': 124 classes, 'person': background/person)."""
  if mode not in VSPW_MODES:
    raise ValueError(f"VSPW mode must be one of {VSPW_MODES}, got {mode!r}")
  if not 0 <= person_class < VSPW_NUM_CLASSES:
    raise ValueError(f"person_class must be a VSPW class id in 0..{VSPW_NUM_CLASSES - 1}, got {person_class}")
  table = {0: IGNORE_INDEX, IGNORE_INDEX: IGNORE_INDEX}
  for value in range(1, VSPW_NUM_CLASSES + 1):
    class_id = value - 1
    table[value] = class_id if mode == "semantic" else int(class_id == person_class)
  return table


def read_video_list(list_path: str) -> list[str]:
  """Video names of a VSPW split list, one per line, blank lines skipped."""
  require_file(list_path, "VSPW split list")
  with open(list_path) as f:
    return [line.strip() for line in f if line.strip()]


_TRAILING_DIGITS = re.compile(r"(\d+)$")


class VspwSequences(FileSequenceDataset):
  """One VSPW split as sequences (one per video); see the module docstring.

  Args:
    root: folder holding data/ and the split lists.
    split: 'train', 'val' or 'test' (reads `<root>/<split>.txt`).
    mode: 'semantic' (124 classes) or 'person' (2 classes).
    person_class: the VSPW class id treated as "person" in person mode.
  Frames: image uint8 (H, W, 3), label uint8 (H, W); sizes vary between videos.
  """

  dataset_name = "vspw"

  def __init__(self, root: str | os.PathLike, split: str = "train", *, mode: str = "semantic",
               person_class: int = VSPW_PERSON_CLASS):
    self.root = os.fspath(root)
    self.split = split
    self.mode = mode
    self.person_class = person_class
    table = vspw_label_table(mode, person_class)
    if mode == "semantic":
      self.class_names, self.palette = VSPW_CLASS_NAMES, VSPW_PALETTE
    else:
      self.class_names, self.palette = VSPW_PERSON_CLASS_NAMES, VSPW_PERSON_PALETTE
      self.dataset_name = f"vspw_person{person_class}"
    require_dir(self.root, "VSPW root")
    data_dir = os.path.join(self.root, "data")
    require_dir(data_dir, "VSPW data")
    list_path = os.path.join(self.root, split + ".txt")
    videos = read_video_list(list_path)
    if not videos:
      raise DataNotFoundError(f"VSPW split {split!r} is empty: no video names in {list_path}")
    if len(set(videos)) != len(videos):
      duplicate = next(v for v in videos if videos.count(v) > 1)
      raise DataError(f"VSPW split list {list_path} names video {duplicate!r} twice")
    sequences = [(video, self._video_frames(data_dir, video, list_path)) for video in videos]
    super().__init__(sequences, LabelMapping(table))

  @staticmethod
  def _video_frames(data_dir: str, video: str, list_path: str) -> list[FileFrame]:
    origin_dir = os.path.join(data_dir, video, "origin")
    mask_dir = os.path.join(data_dir, video, "mask")
    require_dir(origin_dir, f"VSPW video {video!r} (listed in {list_path}) frames")
    names = list_files(origin_dir, (".jpg", ".jpeg", ".png"))
    if not names:
      raise DataNotFoundError(f"VSPW video {video!r} has no frames in {origin_dir}")
    masks = set(list_files(mask_dir, (".png",))) if os.path.isdir(mask_dir) else set()
    stems = [os.path.splitext(n)[0] for n in names]
    digits = [_TRAILING_DIGITS.search(s) for s in stems]
    if all(digits):
      numbers = [int(d.group(1)) for d in digits]
      if len(set(numbers)) != len(numbers):
        numbers = list(range(len(names)))
    else:
      numbers = list(range(len(names)))
    frames = []
    for number, name, stem in sorted(zip(numbers, names, stems)):
      mask = stem + ".png"
      frames.append(FileFrame(number, os.path.join(origin_dir, name),
                              os.path.join(mask_dir, mask) if mask in masks else None))
    return frames


def read_vspw(config, split: str, root: str) -> VspwSequences:
  """The `DatasetSpec` reader: `split` under `root` in `data.vspw_mode`."""
  return VspwSequences(root, split, mode=config.vspw_mode, person_class=config.person_class)


def _semantic(config) -> bool:
  return config.vspw_mode == "semantic"


SPEC = DatasetSpec(
    name="vspw", read=read_vspw, splits=("train", "val", "test"),
    class_names=lambda config: VSPW_CLASS_NAMES if _semantic(config) else VSPW_PERSON_CLASS_NAMES,
    palette=lambda config: VSPW_PALETTE if _semantic(config) else VSPW_PERSON_PALETTE, crop_size=(480, 480),
    defaults={"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    options={"vspw_mode": "semantic", "person_class": VSPW_PERSON_CLASS})
