"""CamVid in the SegNet release layout (11 classes, 360x480 frames, labelled at 1 fps), optionally with the
unlabelled video frames before each labelled one.

Layout under `root` (the `test` split is laid out like `val`):

  train/  trainannot/  train.txt        images <seq>_<frame>.png (RGB) and label PNGs of the same name
  val/    valannot/    val.txt
  test/   testannot/   test.txt
  video_frames/                         optional: the prepared video frames (below)

A list file holds one `image label` pair per line, written with the release's absolute paths
(`/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png`): only the file names count; they are resolved as
`<root>/<split>/<image name>` and `<root>/<split>annot/<label name>`. Without a list file the split is every PNG in
`<root>/<split>/` (with the label of the same name).

Frames are grouped by sequence (the name before the first `_`) and ordered by frame number (`0001TP_006690`,
`0016E5_00390`, `0006R0_f00930`, `Seq05VD_f00000`: digits after an optional `f`). Label values 0..10 are the classes
below, 11 (void) and 255 become the ignore value 255; anything else is a DataError.

Video frames. The numbers in the file names count the frames of CamVid's 30 fps videos, and only every 30th
(0016E5's val part: every 2nd) is labelled. `python -m ma_resnet.data.prepare camvid` decodes the original videos
(`CAMVID_VIDEOS`) and writes, for every labelled frame n of every split, the video frames n-K .. n-1 (K =
`frames_before`, default 4: TMANet's T = 4 memory frames and THA's key frames 1-4 frames back) at the release's
size, with a manifest:

  video_frames/manifest.json                       format, frames_before K, frame size, per sequence: the video,
                                                   its offset, the numbers written, the check against the release
  video_frames/frames/<seq>/<seq>_<frame>.png      RGB, named like the release (`0016E5_07958.png`)

The offset rule (number in a file name = 0-based index of the decoded frame, every frame of the first video stream,
+ `CAMVID_VIDEOS[seq].offset`): -1 for the three MXF videos, +6660 for 0001TP's `01TP_extract.avi`. It is the TMANet
authors' frame extraction (`tools/convert_datasets/camvid_video_process.py` names decoded frame i of the MXF files
`file_start + i` with file_start = -1 and of 01TP_extract.avi with file_start = 6660), and the prepare step checks it
on every labelled frame against the release's image (docs/data.md).

With `video_frames` (a prepared folder, or 'auto': `<root>/video_frames` when it holds a manifest), a split's
sequences hold its labelled frames and the prepared frames n-K .. n-1 before each labelled frame n (`labelled=False`,
all-255 labels; a frame labelled only in another split counts as unlabelled), cut wherever the frame numbers jump:
each sequence is a run of consecutive video frames, named after its first frame (`0001TP_006686`: frames
6686 .. 6690 of 0001TP in train, 1 Hz; `0016E5_07955`: frames 7955 .. 8159 in val, 15 Hz). So a clip of K+1
frames with the labelled frame last is TMANet's sample, a pair (n-g, n) is THA's key frame g video frames back, and
no clip crosses a jump. Without it, a sequence is the labelled frames of one video (memory = earlier labelled
frames, 1 s back in train).

Frame lists (`frame_list`, config `data.camvid.frame_list`). '' reads every frame of the split's list. 'tmanet'
reads the frames of TMANet's lists (`data/camvid/annotations/{train,val,test}.txt` of wanghao9610/TMANet): the
SegNet lists without `Seq05VD_f00000`, the first frame of its video, which has no earlier frame to remember (their
test list has 232 frames, the SegNet test list 233; train and val are the same).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from typing import NamedTuple

import numpy as np

from ma_resnet.data.errors import DataError, DataNotFoundError, require_dir
from ma_resnet.data.image_files import IGNORE_INDEX, LabelMapping
from ma_resnet.data.sequences import FileFrame, FileSequenceDataset, list_files
from ma_resnet.data.spec import DatasetSpec

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


class CamVidVideo(NamedTuple):
  """An original CamVid video: its file name and the offset from decoded frame index to the number in file names."""
  file_name: str
  offset: int


# The four 30 fps videos the labelled frames come from (960x720; the three MXF files as the CamVid site distributes
# them, 0001TP as the excerpt `01TP_extract.avi`). Number in a file name = decoded frame index (0-based) + offset.
CAMVID_VIDEOS = {
    "0001TP": CamVidVideo("01TP_extract.avi", 6660),
    "0006R0": CamVidVideo("0006R0.MXF", -1),
    "0016E5": CamVidVideo("0016E5.MXF", -1),
    "Seq05VD": CamVidVideo("0005VD.MXF", -1),
}
DEFAULT_FRAMES_BEFORE = 4  # TMANet's T = 4 memory frames n-4 .. n-1; THA's key frames 1..4 frames back (K = 5)
VIDEO_FRAMES_FOLDER = "video_frames"  # under the CamVid root: where data.camvid.video_frames='auto' looks
VIDEO_FRAMES_MANIFEST = "manifest.json"
VIDEO_FRAMES_FORMAT = "ma_resnet.camvid_video_frames/1"
# Frame lists: name -> the labelled frames (file stems) that list leaves out of every split.
FRAME_LISTS = {"": (), "tmanet": ("Seq05VD_f00000",)}


def parse_frame_name(file_name: str) -> tuple[str, int]:
  """'0006R0_f00930.png' -> ('0006R0', 930). DataError naming the file when the name has another shape."""
  stem = os.path.splitext(os.path.basename(file_name))[0]
  match = _FRAME_NAME.match(stem)
  if match is None:
    raise DataError(f"CamVid file name {file_name!r} is not <sequence>_<frame number> (e.g. 0001TP_006690.png)")
  return match["sequence"], int(match["number"])


def name_format(file_name: str) -> str:
  """The format of a sequence's file stems, from one of them: '0006R0_f00930.png' -> '0006R0_f{:05d}'."""
  stem = os.path.splitext(os.path.basename(file_name))[0]
  match = _FRAME_NAME.match(stem)
  if match is None:
    raise DataError(f"CamVid file name {file_name!r} is not <sequence>_<frame number> (e.g. 0001TP_006690.png)")
  return f"{match['sequence']}_{match['prefix']}{{:0{len(match['number'])}d}}"


