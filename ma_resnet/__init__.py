"""ma_resnet: video semantic segmentation with temporal memory in JAX/Flax.

The memory methods of the papers (MA-ResNet50's PCMA, TMANet's TMA, STF + MAR, LERNet + THA) and a per-frame
baseline on one machinery: data, training, evaluation, streaming inference, export. See README.md.
"""

__version__ = "0.1.0"
