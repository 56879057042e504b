"""train.py as a command: kill -9 and resume, and the failures that must leave the workdir untouched."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest

import test_training_support as support
from ma_resnet import cli


def _committed_steps(workdir: str) -> list[int]:
  folder = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(folder):
    return []
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def test_kill_during_training_then_resume_matches_an_uninterrupted_run():
  # The killed run is longer than the reference (constant lr: its first steps are the reference's), so that
  # the kill lands well before its end; it is killed once a checkpoint exists and before step `last`.
  reference = support.reference_run()
  last = support.REFERENCE_STEPS
  workdir = os.path.join(support.session_dir(), 'killed')
  command = support.train_command(workdir, f'--config.num_steps={2 * last}')
  process = subprocess.Popen(command, cwd=support.REPO, env=support.subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 400
    while time.time() < deadline and process.poll() is None:
      if _committed_steps(workdir):
        os.kill(process.pid, signal.SIGKILL)
        break
      time.sleep(0.01)
    process.wait(timeout=60)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == -signal.SIGKILL, f'the run was not killed mid-way (rc {process.returncode})'
  resume_step = _committed_steps(workdir)[-1]
  assert resume_step < last, f'killed too late (checkpoint {resume_step}); nothing left to compare'

  result = subprocess.run(command, cwd=support.REPO, env=support.subprocess_env(), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  match = re.search(r'Resumed from \S+ \(step (\d+)\)', result.stderr)
  assert match and int(match.group(1)) == resume_step, result.stderr[-2000:]
  ref, got = support.read_metrics(reference), support.read_metrics(workdir)
  assert sorted(got) == list(range(1, 2 * last + 1))  # one record per step: the killed run's extra lines are gone
  for step in range(1, last + 1):
    assert got[step]['loss'] == ref[step]['loss'], (step, resume_step, got[step]['loss'], ref[step]['loss'])


def test_wrong_config_key_is_one_clear_error(tmp_path):
  workdir = tmp_path / 'run'
  result = support.run_train(str(workdir), '--config.nonexistent=1')
  assert result.returncode == cli.EXIT_USAGE
  assert "unknown config key 'nonexistent'" in result.stderr
  assert 'Traceback' not in result.stderr
  result = support.run_train(str(workdir), '--config.optimizer.lrr=1')
  assert result.returncode == cli.EXIT_USAGE
  assert "unknown config key 'optimizer.lrr'" in result.stderr and "Did you mean 'lr'" in result.stderr
  assert not workdir.exists()


def test_missing_dataset_folder_is_one_clear_error_and_the_workdir_is_untouched(tmp_path):
  missing = tmp_path / 'no_camvid_here'
  fresh = tmp_path / 'fresh'
  result = support.run_train(str(fresh), '--config.data.name=camvid', f'--config.data.root={missing}')
  assert result.returncode == cli.EXIT_DATA, result.stderr[-2000:]
  assert str(missing) in result.stderr and 'Traceback' not in result.stderr
  assert not fresh.exists()

  workdir = support.copy_workdir(support.reference_run(), 'missing_data')
  before = support.tree_digest(workdir)
  result = support.run_train(workdir, '--config.data.name=camvid', f'--config.data.root={missing}')
  assert result.returncode == cli.EXIT_DATA
  assert support.tree_digest(workdir) == before


@pytest.mark.parametrize('override, named', [
    ('--config.model.depth=34', 'params/backbone/stage1/block2'),
    ('--config.model.temporal=plain', 'params/temporal'),
])
def test_checkpoint_of_another_architecture_is_refused_and_nothing_is_overwritten(override, named):
  workdir = support.copy_workdir(support.reference_run(), 'other_arch')
  before = support.tree_digest(workdir)
  result = support.run_train(workdir, override, f'--config.num_steps={support.REFERENCE_STEPS + 2}')
  assert result.returncode == cli.EXIT_CHECKPOINT, result.stderr[-3000:]
  assert 'does not match' in result.stderr and named in result.stderr
  assert 'Traceback' not in result.stderr
  assert support.tree_digest(workdir) == before


def test_nan_exit_code():
  from ma_resnet.training import NonFiniteLossError

  def diverge():
    raise NonFiniteLossError('loss is nan at step 3')
  with pytest.raises(SystemExit) as exit_info:
    cli.run_guarded(diverge)
  assert exit_info.value.code == cli.EXIT_DIVERGED


def test_progress_and_logs_are_written():
  reference = support.reference_run()
  names = os.listdir(reference)
  assert 'config.json' in names and 'metrics.jsonl' in names and 'train_result.json' in names
  assert any(n.startswith('events.out.tfevents') for n in names)
  records = support.read_metrics(reference)
  assert sorted(records) == list(range(1, support.REFERENCE_STEPS + 1))
  assert all(np.isfinite(r['loss']) and r['lr'] > 0 for r in records.values())
