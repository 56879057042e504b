"""Checkpoints of a training run (Orbax `CheckpointManager`), loading a trained run, pretrained encoders.

    run = load_run('runs/camvid_ma')                     # best checkpoint by validation mIoU
    run = load_run('runs/camvid_ma', 'latest')           # or a step number; or a step folder / checkpoints folder
    run.model.apply(run.variables, clip)                 # run.config, run.step, run.checkpoint_path, ...

`load_run` is the one way a run is loaded (eval.py, predict, notebooks, benchmarks): which checkpoint, which
config, the model built from it (`models.build`) and checked against the checkpoint's tree before anything is
restored.

Layout of `<workdir>/checkpoints/`:

    <step>/state/       the TrainState pytree (step, params, batch_stats, opt_state), Orbax StandardSave
    <step>/data_iter/   the grain iterator state, one JSON file per process (`process_<i>-of-<n>.json`)
    <step>/config/      the resolved training config (JSON)
    <step>/metrics/     {'miou': ...} when the checkpoint was taken right after a validation run

Retention: the latest `keep` checkpoints, plus the one with the best validation mIoU (Orbax preservation
policies `LatestN` | `BestN`; `best_step()` uses the same `best_fn`).

Atomicity: Orbax writes a step into `<step>.orbax-checkpoint-tmp-<time>/` and renames it to `<step>/` only when
everything is on disk, so a run killed while writing leaves the previous checkpoints intact; the unfinished
temporary folder is never listed as a step (it is not restored) and is deleted when training restarts.

Compatibility: before restoring, the stored tree is compared with the one the config's model and optimizer
produce; any difference (another depth, head, number of classes, PCMA stages, optimizer...) raises one
`CheckpointMismatchError` naming the differing paths, before anything in the workdir is written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from ma_resnet import parallel
from ma_resnet.errors import EXIT_CHECKPOINT

CHECKPOINT_DIR = 'checkpoints'
STATE, DATA_ITER, CONFIG = 'state', 'data_iter', 'config'
BEST_METRIC = 'miou'
MAX_LISTED = 12
_TMP_PATTERN = re.compile(r'.*\.orbax-checkpoint-tmp.*')


class CheckpointError(ValueError):
  """No usable checkpoint (missing, empty, unreadable, not a checkpoint): the message says what to give."""
  exit_code = EXIT_CHECKPOINT


class CheckpointMismatchError(CheckpointError):
  """A checkpoint that does not fit the model/optimizer of the config; the message names the paths."""


class CheckpointWriteError(CheckpointError):
  """A checkpoint could not be written (disk full, permissions): the message names it and what was kept."""


def _reason(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'.rstrip(': ')


def _best_fn(metrics: Mapping[str, Any]) -> float:
  return float(metrics[BEST_METRIC])


# ---------------------------------------------------------------------------------------------------------
# Tree comparison.


def _key_name(entry) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def flat_shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  """'a/b/c' -> (shape, dtype) for every array leaf of `tree` (arrays, ShapeDtypeStructs, Orbax metadata)."""
  is_leaf = lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype')
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  out = {}
  for path, leaf in flat:
    if leaf is None or not is_leaf(leaf):
      continue
    out['/'.join(_key_name(k) for k in path)] = (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
  return out


def _subtree_roots(paths: set[str], other: dict) -> list[str]:
  """Each path shortened to its highest ancestor whose whole subtree is absent from `other`
  (so a missing block is named once, e.g. 'params/backbone/stage1/block2', not leaf by leaf)."""
  other_prefixes = set()
  for key in other:
    parts = key.split('/')
    other_prefixes.update('/'.join(parts[:i]) for i in range(1, len(parts) + 1))
  roots = set()
  for path in paths:
    parts = path.split('/')
    root = path
    for i in range(len(parts) - 1, 0, -1):
      prefix = '/'.join(parts[:i])
      if prefix in other_prefixes:
        break
      root = prefix
    roots.add(root)
  return sorted(roots, key=lambda r: (not r.startswith('params'), r))


def describe_mismatch(expected: dict, found: dict, *, what: str, found_where: str) -> str | None:
  """A readable list of the paths missing / unexpected / of another shape; None when the trees agree."""
  missing = _subtree_roots(set(expected) - set(found), found)
  unexpected = _subtree_roots(set(found) - set(expected), expected)
  reshaped = sorted((k for k in set(expected) & set(found) if expected[k][0] != found[k][0]),
                    key=lambda r: (not r.startswith('params'), r))
  if not (missing or unexpected or reshaped):
    return None

  def listing(keys, fmt=str):
    shown = ', '.join(fmt(k) for k in keys[:MAX_LISTED])
    return shown + (f', ... and {len(keys) - MAX_LISTED} more' if len(keys) > MAX_LISTED else '')

  lines = [f'{found_where} does not match {what}:']
  if missing:
    lines.append(f'  missing in the checkpoint ({len(missing)}): {listing(missing)}')
  if unexpected:
    lines.append(f'  only in the checkpoint ({len(unexpected)}): {listing(unexpected)}')
  if reshaped:
    lines.append(f'  different shapes ({len(reshaped)}): '
                 + listing(reshaped, lambda k: f'{k} {found[k][0]} vs {expected[k][0]} expected'))
  return '\n'.join(lines)


def _flat_config(tree, prefix: str) -> dict:
  out = {}
  for k, v in (tree or {}).items():
    if isinstance(v, dict):
      out.update(_flat_config(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = tuple(v) if isinstance(v, list) else v
  return out


def config_differences(stored: dict | None, config) -> str:
  """'\n  config differences: ...' listing the model fields (and data.name) where the checkpoint's stored
  config differs from `config`; '' when there is no stored config or no difference."""
  if not stored:
    return ''
  now = json.loads(config.to_json()) if hasattr(config, 'to_json') else dict(config)
  old, new = _flat_config(stored.get('model'), 'model.'), _flat_config(now.get('model'), 'model.')
  old['data.name'], new['data.name'] = stored.get('data', {}).get('name'), now.get('data', {}).get('name')
  diffs = [f"{k}: {old.get(k)!r} in the checkpoint's run, {new.get(k)!r} in the config used"
           for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
  return ('\n  config differences: ' + '; '.join(diffs)) if diffs else ''


def _without_optimizer_duplicates(shapes: dict) -> dict:
  """Drops opt_state/* entries: they mirror params and would repeat every parameter difference."""
  return {k: v for k, v in shapes.items() if not k.startswith('opt_state/')}


# ---------------------------------------------------------------------------------------------------------
# The training checkpoints.


class TrainCheckpoints:
  """Checkpoints of one training run in `directory` (see the module docstring).

  Reading (`latest_step`, `check_compatible`, `restore`) never writes; `open_for_writing` must be called
  before `save` (it creates the folder and removes unfinished temporary checkpoints).
  """

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.keep = int(keep)
    self._manager: ocp.CheckpointManager | None = None
    self._writable = False
    self._config_json: dict | None = None

  # -- reading --------------------------------------------------------------------------------------

  def _options(self, writable: bool) -> ocp.CheckpointManagerOptions:
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=self.keep),
        checkpoint_managers.BestN(get_metric_fn=_best_fn, reverse=False, n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    return ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=_best_fn, best_mode='max', create=writable,
        cleanup_tmp_directories=writable, read_only=not writable,
        enable_async_checkpointing=True)

  def _reader(self) -> ocp.CheckpointManager | None:
    if self._manager is None:
      if not os.path.isdir(self.directory):
        return None
      self._manager = ocp.CheckpointManager(self.directory, options=self._options(False),
                                            handler_registry=_handler_registry())
    return self._manager

  def all_steps(self) -> list[int]:
    try:
      manager = self._reader()
      return sorted(manager.all_steps()) if manager else []
    except PermissionError as e:
      raise CheckpointError(f'cannot read the checkpoints in {self.directory}: {_reason(e)}') from None

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def best_step(self) -> int | None:
    """The step with the best validation mIoU (the latest step when none was evaluated)."""
    manager = self._reader()
    if manager is None:
      return None
    return manager.best_step() or manager.latest_step()

  def select_step(self, selector: str, run_dir: str | None = None) -> int:
    """'best', 'latest' or a step number -> a step that exists; CheckpointError naming what is missing."""
    try:
      steps = self.all_steps()
    except Exception as e:  # pylint: disable=broad-except  (an unreadable folder)
      raise CheckpointError(f'cannot read the checkpoints in {self.directory}: {e}') from None
    if not steps:
      where = f'train first (python train.py --workdir={run_dir})' if run_dir else 'nothing to restore'
      raise CheckpointError(f'no checkpoint in {self.directory}: {where}')
    selector = str(selector)
    if selector == 'best':
      return self.best_step()
    if selector == 'latest':
      return self.latest_step()
    if not selector.isdigit():
      raise CheckpointError(f"checkpoint {selector!r}: expected 'best', 'latest' or a step number "
                            f'(steps in {self.directory}: {steps})')
    step = int(selector)
    if step not in steps:
      raise CheckpointError(f'no checkpoint of step {step} in {self.directory} (steps: {steps})')
    return step

  def metrics(self, step: int) -> dict | None:
    manager = self._reader()
    return manager.metrics(step) if manager else None

  def step_path(self, step: int | None) -> str:
    return os.path.join(self.directory, str(step))

  def stored_shapes(self, step: int) -> dict:
    try:
      metadata = self._reader().item_metadata(step)[STATE]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'cannot read checkpoint {self.step_path(step)} (corrupt, or unreadable): '
                            f'{_reason(e)}') from None
    tree = getattr(metadata, 'tree', metadata)
    return flat_shapes(tree)

  def check_compatible(self, step: int, abstract_state, config=None) -> None:
    """Raises CheckpointMismatchError unless the stored state has exactly the tree of `abstract_state`.

    With `config`, the message also lists the model fields where the run's stored config differs.
    """
    expected = flat_shapes(abstract_state)
    found = self.stored_shapes(step)
    message = describe_mismatch(_without_optimizer_duplicates(expected), _without_optimizer_duplicates(found),
                                what="the config's model", found_where=f'checkpoint {self.step_path(step)}')
    if message is None:
      message = describe_mismatch(expected, found, what="the config's optimizer state",
                                  found_where=f'checkpoint {self.step_path(step)}')
    if message is not None:
      if config is not None:
        message += config_differences(self.stored_config_or_none(step), config)
      raise CheckpointMismatchError(
          message + '\nThe workdir holds a run of another architecture (or optimizer); use a new --workdir '
          'or the config it was trained with (its config.json). Nothing was written.')

  def stored_config(self, step: int) -> dict:
    restored = self._reader().restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))
    return restored[CONFIG]

  def stored_config_or_none(self, step: int) -> dict | None:
    """The config saved with `step`, or None (checkpoints written before configs were stored)."""
    try:
      return self.stored_config(step)
    except Exception:  # pylint: disable=broad-except
      return None

  def restore(self, step: int, abstract_state, train_iter=None, mesh=None):
    """The TrainState at `step` (replicated over `mesh`); `train_iter` is set to its saved position."""
    target = abstract_state
    if mesh is not None:
      sharding = parallel.replicated(mesh)
      target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            abstract_state)
    items = {STATE: ocp.args.StandardRestore(target)}
    if train_iter is not None:
      items[DATA_ITER] = _grain_restore(train_iter)
    try:
      restored = self._reader().restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'cannot restore checkpoint {self.step_path(step)} (corrupt, or unreadable): '
                            f'{_reason(e)}. Remove that step folder to resume from the one before.') from None
    return restored[STATE]

  def restore_data_iterator(self, step: int, train_iter) -> None:
    """Sets the grain iterator `train_iter` to its position saved at `step`."""
    self._reader().restore(step, args=ocp.args.Composite(**{DATA_ITER: _grain_restore(train_iter)}))

  def restore_variables(self, step: int, mesh=None) -> dict:
    """`{'params', 'batch_stats'}` at `step`, without needing the optimizer (for evaluation)."""
    metadata = self._reader().item_metadata(step)[STATE]
    tree = getattr(metadata, 'tree', metadata)
    sharding = parallel.replicated(mesh if mesh is not None else parallel.make_mesh())

    def abstract(x):
      return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=sharding)
    is_leaf = lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype')
    # Only the variables: a partial target (the optimizer state is not read).
    target = {k: jax.tree.map(abstract, tree[k], is_leaf=is_leaf) for k in ('params', 'batch_stats')}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
    restored = self._reader().restore(
        step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True)}))
    return restored[STATE]

  # -- writing --------------------------------------------------------------------------------------

  def open_for_writing(self, config) -> None:
    """Creates the folder, removes unfinished temporary checkpoints, prepares `save`."""
    if self._manager is not None:
      self._manager.close()
      self._manager = None
    self._remove_unfinished('a run stopped while writing it')
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=self._options(True),
                                            handler_registry=_handler_registry())
    except OSError as e:
      raise CheckpointWriteError(f'cannot write checkpoints to {self.directory}: {_reason(e)}') from None
    self._writable = True
    self._config_json = json.loads(config.to_json())

  def save(self, step: int, state, train_iter, metrics: dict | None = None) -> None:
    """Saves state + iterator position + config at `step` (asynchronously: `wait()` to block). A write
    that fails raises `CheckpointWriteError` here, or at the next `check_for_errors` / `wait`."""
    if not self._writable:
      raise RuntimeError('open_for_writing() first')
    self.check_for_errors()
    self._pending_step = step
    with self._writing():
      self._manager.save(step, args=ocp.args.Composite(**{
          STATE: ocp.args.StandardSave(state),
          DATA_ITER: _grain_save(train_iter),
          CONFIG: ocp.args.JsonSave(self._config_json),
      }), metrics=metrics, force=True)

  @contextlib.contextmanager
  def _writing(self):
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many kinds)
      step = getattr(self, '_pending_step', None)
      self._failed = True
      kept = [s for s in self.all_steps() if s != step] if os.path.isdir(self.directory) else []
      raise CheckpointWriteError(
          f'cannot write checkpoint {self.step_path(step)}: {_reason(e)}. Training stopped; the previous '
          f'checkpoint is kept ({self.step_path(kept[-1]) if kept else "none"}).') from None

  def check_for_errors(self) -> None:
    """Raises CheckpointWriteError if a background write has failed."""
    if self._manager is not None and self._writable:
      with self._writing():
        self._manager.check_for_errors()

  def wait(self) -> None:
    if self._manager is not None:
      with self._writing():
        self._manager.wait_until_finished()

  def _remove_unfinished(self, why: str) -> None:
    """Removes the temporary folders of unfinished checkpoints (process 0)."""
    if jax.process_index() == 0 and os.path.isdir(self.directory):
      for name in os.listdir(self.directory):
        if _TMP_PATTERN.match(name):
          logging.warning('Removing unfinished checkpoint %s (%s)', name, why)
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def close(self) -> None:
    if self._manager is not None:
      try:
        if not getattr(self, '_failed', False):
          self.wait()
      finally:
        with contextlib.suppress(Exception):
          self._manager.close()
        self._manager = None
        if getattr(self, '_failed', False):  # a failed write leaves no temporary folder behind
          self._remove_unfinished('its write failed')


def _handler_registry():
  """The handler of each item, so that a fresh manager can read metadata and restore any item."""
  import grain
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  registry.add(STATE, ocp.args.StandardSave, ocp.StandardCheckpointHandler)
  registry.add(STATE, ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
  registry.add(STATE, ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler)  # partial restores (variables)
  registry.add(DATA_ITER, grain.checkpoint.CheckpointSave, grain.checkpoint.CheckpointHandler)
  registry.add(DATA_ITER, grain.checkpoint.CheckpointRestore, grain.checkpoint.CheckpointHandler)
  registry.add(CONFIG, ocp.args.JsonSave, ocp.JsonCheckpointHandler)
  registry.add(CONFIG, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
  return registry


def _grain_save(train_iter):
  import grain
  return grain.checkpoint.CheckpointSave(train_iter)


def _grain_restore(train_iter):
  import grain
  return grain.checkpoint.CheckpointRestore(train_iter)


# ---------------------------------------------------------------------------------------------------------
# Loading a trained run.


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


def _locate(path: str, which: str) -> tuple[TrainCheckpoints, int, str | None]:
  """(store, step, run folder or None) for a run folder, its checkpoints/ folder or a step folder."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.exists(path):
    raise CheckpointError(f'checkpoint {path} does not exist')
  if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):  # a run folder
    store = TrainCheckpoints(os.path.join(path, CHECKPOINT_DIR))
    return store, store.select_step(which, run_dir=path), path
  if os.path.isfile(os.path.join(path, 'metadata.json')) and os.path.isdir(os.path.join(path, 'variables')):
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
             mesh=None, data_iterator=None) -> Run:
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
    data_iterator: a grain iterator of the run's training data: restored to the checkpoint's position.
  Raises:
    CheckpointError: no usable checkpoint or config. CheckpointMismatchError: the checkpoint's tree is not the
    model of the config (the message names the differing parameters and config fields).
  """
  gone = None
  while True:
    store, step, run_dir = _locate(path, str(which))
    try:
      return _load_step(store, step, run_dir, config, config_name, mesh, data_iterator)
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


def _load_step(store: TrainCheckpoints, step: int, run_dir: str | None, config, config_name: str | None, mesh,
               data_iterator) -> Run:
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
      if data_iterator is not None:
        store.restore_data_iterator(step, data_iterator)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'cannot restore checkpoint {step_path}: {e}') from None
    return Run(config=config, model=model, variables=dict(variables), step=step, checkpoint_path=step_path,
               config_source=source, run_dir=run_dir, metrics=store.metrics(step))
  finally:
    store.close()


# ---------------------------------------------------------------------------------------------------------
# Warm starts (`init_from`): pretrained encoders, earlier runs, the authors' trained models.

# The modules of a backbone that an ImageNet ResNet provides (the 'pspnet' backbone adds 'psp', which it does not).
_RESNET_PART = re.compile(r'stem|stage\d')
# init_from prefix of the authors' trained models (`weights.AUTHORS`) -> the system each one is.
AUTHORS_SYSTEMS = {
    'tmanet': {'temporal': 'tma', 'backbone': 'resnet', 'depth': 50, 'variant': 'v1c', 'dataset': None},
    'stf_mar': {'temporal': 'stf', 'backbone': 'pspnet', 'depth': 50, 'variant': 'v1c', 'dataset': None},
    'ma_resnet50': {'temporal': 'pcma', 'backbone': 'resnet', 'depth': 50, 'variant': 'vd', 'dataset': None},
}
_MODULE_ORDER = ('backbone', 'temporal', 'head', 'aux_head')


def is_converted(path: str) -> bool:
  """Whether `path` is a converted encoder (`python -m ma_resnet.convert`), not a training run."""
  return os.path.isfile(os.path.join(path, 'metadata.json')) and os.path.isdir(os.path.join(path, 'variables'))


def _variables_of(state) -> dict:
  return {'params': state.params, 'batch_stats': state.batch_stats}


def _flat_arrays(tree) -> dict[str, Any]:
  """'params/a/b/kernel' -> array for every leaf of a {'params': ..., 'batch_stats': ...} tree."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {'/'.join(_key_name(k) for k in path): leaf for path, leaf in flat}


def _replace_variables(state, values: Mapping[str, Any], mesh=None):
  """`state` with the variables named in `values` ('params/...', 'batch_stats/...') replaced, cast to the
  state's dtypes; host values are replicated over `mesh` (restored device arrays already are)."""
  def replace(collection: str, tree):
    def pick(path, leaf):
      value = values.get('/'.join((collection,) + tuple(_key_name(k) for k in path)))
      if value is None:
        return leaf
      if isinstance(value, jax.Array):
        return value.astype(leaf.dtype)
      value = np.asarray(value, dtype=np.dtype(leaf.dtype))
      return parallel.replicate(value, mesh) if mesh is not None else jax.device_put(value)
    return jax.tree_util.tree_map_with_path(pick, tree)
  return state.replace(params=replace('params', state.params), batch_stats=replace('batch_stats', state.batch_stats))


def frozen_variables(state, config) -> dict[str, str]:
  """The variables of `state` that never train -> the config field freezing them: every variable of a module in
  `model.frozen` (it also runs in eval mode), the parameters under a path prefix in `optimizer.frozen`."""
  modules = tuple(config.model.get('frozen') or ())
  prefixes = tuple(str(p).strip('/') for p in (config.optimizer.get('frozen') or ()))
  under = lambda name, ps: next((p for p in ps if name == p or name.startswith(p + '/')), None)
  out = {}
  for key in flat_shapes(_variables_of(state)):
    collection, name = key.split('/', 1)
    if under(name, modules):
      out[key] = f'{under(name, modules)} (model.frozen)'
    elif collection == 'params' and under(name, prefixes):
      out[key] = f'{under(name, prefixes)} (optimizer.frozen)'
  return out


def _copied(state, loaded: set[str]) -> str:
  """'backbone 318 of 318, temporal 0 of 40, head 0 of 2 arrays': what was copied, per top-level module."""
  counts: dict[str, list[int]] = {}
  for key in flat_shapes(_variables_of(state)):
    count = counts.setdefault(key.split('/')[1], [0, 0])
    count[0] += key in loaded
    count[1] += 1
  order = sorted(counts, key=lambda m: (_MODULE_ORDER.index(m) if m in _MODULE_ORDER else len(_MODULE_ORDER), m))
  return ', '.join(f'{m} {counts[m][0]} of {counts[m][1]}' for m in order) + ' arrays'


def _system(config) -> dict:
  """temporal, backbone, depth, variant, dataset of a training config (a ConfigDict or a stored plain dict)."""
  model, data = config.get('model') or {}, config.get('data') or {}
  return {'temporal': model.get('temporal'), 'backbone': model.get('backbone', 'resnet'),
          'depth': model.get('depth'), 'variant': model.get('variant'), 'dataset': data.get('name')}


def _check_system(what: str, source: dict, config, frozen: Mapping[str, str]) -> None:
  """CheckpointMismatchError (one line naming both values) when the model `source` describes (`_system`) is
  another system than the config's (a per-frame model, temporal 'plain', starts any system of its backbone),
  another ResNet depth or variant, or was trained on another dataset while the config freezes some of it."""
  target = _system(config)
  system = lambda s: f"temporal {s['temporal']!r} on backbone {s['backbone']!r}"
  if source['backbone'] != target['backbone'] or source['temporal'] not in (target['temporal'], 'plain'):
    raise CheckpointMismatchError(
        f'init_from={what} is a model of {system(source)}; the config builds {system(target)} (a per-frame model, '
        "temporal 'plain', starts any system on its backbone; a model of another system does not)")
  if target['backbone'] != 'lernet' and (source['depth'], source['variant']) != (target['depth'], target['variant']):
    raise CheckpointMismatchError(
        f"init_from={what} is a ResNet{source['depth']} ({source['variant']}) model; the config builds a "
        f"ResNet{target['depth']} ({target['variant']})")
  if frozen and source['dataset'] is not None and source['dataset'] != target['dataset']:
    raise CheckpointMismatchError(
        f"init_from={what} was trained on {source['dataset']}; the config trains on {target['dataset']} and freezes "
        f"{', '.join(sorted(set(frozen.values())))}, which would keep what it learned on {source['dataset']}")


def _shared(state, found: Mapping[str, tuple], where: str, exclude: tuple[str, ...]) -> tuple[list[str], list[str]]:
  """(variables of `state` found with the same path and shape, the others): CheckpointMismatchError when a shared
  path has another shape, or when nothing is shared. `exclude`: path prefixes without the collection that are
  never taken (e.g. 'head' = params/head/... and batch_stats/head/...)."""
  def excluded(key: str) -> bool:
    name = key.split('/', 1)[1]
    return any(name == p.strip('/') or name.startswith(p.strip('/') + '/') for p in exclude)

  found = {k: v for k, v in found.items() if k.split('/')[0] in ('params', 'batch_stats') and not excluded(k)}
  current = flat_shapes(_variables_of(state))
  reshaped = sorted(k for k in set(found) & set(current) if found[k][0] != current[k][0])
  shared = sorted(k for k in set(found) & set(current) if k not in reshaped)
  if reshaped or not shared:
    detail = (f'{len(reshaped)} variables have other shapes: '
              + ', '.join(f'{k} {found[k][0]} vs {current[k][0]}' for k in reshaped[:MAX_LISTED])
              + ' (init_from_exclude leaves a module out)' if reshaped else 'no variable of the model is in it')
    raise CheckpointMismatchError(f'{where}: {detail}')
  return shared, sorted(set(current) - set(shared))


def _check_resnet_backbone(model_config, what: str) -> None:
  backbone = model_config.get('backbone', 'resnet')
  if backbone not in ('resnet', 'pspnet'):
    raise CheckpointMismatchError(f'init_from={what} is an ImageNet ResNet; the config builds backbone {backbone!r}')


@dataclasses.dataclass(frozen=True)
class WarmStart:
  """A checked `init_from` (`prepare_warm_start`): the variables it gives, and `apply` to copy them."""
  init_from: str
  detail: str                  # the source, for the console line ('(step 6, trained on camvid)')
  loaded: frozenset[str]       # the variables it gives ('params/backbone/...', 'batch_stats/...')
  values: Callable[[Any], Mapping[str, Any]]  # mesh -> {variable: array} (read only now)

  def apply(self, state, mesh=None) -> tuple[Any, str]:
    """(`state` with those variables copied in, the console line saying what was copied)."""
    state = _replace_variables(state, self.values(mesh), mesh)
    return state, f'Initialised from {self.init_from}{self.detail}: copied {_copied(state, self.loaded)}'


def _encoder_values(state, path: str, model_config, what: str) -> dict[str, np.ndarray]:
  """The variables ('params/backbone/stem/...') that the converted ResNet at `path` gives the ResNet modules of
  `state`'s backbone (the rest, as 'pspnet''s 'psp', keeps its values), checked against them."""
  from ma_resnet.convert import ConversionError, load_converted
  _check_resnet_backbone(model_config, what)
  try:
    variables, metadata = load_converted(path)
  except (ConversionError, OSError) as e:
    raise CheckpointMismatchError(f'init_from={what}: {e}') from None
  arch = metadata.get('architecture', {})
  want = {'depth': int(model_config.depth), 'variant': str(model_config.variant)}
  got = {'depth': arch.get('depth'), 'variant': arch.get('variant')}
  if got != want:
    raise CheckpointMismatchError(
        f'init_from={what} holds a ResNet{got["depth"]} ({got["variant"]}) but the config builds a '
        f'ResNet{want["depth"]} ({want["variant"]}): set model.depth / model.variant to match, or convert '
        f'the right checkpoint')
  parts = {k for k in state.params['backbone'] if _RESNET_PART.fullmatch(k)}
  backbone = {c: getattr(state, c)['backbone'] for c in ('params', 'batch_stats')}
  ours = {k: v for k, v in flat_shapes(backbone).items() if k.split('/')[1] in parts}  # 'params/stem/...'
  theirs = {k: v for k, v in _flat_arrays({c: variables.get(c, {}) for c in backbone}).items()
            if k.split('/')[1] in parts}
  message = describe_mismatch(ours, flat_shapes(theirs), what="the ResNet of the config's backbone",
                              found_where=f'init_from={what}')
  if message:
    raise CheckpointMismatchError(message)
  return {k.replace('/', '/backbone/', 1): v for k, v in theirs.items()}


def load_pretrained_encoder(state, path: str, model_config, mesh=None):
  """`state` with the ResNet of its encoder (`params/backbone`, `batch_stats/backbone`: stem and stages; the
  'pspnet' backbone's PSP module is kept as it is) replaced by a converted ResNet.

  `path` is a folder written by `python -m ma_resnet.convert` (see `ma_resnet.convert.load_converted`). The
  checkpoint's architecture must be the config's (depth, variant) and its tree must match the ResNet's exactly,
  except for parts the model does not build (a classifier `fc`, the stages after the deepest one the model
  reads), which are dropped; otherwise one CheckpointMismatchError names the differences. The optimizer state
  is unchanged (it is all zeros at step 0).
  """
  return _replace_variables(state, _encoder_values(state, path, model_config, path), mesh)


def _from_run(state, path: str, exclude: tuple[str, ...], config) -> tuple[WarmStart, dict]:
  """The `WarmStart` of a previous run (see `init_from_run`) and its report."""
  store, step, _ = _locate(path, 'best')
  source = None
  try:
    if config is not None:
      latest = store.latest_step()
      planned = (store.stored_config_or_none(latest) or {}).get('num_steps')
      if not os.path.isdir(os.path.join(path, STATE)) and planned is not None and latest < int(planned):
        raise CheckpointMismatchError(
            f'init_from={path} is an unfinished run (its last checkpoint is step {latest} of {planned}): finish it '
            f'(run its command again), or name the checkpoint to start from ({store.step_path(latest)})')
      stored = store.stored_config_or_none(step)
      if stored is None:
        logging.warning('%s stores no config: its system, depth and dataset are not checked', store.step_path(step))
      else:
        source = _system(stored)
        _check_system(path, source, config, frozen_variables(state, config))
    shared, new = _shared(state, store.stored_shapes(step), f'init_from={path} ({store.step_path(step)})', exclude)
  finally:
    store.close()
  keep = frozenset(shared)

  def values(mesh):
    reader = TrainCheckpoints(store.directory)
    try:
      return {k: v for k, v in _flat_arrays(reader.restore_variables(step, mesh)).items() if k in keep}
    finally:
      reader.close()
  detail = f' (step {step}' + (f", trained on {source['dataset']}" if source and source['dataset'] else '') + ')'
  return (WarmStart(str(config.init_from) if config is not None else path, detail, keep, values),
          {'loaded': shared, 'new': new, 'step': step, 'source': source})


def init_from_run(state, path: str, mesh=None, exclude: tuple[str, ...] = (), config=None):
  """`state` with every variable that a previous run's checkpoint also has (same path, same shape) taken from
  that checkpoint: the stages of a staged recipe (e.g. a per-frame model, then a temporal module on top).

  path: a run folder (its best checkpoint), its checkpoints/ folder or a step folder. exclude: variable path
  prefixes without the collection (e.g. 'head' = params/head/... and batch_stats/head/...) never taken from it.
  config: the training config of `state` (train.py's warm start): the run must then be finished (unless `path`
  is one of its step folders) and of a compatible system, depth, variant and dataset (`_check_system`).
  Returns the new state and {'loaded': [...], 'new': [...], 'step': ..., 'source': `_system` of the run or None}
  ('new' keep their initial values). CheckpointMismatchError when a check fails, a shared path has another
  shape, or nothing matches (not a run of a related model).
  """
  plan, report = _from_run(state, path, exclude, config)
  return plan.apply(state, mesh)[0], report


def _authors_variables(kind: str, path: str, config) -> dict:
  """The variables of an authors' trained model (`AUTHORS_SYSTEMS`) read by its loader (`convert.tmanet`,
  `convert.stf_mar`, `convert.paddle`). The number of classes is read off the file's classifier; what the file
  does not fix (TMANet's T, key/value widths and align_corners; PCMA's ratio) is the config's."""
  from ma_resnet import data as data_lib
  from ma_resnet.convert import paddle, stf_mar, tmanet
  from ma_resnet.convert import torchvision as torchvision_convert
  model = config.model
  classes = lambda state, key: int(np.shape(state[key])[0]) if key in state else data_lib.num_classes(config.data)
  if kind == 'ma_resnet50':
    state = paddle.read_pdparams(path)
    return paddle.load_reference(state, num_classes=classes(state, 'head.decoder.conv.weight'),
                                 ratio=float(model.pcma.ratio))[1]
  state, _ = torchvision_convert.state_dict_of(path)
  if kind == 'tmanet':
    return tmanet.load_reference(state, num_classes=classes(state, 'decode_head.conv_seg.weight'),
                                 memory_length=int(model.tma.memory_length), align_corners=bool(model.align_corners),
                                 key_channels=int(model.tma.key_channels),
                                 value_channels=int(model.tma.value_channels))[1]
  return stf_mar.load_reference(state, num_classes=classes(state, 'pspnet.decode_head.conv_seg.weight'))[1]


def prepare_warm_start(config, state, *, progress: bool = False) -> WarmStart | None:
  """`config.init_from` (the forms: `weights.InitFrom`) checked, fetched and read for a new run whose state is
  `state` (or its shapes, `training.abstract_train_state`: nothing is replaced here); None when it is empty.

  Checked: the source's architecture (a catalogue entry's already in `train_config.validate`), system, depth,
  variant and dataset against the config (`_check_system`; an earlier run must have finished), and that every
  variable the config freezes (`frozen_variables`) comes from it (else it would stay at its random
  initialisation). Errors: CheckpointError / CheckpointMismatchError (one line, naming both values),
  ValueError('invalid config: ...') when the config freezes modules and init_from is empty.
  """
  from ma_resnet import weights
  from ma_resnet.convert import ConversionError
  text = str(config.init_from or '')
  frozen = frozen_variables(state, config)
  try:
    spec = weights.parse_init_from(text)
  except weights.WeightsError as e:
    raise ValueError(f'invalid config: {e}') from None
  if spec.kind == 'none':
    if frozen:
      raise ValueError(f'invalid config: the config freezes {", ".join(sorted(set(frozen.values())))} but init_from '
                       'is empty: they would stay at their random initialisation; set init_from to the run they '
                       'come from (the previous stage of the recipe)')
    return None
  path = os.path.expanduser(spec.value)
  if spec.kind in ('path', 'authors') and not os.path.exists(path):
    hint = ('' if os.sep in spec.value or spec.kind == 'authors'
            else ', and it is not a catalogue name (python -m ma_resnet.weights list)')
    raise CheckpointError(f'init_from={text}: {path} does not exist{hint}')
  exclude = tuple(config.get('init_from_exclude') or ())
  try:
    if spec.kind in ('catalogue', 'weights') or is_converted(path):
      if spec.kind == 'catalogue':
        path = weights.prepare(spec.value, progress=progress)
      elif spec.kind == 'weights':
        _check_resnet_backbone(config.model, text)  # before converting
        path = weights.convert_file(path, depth=int(config.model.depth), framework=spec.framework)
      values = _encoder_values(state, path, config.model, text)
      plan = WarmStart(text, f' (converted copy {path})' if path != text else '', frozenset(values),
                       lambda mesh: values)
    elif spec.kind == 'authors':
      _check_system(text, AUTHORS_SYSTEMS[spec.framework], config, frozen)
      variables = _authors_variables(spec.framework, path, config)
      keep = frozenset(_shared(state, flat_shapes(variables), f'init_from={text}', exclude)[0])
      values = {k: v for k, v in _flat_arrays(variables).items() if k in keep}
      plan = WarmStart(text, f" (the authors' {spec.framework} model)", keep, lambda mesh: values)
    else:
      plan = _from_run(state, path, exclude, config)[0]
  except weights.WeightsError as e:
    raise CheckpointError(f'init_from={text}: {e}') from None
  except ConversionError as e:
    raise CheckpointMismatchError(f'init_from={text}: {e}') from None
  missing = sorted(set(frozen) - plan.loaded)
  if missing:
    roots = _subtree_roots(set(missing), dict.fromkeys(plan.loaded))
    raise CheckpointMismatchError(
        f'init_from={text}: the config freezes {", ".join(sorted({frozen[k] for k in missing}))} but {len(missing)} '
        f'of those arrays are not in it ({", ".join(roots[:MAX_LISTED])}): they would stay at their random '
        'initialisation')
  new = _subtree_roots(set(flat_shapes(_variables_of(state))) - plan.loaded, dict.fromkeys(plan.loaded))
  logging.info('init_from=%s: %d arrays to copy; kept at their initial values: %s', text, len(plan.loaded),
               ', '.join(new) or 'none')
  return plan


def warm_start(state, config, mesh=None, *, progress: bool = False) -> tuple[Any, str | None]:
  """`prepare_warm_start` then `WarmStart.apply`: (`state` initialised as `config.init_from` says, the console
  line saying what was copied, per top-level module; None when init_from is empty)."""
  plan = prepare_warm_start(config, state, progress=progress)
  return plan.apply(state, mesh) if plan is not None else (state, None)
