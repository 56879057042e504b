"""Preparing the datasets once, before training: `python -m ma_resnet.data.prepare {camvid,cityscapes,vspw} ...`.

    python -m ma_resnet.data.prepare camvid --videos DIR [--camvid-root DIR] [--out DIR] [--frames-before 4]
    python -m ma_resnet.data.prepare cityscapes --root DIR
    python -m ma_resnet.data.prepare vspw --root DIR

camvid      decodes CamVid's original 30 fps videos (`0006R0.MXF`, `0016E5.MXF`, `0005VD.MXF`, `01TP_extract.avi`
            in --videos) and writes the K video frames before every labelled frame of the SegNet-layout root
            (default: the project's CamVid folder) into --out (default `<camvid-root>/video_frames`, where the
            reader's data.camvid.video_frames='auto' looks). Decoded frame i of a video is numbered i - 1 (the
            MXF videos) or i + 6660 (01TP_extract.avi), the TMANet authors' extraction, checked against every
            labelled image (`camvid_video`). K defaults to 4: TMANet's memory frames n-4 .. n-1 and THA's key
            frames 1-4 frames back.
cityscapes  writes the `_gtFine_labelTrainIds.png` labels with cityscapesscripts and checks that every labelled
            frame has its 30-frame snippet in leftImg8bit_sequence (`cityscapes_labels`).
vspw        checks a VSPW tree (`vspw_layout`).

Every command is idempotent (a second run writes nothing and says so) and resumable (files are written all or
nothing; a killed run is finished by running it again), shows a progress bar on stderr, and ends a failure with one
line `error: ...` naming the missing or bad file: exit 2 for the command line or a missing optional package, 3 for
the data. docs/data.md describes the layouts.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ma_resnet.cli import EXIT_DATA, EXIT_USAGE, fail
from ma_resnet.data.camvid import DEFAULT_FRAMES_BEFORE, VIDEO_FRAMES_FOLDER
from ma_resnet.data.errors import DataError, DataNotFoundError
from ma_resnet.data.prepare.camvid_video import DEFAULT_MAX_DIFFERENCE, prepare_video_frames
from ma_resnet.data.prepare.cityscapes_labels import MissingDependencyError, prepare_cityscapes
from ma_resnet.data.prepare.vspw_layout import check_vspw


def _default_camvid_root() -> str:
  """The project's CamVid folder (<repo>/../shared/data/camvid), as `data.root=''` resolves it."""
  folder = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "camvid"
  if not folder.is_dir():
    raise DataNotFoundError(f"no --camvid-root given and the default CamVid folder {folder} does not exist: give the "
                            "SegNet-layout folder (its file names say which frames are labelled)")
  return os.fspath(folder)


def _say(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _camvid(args) -> None:
  root = args.camvid_root or _default_camvid_root()
  out = args.out or os.path.join(root, VIDEO_FRAMES_FOLDER)
  report = prepare_video_frames(args.videos, out, root, args.frames_before, sequences=args.sequences,
                                max_difference=args.max_difference, progress=not args.no_progress)
  names = ", ".join(report.sequences)
  if report.nothing_to_do:
    _say(f"CamVid video frames: nothing to do: {out} already holds the {report.present} frames (K="
         f"{report.frames_before}) of {names} (manifest.json)")
  else:
    _say(f"CamVid video frames: {report.written} frames written, {report.present} already there (K="
         f"{report.frames_before}; {names}) in {out}; manifest: {os.path.join(out, 'manifest.json')}")


def _cityscapes(args) -> None:
  report = prepare_cityscapes(args.root, progress=not args.no_progress)
  labels = (f"{report.written} labelTrainIds PNGs written, {report.present} already there" if report.written else
            f"nothing to write: the {report.present} labelTrainIds PNGs exist")
  snippets = ", ".join(f"{split} {count}" for split, count in report.snippets.items())
  _say(f"Cityscapes: {labels}; every labelled frame has its 30-frame snippet in leftImg8bit_sequence ({snippets})")


def _vspw(args) -> None:
  report = check_vspw(args.root, progress=not args.no_progress)
  splits = ", ".join(f"{split} {report.videos[split]} videos ({report.frames[split]} frames, "
                     f"{report.labelled[split]} with a mask)" for split in report.videos)
  _say(f"VSPW: layout complete, nothing to write: {splits}")


def parser() -> argparse.ArgumentParser:
  main_parser = argparse.ArgumentParser(prog="python -m ma_resnet.data.prepare",
                                        description="Prepare a dataset once, before training (docs/data.md).")
  commands = main_parser.add_subparsers(dest="dataset", required=True)
  camvid = commands.add_parser("camvid", help="the video frames before every labelled CamVid frame")
  camvid.add_argument("--videos", required=True, help="folder holding 0006R0.MXF, 0016E5.MXF, 0005VD.MXF, "
                      "01TP_extract.avi (those of the sequences in --camvid-root)")
  camvid.add_argument("--camvid-root", default="", help="the SegNet-layout CamVid folder (default: the project's)")
  camvid.add_argument("--out", default="", help=f"output folder (default: <camvid-root>/{VIDEO_FRAMES_FOLDER})")
  camvid.add_argument("--frames-before", type=int, default=DEFAULT_FRAMES_BEFORE,
                      help="K: video frames written before every labelled frame (default %(default)s)")
  camvid.add_argument("--sequences", nargs="+", default=None, help="only these sequences (default: all of the root)")
  camvid.add_argument("--max-difference", type=float, default=DEFAULT_MAX_DIFFERENCE,
                      help="largest mean absolute difference (0..255) of a decoded frame to its labelled image "
                           "(default %(default)s)")
  for name, help_text in (("cityscapes", "train-id labels (cityscapesscripts) and the leftImg8bit_sequence check"),
                          ("vspw", "check the VSPW layout")):
    command = commands.add_parser(name, help=help_text)
    command.add_argument("--root", required=True, help=f"the {name} folder")
  for command in commands.choices.values():
    command.add_argument("--no-progress", action="store_true", help="no progress bar")
  return main_parser


def main(argv: list[str] | None = None) -> int:
  """Runs one command; returns 0, or ends the process with one `error:` line and exit 2 / 3."""
  args = parser().parse_args(argv)
  if args.dataset == "camvid" and args.frames_before < 1:
    fail(f"--frames-before must be >= 1, got {args.frames_before}", EXIT_USAGE)
  run = {"camvid": _camvid, "cityscapes": _cityscapes, "vspw": _vspw}[args.dataset]
  try:
    run(args)
  except MissingDependencyError as error:
    fail(str(error), EXIT_USAGE)
  except DataError as error:
    fail(str(error), EXIT_DATA)
  except OSError as error:  # the output cannot be written
    fail(f"cannot write {error.filename or 'the output'}: {error.strerror or error}", EXIT_DATA)
  return 0
