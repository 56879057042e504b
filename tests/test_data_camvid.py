"""CamVid reader and pipeline on the real SegNet-layout folder (shared/data/camvid beside the repo)."""

from pathlib import Path

import numpy as np
import pytest

from ma_resnet.data import (CAMVID_CLASS_NAMES, CAMVID_PALETTE, ClipSource, CamVidSequences, default_data_config,
                            make_eval_stream, make_train_iterator, num_classes, parse_frame_name)
from ma_resnet.data.camvid import name_format
from ma_resnet.data.image_files import read_label_image

SHARED = Path(__file__).resolve().parents[2] / "shared"
CAMVID_ROOT = SHARED / "data" / "camvid"


@pytest.fixture(scope="module")
def camvid_root() -> Path:
  if not SHARED.is_dir():
    pytest.skip(f"real CamVid data not available: {SHARED} (the shared/ folder beside the repo) is absent")
  if not CAMVID_ROOT.is_dir():
    pytest.skip(f"real CamVid data not available: {CAMVID_ROOT} is absent")
  return CAMVID_ROOT


def camvid_config(root, **overrides):
  config = default_data_config("camvid")
  config.root = str(root)
  config.read_threads = 2
  config.prefetch_buffer_size = 2
  config.update(overrides)
  return config


def test_frame_name_parsing():
  assert parse_frame_name("0001TP_006690.png") == ("0001TP", 6690)
  assert parse_frame_name("0016E5_00390.png") == ("0016E5", 390)
  assert parse_frame_name("0006R0_f00930.png") == ("0006R0", 930)
  assert parse_frame_name("Seq05VD_f00000.png") == ("Seq05VD", 0)
  # the prepared video frames are named like the release's labelled frames of their sequence
  assert name_format("0001TP_006690.png").format(6689) == "0001TP_006689"
  assert name_format("0016E5_07959.png").format(7958) == "0016E5_07958"
  assert name_format("0006R0_f00930.png").format(926) == "0006R0_f00926"
  assert name_format("Seq05VD_f00000.png").format(1) == "Seq05VD_f00001"


def test_test_split_in_the_same_layout(tmp_path):
  from fake_trees import write_camvid_tree
  write_camvid_tree(tmp_path, {"test": {"Seq05VD": ["f00030", "f00000"], "0001TP": ["008550", "008580"]}})
  test = CamVidSequences(tmp_path, "test")
  assert test.sequence_names == ("0001TP", "Seq05VD") and test.sequence_lengths == (2, 2)
  assert [test.frame_number(1, p) for p in range(2)] == [0, 30]
  assert test.read_frame(1, 1).image.shape == (12, 16, 3)


def test_class_metadata():
  assert len(CAMVID_CLASS_NAMES) == 11 and CAMVID_CLASS_NAMES[0] == "Sky" and CAMVID_CLASS_NAMES[-1] == "Bicyclist"
  assert CAMVID_PALETTE.shape == (11, 3) and CAMVID_PALETTE.dtype == np.uint8
  assert tuple(CAMVID_PALETTE[3]) == (128, 64, 128)  # Road
  assert len({tuple(c) for c in CAMVID_PALETTE}) == 11
  assert num_classes(default_data_config("camvid")) == 11


def test_sequences_and_time_order(camvid_root):
  train = CamVidSequences(camvid_root, "train")
  assert dict(zip(train.sequence_names, train.sequence_lengths)) == {"0001TP": 62, "0006R0": 101, "0016E5": 204}
  val = CamVidSequences(camvid_root, "val")
  assert dict(zip(val.sequence_names, val.sequence_lengths)) == {"0016E5": 101}
  for split in (train, val):
    for i in range(split.num_sequences):
      numbers = [split.frame_number(i, p) for p in range(split.sequence_length(i))]
      assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
  assert [train.frame_number(1, p) for p in range(2)] == [930, 960]  # 0006R0_f00930, f00960
  assert [val.frame_number(0, p) for p in range(3)] == [7959, 7961, 7963]
  assert train.frame_files(0, 0).image_path.endswith("train/0001TP_006690.png")


