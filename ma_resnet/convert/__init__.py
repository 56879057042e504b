"""Converters of pretrained backbone weights into `ma_resnet` Flax variables, and the converted checkpoints.

`convert_weights(framework, input_path, out_dir, *, depth, include_classifier=True) -> (out_dir, metadata)`
converts an ImageNet ResNet file of one of four frameworks (`frameworks.FRAMEWORKS`), deciding the variant
from its keys:

- `torchvision`: torchvision ResNet `.pth` -> variant 'torchvision' (`convert.torchvision`);
- `timm`: timm resnet{18,26,34,50,101,152}{,c,d} `.safetensors` / `.pth` -> 'torchvision', 'v1c' or 'vd'
  (`convert.timm`);
- `mmcv`: OpenMMLab ResNetV1c / ResNetV1d / ResNet (mmcv model zoo, mmseg, mmpretrain) `.pth` -> 'v1c', 'vd'
  or 'torchvision' (`convert.mmcv`);
- `paddle`: PaddleClas / PaddleSeg ResNet_vd `.pdparams` -> 'vd' (`convert.paddle_resnet`), read without
  paddle.

Every converter is an explicit key table (`resnet_keys`, `checkpoint_io.Table`); weight files are read
without running code they may carry (`weight_files`: safetensors, torch weights-only, a restricted unpickler
for .pdparams). The authors' full-model checkpoints load with `convert.paddle` (MA-ResNet50),
`convert.tmanet` and `convert.stf_mar`.

A converted checkpoint is a directory with an Orbax checkpoint of `{'params', 'batch_stats'}` and a
`metadata.json` (architecture, source file); `load_converted(path) -> (variables, metadata)` reads it.

Command line: `python -m ma_resnet.convert {torchvision,timm,mmcv,paddle} IN OUT_DIR --depth N
[--no-classifier]`.

Importing this package imports neither torch nor orbax (nor the converter modules).
"""
from ma_resnet.convert.checkpoint_io import (ConversionError, load_converted, read_metadata,
                                             save_converted)
from ma_resnet.convert.frameworks import FRAMEWORKS, convert_weights

__all__ = ['FRAMEWORKS', 'ConversionError', 'convert_weights', 'load_converted', 'read_metadata',
           'save_converted']
