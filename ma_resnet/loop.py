"""The training loop behind `train.py`: data, state, resume, steps, logging, evaluation, checkpoints.

    result = train_and_evaluate(config, workdir)

It sits above `ma_resnet.training` (state, optimizer, loss, the pure `train_step`) and `ma_resnet.evaluation`
(the streaming `Evaluator`), which do not import each other, and decides when to log, validate and save.
Order of events, so that a bad input never touches the workdir: config check, datasets opened, model built,
an existing checkpoint checked against the model, `init_from` checked and read (`warm_start.prepare_warm_start`,
before the new state is made) and copied in; only then are config.json, logs and checkpoints written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from ma_resnet import checkpoints as checkpoints_lib
from ma_resnet import warm_start as warm_start_lib
from ma_resnet import data as data_lib
from ma_resnet import evaluation, logging_utils, models, parallel, train_config
from ma_resnet.errors import ConfigError
from ma_resnet.files import atomic_write_text
from ma_resnet.training import (NonFiniteLossError, abstract_train_state, all_finite, class_balance_weights,
                                create_train_state, learning_rate_schedule, make_optimizer, make_train_step)
from ma_resnet.workdir_lock import WorkdirLock

RESULT_FILE = 'train_result.json'


@dataclasses.dataclass
class TrainResult:
  step: int
  eval_metrics: dict | None
  seconds: float


def _local_batch_size(config, mesh) -> int:
  try:
    return parallel.check_batch_size(int(config.batch_size), mesh)
  except ValueError as e:  # batch_size does not split over the devices / processes
    raise ConfigError(f'invalid config: {e}') from None


def _eval_lanes(config, mesh) -> int:
  devices = mesh.devices.size
  lanes = int(config.eval_batch_size)
  return -(-lanes // devices) * devices if devices > 1 else lanes


def _native_eval_size(config) -> tuple[int, int] | None:
  """(h, w) of the evaluation split's first frame when validation runs at the native size (no data.eval_size)."""
  if config.eval_every < 0 or config.data.get('eval_size'):
    return None
  frame = data_lib.make_sequences(config.data, config.eval_split).read_frame(0, 0)
  return tuple(frame.image.shape[:2])


def prepare(config: ml_collections.ConfigDict, mesh):
  """Everything that can fail on the inputs, before anything is written: config (every frame size the run uses
  included), every data file of the train and evaluation splits, model, optimizer. Returns (num_classes, train
  iterator, model, tx, schedule, class_weights (None when class_balance is 0))."""
  train_config.validate(config)
  local_batch = _local_batch_size(config, mesh)
  num_classes = data_lib.num_classes(config.data)
  for note in data_lib.validate_data(config.data, [config.data.split, config.eval_split]):
    logging.warning('%s', note)
  native = _native_eval_size(config)
  if native is not None:
    train_config.validate(config, eval_frame_size=native)
  train_iter = data_lib.make_train_iterator(config.data, batch_size=local_batch, seed=int(config.seed),
                                            shard_index=jax.process_index(), shard_count=jax.process_count())
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


def _finished_result(workdir: str, step: int) -> TrainResult | None:
  """The result of a run that already reached its last step (its train_result.json), else None."""
  path = os.path.join(workdir, RESULT_FILE)
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError):
    return None
  if int(stored.get('step', -1)) != step:
    return None
  return TrainResult(step=step, eval_metrics=stored.get('eval_metrics'), seconds=float(stored.get('seconds', 0)))


