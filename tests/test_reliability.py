"""Regression tests for the third round of bad-input and fault trials; each failed before its fix
(the MAR memory's truncated, pickled and integer files, refused before too, are checked beside the new cases).
Multi-process start-up failures are in tests/test_multihost.py; docs/reliability.md lists every fault tried.

| case | before | after |
| --- | --- | --- |
| a second train.py on a workdir in use | both ran, interleaving checkpoints | stops at once naming the holder, exit 4 |
| MAR memory file empty / NaN / .npz | traceback / accepted (exit 5 later) / traceback | one line naming it, exit 2 |
| python -m ma_resnet.mar_memory | orbax's WARNING lines on the console | its own lines only |
| a workdir path that is not UTF-8 | 934 lines of tracebacks, a temporary left | one line (exit 2), nothing created |
| eval.py while training deletes its checkpoint | "corrupt" | the newest one is read instead, or "removed" |
| eval.py's unknown flag | the closing quote lost | the flag as given |
| resuming with a smaller num_steps | "finished (step 16 of 4)" | "already has 16 steps, more than num_steps=4" |
| predict.py on a one-frame video | "nan frames/s" | the time of the one frame |
| predict.py --size that STF cannot take | exit 3 (data) | exit 2 (usage) |
| eval.py on a read-only workdir | exit 4 after evaluating, no results shown | the results, then what was not written |
| files written under umask 002 | 0600 / 0700 | 0664 / 0775, as the umask says |
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

import test_training_support as support
from ma_resnet import checkpoints, cli, files, loop, predict, runs
from ma_resnet.models.temporal.stf import load_memory
from ma_resnet.workdir_lock import LOCK_FILE, WorkdirInUseError, WorkdirLock


def _one_line_error(result, code):
  assert result.returncode == code, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr and result.stderr.count('error: ') == 1, result.stderr[-3000:]


# -- one run per workdir ---------------------------------------------------------------------------------------


def test_a_second_run_on_a_workdir_in_use_stops_at_once_naming_the_holder(tmp_path):
  workdir = str(tmp_path / 'run')
  holder = WorkdirLock.acquire(workdir)  # a running train.py (this process: its flock and owner line)
  try:
    with pytest.raises(WorkdirInUseError) as info:
      loop.train_and_evaluate(support.load_test_config(), workdir, progress=False)
    assert f'pid {os.getpid()} on host {socket.gethostname()}' in str(info.value)
    assert os.listdir(workdir) == [LOCK_FILE]  # nothing else was written
  finally:
    holder.release()
  assert not os.path.exists(workdir)  # released: the lock file and the folder it created are gone


def test_a_stale_lock_is_taken_over_and_one_of_another_host_is_not(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  lock_path = workdir / LOCK_FILE
  ended = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
  lock_path.write_text(json.dumps({'host': socket.gethostname(), 'pid': int(ended.stdout), 'started': 'then'}))
  WorkdirLock.acquire(str(workdir)).release()  # its owner is gone: taken over
  assert not lock_path.exists() and workdir.is_dir()  # an existing workdir is kept
  lock_path.write_text(json.dumps({'host': 'elsewhere.example', 'pid': 4242, 'started': 'then'}))
  with pytest.raises(WorkdirInUseError, match=rf'another host .*pid 4242 on host elsewhere.example.*delete '
                                              rf'{re.escape(str(lock_path))}'):
    WorkdirLock.acquire(str(workdir))
  assert json.loads(lock_path.read_text())['pid'] == 4242  # left for its owner


# -- MAR memory files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize('case', ['empty', 'truncated', 'nan', 'pickled', 'integers', 'npz'])
def test_mar_memory_files_are_checked_when_read(tmp_path, case):
  classes, per_class, channels = 3, 2, 4
  np.save(tmp_path / 'key.npy', np.ones((classes * per_class, channels), np.float32))
  np.save(tmp_path / 'value.npy', np.ones((classes, channels), np.float32))
  bad = tmp_path / ('value.npy' if case == 'nan' else 'key.npy')
  if case == 'empty':
    bad.write_bytes(b'')
  elif case == 'truncated':
    bad.write_bytes(bad.read_bytes()[:100])
  elif case == 'nan':
    np.save(bad, np.full((classes, channels), np.nan, np.float32))
  elif case == 'pickled':
    np.save(bad, np.array([{'a': 1}] * 6, dtype=object), allow_pickle=True)
  elif case == 'integers':
    np.save(bad, np.ones((classes * per_class, channels), np.int32))
  else:
    with open(bad, 'wb') as f:
      np.savez(f, key=np.ones((classes * per_class, channels), np.float32))
  with pytest.raises(ValueError, match=re.escape(str(bad))):
    load_memory(str(tmp_path), classes, per_class, channels)


def test_an_empty_mar_memory_file_is_one_line_at_start_up(tmp_path):
  memory = tmp_path / 'memory'
  memory.mkdir()
  (memory / 'key.npy').write_bytes(b'')
  (memory / 'value.npy').write_bytes(b'')
  workdir = tmp_path / 'run'
  result = subprocess.run(
      support.train_command(str(workdir), f'--config.model.stf.memory_init={memory}',
                            config=os.path.join(support.REPO, 'configs', 'stf_synthetic.py:mar')),
      cwd=support.REPO, env=support.subprocess_env(), capture_output=True, text=True, timeout=300)
  _one_line_error(result, cli.EXIT_USAGE)
  assert f'{memory / "key.npy"} is not a readable .npy array (0 bytes' in result.stderr
  assert not workdir.exists()


# -- paths, flags, messages ------------------------------------------------------------------------------------


def test_a_workdir_that_is_not_utf8_is_refused_and_flag_errors_keep_their_quotes(tmp_path):
  workdir = os.fsencode(str(tmp_path)) + b'/run\xff'
  for script, flags in (('train.py', [f'--config={support.TEST_CONFIG}'.encode()]), ('eval.py', [])):
    result = subprocess.run([sys.executable, os.path.join(support.REPO, script), b'--workdir=' + workdir, *flags],
                            cwd=support.REPO, env=support.subprocess_env(), capture_output=True, timeout=120)
    stderr = result.stderr.decode('utf-8', 'replace')
    _one_line_error(type('R', (), {'returncode': result.returncode, 'stderr': stderr}), cli.EXIT_USAGE)
    assert 'is not valid UTF-8' in stderr
  assert os.listdir(tmp_path) == []  # no workdir, no temporary left
  result = support.run_train(str(tmp_path / 'run'), '--nosuch', script='eval.py')
  _one_line_error(result, cli.EXIT_USAGE)
  assert "Unknown command line flag 'nosuch'" in result.stderr


def test_a_run_with_more_steps_than_num_steps_says_so(capfd):
  workdir = support.copy_workdir(support.reference_run(), 'more_steps')
  before = support.tree_digest(workdir)
  result = loop.train_and_evaluate(support.load_test_config(num_steps=4), workdir, progress=False)
  err = capfd.readouterr().err
  assert f'already has {support.REFERENCE_STEPS} steps, more than num_steps=4' in err, err
  assert 'finished' not in err and result.step == support.REFERENCE_STEPS
  assert support.tree_digest(workdir) == before


# -- eval.py during training, on a read-only workdir -----------------------------------------------------------


def test_a_checkpoint_removed_while_it_is_read_is_gone_not_corrupt(monkeypatch):
  workdir = support.copy_workdir(support.reference_run(), 'removed_meanwhile')
  steps_dir = os.path.join(workdir, 'checkpoints')
  original = checkpoints.TrainCheckpoints.stored_shapes
  removed = []

  def training_deletes_it(self, step):  # what a training run's retention policy does meanwhile
    if not removed:
      removed.append(step)
      shutil.rmtree(self.step_path(step))
    return original(self, step)

  monkeypatch.setattr(checkpoints.TrainCheckpoints, 'stored_shapes', training_deletes_it)
  run = runs.load_run(workdir, 'latest')
  assert removed == [support.REFERENCE_STEPS] and run.step == support.REFERENCE_STEPS - 2  # the newest one left
  removed.clear()
  with pytest.raises(checkpoints.CheckpointError, match=rf'{steps_dir}/8 was removed while it was read'):
    runs.load_run(workdir, 8)


def _make_read_only(path: str) -> bool:
  """Makes `path` unwritable (chattr +i where the filesystem has it: root ignores modes); False if impossible."""
  if shutil.which('chattr') and subprocess.run(['chattr', '+i', path], capture_output=True).returncode == 0:
    return True
  os.chmod(path, 0o555)
  try:
    with open(os.path.join(path, '.probe'), 'w'):
      pass
  except OSError:
    return True
  os.remove(os.path.join(path, '.probe'))
  return False


def test_eval_on_a_read_only_workdir_prints_the_results_then_what_was_not_written():
  workdir = support.copy_workdir(support.reference_run(), 'read_only')
  if not _make_read_only(workdir):
    pytest.skip('cannot make a folder read-only here (root without chattr)')
  try:
    result = support.run_train(workdir, '--checkpoint=latest', script='eval.py')
  finally:
    subprocess.run(['chattr', '-i', workdir], capture_output=True)
    os.chmod(workdir, 0o755)
  _one_line_error(result, cli.EXIT_CHECKPOINT)
  assert 'mIoU' in result.stdout and f'step {support.REFERENCE_STEPS}' in result.stdout  # the results
  assert f'could not write {workdir}/eval_val.json' in result.stderr and 'results above are complete' in result.stderr


# -- predict.py ------------------------------------------------------------------------------------------------


def test_predict_reports_a_one_frame_video_without_nan():
  from ma_resnet import inference
  summary = inference.PredictionSummary(
      out='out.mp4', labels_dir=None, frames=1, size=(32, 32), model_size=(32, 32), fps=25.0, seconds=1.25,
      frames_per_second=float('nan'), decode_errors=[])
  line = predict.summary_line(summary)
  assert 'nan' not in line and '1 frame ' in line and '1.2 s for the one frame' in line


@pytest.fixture(scope='module')
def stf_run(tmp_path_factory):
  """A tiny STF run (random weights, 32x32 frames, 2x2 blocks) and a one-frame folder."""
  from PIL import Image
  from test_predict import _write_random_run
  from ma_resnet import train_config
  root = tmp_path_factory.mktemp('stf')
  config = train_config.load_config(os.path.join(support.REPO, 'configs', 'stf_synthetic.py:stf'), {
      'data.synthetic.height': 32, 'data.synthetic.width': 32, 'data.crop_size': (32, 32),
      'model.pspnet.channels': 16, 'model.stf.ffn_channels': 8, 'model.stf.block_size': (2, 2),
      'model.stf.embedding_size': (4, 4), 'model.frozen': ()})
  _write_random_run(str(root / 'run'), config)
  (root / 'frames').mkdir()
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / 'frames' / '0.png')
  return root


def _module(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', *args], cwd=support.REPO, env=support.subprocess_env(),
                        capture_output=True, text=True, timeout=300)


def test_predict_size_that_stf_cannot_take_is_a_usage_error(stf_run):
  out = stf_run / 'out.mp4'
  result = _module('ma_resnet.predict', '--noprogress', f'--workdir={stf_run / "run"}',
                   f'--video={stf_run / "frames"}', f'--out={out}', '--size=32,40')
  _one_line_error(result, cli.EXIT_USAGE)
  assert '--size 32,40: STF needs a feature map' in result.stderr and not out.exists()


def test_mar_memory_console_shows_no_library_chatter(stf_run):
  result = _module('ma_resnet.mar_memory', f'--workdir={stf_run / "run"}', f'--out={stf_run / "memory"}',
                   '--max_frames=2', '--keys_per_class=1', '--values_per_class=1', '--noprogress')
  assert result.returncode in (0, 1), result.stderr[-3000:]  # random weights: a class may never be right
  chatter = [line for line in result.stderr.splitlines() if 'absl' in line or re.match(r'(INFO|WARNING)\b', line)]
  assert not chatter, result.stderr[-3000:]


# -- permissions -----------------------------------------------------------------------------------------------


def test_outputs_respect_the_umask(tmp_path):
  old = os.umask(0o002)
  try:
    files.atomic_write_text(str(tmp_path / 'report.json'), '{}')
    with files.atomic_path(str(tmp_path / 'folder'), folder=True) as tmp:
      open(os.path.join(tmp, 'a.png'), 'w').close()
    lock = WorkdirLock.acquire(str(tmp_path / 'run'))
    lock_mode = os.stat(lock.path).st_mode & 0o777
    lock.release()
  finally:
    os.umask(old)
  assert os.stat(tmp_path / 'report.json').st_mode & 0o777 == 0o664
  assert os.stat(tmp_path / 'folder').st_mode & 0o777 == 0o775
  assert lock_mode == 0o664
