r"""VSPW "Person" (the paper's video object segmentation task, §4.1-4.2): MA-ResNet50-vd + DeepLabV3+, 640x640.

    python train.py --config=configs/vspw.py --workdir=runs/vspw_ma --config.data.root=/data/VSPW_480p
    python eval.py --workdir=runs/vspw_ma

The paper keeps only VSPW's most frequent class, Person, as the target (2 classes: background / person), resizes
frames to 640x640 and trains 120 000 iterations of batch 2 with the CamVid recipe (SGD momentum 0.9, weight
decay 4e-5, poly lr 0.1 -> 0.001). Memory of T = 2 frames (the paper's best T on VSPW, Table 2), so a clip is
3 consecutive frames. For the 124-class semantic task: --config.data.vspw_mode=semantic.

Initialisation: PaddleSeg's ResNet50_vd SSLD v2, as on CamVid (`init_from='paddleseg_resnet50_vd_ssld_v2'`, a
catalogue entry fetched and converted on first use, docs/weights.md); `--config.init_from=''`: from scratch.

Resizing: VSPW_480p frames are 480 pixels high with varying widths; training scales them by 4/3 (to 640 high)
and takes a random 640x640 crop; evaluation resizes every frame to 640x640 (eval_size), as the paper states,
and scores whole frames (eval_mode 'whole', no flip, one scale: the authors' `infer_vspw.py`).
"""
from ma_resnet.train_config import base_config


def get_config():
  config = base_config('vspw')
  config.init_from = 'paddleseg_resnet50_vd_ssld_v2'  # the authors' ImageNet ResNet50-vd (docs/weights.md)

  config.model.pcma.memory_length = 2

  data = config.data
  data.vspw_mode = 'person'
  data.clip_length = config.model.pcma.get_ref('memory_length') + 1  # follows --config.model.pcma.memory_length
  data.crop_size = (640, 640)
  data.scale_range = (4 / 3, 4 / 3)
  data.eval_size = (640, 640)
  data.flip = True
  data.jitter = 0.0
  data.worker_count = 2

  opt = config.optimizer
  opt.lr = 0.1
  opt.end_lr = 0.001
  opt.power = 0.9
  opt.momentum = 0.9
  opt.weight_decay = 4e-5

  config.num_steps = 120_000
  config.batch_size = 2
  config.log_every = 50
  config.eval_every = 5_000
  config.eval_batch_size = 4
  config.checkpoint_every = 5_000
  config.keep_checkpoints = 3
  return config
