r"""CamVid, the paper's recipe (§4.2): MA-ResNet50-vd + DeepLabV3+, SGD, poly lr 0.1 -> 0.001, 60k iterations.

    python train.py --config=configs/camvid.py --workdir=runs/camvid_ma      # from PaddleSeg's ResNet50-vd SSLD
    python train.py --config=configs/camvid.py --workdir=runs/camvid_scratch --config.init_from=''
    python train.py --config=configs/camvid.py --workdir=runs/camvid_plain --config.model.temporal=plain
    python eval.py --workdir=runs/camvid_ma --overlays=16

Initialisation: the authors' ImageNet encoder, PaddleSeg's ResNet50_vd SSLD v2 (`init_from`, the catalogue entry
'paddleseg_resnet50_vd_ssld_v2': downloaded and converted on first use into $MA_RESNET_CACHE, docs/weights.md;
offline, the error names the file to put there by hand); `--config.init_from=''` trains from scratch.
Recipe: cross-entropy, SGD momentum 0.9, weight decay 4e-5, poly lr from 0.1 to 0.001 (power 0.9) over 60 000
iterations of batch 2, frames at 960x720, augmentation "resize, random horizontal flip and normalize".
PCMA as in the authors' code (r = 0.25, memory of T = 1 frame), so a clip is 2 consecutive labelled frames:
the first fills the memory, the second is enhanced. The code's PCMA on stages 2-3 is not built: DeepLabV3+
reads stages 1 and 4 and the enhanced maps go only to the head, so it could not change a prediction.

Differences with the data in /work/shared/data/camvid (SegNet release): its frames are 480x360, half the
paper's 960x720 (which is CamVid's original video resolution). Here they are upsampled 2x (scale_range (2, 2):
images bilinear, labels nearest) to reproduce the paper's input size, so the model sees no more detail than at
480x360 for 4x the compute, and mIoU is measured on labels upsampled to 960x720 (same mIoU as at 480x360 up to
boundary rounding). To train and evaluate at the release's native size instead:
    --config.data.crop_size=360,480 --config.data.scale_range=1,1 --config.data.eval_size=360,480
Evaluation as the authors' `infer_camvid.py`: whole frames resized to 720x960, arg-max, no flip, one scale
(eval_mode 'whole'; their code does not use PaddleSeg's slide or multi-scale inference), on val.
The authors stream frames in order ("without shuffling"); here clips are shuffled (each clip carries its own
memory, so order does not matter) - set --config.data.shuffle=False to mimic them. The authors' code computes
no output (hence no loss) for warm-up frames: --config.loss_on_warmup_frames=False mimics that.
"""
from ma_resnet.train_config import base_config


def get_config():
  config = base_config('camvid')
  config.init_from = 'paddleseg_resnet50_vd_ssld_v2'  # the authors' ImageNet ResNet50-vd (docs/weights.md)

  # MA-ResNet50-vd, output stride 8, multi-grid (1, 2, 4), DeepLabV3+ (ASPP 1/12/24/36), PCMA (code preset).
  config.model.pcma.memory_length = 1

  data = config.data
  data.clip_length = config.model.pcma.get_ref('memory_length') + 1  # follows --config.model.pcma.memory_length
  data.crop_size = (720, 960)
  data.scale_range = (2.0, 2.0)
  data.eval_size = (720, 960)
  data.flip = True
  data.jitter = 0.0
  data.worker_count = 2

  opt = config.optimizer
  opt.name = 'sgd'
  opt.lr = 0.1
  opt.end_lr = 0.001
  opt.power = 0.9
  opt.momentum = 0.9
  opt.weight_decay = 4e-5
  opt.warmup = 0

  config.num_steps = 60_000
  config.batch_size = 2
  config.log_every = 50
  config.eval_every = 2_000
  config.eval_batch_size = 1
  config.checkpoint_every = 2_000
  config.keep_checkpoints = 3
  return config
