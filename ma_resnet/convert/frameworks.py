"""`convert_weights(framework, input_path, out_dir, *, depth, include_classifier)`: the one entry point that
converts a pretrained ResNet file of any supported framework into a converted checkpoint directory.

    framework     module                      files                      variant (decided from the keys)
    torchvision   convert/torchvision.py      .pth, .safetensors         torchvision
    timm          convert/timm.py             .safetensors, .pth, .bin   torchvision (resnetN), v1c (resnetNc),
                                                                         vd (resnetNd, N >= 50 or 26)
    mmcv          convert/mmcv.py             .pth                       v1c (ResNetV1c), vd (ResNetV1d),
                                                                         torchvision (ResNet)
    paddle        convert/paddle_resnet.py    .pdparams                  vd (ResNet_vd)

Each framework module is imported only when used (no torch, no orbax at import).
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from ma_resnet.convert.checkpoint_io import ConversionError

# framework -> (module with convert_file(in_path, out_dir, depth, *, include_classifier), one-line help)
FRAMEWORKS: dict[str, tuple[str, str]] = {
    'torchvision': ('ma_resnet.convert.torchvision',
                    'torchvision ResNet state dict (.pth) -> variant torchvision'),
    'timm': ('ma_resnet.convert.timm',
             'timm resnet{18,26,34,50,101,152}{,c,d} (.safetensors / .pth) -> variant torchvision / v1c / vd'),
    'mmcv': ('ma_resnet.convert.mmcv',
             'mmcv / mmseg / mmpretrain ResNetV1c / V1d / ResNet (.pth) -> variant v1c / vd / torchvision'),
    'paddle': ('ma_resnet.convert.paddle_resnet',
               'PaddleClas / PaddleSeg ResNet_vd (.pdparams, read without paddle) -> variant vd'),
}


def convert_weights(framework: str, input_path: str | os.PathLike, out_dir: str | os.PathLike, *, depth: int,
                    include_classifier: bool = True) -> tuple[str, dict[str, Any]]:
  """Converts the `framework` weight file `input_path` (a ResNet`depth`) into the converted checkpoint
  `out_dir` (`load_converted` reads it), all or nothing.

  Returns (absolute out_dir, metadata); metadata['architecture'] = {'family': 'resnet', 'depth', 'variant'}
  with the variant decided from the file's keys and checked against them, metadata['num_classes'] None
  without the classifier. Raises ConversionError (one message, nothing written) for an unknown framework,
  an unreadable or unsafe file, keys of another architecture or depth, or an existing non-empty out_dir.
  """
  if framework not in FRAMEWORKS:
    raise ConversionError(f'unknown framework {framework!r}; one of {", ".join(FRAMEWORKS)}')
  module = importlib.import_module(FRAMEWORKS[framework][0])
  return module.convert_file(input_path, out_dir, depth, include_classifier=include_classifier)
