r"""LERNet + THA on CamVid at 360x480 (paper 004 §4.2), in two stages chained with init_from.

    python train.py --config=configs/lernet_camvid.py:frame --workdir=runs/lernet_camvid   # 1. LERNet per frame
    python train.py --config=configs/lernet_camvid.py:tha --workdir=runs/lernet_tha_camvid \
        --config.init_from=runs/lernet_camvid                          # 2. THA, K = 5
    python eval.py --workdir=runs/lernet_tha_camvid

The paper reuses the LERNet pre-trained on Cityscapes (not on ImageNet, §4.2), so stage 1 starts from the run of
configs/lernet_cityscapes.py:frame (`init_from='runs/lernet_cs'`, the workdir of that config's command; its
19-class decoder is not taken, `init_from_exclude=('head',)`; `--config.init_from=''` trains from scratch).
It trains on CamVid train + val at 360x480 (its sequences are not continuous across splits); SGD momentum 0.9,
weight decay 1e-4, lr 5e-4 (LERNet) / 3e-3 (THA, backbone 2e-6), poly 0.9, batch 12, flips, colour jitter (its
random translation by 0-2 pixels is not implemented here).

Evaluation: whole 360x480 frames (eval_mode 'whole', no flip, one scale: "360x480 during training, validating
and testing"); the paper reports CamVid test (pixel accuracy 67.9 with THA): --split=test where test/ exists.

Key frames in video frames. The paper's pairs (key frame, frame g later), g = 1..4, and its K = 5 count frames of
the 30 fps video. `data.camvid.video_frames='auto'` reads them from `<root>/video_frames`, written once by
`python -m ma_resnet.data.prepare camvid --videos DIR --camvid-root ROOT` (the 4 video frames before every labelled
frame; docs/data.md): a pair (labelled frame n - g, n) is then g video frames (g/30 s) long, and evaluation streams
the val video frames with a key frame every 5 of them (only the labelled frames scored). The console says which
frames are used. Without the prepared folder only the labelled frames exist (train: 1 per second, val: 15 per
second), and a pair spans g labelled frames (g seconds in train). `labelled_last` keeps the clips that end on a
labelled frame (all of them without video frames). Training uses train only (val is kept for evaluation; add it
with --config.data.split=... after merging the folders). Epochs are not given: 20 000 iterations per stage here.
"""
from ma_resnet.models.build import lernet_tha
from ma_resnet.train_config import base_config

KEY_INTERVAL = 5
CITYSCAPES_RUN = 'runs/lernet_cs'  # the --workdir of configs/lernet_cityscapes.py:frame's command


def get_config(stage: str = 'frame'):
  if stage not in ('frame', 'tha'):
    raise ValueError(f"configs/lernet_camvid.py takes the stage 'frame' or 'tha' (…py:frame), got {stage!r}")
  config = base_config('camvid')
  lernet_tha(config.model, tha=stage == 'tha', key_interval=KEY_INTERVAL)
  data = config.data
  data.crop_size = (360, 480)
  data.scale_range = (1.0, 1.0)
  data.flip, data.jitter = True, 0.1
  data.worker_count = 2
  data.labelled_last = True
  data.camvid.video_frames = 'auto'  # the 30 fps frames before each labelled one, when prepared
  opt = config.optimizer
  opt.update(name='sgd', momentum=0.9, weight_decay=1e-4, power=0.9, end_lr=0.0, warmup=0)
  if stage == 'frame':
    config.init_from = CITYSCAPES_RUN  # the paper: the LERNet pre-trained on Cityscapes
    config.init_from_exclude = ('head',)  # 19 Cityscapes classes -> 11 CamVid classes
    data.clip_length = 1
    opt.lr = 5e-4
  else:
    data.clip_length = 2
    data.pair_gaps = tuple(range(1, KEY_INTERVAL))
    opt.lr = 3e-3
    opt.lr_multipliers = {'backbone': 2e-6 / 3e-3, 'head': 2e-6 / 3e-3}
  config.num_steps = 20_000
  config.batch_size = 12
  config.log_every = 50
  config.eval_every = 2_000
  config.checkpoint_every = 1_000
  config.keep_checkpoints = 3
  return config
