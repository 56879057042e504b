r"""LERNet + THA on Cityscapes (paper 004 §4.2), in two stages chained with init_from.

    python train.py --config=configs/lernet_cityscapes.py:frame --workdir=runs/lernet_cs \
        --config.data.root=/data/cityscapes                          # 1. LERNet, per frame
    python train.py --config=configs/lernet_cityscapes.py:tha --workdir=runs/lernet_tha_cs \
        --config.data.root=/data/cityscapes --config.init_from=runs/lernet_cs   # 2. THA on (key, later) pairs
    python eval.py --workdir=runs/lernet_tha_cs                      # streams the val snippets, K = 5

Stage 1 (`frame`), from scratch as in the paper (LERNet is pre-trained on Cityscapes itself, not on ImageNet;
configs/lernet_camvid.py starts from this run): LERNet with its decoder (1x1 conv, x8 bilinear upsampling) on
single labelled frames at 512x1024 (the 2048x1024 frames at half size), SGD momentum 0.9, weight decay 1e-4,
lr 5e-4, poly (power 0.9), batch 12, flips, colour jitter (the paper's random translation by 0-2 pixels is not
implemented).
Stage 2 (`tha`): THA with one key frame in K = 5; training pairs (key frame, the labelled frame g = 1..4
frames later) from the 30-frame snippets (`data.pair_gaps`, `data.labelled_last`); THA at lr 3e-3, the
backbone and decoder at 2e-6 (`optimizer.lr_multipliers`), the rest as stage 1.

Evaluation: whole 512x1024 frames (eval_mode 'whole', no flip, one scale: the paper's input size; logits
resized to the native 1024x2048 labels, as the paper upsamples its predictions), val snippets streamed, K = 5.

What the paper leaves open or the data here lacks (docs/systems.md lists them too):
- The paper pre-trains LERNet also on pseudo labels of the sequence frames (from another model) and trains THA
  on pseudo-labelled pairs: no such labels exist here, so stage 1 uses the labelled frames and stage 2 the pairs
  that end on a labelled frame (4 per snippet).
- Epochs / iterations are not given: 90 000 iterations of batch 12 here (stage 2: 30 000).
- LERNet's open details (branch width, biases, dropout, the P_l / P_h split) are `model.lernet.*` options;
  the defaults are the literal reading of Table 1 (see backbones/lernet.py).
"""
from ma_resnet.data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from ma_resnet.models.build import lernet_tha
from ma_resnet.train_config import base_config

KEY_INTERVAL = 5


def get_config(stage: str = 'frame'):
  if stage not in ('frame', 'tha'):
    raise ValueError(f"configs/lernet_cityscapes.py takes the stage 'frame' or 'tha' (…py:frame), got {stage!r}")
  config = base_config('cityscapes')
  lernet_tha(config.model, tha=stage == 'tha', key_interval=KEY_INTERVAL)
  data = config.data
  data.crop_size = (512, 1024)
  data.scale_range = (0.5, 0.5)       # 2048x1024 -> 1024x512: the paper's input size
  data.eval_size = (512, 1024)
  data.eval_native_labels = True
  data.flip, data.jitter = True, 0.1
  data.mean, data.std = IMAGENET_MEAN, IMAGENET_STD
  data.worker_count = 2
  opt = config.optimizer
  opt.update(name='sgd', momentum=0.9, weight_decay=1e-4, power=0.9, end_lr=0.0, warmup=0)
  if stage == 'frame':
    data.cityscapes.frames_before, data.cityscapes.frames_after = 0, 0
    data.clip_length = 1
    opt.lr = 5e-4
    config.num_steps = 90_000
  else:
    data.cityscapes.frames_before, data.cityscapes.frames_after = KEY_INTERVAL - 1, 0
    data.clip_length = 2
    data.pair_gaps = tuple(range(1, KEY_INTERVAL))
    data.labelled_last = True
    opt.lr = 3e-3
    opt.lr_multipliers = {'backbone': 2e-6 / 3e-3, 'head': 2e-6 / 3e-3}
    config.num_steps = 30_000
  config.batch_size = 12
  config.log_every = 50
  config.eval_every = 5_000
  config.checkpoint_every = 1_000
  config.keep_checkpoints = 3
  return config
