r"""STF + MAR on Cityscapes, the authors' staged recipe (`jfzhuang/ST_Memory`, PSPNet-50), through train.py.

    # 1. the per-frame PSPNet R50-D8 (mmseg's pspnet_r50-d8, 80k iterations), from ImageNet ResNetV1c-50
    python train.py --config=configs/stf_cityscapes.py:pspnet --workdir=runs/stf_cityscapes_pspnet \
        --config.data.root=/data/cityscapes
    # 2. STF + a new classifier on the frozen PSPNet
    python train.py --config=configs/stf_cityscapes.py:stf --workdir=runs/stf_cityscapes_stf \
        --config.data.root=/data/cityscapes --config.init_from=runs/stf_cityscapes_pspnet
    # 3. MAR's memory from the STF model on the training split (full resolution)
    python -m ma_resnet.mar_memory --workdir=runs/stf_cityscapes_stf --out=runs/stf_cityscapes_memory
    # 4. MAR + a new classifier with STF fixed, the memory as initial values
    python train.py --config=configs/stf_cityscapes.py:mar --workdir=runs/stf_cityscapes_mar \
        --config.data.root=/data/cityscapes --config.init_from=runs/stf_cityscapes_stf \
        --config.model.stf.memory_init=runs/stf_cityscapes_memory
    python eval.py --workdir=runs/stf_cityscapes_mar

Stages (`--config=configs/stf_cityscapes.py:<stage>`; default 'stf'):
  pspnet  mmseg's PSPNet R50-D8 (`models.build.pspnet_r50_d8`): ResNetV1c-50 (deep stem, contract_dilation,
          output stride 8), PSP bottleneck 512 on stage 4 (the 'pspnet' backbone's map 'psp'), Dropout2d 0.1 +
          conv_seg (the classifier head on 'psp'), auxiliary FCN on stage 3 (weight 0.4); mmseg's schedule_80k
          (SGD 0.01, momentum 0.9, weight decay 5e-4, poly to 1e-4), 512x1024 crops of frames scaled 0.5-2.0,
          flips, batch 8 (2 per GPU x 4), single labelled frames (the 20th of each snippet). Initialisation:
          mmcv's ImageNet ResNetV1c-50 as the authors (`init_from='mmcv_resnet50_v1c'`, a catalogue entry fetched
          and converted on first use, docs/weights.md; the PSP module starts from its initialisers);
          `--config.init_from=''` trains from scratch.
  stf     `models.build.stf_pspnet50` without MAR: the extractor frozen (`model.frozen=('backbone',)`: eval mode,
          no gradient, never updated; the authors' `torch.no_grad()` + `pspnet.eval()`), STF and a new classifier
          (the authors delete conv_seg: `init_from_exclude=('head',)`) trained with AdamW lr 1e-5 (constant: the
          script has no schedule), weight decay 1e-4 on every parameter, gradient clipping to norm 0.1, batch 4,
          50 epochs of the 2975 training snippets (37 200 steps), validation every 2 epochs. Frames 18, 19, 20
          of each snippet (`data.cityscapes.frames_before = frames_after = 1`, clips of 3 = one snippet): the
          labelled 19th (0-based; the 20th frame) with its two neighbours, resized to 768x1536 (scale 0.75 of
          1024x2048, the crop is the whole frame), flipped at random, no photometric change.
  mar     `stf_pspnet50` with MAR: STF fixed (`model.stf.freeze_stf`: eval mode, no gradient;
          `optimizer.frozen=('temporal/stf',)`), MAR and a new classifier trained; the memory starts from
          `model.stf.memory_init` (default runs/stf_cityscapes_memory, the --out of step 3; training refuses to
          start without it). The authors do not release this stage's training script: the optimizer and
          schedule are the STF stage's (an assumption).
The stf and mar stages start from the previous stage's run (`--config.init_from=RUN`, required: they freeze modules
that must come from it; the run must be finished and trained on the same dataset).
Evaluation: whole 1024x2048 frames (eval_mode 'whole', no flip, one scale: the authors' test script feeds the
full frames; features 128x256, the embeddings' stored size), each snippet streamed as
3 frames: the labelled frame's output uses its real neighbours (the model is non-causal, one frame of delay:
the evaluator pairs each output with its frame and flushes the last one).

Differences from the authors' code: the classifier used for STF-only and full-model logits is one module per
stage, as theirs (each stage retrains it); batch-norm statistics of the frozen extractor are its running ones
(the authors' `pspnet.eval()`), dropout in STF / MAR as theirs (0.1). The per-frame PSPNet's
`psp50_trained.pth` is not released; stage 1 here is mmseg's config, which they say they used.
"""
from ma_resnet.data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from ma_resnet.models.build import pspnet_r50_d8, stf_pspnet50
from ma_resnet.train_config import base_config, mmseg_schedule, stf_mar_stage

STAGES = ('pspnet', 'stf', 'mar')
TRAIN_SNIPPETS, EPOCHS, BATCH = 2975, 50, 4


def get_config(stage: str = 'stf'):
  if stage not in STAGES:
    raise ValueError(f'configs/stf_cityscapes.py: stage must be one of {STAGES}, got {stage!r}')
  config = base_config('cityscapes')
  data = config.data
  data.mean, data.std = IMAGENET_MEAN, IMAGENET_STD
  data.eval_size = None
  data.worker_count = 2
  config.eval_batch_size = 1
  config.keep_checkpoints = 3
  config.log_every = 50
  if stage == 'pspnet':
    config.init_from = 'mmcv_resnet50_v1c'  # the authors' ImageNet ResNetV1c-50 (docs/weights.md)
    pspnet_r50_d8(config.model)
    config.aux_loss_weight = 0.4
    mmseg_schedule(config, num_steps=80_000)
    data.cityscapes.frames_before = 0
    data.cityscapes.frames_after = 0
    data.clip_length = 1
    data.clip_start_stride = 1
    data.crop_size = (512, 1024)
    data.scale_range = (0.5, 2.0)
    data.flip = True
    data.jitter = 0.1
    config.batch_size = 8
    config.eval_every = 8_000
    config.checkpoint_every = 1_000
    return config

  stf_pspnet50(config.model, mar=stage == 'mar')
  stf_mar_stage(config, stage, memory_init='runs/stf_cityscapes_memory')
  data.cityscapes.frames_before = 1
  data.cityscapes.frames_after = 1
  data.clip_length = 3
  data.clip_start_stride = 3
  data.crop_size = (768, 1536)
  data.scale_range = (0.75, 0.75)
  data.flip = True
  data.jitter = 0.0
  config.batch_size = BATCH
  steps_per_epoch = TRAIN_SNIPPETS // BATCH
  config.num_steps = EPOCHS * steps_per_epoch
  config.eval_every = 2 * steps_per_epoch
  config.checkpoint_every = steps_per_epoch
  return config