def _batch_size_changed(ckpt, step: int, config, allow_new_batch_size: bool) -> bool:
  """Whether the run at `step` was trained with another batch_size; ConfigError unless that is allowed."""
  stored = ckpt.stored_config_or_none(step)
  before, now = (stored or {}).get('batch_size'), int(config.batch_size)
  if before is None or int(before) == now:
    return False
  if not allow_new_batch_size:
    raise ConfigError(f'invalid config: batch_size is {now} but the run in {ckpt.directory} was trained with '
                      f'{before} (the step count and the learning-rate schedule would mean something else); '
                      'resume with the same batch_size, or pass --allow_new_batch_size to resume with this one')
  logging_utils.console(f'batch_size changed from {before} to {now}: the training data order starts again')
  return True


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True,
                       mesh=None, allow_new_batch_size: bool = False) -> TrainResult:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; see `train.py`.

  One run per workdir: process 0 holds `<workdir>/train.lock` throughout (`workdir_lock`; another run on it:
  `WorkdirInUseError`, exit 4). A multi-process run first checks that every process was started the same way
  (config, flags, code; `parallel.check_same_launch`: `StartupError`, exit 6).
  Order of events, so that a bad input never touches the workdir: config check, every data file checked,
  model built, an existing checkpoint checked against the model (mismatch: `checkpoints.CheckpointMismatchError`)
  and against the batch size, `init_from` loaded; only then are logs and checkpoints written. config.json is
  written with the first checkpoint of a new run, and by a resume only when it finishes, so a failing resume
  (NaN, a fault) never replaces the run's config (each checkpoint stores its own config anyway). A run that already reached `num_steps` is left as it is (nothing is written).
  """
  start_time = time.time()
  workdir = os.path.abspath(workdir)
  lock, failure = None, None
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock.acquire(workdir)
    except Exception as e:  # pylint: disable=broad-except  (every process stops with it: check_same_launch)
      failure = e
  try:
    parallel.check_same_launch({'config': json.loads(config.to_json()), 'workdir': workdir,
                                'allow_new_batch_size': allow_new_batch_size}, failure)
    return _train_and_evaluate(config, workdir, start_time, progress, mesh, allow_new_batch_size)
  finally:
    if lock is not None:
      lock.release()


def _train_and_evaluate(config, workdir: str, start_time: float, progress: bool, mesh,
                        allow_new_batch_size: bool) -> TrainResult:
  mesh = mesh or parallel.make_mesh()
  try:
    num_classes, train_iter, model, tx, schedule, class_weights = prepare(config, mesh)
  except data_lib.DataError as e:
    raise type(e)(f'{e}\n  (nothing was written to {workdir})') from None
  replicated = parallel.replicated(mesh)
  init_rng, step_rng = jax.jit(lambda: tuple(jax.random.split(jax.random.key(int(config.seed)))),
                               out_shardings=(replicated, replicated))()

  ckpt = checkpoints_lib.TrainCheckpoints(os.path.join(workdir, checkpoints_lib.CHECKPOINT_DIR),
                                          keep=int(config.keep_checkpoints))
  abstract_state = abstract_train_state(config, model, tx)
  latest = ckpt.latest_step()
  num_steps = int(config.num_steps)
  if latest is not None:
    ckpt.check_compatible(latest, abstract_state, config)  # raises before anything is written
    new_batch_size = _batch_size_changed(ckpt, latest, config, allow_new_batch_size)
    finished = _finished_result(workdir, latest) if latest >= num_steps else None
    if finished is not None or latest > num_steps:
      data_lib.close_iterator(train_iter)
      if latest > num_steps:
        logging_utils.console(f'The run in {workdir} already has {latest} steps, more than num_steps={num_steps}: '
                              f'nothing to do, every file kept. Give --config.num_steps={latest} or more to '
                              'train on, or another --workdir for a shorter run.')
      else:
        logging_utils.console(f'The run in {workdir} is finished (step {latest} of {num_steps}): nothing to '
                              'do, every file kept. Raise --config.num_steps to train on.')
      return finished or TrainResult(step=latest, eval_metrics=None, seconds=0.0)
    state = ckpt.restore(latest, abstract_state, None if new_batch_size else train_iter, mesh)
    logging_utils.console(f'Resumed from {ckpt.step_path(latest)} (step {int(state.step)})')
    resumed_from = int(state.step)
  else:
    # config.init_from: checked, fetched and read before the state is made (errors come before compiling)
    warm_start = warm_start_lib.prepare_warm_start(config, abstract_state, progress=progress)
    state = create_train_state(config, model, tx, init_rng, mesh)
    if warm_start is not None:
      state, copied = warm_start.apply(state, mesh)
      logging_utils.console(copied)
    resumed_from = 0

  # From here on the workdir is written.
  writer = logging_utils.MetricWriter(workdir, resume_step=resumed_from)
  if jax.process_index() == 0:
    logging_utils.log_to_file(os.path.join(workdir, logging_utils.LOG_FILE))
  ckpt.open_for_writing(config)

  train_step = make_train_step(config, schedule, model.has_state, class_weights)
  p_train_step = jax.jit(train_step, in_shardings=(replicated, parallel.data_sharding(mesh), replicated),
                         out_shardings=(replicated, replicated),
                         donate_argnums=(0,) if jax.default_backend() != 'cpu' else ())
  p_all_finite = jax.jit(all_finite, out_shardings=replicated)

  evaluator = evaluation.Evaluator(model, config.data, config.eval_split, lanes=_eval_lanes(config, mesh),
                                   mesh=mesh, class_names=data_lib.class_names(config.data),
                                   video_options=evaluation.VideoMetricOptions.from_config(config),
                                   protocol=evaluation.EvalProtocol.from_config(config))
  step = int(state.step)
  eval_metrics = None
  bar = logging_utils.ProgressBar(total=num_steps, initial=step, enabled=progress)
  pending = []  # per-step device metrics since the last log
  timer = logging_utils.StepTimer(step)
  config_written = resumed_from > 0  # a resume writes config.json only once it has finished (below)

  def check_finite(what_step: int):
    if not bool(p_all_finite(state.params)):
      raise NonFiniteLossError(f'parameters became NaN/inf by step {what_step}')

  try:
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
        ckpt.check_for_errors()  # a failed background checkpoint write stops the run here
      if do_eval:
        check_finite(step)
        eval_metrics = evaluator.evaluate(state.variables)
        writer.write_scalars(step, {f'eval/{k}': v for k, v in eval_metrics.scalars().items()})
        bar.write(f'step {step}: {config.eval_split} mIoU {eval_metrics.miou:.4f}, pixel accuracy '
                  f'{eval_metrics.pixel_accuracy:.4f}, {eval_metrics.frames_per_second:.1f} frames/s')
      if do_save:
        check_finite(step)
        ckpt.save(step, state, train_iter, metrics={'miou': float(eval_metrics.miou)} if do_eval else None)
        if not config_written:
          ckpt.wait()  # the first checkpoint of a new run is on disk: its config becomes the run's
          logging_utils.write_config(workdir, config)
          config_written = True
    ckpt.wait()
    if resumed_from > 0:
      logging_utils.write_config(workdir, config)
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
    data_lib.close_iterator(train_iter)
  seconds = time.time() - start_time
  result = TrainResult(step=step, eval_metrics=eval_metrics.to_json() if eval_metrics else None,
                       seconds=seconds)
  if jax.process_index() == 0:
    atomic_write_text(os.path.join(workdir, RESULT_FILE), json.dumps(dataclasses.asdict(result), indent=2) + '\n')
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