def test_labels_void_to_ignore(camvid_root):
  train = CamVidSequences(camvid_root, "train")
  seen = set()
  for position in (0, 30, 61):
    frame = train.read_frame(0, position)
    assert frame.image.shape == (360, 480, 3) and frame.image.dtype == np.uint8
    assert frame.label.shape == (360, 480) and frame.label.dtype == np.uint8 and frame.labelled
    raw = read_label_image(train.frame_files(0, position).label_path)
    assert (frame.label[raw == 11] == 255).all()
    np.testing.assert_array_equal(frame.label[raw != 11], raw[raw != 11])
    seen |= set(np.unique(frame.label).tolist())
  assert seen <= set(range(11)) | {255}
  assert 255 in seen and 3 in seen  # void present (as ignore) and road


def test_clips_never_cross_sequences(camvid_root):
  train = CamVidSequences(camvid_root, "train")
  source = ClipSource(train, clip_length=3)
  assert len(source) == sum(n - 2 for n in train.sequence_lengths)
  lengths = np.array(train.sequence_lengths)
  assert (source.clip_start + 3 <= lengths[source.clip_sequence]).all()
  clip = source[61 - 2]  # last clip of 0001TP
  assert clip["sequence_index"] == 0 and clip["start"] == 59 and clip["images"].shape == (3, 360, 480, 3)
  assert source[60]["sequence_index"] == 1 and source[60]["start"] == 0


def test_train_batches_deterministic_and_restorable(camvid_root):
  config = camvid_config(camvid_root)
  first = make_train_iterator(config, shard_index=0, shard_count=1)
  batches = [next(first) for _ in range(2)]
  batch = batches[0]
  assert batch["frames"].shape == (2, 2, 360, 480, 3) and batch["frames"].dtype == np.float32
  assert batch["labels"].shape == (2, 2, 360, 480) and batch["labels"].dtype == np.int32
  assert batch["labelled"].dtype == bool and batch["labelled"].all()
  np.testing.assert_array_equal(batch["sequence_start"], [[True, False], [True, False]])
  assert set(np.unique(batch["labels"]).tolist()) <= set(range(11)) | {255}

  state = first.get_state()
  expected = [next(first) for _ in range(2)]
  again = make_train_iterator(config, shard_index=0, shard_count=1)
  for reference in batches:
    np.testing.assert_array_equal(next(again)["frames"], reference["frames"])
  restored = make_train_iterator(config, shard_index=0, shard_count=1)
  restored.set_state(state)
  for reference in expected:
    got = next(restored)
    for key in reference:
      np.testing.assert_array_equal(got[key], reference[key])


def test_eval_stream_val(camvid_root):
  config = camvid_config(camvid_root, normalize=False)
  stream = make_eval_stream(config, "val")
  assert len(stream) == 101
  items = list(stream)
  assert len(items) == 101
  starts = [bool(item["sequence_start"][0, 0]) for item in items]
  assert starts == [True] + [False] * 100
  assert [item["frame_number"] for item in items[:3]] == [7959, 7961, 7963]
  assert all(item["sequence"] == "0016E5" for item in items)
  assert items[0]["frames"].shape == (1, 1, 360, 480, 3) and items[0]["frames"].dtype == np.uint8
  assert items[0]["labels"].shape == (1, 1, 360, 480) and items[0]["labels"].dtype == np.int32


def test_video_frames_auto_without_a_prepared_folder_reads_the_labelled_frames(camvid_root):
  assert default_data_config("camvid").camvid.video_frames == ""
  if (camvid_root / "video_frames").is_dir():
    pytest.skip(f"{camvid_root / 'video_frames'} exists: the fallback needs a root without prepared frames")
  train = CamVidSequences(camvid_root, "train", video_frames="auto")
  assert train.video_frames is None and train.frames_before is None
  assert dict(zip(train.sequence_names, train.sequence_lengths)) == {"0001TP": 62, "0006R0": 101, "0016E5": 204}
  assert train.memory_frames.startswith("CamVid: memory frames from the labelled frames (1 fps, val 15 fps; no "
                                         f"prepared video frames in {camvid_root / 'video_frames'}")
