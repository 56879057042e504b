r"""CamVid from scratch on a 2-core CPU in under 60 minutes: MA-ResNet18 + slim DeepLabV3+ at half resolution.

    python train.py --config=configs/camvid_cpu.py --workdir=workdirs/camvid_cpu_ma
    python train.py --config=configs/camvid_cpu.py --workdir=workdirs/camvid_cpu_plain --config.model.temporal=plain
    python train.py --config=configs/camvid_cpu.py --workdir=workdirs/camvid_cpu_tma --config.model.temporal=tma
    python eval.py --workdir=workdirs/camvid_cpu_ma --checkpoint=latest --overlays=5 --overlay_stride=25

Stop it at any time (Ctrl-C, kill) and run the same command again: it resumes from the last checkpoint
(every 100 steps, about 5 minutes of work) with the same data order, so the pieces add up to one run and the
total stays within the budget (each restart costs ~1 minute of start-up and compilation).

The budget is everything train.py does on a 2-core x86 CPU: start-up, compilation, 1050 SGD
steps, validation at steps 350, 700 and 1050, checkpoints. The config starts from scratch (no ImageNet weights), so everything
is learned and the budget buys about a thousand steps; every choice below trades detail or
capacity for steps. Figures are training-step times on that CPU, from `python benchmarks/train_step.py
--config=configs/camvid_cpu.py --set batch_size=2 --set data.crop_size="(240, 320)" --set model.temporal="'plain'"
--set model.head_options="{...}"` (the head options compared are given below):
- ResNet18 (torchvision stem), output stride 32: the paper's ResNet50-vd at output stride 8 takes 168 s per
  step of 2 clips at 360x480 here (20 steps an hour).
- DeepLabV3+ with 96 channels instead of 256 (`head_options.channels`): its decoder runs at stride 4, where
  the 256-channel separable blocks cost more than the whole ResNet18. Training step per 240x320 frame:
  1.33 s with {'aspp_rates': (1, 3, 6, 9)} (256 channels), 0.50 s with 'channels': 96 added, 0.39 s with
  no decoder at all (model.head="'fcn'", {'channels': 64, 'num_convs': 1, 'concat_input': False,
  'in_stage': 'stage4'}). ASPP rates (1, 2, 4, 6) for the 6x8 stride-32 map (the paper's 12/24/36 are for
  45x60 maps at output stride 8 and would see only padding).
- Half resolution: frames scaled by 0.45-0.65 (about 180x240), random 176x240 crops, flips, colour jitter.
  Evaluation feeds 180x240 frames and scores the logits resized (bilinear) to the original 360x480 labels
  (`data.eval_native_labels`), so the reported mIoU is the usual one on the full-resolution annotation.
- Clips of 2 labelled frames (1 s apart in CamVid train), a memory of one frame (T = 1, as the authors'
  code), r = 0.25, PCMA on stages 1 and 4: the two maps DeepLabV3+ reads. With the code's stages 1-3, PCMA
  on stages 2-3 would cost time and change no prediction (the enhanced maps go only to the head).
- The loss counts both frames of each clip (`loss_on_warmup_frames`), so the plain model sees exactly the
  same labelled pixels; `--config.model.temporal=plain` is the only difference between the two runs.
- Batch 4 clips (8 frames in every batch norm), SGD momentum 0.9, lr 0.05 after 100 warm-up steps, poly
  decay to 0, weight decay 1e-4 on conv kernels.
- Class balancing (`class_balance` 0.5: weights (median frequency / frequency)^0.5, from 0.38 for road to
  3.9 for bicyclist): poles, signs, pedestrians and bicyclists are a few percent of the pixels but weigh as
  much as road in the mIoU.
Measured on a 2-core x86 CPU (docs/results.md, "CamVid from scratch"): MA 50 min 30 s in two pieces, 2.82 s/step, val mIoU
52.80%; plain 49 min 19 s, 2.78 s/step, 52.65%.
"""
from ma_resnet.train_config import base_config


def get_config():
  config = base_config('camvid')
  model = config.model
  model.temporal = 'pcma'
  model.depth = 18
  model.variant = 'torchvision'
  model.output_stride = 32
  model.multi_grid = None
  model.head = 'deeplabv3plus'
  model.head_options = {'aspp_rates': (1, 2, 4, 6), 'channels': 96}
  pcma = model.pcma
  pcma.stages = ('stage1', 'stage4')
  pcma.ratio = 0.25
  pcma.memory_length = 1
  # --config.model.temporal=tma: TMANet's memory attention on stage 4 (the high-level map DeepLabV3+ reads;
  # its 96-channel bottleneck replaces it), a memory of one frame, narrow encoders.
  model.tma.update(stage='stage4', memory_length=1, key_channels=32, value_channels=96, channels=96)

  data = config.data
  data.clip_length = 2
  data.crop_size = (176, 240)
  data.scale_range = (0.45, 0.65)
  data.eval_size = (180, 240)
  data.eval_native_labels = True
  data.flip = True
  data.jitter = 0.1
  data.worker_count = 0

  opt = config.optimizer
  opt.lr = 0.05
  opt.end_lr = 0.0
  opt.weight_decay = 1e-4
  opt.weight_decay_on = 'kernels'
  opt.warmup = 100

  config.class_balance = 0.5
  config.num_steps = 1050
  config.batch_size = 4
  config.log_every = 20
  config.eval_every = 350
  config.eval_batch_size = 1
  config.checkpoint_every = 100
  config.keep_checkpoints = 2
  return config
