"""The Flax ResNet family: parameter counts, geometry (output strides, dilations), train/eval batch norm,
dtypes and argument checking. No torch; shapes via jax.eval_shape, small inputs and numpy-filled variables
(a real `init` compiles one RNG program per parameter shape, which is slow on a small CPU)."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma_resnet.models.layers import BN_EPSILON, BN_MOMENTUM
from ma_resnet.models.backbones.resnet import DEPTHS, STAGES, VARIANTS, ResNet, stage_channels, stage_sizes

# Parameters with the 1000-class classifier. torchvision: its published counts (26: timm's resnet26). vd / v1c:
# the same network with the deep stem (+19,232); vd ResNet18/34 also have a 1x1 projection in stage 1's first
# block (+4,224; PaddleSeg ResNet_vd gives every stage's first block a projection shortcut).
PARAM_COUNTS = {
    (18, 'torchvision'): 11_689_512, (18, 'vd'): 11_712_968, (18, 'v1c'): 11_708_744,
    (26, 'torchvision'): 15_995_176, (26, 'vd'): 16_014_408, (26, 'v1c'): 16_014_408,  # timm resnet26 / 26d
    (34, 'torchvision'): 21_797_672, (34, 'vd'): 21_821_128, (34, 'v1c'): 21_816_904,
    (50, 'torchvision'): 25_557_032, (50, 'vd'): 25_576_264, (50, 'v1c'): 25_576_264,
    (101, 'torchvision'): 44_549_160, (101, 'vd'): 44_568_392, (101, 'v1c'): 44_568_392,
    (152, 'torchvision'): 60_192_808, (152, 'vd'): 60_212_040, (152, 'v1c'): 60_212_040,
}
TV_STEM = 7 * 7 * 3 * 64 + 2 * 64  # conv + BN scale/bias
DEEP_STEM = 3 * 3 * 3 * 32 + 2 * 32 + 3 * 3 * 32 * 32 + 2 * 32 + 3 * 3 * 32 * 64 + 2 * 64
VD_STAGE1_PROJECTION = 64 * 64 + 2 * 64  # basic-block ResNets only


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@functools.cache
def _abstract(depth, variant, num_classes=1000, shape=(1, 32, 32, 3), **kw):
  """(outputs, variables) as ShapeDtypeStructs."""
  model = ResNet(depth=depth, variant=variant, num_classes=num_classes, **kw)
  return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x),
                        jax.ShapeDtypeStruct(shape, jnp.float32))


def _numpy_variables(abstract_variables, seed=0):
  """Variables with torchvision-like values: He fan-out kernels, random BN affine and running statistics."""
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == 'kernel' and len(s.shape) == 4:
      return rng.normal(0, math.sqrt(2 / (s.shape[0] * s.shape[1] * s.shape[3])), s.shape).astype(np.float32)
    if name == 'kernel':
      return rng.normal(0, 0.05, s.shape).astype(np.float32)
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    return rng.normal(0, 0.1, s.shape).astype(np.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(fill, abstract_variables)


# ---------------------------------------------------------------------------------------------------------
# Parameter counts.

def test_counts_cover_every_depth_and_variant():
  assert set(PARAM_COUNTS) == {(d, v) for d in DEPTHS for v in VARIANTS}


@pytest.mark.parametrize('depth,variant', sorted(PARAM_COUNTS))
def test_parameter_counts(depth, variant):
  _, variables = _abstract(depth, variant)
  assert set(variables) == {'params', 'batch_stats'}
  params = variables['params']
  assert _count(params) == PARAM_COUNTS[depth, variant]
  c4 = stage_channels(depth)['stage4']
  assert _count({k: v for k, v in params.items() if k != 'fc'}) == PARAM_COUNTS[depth, variant] - (c4 + 1) * 1000
  # every batch norm has scale/bias params and mean/var statistics of the same size
  assert _count(variables['batch_stats']) == sum(
      math.prod(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(params) if p[-1].key == 'scale') * 2


@pytest.mark.parametrize('depth', sorted(DEPTHS))
def test_variants_differ_from_torchvision_by_the_stem(depth):
  tv = _abstract(depth, 'torchvision')[1]['params']
  v1c = _abstract(depth, 'v1c')[1]['params']
  vd = _abstract(depth, 'vd')[1]['params']
  assert _count(tv['stem']) == TV_STEM and _count(v1c['stem']) == _count(vd['stem']) == DEEP_STEM
  assert DEEP_STEM - TV_STEM == 19_232
  shapes = lambda t: jax.tree.map(lambda s: s.shape, {k: v for k, v in t.items() if k != 'stem'})
  assert shapes(v1c) == shapes(tv)  # everything but the stem is identical
  assert _count(v1c) - _count(tv) == DEEP_STEM - TV_STEM
  basic = DEPTHS[depth][0] == 'basic'
  assert _count(vd) - _count(tv) == DEEP_STEM - TV_STEM + (VD_STAGE1_PROJECTION if basic else 0)
  assert ('downsample' in vd['stage1']['block0']) and ('downsample' in tv['stage1']['block0']) != basic


# ---------------------------------------------------------------------------------------------------------
# Geometry.

@pytest.mark.parametrize('depth,variant,size', [(18, 'torchvision', (64, 96)), (18, 'v1c', (65, 97)),
                                                 (50, 'vd', (37, 50))])
@pytest.mark.parametrize('output_stride', [8, 16, 32])
def test_output_shapes_match_stage_sizes(depth, variant, size, output_stride):
  out, _ = _abstract(depth, variant, num_classes=7, shape=(2,) + size + (3,), output_stride=output_stride)
  sizes, channels = stage_sizes(size, output_stride), stage_channels(depth)
  assert set(out) == set(STAGES) | {'logits'}
  for name in STAGES:
    assert out[name].shape == (2,) + sizes[name] + (channels[name],), name
    assert out[name].dtype == jnp.float32
  assert out['logits'].shape == (2, 7)
  # strides 4, 8, 16, 32 capped at the output stride
  for name, stride in zip(STAGES, (4, 8, 16, 32)):
    s = min(stride, output_stride)
    assert sizes[name] == (math.ceil(size[0] / s), math.ceil(size[1] / s))


def _convs(jaxpr):
  """conv_general_dilated equations of a jaxpr, in execution order, through nested jaxprs."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      yield eqn
    for p in eqn.params.values():
      sub = getattr(p, 'jaxpr', p)
      if hasattr(sub, 'eqns'):
        yield from _convs(sub)


