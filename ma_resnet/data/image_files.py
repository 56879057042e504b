"""Reading image and label files with Pillow, with one clear `DataError` for every kind of bad file.

Shapes: an image is uint8 (H, W, 3) RGB; a raw label map is uint8 (H, W) holding the values stored in the file.
`LabelMapping` turns raw values into class ids 0..K-1 with 255 (`IGNORE_INDEX`) for ignored pixels and rejects
values that are neither a class nor an ignore value.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
from PIL import Image

from ma_resnet.data.errors import DataError, DataNotFoundError

IGNORE_INDEX = 255

# Everything Pillow is known to raise on a truncated or corrupt file.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error, Image.DecompressionBombError)


def _open_and_load(path: str) -> Image.Image:
  if not os.path.isfile(path):
    raise DataNotFoundError(f"image file not found: {path}")
  try:
    image = Image.open(path)
    image.load()
  except _DECODE_ERRORS as error:
    raise DataError(f"cannot decode image file {path} (truncated or corrupt?): {error}") from error
  return image


def read_rgb_image(path: str | os.PathLike) -> np.ndarray:
  """Reads an image file as uint8 (H, W, 3) RGB; DataError naming the file when it cannot be decoded."""
  path = os.fspath(path)
  image = _open_and_load(path)
  if image.mode != "RGB":
    try:
      image = image.convert("RGB")
    except _DECODE_ERRORS as error:
      raise DataError(f"cannot convert image file {path} (mode {image.mode}) to RGB: {error}") from error
  return np.asarray(image, dtype=np.uint8)


def read_label_image(path: str | os.PathLike) -> np.ndarray:
  """Reads a single-channel label PNG as its raw uint8 (H, W) values (palette indices for mode 'P')."""
  path = os.fspath(path)
  image = _open_and_load(path)
  if image.mode in ("L", "P"):
    return np.asarray(image, dtype=np.uint8)
  if image.mode in ("I", "I;16", "I;16B", "I;16L"):
    values = np.asarray(image)
    if values.min() < 0 or values.max() > 255:
      raise DataError(f"label file {path} holds values outside 0..255 (min {values.min()}, max {values.max()})")
    return values.astype(np.uint8)
  raise DataError(f"label file {path} has image mode {image.mode!r}; expected a single-channel ('L' or 'P') PNG")


def verify_image(path: str | os.PathLike) -> tuple[tuple[int, int], str]:
  """((H, W), mode) of an image file whose data is intact (Pillow's `verify`: structure and checksums, without
  decoding the pixels); DataError naming the file otherwise."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataNotFoundError(f"image file not found: {path}")
  try:
    with Image.open(path) as image:
      size, mode = (image.height, image.width), image.mode
      image.verify()
  except _DECODE_ERRORS as error:
    raise DataError(f"cannot decode image file {path} (truncated or corrupt?): {error}") from error
  return size, mode


def check_same_size(image_size, label_size, image_path: str, label_path: str) -> None:
  """Raises DataError naming both files when the label's (H, W) differs from the image's."""
  (ih, iw), (lh, lw) = tuple(image_size)[:2], tuple(label_size)[:2]
  if (ih, iw) != (lh, lw):
    raise DataError(f"label file {label_path} has size {lw}x{lh} (WxH) but its image {image_path} has size {iw}x{ih}")


class LabelMapping:
  """Maps raw label values to class ids 0..K-1 or IGNORE_INDEX through a 256-entry lookup table.

  Args:
    table: dict raw value -> class id (or IGNORE_INDEX); raw values missing from it are invalid.
  """

  def __init__(self, table: dict[int, int]):
    self.lookup = np.full(256, IGNORE_INDEX, np.uint8)
    self.valid = np.zeros(256, bool)
    for raw, mapped in table.items():
      self.lookup[raw] = mapped
      self.valid[raw] = True
    self.valid_values = tuple(int(v) for v in np.flatnonzero(self.valid))

  def __call__(self, raw: np.ndarray, path: str) -> np.ndarray:
    """uint8 (H, W) raw values -> uint8 (H, W) class ids / 255; DataError naming `path` on an invalid value."""
    counts = np.bincount(raw.ravel(), minlength=256)
    bad = np.flatnonzero((counts > 0) & ~self.valid)
    if bad.size:
      raise DataError(
          f"label file {path} holds value(s) {bad.tolist()} outside the class range; "
          f"allowed raw values are {_ranges(self.valid_values)}")
    return self.lookup[raw]

  def __repr__(self) -> str:
    return f"LabelMapping({_ranges(self.valid_values)})"


def _ranges(values: tuple[int, ...]) -> str:
  """(0, 1, 2, 5, 255) -> '0-2, 5, 255'."""
  parts, start = [], None
  for i, v in enumerate(values):
    if start is None:
      start = v
    if i + 1 == len(values) or values[i + 1] != v + 1:
      parts.append(f"{start}" if start == v else f"{start}-{v}")
      start = None
  return ", ".join(parts)
