"""PCMA, the memory pytree and the video segmenter: scan vs step, FIFO, reset, options, gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma_resnet.models import build, default_model_config
from ma_resnet.models import memory as memory_lib
from ma_resnet.models.pcma import PCMAOptions, attend

H, W = 32, 48


def tiny_config(**pcma):
  config = default_model_config()
  config.depth = 18
  config.multi_grid = (1, 2)
  config.head_options.aspp_rates = (1, 2)
  config.pcma.memory_length = 2
  config.pcma.update(pcma)
  return config


@functools.lru_cache(maxsize=None)
def tiny_variables():
  """Variables of the small MA segmenter, with random batch-norm statistics (eval mode is then not the
  identity). Every PCMA option keeps the same variable tree, so all variants share them."""
  model = build(tiny_config(), num_classes=5)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1, H, W, 3)))
  stats = jax.tree.map(lambda a: a + 0.1 * jax.random.uniform(jax.random.key(a.size), a.shape),
                       variables['batch_stats'])
  return {**variables, 'batch_stats': stats}


@functools.lru_cache(maxsize=None)
def tiny(**pcma):
  """(model, variables, jitted apply, jitted step) of a small MA segmenter with the given PCMA options."""
  model = build(tiny_config(**pcma), num_classes=5)
  apply = jax.jit(model.apply)
  step = jax.jit(functools.partial(model.apply, method=model.step))
  return model, tiny_variables(), apply, step


def clip(b=2, t=4, seed=1, h=H, w=W):
  return jax.random.normal(jax.random.key(seed), (b, t, h, w, 3))


def test_scan_equals_step():
  model, variables, apply, step = tiny()
  frames = clip()
  out = apply(variables, frames)
  memory = model.init_memory(2, (H, W))
  logits = []
  for i in range(frames.shape[1]):
    o = step(variables, frames[:, i], memory)
    memory = o.memory
    logits.append(o.logits)
  np.testing.assert_allclose(jnp.stack(logits, 1), out.logits, atol=1e-6, rtol=0)
  for stage in out.memory:
    np.testing.assert_allclose(memory[stage].keys, out.memory[stage].keys, atol=1e-6, rtol=0)
  # Code warm-up with T=2: the first two frames only fill the memory.
  np.testing.assert_array_equal(out.enhanced, [[False, False, True, True]] * 2)


def test_push_is_first_in_first_out():
  mem = memory_lib.empty_stage_memory(1, 2, (1, 1), 1, 1)
  for value in (1.0, 2.0, 3.0):
    full = jnp.full((1, 1, 1, 1), value)
    mem = memory_lib.push(mem, full, 10 * full)
  np.testing.assert_array_equal(mem.keys[0, :, 0, 0, 0], [2.0, 3.0])  # oldest first, 1.0 dropped
  np.testing.assert_array_equal(mem.values[0, :, 0, 0, 0], [20.0, 30.0])
  assert bool(mem.valid.all())


def test_memory_holds_the_last_frames_oldest_first():
  model, variables, apply, _ = tiny()
  frames = clip(b=1, t=3)
  after_clip = apply(variables, frames).memory
  for index, slot in ((1, 0), (2, 1)):  # frame 1 in the oldest slot, frame 2 in the newest; frame 0 gone
    alone = apply(variables, frames[:, index:index + 1]).memory
    for stage in after_clip:
      np.testing.assert_allclose(after_clip[stage].keys[:, slot], alone[stage].keys[:, -1], atol=1e-6)
      np.testing.assert_allclose(after_clip[stage].values[:, slot], alone[stage].values[:, -1], atol=1e-6)


def test_reset_clears_exactly_the_flagged_samples():
  model, variables, apply, _ = tiny()
  frames = clip(b=2, t=3)
  full = apply(variables, frames).memory
  cleared = memory_lib.reset(full, jnp.array([True, False]))
  for stage in full:
    assert not bool(cleared[stage].valid[0].any())
    assert float(jnp.abs(cleared[stage].keys[0]).max()) == 0.0
    np.testing.assert_array_equal(cleared[stage].keys[1], full[stage].keys[1])
    np.testing.assert_array_equal(cleared[stage].valid[1], full[stage].valid[1])
  # In a clip: sample 0 starts a new sequence at frame 2, sample 1 does not.
  reset = jnp.array([[False, False, True, False], [False, False, False, False]])
  frames = clip(b=2, t=4)
  out = apply(variables, frames, None, reset)
  np.testing.assert_array_equal(out.enhanced, [[False, False, False, False], [False, False, True, True]])
  fresh = apply(variables, frames[:1, 2:])
  np.testing.assert_allclose(out.logits[:1, 2:], fresh.logits, atol=1e-5)


def test_odd_spatial_sizes():
  model, variables, apply, _ = tiny()
  frames = clip(b=1, t=3, h=33, w=45)
  out = apply(variables, frames)
  assert out.logits.shape == (1, 3, 33, 45, 5)
  assert out.stage_features['stage1'].shape[2:4] == (9, 12)  # odd stage map: read-out resized to 9 exactly
  assert bool(out.enhanced[0, 2]) and bool(jnp.isfinite(out.logits).all())


def test_results_do_not_depend_on_the_rest_of_the_batch():
  model, variables, apply, _ = tiny()
  frames = clip(b=2, t=3)
  both = apply(variables, frames).logits
  alone = apply(variables, frames[:1]).logits
  np.testing.assert_allclose(both[:1], alone, atol=1e-5)


@pytest.mark.parametrize('detach', [True, False])
def test_gradients(detach):
  model, variables, _, _ = tiny(detach_memory=detach)

  def loss_of_last_frame(params, frames):
    out = model.apply({**variables, 'params': params}, frames)
    return jnp.mean(out.logits[:, -1] ** 2)

  grads, wrt_input = jax.jit(jax.grad(loss_of_last_frame, argnums=(0, 1)))(variables['params'],
                                                                            clip(b=1, t=3))
  magnitude = lambda stage: float(jnp.abs(grads[f'pcma_{stage}']['key_encoder']['conv']['kernel']).max())
  assert magnitude('stage1') > 0, 'no gradient reaches the PCMA key encoder of stage1'
  # DeepLabV3+ reads only stage1 and stage4, and (as in the authors' code) enhanced maps do not feed the
  # next stage: PCMA on stages 2-3 cannot influence its logits.
  assert magnitude('stage2') == 0 and magnitude('stage3') == 0
  # The last frame sees the first two only through the memory.
  earlier = float(jnp.abs(wrt_input[:, :2]).max())
  if detach:
    assert earlier == 0.0
  else:
    assert earlier > 0.0


def test_attend_masks_empty_slots_and_partial_warmup():
  options = PCMAOptions(memory_length=2, warmup='partial')
  mem = memory_lib.empty_stage_memory(1, 2, (2, 2), 2, 4)
  key = jax.random.normal(jax.random.key(0), (1, 2, 2, 2))
  value = 1.0 + jnp.abs(jax.random.normal(jax.random.key(1), (1, 2, 2, 4)))  # all values >= 1
  readout, enhanced, mem = attend(mem, key, value, options)
  assert not bool(enhanced[0])  # nothing stored yet
  readout, enhanced, _ = attend(mem, key, value, options)
  assert bool(enhanced[0])
  # One valid slot: the read-out is a convex mix of its values; the zeros of the empty slot must not leak.
  assert float(jnp.min(readout)) >= float(jnp.min(value)) - 1e-6
  assert float(jnp.max(readout)) <= float(jnp.max(value)) + 1e-6
  full = PCMAOptions(memory_length=2, warmup='full')
  _, enhanced, _ = attend(mem, key, value, full)
  assert not bool(enhanced[0])


@pytest.mark.parametrize('options', [
    dict(judge=True, memory_stores='enhanced', key_norm='dot'),
    dict(warmup='partial', fusion_mean='batch'),
    dict(feed_forward=True),
])
def test_options_run_and_stream(options):
  model, variables, apply, step = tiny(**options)
  frames = clip(b=2, t=3)
  out = apply(variables, frames)
  assert bool(jnp.isfinite(out.logits).all())
  memory = model.init_memory(2, (H, W))
  for i in range(3):
    o = step(variables, frames[:, i], memory)
    memory = o.memory
  np.testing.assert_allclose(o.logits, out.logits[:, -1], atol=1e-5)


def test_feed_forward_changes_later_stages():
  _, variables, apply, _ = tiny()
  _, _, apply_ff, _ = tiny(feed_forward=True)
  frames = clip(b=1, t=3)
  plain_path = apply(variables, frames)
  fed = apply_ff(variables, frames)  # same parameter tree
  np.testing.assert_allclose(fed.stage_features['stage1'], plain_path.stage_features['stage1'], atol=1e-5)
  assert float(jnp.abs(fed.stage_features['stage4'][:, 2] - plain_path.stage_features['stage4'][:, 2]).max()) > 1e-4


def test_bad_options_are_refused():
  with pytest.raises(ValueError, match='key_norm'):
    PCMAOptions(key_norm='cosine')
  with pytest.raises(ValueError, match='stages'):
    PCMAOptions(stages=('stage5',))
  with pytest.raises(ValueError, match='even number'):
    PCMAOptions(ratio=0.3).channels(64)


def test_plain_encoder_has_empty_memory_and_same_interface():
  config = tiny_config()
  config.encoder = 'plain'
  model = build(config, num_classes=5)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1, H, W, 3)))
  assert model.init_memory(2, (H, W)) == {}
  frames = clip(b=2, t=2)
  out = jax.jit(model.apply)(variables, frames)
  assert out.logits.shape == (2, 2, H, W, 5) and out.memory == {}
  assert not bool(out.enhanced.any())
  one = jax.jit(functools.partial(model.apply, method=model.step))(variables, frames[:, 1], {})
  np.testing.assert_allclose(one.logits, out.logits[:, 1], atol=1e-5)
