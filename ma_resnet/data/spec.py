"""`DatasetSpec`: what the pipeline needs to know of one dataset, declared by the dataset's own module.

    SPEC = DatasetSpec(
        name='camvid', read=read_camvid, splits=('train', 'val', 'test'),
        class_names=CAMVID_CLASS_NAMES, palette=CAMVID_PALETTE, crop_size=(360, 480),
        defaults={'mean': CAMVID_MEAN, 'std': CAMVID_STD}, options={'camvid': {'video_frames': ''}})

`read(config, split, root) -> SequenceDataset` builds a split from the data config (`config` answers every field
of `pipeline.default_data_config`, `root` is the dataset folder: `data.root` or `<repo>/../shared/data/<name>`;
None for a dataset without files, `needs_root=False`). `class_names` / `palette` are values, or functions of the
data config where a field changes them (VSPW's person mode, the synthetic video's number of classes).
`registry` lists the specs of the package; `pipeline` asks it for everything dataset-specific.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from ma_resnet.data.image_files import IGNORE_INDEX
from ma_resnet.data.sequences import SequenceDataset

ClassNames = Union[Sequence[str], Callable[[Any], Sequence[str]]]
Palette = Union[np.ndarray, Callable[[Any], np.ndarray]]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset: its name (`data.name`), reader, splits, classes, colours and default config values."""
  name: str
  read: Callable[[Any, str, 'str | None'], SequenceDataset]  # (data config, split, root) -> the split
  splits: tuple[str, ...]                # the splits it ships (documentation, listings, tests)
  class_names: ClassNames                # index = class id
  palette: Palette                       # uint8 (num_classes, 3) RGB per class id
  crop_size: tuple[int, int]             # default data.crop_size (h, w) of training clips
  eval_size: tuple[int, int] | None = None  # default data.eval_size; None = native frames
  ignore_index: int = IGNORE_INDEX       # the label value of unlabelled pixels
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # other data fields it sets (mean, std...)
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)   # its own fields, in every data config
  needs_root: bool = True                # reads files under data.root (the synthetic video does not)

  def names_of_classes(self, config) -> tuple[str, ...]:
    return tuple(self.class_names(config) if callable(self.class_names) else self.class_names)

  def colours(self, config) -> np.ndarray:
    return np.asarray(self.palette(config) if callable(self.palette) else self.palette, np.uint8)
