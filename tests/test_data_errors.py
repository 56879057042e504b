"""Every kind of bad input gives one clear DataError naming the file or folder at fault."""

import os

import numpy as np
import pytest
from PIL import Image

from ma_resnet.data import CamVidSequences, DataError, DataNotFoundError, default_data_config, make_train_iterator
from fake_trees import write_camvid_tree

SPLITS = {"train": {"0001TP": ["006690", "006720", "006750"], "0006R0": ["f00930", "f00960"]},
          "val": {"0016E5": ["07959", "07961"]}}


@pytest.fixture()
def camvid_tree(tmp_path):
  write_camvid_tree(tmp_path, SPLITS)
  return tmp_path


def test_exception_kinds():
  assert issubclass(DataError, ValueError)
  assert issubclass(DataNotFoundError, DataError) and issubclass(DataNotFoundError, FileNotFoundError)


def test_tiny_tree_reads(camvid_tree):
  train = CamVidSequences(camvid_tree, "train")
  assert train.sequence_names == ("0001TP", "0006R0") and train.sequence_lengths == (3, 2)
  assert [train.frame_number(1, p) for p in range(2)] == [930, 960]


def test_missing_root_and_folders(camvid_tree):
  with pytest.raises(DataNotFoundError, match="nowhere"):
    CamVidSequences(camvid_tree / "nowhere", "train")
  with pytest.raises(DataNotFoundError, match=str(camvid_tree / "test")):
    CamVidSequences(camvid_tree, "test")
  os.rename(camvid_tree / "valannot", camvid_tree / "moved")
  with pytest.raises(DataNotFoundError, match="valannot"):
    CamVidSequences(camvid_tree, "val")


def test_empty_split(camvid_tree):
  (camvid_tree / "val.txt").write_text("")
  with pytest.raises(DataNotFoundError, match="val.txt"):
    CamVidSequences(camvid_tree, "val")


def test_listed_file_missing(camvid_tree):
  os.remove(camvid_tree / "trainannot" / "0001TP_006720.png")
  with pytest.raises(DataNotFoundError, match="0001TP_006720.png"):
    CamVidSequences(camvid_tree, "train")


def test_bad_list_line(camvid_tree):
  (camvid_tree / "val.txt").write_text("/SegNet/CamVid/val/0016E5_07959.png\n")
  with pytest.raises(DataError, match="val.txt, line 1"):
    CamVidSequences(camvid_tree, "val")


def test_truncated_png(camvid_tree):
  path = camvid_tree / "train" / "0001TP_006720.png"
  path.write_bytes(path.read_bytes()[:100])
  train = CamVidSequences(camvid_tree, "train")
  with pytest.raises(DataError, match=str(path)):
    train.read_frame(0, 1)


def test_not_an_image(camvid_tree):
  path = camvid_tree / "trainannot" / "0006R0_f00960.png"
  path.write_bytes(b"this is not a png")
  with pytest.raises(DataError, match=str(path)):
    CamVidSequences(camvid_tree, "train").read_frame(1, 1)


def test_label_size_mismatch(camvid_tree):
  path = camvid_tree / "trainannot" / "0001TP_006690.png"
  Image.fromarray(np.zeros((5, 7), np.uint8)).save(path)
  with pytest.raises(DataError, match=str(path)) as error:
    CamVidSequences(camvid_tree, "train").read_frame(0, 0)
  assert "7x5" in str(error.value) and "16x12" in str(error.value)


def test_label_value_out_of_range(camvid_tree):
  path = camvid_tree / "trainannot" / "0001TP_006750.png"
  label = np.zeros((12, 16), np.uint8)
  label[3, 4] = 12
  Image.fromarray(label).save(path)
  with pytest.raises(DataError, match=str(path)) as error:
    CamVidSequences(camvid_tree, "train").read_frame(0, 2)
  assert "[12]" in str(error.value)
  label[3, 4] = 255  # 255 is already 'ignore': accepted
  Image.fromarray(label).save(path)
  assert CamVidSequences(camvid_tree, "train").read_frame(0, 2).label[3, 4] == 255


def test_error_surfaces_through_the_pipeline(camvid_tree):
  for name in os.listdir(camvid_tree / "train"):
    path = camvid_tree / "train" / name
    path.write_bytes(path.read_bytes()[:100])
  config = default_data_config("camvid")
  config.root = str(camvid_tree)
  config.crop_size = (8, 8)
  iterator = make_train_iterator(config, shard_index=0, shard_count=1)
  with pytest.raises(DataError, match="cannot decode image file"):
    next(iterator)


def test_default_root_missing_is_clear(monkeypatch):
  from ma_resnet.data import pipeline
  monkeypatch.setattr(pipeline, "_repo_root", lambda: pipeline.Path("/nonexistent/repo"))
  with pytest.raises(DataNotFoundError, match="set data_config.root"):
    pipeline.make_sequences(default_data_config("vspw"))
