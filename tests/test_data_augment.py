"""Clip augmentation: drawn once per clip, identical on every frame; padding, flip, jitter, resize, normalisation."""

import numpy as np
import pytest

from ma_resnet.data import ClipAugmentation, augment_clip, normalize_images, resize_clip, sample_clip_augmentation
from ma_resnet.data.augment import jitter_colors, pad_color_for


def random_clip(seed=0, frames=1, size=(30, 40)):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
  label = rng.integers(0, 11, size=size, dtype=np.uint8)
  return np.repeat(image[None], frames, axis=0), np.repeat(label[None], frames, axis=0)


def test_identical_frames_stay_identical():
  images, labels = random_clip(frames=4)
  rng = np.random.default_rng(7)
  for _ in range(25):
    params = sample_clip_augmentation(rng, scale_range=(0.5, 2.0), flip=True, jitter=0.2)
    out_images, out_labels = augment_clip(images, labels, params, (24, 32), (105, 108, 110))
    assert out_images.shape == (4, 24, 32, 3) and out_labels.shape == (4, 24, 32)
    for t in range(1, 4):
      np.testing.assert_array_equal(out_images[t], out_images[0])
      np.testing.assert_array_equal(out_labels[t], out_labels[0])


def test_same_rng_same_parameters():
  a = sample_clip_augmentation(np.random.default_rng(3), jitter=0.1)
  b = sample_clip_augmentation(np.random.default_rng(3), jitter=0.1)
  assert a == b and 0.5 <= a.scale <= 2.0
  assert 0.9 <= a.brightness <= 1.1 and 0.9 <= a.contrast <= 1.1 and 0.9 <= a.saturation <= 1.1


def test_padding_values():
  images, labels = random_clip()
  params = ClipAugmentation(scale=0.5)  # 15x20 frame in a 24x32 crop
  pad = pad_color_for((0.412, 0.425, 0.433))
  out_images, out_labels = augment_clip(images, labels, params, (24, 32), pad)
  assert (out_labels[:, 15:] == 255).all() and (out_labels[:, :, 20:] == 255).all()
  assert (out_images[:, 15:] == pad).all() and (out_images[:, :, 20:] == pad).all()
  assert (out_labels[:, :15, :20] != 255).all()
  normalised = normalize_images(out_images, (0.412, 0.425, 0.433), (0.307, 0.312, 0.307))
  assert np.abs(normalised[:, 15:]).max() < 0.01


def test_identity_crop_and_flip():
  images, labels = random_clip()
  out_images, out_labels = augment_clip(images, labels, ClipAugmentation(), (30, 40))
  np.testing.assert_array_equal(out_images, images)
  np.testing.assert_array_equal(out_labels, labels)
  flipped_images, flipped_labels = augment_clip(images, labels, ClipAugmentation(flip=True), (30, 40))
  np.testing.assert_array_equal(flipped_images, images[:, :, ::-1])
  np.testing.assert_array_equal(flipped_labels, labels[:, :, ::-1])
  # A crop at the far corner of an unscaled frame is a plain slice.
  crop_images, crop_labels = augment_clip(images, labels, ClipAugmentation(crop_fraction=(0.999, 0.999)), (20, 25))
  np.testing.assert_array_equal(crop_images, images[:, 10:, 15:])
  np.testing.assert_array_equal(crop_labels, labels[:, 10:, 15:])


def test_scaled_labels_are_nearest_samples():
  images, labels = random_clip()
  params = ClipAugmentation(scale=2.0, crop_fraction=(0.5, 0.5))
  _, out_labels = augment_clip(images, labels, params, (30, 40))
  assert set(np.unique(out_labels).tolist()) <= set(np.unique(labels).tolist())
  # At scale 2 with an even offset every source pixel becomes a 2x2 block.
  full = np.repeat(np.repeat(labels[0], 2, axis=0), 2, axis=1)
  top, left = int(0.5 * 31), int(0.5 * 41)
  np.testing.assert_array_equal(out_labels[0], full[top:top + 30, left:left + 40])


def test_jitter():
  images, _ = random_clip(frames=2)
  np.testing.assert_array_equal(jitter_colors(images, 1.0, 1.0, 1.0), images)
  brighter = jitter_colors(images, 1.2, 1.0, 1.0)
  assert brighter.astype(int).mean() > images.astype(int).mean()
  desaturated = jitter_colors(images, 1.0, 1.0, 0.0)
  assert np.abs(desaturated[..., 0].astype(int) - desaturated[..., 1]).max() <= 1


def test_resize_and_normalize():
  images, labels = random_clip(frames=2)
  same = resize_clip(images, labels, None)
  assert same[0] is images
  small_images, small_labels = resize_clip(images, labels, (15, 20))
  assert small_images.shape == (2, 15, 20, 3) and small_labels.shape == (2, 15, 20)
  assert set(np.unique(small_labels).tolist()) <= set(np.unique(labels).tolist())
  normalised = normalize_images(images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
  assert normalised.dtype == np.float32
  np.testing.assert_allclose(normalised, (images / 255.0 - 0.5) / 0.25, atol=1e-5)
  assert pytest.approx(float(normalize_images(np.array([[[0, 255, 128]]], np.uint8), (0, 0, 0), (1, 1, 1))[0, 0, 1]),
                       abs=1e-6) == 1.0