def video_frames_folder(root: str, setting: str | None) -> str | None:
  """The prepared video-frames folder to use: `setting` '' or None: none; 'auto': `<root>/video_frames` when it
  holds a manifest, else none; anything else: that folder (DataNotFoundError naming it when it has no manifest)."""
  if not setting:
    return None
  folder = os.path.join(root, VIDEO_FRAMES_FOLDER) if setting == "auto" else os.fspath(setting)
  if os.path.isfile(os.path.join(folder, VIDEO_FRAMES_MANIFEST)):
    return folder
  if setting == "auto":
    return None
  raise DataNotFoundError(f"CamVid video frames: {os.path.join(folder, VIDEO_FRAMES_MANIFEST)} not found (write the "
                          f"folder with: python -m ma_resnet.data.prepare camvid --videos DIR --out {folder})")


def read_video_frames_manifest(folder: str) -> dict:
  """The manifest of a prepared video-frames folder; DataError naming the file when it is missing or not ours."""
  path = os.path.join(folder, VIDEO_FRAMES_MANIFEST)
  if not os.path.isfile(path):
    raise DataNotFoundError(f"CamVid video frames: manifest not found: {path}")
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as error:
    raise DataError(f"CamVid video frames: cannot read manifest {path}: {error}") from None
  if not isinstance(manifest, dict) or manifest.get("format") != VIDEO_FRAMES_FORMAT:
    raise DataError(f"CamVid video frames: {path} is not a manifest of format {VIDEO_FRAMES_FORMAT!r} (written by "
                    f"python -m ma_resnet.data.prepare camvid)")
  return manifest


