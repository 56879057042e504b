"""`python -m ma_resnet.convert FRAMEWORK IN OUT_DIR --depth N [--no-classifier]`: convert pretrained ResNet
weights to a converted checkpoint.

    python -m ma_resnet.convert torchvision resnet50-0676ba61.pth workdirs/resnet50_tv --depth 50
    python -m ma_resnet.convert timm resnet50d.safetensors workdirs/resnet50d --depth 50
    python -m ma_resnet.convert mmcv resnet50_v1c-2cccc1ad.pth workdirs/resnet50_v1c --depth 50 --no-classifier
    python -m ma_resnet.convert paddle ResNet50_vd_ssld_v2_pretrained.pdparams workdirs/r50vd --depth 50

FRAMEWORK is one of torchvision, timm, mmcv, paddle (`frameworks.FRAMEWORKS`); the variant (torchvision / vd /
v1c) is decided from the file's keys and recorded in metadata.json. Writes OUT_DIR/variables (Orbax) and
OUT_DIR/metadata.json, all or nothing, and prints one line; read it back with
`ma_resnet.convert.load_converted(OUT_DIR)`. Expected failures (missing, unreadable or unsafe input, a state
dict of another architecture or depth, an existing non-empty OUT_DIR) print one `error:` line (a few when
the keys of the expected torchvision architecture are listed) and exit with status 1, writing nothing.
"""
from __future__ import annotations

import argparse
import sys

from ma_resnet.convert.checkpoint_io import ConversionError
from ma_resnet.convert.frameworks import FRAMEWORKS, convert_weights
from ma_resnet.models.backbones.resnet import DEPTHS


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m ma_resnet.convert',
                                   description='Convert pretrained backbone weights to an ma_resnet checkpoint.')
  sub = parser.add_subparsers(dest='framework', required=True, metavar='FRAMEWORK')
  for name, (_, help_) in FRAMEWORKS.items():
    p = sub.add_parser(name, help=help_, description=help_)
    p.add_argument('input', help='the weight file to convert')
    p.add_argument('out_dir', help='output directory (must not exist, or be empty)')
    p.add_argument('--depth', type=int, required=True, choices=sorted(DEPTHS), help='ResNet depth')
    p.add_argument('--no-classifier', dest='include_classifier', action='store_false',
                   help='drop the classifier; also accepts a state dict without it')
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    out_dir, metadata = convert_weights(args.framework, args.input, args.out_dir, depth=args.depth,
                                        include_classifier=args.include_classifier)
  except (ConversionError, OSError) as e:  # OSError: e.g. no permission to write OUT_DIR's parent
    print(f'error: {e}', file=sys.stderr)
    return 1
  arch = metadata['architecture']
  print(f'wrote {out_dir} (ResNet{arch["depth"]}, variant {arch["variant"]}, '
        f'classifier: {metadata["num_classes"] or "none"})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
