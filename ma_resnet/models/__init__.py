"""Models: backbones, temporal modules (PCMA, TMA, ...), heads and the video segmenter that composes them."""
from ma_resnet.models.backbones import ResNet
from ma_resnet.models.build import build, default_model_config
from ma_resnet.models.segmenter import SegmenterOutput, VideoSegmenter
from ma_resnet.models.temporal import PCMA, TMA, PCMAOptions, Plain, TemporalModule, TMAOptions

__all__ = ['build', 'default_model_config', 'ResNet', 'SegmenterOutput', 'VideoSegmenter', 'TemporalModule',
           'PCMA', 'PCMAOptions', 'TMA', 'TMAOptions', 'Plain']
