"""Segmentation heads (PSPNet, SFNet, DNLNet, FCN + auxiliary FCN) built through `build`, plain and MA.

- helpers: adaptive average pooling and bilinear grid sampling against numpy loops (and against torch's
  `adaptive_avg_pool2d` / `grid_sample` when torch imports); SFNet's FAM and the DNL block against torch
  transcriptions of the public code;
- every head x {plain, MA}: train mode (batch statistics, dropout rng, auxiliary head) gives logits at the
  input size, and a few SGD steps on a fixed clip lower the loss (backbone held fixed);
- MA (memory length 2, PCMA on all four stages): eval-mode logits, and streaming `step` equals the scanned
  clip `apply`; the memory changes the head's output;
- parameter counts pinned for a small ResNet18 config and for ResNet50 OS8 / 19 classes (mmseg's published
  figure where there is one); bfloat16 compute traces;
- head options: a head's own options work, others are refused with a clear error.

Small on purpose (ResNet18, 1x3x48x64 clips). Compilation dominates, so: no jitted `init` (numpy variables
from `eval_shape`), arrays passed to jitted functions as arguments (not closed over, which XLA would constant
fold), XLA backend optimisation off. About two minutes on two shared cores.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ma_resnet.models import build, default_model_config
from ma_resnet.models.heads import (DisentangledNonLocal, FlowAlignment, adaptive_avg_pool, adaptive_pool_matrix,
                                    flow_warp, grid_sample_bilinear)
from ma_resnet.models.layers import BN_MOMENTUM
from tolerances import EPS32

HEADS = ('pspnet', 'sfnet', 'dnlnet', 'fcn')
TEMPORAL = ('plain', 'pcma')
B, T, H, W = 1, 3, 48, 64
NUM_CLASSES = 5


def _torch():
  """torch, or skip saying so."""
  return pytest.importorskip('torch', reason='torch is not installed (pip install torch==2.13.0): the torch '
                                             'comparisons are skipped; the numpy references still run')


# ---------------------------------------------------------------------------------------------------------
# Adaptive average pooling.

def _adaptive_pool_reference(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """NHWC adaptive average pool, PyTorch's bins written out: [floor(i*H/o), ceil((i+1)*H/o))."""
  n, h, w, c = x.shape
  out = np.zeros((n, out_h, out_w, c), np.float64)
  for i in range(out_h):
    r0, r1 = math.floor(i * h / out_h), math.ceil((i + 1) * h / out_h)
    for j in range(out_w):
      c0, c1 = math.floor(j * w / out_w), math.ceil((j + 1) * w / out_w)
      out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
  return out


def pool_tolerance(x: np.ndarray, size, out) -> float:
  """A float32 average of n values errs by at most ~n*eps*max|x| (the summation bound; the bin weights 1/n add
  eps each), n the largest bin: ceil(in/out) + 1 elements per axis."""
  n = (math.ceil(size[0] / out[0]) + 1) * (math.ceil(size[1] / out[1]) + 1)
  return n * EPS32 * float(np.abs(x).max())


POOL_CASES = [((6, 8), (1, 1)), ((6, 8), (2, 2)), ((6, 8), (3, 3)), ((6, 8), (6, 6)), ((7, 11), (6, 6)),
              ((3, 4), (6, 6)), ((1, 1), (6, 6)), ((2, 5), (3, 2)), ((13, 17), (6, 3))]


@pytest.mark.parametrize('size,out', POOL_CASES)
def test_adaptive_avg_pool_matches_numpy_bins(size, out):
  x = np.random.default_rng(0).standard_normal((2,) + size + (3,)).astype(np.float32)
  np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(x), out), _adaptive_pool_reference(x, *out),
                             atol=pool_tolerance(x, size, out), rtol=0)  # against float64


