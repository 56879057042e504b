"""Synthetic video: determinism, the per-frame mIoU bound, reveal frames, speed, and the pipeline on it."""

import time

import numpy as np
import pytest

from ma_resnet.data import (SyntheticVideo, default_data_config, make_eval_stream, make_sequences,
                            make_train_iterator, num_classes, palette, per_frame_miou_bound)
from ma_resnet.data.synthetic import SYNTHETIC_GREY, best_class_blind_miou


def test_deterministic_and_random_access():
  a = SyntheticVideo("train", num_sequences=4, seed=3)
  b = SyntheticVideo("train", num_sequences=4, seed=3)
  images_a, labels_a = a.generate_sequence(2)
  images_b, labels_b = b.generate_sequence(2)
  np.testing.assert_array_equal(images_a, images_b)
  np.testing.assert_array_equal(labels_a, labels_b)
  assert images_a.shape == (8, 64, 64, 3) and images_a.dtype == np.uint8
  assert labels_a.shape == (8, 64, 64) and labels_a.dtype == np.uint8
  frame = a.read_frame(2, 5)
  np.testing.assert_array_equal(frame.image, images_a[5])
  np.testing.assert_array_equal(frame.label, labels_a[5])
  images, labels, labelled = a.read_clip(2, 3, 4)
  np.testing.assert_array_equal(images, images_a[3:7])
  assert labelled.all()
  val = SyntheticVideo("val", num_sequences=4, seed=3)
  other_seed = SyntheticVideo("train", num_sequences=4, seed=4)
  assert not np.array_equal(val.generate_sequence(2)[1], labels_a)
  assert not np.array_equal(other_seed.generate_sequence(2)[1], labels_a)
  assert repr(a) == repr(b) != repr(val)


def test_per_frame_bound():
  # Closed form with even class shares: (1 + K / (2K - 1)) / (K + 1).
  assert best_class_blind_miou([100, 100, 100]) == pytest.approx((1 + 3 / 5) / 4)
  assert best_class_blind_miou([50, 50]) == pytest.approx((1 + 2 / 3) / 3)
  for k in (2, 3, 5):
    dataset = SyntheticVideo("train", num_sequences=64, num_object_classes=k, seed=0)
    bound = per_frame_miou_bound(dataset)
    assert bound <= 0.6, (k, bound)
    assert bound == pytest.approx((1 + k / (2 * k - 1)) / (k + 1), abs=0.02)


def test_reveal_frames_decode_and_grey_frames_hide_classes():
  dataset = SyntheticVideo("train", num_sequences=8, seed=1)
  reveal = dataset.is_reveal_frame(np.arange(dataset.frames_per_sequence))
  np.testing.assert_array_equal(reveal, [True, False, False, False, True, False, False, False])
  colours = np.concatenate([dataset.palette, np.array([SYNTHETIC_GREY], np.uint8)]).astype(np.int32)
  for i in range(dataset.num_sequences):
    images, labels = dataset.generate_sequence(i)
    nearest = np.argmin(((images[..., None, :].astype(np.int32) - colours) ** 2).sum(-1), axis=-1)
    # On reveal frames the colour of a pixel is its class; on grey frames every object pixel is grey.
    np.testing.assert_array_equal(nearest[reveal], labels[reveal])
    grey = nearest[~reveal]
    objects = labels[~reveal] > 0
    assert (grey[objects] == len(dataset.palette)).all() and (grey[~objects] == 0).all()


def test_generation_speed():
  dataset = SyntheticVideo("train", num_sequences=200)
  dataset.generate_sequence(0)
  start = time.perf_counter()
  for i in range(200):
    dataset.generate_sequence(i)
  frames_per_second = 200 * dataset.frames_per_sequence / (time.perf_counter() - start)
  assert frames_per_second > 1000, frames_per_second


def test_pipeline_on_synthetic():
  config = default_data_config("synthetic")
  config.synthetic.num_train_sequences = 16
  assert num_classes(config) == 4 and palette(config).shape == (4, 3)
  iterator = make_train_iterator(config, batch_size=3, shard_index=0, shard_count=1)
  batch = next(iterator)
  assert batch["frames"].shape == (3, 4, 64, 64, 3) and batch["frames"].dtype == np.float32
  assert batch["labels"].shape == (3, 4, 64, 64) and batch["labels"].dtype == np.int32
  np.testing.assert_array_equal(batch["sequence_start"], np.tile([True, False, False, False], (3, 1)))
  assert batch["labelled"].all()
  # clip_start_stride = reveal_period: every training clip starts on a reveal frame, so memory can be perfect.
  sequences = make_sequences(config)
  assert sequences.is_reveal_frame(np.arange(0, 8, config.clip_start_stride)).all()


def test_eval_stream_on_synthetic():
  config = default_data_config("synthetic")
  config.synthetic.num_val_sequences = 3
  stream = make_eval_stream(config)
  items = list(stream)
  assert len(items) == len(stream) == 3 * 8
  assert [bool(item["sequence_start"][0, 0]) for item in items] == ([True] + [False] * 7) * 3
  assert [item["frame_index"] for item in items] == list(range(8)) * 3
  sharded = [list(make_eval_stream(config, shard_index=s, shard_count=2)) for s in range(2)]
  assert [len(items) for items in sharded] == [16, 8]
  assert {item["sequence"] for item in sharded[1]} == {"val00001"}
