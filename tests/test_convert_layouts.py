"""The shared ResNet key tables (`convert.resnet_keys`) of every framework, recognising a file's layout, and the
`convert_weights` entry point / command line for the four frameworks. No torch needed (random numpy state
dicts with each layout's keys; `.safetensors` and `.pdparams` files); the torch-file cases skip without it.
Each framework's naming is checked against that framework's own code in test_convert_{timm,mmcv,paddle}.py.
"""
from __future__ import annotations

import functools
import json
import os
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma_resnet.convert import FRAMEWORKS, ConversionError, checkpoint_io, convert_weights, load_converted
from ma_resnet.convert import mmcv, paddle_resnet, resnet_keys, timm, torchvision
from ma_resnet.convert.__main__ import main as cli_main
from ma_resnet.models.backbones.resnet import DEPTHS, ResNet

try:
  from torch_utils import table_state_dict
except ImportError:  # tests/ imported as a package
  from tests.torch_utils import table_state_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_LAYOUTS = timm.LAYOUTS + mmcv.LAYOUTS + paddle_resnet.LAYOUTS + (torchvision.LAYOUT,)


@functools.cache
def _model_shapes(depth: int, variant: str):
  model = ResNet(depth=depth, variant=variant, num_classes=1000)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  return jax.tree.map(lambda s: tuple(s.shape), shapes)


def _refused(layout, depth: int) -> bool:
  return layout.variant == 'vd' and not layout.stage1_projection and DEPTHS[depth][0] == 'basic'


def _classifier_table(layout, depth, num_classes=1000):
  return resnet_keys.layout_table(layout, depth, num_classes=num_classes, classifier=layout.classifiers[0])


@pytest.mark.parametrize('depth', (18, 26, 50, 101))  # basic / bottleneck, ResNet101's stage-3 numbering
def test_every_layout_maps_onto_the_flax_model(depth):
  """Each layout's table produces exactly the variables tree of ResNet(depth, its variant), classifier
  included; the refused vd layouts (timm / mmcv ResNet18/34-d) lack exactly stage 1's projection."""
  for layout in ALL_LAYOUTS:
    produced = checkpoint_io.table_target_shapes(_classifier_table(layout, depth))
    expected = _model_shapes(depth, layout.variant)
    if _refused(layout, depth):
      block0 = {c: dict(expected[c]['stage1']['block0']) for c in expected}
      for c in block0:
        del block0[c]['downsample']
      assert produced['params']['stage1']['block0'] == block0['params'], layout.name
      assert produced['params']['stage2'] == expected['params']['stage2'], layout.name
    else:
      assert produced == expected, layout.title(depth)


def test_key_names_of_each_layout():
  """A few keys spelled out, read in each framework's source (see test_convert_{timm,mmcv,paddle}.py)."""
  def keys(layout, depth):
    return set(_classifier_table(layout, depth).entries)

  assert {'conv1.3.weight', 'conv1.4.running_var', 'bn1.weight', 'layer2.0.downsample.1.weight',
          'layer2.0.downsample.2.running_mean', 'layer1.0.downsample.1.weight'} <= keys(timm.LAYOUTS[2], 50)
  assert {'stem.6.weight', 'stem.7.bias', 'layer1.0.downsample.1.weight'} <= keys(mmcv.LAYOUTS[1], 50)
  assert {'stem.2.conv.weight', 'stem.2.bn.running_var', 'layer1.0.downsample.0.weight',
          'layer2.0.downsample.1.weight'} <= keys(mmcv.LAYOUTS[3], 50)
  static = keys(paddle_resnet.PADDLECLAS_STATIC, 101)
  assert {'conv1_1_weights', 'bnv1_3_offset', 'res2a_branch1_weights', 'bn2a_branch1_variance',
          'res4b22_branch2c_weights', 'bn5c_branch2b_mean', 'fc_0.w_0', 'fc_0.b_0'} <= static
  assert 'res4w_branch2a_weights' not in static
  assert {'conv1_3._batch_norm._variance', 'bb_0_0.short._conv.weight', 'bb_3_1.conv1._batch_norm.weight',
          'out.weight'} <= keys(paddle_resnet.PADDLESEG, 18)
  assert {'stem.0.bn._mean', 'blocks.0.short.conv.weight', 'blocks.15.conv2.bn.bias',
          'fc.weight'} <= keys(paddle_resnet.PADDLECLAS, 50)
  assert _classifier_table(paddle_resnet.PADDLESEG, 18).entries['out.weight'].shape == (512, 1000)  # (in, out)
  assert _classifier_table(timm.LAYOUTS[0], 18).entries['fc.weight'].shape == (1000, 512)  # (out, in)


