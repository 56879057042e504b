"""The grain clip pipeline: seeding, sharding, exact resume, formats (on the synthetic dataset: no files)."""

import gc

import numpy as np
import pytest

from ma_resnet.data import (ClipSource, Frame, SequenceDataset, class_pixel_counts, close_iterator, default_data_config,
                            make_sequences, make_train_iterator)


def small_config(**overrides):
  config = default_data_config("synthetic")
  config.synthetic.num_train_sequences = 10
  config.read_threads = 2
  config.prefetch_buffer_size = 4
  config.update(overrides)
  return config


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_default_configs_have_all_fields():
  fields = {"name", "root", "source", "tfds_data_dir", "split", "eval_split", "clip_length", "clip_start_stride", "pair_gaps", "labelled_last",
            "crop_size", "eval_size", "eval_native_labels", "batch_size", "shuffle", "num_epochs", "scale_range", "flip", "jitter",
            "normalize", "mean", "std", "seed", "worker_count", "worker_buffer_size", "read_threads",
            "prefetch_buffer_size", "vspw_mode", "person_class", "synthetic", "cityscapes", "camvid"}
  for name in ("synthetic", "camvid", "vspw", "cityscapes"):
    config = default_data_config(name)
    assert set(config.keys()) == fields, name
  assert default_data_config("camvid").crop_size == (360, 480)
  with pytest.raises(ValueError):
    default_data_config("kitti")


def test_same_seed_same_batches_other_seed_other_batches():
  config = small_config(scale_range=(0.5, 2.0), jitter=0.1)
  a = take(make_train_iterator(config, shard_index=0, shard_count=1), 3)
  b = take(make_train_iterator(config, shard_index=0, shard_count=1), 3)
  assert_same_batches(a, b)
  c = take(make_train_iterator(config, seed=1, shard_index=0, shard_count=1), 3)
  assert not np.array_equal(a[0]["frames"], c[0]["frames"])


def test_restored_iterator_continues_exactly():
  config = small_config(scale_range=(0.5, 2.0), jitter=0.1, batch_size=3)
  iterator = make_train_iterator(config, shard_index=0, shard_count=1)
  take(iterator, 4)  # past the first epoch (20 clips / 3 per batch)
  state = iterator.get_state()
  expected = take(iterator, 5)
  restored = make_train_iterator(config, shard_index=0, shard_count=1)
  restored.set_state(state)
  assert_same_batches(take(restored, 5), expected)
  close_iterator(iterator)
  close_iterator(restored)


def test_shards_are_disjoint_and_cover_the_clips():
  config = small_config(flip=False, normalize=False, num_epochs=1, batch_size=1)
  source = ClipSource(make_sequences(config), config.clip_length, config.clip_start_stride)
  assert len(source) == 20
  clip_ids = {source[i]["images"].tobytes(): i for i in range(len(source))}
  assert len(clip_ids) == 20
  seen = []
  for shard in range(2):
    batches = list(make_train_iterator(config, shard_index=shard, shard_count=2))
    assert len(batches) == 10
    seen.append([clip_ids[b["frames"][0].tobytes()] for b in batches])
    assert batches[0]["frames"].dtype == np.uint8
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(20))
  assert seen[0] != sorted(seen[0])  # shuffled


def test_batch_format_and_clip_content():
  config = small_config(flip=False, normalize=False, shuffle=False, batch_size=2)
  batch = next(make_train_iterator(config, shard_index=0, shard_count=1))
  source = ClipSource(make_sequences(config), 4, 4)
  np.testing.assert_array_equal(batch["frames"][1], source[1]["images"])
  np.testing.assert_array_equal(batch["labels"][1], source[1]["labels"])
  assert batch["labels"].dtype == np.int32 and batch["labelled"].dtype == bool
  assert batch["sequence_start"].tolist() == [[True, False, False, False]] * 2


class ConstantVideo(SequenceDataset):
  """Two sequences whose frames are all the same random picture (so any per-frame difference is augmentation)."""

  dataset_name = "constant"
  split = "train"
  class_names = ("a", "b", "c")

  def __init__(self):
    rng = np.random.default_rng(0)
    self.image = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    self.label = rng.integers(0, 3, size=(40, 50), dtype=np.uint8)

  @property
  def sequence_names(self):
    return ("one", "two")

  def sequence_length(self, sequence_index):
    return 6

  def frame_number(self, sequence_index, position):
    return position

  def read_frame(self, sequence_index, position):
    return Frame(self.image, self.label, True)


