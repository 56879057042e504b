r"""Tiny config for tests: a ResNet18 MA model with a small FCN head on 32x32 synthetic clips (seconds).

    python train.py --config=configs/test.py --workdir=/tmp/ma_test

Constant learning rate (lr = end_lr), so a run's first steps do not depend on num_steps: tests compare runs of
different lengths step by step. No evaluation unless asked (eval_every=-1).
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
  model.head_options = {'channels': 16, 'num_convs': 1, 'concat_input': False, 'in_stage': 'stage1'}
  model.pcma.stages = ('stage1',)
  model.pcma.memory_length = 2
  model.pcma.warmup = 'partial'

  data = config.data
  syn = data.synthetic
  syn.height, syn.width = 32, 32
  syn.frames_per_sequence = 4
  syn.reveal_period = 2
  syn.num_train_sequences = 16
  syn.num_val_sequences = 3
  syn.num_test_sequences = 2
  data.crop_size = (32, 32)
  data.clip_length = 2
  data.clip_start_stride = 2
  data.read_threads = 1
  data.prefetch_buffer_size = 2

  config.optimizer.lr = 0.01
  config.optimizer.end_lr = 0.01
  config.num_steps = 6
  config.batch_size = 4
  config.log_every = 1
  config.eval_every = -1
  config.eval_batch_size = 2
  config.checkpoint_every = 2
  config.keep_checkpoints = 20
  return config
