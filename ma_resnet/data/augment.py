"""Clip augmentation: one set of random parameters per clip, applied identically to every frame.

Shapes: images uint8 (T, H, W, 3), labels uint8 (T, H, W) with 255 = ignore; NHWC throughout.

Training (`sample_clip_augmentation` then `augment_clip`):
  1. random scale s in scale_range: the frame is resized to (round(H s), round(W s)) (bilinear for images, nearest
     for labels);
  2. padding at the bottom/right up to the crop size when the scaled frame is smaller (images with `pad_color`,
     normally the mean colour so it normalises to 0; labels with 255);
  3. a random crop of crop_size (h, w) (steps 1-3 are computed together: only the visible box is resampled);
  4. photometric jitter of the visible pixels (Pillow ImageEnhance): brightness, contrast (pivot: the frame's mean
     grey level), saturation, factors in [1 - j, 1 + j];
  5. horizontal flip with probability 1/2.
Evaluation: `resize_clip` only. `normalize_images` maps uint8 to float32 (x / 255 - mean) / std.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image, ImageEnhance

from ma_resnet.data.image_files import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ClipAugmentation:
  """The random draws for one clip (identical for all its frames).

  scale: resize factor; crop_fraction: (fy, fx) in [0, 1), where the crop starts within the free range of the
  padded scaled frame; flip: horizontal flip; brightness, contrast, saturation: multiplicative factors (1 = none).
  """
  scale: float = 1.0
  crop_fraction: tuple[float, float] = (0.0, 0.0)
  flip: bool = False
  brightness: float = 1.0
  contrast: float = 1.0
  saturation: float = 1.0


def sample_clip_augmentation(rng: np.random.Generator, *, scale_range: Sequence[float] = (0.5, 2.0),
                             flip: bool = True, jitter: float = 0.0) -> ClipAugmentation:
  """Draws one clip's parameters from `rng` (always the same number of draws, whatever is switched off)."""
  low, high = float(scale_range[0]), float(scale_range[1])
  draws = rng.random(7)
  return ClipAugmentation(
      scale=low + (high - low) * draws[0],
      crop_fraction=(float(draws[1]), float(draws[2])),
      flip=bool(flip) and draws[3] < 0.5,
      brightness=1.0 + jitter * (2.0 * draws[4] - 1.0),
      contrast=1.0 + jitter * (2.0 * draws[5] - 1.0),
      saturation=1.0 + jitter * (2.0 * draws[6] - 1.0),
  )


def _crop_geometry(image_size: tuple[int, int], crop_size: tuple[int, int], params: ClipAugmentation):
  """Returns (source box (x0, y0, x1, y1) in input pixels, visible size (h, w) in the crop)."""
  height, width = image_size
  crop_h, crop_w = crop_size
  scaled_h = max(1, int(round(height * params.scale)))
  scaled_w = max(1, int(round(width * params.scale)))
  free_h = max(scaled_h, crop_h) - crop_h
  free_w = max(scaled_w, crop_w) - crop_w
  top = min(int(params.crop_fraction[0] * (free_h + 1)), free_h)
  left = min(int(params.crop_fraction[1] * (free_w + 1)), free_w)
  bottom = min(top + crop_h, scaled_h)
  right = min(left + crop_w, scaled_w)
  ky, kx = height / scaled_h, width / scaled_w
  box = (left * kx, top * ky, right * kx, bottom * ky)
  return box, (bottom - top, right - left)


def _resample(array: np.ndarray, box, size_hw: tuple[int, int], resample) -> Image.Image:
  """The `box` of a (H, W) or (H, W, 3) uint8 array resampled to size_hw, as a Pillow image."""
  image = Image.fromarray(array)
  height, width = array.shape[:2]
  if size_hw == (height, width) and box == (0.0, 0.0, float(width), float(height)):
    return image
  return image.resize((size_hw[1], size_hw[0]), resample, box=box)


def _jitter(image: Image.Image, brightness: float, contrast: float, saturation: float) -> Image.Image:
  """Brightness, then contrast (pivot: the frame's mean grey level), then saturation, each a uint8 blend."""
  if brightness != 1.0:
    image = ImageEnhance.Brightness(image).enhance(brightness)
  if contrast != 1.0:
    image = ImageEnhance.Contrast(image).enhance(contrast)
  if saturation != 1.0:
    image = ImageEnhance.Color(image).enhance(saturation)
  return image


