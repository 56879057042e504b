"""Reading a finished run: its config, the model built from it and the variables of one checkpoint.

    run = load_run('runs/camvid_ma')                     # best checkpoint by validation mIoU
    run = load_run('runs/camvid_ma', 'latest')           # or a step number; or a step folder / checkpoints folder
    run.model.apply(run.variables, clip)                 # run.config, run.step, run.checkpoint_path, ...

`load_run` is the one way a run is loaded (eval.py, predict, export, compare, notebooks, benchmarks): which
checkpoint, which config, the model built from it (`models.build`) and checked against the checkpoint's tree
before anything is restored. The checkpoints themselves: `checkpoints.TrainCheckpoints`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
from absl import logging

from ma_resnet.checkpoints import (CHECKPOINT_DIR, STATE, CheckpointError, CheckpointMismatchError,
                                   TrainCheckpoints, config_differences, describe_mismatch, flat_shapes)
from ma_resnet.convert.checkpoint_io import is_converted


@dataclasses.dataclass
class Run:
  """A trained run's checkpoint, restored: the model built from its config, and its variables."""
  config: Any                  # ml_collections.ConfigDict: the training config the model was built from
  model: Any                   # the `VideoSegmenter`
  variables: dict              # {'params', 'batch_stats'}
  step: int                    # training step of the checkpoint
  checkpoint_path: str         # the step folder restored
  config_source: str           # where the config came from (for messages)
  run_dir: str | None          # the run folder (workdir), when known
  metrics: dict | None         # metrics stored with the checkpoint ({'miou': ...} after a validation)


def _load_config_file(path: str):
  from ma_resnet import train_config
  try:
    return train_config.load_config(path)
  except FileNotFoundError as e:
    raise CheckpointError(str(e)) from None


