"""Multi-process training on JAX's distributed runtime: 2 processes of train.py on 127.0.0.1 (gloo collectives)
train exactly as 1 process with 2 devices, and resume after both are killed; a dead peer, a coordinator port in
use, a missing process, processes started differently and a workdir in use each stop every process with one
line."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import test_training_support as support
from ma_resnet import checkpoints, cli
from ma_resnet.workdir_lock import WorkdirLock

STEPS = 6
OVERRIDES = ('--config.batch_size=4', '--config.checkpoint_every=2', '--config.eval_every=-1')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(workdir: str, steps: int, port: int, extra=((), ()), ids=(0, 1)) -> list[subprocess.Popen]:
  """Processes `ids` of a 2-process train.py run; `extra[i]`: more flags for process i."""
  processes = []
  for i in ids:
    command = support.train_command(workdir, f'--config.num_steps={steps}', *OVERRIDES,
                                    f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                                    f'--process_id={i}', '--heartbeat_timeout=20', *extra[i])
    processes.append(subprocess.Popen(command, cwd=support.REPO, env=support.subprocess_env(devices=1),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return processes


def finish(processes, timeout: float = 400) -> list[tuple[int, str, str]]:
  results = []
  deadline = time.time() + timeout
  for p in processes:
    try:
      out, err = p.communicate(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for q in processes:
        q.kill()
      raise
    results.append((p.returncode, out, err))
  return results


@pytest.fixture(scope='module')
def two_devices():
  """1 process with 2 devices, STEPS + 2 steps (the uninterrupted reference of both tests)."""
  workdir = os.path.join(support.session_dir(), 'two_devices')
  result = support.run_train(workdir, f'--config.num_steps={STEPS + 2}', *OVERRIDES, devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_two_processes_train_as_one_process_with_two_devices(two_devices):
  workdir = os.path.join(support.session_dir(), 'two_processes')
  results = finish(launch(workdir, STEPS, free_port()))
  for i, (code, out, err) in enumerate(results):
    assert code == 0, f'process {i} (exit {code}):\n{err[-3000:]}'
  assert 'done: step 6' in results[0][1] and 'done' not in results[1][1]  # reports from process 0 only
  assert not any('[Gloo]' in out for _, out, _ in results)  # gloo's connection lines go to stderr
  one, two = support.read_metrics(two_devices), support.read_metrics(workdir)
  assert sorted(two) == list(range(1, STEPS + 1))
  for step in two:
    np.testing.assert_allclose(two[step]['loss'], one[step]['loss'], rtol=1e-5, atol=1e-6)
  a = checkpoints.TrainCheckpoints(os.path.join(two_devices, 'checkpoints')).restore_variables(STEPS)
  b = checkpoints.TrainCheckpoints(os.path.join(workdir, 'checkpoints')).restore_variables(STEPS)
  import jax
  worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
              zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert worst <= 1e-5, worst


def test_both_killed_then_resumed_match_the_uninterrupted_run(two_devices):
  workdir = os.path.join(support.session_dir(), 'two_processes_killed')
  processes = launch(workdir, STEPS + 2, free_port())
  deadline = time.time() + 300
  while time.time() < deadline and all(p.poll() is None for p in processes):
    if checkpoints.TrainCheckpoints(os.path.join(workdir, 'checkpoints')).all_steps():
      break
    time.sleep(0.2)
  for p in processes:
    p.send_signal(signal.SIGKILL)
  for p in processes:
    p.wait(timeout=60)
  kept = checkpoints.TrainCheckpoints(os.path.join(workdir, 'checkpoints')).all_steps()
  assert kept and kept[-1] < STEPS + 2, f'killed too late: {kept}'

  results = finish(launch(workdir, STEPS + 2, free_port()))
  for i, (code, out, err) in enumerate(results):
    assert code == 0, f'process {i} (exit {code}):\n{err[-3000:]}'
  assert f'Resumed from' in results[0][2]
  one, resumed = support.read_metrics(two_devices), support.read_metrics(workdir)
  assert sorted(resumed) == list(range(1, STEPS + 3))
  for step in resumed:
    np.testing.assert_allclose(resumed[step]['loss'], one[step]['loss'], rtol=1e-5, atol=1e-6)


def test_a_peer_that_dies_stops_the_other_with_one_message():
  workdir = os.path.join(support.session_dir(), 'peer_dies')
  processes = launch(workdir, 400, free_port())
  deadline = time.time() + 300
  while time.time() < deadline and all(p.poll() is None for p in processes):
    if checkpoints.TrainCheckpoints(os.path.join(workdir, 'checkpoints')).all_steps():
      break
    time.sleep(0.2)
  processes[1].send_signal(signal.SIGKILL)
  start = time.time()
  code, _, err = finish(processes[:1], timeout=120)[0]
  processes[1].wait(timeout=30)
  assert code == 6, err[-3000:]
  assert 'a peer process stopped' in err and time.time() - start < 90
  assert err.count('error:') == 1 and 'Traceback' not in err


def _timed(processes, start: float, timeout: float = 120) -> list[tuple[int, str, str, float]]:
  """(exit code, stdout, stderr, seconds from `start` to its exit) of each process."""
  results = [None] * len(processes)

  def wait(i, p):
    try:
      out, err = p.communicate(timeout=max(start + timeout - time.time(), 1))
    except subprocess.TimeoutExpired:
      p.kill()
      out, err = p.communicate()
    results[i] = (p.returncode, out, err, time.time() - start)
  threads = [threading.Thread(target=wait, args=(i, p)) for i, p in enumerate(processes)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return results


def _one_line(code: int, err: str, expected: int) -> None:
  assert code == expected and err.count('error:') == 1 and 'Traceback' not in err, f'exit {code}:\n{err[-3000:]}'


def test_a_port_in_use_and_a_missing_process_are_one_line_each(tmp_path):
  """Process 0 finds its coordinator port taken at once; process 1, talking to what holds the port, and a process
  0 whose peer never comes stop at --initialization_timeout, each naming the address and who is missing."""
  holder = socket.socket()
  holder.bind(('127.0.0.1', 0))
  holder.listen()
  taken, free = holder.getsockname()[1], free_port()
  short = ['--initialization_timeout=5']
  start = time.time()
  processes = (launch(str(tmp_path / 'taken'), 4, taken, extra=(short, short))
               + launch(str(tmp_path / 'alone'), 4, free, extra=(short, ()), ids=(0,)))
  try:
    (code0, _, err0, t0), (code1, _, err1, t1), (code_alone, _, err_alone, t_alone) = _timed(processes, start)
  finally:
    holder.close()
  _one_line(code0, err0, cli.EXIT_PEER)
  assert f'coordinator port 127.0.0.1:{taken} is already in use' in err0
  _one_line(code1, err1, cli.EXIT_PEER)
  assert f'did not start within 5 s at the coordinator 127.0.0.1:{taken}: something listens there' in err1
  assert 'missing: process 0' in err1
  _one_line(code_alone, err_alone, cli.EXIT_PEER)
  assert f'not every process joined the coordinator 127.0.0.1:{free} within 5 s (seen: process 0, this one; ' \
         'missing: 1)' in err_alone
  assert t1 < 60 and t_alone < 60, (t0, t1, t_alone)  # not JAX's abort after minutes
  assert not os.listdir(tmp_path)  # nothing written
  print(f'wall time to the line: port in use {t0:.1f} s, its peer {t1:.1f} s, missing peer {t_alone:.1f} s')


def test_processes_started_differently_or_on_a_workdir_in_use_all_stop(tmp_path):
  """Another --config.optimizer.lr, or another --num_processes, on process 1: both stop before training, naming
  the key and both values (gloo's connection lines stay off stdout). A workdir another run holds: process 0 names
  the holder (exit 4), process 1 stops with it."""
  locked = str(tmp_path / 'locked')
  holder = WorkdirLock.acquire(locked)
  try:
    start = time.time()
    processes = (launch(str(tmp_path / 'lr'), 4, free_port(), extra=((), ('--config.optimizer.lr=0.5',)))
                 + launch(str(tmp_path / 'count'), 4, free_port(), extra=((), ('--num_processes=3',)))
                 + launch(locked, 4, free_port()))
    results = _timed(processes, start)
  finally:
    holder.release()
  for key, zero, one, pair in (('config.optimizer.lr', '0.01', '0.5', results[:2]),
                               ('launch.num_processes', '2', '3', results[2:4])):
    for i, (code, out, err, _) in enumerate(pair):
      _one_line(code, err, cli.EXIT_PEER)
      assert (f'process {i} of 2: the processes were started differently: {key} is {zero} on process 0'
              f'{" (this process)" if i == 0 else ""}, {one} on process 1{" (this process)" if i == 1 else ""}'
              ) in err
      assert '[Gloo]' not in out and 'step' not in out
  (code0, _, err0, _), (code1, _, err1, _) = results[4:]
  _one_line(code0, err0, cli.EXIT_CHECKPOINT)
  assert f'is in use by another training run (pid {os.getpid()}' in err0
  _one_line(code1, err1, cli.EXIT_PEER)
  assert 'process 1 of 2: process 0 stopped at start-up: workdir' in err1
  assert not os.listdir(tmp_path)  # nothing written, the locked workdir released by its holder
  seconds = [max(r[3] for r in results[i:i + 2]) for i in (0, 2, 4)]
  print('wall time to the line: different configs {:.1f} s, different process counts {:.1f} s, workdir in use '
        '{:.1f} s'.format(*seconds))
