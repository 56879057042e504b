"""Training: model and optimizer from the config, `TrainState`, the loss, a pure `train_step`, and the loop.

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

`train_and_evaluate(config, workdir)` is the loop behind `train.py`: data, state, resume, steps, logging,
evaluation, checkpoints. See `train.py` for the command line and README-level behaviour.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import struct

from ma_resnet import checkpoints as checkpoints_lib
from ma_resnet import data as data_lib
from ma_resnet import evaluation
from ma_resnet import logging_utils
from ma_resnet import parallel
from ma_resnet import train_config
from ma_resnet import models

IGNORE_INDEX = data_lib.IGNORE_INDEX


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. the loss is not finite); the message says why and what was kept."""


class NonFiniteLossError(TrainingError):
  """The loss (or the parameters) became NaN or infinite."""


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


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
  """SGD (momentum, L2 weight decay added to the gradient, optional global-norm clipping)."""
  opt = config.optimizer
  if opt.name != 'sgd':
    raise ValueError(f'unknown optimizer {opt.name!r}')
  parts = []
  if opt.grad_clip_norm and opt.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.weight_decay:
    mask = _kernel_mask if opt.weight_decay_on == 'kernels' else None
    parts.append(optax.add_decayed_weights(opt.weight_decay, mask=mask))
  parts.append(optax.sgd(schedule, momentum=opt.momentum or None, nesterov=bool(opt.nesterov)))
  return optax.chain(*parts)


@struct.dataclass
class TrainState:
  """Everything that changes during training (a pytree), plus the static model/optimizer functions."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  apply_fn: Callable = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

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
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                      batch_stats=variables['batch_stats'], opt_state=tx.init(variables['params']),
                      apply_fn=model.apply, tx=tx)
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
    raise ValueError('class balancing: the training labels hold no labelled pixel')
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
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=aux.pop('batch_stats'),
                              opt_state=opt_state)
    metrics = {'loss': loss, 'lr': jnp.asarray(schedule(state.step), jnp.float32),
               'grad_norm': optax.global_norm(grads), **aux}
    return new_state, metrics

  return train_step


def all_finite(tree) -> jax.Array:
  """Scalar bool: every floating leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


# ---------------------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class TrainResult:
  step: int
  eval_metrics: dict | None
  seconds: float


def _local_batch_size(config, mesh) -> int:
  return parallel.check_batch_size(int(config.batch_size), mesh)