def test_adaptive_pool_matrix_rows_are_averages():
  for n_in in range(1, 15):
    for n_out in range(1, 9):
      m = adaptive_pool_matrix(n_in, n_out)
      np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=2 * n_in * EPS32)  # n_in weights, each rounded
      assert (m > 0).any(axis=0).all()  # every input element is in some bin


@pytest.mark.parametrize('size,out', POOL_CASES)
def test_adaptive_avg_pool_matches_torch(size, out):
  torch = _torch()
  x = np.random.default_rng(1).standard_normal((2,) + size + (3,)).astype(np.float32)
  ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), out)
  np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(x), out), ref.permute(0, 2, 3, 1).numpy(),
                             atol=2 * pool_tolerance(x, size, out), rtol=0)  # two float32 averages


# ---------------------------------------------------------------------------------------------------------
# Bilinear grid sampling and SFNet's flow warp.

def _grid_sample_reference(x: np.ndarray, grid: np.ndarray, align_corners: bool) -> np.ndarray:
  """NHWC bilinear grid sampling with zero padding, pixel by pixel."""
  n, h, w, c = x.shape
  _, oh, ow, _ = grid.shape
  out = np.zeros((n, oh, ow, c), np.float64)
  for b in range(n):
    for i in range(oh):
      for j in range(ow):
        gx, gy = float(grid[b, i, j, 0]), float(grid[b, i, j, 1])
        if align_corners:
          px, py = (gx + 1) / 2 * (w - 1), (gy + 1) / 2 * (h - 1)
        else:
          px, py = ((gx + 1) * w - 1) / 2, ((gy + 1) * h - 1) / 2
        x0, y0 = math.floor(px), math.floor(py)
        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
          if 0 <= yy < h and 0 <= xx < w:
            out[b, i, j] += (1 - abs(px - xx)) * (1 - abs(py - yy)) * x[b, yy, xx]
  return out


def _random_grid(seed, n, oh, ow, spread=1.3):
  """Normalised grids reaching past the borders (zero padding) and hitting exact pixel centres."""
  rng = np.random.default_rng(seed)
  grid = rng.uniform(-spread, spread, (n, oh, ow, 2)).astype(np.float32)
  grid[:, 0, 0] = (-1.0, -1.0)
  grid[:, -1, -1] = (1.0, 1.0)
  return grid


@pytest.mark.parametrize('align_corners', [True, False])
def test_grid_sample_matches_numpy(align_corners):
  x = np.random.default_rng(2).standard_normal((2, 5, 7, 3)).astype(np.float32)
  grid = _random_grid(3, 2, 4, 6)
  np.testing.assert_allclose(grid_sample_bilinear(jnp.asarray(x), jnp.asarray(grid), align_corners),
                             _grid_sample_reference(x, grid, align_corners), atol=1e-5, rtol=0)


