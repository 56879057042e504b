"""Memory attention without the score matrix: 'chunked' and 'fused' against 'dense' (the code's formulation),
values and gradients, with empty slots masked and T > 1; PCMA's `attend`, TMA's read and whole models on each
implementation; the options and the precision setting."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma_resnet.models import attention as attention_lib
from ma_resnet.models import build, default_model_config
from ma_resnet.models.temporal import PCMAOptions, StageMemory, TMAOptions, attend
from ma_resnet.models.temporal import tma as tma_lib
from tolerances import SCORE_BOUND, reordered_sums_tolerance, softmax_read_tolerance

B, T, P, N, CK, CV = 3, 3, 50, 40, 8, 16
# sample 0: oldest slot empty; sample 1: all empty (reads the mean); sample 2: a hole in the middle
SLOTS = np.array([[False, True, True], [False, False, False], [True, False, True]])


def float64_read(query, keys, values, position_valid=None, scale=1.0):
  """The exact read (numpy float64): query (B, N, Ck), keys (B, ..., Ck), values (B, ..., Cv), position_valid
  (B, slots) or (B, positions) | None. Returns (read (B, N, Cv), `softmax_read_tolerance` of these inputs)."""
  q, k, v = (np.asarray(a, np.float64) for a in (query, keys, values))
  k, v = k.reshape(k.shape[0], -1, k.shape[-1]), v.reshape(v.shape[0], -1, v.shape[-1])
  scores = np.einsum('bnc,bmc->bnm', q, k) * scale
  masked = scores
  if position_valid is not None:
    valid = np.asarray(position_valid)
    valid = np.repeat(valid, k.shape[1] // valid.shape[1], axis=1)  # slots -> their positions
    masked = np.where(valid[:, None, :], scores, -np.inf)
    masked = np.where(valid.any(1)[:, None, None], masked, 0.0)  # no valid position: the plain mean
  weights = np.exp(masked - masked.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum('bnm,bmc->bnc', weights, v), softmax_read_tolerance(np.abs(scores).max(), np.abs(v).max())


def inputs(dtype=jnp.float32, seed=0):
  """PCMA-like inputs: keys normalised by the softmax over channels x10 (logits up to 100: sharp softmax)."""
  k = jax.random.split(jax.random.key(seed), 3)
  query = jax.nn.softmax(2 * jax.random.normal(k[0], (B, N, CK)), -1) * 10
  keys = jax.nn.softmax(2 * jax.random.normal(k[1], (B, T, P, CK)), -1) * 10
  values = jax.random.normal(k[2], (B, T, P, CV))
  return query.astype(dtype), keys.astype(dtype), values.astype(dtype)


def read(implementation, chunk=16, slots=SLOTS, dtype=jnp.float32, scale=1.0):
  fn = functools.partial(attention_lib.memory_attention, implementation=implementation, chunk_size=chunk,
                         scale=scale)
  return lambda q, k, v: fn(q, k, v, None if slots is None else jnp.asarray(slots))


@pytest.mark.parametrize('implementation,chunk', [('chunked', 16), ('chunked', 64), ('chunked', 150),
                                                  ('chunked', 4096), ('fused', 16)])
@pytest.mark.parametrize('masked', [True, False])
def test_same_read_as_dense(implementation, chunk, masked):
  """150 positions: 16 -> 10 chunks of 15, 64 -> 3 of 50, 150 one chunk, 4096 more than the memory."""
  slots = SLOTS if masked else None
  q, k, v = inputs()
  exact, tolerance = float64_read(q, k, v, slots)
  want = read('dense', slots=slots)(q, k, v)
  got = jax.jit(read(implementation, chunk, slots))(q, k, v)
  np.testing.assert_allclose(want, exact, atol=tolerance, rtol=0)
  np.testing.assert_allclose(got, exact, atol=tolerance, rtol=0)  # so |got - dense| <= 2 x tolerance
  if masked:  # all slots empty: the plain mean of the stored values, as the dense softmax over -1e30s gives
    np.testing.assert_allclose(got[1], jnp.broadcast_to(jnp.mean(v[1].reshape(-1, CV), 0), (N, CV)), atol=1e-5)


@pytest.mark.parametrize('implementation,chunk', [('chunked', 16), ('chunked', 4096), ('fused', 16)])
@pytest.mark.parametrize('sharp', [False, True])
def test_same_gradients_as_dense(implementation, chunk, sharp):
  """Logits of order 1 (sharp=False): 1e-5. PCMA's x10 keys (logits up to 100) amplify float32 rounding in
  the key gradient: there dense itself is 5e-5 off float64, so the bound is 1e-4 of the largest gradient."""
  q, k, v = inputs()
  if not sharp:
    q, k = q / 10 - 0.5, k / 10 - 0.5
  weights = jax.random.normal(jax.random.key(5), (B, N, CV))
  loss = lambda fn: lambda *a: jnp.sum(jnp.sin(fn(*a)) * weights)
  want = jax.grad(loss(read('dense')), argnums=(0, 1, 2))(q, k, v)
  got = jax.jit(jax.grad(loss(read(implementation, chunk)), argnums=(0, 1, 2)))(q, k, v)
  tolerance = 1e-4 if sharp else 1e-5
  for name, g, w in zip(('query', 'keys', 'values'), got, want):
    np.testing.assert_allclose(g, w, atol=tolerance * max(1.0, float(jnp.abs(w).max())), rtol=0, err_msg=name)


def test_chunks_with_a_remainder():
  """151 positions (prime): 9 chunks of 16 and a last one of 7; values and gradients."""
  q, k, v = inputs()
  keys = jnp.concatenate([k.reshape(B, -1, CK), k[:, 0, :1]], axis=1)
  values = jnp.concatenate([v.reshape(B, -1, CV), v[:, 0, :1]], axis=1)
  valid = jnp.asarray(np.concatenate([np.repeat(SLOTS, P, axis=1), np.ones((B, 1), bool)], axis=1))
  assert attention_lib._chunks(151, 16) == (16, 9, 7)
  dense = lambda q, k, v: attention_lib.dense_attention(q, k, v, valid)
  chunked = lambda q, k, v: attention_lib.chunked_attention(q, k, v, valid, chunk_size=16)
  exact, tolerance = float64_read(q, keys, values, valid)
  np.testing.assert_allclose(dense(q, keys, values), exact, atol=tolerance, rtol=0)
  np.testing.assert_allclose(chunked(q, keys, values), exact, atol=tolerance, rtol=0)
  loss = lambda fn: lambda *a: jnp.sum(jnp.sin(fn(*a)))
  want = jax.grad(loss(dense), argnums=(0, 1, 2))(q / 10, keys / 10, values)
  got = jax.grad(loss(chunked), argnums=(0, 1, 2))(q / 10, keys / 10, values)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5 * max(1.0, float(jnp.abs(w).max())), rtol=0)


def test_scale_and_bfloat16():
  q, k, v = inputs()
  exact, tolerance = float64_read(q, k, v, SLOTS, scale=0.3)
  want = read('dense', scale=0.3)(q, k, v)
  np.testing.assert_allclose(want, exact, atol=tolerance, rtol=0)
  np.testing.assert_allclose(read('chunked', 16, scale=0.3)(q, k, v), exact, atol=tolerance, rtol=0)
  half = read('chunked', 16, scale=0.3)(*inputs(jnp.bfloat16))
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(half.astype(jnp.float32), want, atol=0.1)  # bfloat16 inputs: ~3 digits


def test_auto_is_dense_for_small_memories_and_chunked_beyond_one_chunk():
  resolve = attention_lib.resolve_implementation
  assert resolve('auto', jnp.float32, 32, 64, 1024, 1024) == 'dense'
  assert resolve('auto', jnp.float32, 32, 64, 10800, 1024) == 'chunked'
  assert resolve('chunked', jnp.float32, 32, 64, 10, 1024) == 'chunked'
  if jax.default_backend() == 'cpu':
    assert resolve('auto', jnp.bfloat16, 32, 64, 10800, 1024) == 'chunked'  # cuDNN only on CUDA GPUs
  assert attention_lib._fused_heads(32, 64) == (1, 64)  # PCMA stage 1: keys padded to the value width
  assert attention_lib._fused_heads(64, 256) == (2, 128)  # TMANet: values in two heads of 128


def test_bad_options_are_refused():
  with pytest.raises(ValueError, match='PCMAOptions.attention must be one of'):
    PCMAOptions(attention='flash')
  with pytest.raises(ValueError, match='TMAOptions.attention_chunk'):
    TMAOptions(attention_chunk=0)
  q, k, v = inputs()
  with pytest.raises(ValueError, match='slot_valid'):
    attention_lib.memory_attention(q, k, v, jnp.ones((B, T + 1), bool))
  config = default_model_config()
  config.precision = 'float64'
  with pytest.raises(ValueError, match='model.precision must be one of'):
    build(config, num_classes=3)


def stage_memory(seed=0, t=T, h=6, w=8):
  k = jax.random.split(jax.random.key(seed), 4)
  memory = StageMemory(keys=jax.random.normal(k[0], (2, t, h, w, CK)),
                       values=jax.nn.relu(jax.random.normal(k[1], (2, t, h, w, CV))),
                       valid=jnp.asarray(np.array([[False] + [True] * (t - 1), [True] * t])))
  return memory, jax.random.normal(k[2], (2, h, w, CK)), jax.random.normal(k[3], (2, h, w, CV))


@pytest.mark.parametrize('key_norm', ['softmax10', 'dot'])
@pytest.mark.parametrize('implementation', ['chunked', 'fused'])
def test_attend_reads_the_same(key_norm, implementation):
  memory, key, value = stage_memory()
  options = lambda attention: PCMAOptions(memory_length=T, warmup='partial', key_norm=key_norm,
                                          attention=attention, attention_chunk=20)
  want, enhanced, stored = attend(memory, key, value, options('dense'))
  got, got_enhanced, got_stored = attend(memory, key, value, options(implementation))
  if key_norm == 'softmax10':  # keys of 10 x a softmax
    scores = SCORE_BOUND
  else:
    keys = np.asarray(memory.keys).reshape(2, -1, CK)
    scores = np.abs(np.einsum('bnc,bmc->bnm', np.asarray(key).reshape(2, -1, CK), keys)).max() / np.sqrt(CK)
  tolerance = 2 * softmax_read_tolerance(scores, np.abs(memory.values).max())  # two float32 reads
  np.testing.assert_allclose(got, want, atol=tolerance, rtol=0)
  np.testing.assert_array_equal(got_enhanced, enhanced)
  for a, b in zip(jax.tree.leaves(got_stored), jax.tree.leaves(stored)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('implementation', ['chunked', 'fused'])
def test_tma_read_is_the_same(implementation):
  k = jax.random.split(jax.random.key(3), 3)
  query = jax.random.normal(k[0], (2, 5, 6, CK))
  keys, values = jax.random.normal(k[1], (2, T, 5, 6, CK)), jax.random.normal(k[2], (2, T, 5, 6, CV))
  for matmul_norm in (False, True):
    want = tma_lib.memory_attention(query, keys, values, matmul_norm)
    got = tma_lib.memory_attention(query, keys, values, matmul_norm, implementation=implementation, chunk_size=32)
    exact, tolerance = float64_read(query.reshape(2, -1, CK), keys, values,
                                    scale=CK ** -0.5 if matmul_norm else 1.0)
    np.testing.assert_allclose(want, exact.reshape(want.shape), atol=tolerance, rtol=0)
    np.testing.assert_allclose(got, exact.reshape(got.shape), atol=tolerance, rtol=0)


def tiny_model(temporal: str, attention: str, precision: str = 'default'):
  config = default_model_config()
  config.temporal, config.precision = temporal, precision
  config.depth, config.variant, config.output_stride, config.multi_grid = 18, 'torchvision', 16, None
  config.pcma.update(memory_length=2, attention=attention, attention_chunk=10)
  config.head = 'fcn'
  config.head_options = {'channels': 8, 'num_convs': 1, 'concat_input': False, 'in_stage': 'stage1'}
  if temporal == 'tma':
    config.head = 'classifier'
    config.head_options = {'in_stage': 'stage4'}
    config.tma.update(memory_length=2, key_channels=8, value_channels=16, channels=24, attention=attention,
                      attention_chunk=3)
  return build(config, num_classes=4)


@pytest.mark.parametrize('temporal', ['pcma', 'tma'])
def test_models_on_chunked_attention_equal_dense_and_scan_equals_step(temporal):
  clip = jax.random.normal(jax.random.key(1), (2, 3, 32, 48, 3))
  dense = tiny_model(temporal, 'dense')
  variables = jax.jit(dense.init)(jax.random.key(0), clip[:, :1])
  chunked = tiny_model(temporal, 'chunked')
  want = jax.jit(dense.apply)(variables, clip)
  got = jax.jit(chunked.apply)(variables, clip)
  np.testing.assert_allclose(got.logits, want.logits, atol=reordered_sums_tolerance(want.logits), rtol=0)
  step = jax.jit(functools.partial(chunked.apply, method=chunked.step))
  memory = chunked.init_memory(2, clip.shape[2:4])
  for i in range(clip.shape[1]):
    one = step(variables, clip[:, i], memory)
    memory = one.memory
    np.testing.assert_allclose(one.logits, got.logits[:, i], atol=reordered_sums_tolerance(got.logits), rtol=0)


def test_precision_reaches_the_model_and_highest_equals_default_on_cpu():
  clip = jax.random.normal(jax.random.key(1), (1, 2, 32, 48, 3))
  model = tiny_model('pcma', 'auto')
  highest = tiny_model('pcma', 'auto', 'highest')
  assert highest.backbone.precision == jax.lax.Precision.HIGHEST
  assert highest.head.precision == highest.temporal.precision == jax.lax.Precision.HIGHEST
  assert model.backbone.precision is None
  variables = jax.jit(model.init)(jax.random.key(0), clip[:, :1])
  text = jax.jit(highest.apply).lower(variables, clip).as_text()
  assert 'HIGHEST' in text
  if jax.default_backend() == 'cpu':  # CPU computes float32 in full either way
    np.testing.assert_allclose(jax.jit(highest.apply)(variables, clip).logits,
                               jax.jit(model.apply)(variables, clip).logits, atol=1e-6, rtol=0)
