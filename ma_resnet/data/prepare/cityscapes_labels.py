"""`prepare cityscapes`: the train-id label PNGs the reader needs, and the check of the video snippets.

    prepare_cityscapes(root) -> CityscapesReport

1. Every `gtFine/<split>/<city>/<stem>_gtFine_polygons.json` becomes `<stem>_gtFine_labelTrainIds.png` beside it,
   drawn by cityscapesscripts' `json2labelImg(json, png, 'trainIds')` (what its `createTrainIdLabelImgs` does for the
   whole tree; without train ids, values are the 34 label ids and a reader of 19 classes is wrong everywhere). Each
   PNG is written all or nothing (`files.atomic_path`); PNGs already there are kept, so a second run writes nothing
   and a killed run resumes.
2. Every labelled frame n of every split must have its whole 30-frame snippet n-19 .. n+10 in
   `leftImg8bit_sequence/<split>/<city>/` (`CityscapesSequences` with frames_before=19, frames_after=10): one
   DataError naming the first missing file.

cityscapesscripts is an optional dependency (`pip install cityscapesscripts`, or the `cityscapes` extra), needed only
when a label PNG is missing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

from tqdm import tqdm

from ma_resnet.data.cityscapes import (CITYSCAPES_SNIPPET_AFTER, CITYSCAPES_SNIPPET_BEFORE, LABEL_SUFFIX,
                                       CityscapesSequences)
from ma_resnet.data.errors import DataError, DataNotFoundError, require_dir
from ma_resnet.files import atomic_path

POLYGONS_SUFFIX = "_gtFine_polygons.json"
CITYSCAPES_SPLITS = ("train", "val", "test")


class MissingDependencyError(ImportError):
  """An optional package the command needs is not installed: the message says how to install it."""


@dataclasses.dataclass
class CityscapesReport:
  written: int
  present: int
  snippets: dict[str, int]  # split -> labelled frames with a complete snippet


def _cityscapesscripts():
  try:
    from cityscapesscripts.helpers.labels import name2label
    from cityscapesscripts.preparation.json2labelImg import json2labelImg
  except ImportError:
    raise MissingDependencyError("prepare cityscapes needs cityscapesscripts to draw the train-id labels: "
                                 "pip install cityscapesscripts") from None
  return json2labelImg, name2label


def polygon_files(root: str) -> list[tuple[str, str]]:
  """(split, path) of every gtFine polygon file, in name order; DataNotFoundError when there is none."""
  gt_fine = os.path.join(root, "gtFine")
  require_dir(gt_fine, "Cityscapes gtFine (the gtFine_trainvaltest package)")
  files = []
  for split in CITYSCAPES_SPLITS:
    split_dir = os.path.join(gt_fine, split)
    if not os.path.isdir(split_dir):
      continue
    for city in sorted(os.listdir(split_dir)):
      city_dir = os.path.join(split_dir, city)
      if os.path.isdir(city_dir):
        names = sorted(n for n in os.listdir(city_dir) if n.endswith(POLYGONS_SUFFIX))
        files += [(split, os.path.join(city_dir, n)) for n in names]
  if not files:
    raise DataNotFoundError(f"Cityscapes: no *{POLYGONS_SUFFIX} in {gt_fine}/<split>/<city>/ (the gtFine_trainvaltest "
                            "package)")
  return files


def _check_label_names(path: str, name2label) -> None:
  """DataError naming the file and the label when a polygon's label is unknown to cityscapesscripts (which would
  otherwise print and exit the process)."""
  try:
    with open(path) as f:
      annotation = json.load(f)
    labels = [o["label"] for o in annotation["objects"]]
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise DataError(f"Cityscapes: cannot read polygons {path}: {error!r}") from None
  for label in labels:
    if label not in name2label and not (label.endswith("group") and label[:-len("group")] in name2label):
      raise DataError(f"Cityscapes: {path} has a polygon of unknown label {label!r}")


def prepare_cityscapes(root: str, progress: bool = True) -> CityscapesReport:
  """Writes the missing labelTrainIds PNGs, then checks the snippets (see the module docstring)."""
  require_dir(root, "Cityscapes root")
  files = polygon_files(root)
  todo = [(split, path) for split, path in files if not os.path.isfile(path[:-len(POLYGONS_SUFFIX)] + LABEL_SUFFIX)]
  if todo:
    json2labelImg, name2label = _cityscapesscripts()
    for _, path in tqdm(todo, desc="labelTrainIds", unit="label", file=sys.stderr, disable=not progress,
                        dynamic_ncols=True):
      _check_label_names(path, name2label)
      with atomic_path(path[:-len(POLYGONS_SUFFIX)] + LABEL_SUFFIX) as tmp:
        json2labelImg(path, tmp, "trainIds")
  snippets = {}
  for split in sorted({split for split, _ in files}, key=CITYSCAPES_SPLITS.index):
    sequences = CityscapesSequences(root, split, frames_before=CITYSCAPES_SNIPPET_BEFORE,
                                    frames_after=CITYSCAPES_SNIPPET_AFTER)
    snippets[split] = sequences.num_sequences
  return CityscapesReport(len(todo), len(files) - len(todo), snippets)
