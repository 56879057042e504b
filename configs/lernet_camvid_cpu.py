r"""LERNet per frame, then LERNet + THA (K = 5), on CamVid from scratch on a 2-core CPU (about 40 minutes).

    python train.py --config=configs/lernet_camvid_cpu.py:frame --workdir=workdirs/lernet_camvid_cpu
    python train.py --config=configs/lernet_camvid_cpu.py:tha --workdir=workdirs/lernet_tha_camvid_cpu \
        --config.init_from=workdirs/lernet_camvid_cpu
    python eval.py --workdir=workdirs/lernet_camvid_cpu --checkpoint=latest
    python eval.py --workdir=workdirs/lernet_tha_camvid_cpu --checkpoint=latest

Like `configs/camvid_cpu.py`, at a third of the resolution (LERNet's depthwise convolutions are slow to train on
a 2-core x86 CPU: 120x160 crops of frames scaled 0.3-0.4, evaluation on 120x160 frames with the logits scored on the
360x480 labels), flips, colour jitter, sqrt median-frequency class balancing, SGD momentum 0.9 with warm-up and
poly decay, weight decay 1e-4 on kernels; from scratch (no Cityscapes pre-training here), so the learning
rates are the CPU recipe's (0.05), not the paper's 5e-4.
Stage 2: pairs (key frame, the labelled frame 1-4 frames later), THA at 0.05, LERNet at a hundredth of it (the
paper's 2e-6 / 3e-3 presumes a converged backbone). The key frame is 1-4 video frames back when
`python -m ma_resnet.data.prepare camvid` has written `<root>/video_frames` (`data.camvid.video_frames='auto'`, as
`configs/lernet_camvid.py`), else 1-4 labelled frames back (1-4 s in train); the console says which.
"""
from ma_resnet.models.build import lernet_tha
from ma_resnet.train_config import base_config

KEY_INTERVAL = 5


def get_config(stage: str = 'frame'):
  if stage not in ('frame', 'tha'):
    raise ValueError(f"configs/lernet_camvid_cpu.py takes the stage 'frame' or 'tha' (…py:frame), got {stage!r}")
  config = base_config('camvid')
  lernet_tha(config.model, tha=stage == 'tha', key_interval=KEY_INTERVAL)
  data = config.data
  data.crop_size = (120, 160)
  data.scale_range = (0.3, 0.4)
  data.eval_size = (120, 160)
  data.eval_native_labels = True
  data.flip, data.jitter = True, 0.1
  data.worker_count = 0
  data.labelled_last = True
  data.camvid.video_frames = 'auto'
  opt = config.optimizer
  opt.update(lr=0.05, end_lr=0.0, warmup=100, weight_decay=1e-4, weight_decay_on='kernels')
  config.class_balance = 0.5
  if stage == 'frame':
    data.clip_length = 1
    config.num_steps = 1200
    config.batch_size = 4
  else:
    data.clip_length = 2
    data.pair_gaps = tuple(range(1, KEY_INTERVAL))
    opt.warmup = 20
    opt.lr_multipliers = {'backbone': 0.01, 'head': 0.01}
    config.num_steps = 400
    config.batch_size = 4
  config.log_every = 20
  config.eval_every = 400
  config.eval_batch_size = 1
  config.checkpoint_every = 100
  config.keep_checkpoints = 2
  return config
