"""Number for number with the authors' TMANet (PyTorch, mmseg 0.x): ../shared/reference/tmanet."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma_resnet.convert.checkpoint_io import ConversionError
from ma_resnet.convert.tmanet import load_reference

from conftest import SHARED

FOLDER = SHARED / 'reference' / 'tmanet'
CASES = sorted(p.parent.name for p in FOLDER.glob('*/golden.npz')) or ['t2_c19']


def reference_state(case):
  spec = importlib.util.spec_from_file_location('tmanet_reference_weights', FOLDER / 'reference_weights.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.reference_state_dict(str(FOLDER / case / 'params.tsv'))


def settings(golden) -> dict:
  return dict(num_classes=int(golden['num_classes']), memory_length=int(golden['sequence_num']),
              align_corners=bool(golden['align_corners']), key_channels=int(golden['key_channels']),
              value_channels=int(golden['value_channels']))


def rel(ours, reference) -> float:
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


nhwc = lambda a: np.transpose(a, (0, 2, 3, 1))


@pytest.mark.full_size
@pytest.mark.parametrize('case', CASES)
def test_matches_the_authors_code(shared_dir, case):
  golden = np.load(FOLDER / case / 'golden.npz')
  model, variables = load_reference(reference_state(case), **settings(golden))
  t = int(golden['sequence_num'])
  clip = np.transpose(golden['clip_nchw'], (1, 0, 3, 4, 2))  # (T+1, B, C, H, W) -> (B, T+1, H, W, C)
  assert clip.shape[1] == t + 1
  with jax.default_matmul_precision('highest'):
    out, state = jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates']))(variables, clip)
    query_maps = jax.jit(lambda v, x: model.apply(v, x, method=lambda m, x: m.backbone(x)))(variables, clip[:, t])
    aux = jax.jit(lambda v, maps: model.apply(v, maps, method=lambda m, maps: m.aux_head(maps)))(
        variables, {'stage3': query_maps['stage3']})
    head = jax.jit(lambda v, maps: model.apply(v, maps, method=lambda m, maps: m.head(maps)))
  inter = {k: v[0] for k, v in state['intermediates']['temporal'].items()}
  query = lambda a: np.asarray(a).reshape((clip.shape[0], t + 1) + a.shape[1:])[:, t]  # the labelled frame

  errors = {}
  for s in range(1, 5):
    errors[f'query_stage{s}'] = rel(query_maps[f'stage{s}'], nhwc(golden[f'query_stage{s}']))
  memory_keys, memory_values = query(inter['memory_keys']), query(inter['memory_values'])  # (B, T, h, w, C)
  for slot in range(t):
    errors[f'memory_keys[{slot}]'] = rel(memory_keys[:, slot], nhwc(golden['head_memory_keys'][slot]))
    errors[f'memory_values[{slot}]'] = rel(memory_values[:, slot], nhwc(golden['head_memory_values'][slot]))
  errors['query_key'] = rel(query(inter['query_keys']), nhwc(golden['head_query_key']))
  errors['query_value'] = rel(query(inter['query_values']), nhwc(golden['head_query_value']))
  errors['read'] = rel(query(inter['read']), nhwc(golden['head_memory_read']))
  bottleneck = query(inter['bottleneck_out'])
  errors['bottleneck'] = rel(bottleneck, nhwc(golden['head_bottleneck']))
  errors['logits_head'] = rel(head(variables, {'stage4': bottleneck}), nhwc(golden['logits_head']))
  errors['logits'] = rel(out.logits[:, t], nhwc(golden['logits']))
  errors['aux_logits'] = rel(aux, nhwc(golden['aux_logits']))
  bad = {k: f'{v:.2e}' for k, v in errors.items() if not v <= 1e-4}
  assert not bad, f'relative errors above 1e-4: {bad}'

  # The arg-max matches the reference's test output except at near-ties.
  logits = np.asarray(out.logits[0, t])
  prediction = logits.argmax(-1)
  top2 = np.sort(logits, axis=-1)[..., -2:]
  clear = (top2[..., 1] - top2[..., 0]) > 1e-3
  np.testing.assert_array_equal(prediction[clear], golden['seg_pred'][0][clear])
  assert bool(out.enhanced[0, t]) and not bool(out.enhanced[0, :t].any())  # T real earlier frames: frame T only


def test_swapped_memory_frames_change_the_result(shared_dir):
  """Slot i's encoders apply to memory frame i: the order of the memory frames matters (oldest first)."""
  golden = np.load(FOLDER / CASES[0] / 'golden.npz')
  model, variables = load_reference(reference_state(CASES[0]), **settings(golden))
  clip = np.transpose(golden['clip_nchw'], (1, 0, 3, 4, 2))
  t = int(golden['sequence_num'])
  swapped = np.concatenate([clip[:, :t][:, ::-1], clip[:, t:]], axis=1)
  apply = jax.jit(model.apply)
  assert rel(apply(variables, swapped).logits[:, t], apply(variables, clip).logits[:, t]) > 1e-2


def test_unknown_missing_and_misshaped_names_are_refused(shared_dir, tmp_path):
  golden = np.load(FOLDER / CASES[0] / 'golden.npz')
  state = reference_state(CASES[0])
  bad = dict(state)
  del bad['decode_head.memory_key_conv.1.0.conv.weight']
  bad['decode_head.extra.weight'] = np.zeros(3, np.float32)
  bad['decode_head.conv_seg.bias'] = np.zeros(7, np.float32)
  with pytest.raises(ConversionError) as info:
    load_reference(bad, **settings(golden))
  for name in ('decode_head.memory_key_conv.1.0.conv.weight', 'decode_head.extra.weight',
               'decode_head.conv_seg.bias'):
    assert name in str(info.value)
  wrong_t = {**settings(golden), 'memory_length': int(golden['sequence_num']) + 1}
  with pytest.raises(ConversionError, match='missing'):  # a slot the checkpoint does not have
    load_reference(state, **wrong_t)
  # mmseg checkpoints wrap the state dict (and carry num_batches_tracked counters): both are accepted.
  counters = {k.rsplit('.', 1)[0] + '.num_batches_tracked': np.zeros((), np.int64)
              for k in state if k.endswith('running_mean')}
  _, variables = load_reference({'meta': {}, 'state_dict': {**state, **counters}}, **settings(golden))
  kernel = variables['params']['temporal']['memory_key_0']['conv']['conv']['kernel']
  np.testing.assert_array_equal(kernel, np.transpose(state['decode_head.memory_key_conv.1.0.conv.weight'],
                                                     (2, 3, 1, 0)))


def test_reads_pth_files(shared_dir, tmp_path):
  torch = pytest.importorskip('torch', reason='reading .pth files needs torch (pip install torch==2.13.0)')
  golden = np.load(FOLDER / CASES[0] / 'golden.npz')
  state = reference_state(CASES[0])
  path = tmp_path / 'tmanet.pth'
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in state.items()}}, path)
  _, variables = load_reference(str(path), **settings(golden))
  np.testing.assert_array_equal(variables['params']['head']['classifier']['conv']['bias'],
                                state['decode_head.conv_seg.bias'])
  (tmp_path / 'corrupt.pth').write_bytes(b'not a checkpoint')
  with pytest.raises(ConversionError, match='corrupt.pth'):
    load_reference(str(tmp_path / 'corrupt.pth'), **settings(golden))
