"""Regression tests for the faults a hostile battery found: each one failed before the fix.

| case | before | after |
| --- | --- | --- |
| re-running a finished run | exit 0, train_result.json replaced by {"eval_metrics": null} | exit 0, "is finished", every file kept |
| eval.py on a checkpoint of another architecture | scored as the config's model (exit 0) | exit 4 naming the differing parameters |
| config values outside their set, missing config file, eval --checkpoint=abc | traceback, exit 1 | one line, exit 2 |
| eval --split=nosuch on synthetic data | a made-up split evaluated | exit 3 naming the splits |
| a corrupt val frame | found at the first validation, after writing | exit 3 at start-up, nothing written |
| a failing resume (NaN) | config.json replaced by the failing config | config.json kept |
| a checkpoint write that fails (disk full) | noticed at the next save, ~300 tracebacks | stops at once, one line naming the path, no temporary left |
| a corrupt checkpoint / an unwritable workdir | traceback, exit 1 | one line, exit 4 |
| resuming with another batch_size | accepted silently | exit 2 unless --allow_new_batch_size |
"""
import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

import test_training_support as support
from fake_trees import write_camvid_tree
from ma_resnet import checkpoints, cli, loop
from ma_resnet import data as data_lib
from ma_resnet.errors import ConfigError


def _run(workdir, *flags, script='train.py'):
  return support.run_train(workdir, *flags, script=script)


def _one_line_error(result, code):
  assert result.returncode == code, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr and result.stderr.count('error: ') == 1, result.stderr[-3000:]


def test_rerunning_a_finished_run_keeps_every_file():
  workdir = support.copy_workdir(support.reference_run(), 'finished_again')
  with open(os.path.join(workdir, 'train_result.json'), 'w') as f:  # as if the last validation had run
    json.dump({'step': support.REFERENCE_STEPS, 'eval_metrics': {'miou': 0.5}, 'seconds': 1.0}, f)
  before = support.tree_digest(workdir)
  result = _run(workdir, f'--config.num_steps={support.REFERENCE_STEPS}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'is finished' in result.stderr and support.tree_digest(workdir) == before


def test_eval_checks_the_checkpoint_against_the_model_it_builds():
  workdir = support.copy_workdir(support.reference_run(), 'eval_other_arch')
  for step in os.listdir(os.path.join(workdir, 'checkpoints')):  # checkpoints without their stored config
    config_item = os.path.join(workdir, 'checkpoints', step, 'config')
    if os.path.isdir(config_item):
      import shutil
      shutil.rmtree(config_item)
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  config['model']['depth'] = 34
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config, f)
  result = _run(workdir, '--checkpoint=latest', script='eval.py')
  _one_line_error(result, cli.EXIT_CHECKPOINT)
  assert 'does not match' in result.stderr and 'params/backbone/stage1/block2' in result.stderr


@pytest.mark.parametrize('flags, code, text', [
    (('--config.model.depth=42',), cli.EXIT_USAGE, 'model.depth must be one of'),
    (('--config.model.output_stride=7',), cli.EXIT_USAGE, 'model.output_stride must be one of'),
    (("--config.model.pcma.stages=('stage5',)",), cli.EXIT_USAGE, 'stage5'),
    (('--config.data.name=foo',), cli.EXIT_USAGE, 'data.name must be one of'),
    (('--config=configs/nonexistent.py',), cli.EXIT_USAGE, 'nonexistent.py'),
    (('--config=configs',), cli.EXIT_USAGE, 'configs'),
], ids=['depth', 'output_stride', 'pcma_stage', 'data_name', 'missing_file', 'folder'])
def test_config_errors_are_one_line(tmp_path, flags, code, text):
  workdir = str(tmp_path / 'run')
  command = support.train_command(workdir, *flags)
  if any(f.startswith('--config=') for f in flags):  # replace the test config by the bad one
    command = [c for c in command if not c.startswith('--config=' + support.TEST_CONFIG)]
  import subprocess
  result = subprocess.run(command, cwd=support.REPO, env=support.subprocess_env(), capture_output=True, text=True,
                          timeout=300)
  _one_line_error(result, code)
  assert text in result.stderr and not os.path.exists(workdir)