# ---------------------------------------------------------------------------------------------------------
# Recognition and refusals (one line each).

@pytest.mark.parametrize('framework,layout', [('timm', layout) for layout in timm.LAYOUTS]
                         + [('mmcv', layout) for layout in mmcv.LAYOUTS]
                         + [('paddle', layout) for layout in paddle_resnet.LAYOUTS])
def test_identify_recognises_each_layout(framework, layout):
  module = {'timm': timm, 'mmcv': mmcv, 'paddle': paddle_resnet}[framework]
  depth = 26 if framework != 'paddle' else 18  # paddle: with the stage-1 projection of a basic-block vd
  state = table_state_dict(_classifier_table(layout, depth), seed=depth)
  variables, found = module.convert_state_dict(state, depth)
  assert found == layout
  assert variables['params']['fc']['kernel'].shape == (512 if depth == 18 else 2048, 1000)


def test_other_depth_is_named_in_one_line():
  state = table_state_dict(_classifier_table(timm.LAYOUTS[2], 101))
  with pytest.raises(ConversionError) as info:
    timm.convert_state_dict(state, 50)
  message = str(info.value)
  assert '\n' not in message
  assert 'timm resnet101d (ResNet101, variant vd), not of a timm ResNet50' in message
  assert '--depth 101' in message


def test_a_state_dict_fitting_no_layout_is_refused_in_one_line():
  """timm's resnet50t (deep stem 24/32/64) has resnet50d's keys, not its shapes."""
  state = table_state_dict(_classifier_table(timm.LAYOUTS[2], 50))
  state['conv1.0.weight'] = np.zeros((24, 3, 3, 3), np.float32)
  state['extra.weight'] = np.zeros(3, np.float32)
  del state['layer4.2.bn3.bias']
  with pytest.raises(ConversionError) as info:
    timm.convert_state_dict(state, 50)
  message, e = str(info.value), info.value
  assert '\n' not in message
  assert message.startswith('the state dict fits no timm ResNet50 layout (timm resnet50, timm resnet50c, '
                            'timm resnet50d); closest: timm resnet50d, with 1 missing (layer4.2.bn3.bias)')
  assert '1 unexpected (extra.weight)' in message
  assert '1 mis-shaped (conv1.0.weight (24, 3, 3, 3), expected (32, 3, 3, 3))' in message
  assert e.missing == ['layer4.2.bn3.bias'] and e.unexpected == ['extra.weight']
  assert [k for k, _ in e.mismatched] == ['conv1.0.weight']


@pytest.mark.parametrize('module,layout', [(timm, timm.LAYOUTS[2]), (mmcv, mmcv.LAYOUTS[1]),
                                           (mmcv, mmcv.LAYOUTS[3])])
def test_vd_without_stage1_projection_is_refused(module, layout):
  """timm resnet18d / mmcv ResNetV1d-34 lack the stage-1 projection of ma_resnet's (PaddleSeg's) vd."""
  for depth in (18, 34):
    with pytest.raises(ConversionError) as info:
      module.convert_state_dict(table_state_dict(_classifier_table(layout, depth)), depth)
    message = str(info.value)
    assert '\n' not in message and layout.title(depth) in message
    assert 'projection shortcut on the first block of stage 1' in message and 'paddle' in message


