"""VSPW reader on a generated VSPW-layout tree: sequences, label mapping, person mode, unlabelled frames."""

import os

import numpy as np
import pytest
from PIL import Image

from ma_resnet.data import (VSPW_CLASS_NAMES, VSPW_PALETTE, VSPW_PERSON_CLASS, DataError, DataNotFoundError, VspwSequences,
                            default_data_config, make_train_iterator, num_classes)
from fake_trees import write_vspw_tree
from ma_resnet.data.image_files import read_rgb_image


@pytest.fixture()
def vspw_tree(tmp_path):
  written = write_vspw_tree(tmp_path, {"train": ["video_b", "video_a"], "val": ["video_c"]}, frames_per_video=4)
  return tmp_path, written


def expected_semantic(mask):
  return np.where((mask == 0) | (mask == 255), 255, mask.astype(np.int32) - 1)


def test_class_list():
  assert len(VSPW_CLASS_NAMES) == 124
  assert VSPW_CLASS_NAMES[VSPW_PERSON_CLASS] == "person" and VSPW_PERSON_CLASS == 60
  assert VSPW_PALETTE.shape == (124, 3) and len({tuple(c) for c in VSPW_PALETTE}) == 124
  config = default_data_config("vspw")
  assert num_classes(config) == 124
  config.vspw_mode = "person"
  assert num_classes(config) == 2


def test_sequences_and_semantic_labels(vspw_tree):
  root, written = vspw_tree
  train = VspwSequences(root, "train")
  assert train.sequence_names == ("video_b", "video_a")  # the order of train.txt
  assert train.sequence_lengths == (4, 4)
  assert [train.frame_number(0, p) for p in range(4)] == [0, 1, 2, 3]
  frame = train.read_frame(1, 2)
  mask = written["video_a/00000002"]["mask"]
  assert frame.labelled and frame.label.dtype == np.uint8 and frame.image.shape == (10, 14, 3)
  np.testing.assert_array_equal(frame.label, expected_semantic(mask))
  np.testing.assert_array_equal(frame.image, read_rgb_image(root / "data/video_a/origin/00000002.jpg"))
  assert set(np.unique(frame.label).tolist()) <= {0, 1, 60, 123, 255}
  assert VspwSequences(root, "val").sequence_names == ("video_c",)


def test_person_mode(vspw_tree):
  root, written = vspw_tree
  person = VspwSequences(root, "train", mode="person")
  assert person.num_classes == 2 and person.class_names == ("background", "person")
  mask = written["video_b/00000001"]["mask"]
  label = person.read_frame(0, 1).label
  expected = np.where((mask == 0) | (mask == 255), 255, (mask == VSPW_PERSON_CLASS + 1).astype(np.int32))
  np.testing.assert_array_equal(label, expected)
  # The person class id is a parameter: here class 0 ('wall', mask value 1) plays "person".
  wall = VspwSequences(root, "train", mode="person", person_class=0).read_frame(0, 1).label
  np.testing.assert_array_equal(wall, np.where((mask == 0) | (mask == 255), 255, (mask == 1).astype(np.int32)))


def test_missing_mask_is_unlabelled(vspw_tree):
  root, _ = vspw_tree
  os.remove(root / "data/video_a/mask/00000003.png")
  frame = VspwSequences(root, "train").read_frame(1, 3)
  assert not frame.labelled and (frame.label == 255).all()


def test_pipeline_on_vspw_tree(vspw_tree):
  root, _ = vspw_tree
  config = default_data_config("vspw")
  config.root = str(root)
  config.crop_size = (8, 8)
  config.clip_length = 3
  config.vspw_mode = "person"
  batch = next(make_train_iterator(config, shard_index=0, shard_count=1))
  assert batch["frames"].shape == (2, 3, 8, 8, 3) and batch["labels"].shape == (2, 3, 8, 8)
  assert set(np.unique(batch["labels"]).tolist()) <= {0, 1, 255}


def test_vspw_errors(vspw_tree):
  root, _ = vspw_tree
  with pytest.raises(DataNotFoundError, match="test.txt"):
    VspwSequences(root, "test")
  (root / "empty.txt").write_text("\n")
  with pytest.raises(DataNotFoundError, match="empty.txt"):
    VspwSequences(root, "empty")
  (root / "ghost.txt").write_text("no_such_video\n")
  with pytest.raises(DataNotFoundError, match="no_such_video"):
    VspwSequences(root, "ghost")
  bad_mask = root / "data/video_b/mask/00000000.png"
  Image.fromarray(np.full((10, 14), 200, np.uint8)).save(bad_mask)
  with pytest.raises(DataError, match=str(bad_mask)):
    VspwSequences(root, "train").read_frame(0, 0)
  corrupt = root / "data/video_a/origin/00000001.jpg"
  corrupt.write_bytes(corrupt.read_bytes()[:60])
  with pytest.raises(DataError, match=str(corrupt)):
    VspwSequences(root, "train").read_frame(1, 1)