@pytest.mark.parametrize('flags, code, text', [
    (('--checkpoint=abc',), cli.EXIT_USAGE, "--checkpoint must be 'best', 'latest' or a step number"),
    (('--split=nosuch',), cli.EXIT_DATA, "no split 'nosuch'"),
])
def test_eval_flag_errors_are_one_line(flags, code, text):
  workdir = support.copy_workdir(support.reference_run(), 'eval_flags')
  before = support.tree_digest(workdir)
  result = _run(workdir, *flags, script='eval.py')
  _one_line_error(result, code)
  assert text in result.stderr and support.tree_digest(workdir) == before


def test_a_corrupt_val_frame_is_refused_before_anything_is_written(tmp_path):
  root = tmp_path / 'camvid'
  write_camvid_tree(root, {'train': {'0001TP': ['006690', '006720', '006750']},
                           'val': {'0016E5': ['07959', '07961']}}, size=(32, 32))
  bad = root / 'val' / '0016E5_07961.png'
  bad.write_bytes(bad.read_bytes()[:60])  # truncated
  workdir = tmp_path / 'run'
  result = _run(str(workdir), '--config.data.name=camvid', f'--config.data.root={root}',
                '--config.data.crop_size=(32, 32)', '--config.data.clip_length=2')
  _one_line_error(result, cli.EXIT_DATA)
  assert str(bad) in result.stderr and 'nothing was written' in result.stderr and not workdir.exists()


def test_rgba_frames_and_short_sequences_are_reported_once_each(tmp_path):
  root = tmp_path / 'camvid'
  write_camvid_tree(root, {'train': {'0001TP': ['006690', '006720', '006750'], '0006R0': ['f00930']},
                           'val': {'0016E5': ['07959']}}, size=(16, 16))
  for name in ('0001TP_006690', '0001TP_006720'):
    path = root / 'train' / f'{name}.png'
    Image.open(path).convert('RGBA').save(path)
  config = support.load_test_config(**{'data.name': 'camvid', 'data.root': str(root)})
  notes = data_lib.validate_data(config.data, ['train', 'val'])
  assert len(notes) == 2
  assert notes[0].startswith('2 train frame(s) are RGBA images') and '0001TP_00669' in notes[0]
  assert notes[1].startswith('1 train sequence(s) have fewer than clip_length=2') and '0006R0' in notes[1]


def test_a_failing_resume_keeps_the_runs_config():
  workdir = support.copy_workdir(support.reference_run(), 'nan_resume')
  with open(os.path.join(workdir, 'config.json')) as f:
    before = f.read()
  result = _run(workdir, f'--config.num_steps={support.REFERENCE_STEPS + 4}', '--config.optimizer.lr=1e6',
                '--config.optimizer.end_lr=1e6')
  _one_line_error(result, cli.EXIT_DIVERGED)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == before


@pytest.mark.parametrize('where', ['save', 'background'])
def test_a_failed_checkpoint_write_stops_the_run_at_once(tmp_path, monkeypatch, where):
  workdir = str(tmp_path / 'run')
  config = support.load_test_config(**{'num_steps': 8, 'checkpoint_every': 2, 'log_every': 1})
  original = checkpoints.TrainCheckpoints.save

  def full_disk(self, step, *args, **kwargs):
    if step == 4:
      if where == 'save':
        self._pending_step = step
        os.makedirs(os.path.join(self.directory, '4.orbax-checkpoint-tmp-1'))  # what a write stopped midway leaves
        with self._writing():
          raise OSError(errno.ENOSPC, 'No space left on device')
      original(self, step, *args, **kwargs)
      self._manager.check_for_errors = lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, 'No space left'))
      return
    original(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoints.TrainCheckpoints, 'save', full_disk)
  with pytest.raises(checkpoints.CheckpointWriteError) as info:
    loop.train_and_evaluate(config, workdir, progress=False)
  message = str(info.value)
  assert os.path.join(workdir, 'checkpoints', '4') in message and 'No space left' in message
  assert os.path.join(workdir, 'checkpoints', '2') in message  # the previous one is kept
  records = support.read_metrics(workdir)
  assert max(records) <= 5  # stopped at once, not at the next save (step 6)
  assert not [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in n]  # no temporary left


