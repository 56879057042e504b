"""Multi-process training on JAX's distributed runtime: 2 processes of train.py on 127.0.0.1 (gloo collectives)
train exactly as 1 process with 2 devices, and resume after both are killed."""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import test_training_support as support
from ma_resnet import checkpoints

STEPS = 6
OVERRIDES = ('--config.batch_size=4', '--config.checkpoint_every=2', '--config.eval_every=-1')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(workdir: str, steps: int, port: int) -> list[subprocess.Popen]:
  processes = []
  for i in range(2):
    command = support.train_command(workdir, f'--config.num_steps={steps}', *OVERRIDES,
                                    f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                                    f'--process_id={i}', '--heartbeat_timeout=20')
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
