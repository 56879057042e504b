"""Checkpoints of a training run (Orbax `CheckpointManager`) and loading pretrained encoders.

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

import json
import os
import re
import shutil
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from ma_resnet import parallel

CHECKPOINT_DIR = 'checkpoints'
STATE, DATA_ITER, CONFIG = 'state', 'data_iter', 'config'
BEST_METRIC = 'miou'
MAX_LISTED = 12
_TMP_PATTERN = re.compile(r'.*\.orbax-checkpoint-tmp.*')


class CheckpointMismatchError(ValueError):
  """A checkpoint that does not fit the model/optimizer of the config; the message names the paths."""


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
    manager = self._reader()
    return sorted(manager.all_steps()) if manager else []

  def latest_step(self) -> int | None:
    manager = self._reader()
    return manager.latest_step() if manager else None

  def best_step(self) -> int | None:
    """The step with the best validation mIoU (the latest step when none was evaluated)."""
    manager = self._reader()
    if manager is None:
      return None
    return manager.best_step() or manager.latest_step()

  def select_step(self, selector: str, run_dir: str | None = None) -> int:
    """'best', 'latest' or a step number -> a step that exists; FileNotFoundError naming what is missing."""
    steps = self.all_steps()
    if not steps:
      where = f'train first (python train.py --workdir={run_dir})' if run_dir else 'nothing to restore'
      raise FileNotFoundError(f'no checkpoint in {self.directory}: {where}')
    if selector == 'best':
      return self.best_step()
    if selector == 'latest':
      return self.latest_step()
    step = int(selector)
    if step not in steps:
      raise FileNotFoundError(f'no checkpoint of step {step} in {self.directory} (steps: {steps})')
    return step

  def metrics(self, step: int) -> dict | None:
    manager = self._reader()
    return manager.metrics(step) if manager else None

  def step_path(self, step: int | None) -> str:
    return os.path.join(self.directory, str(step))

  def stored_shapes(self, step: int) -> dict:
    metadata = self._reader().item_metadata(step)[STATE]
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
        message += self._config_differences(step, config)
      raise CheckpointMismatchError(
          message + '\nThe workdir holds a run of another architecture (or optimizer); use a new --workdir '
          'or the config it was trained with (its config.json). Nothing was written.')

  def _config_differences(self, step: int, config) -> str:
    try:
      stored = self.stored_config(step)
    except Exception:  # pylint: disable=broad-except
      return ''
    def flat(tree, prefix):
      out = {}
      for k, v in (tree or {}).items():
        if isinstance(v, dict):
          out.update(flat(v, f'{prefix}{k}.'))
        else:
          out[f'{prefix}{k}'] = tuple(v) if isinstance(v, list) else v
      return out
    now = json.loads(config.to_json())
    old, new = flat(stored.get('model'), 'model.'), flat(now.get('model'), 'model.')
    old['data.name'], new['data.name'] = stored.get('data', {}).get('name'), now['data']['name']
    diffs = [f'{k}: {old.get(k)!r} in the checkpoint\'s run, {new.get(k)!r} now'
             for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ('\n  config differences: ' + '; '.join(diffs)) if diffs else ''

  def stored_config(self, step: int) -> dict:
    restored = self._reader().restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))
    return restored[CONFIG]

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
    restored = self._reader().restore(step, args=ocp.args.Composite(**items))
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
    if jax.process_index() == 0 and os.path.isdir(self.directory):
      for name in os.listdir(self.directory):
        if _TMP_PATTERN.match(name):
          logging.warning('Removing unfinished checkpoint %s (a run stopped while writing it)', name)
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    self._manager = ocp.CheckpointManager(self.directory, options=self._options(True),
                                          handler_registry=_handler_registry())
    self._writable = True
    self._config_json = json.loads(config.to_json())

  def save(self, step: int, state, train_iter, metrics: dict | None = None) -> None:
    """Saves state + iterator position + config at `step` (asynchronously: `wait()` to block)."""
    if not self._writable:
      raise RuntimeError('open_for_writing() first')
    self._manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state),
        DATA_ITER: _grain_save(train_iter),
        CONFIG: ocp.args.JsonSave(self._config_json),
    }), metrics=metrics, force=True)

  def wait(self) -> None:
    if self._manager is not None:
      self._manager.wait_until_finished()

  def close(self) -> None:
    if self._manager is not None:
      self._manager.wait_until_finished()
      self._manager.close()
      self._manager = None


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
# Pretrained encoders.


def load_pretrained_encoder(state, path: str, model_config, mesh=None):
  """`state` with its encoder (`params/backbone`, `batch_stats/backbone`) replaced by a converted ResNet.

  `path` is a folder written by `python -m ma_resnet.convert` (see `ma_resnet.convert.load_converted`). The
  checkpoint's architecture must be the config's (depth, variant) and its tree must match the backbone's
  exactly, except for parts the model does not build (a classifier `fc`, the stages after the deepest one
  the model reads), which are dropped; otherwise one CheckpointMismatchError names the differences. The optimizer state is unchanged (it is all zeros at step 0).
  """
  from ma_resnet.convert import ConversionError, load_converted
  try:
    variables, metadata = load_converted(path)
  except (ConversionError, OSError) as e:
    raise CheckpointMismatchError(f'init_from={path}: {e}') from None
  arch = metadata.get('architecture', {})
  want = {'depth': int(model_config.depth), 'variant': str(model_config.variant)}
  got = {'depth': arch.get('depth'), 'variant': arch.get('variant')}
  if got != want:
    raise CheckpointMismatchError(
        f'init_from={path} holds a ResNet{got["depth"]} ({got["variant"]}) but the config builds a '
        f'ResNet{want["depth"]} ({want["variant"]}): set model.depth / model.variant to match, or convert '
        f'the right checkpoint')
  built = set(state.params['backbone'])
  params = {k: v for k, v in variables['params'].items() if k in built}
  batch_stats = {k: v for k, v in variables.get('batch_stats', {}).items() if k in built}
  expected = {**{f'params/{k}': v for k, v in flat_shapes(state.params['backbone']).items()},
              **{f'batch_stats/{k}': v for k, v in flat_shapes(state.batch_stats['backbone']).items()}}
  found = {**{f'params/{k}': v for k, v in flat_shapes(params).items()},
           **{f'batch_stats/{k}': v for k, v in flat_shapes(batch_stats).items()}}
  message = describe_mismatch(expected, found, what='the encoder (backbone) of the config',
                              found_where=f'init_from={path}')
  if message:
    raise CheckpointMismatchError(message)

  def graft(tree, backbone):
    tree = dict(tree)
    old = tree['backbone']
    new = jax.tree.map(lambda ref, x: np.asarray(x, dtype=np.dtype(ref.dtype)), old, backbone)
    tree['backbone'] = parallel.replicate(new, mesh) if mesh is not None else jax.device_put(new)
    return tree

  # Flax may hold FrozenDicts or dicts; rebuild the same container type.
  new_params = graft(state.params, params)
  new_stats = graft(state.batch_stats, batch_stats)
  return state.replace(params=type(state.params)(new_params) if not isinstance(state.params, dict)
                       else new_params,
                       batch_stats=type(state.batch_stats)(new_stats) if not isinstance(state.batch_stats, dict)
                       else new_stats)
