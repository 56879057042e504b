"""benchmarks/peers.py's PyTorch peer: torchvision's own DeepLabV3 source, loaded without `import torchvision`."""
from __future__ import annotations

import pytest

try:
  from torch_utils import load_torchvision_deeplabv3, torchvision_resnet_or_skip
except ImportError:  # tests/ imported as a package
  from tests.torch_utils import load_torchvision_deeplabv3, torchvision_resnet_or_skip

# torchvision's published parameter count of deeplabv3_resnet50 (COCO_WITH_VOC_LABELS_V1: 21 classes, aux head).
PUBLISHED_DEEPLABV3_RESNET50 = 42_004_074


def test_torchvision_deeplabv3_resnet50_loads_and_matches_its_published_size():
  torchvision_resnet_or_skip()
  import torch
  module = load_torchvision_deeplabv3()
  net = module.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
  assert sum(p.numel() for p in net.parameters()) == PUBLISHED_DEEPLABV3_RESNET50
  # Output stride 8: stages 3 and 4 dilated, not strided.
  assert net.backbone.layer4[0].conv2.dilation == (2, 2) and net.backbone.layer4[0].conv2.stride == (1, 1)
  net = module.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=11, aux_loss=False).eval()
  with torch.inference_mode():
    out = net(torch.zeros(1, 3, 40, 56))['out']
  assert tuple(out.shape) == (1, 11, 40, 56)
  with pytest.raises(NotImplementedError):  # pretrained weights are never fetched
    module.deeplabv3_resnet50(weights=None, num_classes=11)