def test_grid_sample_identity_grid_returns_input():
  x = jax.random.normal(jax.random.key(0), (1, 4, 6, 2))
  np.testing.assert_allclose(flow_warp(x, jnp.zeros((1, 4, 6, 2)), (4, 6)), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize('align_corners', [True, False])
def test_grid_sample_matches_torch(align_corners):
  torch = _torch()
  x = np.random.default_rng(4).standard_normal((2, 6, 9, 4)).astype(np.float32)
  grid = _random_grid(5, 2, 11, 13)
  ref = torch.nn.functional.grid_sample(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(grid),
                                        mode='bilinear', padding_mode='zeros', align_corners=align_corners)
  np.testing.assert_allclose(grid_sample_bilinear(jnp.asarray(x), jnp.asarray(grid), align_corners),
                             ref.permute(0, 2, 3, 1).numpy(), atol=1e-5, rtol=0)


def _torch_conv_weight(torch, kernel):
  """Flax HWIO kernel -> torch OIHW weight."""
  return torch.from_numpy(np.array(kernel)).permute(3, 2, 0, 1).contiguous()


def test_flow_alignment_matches_sfnet_reference():
  """FAM against a torch transcription of SFNet's `AlignedModule` (SFSegNets / PaddleSeg), same weights."""
  torch = _torch()
  F = torch.nn.functional
  fine = jax.random.normal(jax.random.key(0), (2, 8, 10, 6))
  coarse = jax.random.normal(jax.random.key(1), (2, 4, 5, 6))
  fam = FlowAlignment(features=3)
  params = _init_like_modules(jax.eval_shape(fam.init, jax.random.key(2), fine, coarse))['params']
  ours = fam.apply({'params': params}, fine, coarse)

  def reference(low, high):  # NCHW, the reference forward and flow_warp
    size = low.shape[2:]
    low_p = F.conv2d(low, _torch_conv_weight(torch, params['down_l']['kernel']))
    high_p = F.conv2d(high, _torch_conv_weight(torch, params['down_h']['kernel']))
    high_p = F.interpolate(high_p, size=size, mode='bilinear', align_corners=True)
    flow = F.conv2d(torch.cat([high_p, low_p], 1), _torch_conv_weight(torch, params['flow_make']['kernel']),
                    padding=1)
    out_h, out_w = size
    norm = torch.tensor([[[[out_w, out_h]]]]).type_as(high)
    hh = torch.linspace(-1.0, 1.0, out_h).view(-1, 1).repeat(1, out_w)
    ww = torch.linspace(-1.0, 1.0, out_w).repeat(out_h, 1)
    grid = torch.cat((ww.unsqueeze(2), hh.unsqueeze(2)), 2).repeat(high.shape[0], 1, 1, 1).type_as(high)
    grid = grid + flow.permute(0, 2, 3, 1) / norm
    return F.grid_sample(high, grid, align_corners=True), flow

  to_torch = lambda a: torch.from_numpy(np.array(a)).permute(0, 3, 1, 2)
  ref, flow = reference(to_torch(fine), to_torch(coarse))
  assert float(flow.abs().max()) > 1.0  # the flow really moves the samples (past borders too)
  np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=1e-5, rtol=0)


