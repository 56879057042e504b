"""Number for number with the authors' STF + MAR (PyTorch, jfzhuang/ST_Memory): ../shared/reference/stf_mar.

Every case folder holding a golden.npz is checked; sizes (feature map, classes, upsampled size) are read from
the npz and the embeddings' stored size from the case's params.tsv, so new cases need no change here.
"""
import functools
import importlib.util

import jax
import numpy as np
import pytest

from ma_resnet.convert.checkpoint_io import ConversionError
from ma_resnet.convert.stf_mar import load_reference, reference_rules
from ma_resnet.models.ops import resize_bilinear

from conftest import SHARED

FOLDER = SHARED / 'reference' / 'stf_mar'
CASES = sorted(p.parent.name for p in FOLDER.glob('*/golden.npz')) or ['f32x64']


@functools.lru_cache(maxsize=None)
def _weights_module():
  spec = importlib.util.spec_from_file_location('stf_mar_reference_weights', FOLDER / 'reference_weights.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@functools.lru_cache(maxsize=None)
def _reference_state(case):
  return _weights_module().reference_state_dict(str(FOLDER / case))


def reference_state(case) -> dict:
  """The golden run's weights (a fresh dict of shared arrays: tests may add or drop names)."""
  return dict(_reference_state(case))


def rel(ours, reference) -> float:
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def nchw(a):
  return np.transpose(np.asarray(a), (0, 3, 1, 2))


def features_of(golden):
  """feats_u8 (3, B, C, h, w) -> float32 (B, 3, h, w, C), frames t-1, t, t+1 (exact: u8 x 1/8)."""
  feats = golden['feats_u8'].astype(np.float32) * golden['feats_scale']
  return np.transpose(feats, (1, 0, 3, 4, 2))


@pytest.mark.full_size
@pytest.mark.parametrize('case', CASES)
def test_matches_the_authors_code(shared_dir, case):
  golden = np.load(FOLDER / case / 'golden.npz')
  num_classes = int(golden['stf_logits'].shape[1])
  model, variables = load_reference(reference_state(case), num_classes=num_classes)
  features = features_of(golden)
  h, w = features.shape[2:4]
  with jax.default_matmul_precision('highest'):
    out, state = jax.jit(lambda v, x: model.apply(v, x, method=model.refine, mutable=['intermediates']))(
        variables, features)
  inter = state['intermediates']['temporal']
  channels = golden['chan_idx']
  up_h, up_w = 8 * h, 8 * w
  up_rows, up_cols = golden['up_rows'], golden['up_cols']

  errors = {}
  pe_enc = np.asarray(inter['stf']['pe_enc'][0])  # (3, h, w, C)
  pe_dec = np.asarray(inter['stf']['pe_dec'][0])  # (1, h, w, C)
  errors['pe_enc_resized'] = rel(np.transpose(pe_enc, (3, 0, 1, 2))[None][:, channels], golden['pe_enc_resized_sel'])
  errors['pe_dec_resized'] = rel(np.transpose(pe_dec, (3, 0, 1, 2))[None][:, channels], golden['pe_dec_resized_sel'])
  encoded = np.asarray(inter['stf']['encoder_out'][0])  # (B, 3, h, w, C)
  errors['enc_out'] = rel(np.transpose(encoded, (0, 4, 1, 2, 3))[:, channels], golden['enc_out_sel'])
  errors['stf_out'] = rel(nchw(inter['stf_out'][0])[:, channels], golden['stf_out_sel'])
  errors['mar_out'] = rel(nchw(inter['mar_out'][0])[:, channels], golden['mar_out_sel'])
  for name in ('stf', 'mar'):
    logits = out[f'{name}_logits']
    assert logits.shape == (features.shape[0], h, w, num_classes)
    errors[f'{name}_logits'] = rel(nchw(logits), golden[f'{name}_logits'])
    # The segmenter's resize to the frame size (8h x 8w) is the code's x8 `interpolate` (align_corners False).
    up = nchw(resize_bilinear(logits, (up_h, up_w), align_corners=model.align_corners))
    errors[f'{name}_logits_up'] = rel(up[:, :, up_rows][:, :, :, up_cols], golden[f'{name}_logits_up_sel'])
  bad = {k: f'{v:.2e}' for k, v in errors.items() if not v <= 1e-4}
  assert not bad, f'relative errors above 1e-4: {bad} (all: {errors})'
  assert len(errors) == 9  # every stored array


@pytest.mark.full_size
def test_frame_order_matters_and_mar_changes_the_logits(shared_dir):
  """Frames are (t-1, t, t+1): the decoder's query is the middle one, so swapping it with a neighbour changes the
  result; MAR moves the logits (it is not an identity)."""
  golden = np.load(FOLDER / CASES[0] / 'golden.npz')
  model, variables = load_reference(reference_state(CASES[0]), num_classes=int(golden['stf_logits'].shape[1]))
  features = features_of(golden)
  refine = jax.jit(lambda v, x: model.apply(v, x, method=model.refine))
  out = refine(variables, features)
  swapped = refine(variables, features[:, [1, 0, 2]])
  assert rel(swapped['stf_logits'], out['stf_logits']) > 1e-2
  assert rel(out['mar_logits'], out['stf_logits']) > 1e-2


def test_unknown_missing_and_misshaped_names_are_refused(shared_dir):
  state = reference_state(CASES[0])
  bad = dict(state)
  del bad['STF.decoder.layers.0.multihead_attn.self_attn_long.in_proj_weight']
  bad['STF.extra.weight'] = np.zeros(3, np.float32)
  bad['MAR.HEdecoder.norm2.bias'] = np.zeros(7, np.float32)
  with pytest.raises(ConversionError) as info:
    load_reference(bad, num_classes=19)
  for name in ('STF.decoder.layers.0.multihead_attn.self_attn_long.in_proj_weight', 'STF.extra.weight',
               'MAR.HEdecoder.norm2.bias'):
    assert name in str(info.value)
  assert info.value.missing and info.value.unexpected and info.value.mismatched
  with pytest.raises(ConversionError, match='MAR.memory_key'):  # K_L x classes rows: 190 is not 10 x 18
    load_reference(state, num_classes=18)


def test_names_map_onto_the_documented_paths(shared_dir):
  state = reference_state(CASES[0])
  _, variables = load_reference({'state_dict': state}, num_classes=19)  # a wrapped state dict is accepted
  stf = variables['params']['temporal']['stf']
  weight = state['STF.encoder.layers.0.self_attn.self_attn_short.in_proj_weight']
  c = weight.shape[1]
  for i, kind in enumerate(('query', 'key', 'value')):
    np.testing.assert_array_equal(stf['encoder_layer0']['self_attn']['short'][kind]['kernel'],
                                  weight[i * c:(i + 1) * c].T)
  np.testing.assert_array_equal(stf['pe_enc'], np.transpose(state['STF.pe_enc'][0], (1, 2, 3, 0)))
  mar = variables['params']['temporal']['mar']
  np.testing.assert_array_equal(mar['memory_value'], state['MAR.memory_value'][0])
  np.testing.assert_array_equal(mar['to_q']['proj1']['kernel'], state['MAR.HEdecoder.attn.to_q.1.weight'].T)
  np.testing.assert_array_equal(variables['params']['head']['classifier']['conv']['kernel'][0, 0],
                                state['pspnet.decode_head.conv_seg.weight'][:, :, 0, 0].T)


def test_the_authors_whole_model_with_its_pspnet(shared_dir):
  """A state dict of the authors' whole SegRefine (PSPNet-50 + STF + MAR, mmseg names, auxiliary head and BN
  counters included) converts completely: every backbone and PSP variable of the model is filled."""
  state = reference_state(CASES[0])
  model, _ = load_reference(state, num_classes=19)
  rules, ignored = reference_rules(model, with_pspnet=True)
  rng = np.random.default_rng(0)
  whole = {name: state[name] if name in state else rng.standard_normal(rule.shape).astype(np.float32)
           for name, rule in rules.items()}
  whole.update({name: np.zeros((), np.int64) for name in ignored if name.endswith('num_batches_tracked')})
  whole['pspnet.auxiliary_head.conv_seg.weight'] = np.zeros((19, 256, 1, 1), np.float32)
  model, variables = load_reference(whole, num_classes=19)
  shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 1, 128, 128, 3), np.float32))
  expected = jax.tree_util.tree_flatten_with_path({k: shapes[k] for k in ('params', 'batch_stats')})[0]
  got = {jax.tree_util.keystr(p): leaf.shape for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
  assert {jax.tree_util.keystr(p): leaf.shape for p, leaf in expected} == got
  bin2 = variables['batch_stats']['backbone']['psp']['bin2']['bn']['mean']
  np.testing.assert_array_equal(bin2, whole['pspnet.decode_head.psp_modules.2.1.bn.running_mean'])


def test_reads_pth_files(shared_dir, tmp_path):
  torch = pytest.importorskip('torch', reason='reading .pth files needs torch (pip install torch==2.13.0)')
  state = reference_state(CASES[0])
  path = tmp_path / 'stf_mar.pth'
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
  _, variables = load_reference(str(path), num_classes=19)
  np.testing.assert_array_equal(variables['params']['head']['classifier']['conv']['bias'],
                                state['pspnet.decode_head.conv_seg.bias'])
  (tmp_path / 'corrupt.pth').write_bytes(b'not a checkpoint')
  with pytest.raises(ConversionError, match='corrupt.pth'):
    load_reference(str(tmp_path / 'corrupt.pth'), num_classes=19)
