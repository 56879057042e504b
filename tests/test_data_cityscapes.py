"""Cityscapes video reader on a generated leftImg8bit_sequence + gtFine tree: snippets, windows, pipeline, errors."""

import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from ma_resnet.data import (CITYSCAPES_CLASS_NAMES, CITYSCAPES_PALETTE, IMAGENET_MEAN, IMAGENET_STD, ClipSource,
                            CityscapesSequences, DataError, DataNotFoundError, class_names, close_iterator,
                            default_data_config, make_eval_stream, make_sequences, make_train_iterator, num_classes,
                            palette)
from fake_trees import write_cityscapes_tree
from ma_resnet.data.image_files import read_rgb_image

# 2 cities and 3 snippets per split; frankfurt's video 000000 holds two snippets, as in the real val split.
SPLITS = {"train": {"aachen": [(0, 19), (1, 19)], "bochum": [(0, 19)]},
          "val": {"frankfurt": [(0, 294), (0, 576)], "lindau": [(0, 19)]}}


@pytest.fixture()
def cityscapes_tree(tmp_path):
  written = write_cityscapes_tree(tmp_path, SPLITS)
  return tmp_path, written


def image_path(root, split, stem):
  return root / "leftImg8bit_sequence" / split / stem.split("_")[0] / f"{stem}_leftImg8bit.png"


def label_path(root, split, stem):
  return root / "gtFine" / split / stem.split("_")[0] / f"{stem}_gtFine_labelTrainIds.png"


def cityscapes_config(root, **overrides):
  config = default_data_config("cityscapes")
  config.root = str(root)
  config.read_threads = 2
  config.prefetch_buffer_size = 2
  config.update(overrides)
  return config


def test_class_metadata_and_default_config():
  assert len(CITYSCAPES_CLASS_NAMES) == 19 and CITYSCAPES_CLASS_NAMES[0] == "road"
  assert CITYSCAPES_CLASS_NAMES[-1] == "bicycle" and CITYSCAPES_CLASS_NAMES[6] == "traffic light"
  assert CITYSCAPES_PALETTE.shape == (19, 3) and CITYSCAPES_PALETTE.dtype == np.uint8
  assert tuple(CITYSCAPES_PALETTE[0]) == (128, 64, 128) and tuple(CITYSCAPES_PALETTE[13]) == (0, 0, 142)  # road, car
  assert len({tuple(c) for c in CITYSCAPES_PALETTE}) == 19
  config = default_data_config("cityscapes")
  assert num_classes(config) == 19 and class_names(config) == CITYSCAPES_CLASS_NAMES
  assert palette(config) is CITYSCAPES_PALETTE
  assert config.crop_size == (512, 1024) and config.clip_length == 3 and config.scale_range == (0.5, 2.0)
  assert config.mean == IMAGENET_MEAN and config.std == IMAGENET_STD
  assert config.cityscapes.frames_before is None and config.cityscapes.frames_after is None
  config.cityscapes.frames_before = 4  # typed placeholders: ints are accepted, anything else is not
  with pytest.raises(TypeError):
    config.cityscapes.frames_after = "2"