def test_dnl_block_matches_reference():
  """The DNL block against a torch transcription of mmseg's `DisentangledNonLocal2d` (eval mode), with
  conv_out + BN applied once to pairwise + unary (see dnlnet.py)."""
  torch = _torch()
  F = torch.nn.functional
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 8))
  block = DisentangledNonLocal(reduction=2, temperature=0.05)
  variables = _init_like_modules(jax.eval_shape(functools.partial(block.init, train=False), jax.random.key(1), x))
  params = dict(variables['params'])
  rng = np.random.default_rng(0)
  # Non-trivial weights: larger projections, a non-zero output BN, random running statistics.
  for name in ('g', 'theta', 'phi', 'conv_mask'):
    params[name] = {k: jnp.asarray(rng.standard_normal(v.shape).astype(np.float32) * 0.3)
                    for k, v in params[name].items()}
  params['conv_out_bn'] = {k: jnp.asarray(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
                           for k, v in params['conv_out_bn'].items()}
  stats = {'conv_out_bn': {'mean': jnp.asarray(rng.standard_normal(8).astype(np.float32) * 0.1),
                           'var': jnp.asarray(rng.uniform(0.5, 2.0, 8).astype(np.float32))}}
  ours = block.apply({'params': params, 'batch_stats': stats}, x, train=False)

  t = lambda a: torch.from_numpy(np.array(a))
  conv1x1 = lambda inp, p: F.conv2d(inp, _torch_conv_weight(torch, p['kernel']),
                                    t(p['bias']) if 'bias' in p else None)
  xt = t(x).permute(0, 3, 1, 2)
  n, c = xt.shape[:2]
  inter = c // 2
  g_x = conv1x1(xt, params['g']).view(n, inter, -1).permute(0, 2, 1)
  theta_x = conv1x1(xt, params['theta']).view(n, inter, -1).permute(0, 2, 1)
  phi_x = conv1x1(xt, params['phi']).view(n, inter, -1)
  theta_x = theta_x - theta_x.mean(dim=-2, keepdim=True)
  phi_x = phi_x - phi_x.mean(dim=-1, keepdim=True)
  pairwise = (torch.matmul(theta_x, phi_x) / inter ** 0.5 / 0.05).softmax(dim=-1)
  y = torch.matmul(pairwise, g_x).permute(0, 2, 1).reshape(n, inter, *xt.shape[2:])
  unary = conv1x1(xt, params['conv_mask']).view(n, 1, -1).softmax(dim=-1)
  unary_x = torch.matmul(unary, g_x).permute(0, 2, 1).reshape(n, inter, 1, 1)
  out = F.conv2d(y + unary_x, _torch_conv_weight(torch, params['conv_out']['kernel']))
  out = F.batch_norm(out, t(stats['conv_out_bn']['mean']), t(stats['conv_out_bn']['var']),
                     t(params['conv_out_bn']['scale']), t(params['conv_out_bn']['bias']), False, 0.0, 1e-5)
  ref = (xt + out).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Whole models through `build`.

def tiny_config(head: str, temporal: str, aux: bool = True) -> ml_collections.ConfigDict:
  config = default_model_config()
  config.temporal = temporal
  config.depth = 18
  config.multi_grid = None
  config.output_stride = 8
  config.head = head
  config.head_options = ml_collections.ConfigDict({})
  config.aux_head = 'fcn' if aux else ''
  config.pcma.memory_length = 2
  if temporal == 'pcma':
    # All four stages, as the paper's Figure 1; `build` keeps those the heads read (the enhanced maps do not
    # feed later stages): stage3 (auxiliary head) and stage4, all four for SFNet.
    config.pcma.stages = ('stage1', 'stage2', 'stage3', 'stage4')
  return config


# XLA backend optimisation off: the same programs, about half the compile time, which dominates this file.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


def _init_like_modules(shapes, seed: int = 0):
  """Variables for the tree of `shapes`, drawn with numpy like the modules' own initialisers: conv kernels
  He-normal (fan-in), but normal(0, 0.01) for the classifiers and the DNL projections g/theta/phi (mmseg);
  biases 0; batch norm scale 1, mean 0, var 1.

  A jitted `model.init` takes 10-20 s to compile (its random initialisers), more than the rest of a model
  test, hence `jax.eval_shape(model.init, ...)` and numpy. (Numpy also for the other per-leaf arithmetic and
  checks here: an eager jnp op compiles once per leaf shape, which adds up to seconds per model.)
  """
  rng = np.random.default_rng(seed)
  small = ('classifier', 'g', 'theta', 'phi')

  def make(path, s):
    names = [getattr(k, 'key', '') for k in path]
    if names[-1] == 'kernel':
      std = 0.01 if any(n in small for n in names) else np.sqrt(2.0 / np.prod(s.shape[:-1]))
      return (rng.standard_normal(s.shape) * std).astype(np.float32)
    return np.ones(s.shape, np.float32) if names[-1] in ('scale', 'var') else np.zeros(s.shape, np.float32)

  return jax.tree_util.tree_map_with_path(make, shapes)


@functools.lru_cache(maxsize=None)
def _init(head: str, temporal: str):
  """(model, initial variables) of a small segmenter."""
  model = build(tiny_config(head, temporal), num_classes=NUM_CLASSES)
  keys = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  shapes = jax.eval_shape(model.init, keys, jax.ShapeDtypeStruct((B, 1, H, W, 3), jnp.float32))
  return model, _init_like_modules(shapes)


def _learnable_clip(seed: int = 3):
  """A learnable task: 16x16 blocks of random classes, each class its own colour, plus noise."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.repeat(rng.integers(0, NUM_CLASSES, (B, T, H // 16, W // 16)), 16, 2), 16, 3)
  palette = rng.standard_normal((NUM_CLASSES, 3)).astype(np.float32)
  clip = palette[labels] + 0.3 * rng.standard_normal((B, T, H, W, 3)).astype(np.float32)
  return jnp.asarray(clip), jnp.asarray(labels)


@functools.lru_cache(maxsize=None)
def _training_run(head: str, temporal: str, steps: int = 4):
  """SGD steps on `_learnable_clip` in train mode (batch statistics, dropout rng, auxiliary head).

  The backbone is held fixed (its backward pass would double the compile time, which dominates); head,
  auxiliary head and PCMA train. Returns the losses, the first step's gradients, and the batch-norm
  statistics before and after the first step.
  """
  model, variables = _init(head, temporal)
  clip, labels = _learnable_clip()
  optimizer = optax.sgd(0.1, momentum=0.9)  # cheaper to compile than adam
  params = dict(variables['params'])
  backbone = params.pop('backbone')

  # Everything enters as an argument: closed-over arrays would be constants that XLA folds at compile time
  # (it would run the frozen backbone inside the compiler).
  @jit
  def train_step(params, backbone, batch_stats, opt_state, clip, labels, dropout_key):
    def loss_fn(params):
      out, updates = model.apply({'params': {**params, 'backbone': backbone}, 'batch_stats': batch_stats},
                                 clip, train=True, mutable=['batch_stats'], rngs={'dropout': dropout_key})
      assert out.logits.shape == out.aux_logits.shape == (B, T, H, W, NUM_CLASSES)
      assert out.logits.dtype == jnp.float32
      ce = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return ce(out.logits) + 0.4 * ce(out.aux_logits), updates['batch_stats']
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss, grads

  batch_stats = variables['batch_stats']
  opt_state = jit(optimizer.init)(params)
  key = jax.random.key(4)  # the same dropout mask every step: the losses are comparable
  losses, first = [], {}
  for i in range(steps):
    params, new_stats, opt_state, loss, grads = train_step(params, backbone, batch_stats, opt_state, clip,
                                                           labels, key)
    if i == 0:
      first = jax.device_get({'grads': grads, 'stats_before': batch_stats, 'stats_after': new_stats})
    batch_stats = new_stats
    losses.append(float(loss))
  return losses, first


@pytest.mark.parametrize('temporal', TEMPORAL)
@pytest.mark.parametrize('head', HEADS)
def test_training_steps_lower_the_loss(head, temporal):
  """Train mode: logits and auxiliary logits (B, T, H, W, K) (checked while tracing), finite gradients on
  every head parameter (and on the stage-4 memory attention with MA), updated running statistics, and four
  SGD steps on a fixed learnable clip lower the loss at every step, by 5 % in all."""
  losses, first = _training_run(head, temporal)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(first['grads']))
  assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(first['grads']['head'])), \
      'a head parameter gets no gradient'
  if temporal == 'pcma':  # every head reads stage4: its memory attention trains
    assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(first['grads']['temporal']['pcma_stage4']))
  before, after = jax.tree.leaves(first['stats_before']), jax.tree.leaves(first['stats_after'])
  assert len(before) == len(after) and not any(np.allclose(a, b) for a, b in zip(after, before))
  assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.95 * losses[0], losses


@functools.lru_cache(maxsize=None)
def calibrated(head: str):
  """(model, variables) of the small MA segmenter for eval-mode checks.

  Batch-norm running statistics set to the batch statistics of `_learnable_clip` (from the first training
  step, at the initial parameters), so that eval mode normalises like a trained network: with the initial
  statistics (mean 0, var 1) He-initialised maps grow to ~50 and SFNet's flows to tens of pixels. Batch-norm
  scales perturbed so that they are not all 1.
  """
  model, variables = _init(head, 'pcma')
  _, first = _training_run(head, 'pcma')
  # Running value after one update: new = m * old + (1 - m) * batch (flax momentum m).
  m = BN_MOMENTUM
  stats = jax.tree.map(lambda new, old: (np.asarray(new) - m * np.asarray(old)) / (1 - m),
                       first['stats_after'], first['stats_before'])
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: a + rng.uniform(-0.3, 0.3, a.shape).astype(np.float32) if path[-1].key == 'scale' else a,
      variables['params'])
  return model, {'params': params, 'batch_stats': stats}


@pytest.mark.parametrize('head', HEADS)
def test_eval_logits_and_streaming_step_equal_scanned_apply(head):
  """PCMA, memory length 2, eval mode: the clip's logits, and `step` frame by frame reproduces them."""
  model, variables = calibrated(head)
  frames, _ = _learnable_clip()
  out = jit(model.apply)(variables, frames)
  assert out.logits.shape == (B, T, H, W, NUM_CLASSES) and out.logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out.logits)))
  assert out.aux_logits is None  # eval: no auxiliary head
  np.testing.assert_array_equal(out.enhanced, [[False, False, True]])  # full warm-up of 2 frames

  step = jit(functools.partial(model.apply, method=model.step))
  memory = model.init_memory(B, (H, W))
  logits = []
  for i in range(T):
    o = step(variables, frames[:, i], memory)
    memory = o.memory
    logits.append(o.logits)
  assert float(jnp.max(jnp.abs(jnp.stack(logits, 1) - out.logits))) <= 1e-5
  # The memory reaches the head: the last frame on an empty memory gives other logits.
  alone = step(variables, frames[:, 2], model.init_memory(B, (H, W))).logits
  assert float(jnp.max(jnp.abs(alone - out.logits[:, 2]))) > 1e-3


