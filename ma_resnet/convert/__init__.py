"""Converters of pretrained backbone weights into `ma_resnet` Flax variables, and the converted checkpoints.

- `ma_resnet.convert.torchvision`: torchvision ResNet18/34/50/101/152 `.pth` state dicts -> `ResNet(variant=
  'torchvision')` variables (`convert_state_dict`, `convert_file`, `key_table`). Needs torch only to read
  `.pth` files.
- (`ma_resnet.convert.paddle`: PaddleSeg ResNet_vd -> `ResNet(variant='vd')`, to come.)

A converted checkpoint is a directory with an Orbax checkpoint of `{'params', 'batch_stats'}` and a
`metadata.json` (architecture, source file); `load_converted(path) -> (variables, metadata)` reads it.

Command line: `python -m ma_resnet.convert torchvision IN.pth OUT_DIR --depth 50`.

Importing this package imports neither torch nor orbax (nor the converter modules).
"""
from ma_resnet.convert.checkpoint_io import (ConversionError, load_converted, read_metadata,
                                             save_converted)

__all__ = ['ConversionError', 'convert_weights', 'load_converted', 'read_metadata', 'save_converted']

FRAMEWORKS = ('torchvision', 'timm', 'mmcv', 'paddle')


def convert_weights(framework: str, input_path, out_dir, *, depth: int, include_classifier: bool = True
                    ) -> tuple[str, dict]:
  """Converts the ImageNet weights file `input_path` of `framework` into a converted checkpoint at `out_dir`.

  Returns (out_dir, metadata); metadata['architecture'] = {'depth', 'variant', ...}. Only 'torchvision' here
  (`torchvision.convert_file`); the other frameworks raise ConversionError.
  """
  if framework == 'torchvision':
    from ma_resnet.convert import torchvision
    return torchvision.convert_file(input_path, out_dir, depth, include_classifier=include_classifier)
  if framework in FRAMEWORKS:
    raise ConversionError(f'no {framework} converter in this version of ma_resnet')
  raise ConversionError(f'unknown framework {framework!r}: expected one of {FRAMEWORKS}')
