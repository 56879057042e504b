"""Number for number with the authors' PaddlePaddle MA-ResNet50 + DeepLabV3+ (../shared/reference)."""
import importlib.util
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma_resnet.convert.paddle import ConversionError, load_reference, reference_name_table

from conftest import SHARED

# Every reference case present (t<T>_r<ratio digits>, e.g. t1_r025 = T 1, r 0.25); the check is the same.
CASES = sorted(p.parent.name for p in (SHARED / 'reference' / 'paddle_ma_resnet').glob('*/golden.npz'))
CASES = CASES or ['t1_r025']


def reference_state(shared_dir, case):
  folder = shared_dir / 'reference' / 'paddle_ma_resnet'
  spec = importlib.util.spec_from_file_location('reference_weights', folder / 'reference_weights.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.reference_state_dict(str(folder / case / 'params.tsv')), folder / case


def case_config(case):
  """t1_r025 -> memory_length 1, ratio 0.25."""
  t, r = case.split('_')
  return int(t[1:]), float('0.' + r[2:]) if r.startswith('r0') else float(r[1:])


def rel(ours, reference):
  return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


@pytest.mark.full_size
@pytest.mark.parametrize('case', CASES)
def test_matches_the_authors_code(shared_dir, case):
  state, folder = reference_state(shared_dir, case)
  memory_length, ratio = case_config(case)
  num_classes = state['head.decoder.conv.bias'].shape[0]
  model, variables = load_reference(state, num_classes=num_classes, memory_length=memory_length, ratio=ratio)
  golden = np.load(folder / 'golden.npz')
  clip = np.transpose(golden['clip_nchw'], (1, 0, 3, 4, 2))  # (T, B, C, H, W) -> (B, T, H, W, C)
  out = jax.jit(model.apply)(variables, clip)
  nhwc = lambda a: np.transpose(a, (0, 2, 3, 1))
  frames = [i for i in range(clip.shape[1]) if f'frame{i}_logits' in golden]
  assert frames, 'no non-warm-up frame in the golden file'
  for i in range(clip.shape[1]):
    assert bool(out.enhanced[0, i]) == (i in frames), f'frame {i}: warm-up differs from the reference'
  for i in frames:
    for s in range(1, 5):
      err = rel(np.asarray(out.stage_features[f'stage{s}'][:, i]), nhwc(golden[f'frame{i}_stage{s}']))
      assert err <= 1e-4, f'frame {i} stage{s}: relative error {err:.2e}'
    err = rel(np.asarray(out.logits[:, i]), nhwc(golden[f'frame{i}_logits']))
    assert err <= 1e-4, f'frame {i} logits: relative error {err:.2e}'


def test_name_table_covers_every_variable():
  from ma_resnet.convert.paddle import reference_model
  model = reference_model(11)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1, 64, 64, 3))))
  flax_paths = {(c,) + tuple(k.key for k in path) for c in ('params', 'batch_stats')
                for path, _ in jax.tree_util.tree_flatten_with_path(shapes[c])[0]}
  table_paths = {(c,) + p for c, p, _ in reference_name_table().values()}
  assert flax_paths == table_paths


@pytest.fixture(scope='module')
def state(shared_dir):
  return reference_state(shared_dir, 't1_r025')[0]


def test_unknown_missing_and_misshaped_names_are_refused(state, tmp_path):
  bad = dict(state)
  del bad['backbone.bb_2_3.conv1._conv.weight']
  bad['backbone.extra.weight'] = np.zeros(3, np.float32)
  bad['head.decoder.conv.bias'] = np.zeros(7, np.float32)
  with pytest.raises(ConversionError) as info:
    load_reference(bad, num_classes=11)
  message = str(info.value)
  for name in ('backbone.bb_2_3.conv1._conv.weight', 'backbone.extra.weight', 'head.decoder.conv.bias'):
    assert name in message
  with pytest.raises(ConversionError, match='mis-shaped'):
    load_reference(state, num_classes=19)  # wrong class count
  with pytest.raises(ConversionError, match='mis-shaped'):
    load_reference(state, num_classes=11, ratio=0.5)


def test_reads_pdparams_files(state, tmp_path):
  path = tmp_path / 'model.pdparams'
  with open(path, 'wb') as f:
    pickle.dump({k: v for k, v in state.items()}, f, protocol=4)
  _, variables = load_reference(str(path), num_classes=11)
  kernel = variables['params']['backbone']['stem']['conv1']['conv']['kernel']
  np.testing.assert_array_equal(kernel, np.transpose(state['backbone.conv1_1._conv.weight'], (2, 3, 1, 0)))
  corrupt = tmp_path / 'corrupt.pdparams'
  corrupt.write_bytes(b'\x80\x04not a pickle at all')
  with pytest.raises(ConversionError, match='corrupt.pdparams'):
    load_reference(str(corrupt), num_classes=11)
  with pytest.raises(ConversionError, match='no such file'):
    load_reference(str(tmp_path / 'absent.pdparams'), num_classes=11)