# ---------------------------------------------------------------------------------------------------------
# Parameter counts.

def _count(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _param_counts(config, num_classes: int, size=(1, 1, 64, 64, 3)) -> dict[str, int]:
  model = build(config, num_classes)
  shapes = jax.eval_shape(lambda x: model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x),
                          jax.ShapeDtypeStruct(size, jnp.float32))
  return {k: _count(v) for k, v in shapes['params'].items()}


# Small config: ResNet18-vd OS8, 5 classes, auxiliary FCN on stage3 (64 channels), PCMA on stages the heads read.
TINY_HEAD_PARAMS = {'pspnet': 1_443_717, 'sfnet': 2_592_133, 'dnlnet': 1_509_318, 'fcn': 1_475_973}
TINY_BACKBONE, TINY_AUX = 11_199_968, 147_909


@pytest.mark.parametrize('temporal', TEMPORAL)
@pytest.mark.parametrize('head', HEADS)
def test_parameter_counts_small_config(head, temporal):
  counts = _param_counts(tiny_config(head, temporal), NUM_CLASSES)
  expected = {'backbone': TINY_BACKBONE, 'head': TINY_HEAD_PARAMS[head], 'aux_head': TINY_AUX}
  if temporal == 'pcma':  # PCMA stage1 1_200, stage2 4_704, stage3 18_624, stage4 74_112: those the heads read
    expected['temporal'] = 98_640 if head == 'sfnet' else 18_624 + 74_112
  assert counts == expected


