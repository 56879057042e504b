"""Weight files from untrusted sources are read without running code they carry.

A pickle runs whatever callable its globals name (`__reduce__` -> os.system, eval, ...) while it is loaded.
`.pdparams` files go through a restricted unpickler (`weight_files.RestrictedUnpickler`: numpy arrays in
dicts, nothing else) and `.pth` files through `torch.load(weights_only=True)`. Each payload here would create
a marker file; the control shows that it does when unpickled plainly, the tests that the converters refuse
the file - naming it and the global - and that the marker never appears.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from ma_resnet.convert import ConversionError
from ma_resnet.convert.__main__ import main as cli_main
from ma_resnet.convert.paddle import read_pdparams


class SystemPayload:
  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


class ExecPayload:
  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return exec, (f'open({self.marker!r}, "w").close()',)


def _inst_payload(marker) -> bytes:
  """Protocol 0, hand-written: INST calls os.system without any __reduce__."""
  return f"(dp0\nS'w'\n(S'touch {marker}'\nios\nsystem\np1\ns.".encode()


PAYLOADS = {
    'system': (lambda m: pickle.dumps({'conv1_1_weights': np.ones(3, np.float32), 'x': SystemPayload(m)}, 4),
               f'{os.system.__module__}.system'),
    'exec': (lambda m: pickle.dumps({'conv1_1_weights': np.ones(3, np.float32), 'x': ExecPayload(m)}, 2),
             '__builtin__.exec'),  # protocol 2 spells builtins the Python 2 way
    'inst': (_inst_payload, 'os.system'),
}


@pytest.mark.parametrize('kind', sorted(PAYLOADS))
def test_payloads_are_live(kind, tmp_path):
  """Control: plain pickle.load runs each payload (so the refusals below are not vacuous)."""
  marker = tmp_path / 'ran'
  make, _ = PAYLOADS[kind]
  pickle.loads(make(marker))
  assert marker.exists()


@pytest.mark.parametrize('kind', sorted(PAYLOADS))
def test_pdparams_payload_is_refused_and_never_runs(kind, tmp_path):
  marker = tmp_path / 'ran'
  make, refused = PAYLOADS[kind]
  path = tmp_path / 'evil.pdparams'
  path.write_bytes(make(marker))
  with pytest.raises(ConversionError) as info:
    read_pdparams(str(path))
  message = str(info.value)
  assert message.startswith(f'{path}: refused to load: the pickle calls {refused},'), message
  assert '\n' not in message and 'not a readable' not in message
  assert not marker.exists()


def test_pdparams_payload_via_the_command_line(tmp_path, capsys):
  marker = tmp_path / 'ran'
  path = tmp_path / 'ResNet50_vd_ssld_v2_pretrained.pdparams'
  path.write_bytes(PAYLOADS['system'][0](marker))
  assert cli_main(['paddle', str(path), str(tmp_path / 'out'), '--depth', '50']) == 1
  err = capsys.readouterr().err
  assert err.startswith(f'error: {path}: refused to load: the pickle calls') and err.count('\n') == 1
  assert not marker.exists() and sorted(os.listdir(tmp_path)) == [path.name]


def test_pth_payload_is_refused_naming_the_global(tmp_path, capsys):
  """torch.load(weights_only=True) refuses the global; the message says what was refused (not 'corrupt')."""
  torch = pytest.importorskip('torch', reason='torch is not installed (pip install torch==2.13.0)')
  marker = tmp_path / 'ran'
  path = tmp_path / 'resnet18.pth'
  torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7), 'x': SystemPayload(marker)}, path)
  assert cli_main(['torchvision', str(path), str(tmp_path / 'out'), '--depth', '18']) == 1
  err = capsys.readouterr().err
  assert err.startswith(f'error: cannot read {path} as a PyTorch checkpoint: refused to load: the pickle '
                        f'calls {os.system.__module__}.system'), err
  assert 'corrupt' not in err and err.count('\n') == 1
  assert not marker.exists() and sorted(os.listdir(tmp_path)) == [path.name]
  torch.load(path, weights_only=False)  # control: the payload is live
  assert marker.exists()