def test_classifier_handling():
  layout = mmcv.LAYOUTS[0]
  full = table_state_dict(_classifier_table(layout, 18, num_classes=10))
  body = {k: v for k, v in full.items() if not k.startswith('fc.')}
  with pytest.raises(ConversionError, match=r'no classifier \(fc.weight, fc.bias / head.fc.weight, '
                                            r'head.fc.bias\).*--no-classifier'):
    mmcv.convert_state_dict(body, 18)
  variables, _ = mmcv.convert_state_dict(body, 18, include_classifier=False)
  assert 'fc' not in variables['params']
  dropped, _ = mmcv.convert_state_dict(full, 18, include_classifier=False)
  assert jax.tree.all(jax.tree.map(np.array_equal, dropped, variables))
  kept, _ = mmcv.convert_state_dict(full, 18)
  np.testing.assert_array_equal(kept['params']['fc']['kernel'], full['fc.weight'].T)
  assert kept['params']['fc']['bias'].shape == (10,)
  # an mmpretrain ImageClassifier checkpoint: backbone.* and head.fc.*, wrapped under state_dict
  wrapped = {'state_dict': {**{f'backbone.{k}': v for k, v in body.items()},
                            'head.fc.weight': full['fc.weight'], 'head.fc.bias': full['fc.bias']},
             'meta': {'epoch': 100}}
  again, _ = mmcv.convert_state_dict(wrapped, 18)
  assert jax.tree.all(jax.tree.map(np.array_equal, again, kept))


def test_torchvision_converter_points_at_the_right_framework():
  state = table_state_dict(_classifier_table(timm.LAYOUTS[2], 50))
  with pytest.raises(ConversionError, match=r'hint: the keys are those of timm resnet50d \(variant vd\): '
                                            r'convert with the timm converter'):
    torchvision.convert_state_dict(state, 50)


def test_depth_26_is_timm_resnet26():
  state = table_state_dict(_classifier_table(timm.LAYOUTS[0], 26))
  assert 'layer3.1.conv3.weight' in state and 'layer3.2.conv1.weight' not in state
  variables, layout = timm.convert_state_dict(state, 26)
  assert layout.title(26) == 'timm resnet26'
  assert checkpoint_io.table_target_shapes(_classifier_table(layout, 26)) == jax.tree.map(np.shape, variables)


# ---------------------------------------------------------------------------------------------------------
# convert_weights and the command line.

def _write_safetensors(path, state):
  pytest.importorskip('safetensors', reason='safetensors is not installed (pip install -e ".[convert]")')
  from safetensors.numpy import save_file
  save_file({k: v for k, v in state.items()}, str(path))
  return path


def _write_pdparams(path, state, protocol=4):
  with open(path, 'wb') as f:
    pickle.dump(dict(state), f, protocol=protocol)
  return path


@pytest.mark.parametrize('framework,layout,suffix', [
    ('timm', timm.LAYOUTS[1], '.safetensors'),
    ('paddle', paddle_resnet.PADDLECLAS_STATIC, '.pdparams'),
    ('paddle', paddle_resnet.PADDLECLAS, '.pdparams'),
])
def test_convert_weights_round_trip(framework, layout, suffix, tmp_path):
  state = table_state_dict(_classifier_table(layout, 18))
  if suffix == '.safetensors':
    state = {k: v for k, v in state.items() if v.dtype == np.float32}
  path = (_write_safetensors if suffix == '.safetensors' else _write_pdparams)(tmp_path / f'w{suffix}', state)
  out, metadata = convert_weights(framework, path, tmp_path / 'out', depth=18)
  assert out == str(tmp_path / 'out')
  variables, read = load_converted(out)
  assert read == metadata == json.loads((tmp_path / 'out' / 'metadata.json').read_text())
  assert metadata['architecture'] == {'family': 'resnet', 'depth': 18, 'variant': layout.variant}
  assert metadata['layout'] == layout.title(18) and metadata['num_classes'] == 1000
  assert metadata['source']['framework'] == framework and metadata['source']['file'] == str(path)
  expected = checkpoint_io.apply_table(state, _classifier_table(layout, 18), 'expected')
  assert jax.tree.structure(variables) == jax.tree.structure(expected)
  assert jax.tree.all(jax.tree.map(np.array_equal, variables, expected))