def test_windows_settable_from_the_command_line():
  from absl import flags
  from ml_collections import config_flags
  argv = ["prog", "--config.cityscapes.frames_before=2", "--config.cityscapes.frames_after=0"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_dict("config", default_data_config("cityscapes"), flag_values=flag_values,
                                  sys_argv=argv)
  flag_values(argv)
  assert flag_values["config"].value.cityscapes.to_dict() == {"frames_before": 2, "frames_after": 0}


def test_snippets_as_sequences(cityscapes_tree):
  root, written = cityscapes_tree
  train = CityscapesSequences(root, "train")
  assert train.sequence_names == ("aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000019")
  assert train.sequence_lengths == (30, 30, 30)
  assert [train.frame_number(0, p) for p in range(30)] == list(range(0, 30))
  labelled = [[train.frame_files(i, p).label_path is not None for p in range(30)] for i in range(3)]
  assert all(row == [p == 19 for p in range(30)] for row in labelled)
  val = CityscapesSequences(root, "val")
  assert val.sequence_names == ("frankfurt_000000_000294", "frankfurt_000000_000576", "lindau_000000_000019")
  assert [val.frame_number(1, p) for p in (0, 19, 29)] == [557, 576, 586]
  assert val.frame_files(1, 0).image_path == str(image_path(root, "val", "frankfurt_000000_000557"))

  frame = train.read_frame(2, 19)
  assert frame.labelled and frame.image.shape == (8, 16, 3) and frame.label.dtype == np.uint8
  np.testing.assert_array_equal(frame.image, written["bochum_000000_000019"]["image"])
  np.testing.assert_array_equal(frame.label, written["bochum_000000_000019"]["label"])
  assert set(np.unique(frame.label).tolist()) <= set(range(19)) | {255}
  other = train.read_frame(2, 20)
  assert not other.labelled and (other.label == 255).all()
  np.testing.assert_array_equal(other.image, written["bochum_000000_000020"]["image"])


def test_other_gtfine_files_are_ignored(cityscapes_tree):
  root, _ = cityscapes_tree
  Image.fromarray(np.full((8, 16), 33, np.uint8)).save(
      root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png")
  train = CityscapesSequences(root, "train")
  assert train.frame_files(0, 19).label_path == str(label_path(root, "train", "aachen_000000_000019"))


def test_frame_windows(cityscapes_tree):
  root, _ = cityscapes_tree
  tmanet = CityscapesSequences(root, "val", frames_before=3, frames_after=0)
  assert tmanet.sequence_lengths == (4, 4, 4)
  assert [tmanet.frame_number(0, p) for p in range(4)] == [291, 292, 293, 294]
  assert [tmanet.read_frame(0, p).labelled for p in range(4)] == [False, False, False, True]
  stf = CityscapesSequences(root, "val", frames_before=1, frames_after=1)
  assert [stf.frame_number(2, p) for p in range(3)] == [18, 19, 20]
  assert [stf.frame_files(2, p).label_path is not None for p in range(3)] == [False, True, False]
  single = CityscapesSequences(root, "train", frames_before=0, frames_after=0)
  assert single.sequence_lengths == (1, 1, 1) and single.read_frame(0, 0).labelled
  one_sided = CityscapesSequences(root, "train", frames_before=2)  # frames_after None: the rest of the snippet
  assert [one_sided.frame_number(0, p) for p in (0, 2, 12)] == [17, 19, 29]
  assert repr(tmanet) != repr(CityscapesSequences(root, "val"))  # the frame list is part of the fingerprint
  for bad in ({"frames_before": 20}, {"frames_after": 11}, {"frames_before": -1}):
    with pytest.raises(ValueError):
      CityscapesSequences(root, "val", **bad)


def test_snippet_as_present_on_disk(cityscapes_tree):
  root, _ = cityscapes_tree
  for frame in range(3):  # the first three frames of aachen_000001's snippet were never downloaded
    os.remove(image_path(root, "train", f"aachen_000001_{frame:06d}"))
  train = CityscapesSequences(root, "train")
  assert train.sequence_lengths == (30, 27, 30) and train.frame_number(1, 0) == 3


def test_make_sequences_reads_the_windows_from_the_config(cityscapes_tree):
  root, _ = cityscapes_tree
  config = cityscapes_config(root)
  config.cityscapes.frames_before = 2
  config.cityscapes.frames_after = 1
  sequences = make_sequences(config, "val")
  assert isinstance(sequences, CityscapesSequences) and sequences.sequence_lengths == (4, 4, 4)


def test_train_batches_end_on_the_labelled_frame(cityscapes_tree):
  root, _ = cityscapes_tree
  config = cityscapes_config(root, crop_size=(8, 8), clip_length=3)
  config.cityscapes.frames_before = config.clip_length - 1
  config.cityscapes.frames_after = 0
  assert len(ClipSource(make_sequences(config), config.clip_length)) == 3  # one clip per snippet
  iterator = make_train_iterator(config, shard_index=0, shard_count=1)
  batch = next(iterator)
  close_iterator(iterator)
  assert batch["frames"].shape == (2, 3, 8, 8, 3) and batch["frames"].dtype == np.float32
  assert batch["labels"].shape == (2, 3, 8, 8) and batch["labels"].dtype == np.int32
  np.testing.assert_array_equal(batch["labelled"], [[False, False, True]] * 2)
  np.testing.assert_array_equal(batch["sequence_start"], [[True, False, False]] * 2)
  assert (batch["labels"][:, :2] == 255).all()
  assert set(np.unique(batch["labels"][:, 2]).tolist()) <= set(range(19)) | {255}


def test_eval_stream(cityscapes_tree):
  root, written = cityscapes_tree
  config = cityscapes_config(root, normalize=False)
  config.cityscapes.frames_before = 1
  config.cityscapes.frames_after = 1
  stream = make_eval_stream(config)
  items = list(stream)
  assert len(stream) == len(items) == 9
  assert [item["frame_number"] for item in items] == [293, 294, 295, 575, 576, 577, 18, 19, 20]
  assert [item["sequence"] for item in items[::3]] == ["frankfurt_000000_000294", "frankfurt_000000_000576",
                                                       "lindau_000000_000019"]
  assert [bool(item["sequence_start"][0, 0]) for item in items] == [True, False, False] * 3
  assert [bool(item["labelled"][0, 0]) for item in items] == [False, True, False] * 3
  assert items[4]["frames"].shape == (1, 1, 8, 16, 3) and items[4]["frames"].dtype == np.uint8
  np.testing.assert_array_equal(items[4]["frames"][0, 0], written["frankfurt_000000_000576"]["image"])
  np.testing.assert_array_equal(items[4]["labels"][0, 0], written["frankfurt_000000_000576"]["label"])


# --- bad inputs: one DataError naming the file or folder at fault -------------------------------------------------


def test_missing_sequence_folder(cityscapes_tree):
  root, _ = cityscapes_tree
  shutil.rmtree(root / "leftImg8bit_sequence")
  with pytest.raises(DataNotFoundError, match="leftImg8bit_sequence package") as error:
    CityscapesSequences(root, "train")
  assert str(root / "leftImg8bit_sequence" / "train") in str(error.value)
  with pytest.raises(DataNotFoundError, match=re.escape(str(root / "nowhere"))):
    CityscapesSequences(root / "nowhere", "train")


def test_missing_gtfine_split(cityscapes_tree):
  root, _ = cityscapes_tree
  shutil.rmtree(root / "gtFine" / "val")
  with pytest.raises(DataNotFoundError, match=re.escape(str(root / "gtFine" / "val"))):
    CityscapesSequences(root, "val")


def test_missing_frame_in_the_window(cityscapes_tree):
  root, _ = cityscapes_tree
  missing = image_path(root, "train", "aachen_000000_000018")
  os.remove(missing)
  with pytest.raises(DataNotFoundError, match=re.escape(str(missing))):
    CityscapesSequences(root, "train", frames_before=2, frames_after=0)
  with pytest.raises(DataNotFoundError, match=re.escape(str(missing))):  # a hole in the snippet
    CityscapesSequences(root, "train")
  assert CityscapesSequences(root, "train", frames_before=0, frames_after=1).sequence_lengths == (2, 2, 2)
  labelled = image_path(root, "train", "bochum_000000_000019")
  os.remove(labelled)
  with pytest.raises(DataNotFoundError, match=re.escape(str(labelled))):
    CityscapesSequences(root, "train", frames_before=0, frames_after=0)


def test_bad_label_value(cityscapes_tree):
  root, _ = cityscapes_tree
  path = label_path(root, "train", "aachen_000001_000019")
  label = np.zeros((8, 16), np.uint8)
  label[2, 3] = 19
  Image.fromarray(label).save(path)
  train = CityscapesSequences(root, "train")
  with pytest.raises(DataError, match=re.escape(str(path))) as error:
    train.read_frame(1, 19)
  assert "[19]" in str(error.value)


def test_snippet_with_two_labelled_frames(cityscapes_tree):
  root, _ = cityscapes_tree
  second = label_path(root, "val", "frankfurt_000000_000580")
  shutil.copy(label_path(root, "val", "frankfurt_000000_000576"), second)
  with pytest.raises(DataError, match="two labelled frames") as error:
    CityscapesSequences(root, "val")
  assert str(second) in str(error.value) and "frankfurt_000000_000576_gtFine" in str(error.value)


def test_snippet_without_labelled_frame(cityscapes_tree):
  root, _ = cityscapes_tree
  os.remove(label_path(root, "train", "bochum_000000_000019"))
  with pytest.raises(DataError, match="no labelled frame") as error:
    CityscapesSequences(root, "train")
  message = str(error.value)
  assert str(root / "leftImg8bit_sequence" / "train" / "bochum") in message
  assert "bochum_000000_000000_leftImg8bit.png" in message and "(30 frames)" in message


def test_empty_split(cityscapes_tree):
  root, _ = cityscapes_tree
  for city in SPLITS["train"]:
    for name in os.listdir(root / "gtFine" / "train" / city):
      os.remove(root / "gtFine" / "train" / city / name)
  with pytest.raises(DataNotFoundError, match="no labelled frames") as error:
    CityscapesSequences(root, "train")
  assert str(root / "gtFine" / "train") in str(error.value)


def test_bad_file_name(cityscapes_tree):
  root, _ = cityscapes_tree
  bad = root / "leftImg8bit_sequence" / "train" / "aachen" / "aachen_19_leftImg8bit.png"
  shutil.copy(image_path(root, "train", "aachen_000000_000019"), bad)
  with pytest.raises(DataError, match="aachen_19_leftImg8bit.png"):
    CityscapesSequences(root, "train")


def test_key_frame_pairs_ending_on_the_labelled_frame(cityscapes_tree):
  """THA training on Cityscapes: pairs (n - g, n) for g = 1..4, only those that end on the labelled frame n."""
  root, _ = cityscapes_tree
  config = cityscapes_config(root, crop_size=(8, 8), clip_length=2)
  config.cityscapes.frames_before, config.cityscapes.frames_after = 4, 0
  sequences = make_sequences(config)
  every = ClipSource(sequences, 2, pair_gaps=(1, 2, 3, 4))
  labelled = ClipSource(sequences, 2, pair_gaps=(1, 2, 3, 4), labelled_last=True)
  assert len(every) == 3 * (4 + 3 + 2 + 1) and len(labelled) == 3 * 4
  for i in range(len(labelled)):
    assert labelled.clip_start[i] + labelled.clip_gap[i] == 4  # the labelled frame is the last of its sequence
    assert labelled[i]["labelled"].tolist() == [False, True]
