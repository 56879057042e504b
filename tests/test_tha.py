"""LERNet + THA (paper 004): the attention against a numpy computation of the paper's equations, the chunked max,
the key-frame schedule (step = clip apply for K = 1, 2, 5; reset forces a key frame), LERNet's geometry."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma_resnet.models import build, default_model_config
from ma_resnet.models.backbones.lernet import LERNet
from ma_resnet.models.temporal import THA, THAOptions, holistic_attention
from ma_resnet.models.temporal.tha import schedule
from tolerances import reordered_sums_tolerance

H, W, CLASSES = 32, 48, 3


def lernet_config(key_interval: int, temporal: str = 'tha'):
  config = default_model_config()
  config.backbone, config.temporal = 'lernet', temporal
  config.head, config.head_options = 'classifier', {'in_stage': 'high', 'dropout': 0.0}
  config.tha.key_interval = key_interval
  config.tha.chunk = 7  # several chunks (and a remainder) at 4x6 = 24 positions
  config.lernet.dilations = (1, 2)  # a shorter high-level part: the same code, less to compile
  return config


# XLA backend optimisation off: the same programs, about half the compile time, which dominates this file.
jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0,
                                                   'xla_llvm_disable_expensive_passes': True})


@functools.lru_cache(maxsize=None)
def tiny(key_interval: int):
  model = build(lernet_config(key_interval), num_classes=CLASSES)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 1, H, W, 3)))
  stats = jax.tree.map(lambda a: a + 0.1 * jax.random.uniform(jax.random.key(a.size), a.shape),
                       variables['batch_stats'])
  variables = {**variables, 'batch_stats': stats}
  return model, variables, jit(model.apply), jit(functools.partial(model.apply, method=model.step))


def frames(b=2, t=6, seed=1):
  return jax.random.normal(jax.random.key(seed), (b, t, H, W, 3))


def test_holistic_attention_is_the_papers_max_and_mean():
  rng = np.random.default_rng(0)
  key, current = rng.normal(size=(2, 2, 3, 1)), rng.normal(size=(2, 2, 3, 1))  # 2x3 maps, C' = 1
  a = np.einsum('bic,bjc->bij', key.reshape(2, 6, 1), current.reshape(2, 6, 1))  # A[i, j]: key i, current j
  want = np.stack([a.max(axis=1), a.mean(axis=1)], axis=-1).reshape(2, 2, 3, 2)
  for chunk in (1, 4, 6, 100):  # chunked max = unchunked, remainders included
    got = holistic_attention(jnp.asarray(key, jnp.float32), jnp.asarray(current, jnp.float32), chunk)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_fuse_follows_equations_2_to_4():
  """W = sigmoid(conv5x5([max A, mean A])), F^n = F_l^n + W * F_h^k, on 2x3 maps with C' = 1."""
  module = THA(THAOptions(key_interval=2, reduced_channels=1, low='low', high='high'))
  rng = np.random.default_rng(1)
  low = jnp.asarray(rng.normal(size=(1, 2, 2, 3, 4)), jnp.float32)
  reads = {'projection': jnp.asarray(rng.normal(size=(1, 2, 2, 3, 1)), jnp.float32),
           'key_projection': jnp.asarray(rng.normal(size=(1, 2, 2, 3, 1)), jnp.float32),
           'key_high': jnp.asarray(rng.normal(size=(1, 2, 2, 3, 4)), jnp.float32),
           'is_key': jnp.array([[True, False]])}
  fuse = lambda m, *a: m.fuse(*a)
  variables = module.init(jax.random.key(0), {'low': low}, reads, None, False, method=fuse)
  out = module.apply(variables, {'low': low}, reads, None, False, method=fuse)['high']
  kernel = np.asarray(variables['params']['gate']['kernel'])[:, :, :, 0]  # (5, 5, 2)
  bias = float(variables['params']['gate']['bias'][0])
  k, q = np.asarray(reads['key_projection'])[0, 1].reshape(6), np.asarray(reads['projection'])[0, 1].reshape(6)
  a = np.outer(k, q)  # A[i, j]
  stacked = np.stack([a.max(0), a.mean(0)], -1).reshape(2, 3, 2)
  padded = np.pad(stacked, ((2, 2), (2, 2), (0, 0)))
  conv = np.array([[np.sum(padded[r:r + 5, c:c + 5] * kernel) + bias for c in range(3)] for r in range(2)])
  gate = 1 / (1 + np.exp(-conv))
  want = np.asarray(low)[0, 1] + gate[:, :, None] * np.asarray(reads['key_high'])[0, 1]
  np.testing.assert_allclose(out[0, 1], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out[0, 0], reads['key_high'][0, 0])  # a key frame keeps its own F_h


