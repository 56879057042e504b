r"""LERNet per frame, then LERNet + THA (one key frame in K = 5), on the synthetic video: minutes on a CPU.

    python train.py --config=configs/lernet_synthetic.py:frame --workdir=/tmp/syn_lernet
    python train.py --config=configs/lernet_synthetic.py:tha --workdir=/tmp/syn_lernet_tha \
        --config.init_from=/tmp/syn_lernet
    python eval.py --workdir=/tmp/syn_lernet_tha

The synthetic video shows the objects' class colours only on every other frame (`configs/synthetic.py`): a
per-frame model cannot tell the classes apart on grey frames (val mIoU <= 0.59). With THA a non-key frame
reuses the high-level features of the last key frame (gated by the attention of its low-level features), so
it can carry colours from a key frame that showed them, and loses them from one that did not: with K = 5 the
key frames of a sequence alternate between coloured (frames 0, 10, ...) and grey (5, 15, ...) ones.
Stage 2 trains THA on pairs (key frame, a frame 1-4 later) starting on coloured frames (as in stage 1's
clips), THA at lr 0.05 and LERNet at a hundredth of it (the paper's ratio is 1/1500: from scratch here).
"""
from ma_resnet.models.build import lernet_tha
from ma_resnet.train_config import base_config

KEY_INTERVAL = 5


def get_config(stage: str = 'frame'):
  if stage not in ('frame', 'tha'):
    raise ValueError(f"configs/lernet_synthetic.py takes the stage 'frame' or 'tha' (…py:frame), got {stage!r}")
  config = base_config('synthetic')
  lernet_tha(config.model, tha=stage == 'tha', key_interval=KEY_INTERVAL)
  data = config.data
  syn = data.synthetic
  syn.reveal_period = 2
  syn.num_object_classes = 4
  syn.num_objects = 2
  syn.min_size, syn.max_size = 0.35, 0.55
  syn.frames_per_sequence = 10
  data.clip_start_stride = 2
  opt = config.optimizer
  opt.update(lr=0.05, end_lr=0.0005, warmup=10, weight_decay=1e-4, weight_decay_on='kernels')
  if stage == 'frame':
    data.clip_length = 1
    config.num_steps = 600
    config.batch_size = 8
  else:
    data.clip_length = 2
    data.pair_gaps = tuple(range(1, KEY_INTERVAL))
    opt.lr_multipliers = {'backbone': 0.01, 'head': 0.01}
    config.num_steps = 400
    config.batch_size = 8
  config.log_every = 20
  config.eval_every = 200
  config.eval_batch_size = 16
  config.checkpoint_every = 200
  config.keep_checkpoints = 2
  return config