def test_convert_weights_refuses_without_writing(tmp_path):
  state = table_state_dict(resnet_keys.layout_table(paddle_resnet.PADDLESEG, 50))  # no classifier
  path = _write_pdparams(tmp_path / 'r50.pdparams', state)
  with pytest.raises(ConversionError, match='unknown framework'):
    convert_weights('caffe', path, tmp_path / 'o', depth=50)
  with pytest.raises(ConversionError, match=r'r50.pdparams: the keys are those of PaddleSeg ResNet50_vd '
                                            r'\(ResNet50, variant vd\), not of a paddle ResNet101'):
    convert_weights('paddle', path, tmp_path / 'o', depth=101)
  with pytest.raises(ConversionError, match='fits no timm ResNet50 layout'):  # a Paddle file given as timm
    convert_weights('timm', path, tmp_path / 'o', depth=50)
  with pytest.raises(ConversionError, match='has no classifier'):  # PaddleSeg backbones have none
    convert_weights('paddle', path, tmp_path / 'o', depth=50)
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'keep').write_text('x')
  with pytest.raises(ConversionError, match='not empty'):
    convert_weights('paddle', path, tmp_path / 'full', depth=50, include_classifier=False)
  with pytest.raises(ConversionError, match='depth must be one of'):
    convert_weights('paddle', path, tmp_path / 'o', depth=20)
  assert sorted(os.listdir(tmp_path)) == ['full', 'r50.pdparams']
  assert os.listdir(tmp_path / 'full') == ['keep']
  out, metadata = convert_weights('paddle', path, tmp_path / 'o', depth=50, include_classifier=False)
  assert metadata['num_classes'] is None and metadata['architecture']['variant'] == 'vd'


def test_cli_prints_one_line(tmp_path, capsys):
  state = table_state_dict(_classifier_table(mmcv.LAYOUTS[2], 18))
  path = _write_safetensors(tmp_path / 'v1c.safetensors',
                            {k: v for k, v in state.items() if v.dtype == np.float32})
  assert cli_main(['mmcv', str(path), str(tmp_path / 'out'), '--depth', '18', '--no-classifier']) == 0
  out = capsys.readouterr().out
  assert out == f'wrote {tmp_path / "out"} (ResNet18, variant v1c, classifier: none)\n'
  assert cli_main(['mmcv', str(path), str(tmp_path / 'o2'), '--depth', '34']) == 1
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1 and '--depth 18' in err
  assert sorted(os.listdir(tmp_path)) == ['out', 'v1c.safetensors']
  assert set(FRAMEWORKS) == {'torchvision', 'timm', 'mmcv', 'paddle'}


def test_safetensors_and_pdparams_convert_without_torch(tmp_path):
  """The command line on a timm .safetensors and a Paddle .pdparams file never imports torch."""
  timm_state = table_state_dict(_classifier_table(timm.LAYOUTS[2], 26))
  _write_safetensors(tmp_path / 'resnet26d.safetensors',
                     {k: v for k, v in timm_state.items() if v.dtype == np.float32})
  _write_pdparams(tmp_path / 'r18vd.pdparams', table_state_dict(_classifier_table(paddle_resnet.PADDLESEG, 18)),
                  protocol=2)
  code = (
      'import sys\n'
      'from ma_resnet.convert.__main__ import main\n'
      f'assert main(["timm", "{tmp_path}/resnet26d.safetensors", "{tmp_path}/a", "--depth", "26"]) == 0\n'
      f'assert main(["paddle", "{tmp_path}/r18vd.pdparams", "{tmp_path}/b", "--depth", "18", "--no-classifier"])'
      ' == 0\n'
      'assert "torch" not in sys.modules, "torch imported"\n')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == [
      f'wrote {tmp_path}/a (ResNet26, variant vd, classifier: 1000)',
      f'wrote {tmp_path}/b (ResNet18, variant vd, classifier: none)']
