"""Palettes, overlays and PNG output for segmentation maps (numpy + Pillow; no JAX).

    colors = colorize(prediction, palette)           # (H, W) class ids -> (H, W, 3) uint8
    blended = overlay(image, prediction, palette)    # class colours blended over the frame
    save_png(path, panel(image, prediction, label, palette))

Ignored pixels (255, or any id outside the palette) are drawn black in `colorize` and left as the frame in
`overlay`.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ma_resnet.files import atomic_path

IGNORE_INDEX = 255
IGNORE_COLOR = (0, 0, 0)


def default_palette(num_classes: int) -> np.ndarray:
  """uint8 (num_classes, 3): the PASCAL VOC bit-interleaved colours (distinct for any number of classes)."""
  palette = np.zeros((num_classes, 3), np.uint8)
  for index in range(num_classes):
    value, r, g, b = index, 0, 0, 0
    for bit in range(8):
      r |= ((value >> 0) & 1) << (7 - bit)
      g |= ((value >> 1) & 1) << (7 - bit)
      b |= ((value >> 2) & 1) << (7 - bit)
      value >>= 3
    palette[index] = (r, g, b)
  return palette


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """(..., H, W) integer class ids -> (..., H, W, 3) uint8 colours; ids outside the palette are black."""
  palette = np.asarray(palette, np.uint8)
  labels = np.asarray(labels)
  table = np.concatenate([palette, np.array([IGNORE_COLOR], np.uint8)])
  index = np.where((labels >= 0) & (labels < len(palette)), labels, len(palette))
  return table[index]


def resize_image(image: np.ndarray, size) -> np.ndarray:
  """uint8 RGB (H, W, 3) resized (bilinear) to size (h, w)[:2]; unchanged when already that size."""
  h, w = int(size[0]), int(size[1])
  if image.shape[:2] == (h, w):
    return image
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def denormalize(frames: np.ndarray, mean, std) -> np.ndarray:
  """Normalised float frames (x / 255 - mean) / std -> uint8 RGB (uint8 input is returned as is)."""
  frames = np.asarray(frames)
  if frames.dtype == np.uint8:
    return frames
  rgb = (frames * np.asarray(std, np.float32) + np.asarray(mean, np.float32)) * 255.0
  return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """The frame (H, W, 3) uint8 with class colours blended in at opacity `alpha` (ignored pixels untouched)."""
  image = np.asarray(image, np.uint8)
  colors = colorize(labels, palette).astype(np.float32)
  valid = ((np.asarray(labels) >= 0) & (np.asarray(labels) < len(palette)))[..., None]
  blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colors
  return np.where(valid, np.clip(np.rint(blended), 0, 255), image).astype(np.uint8)


def panel(image: np.ndarray, prediction: np.ndarray, label: np.ndarray | None, palette: np.ndarray,
          alpha: float = 0.5, gap: int = 4) -> np.ndarray:
  """A horizontal strip: frame | prediction overlay | ground-truth colours (when `label` is given)."""
  parts = [np.asarray(image, np.uint8), overlay(image, prediction, palette, alpha)]
  if label is not None:
    parts.append(colorize(label, palette))
  h = parts[0].shape[0]
  spacer = np.full((h, gap, 3), 255, np.uint8)
  strip = [parts[0]]
  for part in parts[1:]:
    strip += [spacer, part]
  return np.concatenate(strip, axis=1)


def save_png(path: str, array: np.ndarray) -> str:
  """Writes an (H, W, 3) or (H, W) uint8 array as PNG, atomically (temporary file + rename)."""
  path = os.path.abspath(path)
  with atomic_path(path) as tmp:
    Image.fromarray(np.asarray(array, np.uint8)).save(tmp, format='PNG')
  return path


def label_image(labels: np.ndarray, palette: np.ndarray | None = None) -> Image.Image:
  """A palette-mode ('P') PIL image of class ids (H, W) < 256; `palette` (K, 3) gives the display colours."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() > 255):
    raise ValueError('class ids must be in 0..255 for a PNG label image')
  image = Image.fromarray(labels.astype(np.uint8), mode='P')
  if palette is not None:
    flat = np.zeros((256, 3), np.uint8)
    palette = np.asarray(palette, np.uint8)[:256]
    flat[:len(palette)] = palette
    image.putpalette(flat.ravel().tolist())
  return image