def test_a_corrupt_checkpoint_and_an_unwritable_workdir_are_exit_4(tmp_path):
  workdir = support.copy_workdir(support.reference_run(), 'corrupt_ckpt')
  latest = os.path.join(workdir, 'checkpoints', str(support.REFERENCE_STEPS))
  for root, _, names in os.walk(os.path.join(latest, 'state')):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        f.truncate(max(os.path.getsize(path) // 3, 1))
  result = _run(workdir, f'--config.num_steps={support.REFERENCE_STEPS + 2}')
  _one_line_error(result, cli.EXIT_CHECKPOINT)
  assert latest in result.stderr
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a folder')
  result = _run(str(blocker / 'run'))
  _one_line_error(result, cli.EXIT_CHECKPOINT)


def test_resuming_with_another_batch_size_needs_a_flag():
  workdir = support.copy_workdir(support.reference_run(), 'batch_change')
  before = support.tree_digest(workdir)
  result = _run(workdir, f'--config.num_steps={support.REFERENCE_STEPS + 2}', '--config.batch_size=2')
  _one_line_error(result, cli.EXIT_USAGE)
  assert 'batch_size is 2' in result.stderr and support.tree_digest(workdir) == before
  result = _run(workdir, f'--config.num_steps={support.REFERENCE_STEPS + 2}', '--config.batch_size=2',
                '--allow_new_batch_size')
  assert result.returncode == 0, result.stderr[-3000:]


def test_an_internal_value_error_is_a_traceback_not_a_usage_error(tmp_path, monkeypatch):
  """A ValueError from inside the library (a bug) whose text says 'must be' is not the user's fault: it ends with
  its traceback (Python's exit 1), not with a one-line usage error (exit 2) as run_guarded did by matching the
  message. A config error is still exit 2, told apart by its type."""
  from ma_resnet.models.segmenter import VideoSegmenter

  def broken(self, batch_size, frame_size):
    raise ValueError('the shapes must be equal (a bug deep inside the model)')

  monkeypatch.setattr(VideoSegmenter, 'init_memory', broken)
  config = support.load_test_config()
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match='a bug deep inside'):
    cli.run_guarded(lambda: loop.train_and_evaluate(config, workdir, progress=False))
  config.model.depth = 42
  with pytest.raises(SystemExit) as stopped:
    cli.run_guarded(lambda: loop.train_and_evaluate(config, workdir, progress=False))
  assert stopped.value.code == cli.EXIT_USAGE


@pytest.mark.parametrize('eval_size, named', [((40, 40), 'data.eval_size 40x40'),
                                               (None, "native frame size of the 'val' split")])
def test_an_evaluation_size_stf_cannot_take_is_refused_at_start_up(tmp_path, eval_size, named):
  """STF needs whole ICSA blocks (here 3x3 features at stride 8: frames of multiples of 24). The training crops
  (48x48) fit, the evaluation frames (eval_size 40x40, or the native 32x32) do not: refused before anything is
  written, naming the size and the rule. Before, training started and crashed at the first validation."""
  config = support.load_test_config(**{
      'model.temporal': 'stf', 'model.backbone': 'pspnet', 'model.head': 'classifier',
      'model.head_options': {'in_stage': 'psp'}, 'model.pspnet.stage': 'stage2', 'model.pspnet.channels': 16,
      'model.stf.block_size': (3, 3), 'model.stf.embedding_size': (4, 4), 'model.stf.ffn_channels': 8,
      'data.crop_size': (48, 48), 'data.eval_size': eval_size, 'num_steps': 2, 'eval_every': 2})
  workdir = str(tmp_path / 'run')
  with pytest.raises(ConfigError, match=rf'{named}.*multiples of the 3x3 ICSA blocks') as error:
    loop.train_and_evaluate(config, workdir, progress=False)
  assert len(str(error.value).splitlines()) == 1 and not os.path.exists(workdir)

