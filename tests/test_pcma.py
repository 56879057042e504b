"""PCMA, its memory pytree and the video segmenter: scan vs step, FIFO, reset, options, gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma_resnet.models import build, default_model_config
from ma_resnet.models.temporal import pcma as pcma_lib
from ma_resnet.models.temporal import PCMAOptions, attend, reset_state
from tolerances import reordered_sums_tolerance

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


def clip(b=2, t=3, seed=1, h=H, w=W):
  """Random frames; most tests use the default (2, 3) shape so that jitted functions compile once."""
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
  np.testing.assert_allclose(jnp.stack(logits, 1), out.logits, atol=reordered_sums_tolerance(out.logits), rtol=0)
  for stage in out.memory:
    np.testing.assert_allclose(memory[stage].keys, out.memory[stage].keys,
                               atol=reordered_sums_tolerance(out.memory[stage].keys), rtol=0)
  # Code warm-up with T=2: the first two frames only fill the memory.
  np.testing.assert_array_equal(out.enhanced, [[False, False, True]] * 2)


def test_push_is_first_in_first_out():
  mem = pcma_lib.empty_stage_memory(1, 2, (1, 1), 1, 1)
  for value in (1.0, 2.0, 3.0):
    full = jnp.full((1, 1, 1, 1), value)
    mem = pcma_lib.push_stage_memory(mem, full, 10 * full)
  np.testing.assert_array_equal(mem.keys[0, :, 0, 0, 0], [2.0, 3.0])  # oldest first, 1.0 dropped
  np.testing.assert_array_equal(mem.values[0, :, 0, 0, 0], [20.0, 30.0])
  assert bool(mem.valid.all())


def test_memory_holds_the_last_frames_oldest_first():
  model, variables, apply, _ = tiny()
  frames = clip()
  after_clip = apply(variables, frames).memory
  for index, slot in ((1, 0), (2, 1)):  # frame 1 in the oldest slot, frame 2 in the newest; frame 0 gone
    alone = apply(variables, jnp.repeat(frames[:, index:index + 1], 3, axis=1)).memory
    for stage in after_clip:
      np.testing.assert_allclose(after_clip[stage].keys[:, slot], alone[stage].keys[:, -1], atol=1e-6)
      np.testing.assert_allclose(after_clip[stage].values[:, slot], alone[stage].values[:, -1], atol=1e-6)


def test_reset_clears_exactly_the_flagged_samples():
  model, variables, apply, _ = tiny()
  frames = clip()
  full = apply(variables, frames).memory
  cleared = reset_state(full, jnp.array([True, False]))
  for stage in full:
    assert not bool(cleared[stage].valid[0].any())
    assert float(jnp.abs(cleared[stage].keys[0]).max()) == 0.0
    np.testing.assert_array_equal(cleared[stage].keys[1], full[stage].keys[1])
    np.testing.assert_array_equal(cleared[stage].valid[1], full[stage].valid[1])
  # In a clip, with memory carried from the previous clip: sample 0 starts a new sequence at frame 1.
  reset = jnp.array([[False, True, False], [False, False, False]])
  out = apply(variables, frames, full, reset)
  np.testing.assert_array_equal(out.enhanced, [[True, False, False], [True, True, True]])
  # Sample 0 from frame 1 on behaves as a fresh sequence starting there.
  shifted = jnp.concatenate([frames[:, 1:], frames[:, :1]], axis=1)
  fresh = apply(variables, shifted)
  np.testing.assert_allclose(out.logits[0, 1:], fresh.logits[0, :2], atol=1e-5)


def test_odd_spatial_sizes():
  model, variables, apply, _ = tiny()
  frames = clip(h=33, w=45)
  out = apply(variables, frames)
  assert out.logits.shape == (2, 3, 33, 45, 5)
  assert out.stage_features['stage1'].shape[2:4] == (9, 12)  # odd stage map: read-out resized to 9 exactly
  assert bool(out.enhanced[0, 2]) and bool(jnp.isfinite(out.logits).all())


def test_results_do_not_depend_on_the_rest_of_the_batch():
  model, variables, apply, _ = tiny()
  frames = clip()
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
                                                                            clip())
  pcma = grads['temporal']['pcma_stage1']
  assert float(jnp.abs(pcma['key_encoder']['conv']['kernel']).max()) > 0, 'no gradient reaches the key encoder'
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(pcma)), 'a PCMA parameter gets no gradient'
  # The last frame sees the first two only through the memory.
  earlier = float(jnp.abs(wrt_input[:, :2]).max())
  if detach:
    assert earlier == 0.0
  else:
    assert earlier > 0.0


def test_attend_masks_empty_slots_and_partial_warmup():
  options = PCMAOptions(memory_length=2, warmup='partial')
  mem = pcma_lib.empty_stage_memory(1, 2, (2, 2), 2, 4)
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
])
def test_paper_options_run(options):
  _, variables, apply, _ = tiny(**options)
  out = apply(variables, clip())
  assert bool(jnp.isfinite(out.logits).all())
  assert bool(out.enhanced[:, -1].all())
  if options.get('warmup') == 'partial':
    np.testing.assert_array_equal(out.enhanced, [[False, True, True]] * 2)


def test_feed_forward_streams_and_changes_later_stages():
  model, variables, apply, _ = tiny()
  model_ff, _, apply_ff, step_ff = tiny(feed_forward=True)
  frames = clip()
  fed = apply_ff(variables, frames)  # same variable tree
  memory = model_ff.init_memory(2, (H, W))
  for i in range(3):
    one = step_ff(variables, frames[:, i], memory)
    memory = one.memory
  np.testing.assert_allclose(one.logits, fed.logits[:, -1], atol=1e-5)
  plain_path = apply(variables, frames)
  np.testing.assert_allclose(fed.stage_features['stage1'], plain_path.stage_features['stage1'], atol=1e-5)
  assert float(jnp.abs(fed.stage_features['stage4'][:, 2] - plain_path.stage_features['stage4'][:, 2]).max()) > 1e-4


def test_feed_forward_keeps_the_frozen_backbone_frozen():
  """model.frozen on the interleaved path (feed_forward): a train-mode apply leaves the frozen backbone's batch
  statistics as they were and gives its parameters no gradient, while PCMA still trains (its statistics move,
  its parameters get a gradient). Before the fix the interleaved path ignored `frozen`."""
  config = tiny_config(feed_forward=True)
  config.frozen = ('backbone',)
  model = build(config, num_classes=5)
  variables = tiny_variables()

  def loss(params):
    out, updates = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, clip(), train=True,
                               mutable=['batch_stats'], rngs={'dropout': jax.random.key(2)})
    return jnp.mean(jnp.square(out.logits)), updates

  grads, updates = jax.jit(jax.grad(loss, has_aux=True))(variables['params'])
  moved = lambda before, after: [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(before),
                                                                           jax.tree.leaves(after))]
  assert max(moved(variables['batch_stats']['backbone'], updates['batch_stats']['backbone'])) == 0.0
  assert max(moved(variables['batch_stats']['temporal'], updates['batch_stats']['temporal'])) > 0.0
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads['backbone']))
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads['temporal'])) > 0.0


def test_bad_options_are_refused():
  with pytest.raises(ValueError, match='key_norm'):
    PCMAOptions(key_norm='cosine')
  with pytest.raises(ValueError, match='stages'):
    PCMAOptions(stages=('stage5',))
  with pytest.raises(ValueError, match='even number'):
    PCMAOptions(ratio=0.3).channels(64)


def test_pcma_is_built_only_on_stages_the_head_reads(caplog):
  # DeepLabV3+ reads stage1 and stage4, and (as in the authors' code) enhanced maps do not feed the next
  # stage: PCMA on stages 2-3 could not change a prediction, so it is not built.
  config = tiny_config(stages=('stage1', 'stage2', 'stage3'))
  model = build(config, num_classes=5)
  assert model.temporal.options.stages == ('stage1',)
  assert 'is not built' in caplog.text and 'stage2' in caplog.text
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1, H, W, 3)))
  assert set(shapes['params']['temporal']) == {'pcma_stage1'}
  config = tiny_config(stages=('stage2',))
  with pytest.raises(ValueError, match='could not change a prediction'):
    build(config, num_classes=5)
  config.pcma.feed_forward = True  # then stage 2 feeds stages 3-4, which the head reads
  assert build(config, num_classes=5).temporal.options.stages == ('stage2',)


def test_plain_model_has_empty_memory_and_same_interface():
  config = tiny_config()
  config.temporal = 'plain'
  model = build(config, num_classes=5)
  variables = {collection: {k: v for k, v in tree.items() if k != 'temporal'}
               for collection, tree in tiny_variables().items()}  # the MA tree without PCMA
  assert model.init_memory(2, (H, W)) == {}
  frames = clip()
  apply = jax.jit(model.apply)
  out = apply(variables, frames)
  assert out.logits.shape == (2, 3, H, W, 5) and out.memory == {}
  assert not bool(out.enhanced.any())
  # Frames are independent: the last frame alone gives the same logits.
  alone = apply(variables, jnp.repeat(frames[:, -1:], 3, axis=1))
  np.testing.assert_allclose(alone.logits[:, 0], out.logits[:, -1], atol=1e-5)
