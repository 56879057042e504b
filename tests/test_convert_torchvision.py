"""The torchvision -> Flax ResNet converter, its checkpoints and its command line.

Parity tests run torchvision's own model definition (its `models/resnet.py`, loaded by `torch_utils`) and
skip, saying so, when torch / torchvision are not installed. The refusal tests need no torch.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma_resnet import files
from ma_resnet.convert import ConversionError, load_converted, save_converted
from ma_resnet.convert import checkpoint_io
from ma_resnet.convert.__main__ import main as cli_main
from ma_resnet.convert.torchvision import convert_state_dict, key_table
from ma_resnet.models.backbones.resnet import ResNet

try:
  from torch_utils import randomize_batch_norms, torch_stage_outputs, torchvision_resnet_or_skip
except ImportError:  # tests/ imported as a package
  from tests.torch_utils import randomize_batch_norms, torch_stage_outputs, torchvision_resnet_or_skip

DEPTHS = (18, 34, 50, 101, 152)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _table_state_dict(depth: int, seed: int = 0, classifier: bool = True) -> dict[str, np.ndarray]:
  """A random numpy state dict with the torchvision keys (as in the table) and num_batches_tracked."""
  rng = np.random.default_rng(seed)
  table = key_table(depth, include_classifier=classifier)
  sd = {k: rng.standard_normal(e.shape).astype(np.float32) for k, e in table.entries.items()}
  sd.update({k: np.array(0, np.int64) for k in table.ignored if k.endswith('num_batches_tracked')})
  return sd


# ---------------------------------------------------------------------------------------------------------
# The table against both models (all depths).

def _flax_shapes(depth: int):
  model = ResNet(depth=depth, variant='torchvision', num_classes=1000)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  return jax.tree.map(lambda s: tuple(s.shape), shapes)


@pytest.mark.parametrize('depth', DEPTHS)
def test_table_produces_the_flax_variables_tree(depth):
  assert checkpoint_io.table_target_shapes(key_table(depth)) == _flax_shapes(depth)


@pytest.mark.parametrize('depth', DEPTHS)
def test_table_covers_torchvision_state_dict_exactly(depth):
  tvr = torchvision_resnet_or_skip()
  import torch
  with torch.device('meta'):  # no memory, no init
    sd = getattr(tvr, f'resnet{depth}')().state_dict()
  table = key_table(depth)
  assert set(sd) == set(table.entries) | set(table.ignored)
  assert {k: tuple(v.shape) for k, v in sd.items() if k in table.entries} == \
         {k: e.shape for k, e in table.entries.items()}
  assert all(k.endswith('num_batches_tracked') for k in table.ignored)


# ---------------------------------------------------------------------------------------------------------
# Numerical parity with torchvision (eval mode, random weights and batch-norm statistics).

@functools.cache
def _torch_reference(depth: int, dilated: bool = False):
  """(numpy state dict, NCHW input, {stage1..stage4 (NHWC), logits}) of a randomised torchvision model;
  `dilated`: output stride 8 (`replace_stride_with_dilation=[False, True, True]`)."""
  tvr = torchvision_resnet_or_skip()
  import torch
  torch.manual_seed(depth)
  model = getattr(tvr, f'resnet{depth}')(replace_stride_with_dilation=[False, dilated, dilated])
  randomize_batch_norms(model, 1000 + depth)
  x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2000 + depth)).numpy()
  return model.state_dict(), x, torch_stage_outputs(model, x)


@functools.cache
def _flax_apply(depth: int, dilated: bool = False):
  model = ResNet(depth=depth, variant='torchvision', num_classes=1000, output_stride=8 if dilated else 32,
                 contract_dilation=dilated)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def _flax_outputs(depth, variables, x_nchw, dilated: bool = False):
  with jax.default_matmul_precision('float32'):  # no TF32 / bf16 passes on accelerators
    out = _flax_apply(depth, dilated)(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)))
  return jax.device_get(out)


@pytest.mark.full_size
@pytest.mark.parametrize('depth', (50, 18))
def test_parity_with_torchvision(depth):
  state_dict, x, ref = _torch_reference(depth)
  variables = convert_state_dict(state_dict, depth)
  out = _flax_outputs(depth, variables, x)
  errors = {k: _rel_err(out[k], ref[k]) for k in ref}
  print(f'ResNet{depth} relative errors:', {k: f'{e:.2e}' for k, e in errors.items()})
  for k in ref:
    assert out[k].shape == ref[k].shape, k
  assert max(errors.values()) <= 1e-5, errors


@pytest.mark.full_size
def test_contract_dilation_is_torchvisions_dilated_resnet():
  """Output stride 8 with contract_dilation (mmseg ResNetV1c's rule: the first block of a dilated stage at
  half the dilation) is exactly torchvision's replace_stride_with_dilation=[False, True, True]."""
  state_dict, x, ref = _torch_reference(50, dilated=True)
  out = _flax_outputs(50, convert_state_dict(state_dict, 50), x, dilated=True)
  assert out['stage4'].shape[1:3] == (28, 28)  # 224 / 8
  errors = {k: _rel_err(out[k], ref[k]) for k in ref}
  assert max(errors.values()) <= 1e-5, errors
  # Negative control: every block of a dilated stage at the full rate (the PaddleSeg / mmseg default).
  model = ResNet(depth=50, variant='torchvision', num_classes=1000, output_stride=8)
  with jax.default_matmul_precision('float32'):
    full = model.apply(convert_state_dict(state_dict, 50), jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert _rel_err(np.asarray(full['stage4']), ref['stage4']) > 1e-2


@pytest.mark.full_size
def test_parity_check_detects_a_wrong_kernel_layout():
  """Negative control: kernels converted OIHW -> WHIO (spatially transposed) are far off."""
  state_dict, x, ref = _torch_reference(18)
  variables = convert_state_dict(state_dict, 18)
  bad = jax.tree_util.tree_map_with_path(
      lambda p, a: a.transpose(1, 0, 2, 3) if p[-1].key == 'kernel' and a.ndim == 4 else a, variables)
  out = _flax_outputs(18, bad, x)
  assert _rel_err(out['stage1'], ref['stage1']) > 1e-2


# ---------------------------------------------------------------------------------------------------------
# The converter on in-memory state dicts (no torch needed).

def test_convert_layout_and_dtypes():
  sd = _table_state_dict(18)
  sd['layer2.0.bn1.running_var'] = np.abs(sd['layer2.0.bn1.running_var']).astype(np.float64)  # cast
  v = convert_state_dict(sd, 18)
  assert set(v) == {'params', 'batch_stats'}
  assert all(a.dtype == np.float32 for a in jax.tree.leaves(v))
  w = sd['layer2.0.conv1.weight']  # (O, I, H, W)
  k = v['params']['stage2']['block0']['conv1']['conv']['kernel']  # (H, W, I, O)
  assert k.shape == (3, 3, 64, 128) and k[2, 0, 5, 7] == w[7, 5, 2, 0]
  np.testing.assert_array_equal(v['params']['fc']['kernel'], sd['fc.weight'].T)
  np.testing.assert_array_equal(v['params']['fc']['bias'], sd['fc.bias'])
  np.testing.assert_array_equal(v['params']['stage2']['block0']['downsample']['conv']['kernel'][0, 0],
                                sd['layer2.0.downsample.0.weight'][:, :, 0, 0].T)
  bn = 'layer2.0.downsample.1'
  np.testing.assert_array_equal(v['params']['stage2']['block0']['downsample']['bn']['scale'], sd[f'{bn}.weight'])
  np.testing.assert_array_equal(v['batch_stats']['stem']['conv1']['bn']['mean'], sd['bn1.running_mean'])
  np.testing.assert_array_equal(v['batch_stats']['stage2']['block0']['conv1']['bn']['var'],
                                sd['layer2.0.bn1.running_var'].astype(np.float32))


def test_refuses_state_dict_of_another_depth():
  sd = _table_state_dict(18)
  with pytest.raises(ConversionError) as info:
    convert_state_dict(sd, 50)
  e, msg = info.value, str(info.value)
  assert isinstance(e, ValueError)
  expected_missing = sorted(set(key_table(50).entries) - set(sd))
  assert e.missing == expected_missing and e.unexpected == []  # ResNet18's key names are ResNet50's too
  assert len(e.mismatched) == 24  # but not its shapes: e.g. layer1.0.conv1 is 3x3 in ResNet18, 1x1 in 50
  assert f'missing keys ({len(expected_missing)})' in msg and expected_missing[0] in msg
  assert 'mis-shaped keys (24)' in msg
  assert 'layer1.0.conv1.weight: shape (64, 64, 3, 3), expected (64, 64, 1, 1)' in msg
  assert 'ResNet50' in msg and 'depth=18' in msg  # what was expected, and the hint
  assert '... and' in msg  # long lists are cut


def test_refuses_larger_depth_for_smaller_model():
  with pytest.raises(ConversionError, match=r'unexpected keys \(96\): layer1\.2\.bn1\.bias[\s\S]*depth=34') as info:
    convert_state_dict(_table_state_dict(34), 18)
  assert 'layer3.5.conv2.weight' in info.value.unexpected and not info.value.missing


def test_refuses_mis_shaped_tensor_naming_it():
  sd = _table_state_dict(18)
  sd['layer3.1.conv2.weight'] = np.zeros((256, 256, 1, 3), np.float32)
  with pytest.raises(ConversionError) as info:
    convert_state_dict(sd, 18)
  assert info.value.mismatched == [('layer3.1.conv2.weight',
                                    'shape (256, 256, 1, 3), expected (256, 256, 3, 3)')]
  assert not info.value.missing and not info.value.unexpected
  assert 'layer3.1.conv2.weight: shape (256, 256, 1, 3), expected (256, 256, 3, 3)' in str(info.value)


def test_refuses_extra_and_non_float_keys():
  sd = _table_state_dict(18)
  sd['layer1.0.bn1.extra'] = np.zeros(64, np.float32)
  sd['fc.bias'] = np.zeros(1000, np.int32)
  with pytest.raises(ConversionError) as info:
    convert_state_dict(sd, 18)
  assert info.value.unexpected == ['layer1.0.bn1.extra']
  assert info.value.mismatched == [('fc.bias', 'dtype int32 is not floating point')]


def test_classifier_options():
  sd = _table_state_dict(18)
  v = convert_state_dict(sd, 18, include_classifier=False)
  assert 'fc' not in v['params']
  backbone = {k: a for k, a in sd.items() if not k.startswith('fc.')}
  assert jax.tree.all(jax.tree.map(np.array_equal, convert_state_dict(backbone, 18, include_classifier=False),
                                   v))
  with pytest.raises(ConversionError, match=r'missing keys \(2\): fc.bias, fc.weight[\s\S]*--no-classifier'):
    convert_state_dict(backbone, 18)
  sd10 = dict(sd, **{'fc.weight': np.zeros((10, 512), np.float32), 'fc.bias': np.zeros(10, np.float32)})
  assert convert_state_dict(sd10, 18)['params']['fc']['kernel'].shape == (512, 10)
  with pytest.raises(ConversionError, match=r'fc.weight: shape \(10, 512\), expected \(1000, 512\)'):
    convert_state_dict(sd10, 18, num_classes=1000)


def test_accepts_wrapped_and_dataparallel_state_dicts():
  sd = _table_state_dict(18)
  ref = convert_state_dict(sd, 18)
  for wrapped in ({'state_dict': sd, 'epoch': 3}, {'model': {f'module.{k}': a for k, a in sd.items()}}):
    assert jax.tree.all(jax.tree.map(np.array_equal, convert_state_dict(wrapped, 18), ref))
  with pytest.raises(ConversionError, match='does not contain a state dict'):
    convert_state_dict({'epoch': 3, 'optimizer': {}}, 18)


def test_bad_depth():
  with pytest.raises(ConversionError, match='depth must be one of'):
    convert_state_dict(_table_state_dict(18), 20)


def test_models_and_converter_do_not_import_torch():
  code = ('import sys, ma_resnet.models.backbones.resnet, ma_resnet.models.layers, ma_resnet.convert, '
          'ma_resnet.convert.torchvision, ma_resnet.convert.__main__\n'
          'assert "torch" not in sys.modules, "torch imported"\n'
          'assert "orbax.checkpoint" not in sys.modules, "orbax imported"\n')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints and the command line.

def test_save_converted_writes_nothing_on_failure(tmp_path, monkeypatch):
  variables = {'params': {'a': {'kernel': np.ones((2, 3), np.float32)}},
               'batch_stats': {'a': {'mean': np.zeros(3, np.float32)}}}

  def fail(*args):
    raise OSError('simulated failure')

  monkeypatch.setattr(files.os, 'replace', fail)
  with pytest.raises(OSError, match='simulated'):
    save_converted(variables, {'format': checkpoint_io.FORMAT}, tmp_path / 'new' / 'out')
  assert os.listdir(tmp_path) == []


@pytest.fixture(scope='module')
def resnet18_pth(tmp_path_factory):
  """A torchvision ResNet18 state dict (random weights) saved with torch.save."""
  torchvision_resnet_or_skip()
  import torch
  state_dict, _, _ = _torch_reference(18)
  path = tmp_path_factory.mktemp('pth') / 'resnet18.pth'
  torch.save(state_dict, path)
  return path, state_dict


def test_cli_happy_path_round_trip(resnet18_pth, tmp_path, capsys):
  path, state_dict = resnet18_pth
  out = tmp_path / 'converted'
  out.mkdir()  # an existing empty directory is accepted
  assert cli_main(['torchvision', str(path), str(out), '--depth', '18']) == 0
  assert 'wrote' in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path)) == ['converted']  # no temporary left over
  variables, metadata = load_converted(out)
  expected = convert_state_dict(state_dict, 18)
  assert jax.tree.structure(variables) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(expected)):
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
  assert metadata['architecture'] == {'family': 'resnet', 'depth': 18, 'variant': 'torchvision'}
  assert metadata['num_classes'] == 1000
  assert metadata['source']['framework'] == 'torchvision'
  assert metadata['source']['file'] == os.path.abspath(path)
  assert json.loads((out / 'metadata.json').read_text()) == metadata