def locate(path: str, which: str) -> tuple[TrainCheckpoints, int, str | None]:
  """(store, step, run folder or None) for a run folder, its checkpoints/ folder or a step folder."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.exists(path):
    raise CheckpointError(f'checkpoint {path} does not exist')
  if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):  # a run folder
    store = TrainCheckpoints(os.path.join(path, CHECKPOINT_DIR))
    return store, store.select_step(which, run_dir=path), path
  if is_converted(path):
    raise CheckpointMismatchError(
        f'{path} is a converted encoder (python -m ma_resnet.convert): it holds a backbone without the temporal '
        f'module and the segmentation head, so it cannot segment. Train from it (train.py '
        f'--config.init_from={path}) and use the run\'s workdir.')
  name = os.path.basename(path)
  if name.isdigit() and os.path.isdir(os.path.join(path, STATE)):  # a step folder
    store = TrainCheckpoints(os.path.dirname(path))
    if int(name) not in store.all_steps():
      raise CheckpointError(f'{path} is not a finished checkpoint (steps in {store.directory}: '
                            f'{store.all_steps()})')
    return store, int(name), os.path.dirname(store.directory)
  if os.path.isdir(path) and any(n.isdigit() and os.path.isdir(os.path.join(path, n, STATE))
                                 for n in os.listdir(path)):  # a checkpoints/ folder
    store = TrainCheckpoints(path)
    return store, store.select_step(which, run_dir=os.path.dirname(path)), os.path.dirname(path)
  raise CheckpointError(f'{path} is not a checkpoint: expected a run folder written by train.py, its '
                        f'{CHECKPOINT_DIR}/ folder, or a step folder <workdir>/{CHECKPOINT_DIR}/<step> (with '
                        f'{STATE}/ in it)')


def load_run(path: str, which: str | int = 'best', *, config=None, config_name: str | None = None,
             mesh=None) -> Run:
  """Restores a trained run for evaluation or inference.

  Args:
    path: a run folder written by train.py, its checkpoints/ folder, or a step folder
      `<workdir>/checkpoints/<step>`.
    which: with a run or checkpoints folder: 'best' (by validation mIoU; the latest when none was validated),
      'latest' or a step number.
    config: the training config to build the model from (a ConfigDict, a dict or a config file path);
      default: the config stored with the checkpoint, else the run folder's config.json.
    config_name: how messages name `config`.
    mesh: where the variables go (default: every local device, replicated).
  Raises:
    CheckpointError: no usable checkpoint or config. CheckpointMismatchError: the checkpoint's tree is not the
    model of the config (the message names the differing parameters and config fields).
  """
  gone = None
  while True:
    store, step, run_dir = locate(path, str(which))
    try:
      return _load_step(store, step, run_dir, config, config_name, mesh)
    except Exception:  # pylint: disable=broad-except  (re-raised unless the step folder went away meanwhile)
      if os.path.isdir(store.step_path(step)):
        raise
    # Removed while it was read: a training run on this workdir deletes all but its last keep_checkpoints
    # (and the best). 'best' / 'latest' of a run: once more with the one that is now the best / latest.
    if gone is not None:
      raise CheckpointError(f'checkpoints {gone} and then {store.step_path(step)} were removed while they were '
                            'read (a training run on this workdir deletes old checkpoints): try again, or once '
                            'training has finished') from None
    gone = store.step_path(step)
    if str(which) not in ('best', 'latest') or os.path.abspath(os.fspath(path)) == gone:
      raise CheckpointError(f'checkpoint {gone} was removed while it was read (a training run on this workdir '
                            'keeps only its last keep_checkpoints and the best): choose a step that exists') from None
    logging.warning('Checkpoint %s was removed while it was read (a training run deletes old checkpoints): '
                    'loading the %s one now', gone, which)


def _load_step(store: TrainCheckpoints, step: int, run_dir: str | None, config, config_name: str | None,
               mesh) -> Run:
  """`load_run` of one step of `store` (closed at the end)."""
  import ml_collections
  from ma_resnet import data as data_lib
  from ma_resnet import models

  step_path = store.step_path(step)
  try:
    stored = store.stored_config_or_none(step)
    if config is not None:
      source = config_name or (f'config {config}' if isinstance(config, (str, os.PathLike)) else 'the given config')
      if isinstance(config, (str, os.PathLike)):
        config = _load_config_file(os.fspath(config))
    elif stored is not None:
      config, source = stored, f'the config stored in {step_path}'
    else:
      source = os.path.join(run_dir or '', 'config.json')
      if not (run_dir and os.path.isfile(source)):
        raise CheckpointError(f'no config stored in {step_path} and no {source}: give the config it was '
                              'trained with')
      with open(source) as f:
        config = json.load(f)
    config = ml_collections.ConfigDict(json.loads(config.to_json()) if hasattr(config, 'to_json') else config)
    if 'model' not in config or 'data' not in config:
      raise CheckpointError(f'{source} is not a training config (it needs model and data fields)')
    try:
      model = models.build(config.model, data_lib.num_classes(config.data))
    except (KeyError, ValueError, TypeError, AttributeError) as e:
      raise CheckpointError(f'cannot build the model of {source}: {e}') from None
    h, w = (int(s) for s in config.data.get('crop_size') or (64, 64))
    abstract = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 1, h, w, 3), np.float32))
    expected = flat_shapes({k: abstract[k] for k in ('params', 'batch_stats') if k in abstract})
    try:
      found = {k: v for k, v in store.stored_shapes(step).items()
               if k.startswith('params/') or k.startswith('batch_stats/')}
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'cannot read checkpoint {step_path}: {e}') from None
    message = describe_mismatch(expected, found, what=f'the model of {source}', found_where=f'checkpoint {step_path}')
    if message is not None:
      raise CheckpointMismatchError(
          message + config_differences(stored, config)
          + "\nThe checkpoint holds another architecture: use the config it was trained with (its run's "
          'config.json, or no config override).')
    try:
      variables = store.restore_variables(step, mesh)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'cannot restore checkpoint {step_path}: {e}') from None
    return Run(config=config, model=model, variables=dict(variables), step=step, checkpoint_path=step_path,
               config_source=source, run_dir=run_dir, metrics=store.metrics(step))
  finally:
    store.close()
