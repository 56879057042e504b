"""Every temporal module on the one interface: scan = step, reset of exactly the flagged samples, gradients
reaching every parameterised part; TMA's window order and warm-up. A non-causal module (STF, delay 1) steps one
frame behind: stepping then flushing equals the clip."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma_resnet.models import build, default_model_config
from ma_resnet.models.temporal import reset_state
from tolerances import reordered_sums_tolerance

H, W, CLASSES = 32, 48, 4
MODULES = ('plain', 'pcma', 'tma', 'stf')


def tiny_config(temporal: str):
  """ResNet18, output stride 16; each module with a head that reads what it writes."""
  config = default_model_config()
  config.temporal = temporal
  config.depth, config.variant, config.output_stride, config.multi_grid = 18, 'torchvision', 16, None
  config.head = 'fcn'
  config.head_options = {'channels': 8, 'num_convs': 1, 'concat_input': False, 'in_stage': 'stage1'}
  config.pcma.update(stages=('stage1',), memory_length=2, ratio=0.5)
  if temporal == 'tma':
    config.head = 'classifier'
    config.head_options = {'in_stage': 'stage4'}
    config.tma.update(memory_length=2, key_channels=8, value_channels=16, channels=24)
  if temporal == 'stf':  # the PSP bottleneck (2x3 at output stride 16) -> STF + MAR -> classifier
    config.backbone = 'pspnet'
    config.pspnet.update(stage='stage4', channels=16)
    config.head = 'classifier'
    config.head_options = {'in_stage': 'psp'}
    config.stf.update(heads=2, ffn_channels=8, block_size=(1, 3), embedding_size=(4, 6), mar=True,
                      memory_per_class=2)
  return config


@functools.lru_cache(maxsize=None)
def tiny(temporal: str):
  """(model, variables with perturbed batch-norm statistics, jitted apply, jitted step)."""
  model = build(tiny_config(temporal), num_classes=CLASSES)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1, H, W, 3)))
  stats = jax.tree.map(lambda a: a + 0.1 * jax.random.uniform(jax.random.key(a.size), a.shape),
                       variables.get('batch_stats', {}))
  variables = {**variables, 'batch_stats': stats}
  return model, variables, jax.jit(model.apply), jax.jit(functools.partial(model.apply, method=model.step))


def clip(b=2, t=4, seed=1):
  return jax.random.normal(jax.random.key(seed), (b, t, H, W, 3))


@pytest.mark.parametrize('temporal', MODULES)
def test_scan_equals_step_with_reset(temporal):
  model, variables, apply, step = tiny(temporal)
  frames = clip()
  reset = jnp.array([[False, False, True, False], [False, False, False, False]])
  first = apply(variables, frames)  # fills the memory
  out = apply(variables, frames, first.memory, reset)
  memory = first.memory
  delay = model.delay
  steps = []
  for i in range(frames.shape[1]):
    one = step(variables, frames[:, i], memory, reset[:, i])
    memory = one.memory
    steps.append(one)
  final_memory = memory
  for _ in range(delay):  # a non-causal module emits the last frame when the sequence ends: the flush
    steps.append(jax.jit(functools.partial(model.apply, method=model.flush))(variables, frames[:, -1], memory))
  for i in range(frames.shape[1]):
    one = steps[i + delay]  # stepping frame i + delay (or flushing) emits frame i
    # STF's transformer attends over scores with no bound: it keeps its 1e-5 (about 800 ulps of its logits).
    tolerance = max(reordered_sums_tolerance(out.logits), 1e-5 if delay else 0.0)
    np.testing.assert_allclose(one.logits, out.logits[:, i], atol=tolerance, rtol=0)
    np.testing.assert_array_equal(one.enhanced, out.enhanced[:, i])
    assert np.asarray(one.ready).all() and np.asarray(out.ready[:, i]).all()
  for a, b in zip(jax.tree.leaves(final_memory), jax.tree.leaves(out.memory)):  # raw maps: batch-size rounding
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('temporal', MODULES)
def test_reset_empties_exactly_the_flagged_samples(temporal):
  model, variables, apply, _ = tiny(temporal)
  frames = clip()
  carried = apply(variables, frames).memory
  reset = jnp.array([[False, True, False, False], [False, False, False, False]])
  out = apply(variables, frames, carried, reset)
  no_reset = apply(variables, frames, carried)
  fresh = apply(variables, frames[:, 1:])  # sample 0 from frame 1 on = a sequence starting there
  np.testing.assert_allclose(out.logits[0, 1:], fresh.logits[0], atol=1e-5)
  np.testing.assert_allclose(out.logits[1], no_reset.logits[1], atol=1e-6)  # sample 1 untouched
  if temporal != 'plain':
    assert float(jnp.abs(no_reset.logits[0, 1] - out.logits[0, 1]).max()) > 1e-4  # the reset mattered
  cleared = reset_state(carried, jnp.array([True, False]))
  for a, b in zip(jax.tree.leaves(cleared), jax.tree.leaves(carried)):
    assert not np.asarray(a[0]).any()
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize('temporal', MODULES)
def test_gradients_reach_every_parameter(temporal):
  model, variables, _, _ = tiny(temporal)

  def loss_of_last_frame(params, frames):
    out, _ = model.apply({**variables, 'params': params}, frames, train=True, mutable=['batch_stats'],
                         rngs={'dropout': jax.random.key(0)})
    return jnp.mean(out.logits[:, -1] ** 2)

  grads = jax.jit(jax.grad(loss_of_last_frame))(variables['params'], clip())
  dead = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]
          if not np.abs(np.asarray(g)).max() > 0]
  assert not dead, f'no gradient reaches {dead}'



@pytest.mark.parametrize('temporal', MODULES)
def test_earlier_frames_reach_the_last_one_only_through_the_memory(temporal):
  _, variables, apply, _ = tiny(temporal)
  frames = clip()
  other = frames.at[:, :-1].set(clip(seed=7)[:, :-1])  # eval mode: no batch statistics couple the frames
  change = float(jnp.abs(apply(variables, frames).logits[:, -1] - apply(variables, other).logits[:, -1]).max())
  assert (change > 1e-4) == (temporal != 'plain'), change


def test_tma_window_is_the_previous_frames_oldest_first():
  model, variables, apply, _ = tiny('tma')
  frames = clip()
  out = apply(variables, frames)
  stage4 = jax.jit(lambda v, x: model.apply(v, x, method=lambda m, x: m.backbone(x)['stage4']))
  for slot, frame in ((0, 2), (1, 3)):  # after frames 0..3 with T = 2: frames 2 then 3
    np.testing.assert_allclose(out.memory.maps[:, slot], stage4(variables, frames[:, frame]), atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(out.memory.seen, [2, 2])
  # Frame 3 attends to frames 1, 2 in that order: the same as a fresh clip (1, 2, 3); reversed, it differs
  # (each slot has its own encoders).
  window = apply(variables, frames[:, 1:]).logits[:, -1]
  np.testing.assert_allclose(out.logits[:, 3], window, atol=1e-5)
  reversed_window = apply(variables, frames[:, jnp.array([2, 1, 3])]).logits[:, -1]
  assert float(jnp.abs(reversed_window - out.logits[:, 3]).max()) > 1e-4


def test_tma_warmup_repeats_the_first_frame():
  _, variables, apply, _ = tiny('tma')
  frames = clip()
  out = apply(variables, frames)
  np.testing.assert_array_equal(out.enhanced, [[False, False, True, True]] * 2)  # T = 2 earlier frames
  f0, f1 = frames[:, :1], frames[:, 1:2]
  as_if = apply(variables, jnp.concatenate([f0, f0, f0, f1], axis=1)).logits  # windows (0, 0), (0, 1)
  np.testing.assert_allclose(out.logits[:, 0], as_if[:, 2], atol=1e-5)
  np.testing.assert_allclose(out.logits[:, 1], as_if[:, 3], atol=1e-5)


def test_tma_options_are_checked():
  from ma_resnet.models.temporal import TMAOptions
  with pytest.raises(ValueError, match='memory_length'):
    TMAOptions(memory_length=0)
  config = tiny_config('tma')
  config.head_options = {'in_stage': 'stage3'}
  with pytest.raises(ValueError, match="model.head='classifier'"):
    build(config, CLASSES)
