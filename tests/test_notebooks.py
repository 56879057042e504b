"""The Colab notebooks (`colab/*.ipynb`) run top to bottom on a CPU with their small settings.

Each notebook is executed with nbclient in a fresh kernel, with MA_RESNET_NOTEBOOK_SMALL=1 (tiny ResNet18
models, small frames, synthetic data, a few training steps) and its files written under a temporary folder;
then no cell may have an error output, and the cells that promise a figure must have an image/png output. When
PyTorch is installed, quickstart.ipynb is also given a torchvision-format ResNet18 file (random weights with
torchvision's names and shapes) so that its conversion branch runs.
"""
from __future__ import annotations

import os
import re

import pytest

nbformat = pytest.importorskip('nbformat', reason='the notebook tests need nbformat, nbclient and ipykernel')
nbclient = pytest.importorskip('nbclient', reason='the notebook tests need nbformat, nbclient and ipykernel')
pytest.importorskip('ipykernel', reason='the notebook tests need nbformat, nbclient and ipykernel')
pytest.importorskip('imageio_ffmpeg', reason='the notebooks read and write video with imageio-ffmpeg')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(REPO, 'colab')


def _execute(name: str, folder, monkeypatch, **env: str):
  monkeypatch.setenv('MA_RESNET_NOTEBOOK_SMALL', '1')
  monkeypatch.setenv('MA_RESNET_NOTEBOOK_DIR', str(folder))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('PYTHONPATH', REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  notebook = nbformat.read(os.path.join(COLAB, name), as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                                   resources={'metadata': {'path': str(folder)}})
  client.execute()
  return notebook


def _code_cells(notebook):
  return [c for c in notebook.cells if c.cell_type == 'code']


def _text(cell, stream: str = 'stdout') -> str:
  return ''.join(o.get('text', '') for o in cell.outputs if o.output_type == 'stream' and o.name == stream)


def _has_png(cell) -> bool:
  return any('image/png' in o.get('data', {}) for o in cell.outputs)


def _cell(notebook, marker: str):
  cells = [c for c in _code_cells(notebook) if marker in c.source]
  assert len(cells) == 1, f'{len(cells)} code cells contain {marker!r}'
  return cells[0]


def _check_no_errors(notebook) -> None:
  for cell in _code_cells(notebook):
    errors = [o for o in cell.outputs if o.output_type == 'error']
    assert not errors, f'cell {cell.source[:80]!r} raised {errors[0].ename}: {errors[0].evalue}'
    assert 'Traceback' not in _text(cell, 'stderr'), _text(cell, 'stderr')[-2000:]


def _torchvision_format_weights(path: str) -> str | None:
  """A .pth with torchvision ResNet18's keys and shapes (random values), or None without torch."""
  try:
    import torch
  except ImportError:
    return None
  from ma_resnet.convert.torchvision import key_table
  table = key_table(18)
  generator = torch.Generator().manual_seed(0)
  state = {k: 0.05 * torch.randn(e.shape, generator=generator) for k, e in table.entries.items()}
  for key in table.ignored:
    if key.endswith('num_batches_tracked'):
      state[key] = torch.tensor(0)
  for key in state:
    if key.endswith('running_var'):
      state[key] = state[key].abs() + 0.5
  torch.save(state, path)
  return path


def test_quickstart_runs_small(tmp_path, monkeypatch):
  weights = _torchvision_format_weights(str(tmp_path / 'resnet18_torchvision_format.pth'))
  notebook = _execute('quickstart.ipynb', tmp_path, monkeypatch, MA_RESNET_TORCHVISION_WEIGHTS=weights or '')
  _check_no_errors(notebook)
  assert 'parameters, initialised' in _text(_cell(notebook, 'jax.jit(model.init)'))
  if weights:
    assert 'encoder (params/backbone) loaded from' in _text(_cell(notebook, 'load_pretrained_encoder'))
  assert 'enhanced by memory [False, True, True, True]' in _text(_cell(notebook, 'apply = jax.jit(model.apply)'))
  agreement = re.search(r'agreement with the scan: ([\d.]+)%', _text(_cell(notebook, 'predict_video(')))
  assert agreement and float(agreement.group(1)) > 99.9
  assert _has_png(_cell(notebook, 'show_images(images'))


def test_train_tpu_runs_small(tmp_path, monkeypatch):
  notebook = _execute('train_tpu.ipynb', tmp_path, monkeypatch)
  _check_no_errors(notebook)
  workdir = tmp_path / 'small_run'
  assert (workdir / 'metrics.jsonl').is_file() and (workdir / 'checkpoints').is_dir()
  assert 'reached in' in _text(_cell(notebook, 'train_and_evaluate('))
  assert _has_png(_cell(notebook, 'plot_metrics('))
  evaluation = _cell(notebook, 'evaluate_run(')
  assert 'mIoU' in _text(evaluation) and _has_png(evaluation)
  assert (workdir / 'eval_val.json').is_file()
  video = _cell(notebook, 'inference.predict_file(')
  assert _has_png(video) and re.search(r'\d+ frames 32x32 -> ', _text(video))
  assert any(n.startswith('overlay_') and n.endswith('.mp4') for n in os.listdir(workdir / 'predictions'))
