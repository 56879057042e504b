"""`python -m ma_resnet.data.prepare camvid` on generated videos, and the CamVid reader serving the frames it writes.

The videos show their decoded frame index (`fake_trees.frame_showing_index`), and the SegNet-layout root's labelled
images are the video frames the offset rule names (number = index - 1 for the MXF files, index + 6660 for
01TP_extract.avi), at half size as in the release: so every written file can be checked to hold the right frame.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fake_trees import frame_index_shown, frame_showing_index, write_camvid_tree, write_camvid_videos
from ma_resnet.data import ClipSource, CamVidSequences, DataNotFoundError, default_data_config
from ma_resnet.data import make_eval_stream, make_sequences
from ma_resnet.data.camvid import CAMVID_VIDEOS
from ma_resnet.data.image_files import read_rgb_image
from ma_resnet.data.prepare import main

VIDEO_SIZE, RELEASE_SIZE, NUM_FRAMES = (48, 64), (24, 32), 40
# 0016E5: two 1 Hz-like train frames and a 15 Hz val run; Seq05VD_f00000 has no frame before it in the video.
SPLITS = {"train": {"0001TP": ["006670", "006690"], "0016E5": ["00010", "00030"]},
          "val": {"0016E5": ["00023", "00025", "00027"]},
          "test": {"Seq05VD": ["f00000", "f00020"]}}
K = 4


def release_image(sequence: str, number: int) -> np.ndarray:
  """The release's image of a labelled frame: the video frame the offset rule names, resized like the release."""
  index = number - CAMVID_VIDEOS[sequence].offset
  frame = Image.fromarray(frame_showing_index(index, VIDEO_SIZE))
  return np.asarray(frame.resize(RELEASE_SIZE[::-1], Image.BILINEAR))


@pytest.fixture()
def camvid(tmp_path):
  """(videos folder, SegNet-layout root) for 0001TP, 0016E5 and Seq05VD."""
  videos = tmp_path / "videos"
  write_camvid_videos(videos, {name: NUM_FRAMES for name in ("0001TP", "0016E5", "Seq05VD")}, size=VIDEO_SIZE)
  images = {f"{sequence}_{number}": release_image(sequence, int(number.lstrip("f")))
            for split in SPLITS.values() for sequence, numbers in split.items() for number in numbers}
  root = tmp_path / "camvid"
  write_camvid_tree(root, SPLITS, images=images)
  return videos, root


def prepare(videos, root, *extra) -> None:
  assert main(["camvid", "--videos", str(videos), "--camvid-root", str(root), "--no-progress", *extra]) == 0


def frame_files(out) -> dict[str, float]:
  """{relative path: mtime} of every file under `out`."""
  return {os.path.relpath(os.path.join(d, n), out): os.stat(os.path.join(d, n)).st_mtime_ns
          for d, _, names in os.walk(out) for n in names}


# the K = 4 frames before each labelled frame, once each (0016E5's val run 19..26 meets the window 26..29 of 30)
EXPECTED = {"0001TP": [6666, 6667, 6668, 6669, 6686, 6687, 6688, 6689],
            "0016E5": [6, 7, 8, 9] + list(range(19, 30)),
            "Seq05VD": [16, 17, 18, 19]}
TOTAL = sum(len(numbers) for numbers in EXPECTED.values())


def test_writes_the_frames_before_each_labelled_frame_by_the_offset_rule(camvid, capsys):
  videos, root = camvid
  prepare(videos, root)
  out = root / "video_frames"
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["frames_before"] == K and sorted(manifest["sequences"]) == ["0001TP", "0016E5", "Seq05VD"]
  for sequence, numbers in EXPECTED.items():
    entry = manifest["sequences"][sequence]
    assert entry["frames"] == numbers and entry["offset"] == CAMVID_VIDEOS[sequence].offset
    assert entry["video"] == CAMVID_VIDEOS[sequence].file_name and entry["frame_size"] == list(RELEASE_SIZE)
    assert entry["check"]["max_same_frame"] <= 12 and entry["check"]["same_frame"] < entry["check"]["frame_before"]
    files = sorted(os.listdir(out / "frames" / sequence))
    assert files == [entry["name_format"].format(n) + ".png" for n in numbers]
    for number, name in zip(numbers, files):
      image = read_rgb_image(out / "frames" / sequence / name)
      assert image.shape == RELEASE_SIZE + (3,)
      assert frame_index_shown(image) == number - CAMVID_VIDEOS[sequence].offset, name
  assert sorted(os.listdir(out / "frames")) == sorted(EXPECTED)
  assert "0016E5_00026.png" in os.listdir(out / "frames" / "0016E5")  # the release's names: 5 digits, 'f' kept
  assert "Seq05VD_f00016.png" in os.listdir(out / "frames" / "Seq05VD")
  err = capsys.readouterr().err
  assert f"{TOTAL} frames written, 0 already there (K=4" in err

  before = frame_files(out)  # a second run writes nothing and says so
  prepare(videos, root)
  assert "nothing to do" in capsys.readouterr().err and frame_files(out) == before