def _conv_geometry(depth, output_stride, multi_grid, size=(64, 96), **options):
  """[(kernel size, stride, dilation, padding)] of every conv, in order."""
  model = ResNet(depth=depth, output_stride=output_stride, multi_grid=multi_grid, **options)
  x = jax.ShapeDtypeStruct((1,) + size + (3,), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, x).jaxpr
  return [(e.invars[1].aval.shape[0], e.params['window_strides'][0], e.params['rhs_dilation'][0],
           e.params['padding'][0]) for e in _convs(jaxpr)]


@pytest.mark.parametrize('output_stride,multi_grid,expected', [
    (32, None, [1, 1, 1, 1]),
    (16, None, [1, 1, 1, 2]),
    (8, None, [1, 1, 2, 4]),
    (8, (1, 2), [1, 1, 2, (4, 8)]),
    (16, (2, 3), [1, 1, 1, (4, 6)]),
])
def test_dilations_strides_and_padding(output_stride, multi_grid, expected):
  """ResNet18: per-stage dilations of the 3x3 convs (all blocks of a stage dilated, mmseg / PaddleSeg
  convention; multi-grid multiplies those of the last stage), padding = dilation, strides stop at the
  output stride."""
  geometry = _conv_geometry(18, output_stride, multi_grid)
  assert geometry[0] == (7, 2, 1, (3, 3))
  threes = [g for g in geometry if g[0] == 3]
  assert len(threes) == 16  # 4 stages x 2 blocks x 2 convs
  for stage in range(4):
    rates = expected[stage] if isinstance(expected[stage], tuple) else (expected[stage],) * 2
    convs = threes[4 * stage: 4 * stage + 4]
    assert [c[2] for c in convs] == [rates[0], rates[0], rates[1], rates[1]], (stage, convs)
    assert all(c[3] == (c[2], c[2]) for c in convs)
    strided = stage > 0 and 2 ** (stage + 2) <= output_stride
    assert [c[1] for c in convs] == [2 if strided else 1, 1, 1, 1], (stage, convs)
  ones = [g for g in geometry if g[0] == 1]  # projections: 1x1, undilated, unpadded
  assert all(g[2] == 1 and g[3] == (0, 0) for g in ones) and len(ones) == 3


def test_contract_dilation_halves_the_first_block_of_dilated_stages():
  """mmseg ResNetV1c-50 at output stride 8 (TMANet): stage 3 runs 1, 2, 2, 2, 2, 2 and stage 4 2, 4, 4."""
  geometry = _conv_geometry(50, 8, None, variant='v1c', contract_dilation=True)
  assert [g[0] for g in geometry[:3]] == [3, 3, 3]  # the deep stem
  block_threes = [g for g in geometry[3:] if g[0] == 3]
  assert [g[2] for g in block_threes] == [1] * 3 + [1] * 4 + [1] + [2] * 5 + [2, 4, 4]
  assert all(g[3] == (g[2], g[2]) for g in block_threes)
  multi = _conv_geometry(50, 8, (1, 2, 4), variant='v1c', contract_dilation=True)  # a multi-grid wins
  assert [g[2] for g in multi[3:] if g[0] == 3][-3:] == [4, 8, 16]


