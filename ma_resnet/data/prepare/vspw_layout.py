"""`prepare vspw`: checks a VSPW tree (nothing is written; the release is read as it is).

    check_vspw(root) -> VspwReport

For every split list present (`train.txt`, `val.txt`, `test.txt`): every listed video has its `origin/` frames
(`VspwSequences`), and every mask in `mask/` belongs to a frame of the same stem and has its size (read from the
file headers). One DataError names the first file at fault.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from tqdm import tqdm

from ma_resnet.data.errors import DataError, DataNotFoundError, require_dir
from ma_resnet.data.image_files import check_same_size, verify_image
from ma_resnet.data.sequences import list_files
from ma_resnet.data.vspw import VspwSequences

VSPW_SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class VspwReport:
  videos: dict[str, int]  # split -> videos
  frames: dict[str, int]  # split -> frames
  labelled: dict[str, int]  # split -> frames with a mask


def check_vspw(root: str, progress: bool = True) -> VspwReport:
  """Checks the layout of every split list present (see the module docstring)."""
  require_dir(root, "VSPW root")
  splits = [s for s in VSPW_SPLITS if os.path.isfile(os.path.join(root, s + ".txt"))]
  if not splits:
    raise DataNotFoundError(f"VSPW root {root} has no split list ({', '.join(s + '.txt' for s in VSPW_SPLITS)})")
  report = VspwReport({}, {}, {})
  for split in splits:
    sequences = VspwSequences(root, split)
    labelled = 0
    for index in tqdm(range(sequences.num_sequences), desc=f"VSPW {split}", unit="video", file=sys.stderr,
                      disable=not progress, dynamic_ncols=True):
      frames = [sequences.frame_files(index, p) for p in range(sequences.sequence_length(index))]
      stems = {os.path.splitext(os.path.basename(f.image_path))[0] for f in frames}
      mask_dir = os.path.join(root, "data", sequences.sequence_names[index], "mask")
      if os.path.isdir(mask_dir):
        orphans = [n for n in list_files(mask_dir, (".png",)) if os.path.splitext(n)[0] not in stems]
        if orphans:
          raise DataError(f"VSPW: mask {os.path.join(mask_dir, orphans[0])} has no frame of the same name in "
                          f"{os.path.join(os.path.dirname(mask_dir), 'origin')} ({len(orphans)} such masks)")
      for frame in frames:
        if frame.label_path is not None:
          check_same_size(verify_image(frame.image_path)[0], verify_image(frame.label_path)[0], frame.image_path,
                          frame.label_path)
          labelled += 1
    report.videos[split], report.frames[split], report.labelled[split] = (sequences.num_sequences,
                                                                           sequences.num_frames, labelled)
  return report
