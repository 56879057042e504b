"""`prepare camvid`: the video frames before every labelled CamVid frame, decoded from the original videos.

    prepare_video_frames(videos_dir, out, camvid_root, frames_before=4) -> PrepareReport

For every sequence of the SegNet-layout root (all its splits), the video `CAMVID_VIDEOS[seq].file_name` in
`videos_dir` is decoded once, in order (`video_io.open_frames`: every frame of the first video stream), and decoded
frame i gets the number i + offset (`ma_resnet.data.camvid` states the rule and its source). Frames n-K .. n-1 of
every labelled frame n are resized to the release's frame size (bilinear) and written as
`<out>/frames/<seq>/<release-style name>.png`; `<out>/manifest.json` is written last.

The rule is checked on every labelled frame: the decoded frame numbered n, resized, must differ from the release's
image n by at most `max_difference` (mean absolute difference, 0..255), and over the sequence it must match better
than the frames numbered n-1 and n+1 (an off-by-one would match a neighbour better). A frame is written only after
the next labelled frame passed, so a refused sequence gets no frame after its last matching labelled frame.

All or nothing per file (`files.atomic_path`): a killed run leaves complete frames and hidden partial files, which the
next run removes; it skips the complete frames (decoding still runs through the video) and finishes. A run whose
manifest already lists every frame it would write, all present, writes nothing and says so.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

from ma_resnet.data.camvid import (CAMVID_VIDEOS, VIDEO_FRAMES_FORMAT, VIDEO_FRAMES_MANIFEST, labelled_frames,
                                   name_format, read_video_frames_manifest, video_frame_path)
from ma_resnet.data.errors import DataError, DataNotFoundError, require_dir
from ma_resnet.data.image_files import read_rgb_image, verify_image
from ma_resnet.files import atomic_path, atomic_write_text
from ma_resnet.video_io import open_frames

OFFSET_RULE = ("number in the release's file names = 0-based index of the decoded frame (every frame of the first "
               "video stream) + offset; offsets -1 (0006R0.MXF, 0016E5.MXF, 0005VD.MXF) and +6660 "
               "(01TP_extract.avi), as the TMANet authors' camvid_video_process.py names the frames it extracts")
DEFAULT_MAX_DIFFERENCE = 12.0  # mean absolute difference (0..255) of a decoded frame to the release's image


@dataclasses.dataclass
class SequencePlan:
  """What to do for one sequence: its video, its labelled frames (number -> release image) and the numbers to write."""
  name: str
  video: str
  offset: int
  name_format: str
  frame_size: tuple[int, int]  # (H, W) of the release's images
  labelled: dict[int, str]
  wanted: list[int]

  @property
  def first_number(self) -> int:
    return max(self.offset, 0)  # the number of decoded frame 0, or 0: no negative numbers are written

  def manifest_entry(self) -> dict:
    return {"video": os.path.basename(self.video), "offset": self.offset, "first_number": self.first_number,
            "name_format": self.name_format, "frame_size": list(self.frame_size), "frames": self.wanted}


@dataclasses.dataclass
class PrepareReport:
  out: str
  frames_before: int
  written: int
  present: int
  sequences: dict[str, dict]  # name -> its manifest entry (with the check's figures)
  nothing_to_do: bool


def find_video(videos_dir: str, sequence: str) -> str:
  """The path of a sequence's video in `videos_dir` (file name matched without regard to case); DataNotFoundError
  naming the expected file."""
  if sequence not in CAMVID_VIDEOS:
    raise DataError(f"CamVid sequence {sequence} has no known video (known: {', '.join(sorted(CAMVID_VIDEOS))})")
  expected = CAMVID_VIDEOS[sequence].file_name
  for name in sorted(os.listdir(videos_dir)):
    if name.lower() == expected.lower() and os.path.isfile(os.path.join(videos_dir, name)):
      return os.path.join(videos_dir, name)
  raise DataNotFoundError(f"CamVid video of sequence {sequence} not found: {os.path.join(videos_dir, expected)} "
                          "(the original 30 fps video of the CamVid site; docs/data.md)")


def release_splits(camvid_root: str) -> list[str]:
  """The splits of a SegNet-layout root: every folder <split>/ with a <split>annot/ beside it."""
  return sorted(name for name in os.listdir(camvid_root) if os.path.isdir(os.path.join(camvid_root, name))
                and os.path.isdir(os.path.join(camvid_root, name + "annot")))


def plan_sequences(videos_dir: str, camvid_root: str, frames_before: int,
                   sequences: list[str] | None = None) -> list[SequencePlan]:
  """One plan per sequence of the root (or of `sequences`); every video is found before anything is written."""
  require_dir(camvid_root, "CamVid root (SegNet layout)")
  require_dir(videos_dir, "CamVid videos")
  splits = release_splits(camvid_root)
  if not splits:
    raise DataNotFoundError(f"CamVid root {camvid_root} has no split (a folder <split>/ with <split>annot/ beside it)")
  labelled: dict[str, dict[int, str]] = {}
  for split in splits:
    for name, frames in labelled_frames(camvid_root, split).items():
      labelled.setdefault(name, {}).update((f.number, f.image_path) for f in frames)
  for name in sequences or ():
    if name not in labelled:
      raise DataError(f"CamVid root {camvid_root} has no labelled frame of sequence {name} "
                      f"(its sequences: {', '.join(sorted(labelled))})")
  plans = []
  for name in sorted(sequences or labelled):
    video = find_video(videos_dir, name)
    numbers = labelled[name]
    first_path = numbers[min(numbers)]
    offset = CAMVID_VIDEOS[name].offset
    if min(numbers) < offset:
      raise DataError(f"CamVid {first_path}: frame {min(numbers)} precedes the first frame of {video} (number "
                      f"{offset} by the offset rule): not a frame of this video")
    first = max(offset, 0)
    wanted = sorted({n - k for n in numbers for k in range(1, frames_before + 1) if n - k >= first})
    plans.append(SequencePlan(name, video, offset, name_format(first_path), verify_image(first_path)[0], numbers,
                              wanted))
  return plans


def _resized(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  if frame.shape[:2] == tuple(size):
    return frame
  return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BILINEAR))


def _difference(a: np.ndarray, b: np.ndarray) -> float:
  """Mean absolute difference of two uint8 images of one shape, 0..255."""
  return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _write_frame(path: str, frame: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    Image.fromarray(frame).save(tmp, format="PNG")


def _remove_partial_files(folder: str) -> None:
  """Removes the hidden partial files a killed run left in `folder` (only ours: '.<name>.partial-*')."""
  for name in os.listdir(folder):
    if name.startswith(".") and ".partial-" in name:
      os.remove(os.path.join(folder, name))


def prepare_sequence(plan: SequencePlan, out: str, max_difference: float = DEFAULT_MAX_DIFFERENCE,
                     progress: bool = True) -> tuple[dict, int, int]:
  """Decodes one video, checks the offset rule on every labelled frame and writes the missing frames.

  Returns (manifest entry with the check's figures, frames written, frames already there).
  """
  folder = os.path.join(out, "frames", plan.name)
  os.makedirs(folder, exist_ok=True)
  _remove_partial_files(folder)
  to_write = {n for n in plan.wanted if not os.path.isfile(video_frame_path(out, plan.name, plan.name_format, n))}
  present = len(plan.wanted) - len(to_write)
  last = max(plan.wanted + list(plan.labelled)) + 1  # the frame after the last labelled one is part of the check
  same, before, after = {}, {}, {}  # labelled number -> difference of its image to the frame n, n-1, n+1
  pending: list[tuple[int, np.ndarray]] = []  # decoded frames to write once the next labelled frame matched
  previous, waiting, written = None, None, 0
  with open_frames(plan.video) as reader, tqdm(
      total=None if reader.info.num_frames is None else min(reader.info.num_frames, last - plan.offset + 1),
      desc=f"{plan.name} ({os.path.basename(plan.video)})", unit="frame", file=sys.stderr, disable=not progress,
      dynamic_ncols=True) as bar:
    for index, frame in enumerate(reader):
      number = index + plan.offset
      bar.update()
      if waiting is not None:
        after[waiting[0]] = _difference(_resized(frame, plan.frame_size), waiting[1])
        waiting = None
      if number in to_write:
        pending.append((number, frame))
      if number in plan.labelled:
        image = read_rgb_image(plan.labelled[number])
        same[number] = _difference(_resized(frame, image.shape[:2]), image)
        if previous is not None:
          before[number] = _difference(_resized(previous, image.shape[:2]), image)
        if same[number] > max_difference:
          raise DataError(
              f"CamVid sequence {plan.name}: decoded frame {index} of {plan.video} (number {number} by the offset "
              f"rule) differs from the release's {plan.labelled[number]} by {same[number]:.1f} (mean absolute "
              f"difference, the frame before: {before.get(number, float('nan')):.1f}; at most {max_difference:g} "
              "allowed): not the CamVid video, or the offset rule does not hold for it")
        for pending_number, pending_frame in pending:
          _write_frame(video_frame_path(out, plan.name, plan.name_format, pending_number),
                       _resized(pending_frame, plan.frame_size))
          written += 1
        pending = []
        bar.set_postfix(written=written, refresh=False)
        waiting = (number, image)
      previous = frame
      if number >= last:
        break
  missing = [n for n in sorted(plan.labelled) if n not in same]
  if missing:
    raise DataError(f"CamVid sequence {plan.name}: {plan.video} ends at decoded frame {index} (number "
                    f"{index + plan.offset}) before labelled frame {missing[0]}: not the CamVid video, or cut short")
  figures = {"labelled_frames": len(same), "same_frame": float(np.mean(list(same.values()))),
             "max_same_frame": max(same.values()),
             "frame_before": float(np.mean(list(before.values()))) if before else None,
             "frame_after": float(np.mean(list(after.values()))) if after else None}
  neighbours = [v for v in (figures["frame_before"], figures["frame_after"]) if v is not None]
  if neighbours and figures["same_frame"] >= min(neighbours):
    raise DataError(
        f"CamVid sequence {plan.name}: the labelled images match the decoded frames one number off better than the "
        f"frames the offset rule gives them (mean absolute difference {figures['same_frame']:.2f}; frame before "
        f"{figures['frame_before']}, after {figures['frame_after']}): the video or the rule is off by one. The frames "
        f"in {folder} are not to be used")
  return {**plan.manifest_entry(), "fps": reader.info.fps, "check": figures}, written, present


def _complete(manifest: dict | None, plans: list[SequencePlan], frames_before: int, out: str) -> bool:
  """Whether `manifest` already lists exactly the planned frames of every sequence, and all of them exist."""
  if manifest is None or manifest.get("frames_before") != frames_before:
    return False
  for plan in plans:
    entry = manifest["sequences"].get(plan.name, {})
    if {k: entry.get(k) for k in plan.manifest_entry()} != plan.manifest_entry():
      return False
    if not all(os.path.isfile(video_frame_path(out, plan.name, plan.name_format, n)) for n in plan.wanted):
      return False
  return True


def prepare_video_frames(videos_dir: str, out: str, camvid_root: str, frames_before: int, *,
                         sequences: list[str] | None = None, max_difference: float = DEFAULT_MAX_DIFFERENCE,
                         progress: bool = True) -> PrepareReport:
  """Writes the video frames K = `frames_before` before every labelled frame (see the module docstring)."""
  if frames_before < 1:
    raise ValueError(f"frames_before must be >= 1, got {frames_before}")
  plans = plan_sequences(videos_dir, camvid_root, frames_before, sequences)
  try:
    manifest = read_video_frames_manifest(out)
  except DataError:  # none yet, or not one of ours: it will be replaced
    manifest = None
  if _complete(manifest, plans, frames_before, out):
    entries = {p.name: manifest["sequences"][p.name] for p in plans}
    return PrepareReport(out, frames_before, 0, sum(len(p.wanted) for p in plans), entries, True)
  kept = {}  # sequences of an earlier run with the same K that this run does not touch
  if manifest is not None and manifest.get("frames_before") == frames_before:
    kept = {k: v for k, v in manifest["sequences"].items() if k not in {p.name for p in plans}}
  entries, written, present = {}, 0, 0
  for plan in plans:
    entries[plan.name], wrote, had = prepare_sequence(plan, out, max_difference, progress)
    written, present = written + wrote, present + had
    check = entries[plan.name]["check"]
    before = "" if check["frame_before"] is None else f"; to the frame before {check['frame_before']:.2f}"
    print(f"{plan.name}: {check['labelled_frames']} labelled frames match their decoded frame (mean absolute "
          f"difference {check['same_frame']:.2f}, at most {check['max_same_frame']:.2f}{before}); {wrote} frames "
          f"written, {had} already there", file=sys.stderr, flush=True)
  atomic_write_text(os.path.join(out, VIDEO_FRAMES_MANIFEST), json.dumps({
      "format": VIDEO_FRAMES_FORMAT, "frames_before": frames_before, "offset_rule": OFFSET_RULE,
      "written_by": "python -m ma_resnet.data.prepare camvid", "sequences": {**kept, **entries}}, indent=1) + "\n")
  return PrepareReport(out, frames_before, written, present, entries, False)
