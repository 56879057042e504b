r"""STF + MAR (paper 003) on the synthetic video: the authors' staged recipe, small enough for a 2-core CPU.

    python train.py --config=configs/stf_synthetic.py:pspnet --workdir=/tmp/stf_syn_pspnet
    python train.py --config=configs/stf_synthetic.py:stf --workdir=/tmp/stf_syn_stf \
        --config.init_from=/tmp/stf_syn_pspnet
    python -m ma_resnet.mar_memory --workdir=/tmp/stf_syn_stf --out=/tmp/stf_syn_memory
    python train.py --config=configs/stf_synthetic.py:mar --workdir=/tmp/stf_syn_mar \
        --config.init_from=/tmp/stf_syn_stf --config.model.stf.memory_init=/tmp/stf_syn_memory
    python eval.py --workdir=/tmp/stf_syn_stf

Stages (`get_config(stage)`, `--config=configs/stf_synthetic.py:<stage>`; default 'stf'):
  pspnet  the per-frame PSPNet (the plain baseline and STF's feature extractor): backbone 'pspnet', no temporal
          module, the classifier on 'psp'; every frame on its own (clips of 1).
  stf     STF + a new classifier on the frozen extractor (`model.frozen=('backbone',)`: eval mode, no gradient,
          never updated): clips of 3 frames t-1, t, t+1, the loss on the middle one (the only frame whose
          neighbours are both in the clip: `loss_on_warmup_frames=False` counts frames STF enhanced), AdamW
          with weight decay 1e-4 and gradient clipping 0.1 as the authors; the classifier starts anew
          (`init_from_exclude=('head',)`: the authors drop conv_seg).
  mar     MAR + a new classifier with STF fixed (`model.stf.freeze_stf`: eval mode, no gradient;
          `optimizer.frozen=('temporal/stf',)`), the memory from `python -m ma_resnet.mar_memory` on the stf run
          (`model.stf.memory_init`, default /tmp/stf_syn_memory, the --out above).

Model: ResNet18 (torchvision stem) with the PSP bottleneck (64 channels, bins 1, 2, 3, 6) on stage 2, stride 8
at any output stride, so stages 3-4 are never built: 128x128 frames give 16x16 features, one 16x16 ICSA block
(the authors' block size), embeddings stored at 16x16 (no resize). STF: d = 64, 2 heads, FFN 32, one encoder
and one decoder layer; MAR: K_L = 10 rows per class, width 32.

Data: squares that show their class colour only on reveal frames (every 2nd frame) and are grey otherwise
(`data.synthetic`): a per-frame model cannot tell the classes apart on grey frames (val mIoU at most about
0.6), while STF sees a reveal frame among t-1, t+1 of every grey frame. 4 object classes, 2 large objects,
8-frame sequences, 128x128.

Differences from the authors' recipe (Cityscapes: configs/stf_cityscapes.py): AdamW at lr 1e-3, not 1e-5
(STF trains from scratch in a few hundred steps here, the authors' 50 epochs are 37 000 steps); a tiny
extractor; the per-frame stage trains with SGD at a constant-then-poly lr of the synthetic configs.
"""
from ma_resnet.train_config import base_config

STAGES = ('pspnet', 'stf', 'mar')
SIZE = 128


def get_config(stage: str = 'stf'):
  if stage not in STAGES:
    raise ValueError(f'configs/stf_synthetic.py: stage must be one of {STAGES}, got {stage!r}')
  config = base_config('synthetic')

  model = config.model
  model.update(temporal='stf' if stage != 'pspnet' else 'plain', backbone='pspnet', depth=18, variant='torchvision',
               output_stride=8, multi_grid=None, contract_dilation=False, head='classifier', aux_head='',
               align_corners=False)
  model.head_options = {'in_stage': 'psp', 'dropout': 0.1}
  model.pspnet.update(stage='stage2', channels=64, pool_scales=(1, 2, 3, 6))
  model.stf.update(stage='psp', heads=2, layers=1, ffn_channels=32, block_size=(16, 16),
                   embedding_size=(SIZE // 8, SIZE // 8), dropout=0.1, edge='repeat', mar=stage == 'mar',
                   freeze_stf=stage == 'mar', memory_per_class=10, mar_channels=0,
                   memory_init='/tmp/stf_syn_memory' if stage == 'mar' else '')

  data = config.data
  syn = data.synthetic
  syn.height = syn.width = SIZE
  syn.frames_per_sequence = 8
  syn.reveal_period = 2
  syn.num_object_classes = 4
  syn.num_objects = 2
  syn.min_size, syn.max_size = 0.35, 0.55
  syn.max_speed = 4.0
  data.crop_size = (SIZE, SIZE)
  data.read_threads = 2

  opt = config.optimizer
  if stage == 'pspnet':
    data.clip_length = 1
    data.clip_start_stride = 1
    opt.update(name='sgd', lr=0.05, end_lr=0.0005, power=0.9, momentum=0.9, weight_decay=1e-4, warmup=20)
    config.num_steps = 300
    config.batch_size = 16
  else:
    model.frozen = ('backbone',)
    data.clip_length = 3
    data.clip_start_stride = 1
    config.loss_on_warmup_frames = False  # the middle frame: both neighbours in the clip
    opt.update(name='adamw', lr=1e-3, end_lr=1e-3, weight_decay=1e-4, weight_decay_on='all', warmup=0,
               grad_clip_norm=0.1, b1=0.9, b2=0.999, eps=1e-8)
    if stage == 'mar':
      opt.frozen = ('temporal/stf',)
    config.init_from_exclude = ('head',)
    config.num_steps = 200 if stage == 'stf' else 100
    config.batch_size = 8
  config.log_every = 20
  config.eval_every = 0
  config.eval_batch_size = 16
  config.checkpoint_every = 100
  config.keep_checkpoints = 1
  return config
