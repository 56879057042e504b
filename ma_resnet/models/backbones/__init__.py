"""Backbones: images (N, H, W, 3) -> named maps, run only as deep as asked (`stages=`), `feature_shapes`."""
from ma_resnet.models.backbones.resnet import ResNet

__all__ = ['ResNet']
