"""`python -m ma_resnet.data.prepare cityscapes` (train-id labels, snippet check) and `... vspw` (layout check) on
generated trees."""
import os
import sys

import numpy as np
import pytest
from PIL import Image

from fake_trees import write_cityscapes_tree, write_vspw_tree
from ma_resnet.data import CityscapesSequences
from ma_resnet.data.image_files import read_label_image
from ma_resnet.data.prepare import cityscapes_labels, main

SPLITS = {"train": {"aachen": [(0, 19), (1, 19)]}, "val": {"lindau": [(0, 19)]}}
LABEL = "_gtFine_labelTrainIds.png"


@pytest.fixture()
def polygons_tree(tmp_path):
  written = write_cityscapes_tree(tmp_path, SPLITS, polygons=True)
  return tmp_path, written


def label_files(root):
  return sorted(os.path.join(d, n) for d, _, names in os.walk(root / "gtFine") for n in names if n.endswith(LABEL))


def run(capsys, *args):
  """(exit code, stderr) of one command run in this process."""
  try:
    code = main([*args, "--no-progress"])
  except SystemExit as exit_info:
    code = exit_info.code
  return code, capsys.readouterr().err


def test_cityscapes_writes_train_id_labels_once(polygons_tree, capsys):
  pytest.importorskip("cityscapesscripts", reason="prepare cityscapes draws the labels with cityscapesscripts "
                      "(pip install cityscapesscripts)")
  root, written = polygons_tree
  code, err = run(capsys, "cityscapes", "--root", str(root))
  assert code == 0, err
  assert "3 labelTrainIds PNGs written, 0 already there" in err and "(train 2, val 1)" in err
  assert len(label_files(root)) == 3
  for stem in ("aachen_000000_000019", "aachen_000001_000019", "lindau_000000_000019"):
    split = "val" if stem.startswith("lindau") else "train"
    path = root / "gtFine" / split / stem.split("_")[0] / (stem + LABEL)
    np.testing.assert_array_equal(read_label_image(path), written[stem]["label"])  # train ids, not label ids
  train = CityscapesSequences(root, "train", frames_before=2, frames_after=0)
  assert train.read_frame(0, 2).labelled and set(np.unique(train.read_frame(0, 2).label)) == {0, 13, 255}

  before = {p: os.stat(p).st_mtime_ns for p in label_files(root)}
  code, err = run(capsys, "cityscapes", "--root", str(root))
  assert code == 0 and "nothing to write: the 3 labelTrainIds PNGs exist" in err
  assert {p: os.stat(p).st_mtime_ns for p in label_files(root)} == before


def test_cityscapes_resumes_after_an_interruption(polygons_tree, capsys, monkeypatch):
  pytest.importorskip("cityscapesscripts", reason="needs cityscapesscripts (pip install cityscapesscripts)")
  root, _ = polygons_tree
  draw, name2label = cityscapes_labels._cityscapesscripts()
  calls = []

  def draw_then_stop(json_path, out_path, encoding):
    calls.append(json_path)
    if len(calls) == 2:
      Image.fromarray(np.zeros((2, 2), np.uint8)).save(out_path)  # half-way through the second file
      raise KeyboardInterrupt
    draw(json_path, out_path, encoding)

  monkeypatch.setattr(cityscapes_labels, "_cityscapesscripts", lambda: (draw_then_stop, name2label))
  with pytest.raises(KeyboardInterrupt):
    main(["cityscapes", "--root", str(root), "--no-progress"])
  assert len(label_files(root)) == 1  # the first label, complete; nothing of the second
  assert not [n for d, _, names in os.walk(root) for n in names if ".partial-" in n]
  monkeypatch.undo()
  code, err = run(capsys, "cityscapes", "--root", str(root))
  assert code == 0 and "2 labelTrainIds PNGs written, 1 already there" in err


def test_cityscapes_names_the_first_missing_snippet_frame(polygons_tree, capsys):
  pytest.importorskip("cityscapesscripts", reason="needs cityscapesscripts (pip install cityscapesscripts)")
  root, _ = polygons_tree
  missing = root / "leftImg8bit_sequence" / "train" / "aachen" / "aachen_000001_000005_leftImg8bit.png"
  missing.unlink()
  code, err = run(capsys, "cityscapes", "--root", str(root))
  assert code == 3
  assert err.strip().splitlines() == [f"error: Cityscapes sequence aachen_000001_000019: frame file not found: "
                                      f"{missing}"]


def test_cityscapes_names_an_unknown_polygon_label(polygons_tree, capsys):
  pytest.importorskip("cityscapesscripts", reason="needs cityscapesscripts (pip install cityscapesscripts)")
  root, _ = polygons_tree
  path = root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_polygons.json"
  path.write_text(path.read_text().replace('"road"', '"spaceship"'))
  code, err = run(capsys, "cityscapes", "--root", str(root))
  assert code == 3 and err.strip() == f"error: Cityscapes: {path} has a polygon of unknown label 'spaceship'"


def test_cityscapes_without_cityscapesscripts_says_how_to_install_it(polygons_tree, capsys, monkeypatch):
  root, _ = polygons_tree
  for module in ("cityscapesscripts", "cityscapesscripts.helpers.labels",
                 "cityscapesscripts.preparation.json2labelImg"):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as when not installed
  code, err = run(capsys, "cityscapes", "--root", str(root))
  assert code == 2 and err.strip().splitlines() == [
      "error: prepare cityscapes needs cityscapesscripts to draw the train-id labels: pip install cityscapesscripts"]
  assert label_files(root) == []


def test_vspw_checks_the_layout(tmp_path, capsys):
  write_vspw_tree(tmp_path, {"train": ["v1", "v2"], "val": ["v3"]}, frames_per_video=3)
  os.remove(tmp_path / "data" / "v2" / "mask" / "00000002.png")  # an unlabelled frame is fine
  code, err = run(capsys, "vspw", "--root", str(tmp_path))
  assert code == 0, err
  assert err.strip() == ("VSPW: layout complete, nothing to write: train 2 videos (6 frames, 5 with a mask), "
                         "val 1 videos (3 frames, 3 with a mask)")

  frame = tmp_path / "data" / "v3" / "origin" / "00000001.jpg"
  frame.unlink()  # a mask without its frame
  code, err = run(capsys, "vspw", "--root", str(tmp_path))
  assert code == 3 and err.strip() == (f"error: VSPW: mask {tmp_path / 'data' / 'v3' / 'mask' / '00000001.png'} has "
                                       f"no frame of the same name in {tmp_path / 'data' / 'v3' / 'origin'} (1 such "
                                       "masks)")

  write_vspw_tree(tmp_path, {"val": ["v3"]}, frames_per_video=3)
  Image.new("P", (4, 4)).save(tmp_path / "data" / "v1" / "mask" / "00000000.png")  # a mask of another size
  code, err = run(capsys, "vspw", "--root", str(tmp_path))
  assert code == 3 and "has size 4x4 (WxH) but its image" in err and "v1/origin/00000000.jpg" in err

  os.remove(tmp_path / "val.txt")
  os.remove(tmp_path / "train.txt")
  code, err = run(capsys, "vspw", "--root", str(tmp_path))
  assert code == 3 and "has no split list" in err
