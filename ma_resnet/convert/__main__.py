"""`python -m ma_resnet.convert FRAMEWORK IN OUT_DIR --depth N`: convert pretrained weights to a checkpoint.

    python -m ma_resnet.convert torchvision resnet50-0676ba61.pth workdirs/resnet50_tv --depth 50

writes OUT_DIR/variables (Orbax) and OUT_DIR/metadata.json, all or nothing; read it back with
`ma_resnet.convert.load_converted(OUT_DIR)`. Expected failures (missing / unreadable input, a state dict of
another architecture, an existing non-empty OUT_DIR) print one `error:` line (or a few naming the offending
keys) and exit with status 1, writing nothing.

Each framework is a subcommand registered in `SUBCOMMANDS` (name -> (help, add_arguments, run)).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from ma_resnet.convert.checkpoint_io import ConversionError

RESNET_DEPTHS = (18, 34, 50, 101, 152)


def _add_common(p: argparse.ArgumentParser, suffix: str) -> None:
  p.add_argument('input', help=f'the {suffix} file to convert')
  p.add_argument('out_dir', help='output directory (must not exist, or be empty)')
  p.add_argument('--depth', type=int, required=True, choices=RESNET_DEPTHS, help='ResNet depth')
  p.add_argument('--no-classifier', dest='include_classifier', action='store_false',
                 help='drop the classifier (fc); also accepts a state dict without it')


def _torchvision_args(p: argparse.ArgumentParser) -> None:
  _add_common(p, 'torchvision .pth')


def _torchvision_run(args: argparse.Namespace):
  from ma_resnet.convert import torchvision
  return torchvision.convert_file(args.input, args.out_dir, args.depth,
                                  include_classifier=args.include_classifier)


# name -> (help, add_arguments(parser), run(args) -> (out_dir, metadata)).
# The PaddleSeg ResNet_vd converter registers here as 'paddle' (ma_resnet/convert/paddle.py).
SUBCOMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    'torchvision': ('torchvision ResNet18/34/50/101/152 state dict (.pth) -> variant "torchvision"',
                    _torchvision_args, _torchvision_run),
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m ma_resnet.convert',
                                   description='Convert pretrained backbone weights to an ma_resnet checkpoint.')
  sub = parser.add_subparsers(dest='framework', required=True, metavar='FRAMEWORK')
  for name, (help_, add_arguments, _) in SUBCOMMANDS.items():
    add_arguments(sub.add_parser(name, help=help_, description=help_))
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  run = SUBCOMMANDS[args.framework][2]
  try:
    out_dir, metadata = run(args)
  except ConversionError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except OSError as e:  # e.g. no permission to write OUT_DIR's parent
    print(f'error: {e}', file=sys.stderr)
    return 1
  arch = metadata['architecture']
  print(f'wrote {out_dir} (ResNet{arch["depth"]}, variant {arch["variant"]}, '
        f'classifier: {metadata["num_classes"] or "none"})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
