"""Tiny dataset folders in the real layouts, written from random pixels: for tests and examples.

`write_camvid_tree` writes the SegNet CamVid layout (with list files in the release's absolute-path style),
`write_camvid_videos` stand-ins for CamVid's original videos (each frame shows its index, `frame_index_shown`),
`write_vspw_tree` the VSPW layout and `write_cityscapes_tree` the Cityscapes video layout (train-id PNGs or the
polygon JSON files they are drawn from). Each returns what it wrote so tests can compare against it.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np
from PIL import Image


def write_camvid_tree(root: str | os.PathLike, splits: Mapping[str, Mapping[str, Sequence[str]]], *,
                      size: tuple[int, int] = (12, 16), seed: int = 0,
                      images: Mapping[str, np.ndarray] | None = None) -> dict[str, dict[str, np.ndarray]]:
  """Writes `<root>/<split>/`, `<root>/<split>annot/` and `<root>/<split>.txt` for each split.

  Args:
    splits: split -> sequence -> frame-number strings as they appear in file names (e.g. '006690' or 'f00930').
    size: (H, W) of every frame.
    images: file stem -> uint8 (H, W, 3) image to write instead of random pixels (e.g. a video's frame).
  Returns: {file stem: {'image': uint8 (H, W, 3), 'label': uint8 (H, W) raw values 0..11}}.
  List lines are written in shuffled order, as absolute '/SegNet/CamVid/...' paths.
  """
  rng = np.random.default_rng(seed)
  root = os.fspath(root)
  written = {}
  for split, sequences in splits.items():
    os.makedirs(os.path.join(root, split), exist_ok=True)
    os.makedirs(os.path.join(root, split + "annot"), exist_ok=True)
    lines = []
    for sequence, numbers in sequences.items():
      for number in numbers:
        stem = f"{sequence}_{number}"
        image = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
        if images is not None and stem in images:
          image = images[stem]
        label = rng.integers(0, 12, size=image.shape[:2], dtype=np.uint8)
        Image.fromarray(image).save(os.path.join(root, split, stem + ".png"))
        Image.fromarray(label, mode="L").save(os.path.join(root, split + "annot", stem + ".png"))
        written[stem] = {"image": image, "label": label}
        lines.append(f"/SegNet/CamVid/{split}/{stem}.png /SegNet/CamVid/{split}annot/{stem}.png\n")
    rng.shuffle(lines)
    with open(os.path.join(root, split + ".txt"), "w") as f:
      f.writelines(lines)
  return written


INDEX_BITS = 12  # a frame of `write_camvid_videos` shows its index as 12 blocks (4 x 3), bright = 1


def frame_showing_index(index: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
  """uint8 (H, W, 3): grey blocks on a 3 x 4 grid, block b bright when bit b of `index` is set (robust to lossy
  video codecs and to resizing)."""
  bits = (index >> np.arange(INDEX_BITS)) & 1
  grid = np.where(bits.reshape(3, 4), 230, 25).astype(np.uint8)
  block = np.kron(grid, np.ones((size[0] // 3, size[1] // 4), np.uint8))
  return np.repeat(block[..., None], 3, axis=-1)


def frame_index_shown(image: np.ndarray) -> int:
  """The index `frame_showing_index` drew into `image` (any size), read at the block centres."""
  h, w = image.shape[:2]
  centres = image[(np.arange(3) * 2 + 1) * h // 6][:, (np.arange(4) * 2 + 1) * w // 8, 0]
  return int(((centres.ravel() > 128).astype(int) << np.arange(INDEX_BITS)).sum())


def write_camvid_videos(folder: str | os.PathLike, num_frames: Mapping[str, int], *, size: tuple[int, int] = (48, 64),
                        first_index: int = 0) -> dict[str, str]:
  """Writes stand-ins for CamVid's original videos: `<folder>/<CAMVID_VIDEOS[seq].file_name>` of `num_frames[seq]`
  frames at 30 fps, frame i showing the index first_index + i (`frame_showing_index`). The MXF files hold
  MPEG-2 video (lossy, like the originals), 01TP_extract.avi FFV1 (lossless). Returns {sequence: path}."""
  import imageio_ffmpeg
  from ma_resnet.data.camvid import CAMVID_VIDEOS
  os.makedirs(folder, exist_ok=True)
  paths = {}
  for sequence, count in num_frames.items():
    path = os.path.join(os.fspath(folder), CAMVID_VIDEOS[sequence].file_name)
    mxf = path.lower().endswith(".mxf")
    writer = imageio_ffmpeg.write_frames(
        path, (size[1], size[0]), fps=30, codec="mpeg2video" if mxf else "ffv1", macro_block_size=1, quality=None,
        pix_fmt_out="yuv420p" if mxf else "yuv444p", ffmpeg_log_level="error",
        output_params=["-q:v", "2"] if mxf else [])
    writer.send(None)
    for index in range(first_index, first_index + count):
      writer.send(frame_showing_index(index, size))
    writer.close()
    paths[sequence] = path
  return paths


def write_vspw_tree(root: str | os.PathLike, splits: Mapping[str, Sequence[str]], *, frames_per_video: int = 3,
                    size: tuple[int, int] = (10, 14), mask_values: Sequence[int] = (0, 1, 2, 61, 124, 255),
                    seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  """Writes `<root>/data/<video>/origin/*.jpg`, `<root>/data/<video>/mask/*.png` and `<root>/<split>.txt`.

  Args:
    splits: split -> video names.
    frames_per_video: frames per video, named 00000000.jpg, 00000001.jpg, ...
    size: (H, W) of every frame.
    mask_values: raw mask values drawn uniformly for every pixel (palette-mode PNGs, as released).
  Returns: {'<video>/<frame stem>': {'image': uint8 (H, W, 3) as written (before JPEG), 'mask': uint8 (H, W)}}.
  """
  rng = np.random.default_rng(seed)
  root = os.fspath(root)
  values = np.asarray(mask_values, np.uint8)
  palette = rng.integers(0, 256, size=768, dtype=np.uint8).tolist()
  written = {}
  for split, videos in splits.items():
    for video in videos:
      origin = os.path.join(root, "data", video, "origin")
      mask_dir = os.path.join(root, "data", video, "mask")
      os.makedirs(origin, exist_ok=True)
      os.makedirs(mask_dir, exist_ok=True)
      for index in range(frames_per_video):
        stem = f"{index:08d}"
        image = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
        mask = values[rng.integers(0, len(values), size=size)]
        Image.fromarray(image).save(os.path.join(origin, stem + ".jpg"), quality=95)
        mask_image = Image.frombytes("P", (size[1], size[0]), mask.tobytes())
        mask_image.putpalette(palette)
        mask_image.save(os.path.join(mask_dir, stem + ".png"))
        written[f"{video}/{stem}"] = {"image": image, "mask": mask}
    with open(os.path.join(root, split + ".txt"), "w") as f:
      f.writelines(f"{video}\n" for video in videos)
  return written


def write_cityscapes_tree(root: str | os.PathLike, splits: Mapping[str, Mapping[str, Sequence[tuple[int, int]]]], *,
                          frames_before: int = 19, frames_after: int = 10, size: tuple[int, int] = (8, 16),
                          seed: int = 0, polygons: bool = False) -> dict[str, dict[str, np.ndarray]]:
  """Writes `<root>/leftImg8bit_sequence/<split>/<city>/` and `<root>/gtFine/<split>/<city>/`.

  Args:
    splits: split -> city -> labelled frames as (sequence number, frame number n); each gets the snippet
      n-frames_before .. n+frames_after of images and one `_gtFine_labelTrainIds.png` label, for frame n.
    size: (H, W) of every frame.
    polygons: write the frame's `_gtFine_polygons.json` instead of its label PNG (the release's form, before
      cityscapesscripts draws it): 'road' on the left half, 'cargroup' (drawn as car) on the top right quarter,
      'ego vehicle' (no train id) on the bottom right quarter; the returned label is what it draws in train ids.
  Returns: {'<city>_<seq>_<frame>': {'image': uint8 (H, W, 3)} plus 'label': uint8 (H, W) in 0..18 or 255 for the
  labelled frames}.
  """
  rng = np.random.default_rng(seed)
  root = os.fspath(root)
  values = np.array(list(range(19)) + [255], np.uint8)
  written = {}
  for split, cities in splits.items():
    for city, labelled in cities.items():
      image_dir = os.path.join(root, "leftImg8bit_sequence", split, city)
      label_dir = os.path.join(root, "gtFine", split, city)
      os.makedirs(image_dir, exist_ok=True)
      os.makedirs(label_dir, exist_ok=True)
      for sequence, number in labelled:
        for frame in range(number - frames_before, number + frames_after + 1):
          stem = f"{city}_{sequence:06d}_{frame:06d}"
          image = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
          Image.fromarray(image).save(os.path.join(image_dir, stem + "_leftImg8bit.png"))
          written[stem] = {"image": image}
        stem = f"{city}_{sequence:06d}_{number:06d}"
        if polygons:
          label = _write_polygons(os.path.join(label_dir, stem + "_gtFine_polygons.json"), size)
        else:
          label = values[rng.integers(0, len(values), size=size)]
          Image.fromarray(label).save(os.path.join(label_dir, stem + "_gtFine_labelTrainIds.png"))
        written[stem]["label"] = label
  return written


def _write_polygons(path: str, size: tuple[int, int]) -> np.ndarray:
  """Writes a cityscapesscripts polygon file of three rectangles; returns the train-id label it describes."""
  h, w = size
  rectangle = lambda x0, y0, x1, y1: [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]  # corners included when drawn
  objects = [{"label": "road", "polygon": rectangle(0, 0, w // 2 - 1, h - 1)},
             {"label": "cargroup", "polygon": rectangle(w // 2, 0, w - 1, h // 2 - 1)},
             {"label": "ego vehicle", "polygon": rectangle(w // 2, h // 2, w - 1, h - 1)}]
  with open(path, "w") as f:
    json.dump({"imgHeight": h, "imgWidth": w, "objects": objects}, f)
  label = np.full(size, 255, np.uint8)  # 'unlabeled' and 'ego vehicle' have no train id
  label[:, :w // 2] = 0  # road
  label[:h // 2, w // 2:] = 13  # car
  return label