def video_frame_path(folder: str, sequence: str, file_format: str, number: int) -> str:
  """Where a prepared video frame lives: <folder>/frames/<sequence>/<file_format.format(number)>.png."""
  return os.path.join(folder, "frames", sequence, file_format.format(number) + ".png")


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
  """One CamVid split (SegNet layout) as sequences, optionally with the prepared video frames; see the module
  docstring.

  Args:
    root: the folder holding train/, trainannot/, train.txt, ...
    split: 'train', 'val' or 'test' (any name with `<split>/` and `<split>annot/` folders works).
    video_frames: '' (labelled frames only), 'auto' (`<root>/video_frames` when prepared) or a prepared folder.
    frame_list: '' (the split's list) or 'tmanet' (TMANet's lists: without Seq05VD_f00000); module docstring.
  Attributes: video_frames (the folder used, or None), frames_before (its K, or None), memory_frames (one line
  saying which frames precede a labelled frame).
  Frames: image uint8 (360, 480, 3), label uint8 (360, 480) in 0..10 or 255 (all 255 when unlabelled).
  """

  dataset_name = "camvid"
  class_names = CAMVID_CLASS_NAMES
  palette = CAMVID_PALETTE

  def __init__(self, root: str | os.PathLike, split: str = "train", *, video_frames: str | os.PathLike = "",
               frame_list: str = ""):
    self.root = os.fspath(root)
    self.split = split
    require_dir(self.root, "CamVid root")
    by_sequence = labelled_frames(self.root, split, frame_list)
    self.video_frames = video_frames_folder(self.root, os.fspath(video_frames) if video_frames else "")
    self.frames_before = None
    if self.video_frames is None:
      sequences = sorted(by_sequence.items())
      looked = (f"; no prepared video frames in {os.path.join(self.root, VIDEO_FRAMES_FOLDER)}: python -m "
                "ma_resnet.data.prepare camvid writes them" if os.fspath(video_frames) == "auto" else "")
      self.memory_frames = f"CamVid: memory frames from the labelled frames (1 fps, val 15 fps{looked})"
    else:
      manifest = read_video_frames_manifest(self.video_frames)
      self.frames_before = int(manifest["frames_before"])
      sequences = self._with_video_frames(by_sequence, manifest)
      self.memory_frames = (f"CamVid: memory frames from the 30 fps video (K={self.frames_before} frames before each "
                            f"labelled frame, {self.video_frames})")
    super().__init__(sequences, LabelMapping(CAMVID_LABEL_MAPPING_TABLE))

  def _with_video_frames(self, by_sequence: dict[str, list[FileFrame]],
                         manifest: dict) -> list[tuple[str, list[FileFrame]]]:
    """Each labelled frame n with the prepared frames n-K .. n-1, cut into runs of consecutive frame numbers."""
    manifest_path = os.path.join(self.video_frames, VIDEO_FRAMES_MANIFEST)
    sequences = []
    for name, labelled in sorted(by_sequence.items()):
      entry = manifest["sequences"].get(name)
      if entry is None:
        raise DataError(f"CamVid {self.split!r}: {manifest_path} has no frames of sequence {name} (prepare its video "
                        f"{CAMVID_VIDEOS[name].file_name if name in CAMVID_VIDEOS else ''} again)")
      frames = {f.number: f for f in labelled}
      first = int(entry["first_number"])
      for n in list(frames):
        for number in range(max(n - self.frames_before, first), n):
          if number not in frames:
            path = video_frame_path(self.video_frames, name, entry["name_format"], number)
            if not os.path.isfile(path):
              raise DataNotFoundError(f"CamVid {self.split!r}: video frame not found: {path} (listed as needed by "
                                      f"{name} frame {n}; run python -m ma_resnet.data.prepare camvid again)")
            frames[number] = FileFrame(number, path, None)
      run: list[FileFrame] = []
      for frame in (frames[n] for n in sorted(frames)):
        if run and frame.number != run[-1].number + 1:
          sequences.append((entry["name_format"].format(run[0].number), run))
          run = []
        run.append(frame)
      sequences.append((entry["name_format"].format(run[0].number), run))
    return sequences


def labelled_frames(root: str, split: str, frame_list: str = "") -> dict[str, list[FileFrame]]:
  """{sequence: its labelled frames in time order} of one split of the SegNet layout, without the frames
  `frame_list` leaves out (`FRAME_LISTS`); DataError naming the file at fault (a missing folder or listed file, an
  empty split, a frame listed twice)."""
  if frame_list not in FRAME_LISTS:
    raise DataError(f"CamVid frame list {frame_list!r} is not one of {sorted(FRAME_LISTS)}")
  image_dir = os.path.join(root, split)
  label_dir = os.path.join(root, split + "annot")
  require_dir(image_dir, f"CamVid {split!r} images")
  require_dir(label_dir, f"CamVid {split!r} labels")
  list_path = os.path.join(root, split + ".txt")
  if os.path.isfile(list_path):
    pairs = read_list_file(list_path)
    source = list_path
  else:
    pairs = [(name, name) for name in list_files(image_dir, (".png",))]
    source = image_dir
  if not pairs:
    raise DataNotFoundError(f"CamVid split {split!r} is empty: no frames in {source}")
  left_out = FRAME_LISTS[frame_list]
  pairs = [(image, label) for image, label in pairs if os.path.splitext(image)[0] not in left_out]
  by_sequence: dict[str, list[FileFrame]] = defaultdict(list)
  for image_name, label_name in pairs:
    sequence, number = parse_frame_name(image_name)
    image_path = os.path.join(image_dir, image_name)
    label_path = os.path.join(label_dir, label_name)
    for path in (image_path, label_path):
      if not os.path.isfile(path):
        raise DataNotFoundError(f"CamVid {split!r}: file listed in {source} not found: {path}")
    by_sequence[sequence].append(FileFrame(number, image_path, label_path))
  for name, frames in by_sequence.items():
    frames.sort(key=lambda f: f.number)
    numbers = [f.number for f in frames]
    if len(set(numbers)) != len(numbers):
      duplicate = next(n for n in numbers if numbers.count(n) > 1)
      raise DataError(f"CamVid {split!r}: sequence {name} lists frame {duplicate} twice in {source}")
  return dict(by_sequence)


def read_camvid(config, split: str, root: str) -> CamVidSequences:
  """The `DatasetSpec` reader: `split` under `root`, with `data.camvid.video_frames` and `.frame_list`."""
  return CamVidSequences(root, split, video_frames=config.camvid.get("video_frames", ""),
                         frame_list=config.camvid.get("frame_list", ""))


SPEC = DatasetSpec(
    name="camvid", read=read_camvid, splits=("train", "val", "test"), class_names=CAMVID_CLASS_NAMES,
    palette=CAMVID_PALETTE, crop_size=(360, 480), defaults={"mean": CAMVID_MEAN, "std": CAMVID_STD},
    options={"camvid": {"video_frames": "", "frame_list": ""}})
