"""Models: the ResNet family, PCMA memory attention, heads and the video segmenter."""
from ma_resnet.models.build import build, default_model_config
from ma_resnet.models.memory import Memory, StageMemory
from ma_resnet.models.pcma import PCMAOptions
from ma_resnet.models.resnet import ResNet
from ma_resnet.models.segmenter import Segmenter, SegmenterOutput

__all__ = ['build', 'default_model_config', 'Memory', 'StageMemory', 'PCMAOptions', 'ResNet',
           'Segmenter', 'SegmenterOutput']
