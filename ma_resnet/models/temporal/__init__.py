"""Temporal modules: what a video segmenter carries from frame to frame, and where it uses it.

| module | paper | state (the memory) | where it acts | reference |
| --- | --- | --- | --- | --- |
| `Plain` | — | nothing | — | — |
| `PCMA` (pcma.py) | 001 MA-ResNet50 §3.2 | per stage: keys/values of the T previous frames (FIFO) + validity | on backbone stage maps, before the head | `../shared/reference/paddle_ma_resnet/` |
| `TMA` (tma.py) | 002 TMANet §3 | stage-4 maps of the T previous frames (FIFO) + frames seen | replaces stage 4 by its attention bottleneck | `../shared/reference/tmanet/` |
| `STF` (stf.py) | 003 STF + MAR §3.2-3.3 | PSP features of the last two frames fed + frames seen (non-causal: delay 1) | replaces 'psp' by the transformer fusion of frames t-1, t, t+1 (+ MAR's training-set memory) | `../shared/reference/stf_mar/` |
| `THA` (tha.py) | 004 LERNet + THA §3.3-3.4 | the last key frame's projected low-level and high-level maps + frames seen | non-key frames: low + attention-gated key high (LERNet's P_h only on key frames) | the paper (no public code) |

The interface every module implements is in `base.py`.
"""
from ma_resnet.models.temporal.base import TemporalModule, push, reset_state
from ma_resnet.models.temporal.pcma import PCMA, PCMAOptions, StageMemory, attend
from ma_resnet.models.temporal.plain import Plain
from ma_resnet.models.temporal.stf import STF, NeighbourWindow, STFOptions
from ma_resnet.models.temporal.tha import THA, KeyFrame, THAOptions, holistic_attention
from ma_resnet.models.temporal.tma import TMA, FeatureWindow, TMAOptions

__all__ = ['TemporalModule', 'push', 'reset_state', 'PCMA', 'PCMAOptions', 'StageMemory', 'attend', 'Plain',
           'TMA', 'FeatureWindow', 'TMAOptions', 'STF', 'STFOptions', 'NeighbourWindow', 'THA', 'THAOptions', 'KeyFrame', 'holistic_attention']
