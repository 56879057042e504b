"""Video data layer: dataset readers (CamVid, VSPW, Cityscapes video, synthetic), clip augmentation and the grain
clip pipeline.

Shapes are NHWC. Training batches: frames float32 (B, T, H, W, 3), labels int32 (B, T, H, W) with 255 = ignore,
labelled bool (B, T), sequence_start bool (B, T); see `ma_resnet.data.pipeline` for the config fields and the
evaluation stream. The TFDS builders live in `ma_resnet.data.tfds_builders` (imported on demand: it needs
tensorflow-datasets, not TensorFlow).
"""

from ma_resnet.data.augment import (IMAGENET_MEAN, IMAGENET_STD, ClipAugmentation, augment_clip, normalize_images,
                                   resize_clip)
from ma_resnet.data.augment import sample_clip_augmentation
from ma_resnet.data.camvid import (CAMVID_CLASS_NAMES, CAMVID_MEAN, CAMVID_NUM_CLASSES, CAMVID_PALETTE, CAMVID_STD,
                                   CamVidSequences, parse_frame_name)
from ma_resnet.data.cityscapes import (CITYSCAPES_CLASS_NAMES, CITYSCAPES_NUM_CLASSES, CITYSCAPES_PALETTE,
                                       CityscapesSequences)
from ma_resnet.data.errors import DataError, DataNotFoundError
from ma_resnet.data.image_files import IGNORE_INDEX
from ma_resnet.data.pipeline import (ClipSource, EvalStream, class_names, class_pixel_counts, close_iterator,
                                     default_data_config, make_eval_stream, make_sequences,
                                     make_train_iterator, make_train_loader, num_classes, palette, validate_data)
from ma_resnet.data.sequences import Frame, SequenceDataset
from ma_resnet.data.synthetic import SyntheticVideo, per_frame_miou_bound
from ma_resnet.data.vspw import (VSPW_CLASS_NAMES, VSPW_NUM_CLASSES, VSPW_PALETTE, VSPW_PERSON_CLASS,
                                 VSPW_PERSON_CLASS_NAMES, VSPW_PERSON_PALETTE, VspwSequences)

__all__ = [
    "CAMVID_CLASS_NAMES", "CAMVID_MEAN", "CAMVID_NUM_CLASSES", "CAMVID_PALETTE", "CAMVID_STD",
    "CITYSCAPES_CLASS_NAMES", "CITYSCAPES_NUM_CLASSES", "CITYSCAPES_PALETTE", "ClipAugmentation", "ClipSource",
    "CamVidSequences", "CityscapesSequences", "DataError", "DataNotFoundError", "EvalStream", "Frame", "IGNORE_INDEX",
    "IMAGENET_MEAN", "IMAGENET_STD", "SequenceDataset", "SyntheticVideo", "VSPW_CLASS_NAMES", "VSPW_NUM_CLASSES",
    "VSPW_PALETTE", "VSPW_PERSON_CLASS", "VSPW_PERSON_CLASS_NAMES", "VSPW_PERSON_PALETTE", "VspwSequences",
    "augment_clip", "class_names", "class_pixel_counts", "close_iterator", "default_data_config", "make_eval_stream", "make_sequences",
    "make_train_iterator", "make_train_loader", "normalize_images", "num_classes", "palette", "parse_frame_name",
    "validate_data",
    "per_frame_miou_bound", "resize_clip", "sample_clip_augmentation",
]