def test_the_reader_serves_the_video_frames(camvid, capsys):
  videos, root = camvid
  prepare(videos, root)
  capsys.readouterr()
  train = CamVidSequences(root, "train", video_frames="auto")
  assert train.frames_before == K and "from the 30 fps video (K=4" in train.memory_frames
  assert train.sequence_names == ("0001TP_006666", "0001TP_006686", "0016E5_00006", "0016E5_00026")
  assert [train.frame_number(0, p) for p in range(5)] == [6666, 6667, 6668, 6669, 6670]
  assert [train.is_labelled(1, p) for p in range(5)] == [False] * 4 + [True]
  # TMANet's sample: a clip of T + 1 frames with the labelled frame last = the T video frames just before it
  source = ClipSource(train, clip_length=K + 1, labelled_last=True)
  assert len(source) == 4
  for index in range(len(source)):
    clip = source[index]
    sequence = train.sequence_names[clip["sequence_index"]].split("_")[0]
    last = train.frame_number(clip["sequence_index"], clip["start"] + K)
    shown = [frame_index_shown(image) + CAMVID_VIDEOS[sequence].offset for image in clip["images"]]
    assert shown == list(range(last - K, last + 1))
    assert clip["labelled"].tolist() == [False] * K + [True] and (clip["labels"][:K] == 255).all()
  # THA's pairs: (key frame, labelled frame) g = 1..4 video frames apart
  pairs = ClipSource(train, clip_length=2, pair_gaps=(1, 2, 3, 4), labelled_last=True)
  assert len(pairs) == 16 and sorted(set(pairs.clip_gap.tolist())) == [1, 2, 3, 4]
  clip = pairs[int(np.flatnonzero(pairs.clip_gap == 3)[0])]
  assert np.diff([frame_index_shown(image) for image in clip["images"]]).tolist() == [3]

  val = CamVidSequences(root, "val", video_frames=str(root / "video_frames"))
  assert val.sequence_names == ("0016E5_00019",) and val.sequence_lengths == (9,)
  assert [val.is_labelled(0, p) for p in range(9)] == [False] * 4 + [True, False, True, False, True]
  test = CamVidSequences(root, "test", video_frames="auto")
  assert test.sequence_names == ("Seq05VD_f00000", "Seq05VD_f00016")  # nothing before frame 0 of the video

  config = default_data_config("camvid")
  config.update(root=str(root), normalize=False, read_threads=1, prefetch_buffer_size=1)
  config.camvid.video_frames = "auto"
  items = list(make_eval_stream(config, "val"))  # evaluation streams the video frames; only labelled ones score
  assert [item["frame_number"] for item in items] == list(range(19, 28))
  assert [bool(item["labelled"][0, 0]) for item in items] == [False] * 4 + [True, False, True, False, True]
  assert [frame_index_shown(item["frames"][0, 0]) for item in items] == list(range(20, 29))
  make_sequences(config, "train")
  err = capsys.readouterr().err
  assert err.count("CamVid: memory frames from the 30 fps video (K=4") == 1  # said once per process

  config.camvid.video_frames = ""
  labelled_only = make_sequences(config, "train")
  assert labelled_only.sequence_names == ("0001TP", "0016E5") and labelled_only.sequence_lengths == (2, 2)
  assert labelled_only.frames_before is None and "from the labelled frames" in labelled_only.memory_frames


def test_auto_without_prepared_frames_reads_the_labelled_frames(camvid):
  _, root = camvid
  train = CamVidSequences(root, "train", video_frames="auto")
  assert train.video_frames is None and train.sequence_lengths == (2, 2)
  assert "labelled frames" in train.memory_frames and "prepare camvid" in train.memory_frames
  with pytest.raises(DataNotFoundError, match="manifest.json not found"):
    CamVidSequences(root, "train", video_frames=str(root / "elsewhere"))


