"""The checkpoints of a training run: Orbax `CheckpointManager` storage of the train state, and its errors.

    store = TrainCheckpoints('runs/camvid_ma/checkpoints', keep=2)
    store.open_for_writing(config); store.save(step, state, train_iter, metrics)   # training (`loop`)
    store.select_step('best'); store.restore(step, abstract_state, train_iter)      # resuming
    store.restore_variables(step)                                                   # {'params', 'batch_stats'}

Reading a finished run (config + model + variables) is `runs.load_run`; starting a new run from another one's
variables is `warm_start` (`init_from`). Both read through `TrainCheckpoints` and raise the errors defined here.

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
import json
import os
import re
import shutil
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util
from orbax.checkpoint import checkpoint_managers

from ma_resnet import parallel, trees
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


def flat_shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  """'a/b/c' -> (shape, dtype) for every array leaf of `tree` (arrays, ShapeDtypeStructs, Orbax metadata)."""
  return {path: (tuple(leaf.shape), str(np.dtype(leaf.dtype))) for path, leaf in trees.flatten(tree).items()
          if hasattr(leaf, 'shape') and hasattr(leaf, 'dtype')}


def subtree_roots(paths: set[str], other: dict) -> list[str]:
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
  missing = subtree_roots(set(expected) - set(found), found)
  unexpected = subtree_roots(set(found) - set(expected), expected)
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


def config_differences(stored: dict | None, config) -> str:
  """'\n  config differences: ...' listing the model fields (and data.name) where the checkpoint's stored
  config differs from `config`; '' when there is no stored config or no difference."""
  if not stored:
    return ''
  now = json.loads(config.to_json()) if hasattr(config, 'to_json') else dict(config)
  old, new = ({f'model.{k}': tuple(v) if isinstance(v, list) else v
                for k, v in traverse_util.flatten_dict(tree.get('model') or {}, sep='.').items()}
               for tree in (stored, now))
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