def jitter_colors(images: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
  """Photometric jitter of uint8 (T, H, W, 3) -> uint8 (T, H, W, 3); factors 1.0 leave the frames unchanged."""
  if brightness == 1.0 and contrast == 1.0 and saturation == 1.0:
    return images
  return np.stack([np.asarray(_jitter(Image.fromarray(f), brightness, contrast, saturation)) for f in images])


def augment_clip(images: np.ndarray, labels: np.ndarray, params: ClipAugmentation, crop_size: Sequence[int],
                 pad_color: Sequence[int] = (0, 0, 0)) -> tuple[np.ndarray, np.ndarray]:
  """Applies `params` to every frame of a clip.

  Args:
    images: uint8 (T, H, W, 3); labels: uint8 (T, H, W).
    crop_size: (h, w) of the output.
    pad_color: RGB uint8 used where the scaled frame does not cover the crop.
  Returns: images uint8 (T, h, w, 3), labels uint8 (T, h, w) (255 in padding).
  """
  num_frames, height, width = images.shape[:3]
  if labels.shape[:3] != (num_frames, height, width):
    raise ValueError(f"labels {labels.shape} do not match images {images.shape}")
  crop_h, crop_w = int(crop_size[0]), int(crop_size[1])
  box, (visible_h, visible_w) = _crop_geometry((height, width), (crop_h, crop_w), params)
  out_images = np.empty((num_frames, crop_h, crop_w, 3), np.uint8)
  out_labels = np.empty((num_frames, crop_h, crop_w), np.uint8)
  if (visible_h, visible_w) != (crop_h, crop_w):
    out_images[:] = np.asarray(pad_color, np.uint8)
    out_labels[:] = IGNORE_INDEX
  for t in range(num_frames):
    image = _resample(images[t], box, (visible_h, visible_w), Image.BILINEAR)
    image = _jitter(image, params.brightness, params.contrast, params.saturation)
    out_images[t, :visible_h, :visible_w] = np.asarray(image)
    out_labels[t, :visible_h, :visible_w] = np.asarray(_resample(labels[t], box, (visible_h, visible_w),
                                                                 Image.NEAREST))
  if params.flip:
    out_images, out_labels = np.ascontiguousarray(out_images[:, :, ::-1]), np.ascontiguousarray(out_labels[:, :, ::-1])
  return out_images, out_labels


def resize_clip(images: np.ndarray, labels: np.ndarray | None, size: Sequence[int] | None):
  """Resizes every frame to size (h, w) (bilinear images, nearest labels); None or the same size: unchanged.

  images uint8 (T, H, W, 3), labels uint8 (T, H, W) -> (T, h, w, 3), (T, h, w). labels None: returned as None.
  """
  if size is None or tuple(int(s) for s in size) == tuple(images.shape[1:3]):
    return images, labels
  new_h, new_w = int(size[0]), int(size[1])
  out_images = np.stack([np.asarray(Image.fromarray(f).resize((new_w, new_h), Image.BILINEAR)) for f in images])
  if labels is None:
    return out_images, None
  out_labels = np.stack([np.asarray(Image.fromarray(f).resize((new_w, new_h), Image.NEAREST)) for f in labels])
  return out_images, out_labels


def normalize_images(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """uint8 (..., 3) -> float32 (..., 3): (x / 255 - mean) / std, with mean and std on a 0..1 scale."""
  mean = np.asarray(mean, np.float64)
  std = np.asarray(std, np.float64)
  out = np.empty(images.shape, np.float32)
  np.multiply(images, (1.0 / (255.0 * std)).astype(np.float32), out=out)
  np.subtract(out, (mean / std).astype(np.float32), out=out)
  return out


def pad_color_for(mean: Sequence[float]) -> tuple[int, int, int]:
  """The uint8 colour closest to `mean` (0..1 scale): padding with it normalises to ~0."""
  return tuple(int(round(255.0 * float(m))) for m in mean)
