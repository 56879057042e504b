"""ma_resnet: video semantic segmentation with temporal memory (MA-ResNet50 / PCMA) in JAX/Flax."""

__version__ = "0.1.0"