def test_only_the_stages_asked_for_run():
  model = ResNet(depth=18)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, stages=('stage2',)), x)
  assert set(variables['params']) == {'stem', 'stage1', 'stage2'}
  out = jax.eval_shape(lambda v, x: model.apply(v, x, stages=('stage1', 'stage2')), variables, x)
  assert set(out) == {'stage1', 'stage2'}
  with pytest.raises(ValueError, match='stage5'):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), stages=('stage5',))


# ---------------------------------------------------------------------------------------------------------
# Batch norm in train and eval mode.

@pytest.fixture(scope='module')
def resnet18():
  model = ResNet(depth=18, num_classes=10)
  _, variables = _abstract(18, 'torchvision', num_classes=10, shape=(3, 32, 48, 3))
  x = np.random.default_rng(2).standard_normal((3, 32, 48, 3)).astype(np.float32)
  return model, _numpy_variables(variables), x


def test_train_mode_updates_batch_stats(resnet18):
  model, variables, x = resnet18
  out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(variables, x)
  new, old = updates['batch_stats'], variables['batch_stats']
  assert jax.tree.structure(new) == jax.tree.structure(old)
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), new, old))
  assert all(changed)
  # the running mean of the first batch norm moves towards the batch mean (PyTorch momentum 0.1)
  conv = jax.lax.conv_general_dilated(x, variables['params']['stem']['conv1']['conv']['kernel'], (2, 2),
                                      ((3, 3), (3, 3)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision='highest')
  mean0 = old['stem']['conv1']['bn']['mean']
  np.testing.assert_allclose(new['stem']['conv1']['bn']['mean'],
                             BN_MOMENTUM * mean0 + (1 - BN_MOMENTUM) * np.mean(conv, axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-5)
  assert BN_EPSILON == 1e-5  # torchvision's BatchNorm2d eps
  # in train mode an element's output depends on the rest of the batch
  out2, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, np.concatenate([x[:1], x[1:] * 3 + 1]))
  assert not np.allclose(out['stage1'][0], out2['stage1'][0])


def test_eval_mode_keeps_batch_stats_and_is_per_example(resnet18):
  model, variables, x = resnet18
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=['batch_stats']))
  out, updates = apply(variables, x)
  assert jax.tree.all(jax.tree.map(np.array_equal, updates['batch_stats'], variables['batch_stats']))
  other, _ = apply(variables, np.concatenate([x[:1], x[1:] * 3 + 1]))
  for name in STAGES + ('logits',):
    np.testing.assert_allclose(out[name][0], other[name][0], rtol=1e-6, atol=1e-6)
  assert np.all(np.isfinite(out['logits']))


def test_vd_projection_pools_v1c_does_not():
  """vd and v1c share the parameter tree of ResNet50; only the projection of strided blocks differs
  (2x2 ceil-mode average pool then 1x1 stride 1, instead of 1x1 stride 2)."""
  shapes = lambda v: jax.tree.map(lambda s: s.shape, _abstract(50, v, num_classes=None)[1])
  assert shapes('vd') == shapes('v1c')
  variables = _numpy_variables(_abstract(50, 'v1c', num_classes=None)[1])
  stage2 = lambda variant: jax.jit(lambda v, x: ResNet(depth=50, variant=variant).apply(
      v, 1, x, method=ResNet.run_stage))
  x = np.random.default_rng(3).standard_normal((1, 9, 9, 256)).astype(np.float32)  # odd: ceil-mode pool
  s2_vd, s2_v1c = stage2('vd')(variables, x), stage2('v1c')(variables, x)
  assert s2_vd.shape == s2_v1c.shape == (1, 5, 5, 512)
  assert not np.allclose(s2_vd, s2_v1c)


# ---------------------------------------------------------------------------------------------------------
# dtypes and arguments.

def test_bfloat16_compute_keeps_float32_variables():
  out, variables = _abstract(18, 'vd', num_classes=10, shape=(1, 32, 32, 3), dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  assert all(out[k].dtype == jnp.bfloat16 for k in out) and set(out) == set(STAGES) | {'logits'}
  model = ResNet(depth=18, variant='vd', num_classes=10, dtype=jnp.bfloat16)
  _, updates = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']),
                              variables, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(updates))


@pytest.mark.parametrize('kwargs,match', [
    (dict(depth=20), 'depth must be one of'),
    (dict(variant='resnet_d'), 'variant must be one of'),
    (dict(output_stride=4), 'output_stride must be one of'),
    (dict(depth=50, multi_grid=(1, 2)), 'multi_grid needs 3 rates'),
    (dict(depth=18, multi_grid=(1, 2, 4)), 'multi_grid needs 2 rates'),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda x: ResNet(**kwargs).init(jax.random.key(0), x),
                   jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))