# ResNet50-vd OS8 (multi-grid 1, 2, 4), 19 classes, plain model, mmseg's auxiliary FCN head.
R50_BACKBONE = 23_527_264  # = mmseg ResNetV1c-50 (the vd avg-pool shortcut adds no parameters)
R50_AUX = 2_364_691        # FCNHead(1024 -> 256, one conv, no concat) + 19-class classifier
R50_HEAD_PARAMS = {
    'pspnet': 23_083_539,  # total 48_975_494 = 48.98 M: mmseg get_flops' published PSPNet-R50-D8 figure
    'sfnet': 18_445_587,   # PaddleSeg SFNetHead, fpn_dim 256 (no public count found)
    'dnlnet': 24_132_372,  # = FCN head + 526_593 of the DNL block (no public count found)
    'fcn': 23_605_779,     # mmseg FCNHead 2048 -> 512, two convs + concat conv
}


@pytest.mark.parametrize('head', HEADS)
def test_parameter_counts_resnet50_os8(head):
  config = tiny_config(head, 'plain')
  config.depth, config.multi_grid = 50, (1, 2, 4)
  counts = _param_counts(config, 19)
  assert counts == {'backbone': R50_BACKBONE, 'head': R50_HEAD_PARAMS[head], 'aux_head': R50_AUX}
  if head == 'pspnet':
    assert round(sum(counts.values()) / 1e6, 2) == 48.98


