"""Helpers shared by the training / evaluation / CLI tests (no tests here).

One reference run of `configs/test.py` (1 device, REFERENCE_STEPS steps, constant lr) is made once per test
session and shared; tests copy its workdir before changing anything. Compilations are cached on disk
(JAX persistent compilation cache) so subprocesses running the same program do not compile it again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import jax

from ma_resnet import train_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_CONFIG = os.path.join(REPO, 'configs', 'test.py')
CACHE_DIR = os.path.join(tempfile.gettempdir(), 'ma_resnet_test_jax_cache')
REFERENCE_STEPS = 16

jax.config.update('jax_compilation_cache_dir', CACHE_DIR)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

_session_dir = None
_reference = None


def session_dir() -> str:
  global _session_dir
  if _session_dir is None:
    _session_dir = tempfile.mkdtemp(prefix='ma_resnet_tests_')
  return _session_dir


def load_test_config(**overrides):
  """configs/test.py's config with dotted overrides, e.g. load_test_config(**{'optimizer.lr': 0.1})."""
  return train_config.load_config(TEST_CONFIG, overrides)


def subprocess_env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env['JAX_COMPILATION_CACHE_DIR'] = CACHE_DIR
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  env['JAX_PLATFORMS'] = 'cpu'
  flags = [f for f in env.get('XLA_FLAGS', '').split() if 'xla_force_host_platform_device_count' not in f]
  if devices > 1:
    flags.append(f'--xla_force_host_platform_device_count={devices}')
  env['XLA_FLAGS'] = ' '.join(flags)
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  return env


def train_command(workdir: str, *overrides: str, config: str = TEST_CONFIG) -> list[str]:
  return [sys.executable, os.path.join(REPO, 'train.py'), f'--config={config}', f'--workdir={workdir}',
          '--noprogress', *overrides]


def run_train(workdir: str, *overrides: str, devices: int = 1, timeout: float = 600,
              script: str = 'train.py') -> subprocess.CompletedProcess:
  if script == 'train.py':
    command = train_command(workdir, *overrides)
  else:
    command = [sys.executable, os.path.join(REPO, script), f'--workdir={workdir}', *overrides]
  return subprocess.run(command, cwd=REPO, env=subprocess_env(devices), capture_output=True, text=True,
                        timeout=timeout)


def read_metrics(workdir: str) -> dict[int, dict]:
  """step -> training metrics record of metrics.jsonl (eval records left out)."""
  records = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      if 'loss' in record:
        records[record['step']] = record
  return records


def tree_digest(path: str) -> dict[str, str]:
  """relative path -> sha1 of every file under `path` (to check that nothing changed)."""
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, 'rb') as f:
        out[os.path.relpath(full, path)] = hashlib.sha1(f.read()).hexdigest()
  return out


def copy_workdir(source: str, name: str) -> str:
  target = os.path.join(session_dir(), name)
  if os.path.exists(target):
    shutil.rmtree(target)
  shutil.copytree(source, target)
  return target


def reference_run() -> str:
  """Workdir of the shared uninterrupted 1-device run (REFERENCE_STEPS steps, checkpoints every 2)."""
  global _reference
  if _reference is None:
    workdir = os.path.join(session_dir(), 'reference')
    result = run_train(workdir, f'--config.num_steps={REFERENCE_STEPS}')
    if result.returncode != 0:
      raise RuntimeError(f'reference run failed ({result.returncode}):\n{result.stderr[-4000:]}')
    _reference = workdir
  return _reference