def test_schedule_counts_from_the_last_reset():
  seen = jnp.array([0, 4])  # sample 1 has seen 4 frames: positions 4, 5, then a reset
  reset = jnp.array([[False] * 6, [False, False, True, False, False, False]])
  np.testing.assert_array_equal(schedule(seen, reset, 3), [[True, False, False, True, False, False],
                                                          [False, False, True, False, False, True]])


@pytest.mark.parametrize('key_interval', [1, 2, 5])
def test_step_equals_clip_apply_and_reset_forces_a_key_frame(key_interval):
  model, variables, apply, step = tiny(key_interval)
  clip = frames()
  out = apply(variables, clip)
  expected_keys = np.array([t % key_interval == 0 for t in range(clip.shape[1])])
  np.testing.assert_array_equal(out.enhanced, np.broadcast_to(~expected_keys, out.enhanced.shape))
  memory = model.init_memory(2, (H, W))
  for t in range(clip.shape[1]):
    one = step(variables, clip[:, t], memory)
    memory = one.memory
    np.testing.assert_allclose(one.logits, out.logits[:, t], atol=reordered_sums_tolerance(out.logits), rtol=0)
  # With the memory carried and a reset of sample 0 at frame 3: the schedule is no longer the static one.
  reset = jnp.zeros((2, clip.shape[1]), bool).at[0, 3].set(True)
  carried = apply(variables, clip, out.memory, reset)
  assert not bool(carried.enhanced[0, 3])  # the reset makes frame 3 a key frame
  fresh = apply(variables, clip[:1, 3:])
  np.testing.assert_allclose(carried.logits[0, 3:], fresh.logits[0], atol=1e-5)
  memory = out.memory
  for t in range(clip.shape[1]):
    one = step(variables, clip[:, t], memory, reset[:, t])
    memory = one.memory
    np.testing.assert_allclose(one.logits, carried.logits[:, t], atol=reordered_sums_tolerance(carried.logits),
                               rtol=0)


def test_non_key_frames_do_not_run_the_high_level_part():
  """A clip of non-key frames depends on their P_l and the stored key frame only."""
  model, variables, apply, _ = tiny(5)
  clip = frames(t=5)
  out = apply(variables, clip)
  key_only = jnp.concatenate([clip[:, :1], jnp.zeros_like(clip[:, 1:])], axis=1)
  memory = apply(variables, key_only[:, :1]).memory
  rest = apply(variables, clip[:, 1:], memory)
  np.testing.assert_allclose(rest.logits, out.logits[:, 1:], atol=1e-5)
  assert not bool(rest.enhanced.all() == False)  # noqa: E712  (all four are propagated frames)


def test_gradients_reach_the_attention_and_the_backbone():
  model, variables, _, _ = tiny(2)

  def loss(params):
    out, _ = model.apply({**variables, 'params': params}, frames(t=2), train=True, mutable=['batch_stats'],
                         rngs={'dropout': jax.random.key(0)})
    return jnp.mean(out.logits[:, 1] ** 2)  # the propagated frame
  grads = jit(jax.grad(loss))(variables['params'])
  dead = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]
          if not np.abs(np.asarray(g)).max() > 0]
  assert not dead, dead


def test_lernet_geometry_and_parameter_counts():
  net = LERNet()
  assert net.feature_shapes((512, 1024)) == {'low': (64, 128, 128), 'high': (64, 128, 128)}
  with pytest.raises(ValueError, match='multiples of 8.*36x50'):
    net.feature_shapes((36, 50))
  count = lambda m: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(
      jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params']))
  assert count(LERNet()) == 857_903                       # full-width branches (the literal reading)
  assert count(LERNet(branch_width='half')) == 402_511
  assert count(LERNet(single_branch=True)) == 453_167
  low_only = jax.eval_shape(lambda: LERNet().init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), stages=('low',)))
  assert not any('high_layers' in k for k in low_only['params'])