# ---------------------------------------------------------------------------------------------------------
# Head options.

def test_head_options_are_applied():
  config = tiny_config('pspnet', 'plain', aux=False)
  config.head_options = ml_collections.ConfigDict({'pool_scales': [1, 2], 'channels': 32, 'dropout': 0.0})
  model = build(config, NUM_CLASSES)
  assert model.head.pool_scales == (1, 2) and model.head.channels == 32
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jax.ShapeDtypeStruct((1, 1, H, W, 3),
                                                                                          jnp.float32))
  psp = shapes['params']['head']['psp']
  assert set(psp) == {'bin0', 'bin1', 'bottleneck'}
  assert psp['bottleneck']['conv']['kernel'].shape == (3, 3, 512 + 2 * 32, 32)

  config = tiny_config('sfnet', 'plain', aux=False)
  config.head_options = ml_collections.ConfigDict({'fpn_dim': 64})
  assert build(config, NUM_CLASSES).head.fpn_dim == 64

  config = tiny_config('deeplabv3plus', 'plain', aux=False)
  config.head_options = ml_collections.ConfigDict({'aspp_rates': [1, 2], 'channels': 24,
                                                   'low_level_channels': 8})
  model = build(config, NUM_CLASSES)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jax.ShapeDtypeStruct((1, 1, H, W, 3),
                                                                                          jnp.float32))
  head = shapes['params']['head']
  assert head['aspp']['project']['conv']['kernel'].shape == (1, 1, 3 * 24, 24)  # 2 rates + image pool
  assert head['decoder']['low_level']['conv']['kernel'].shape[-1] == 8
  assert head['decoder']['block1']['pointwise']['conv']['kernel'].shape == (1, 1, 24 + 8, 24)


@pytest.mark.parametrize('head', HEADS)
def test_foreign_head_options_are_refused(head):
  config = default_model_config()  # its head_options hold deeplabv3plus's aspp_rates
  config.head = head
  with pytest.raises(ValueError, match=rf"aspp_rates.*'{head}' head does not take"):
    build(config, NUM_CLASSES)


def test_unknown_option_of_deeplabv3plus_is_refused():
  config = default_model_config()
  config.head_options.fpn_dim = 64
  with pytest.raises(ValueError, match=r"\['fpn_dim'\].*'deeplabv3plus' head does not take"):
    build(config, NUM_CLASSES)


@pytest.mark.parametrize('head', HEADS)
def test_bfloat16_compute_traces_to_float32_logits(head):
  config = tiny_config(head, 'pcma')
  config.dtype = 'bfloat16'
  model = build(config, NUM_CLASSES)
  clip = jax.ShapeDtypeStruct((B, T, H, W, 3), jnp.float32)
  keys = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  variables = jax.eval_shape(model.init, keys, clip)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))  # parameters stay float32
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'], rngs=keys)[0],
                       variables, clip)
  assert out.logits.dtype == out.aux_logits.dtype == jnp.float32
  assert out.logits.shape == (B, T, H, W, NUM_CLASSES)


def test_auxiliary_head_registry():
  config = tiny_config('fcn', 'plain')
  aux = build(config, NUM_CLASSES).aux_head
  assert (aux.in_stage, aux.num_convs, aux.concat_input) == ('stage3', 1, False)
  config.aux_head = 'nope'
  with pytest.raises(ValueError, match='aux_head'):
    build(config, NUM_CLASSES)
