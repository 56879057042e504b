"""Training: `TrainState`, the optimizer and its schedule, the loss, a pure `train_step`.

    state, metrics = train_step(state, batch, rng)

is a pure function of arrays (jit-compiled once with the shardings of `ma_resnet.parallel`):

  batch   frames float32 (B, T, H, W, 3), labels int32 (B, T, H, W) (255 = ignore), labelled bool (B, T),
          sequence_start bool (B, T)  (the memory is cleared before a frame that starts a sequence)
  loss    cross-entropy averaged over the valid pixels of the global batch: label != 255, frame labelled and,
          with `loss_on_warmup_frames=False` and a temporal module, frame enhanced by the memory; plus
          `aux_loss_weight` x the same loss on the auxiliary head's logits when the model has one
  metrics loss, ce_loss, aux_loss, accuracy (pixel accuracy over the valid pixels), lr, grad_norm,
          valid_fraction (share of pixels that counted)

Batch norm runs on batch statistics over the *global* batch (see `ma_resnet.parallel`). The model has no layer
that cannot reach the loss (`models.build` builds only what the head reads), so every running statistic is
updated. `config.model.remat` rematerialises each backbone stage.

The loop that runs it (`train_and_evaluate`) is `ma_resnet.loop`, above this module and `ma_resnet.evaluation`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from ma_resnet import parallel
from ma_resnet.data.errors import DataError
from ma_resnet.data.image_files import IGNORE_INDEX
from ma_resnet.errors import EXIT_DIVERGED, ConfigError


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. the loss is not finite); the message says why and what was kept."""


class NonFiniteLossError(TrainingError):
  """The loss (or the parameters) became NaN or infinite."""
  exit_code = EXIT_DIVERGED


# ---------------------------------------------------------------------------------------------------------
# Model and optimizer.


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up from 0 to `lr` over `warmup` steps, then poly decay to `end_lr` at `num_steps`."""
  opt = config.optimizer
  warmup = int(opt.warmup)
  decay_steps = max(int(config.num_steps) - warmup, 1)
  if opt.end_lr == opt.lr:  # constant: the compiled step then does not depend on num_steps
    poly = optax.constant_schedule(opt.lr)
  else:
    poly = optax.polynomial_schedule(init_value=opt.lr, end_value=opt.end_lr, power=opt.power,
                                     transition_steps=decay_steps)
  if warmup == 0:
    return poly
  return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warmup), poly], [warmup])


def _kernel_mask(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def parameter_groups(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], dict[str, float]]:
  """(frozen path prefixes, {path prefix: lr multiplier}) of the config: `optimizer.frozen`, the model's own
  `model.frozen` parts, `optimizer.lr_multipliers`."""
  frozen = tuple(config.optimizer.get('frozen') or ()) + tuple(config.model.get('frozen') or ())
  return frozen, {str(k): float(v) for k, v in dict(config.optimizer.get('lr_multipliers') or {}).items()}


def group_labels(params, frozen: tuple[str, ...], multipliers: dict[str, float]):
  """Per parameter: 'frozen', or 'lr<m>' for the longest matching `multipliers` prefix (m = 1 by default).
  A prefix matches a path equal to it or below it ('backbone' matches 'backbone/stem/...')."""
  def matches(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip('/') + '/')

  def label(path, _):
    name = jax.tree_util.keystr(path, simple=True, separator='/')
    if any(matches(name, f) for f in frozen):
      return 'frozen'
    hits = [p for p in multipliers if matches(name, p)]
    return f'lr{multipliers[max(hits, key=len)]:g}' if hits else 'lr1'
  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
  """The optimizer of `config.optimizer`, with parameter groups.

  name 'sgd': SGD with momentum, L2 weight decay added to the gradient (PaddleSeg / mmseg); 'adamw': AdamW with
  decoupled weight decay (b1, b2, eps). Optional global-norm clipping of the whole gradient first. Groups
  (`parameter_groups`): frozen parameters never change (no update, no weight decay); a group with an lr
  multiplier m gets m times the update of the base optimizer (= the learning rate m·lr for SGD and AdamW).
  """
  opt = config.optimizer
  mask = _kernel_mask if opt.weight_decay_on == 'kernels' else None
  if opt.name == 'sgd':
    base = [optax.add_decayed_weights(opt.weight_decay, mask=mask)] if opt.weight_decay else []
    base.append(optax.sgd(schedule, momentum=opt.momentum or None, nesterov=bool(opt.nesterov)))
    base = optax.chain(*base)
  elif opt.name == 'adamw':
    base = optax.adamw(schedule, b1=float(opt.get('b1', 0.9)), b2=float(opt.get('b2', 0.999)),
                       eps=float(opt.get('eps', 1e-8)), weight_decay=float(opt.weight_decay), mask=mask)
  else:
    raise ConfigError(f'invalid config: optimizer.name must be sgd or adamw, got {opt.name!r}')
  frozen, multipliers = parameter_groups(config)
  parts = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm and opt.grad_clip_norm > 0 else []
  if frozen or multipliers:
    transforms = {'frozen': optax.set_to_zero(), 'lr1': base}
    for m in set(multipliers.values()):
      transforms[f'lr{m:g}'] = optax.chain(base, optax.scale(m))
    parts.append(optax.multi_transform(transforms, lambda params: group_labels(params, frozen, multipliers)))
  else:
    parts.append(base)
  return optax.chain(*parts)


class TrainState(train_state.TrainState):
  """flax's `TrainState` (step, params, opt_state; static apply_fn and tx) with the batch-norm statistics."""
  batch_stats: Any = None

  @property
  def variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats}


