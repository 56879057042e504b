"""STF + MAR beyond the temporal interface (tests/test_temporal.py): the edge rules of a clip and of a stream,
the one-frame delay, feature sizes, the frozen-STF stage, MAR's memory files, the PSPNet extractor, and the
embeddings' resize against torch."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma_resnet import train_config
from ma_resnet.models import build, default_model_config
from ma_resnet.models.temporal.stf import embedding_taps, resize_embedding

H, W, CLASSES = 32, 48, 4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(edge='repeat', **stf):
  """ResNet18 at output stride 16 (stage 4: 2x3), PSP bottleneck of 16 channels, STF + MAR, classifier."""
  config = default_model_config()
  config.update(temporal='stf', backbone='pspnet', depth=18, variant='torchvision', output_stride=16,
                multi_grid=None, head='classifier')
  config.head_options = {'in_stage': 'psp'}
  config.pspnet.update(stage='stage4', channels=16)
  config.stf.update(heads=2, ffn_channels=8, block_size=(1, 3), embedding_size=(4, 6), mar=True, memory_per_class=2,
                    edge=edge)
  config.stf.update(**stf)
  return config


@functools.lru_cache(maxsize=None)
def tiny(edge='repeat'):
  model = build(tiny_config(edge), CLASSES)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1, H, W, 3)))
  return model, variables


def frames(b=2, t=4, seed=1):
  return jax.random.normal(jax.random.key(seed), (b, t, H, W, 3))


def psp_maps(model, variables, clip):
  """The PSP bottleneck of every frame: (B, T, h, w, C)."""
  b, t = clip.shape[:2]
  maps = model.apply(variables, clip.reshape((b * t,) + clip.shape[2:]),
                     method=lambda m, x: m.backbone(x, stages=('psp',))['psp'])
  return maps.reshape((b, t) + maps.shape[1:])


def fused(model, variables, window):
  """STF + MAR on an explicit window (B, 3, h, w, C) -> (B, h, w, C)."""
  return model.apply(variables, window, method=lambda m, w: m.temporal.refine(w)['mar'])


@pytest.mark.parametrize('edge', ['repeat', 'mirror'])
def test_clip_windows_and_edge_rules(edge):
  model, variables = tiny(edge)
  clip = frames()
  out = jax.jit(model.apply)(variables, clip)
  f = psp_maps(model, variables, clip)
  first = (f[:, 0], f[:, 0], f[:, 1]) if edge == 'repeat' else (f[:, 1], f[:, 0], f[:, 1])
  last = (f[:, 2], f[:, 3], f[:, 3]) if edge == 'repeat' else (f[:, 2], f[:, 3], f[:, 2])
  for t, window in ((0, first), (1, (f[:, 0], f[:, 1], f[:, 2])), (3, last)):
    np.testing.assert_allclose(out.stage_features['psp'][:, t], fused(model, variables, jnp.stack(window, 1)),
                               atol=2e-5)
  np.testing.assert_array_equal(out.enhanced, [[False, True, True, False]] * 2)  # both neighbours real
  np.testing.assert_array_equal(out.ready, np.ones((2, 4), bool))


def test_a_reset_inside_a_clip_ends_the_sequence_before_it():
  model, variables = tiny()
  clip = frames()
  reset = jnp.array([[False, False, True, False], [False] * 4])
  out = jax.jit(model.apply)(variables, clip, None, reset)
  f = psp_maps(model, variables, clip)
  # Sample 0: frame 1 is the last of its sequence (t+1 repeated), frame 2 the first of the next (t-1 repeated).
  np.testing.assert_allclose(out.stage_features['psp'][0, 1],
                             fused(model, variables, jnp.stack([f[:, 0], f[:, 1], f[:, 1]], 1))[0], atol=2e-5)
  np.testing.assert_allclose(out.stage_features['psp'][0, 2],
                             fused(model, variables, jnp.stack([f[:, 2], f[:, 2], f[:, 3]], 1))[0], atol=2e-5)
  np.testing.assert_array_equal(out.enhanced[0], [False, False, False, False])


def test_stream_is_one_frame_behind_with_ready_and_flush():
  model, variables = tiny()
  clip = frames(b=1, t=3)
  step = jax.jit(functools.partial(model.apply, method=model.step))
  memory = model.init_memory(1, (H, W))
  first = step(variables, clip[:, 0], memory)
  assert not bool(first.ready[0])  # nothing before the first frame of a stream
  second = step(variables, clip[:, 1], first.memory)
  assert bool(second.ready[0])
  aligned = jax.jit(model.apply)(variables, clip).logits
  np.testing.assert_allclose(second.logits, aligned[:, 0], atol=1e-5)  # fed frame 1: frame 0's output
  third = step(variables, clip[:, 2], second.memory)
  flushed = jax.jit(functools.partial(model.apply, method=model.flush))(variables, clip[:, 2], third.memory)
  np.testing.assert_allclose(flushed.logits, aligned[:, 2], atol=1e-5)
  # A new sequence's first frame emits the previous sequence's last frame (its t+1 repeated), then restarts.
  other = frames(b=1, t=1, seed=5)[:, 0]
  switched = step(variables, other, third.memory, jnp.array([True]))
  np.testing.assert_allclose(switched.logits, flushed.logits, atol=1e-5)
  alone = step(variables, frames(b=1, t=1, seed=6)[:, 0], switched.memory)
  fresh = jax.jit(model.apply)(variables, jnp.concatenate([other[:, None], frames(b=1, t=1, seed=6)], 1))
  np.testing.assert_allclose(alone.logits, fresh.logits[:, 0], atol=1e-5)
  assert int(switched.memory.seen[0]) == 1


def test_feature_sizes_must_be_whole_blocks():
  model = build(tiny_config(block_size=(16, 16)), CLASSES)
  with pytest.raises(ValueError, match=r'multiples of the 16x16 ICSA blocks .* got 2x3'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1, H, W, 3)))
  assert build(tiny_config(block_size=(2, 3)), CLASSES)  # 2x3 features: one block


def test_frozen_stf_passes_no_gradient_and_mar_trains():
  config = tiny_config(freeze_stf=True)
  config.frozen = ('backbone',)
  model = build(config, CLASSES)
  _, variables = tiny()

  def loss(params, clip):
    out, _ = model.apply({**variables, 'params': params}, clip, train=True, mutable=['batch_stats'],
                         rngs={'dropout': jax.random.key(0)})
    return jnp.mean(out.logits ** 2)

  grads = jax.jit(jax.grad(loss))(variables['params'], frames())
  magnitude = lambda tree: max(float(jnp.abs(g).max()) for g in jax.tree.leaves(tree))
  assert magnitude(grads['temporal']['stf']) == 0 and magnitude(grads['backbone']) == 0
  assert magnitude(grads['temporal']['mar']) > 0 and magnitude(grads['head']) > 0


def test_memory_init_reads_the_generated_files(tmp_path):
  rng = np.random.default_rng(0)
  keys = rng.standard_normal((2 * CLASSES, 16)).astype(np.float32)
  prototypes = rng.standard_normal((CLASSES, 16)).astype(np.float32)
  np.save(tmp_path / 'key.npy', keys)
  np.save(tmp_path / 'value.npy', prototypes)
  model = build(tiny_config(memory_init=str(tmp_path)), CLASSES)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1, H, W, 3)))['params']['temporal']['mar']
  np.testing.assert_array_equal(params['memory_key'], keys)
  np.testing.assert_array_equal(params['memory_value'], np.repeat(prototypes, 2, axis=0))  # row i: class i // K_L

  config = train_config.load_config(os.path.join(REPO, 'configs', 'stf_synthetic.py:mar'))
  config.model.stf.memory_init = str(tmp_path / 'absent')
  with pytest.raises(ValueError, match='absent/key.npy does not exist.*mar_memory'):
    train_config.validate(config)
  np.save(tmp_path / 'key.npy', keys[:3])
  config.model.stf.update(memory_init=str(tmp_path), memory_per_class=2)
  config.model.pspnet.channels = 16
  with pytest.raises(ValueError, match=r'key.npy holds a float32 array of shape \(3, 16\)'):
    train_config.validate(config)


def test_pspnet_extractor_plus_classifier_is_mmseg_pspnet():
  """backbone 'pspnet' + classifier on 'psp' = ResNet + mmseg's PSPHead (same variables, moved)."""
  config = tiny_config()
  config.temporal = 'plain'
  per_frame = build(config, CLASSES)
  reference = default_model_config()
  reference.update(temporal='plain', depth=18, variant='torchvision', output_stride=16, multi_grid=None, head='pspnet')
  reference.head_options = {'channels': 16}
  psp_head = build(reference, CLASSES)
  clip = frames()
  variables = jax.jit(per_frame.init)(jax.random.key(0), clip[:, :1])
  params, stats = dict(variables['params']), dict(variables['batch_stats'])
  backbone, backbone_stats = dict(params['backbone']), dict(stats['backbone'])
  moved = {'params': {'backbone': backbone, 'head': {'psp': backbone.pop('psp'), **params['head']}},
           'batch_stats': {'backbone': backbone_stats, 'head': {'psp': backbone_stats.pop('psp')}}}
  np.testing.assert_allclose(jax.jit(per_frame.apply)(variables, clip).logits,
                             jax.jit(psp_head.apply)(moved, clip).logits, atol=1e-5)
  assert per_frame.backbone.feature_shapes((H, W))['psp'] == (2, 3, 16)


@pytest.mark.parametrize('size', [(32, 64), (48, 80), (128, 256), (96, 192), (16, 16)])
def test_embedding_resize_is_torch_trilinear(size):
  torch = pytest.importorskip('torch', reason='the comparison needs torch')
  rng = np.random.default_rng(0)
  stored = rng.standard_normal((3, 128, 256, 4)).astype(np.float32)
  ours = np.asarray(resize_embedding(jnp.asarray(stored), size))
  x = torch.from_numpy(np.ascontiguousarray(np.transpose(stored, (3, 0, 1, 2))[None]))
  theirs = torch.nn.functional.interpolate(x, size=(3,) + size, mode='trilinear').numpy()[0]
  np.testing.assert_allclose(ours, np.transpose(theirs, (1, 2, 3, 0)), atol=2e-6, rtol=0)
  i0, i1, w1 = embedding_taps(128, 32)  # scale 4: the mean of rows 4o + 1 and 4o + 2
  np.testing.assert_array_equal(i0, 4 * np.arange(32) + 1)
  np.testing.assert_array_equal(w1, np.full(32, 0.5, np.float32))