def _eval_lanes(config, mesh) -> int:
  devices = mesh.devices.size
  lanes = int(config.eval_batch_size)
  return -(-lanes // devices) * devices if devices > 1 else lanes


def prepare(config: ml_collections.ConfigDict, mesh):
  """Everything that can fail on the inputs, before anything is written: config, data, model, state shapes.

  Returns (num_classes, train iterator, model, tx, schedule, class_weights (None when class_balance is 0)).
  """
  train_config.validate(config)
  local_batch = _local_batch_size(config, mesh)
  num_classes = data_lib.num_classes(config.data)
  train_iter = data_lib.make_train_iterator(config.data, batch_size=local_batch, seed=int(config.seed),
                                            shard_index=jax.process_index(), shard_count=jax.process_count())
  data_lib.make_sequences(config.data, config.eval_split)  # the evaluation split must exist too
  model = models.build(config.model, num_classes)
  schedule = learning_rate_schedule(config)
  tx = make_optimizer(config, schedule)
  class_weights = None
  if config.class_balance:
    counts = data_lib.class_pixel_counts(config.data, config.data.split)
    class_weights = class_balance_weights(counts, config.class_balance)
    logging.info('Class weights (class_balance %g): %s', config.class_balance,
                 ', '.join(f'{n} {w:.3f}' for n, w in zip(data_lib.class_names(config.data), class_weights)))
  return num_classes, train_iter, model, tx, schedule, class_weights


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True,
                       mesh=None) -> TrainResult:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; see `train.py`.

  Order of events, so that a bad input never touches the workdir: config check, dataset and model built,
  existing checkpoint checked against the model (mismatch: `checkpoints.CheckpointMismatchError`),
  `init_from` loaded; only then are config.json, logs and checkpoints written.
  """
  start_time = time.time()
  workdir = os.path.abspath(workdir)
  mesh = mesh or parallel.make_mesh()
  num_classes, train_iter, model, tx, schedule, class_weights = prepare(config, mesh)
  has_memory = config.model.temporal != 'plain'
  rng = jax.random.key(int(config.seed))
  init_rng, step_rng = jax.random.split(rng)

  ckpt = checkpoints_lib.TrainCheckpoints(os.path.join(workdir, checkpoints_lib.CHECKPOINT_DIR),
                                          keep=int(config.keep_checkpoints))
  abstract_state = abstract_train_state(config, model, tx)
  latest = ckpt.latest_step()
  if latest is not None:
    ckpt.check_compatible(latest, abstract_state, config)  # raises before anything is written
    state = ckpt.restore(latest, abstract_state, train_iter, mesh)
    logging.info('Resumed from %s (step %d)', ckpt.step_path(latest), int(state.step))
    resumed_from = int(state.step)
  else:
    state = create_train_state(config, model, tx, init_rng, mesh)
    if config.init_from:
      state = checkpoints_lib.load_pretrained_encoder(state, config.init_from, config.model, mesh)
      logging.info('Encoder initialised from %s', config.init_from)
    resumed_from = 0

  # From here on the workdir is written.
  writer = logging_utils.MetricWriter(workdir, resume_step=resumed_from)
  logging_utils.write_config(workdir, config)
  ckpt.open_for_writing(config)

  train_step = make_train_step(config, schedule, has_memory, class_weights)
  replicated = parallel.replicated(mesh)
  p_train_step = jax.jit(train_step, in_shardings=(replicated, parallel.data_sharding(mesh), replicated),
                         out_shardings=(replicated, replicated),
                         donate_argnums=(0,) if jax.default_backend() != 'cpu' else ())
  p_all_finite = jax.jit(all_finite, out_shardings=replicated)
  step_rng = parallel.replicate(step_rng, mesh)

  evaluator = evaluation.Evaluator(model, config.data, config.eval_split, lanes=_eval_lanes(config, mesh),
                                   mesh=mesh, class_names=data_lib.class_names(config.data))
  num_steps = int(config.num_steps)
  step = int(state.step)
  eval_metrics = None
  bar = logging_utils.ProgressBar(total=num_steps, initial=step, enabled=progress)
  pending = []  # per-step device metrics since the last log
  timer = logging_utils.StepTimer(step)

  def check_finite(what_step: int):
    if not bool(p_all_finite(state.params)):
      raise NonFiniteLossError(f'parameters became NaN/inf by step {what_step}')

  try:
    if step >= num_steps:
      logging.info('Already at step %d >= num_steps %d: nothing to train.', step, num_steps)
    while step < num_steps:
      batch = parallel.shard_batch(next(train_iter), mesh)
      state, metrics = p_train_step(state, batch, step_rng)
      step += 1
      pending.append((step, metrics))
      is_last = step == num_steps
      do_eval = config.eval_every >= 0 and (is_last or (config.eval_every > 0 and step % config.eval_every == 0))
      do_save = is_last or step % config.checkpoint_every == 0 or do_eval
      if step % config.log_every == 0 or do_save:
        summary = _flush_metrics(pending, writer, bar, timer, step)
        pending = []
        if not summary['finite']:
          raise NonFiniteLossError(f"loss is {summary['bad_value']} at step {summary['bad_step']}")
      if do_eval:
        check_finite(step)
        eval_metrics = evaluator.evaluate(state.variables)
        writer.write_scalars(step, {f'eval/{k}': v for k, v in eval_metrics.scalars().items()})
        logging.info('step %d: %s mIoU %.4f, pixel accuracy %.4f (%.1f frames/s)', step, config.eval_split,
                     eval_metrics.miou, eval_metrics.pixel_accuracy, eval_metrics.frames_per_second)
        bar.write(f'step {step}: {config.eval_split} mIoU {eval_metrics.miou:.4f} '
                  f'pixel accuracy {eval_metrics.pixel_accuracy:.4f}')
      if do_save:
        check_finite(step)
        ckpt.save(step, state, train_iter,
                  metrics={'miou': float(eval_metrics.miou)} if do_eval else None)
  except NonFiniteLossError as e:
    ckpt.wait()
    kept = ckpt.latest_step()
    where = f'{ckpt.step_path(kept)} (step {kept})' if kept is not None else 'no checkpoint'
    raise NonFiniteLossError(f'Training stopped: {e}. Nothing was saved after the last good checkpoint; '
                             f'kept: {where}. Lower optimizer.lr, add optimizer.warmup or '
                             f'optimizer.grad_clip_norm.') from None
  finally:
    bar.close()
    ckpt.close()
    writer.close()
  seconds = time.time() - start_time
  result = TrainResult(step=step, eval_metrics=eval_metrics.to_json() if eval_metrics else None,
                       seconds=seconds)
  if jax.process_index() == 0:
    logging_utils.atomic_write_text(os.path.join(workdir, 'train_result.json'),
                                    json.dumps(dataclasses.asdict(result), indent=2) + '\n')
  return result


def _flush_metrics(pending, writer, bar, timer, step) -> dict:
  """Fetches the pending per-step metrics, logs them (one JSON line per step, means to TensorBoard and the
  progress bar) and checks that every loss is finite (the steps after a non-finite one are not logged)."""
  host = []
  for s, m in pending:
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    if not np.isfinite(m['loss']):
      for s_good, m_good in host:
        writer.write_jsonl(s_good, m_good)
      return {'finite': False, 'bad_step': s, 'bad_value': m['loss']}
    host.append((s, m))
  for s, m in host:  # one JSON line per step: exact losses, for comparisons between runs
    writer.write_jsonl(s, m)
  mean = {k: float(np.mean([m[k] for _, m in host])) for k in host[-1][1]}
  mean['lr'] = host[-1][1]['lr']
  mean['steps_per_second'] = rate = timer.steps_per_second(step)
  writer.write_scalars(step, {f'train/{k}': v for k, v in mean.items()})
  bar.update_to(step, loss=mean['loss'], lr=mean['lr'], steps_per_s=rate)
  return {'finite': True}