def test_augmentation_is_drawn_once_per_clip(monkeypatch):
  from ma_resnet.data import pipeline
  monkeypatch.setattr(pipeline, "make_sequences", lambda config, split=None: ConstantVideo())
  config = small_config(clip_length=3, clip_start_stride=1, crop_size=(32, 32), scale_range=(0.5, 2.0), jitter=0.2,
                        batch_size=4)
  iterator = make_train_iterator(config, shard_index=0, shard_count=1)
  for batch in take(iterator, 3):
    for t in (1, 2):
      np.testing.assert_array_equal(batch["frames"][:, t], batch["frames"][:, 0])
      np.testing.assert_array_equal(batch["labels"][:, t], batch["labels"][:, 0])
    assert not np.array_equal(batch["frames"][0, 0], batch["frames"][1, 0])  # clips differ from each other


def test_clip_source_rejects_short_sequences():
  sequences = make_sequences(small_config())
  from ma_resnet.data import DataError
  with pytest.raises(DataError, match="no clip of 9"):
    ClipSource(sequences, clip_length=9)


def test_shard_defaults_to_the_jax_process_layout():
  iterator = make_train_iterator(small_config())  # single-process run: jax.process_index() 0 of 1
  next(iterator)
  assert "shard_index=0, shard_count=1" in iterator.get_state().decode()


def test_processes_read_their_rows_of_the_global_batches():
  """N processes (shards) together read exactly the batches of one process, rows in the same order."""
  config = small_config()
  one = make_train_iterator(config, batch_size=4, shard_index=0, shard_count=1)
  shards = [make_train_iterator(config, batch_size=2, shard_index=i, shard_count=2) for i in range(2)]
  for _ in range(4):
    whole, parts = next(one), [next(s) for s in shards]
    for key in ("frames", "labels", "labelled", "sequence_start"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_worker_processes_restore_exactly():
  config = small_config(worker_count=1, batch_size=2)
  iterator = make_train_iterator(config, shard_index=0, shard_count=1)
  take(iterator, 2)
  state = iterator.get_state()
  expected = take(iterator, 3)
  close_iterator(iterator)
  restored = make_train_iterator(config, shard_index=0, shard_count=1)
  restored.set_state(state)
  assert_same_batches(take(restored, 3), expected)
  close_iterator(restored)
  del iterator, restored, expected
  gc.collect()


def test_class_pixel_counts_sum_every_labelled_frame():
  config = small_config()
  counts = class_pixel_counts(config, "val")
  sequences = make_sequences(config, "val")
  want = np.zeros(sequences.num_classes, np.int64)
  for i in range(sequences.num_sequences):
    for p in range(sequences.sequence_length(i)):
      label = sequences.read_frame(i, p).label
      want += np.array([(label == k).sum() for k in range(sequences.num_classes)])
  np.testing.assert_array_equal(counts, want)
  assert counts.sum() > 0 and (counts > 0).sum() >= 2


def test_pair_gaps_give_key_frame_pairs():
  """pair_gaps: every clip is (t, t + g), for every start and gap, within one sequence."""
  config = small_config()
  sequences = make_sequences(config)
  source = ClipSource(sequences, 2, 1, pair_gaps=(1, 3))
  length = sequences.sequence_length(0)
  per_sequence = (length - 1) + (length - 3)
  assert len(source) == sequences.num_sequences * per_sequence
  for index in (0, len(source) - 1):
    record = source[index]
    sequence, start, gap = (int(a[index]) for a in (source.clip_sequence, source.clip_start, source.clip_gap))
    np.testing.assert_array_equal(record["images"][1], sequences.read_frame(sequence, start + gap).image)
    np.testing.assert_array_equal(record["images"][0], sequences.read_frame(sequence, start).image)
  assert set(source.clip_gap.tolist()) == {1, 3}
  with pytest.raises(ValueError, match="clip_length 2"):
    ClipSource(sequences, 3, 1, pair_gaps=(1,))
