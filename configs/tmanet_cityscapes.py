r"""TMANet on Cityscapes, the authors' recipe (`tmanet_r50-d8_769x769_80k_cityscapes_video.py`).

    python train.py --config=configs/tmanet_cityscapes.py --workdir=runs/tmanet_cityscapes \
        --config.data.root=/data/cityscapes
    python eval.py --workdir=runs/tmanet_cityscapes

Model (`models.build.tmanet_r50_d8`, also behind `convert.tmanet.load_reference`): ResNetV1c-50 (deep stem,
contract_dilation) at output stride 8; `temporal.TMA` on stage 4 with T = 2 memory frames, key 64 / value 256
channels, 512-channel bottleneck; classifier head (dropout 0.1); mmseg's auxiliary FCN on stage 3 (loss
weight 0.4); logits resized with align_corners=True. Training: SGD momentum 0.9, weight decay 5e-4 on every
parameter, poly lr 0.01 -> 1e-4 (power 0.9) over 80 000 iterations; frames resized by 0.5-2.0 around
2048x1024, 769x769 crops, flips, photometric distortion (here: brightness/contrast/saturation jitter),
normalised with the ImageNet statistics; cross-entropy with 255 ignored.

Initialisation: mmcv's ImageNet ResNetV1c-50, as the authors (`init_from='mmcv_resnet50_v1c'`, a catalogue entry
downloaded, checked and converted on first use into $MA_RESNET_CACHE, docs/weights.md); `--config.init_from=''`
trains from scratch.

Data: `leftImg8bit_sequence` + `gtFine` (`labelTrainIds`) under data.root; each snippet is read as the frames
n-2, n-1, n around its labelled frame n (the 20th of the 30-frame snippet): `data.cityscapes.frames_before`
= T and `frames_after` = 0, so a training clip is exactly (memory frames oldest first, labelled frame) as the
authors' `CityscapesVideoDataset` gives it with sequence_range = sequence_num = 2, and evaluation streams
each 3-frame sequence with its memory reset at the start. The loss counts the labelled frame only (the memory
frames have no labels).

Differences from the authors' run:
- Batch 8 clips (the config says 2 per GPU; the GPU count is not in the repository: mmseg's R50-D8
  Cityscapes models use 4 GPUs). Batch norm statistics are over all frames of the batch (memory frames and
  labelled frames together); the authors' SyncBN normalises the labelled frames and each memory slot in
  separate backbone calls.
- Evaluation as the authors (`test_cfg` mode 'slide', docs/protocols.md): 1024x2048 frames, 769x769 windows
  with stride 513x513 (2x4 windows), each window position a lane with its own memory (the authors crop the memory
  frames at the same window), overlapping logits averaged; no flip, one scale (the paper's 80.3 on val).
  `python eval.py --workdir=RUN --mode=whole` scores whole frames instead.
- Crops of 769x769, as the released config (the paper says 768).
- The paper's ablations use output stride 16 and T = 4; the released config (this one) uses 8 and T = 2.
"""
from ma_resnet.data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from ma_resnet.models.build import tmanet_r50_d8
from ma_resnet.train_config import base_config, mmseg_schedule

MEMORY_LENGTH = 2


def get_config():
  config = base_config('cityscapes')
  config.init_from = 'mmcv_resnet50_v1c'  # the authors' ImageNet ResNetV1c-50 (docs/weights.md)
  tmanet_r50_d8(config.model, memory_length=MEMORY_LENGTH, align_corners=True)
  config.aux_loss_weight = 0.4
  mmseg_schedule(config, num_steps=80_000)
  data = config.data
  data.cityscapes.frames_before = MEMORY_LENGTH
  data.cityscapes.frames_after = 0
  data.clip_length = MEMORY_LENGTH + 1
  data.clip_start_stride = MEMORY_LENGTH + 1
  data.crop_size = (769, 769)
  data.scale_range = (0.5, 2.0)
  data.eval_size = None
  config.eval_mode = 'slide'
  config.eval_crop = (769, 769)
  config.eval_stride = (513, 513)
  data.flip = True
  data.jitter = 0.1
  data.mean, data.std = IMAGENET_MEAN, IMAGENET_STD
  data.worker_count = 2
  config.batch_size = 8
  config.log_every = 50
  config.eval_every = 8_000
  config.eval_batch_size = 1
  config.checkpoint_every = 1_000
  config.keep_checkpoints = 3
  return config
