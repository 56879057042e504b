r"""Synthetic video (the embedded default): an MA-ResNet18 learns to recall class colours it saw one frame ago.

    python train.py --config=configs/synthetic.py --workdir=/tmp/syn_ma
    python train.py --config=configs/synthetic.py --workdir=/tmp/syn_tma --config.model.temporal=tma
    python train.py --config=configs/synthetic.py --workdir=/tmp/syn_plain --config.model.temporal=plain
    python eval.py --workdir=/tmp/syn_ma --overlays=8

The data (`ma_resnet.data.synthetic`): squares moving over a dark background that show their class colour only
on reveal frames (every 2nd frame here) and are all the same grey otherwise, so on grey frames a per-frame model
cannot tell the classes apart: over the whole val split (half reveal, half grey frames, 4 object classes) a
per-frame model's mIoU is at most 0.59. With PCMA on stage 1 and a memory of the previous frame, a grey frame
reads the colours of the reveal frame before it.

Sized to finish in about 3-5 minutes on a 2-core CPU: 64x64 frames, ResNet18 at output stride 32, a small FCN
head on the (memory-enhanced) stride-4 stage-1 map, clips of 4 frames (reveal, grey, reveal, grey: grey frames
learn to use the memory, reveal frames learn not to be disturbed by a grey memory), 600 SGD steps of 4 clips.
Stages 2-4 of the ResNet cannot reach the loss with this head, so the model does not build them.
`--config.model.temporal=tma` swaps PCMA for TMANet's temporal memory attention on the same stage-1 map (its
bottleneck replaces the map the FCN head reads; memory of one frame, narrow encoders); `plain` has no memory.
Differences with the data module's defaults: reveal period 2 instead of 4 (one frame of memory suffices, so
memory_length is 1 and clips can be short), 4 object classes (lower per-frame bound), 2 larger objects
(stride-4 logits blur the edges of small squares).
"""
from ma_resnet.train_config import base_config


def get_config():
  config = base_config('synthetic')

  model = config.model
  model.temporal = 'pcma'
  model.depth = 18
  model.variant = 'torchvision'
  model.output_stride = 32
  model.multi_grid = None
  model.head = 'fcn'
  model.head_options = {'channels': 64, 'num_convs': 2, 'concat_input': False, 'in_stage': 'stage1'}
  pcma = model.pcma
  pcma.stages = ('stage1',)
  pcma.ratio = 0.5
  pcma.memory_length = 1
  pcma.warmup = 'partial'
  pcma.detach_memory = False  # gradients reach the stored keys/values (through the 4-frame clip)
  model.tma.update(stage='stage1', memory_length=1, key_channels=32, value_channels=64, channels=64)

  data = config.data
  syn = data.synthetic
  syn.reveal_period = 2
  syn.num_object_classes = 4
  syn.num_objects = 2
  syn.min_size, syn.max_size = 0.35, 0.55
  data.clip_length = 4
  data.clip_start_stride = 2  # every clip starts on a reveal frame

  opt = config.optimizer
  opt.lr = 0.1
  opt.end_lr = 0.001
  opt.warmup = 10

  config.num_steps = 600
  config.batch_size = 4
  config.log_every = 20
  config.eval_every = 200
  config.eval_batch_size = 16
  config.checkpoint_every = 200
  config.keep_checkpoints = 2
  return config