def example_clip_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """(1, T, H, W, 3) of one training clip (parameters do not depend on the batch size)."""
  h, w = (int(s) for s in config.data.crop_size)
  return (1, int(config.data.clip_length), h, w, 3)


def init_variables(model: nn.Module, rng: jax.Array, clip_shape) -> dict:
  """`{'params', 'batch_stats'}` of `model` for clips of `clip_shape` (not jitted: call under jit)."""
  params_rng, dropout_rng = jax.random.split(rng)
  variables = model.init({'params': params_rng, 'dropout': dropout_rng}, jnp.zeros(clip_shape, jnp.float32),
                         train=False)
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def _initial_state_fn(config: ml_collections.ConfigDict, model: nn.Module, tx: optax.GradientTransformation):
  """rng -> a fresh `TrainState` at step 0 (traced by `create_train_state` and `abstract_train_state`)."""
  clip_shape = example_clip_shape(config)

  def init(rng):
    variables = init_variables(model, rng, clip_shape)
    state = TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                              batch_stats=variables['batch_stats'])
    return state.replace(step=jnp.zeros((), jnp.int32))
  return init


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, mesh=None) -> TrainState:
  """A fresh `TrainState` at step 0, replicated over `mesh` when given (built directly in place by jit)."""
  out_shardings = parallel.replicated(mesh) if mesh is not None else None
  return jax.jit(_initial_state_fn(config, model, tx), out_shardings=out_shardings)(rng)


def abstract_train_state(config, model, tx) -> TrainState:
  """The shapes/dtypes of `create_train_state` without computing anything."""
  return jax.eval_shape(_initial_state_fn(config, model, tx), jax.random.key(0))


# ---------------------------------------------------------------------------------------------------------
# Loss and step.


def pixel_weights(labels: jax.Array, frame_weights: jax.Array) -> jax.Array:
  """float32 (B, T, H, W): 1 where the pixel counts (label != 255 and its frame counts), else 0."""
  return ((labels != IGNORE_INDEX) & (frame_weights[:, :, None, None] > 0)).astype(jnp.float32)