def test_a_missing_prepared_frame_is_named(camvid):
  videos, root = camvid
  prepare(videos, root)
  missing = root / "video_frames" / "frames" / "0001TP" / "0001TP_006688.png"
  missing.unlink()
  with pytest.raises(DataNotFoundError, match=f"video frame not found: {missing}"):
    CamVidSequences(root, "train", video_frames="auto")


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "ma_resnet.data.prepare", "camvid", "--no-progress", *args],
                        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_a_missing_video_is_named_and_nothing_is_written(camvid):
  videos, root = camvid
  (videos / "01TP_extract.avi").unlink()
  result = run_cli("--videos", str(videos), "--camvid-root", str(root))
  assert result.returncode == 3
  assert result.stderr.strip().splitlines() == [
      f"error: CamVid video of sequence 0001TP not found: {videos / '01TP_extract.avi'} (the original 30 fps video "
      "of the CamVid site; docs/data.md)"]
  assert not (root / "video_frames").exists()


def test_a_video_off_by_one_is_refused_naming_the_sequence(camvid, capsys):
  videos, root = camvid
  # 0016E5.MXF without the extra first frame the rule counts: decoded frame i shows i + 1
  write_camvid_videos(videos, {"0016E5": NUM_FRAMES}, size=VIDEO_SIZE, first_index=1)
  with pytest.raises(SystemExit) as exit_info:
    prepare(videos, root, "--out", str(root / "out"))
  assert exit_info.value.code == 3
  stderr = capsys.readouterr().err
  error = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert len(error) == 1 and stderr.strip().endswith(error[0])
  assert error[0].startswith("error: CamVid sequence 0016E5: decoded frame 11 of ")
  assert "offset rule does not hold" in error[0] and "the frame before: 0." in error[0]
  assert os.listdir(root / "out" / "frames" / "0016E5") == []  # nothing of it written
  assert not (root / "out" / "manifest.json").exists()


KILL_AFTER = 5  # frames written before the process kills itself in the middle of writing the next one
KILLER = """
import os, signal, sys
from ma_resnet.data.prepare import camvid_video
from ma_resnet.files import atomic_path
written = 0
def write_then_die(path, frame):
  global written
  if written == {kill_after}:
    with atomic_path(path) as tmp:
      open(tmp, 'wb').write(b'half a PNG')
      os.kill(os.getpid(), signal.SIGKILL)
  camvid_video._write_frame_once(path, frame)
  written += 1
camvid_video._write_frame_once, camvid_video._write_frame = camvid_video._write_frame, write_then_die
from ma_resnet.data.prepare import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_run_resumes_and_a_third_run_writes_nothing(camvid, capsys):
  videos, root = camvid
  out = root / "video_frames"
  args = ["camvid", "--no-progress", "--videos", str(videos), "--camvid-root", str(root)]
  killed = subprocess.run([sys.executable, "-c", KILLER.format(kill_after=KILL_AFTER), *args], capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  left = frame_files(out)
  assert len([p for p in left if p.endswith(".png") and not os.path.basename(p).startswith(".")]) == KILL_AFTER
  assert any(".partial-" in p for p in left) and "manifest.json" not in left

  prepare(videos, root)
  assert f"{TOTAL - KILL_AFTER} frames written, {KILL_AFTER} already there" in capsys.readouterr().err
  done = frame_files(out)
  assert not any(".partial-" in p for p in done) and "manifest.json" in done
  assert all(done[p] == left[p] for p in left if ".partial-" not in p)  # the complete frames were kept
  for sequence, numbers in EXPECTED.items():
    for name in os.listdir(out / "frames" / sequence):
      number = int(name.split("_")[1][:-4].lstrip("f"))
      assert frame_index_shown(read_rgb_image(out / "frames" / sequence / name)) == number - CAMVID_VIDEOS[
          sequence].offset

  prepare(videos, root)
  assert "nothing to do" in capsys.readouterr().err and frame_files(out) == done


def test_errors_in_the_release_or_the_command_line(camvid, capsys):
  videos, root = camvid
  with pytest.raises(SystemExit) as exit_info:
    main(["camvid", "--videos", str(videos), "--camvid-root", str(root), "--frames-before", "0"])
  assert exit_info.value.code == 2 and "--frames-before must be >= 1" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exit_info:
    main(["camvid", "--videos", str(videos), "--camvid-root", str(root), "--sequences", "0006R0"])
  assert exit_info.value.code == 3 and "no labelled frame of sequence 0006R0" in capsys.readouterr().err
  (root / "train.txt").write_text((root / "train.txt").read_text() * 2)
  with pytest.raises(SystemExit) as exit_info:
    main(["camvid", "--videos", str(videos), "--camvid-root", str(root)])
  assert exit_info.value.code == 3 and "lists frame" in capsys.readouterr().err
