r"""STF + MAR on CamVid (the SegNet release), the Cityscapes recipe of the authors (configs/stf_cityscapes.py).

    python train.py --config=configs/stf_camvid.py:pspnet --workdir=runs/stf_camvid_pspnet
    python train.py --config=configs/stf_camvid.py:stf --workdir=runs/stf_camvid_stf \
        --config.init_from=runs/stf_camvid_pspnet
    python -m ma_resnet.mar_memory --workdir=runs/stf_camvid_stf --out=runs/stf_camvid_memory
    python train.py --config=configs/stf_camvid.py:mar --workdir=runs/stf_camvid_mar \
        --config.init_from=runs/stf_camvid_stf --config.model.stf.memory_init=runs/stf_camvid_memory
    python eval.py --workdir=runs/stf_camvid_mar

Stages as configs/stf_cityscapes.py: 'pspnet' (per-frame PSPNet R50-D8, mmseg schedule, auxiliary FCN, from mmcv's
ImageNet ResNetV1c-50: `init_from='mmcv_resnet50_v1c'`, docs/weights.md; `--config.init_from=''`: from scratch),
'stf' (frozen extractor, STF + a new classifier, AdamW 1e-5, weight decay 1e-4, gradient clipping 0.1),
'mar' (STF fixed, MAR + a new classifier, the memory from `python -m ma_resnet.mar_memory`). Default 'stf'.

What differs with CamVid here (the authors' CamVid experiments use Dilation8, whose code is not released):
- Size. STF needs feature maps made of whole 16x16 blocks: frames must be multiples of 128 at output stride 8.
  The 360x480 frames are resized to 384x512 (features 48x64, 3x4 blocks) for training and
  evaluation; evaluation scores the logits resized back to the native 360x480 labels
  (`data.eval_native_labels`). The embeddings (stored at 128x256) are resized to 48x64.
- Neighbours. The release holds only the labelled frames (train: 1 per second; val: 15 per second), so the
  neighbours t-1, t+1 of a frame are the previous and next labelled frames (clips of 3 consecutive labelled
  frames; the loss on the middle one, whose neighbours are both real: `loss_on_warmup_frames=False`). Sequence
  edges use the edge rule (`model.stf.edge`, 'repeat').
- 11 classes (void ignored): MAR's memory has 110 rows.
- Evaluation on whole frames (eval_mode 'whole', as the Cityscapes recipe); the paper's CamVid numbers are on the
  test split (Dilation8 + STF + MAR 67.9): `python eval.py --workdir=RUN --split=test` where `test/` exists.
- Batch 8 clips, 20 000 steps for each of stages 2 and 4 (the authors' 50 epochs of Cityscapes are 37 200
  steps of 4 clips).
"""
from ma_resnet.data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from ma_resnet.models.build import pspnet_r50_d8, stf_pspnet50
from ma_resnet.train_config import base_config, mmseg_schedule, stf_mar_stage

STAGES = ('pspnet', 'stf', 'mar')
SIZE = (384, 512)  # a multiple of 128 x 128 near 360 x 480
RESIZE = SIZE[0] / 360


def get_config(stage: str = 'stf'):
  if stage not in STAGES:
    raise ValueError(f'configs/stf_camvid.py: stage must be one of {STAGES}, got {stage!r}')
  config = base_config('camvid')
  data = config.data
  data.mean, data.std = IMAGENET_MEAN, IMAGENET_STD
  data.eval_size = SIZE
  data.eval_native_labels = True
  data.crop_size = SIZE
  data.flip = True
  data.worker_count = 2
  config.eval_batch_size = 1
  config.keep_checkpoints = 3
  config.log_every = 50
  if stage == 'pspnet':
    config.init_from = 'mmcv_resnet50_v1c'  # the authors' ImageNet ResNetV1c-50 (docs/weights.md)
    pspnet_r50_d8(config.model)
    config.aux_loss_weight = 0.4
    mmseg_schedule(config, num_steps=40_000)
    data.clip_length = 1
    data.clip_start_stride = 1
    data.scale_range = (0.5 * RESIZE, 2.0 * RESIZE)
    data.jitter = 0.1
    config.batch_size = 8
    config.eval_every = 4_000
    config.checkpoint_every = 1_000
    return config

  stf_pspnet50(config.model, mar=stage == 'mar')
  stf_mar_stage(config, stage, memory_init='runs/stf_camvid_memory')
  config.loss_on_warmup_frames = False
  data.clip_length = 3
  data.clip_start_stride = 1
  data.scale_range = (RESIZE, RESIZE)
  data.jitter = 0.0
  config.batch_size = 8
  config.num_steps = 20_000
  config.eval_every = 2_000
  config.checkpoint_every = 1_000
  return config