def cross_entropy_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array,
                       class_weights: jax.Array | None = None):
  """(sum of per-pixel cross-entropy x weight, sum of weights, sum of correct x weight), all float32.

  With `class_weights` (num_classes,), each pixel's cross-entropy and its weight in the first two sums are
  also multiplied by its class's weight (PyTorch's `CrossEntropyLoss(weight=...)`: the loss is then the
  weighted mean); the correct count stays unweighted.
  """
  logits = logits.astype(jnp.float32)
  safe_labels = jnp.where(labels == IGNORE_INDEX, 0, labels)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)
  correct = jnp.sum((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32) * weights)
  if class_weights is not None:
    weights = weights * jnp.asarray(class_weights, jnp.float32)[safe_labels]
  return jnp.sum(ce * weights), jnp.sum(weights), correct


def class_balance_weights(pixel_counts: np.ndarray, power: float) -> np.ndarray:
  """(median frequency / frequency)^power per class (SegNet's median frequency balancing at power 1).

  pixel_counts (num_classes,): labelled pixels of each class. A class with no pixel gets weight 0.
  """
  counts = np.asarray(pixel_counts, np.float64)
  present = counts > 0
  if not present.any():
    raise DataError('class balancing: the training labels hold no labelled pixel')
  frequency = counts / counts.sum()
  median = np.median(frequency[present])
  weights = np.zeros_like(frequency)
  weights[present] = (median / frequency[present]) ** float(power)
  return weights.astype(np.float32)


def frame_weights(batch: dict, enhanced: jax.Array, *, loss_on_warmup_frames: bool, has_memory: bool):
  """(B, T) float32: labelled frames, and only enhanced ones when warm-up frames are left out."""
  weights = batch['labelled'].astype(jnp.float32)
  if has_memory and not loss_on_warmup_frames:
    weights = weights * enhanced.astype(jnp.float32)
  return weights


def make_train_step(config: ml_collections.ConfigDict, schedule: optax.Schedule, has_memory: bool,
                    class_weights: np.ndarray | None = None):
  """The pure `train_step(state, batch, rng) -> (state, metrics)` for `config`.

  class_weights: (num_classes,) loss weight of each class (see `class_balance_weights`), or None.
  """
  aux_weight = float(config.aux_loss_weight)
  loss_on_warmup_frames = bool(config.loss_on_warmup_frames)

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    step_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      out, updates = state.apply_fn(
          {'params': params, 'batch_stats': state.batch_stats}, batch['frames'], None,
          batch['sequence_start'], train=True, mutable=['batch_stats'], rngs={'dropout': step_rng})
      weights = pixel_weights(batch['labels'], frame_weights(
          batch, out.enhanced, loss_on_warmup_frames=loss_on_warmup_frames, has_memory=has_memory))
      ce_sum, loss_weight, correct = cross_entropy_sums(out.logits, batch['labels'], weights,
                                                          class_weights)
      count = jnp.sum(weights)
      denominator = jnp.maximum(loss_weight, 1e-6)
      ce_loss = ce_sum / denominator
      aux_loss = jnp.zeros((), jnp.float32)
      if out.aux_logits is not None and aux_weight > 0:
        aux_sum, _, _ = cross_entropy_sums(out.aux_logits, batch['labels'], weights, class_weights)
        aux_loss = aux_sum / denominator
      loss = ce_loss + aux_weight * aux_loss
      aux = {'ce_loss': ce_loss, 'aux_loss': aux_loss, 'accuracy': correct / jnp.maximum(count, 1.0),
             'valid_fraction': count / weights.size, 'batch_stats': updates.get('batch_stats', {})}
      return loss, aux

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=aux.pop('batch_stats'))
    metrics = {'loss': loss, 'lr': jnp.asarray(schedule(state.step), jnp.float32),
               'grad_norm': optax.global_norm(grads), **aux}
    return new_state, metrics

  return train_step


def all_finite(tree) -> jax.Array:
  """Scalar bool: every floating leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


