"""`python -m ma_resnet.compare`: runs side by side, refused or grouped when scored differently, a run without
evaluation results named.

The runs are configs/test.py run folders with random (He-initialised) parameters written through the project's
checkpoint API (as in test_predict.py), MA (pcma) and plain, each evaluated by `evaluation.evaluate_run` (the
eval.py report, with mVC2 / mVC3 in place of the config's mVC8 / mVC16: the test sequences have 4 frames)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import test_training_support as support
from ma_resnet import compare, evaluation
from ma_resnet.runs import load_run
from test_predict import _write_random_run


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('compare')
  made = {}
  for name, temporal in (('ma', 'pcma'), ('plain', 'plain')):
    workdir = str(root / name)
    _write_random_run(workdir, support.load_test_config(**{'model.temporal': temporal}))
    evaluation.evaluate_run(workdir, checkpoint='latest', vc_lengths=(2, 3))  # the run config's (8, 16): no window
    made[name] = workdir
  made['root'] = str(root)
  return made


def _copy(runs, source: str, name: str) -> str:
  target = os.path.join(runs['root'], name)
  if not os.path.exists(target):
    shutil.copytree(runs[source], target)
  return target


def _number(text: str) -> float | None:
  return None if text == '' else float(text)


def test_two_runs_side_by_side(runs, tmp_path, capsys):
  out = str(tmp_path / 'cmp')
  assert compare.main([runs['ma'], runs['plain'], f'--out={out}', '--rounds=2', '--frames=2']) == 0
  printed = capsys.readouterr().out
  with open(os.path.join(out, 'compare.md')) as f:
    text = f.read()
  assert text in printed
  assert '| ma | pcma + resnet18 | resnet18 | fcn |' in text and '| plain | plain + resnet18 |' in text
  assert 'mVC2 %' in text and 'mVC3 %' in text and 'consistency %' in text and 'Per-class IoU' in text
  with open(os.path.join(out, 'compare.csv')) as f:
    records = {r['run']: r for r in csv.DictReader(f)}
  for name in ('ma', 'plain'):
    with open(os.path.join(runs[name], 'eval_val.json')) as f:
      report = json.load(f)
    record = records[name]
    assert float(record['miou']) == report['miou']
    assert float(record['mvc2']) == report['video_metrics']['mvc2']
    assert 'mvc8' not in report['video_metrics']  # evaluate_run's vc_lengths replace the config's
    assert float(record['consistency']) == report['video_metrics']['consistency']
    assert {k: _number(record[f'iou/{k}']) for k in report['per_class_iou']} == report['per_class_iou']
    run = load_run(runs[name], 'latest')
    assert int(record['parameters']) == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.variables['params']))
    assert float(record['frames_per_second']) > 0 and float(record['gflops_per_frame']) > 0
  # PCMA's memory attention costs parameters and FLOPs on top of the same network.
  assert int(records['ma']['parameters']) > int(records['plain']['parameters'])
  assert float(records['ma']['gflops_per_frame']) > float(records['plain']['gflops_per_frame'])
  image = Image.open(os.path.join(out, 'compare.png'))
  assert image.format == 'PNG' and image.size[0] > 100


def test_runs_scored_differently_are_refused_or_grouped(runs, tmp_path, capsys):
  other = _copy(runs, 'plain', 'plain_other_data')
  path = os.path.join(other, 'eval_val.json')
  with open(path) as f:
    report = json.load(f)
  report.update(dataset='camvid', input_size=[16, 16])
  with open(path, 'w') as f:
    json.dump(report, f)

  assert compare.main([runs['ma'], other, '--no-speed']) == compare.EXIT_USAGE
  err = capsys.readouterr().err
  assert 'not scored on the same data' in err and '--group' in err
  assert 'synthetic val, input native size' in err and ': ma' in err and 'camvid val, input 16x16' in err

  out = str(tmp_path / 'grouped')
  assert compare.main([runs['ma'], runs['plain'], other, '--group', '--no-speed', f'--out={out}']) == 0
  with open(os.path.join(out, 'compare.md')) as f:
    text = f.read()
  assert text.count('\n## ') == 2 and '## camvid val, input 16x16' in text
  with open(os.path.join(out, 'compare.csv')) as f:
    groups = {r['run']: r['group'] for r in csv.DictReader(f)}
  assert groups['ma'] == groups['plain'] != groups['plain_other_data']
  assert 'frames/s' in text and '| — | 0 |' in text  # no speed: the frames/s column stays empty


def test_a_run_without_evaluation_results_is_one_clear_line(runs, tmp_path):
  bare = _copy(runs, 'plain', 'not_evaluated')
  if os.path.exists(os.path.join(bare, 'eval_val.json')):
    os.remove(os.path.join(bare, 'eval_val.json'))
  out = str(tmp_path / 'none')
  env = support.subprocess_env()
  result = subprocess.run([sys.executable, '-m', 'ma_resnet.compare', runs['ma'], bare, f'--out={out}'],
                          cwd=support.REPO, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == compare.EXIT_DATA
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and bare in lines[0]
  assert f'python eval.py --workdir={bare}' in lines[0]
  assert not os.path.exists(out)
  result = subprocess.run([sys.executable, '-m', 'ma_resnet.compare', str(tmp_path / 'nothing_here')],
                          cwd=support.REPO, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == compare.EXIT_CHECKPOINT and 'no such run folder' in result.stderr


def test_the_final_validation_of_train_result_json_stands_in_for_eval_json(runs, capsys):
  trained = _copy(runs, 'ma', 'validated_while_training')
  report_path = os.path.join(trained, 'eval_val.json')
  if os.path.exists(report_path):
    with open(report_path) as f:
      report = json.load(f)
    os.remove(report_path)
    fields = ('split', 'miou', 'pixel_accuracy', 'per_class_iou', 'frames', 'labelled_frames', 'class_names',
              'video_metrics')
    with open(os.path.join(trained, 'train_result.json'), 'w') as f:  # what loop.py writes: EvalMetrics.to_json()
      json.dump({'step': 0, 'eval_metrics': {k: report[k] for k in fields}, 'seconds': 1.0}, f)
  assert compare.main([runs['ma'], trained, '--no-speed']) == 0
  text = capsys.readouterr().out
  rows = [line for line in text.splitlines() if line.startswith('| ma |') or line.startswith('| validated')]
  assert len(rows) == 2 and rows[0].split('|')[2:] == rows[1].split('|')[2:]  # the same figures, one table

  with open(os.path.join(trained, 'train_result.json'), 'w') as f:
    f.write('{"step": 0, "eval_metrics": {')  # cut off
  assert compare.main([trained, '--no-speed']) == compare.EXIT_DATA
  assert 'cannot read' in capsys.readouterr().err
