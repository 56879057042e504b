"""benchmarks/suite.py --smoke: every group of figures runs and prints one well-formed JSON line per figure;
--budget stops new measurements."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_suite(*args, timeout=600):
  result = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'suite.py'), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  figures = {}
  for line in result.stdout.splitlines():
    if line.startswith('{'):
      record = json.loads(line)
      figures[record['figure']] = record
  return figures, result.stdout


def test_smoke_prints_every_group():
  figures, stdout = run_suite('--smoke')
  assert figures['context']['smoke'] is True
  ours = ['attention/dense/float32', 'attention/chunked/float32', 'step/plain/float32', 'step/pcma/float32',
          'precision/pcma', 'clip/pcma/float32', 'train/plain/float32']
  for name in ours:
    assert 'skipped' not in figures[name], (name, figures[name])
  for name in ('step/plain/float32', 'step/pcma/float32', 'clip/pcma/float32'):
    assert figures[name]['ms_per_frame'] > 0 and figures[name]['compile_s'] > 0
  assert figures['train/plain/float32']['s_per_step'] > 0
  assert figures['attention/chunked/float32']['peak_bytes'] > 0
  assert figures['ratio/ma_over_plain/float32']['value'] > 0
  for name in ('step/torchvision/float32', 'train/torchvision/float32'):  # measured, or skipped with the reason
    assert name in figures and (figures[name].get('skipped') or figures[name].get('loaded'))
  assert '# summary' in stdout


def test_no_measurement_starts_past_the_budget():
  figures, _ = run_suite('--smoke', '--only', 'step,clip', '--budget', '0', timeout=300)
  steps = [f for name, f in figures.items() if name.startswith(('step/', 'clip/'))]
  assert steps and all(f.get('skipped') == 'budget' for f in steps)


def test_bad_arguments_are_refused():
  result = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'suite.py'), '--only', 'nothing'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and 'unknown group' in result.stderr


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