def test_cli_no_classifier(resnet18_pth, tmp_path):
  path, _ = resnet18_pth
  assert cli_main(['torchvision', str(path), str(tmp_path / 'o'), '--depth', '18', '--no-classifier']) == 0
  variables, metadata = load_converted(tmp_path / 'o')
  assert 'fc' not in variables['params'] and metadata['num_classes'] is None


def test_cli_refuses_other_depth_writing_nothing(resnet18_pth, tmp_path, capsys):
  path, _ = resnet18_pth
  assert cli_main(['torchvision', str(path), str(tmp_path / 'out'), '--depth', '50']) == 1
  err = capsys.readouterr().err
  assert err.startswith('error: state dict does not match torchvision ResNet50')
  assert 'layer1.0.conv3.weight' in err and '--depth 18' in err
  assert os.listdir(tmp_path) == []


def test_cli_refuses_existing_output_and_missing_input(tmp_path, capsys):
  path = tmp_path / 'in.pth'  # never read: both are refused before
  path.write_bytes(b'not read')
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'keep.txt').write_text('x')
  assert cli_main(['torchvision', str(path), str(out), '--depth', '18']) == 1
  assert 'already exists and is not empty' in capsys.readouterr().err
  assert os.listdir(out) == ['keep.txt'] and sorted(os.listdir(tmp_path)) == ['in.pth', 'out']
  assert cli_main(['torchvision', str(tmp_path / 'nope.pth'), str(tmp_path / 'o2'), '--depth', '18']) == 1
  assert 'does not exist' in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path)) == ['in.pth', 'out']


def test_cli_corrupt_file_exits_nonzero_without_traceback(tmp_path):
  pytest.importorskip('torch', reason='torch is not installed (pip install torch==2.13.0)')
  bad = tmp_path / 'corrupt.pth'
  bad.write_bytes(np.random.default_rng(0).bytes(4096))
  out = tmp_path / 'out'
  proc = subprocess.run([sys.executable, '-m', 'ma_resnet.convert', 'torchvision', str(bad), str(out),
                         '--depth', '50'], capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.startswith(f'error: cannot read {bad} as a PyTorch checkpoint'), proc.stderr
  assert 'Traceback' not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
  assert sorted(os.listdir(tmp_path)) == ['corrupt.pth']


def test_load_converted_refuses_other_directories(tmp_path):
  with pytest.raises(ConversionError, match='is not a converted checkpoint'):
    load_converted(tmp_path)
