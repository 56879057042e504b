"""Warm starts (`init_from`): a new run's variables taken from a converted encoder, an earlier run or the
authors' trained models.

    plan = prepare_warm_start(config, abstract_state)   # checked and read before the run writes anything
    state, line = plan.apply(state, mesh)               # the variables copied in; line: what was copied, per module
    state, line = warm_start(state, config)             # both at once

The checks: the source's system, ResNet depth / variant and dataset against the config's (`_check_system`), every
variable the config freezes coming from it, shared paths of one shape; one `CheckpointMismatchError` (or
`CheckpointError`) naming both values otherwise. What `init_from` may name: `weights.InitFrom`.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping

import jax
import numpy as np
from absl import logging

from ma_resnet import parallel, trees
from ma_resnet.checkpoints import (MAX_LISTED, STATE, CheckpointError, CheckpointMismatchError, TrainCheckpoints,
                                   describe_mismatch, flat_shapes, subtree_roots)
from ma_resnet.convert import ConversionError, load_converted
from ma_resnet.convert.checkpoint_io import is_converted
from ma_resnet.runs import locate

# The modules of a backbone that an ImageNet ResNet provides (the 'pspnet' backbone adds 'psp', which it does not).
_RESNET_PART = re.compile(r'stem|stage\d')
# init_from prefix of the authors' trained models (`weights.AUTHORS`) -> the system each one is.
AUTHORS_SYSTEMS = {
    'tmanet': {'temporal': 'tma', 'backbone': 'resnet', 'depth': 50, 'variant': 'v1c', 'dataset': None},
    'stf_mar': {'temporal': 'stf', 'backbone': 'pspnet', 'depth': 50, 'variant': 'v1c', 'dataset': None},
    'ma_resnet50': {'temporal': 'pcma', 'backbone': 'resnet', 'depth': 50, 'variant': 'vd', 'dataset': None},
}
_MODULE_ORDER = ('backbone', 'temporal', 'head', 'aux_head')


def _variables_of(state) -> dict:
  return {'params': state.params, 'batch_stats': state.batch_stats}


def _replace_variables(state, values: Mapping[str, Any], mesh=None):
  """`state` with the variables named in `values` ('params/...', 'batch_stats/...') replaced, cast to the
  state's dtypes; host values are replicated over `mesh` (restored device arrays already are)."""
  def cast(value, leaf):
    if isinstance(value, jax.Array):
      return value.astype(leaf.dtype)
    value = np.asarray(value, dtype=np.dtype(leaf.dtype))
    return parallel.replicate(value, mesh) if mesh is not None else jax.device_put(value)
  variables = trees.graft(_variables_of(state), values, cast)
  return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])


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
  theirs = {k: v for k, v in trees.flatten({c: variables.get(c, {}) for c in backbone}).items()
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
  store, step, _ = locate(path, 'best')
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
      return {k: v for k, v in trees.flatten(reader.restore_variables(step, mesh)).items() if k in keep}
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
      values = {k: v for k, v in trees.flatten(variables).items() if k in keep}
      plan = WarmStart(text, f" (the authors' {spec.framework} model)", keep, lambda mesh: values)
    else:
      plan = _from_run(state, path, exclude, config)[0]
  except weights.WeightsError as e:
    raise CheckpointError(f'init_from={text}: {e}') from None
  except ConversionError as e:
    raise CheckpointMismatchError(f'init_from={text}: {e}') from None
  missing = sorted(set(frozen) - plan.loaded)
  if missing:
    roots = subtree_roots(set(missing), dict.fromkeys(plan.loaded))
    raise CheckpointMismatchError(
        f'init_from={text}: the config freezes {", ".join(sorted({frozen[k] for k in missing}))} but {len(missing)} '
        f'of those arrays are not in it ({", ".join(roots[:MAX_LISTED])}): they would stay at their random '
        'initialisation')
  new = subtree_roots(set(flat_shapes(_variables_of(state))) - plan.loaded, dict.fromkeys(plan.loaded))
  logging.info('init_from=%s: %d arrays to copy; kept at their initial values: %s', text, len(plan.loaded),
               ', '.join(new) or 'none')
  return plan


def warm_start(state, config, mesh=None, *, progress: bool = False) -> tuple[Any, str | None]:
  """`prepare_warm_start` then `WarmStart.apply`: (`state` initialised as `config.init_from` says, the console
  line saying what was copied, per top-level module; None when init_from is empty)."""
  plan = prepare_warm_start(config, state, progress=progress)
  return plan.apply(state, mesh) if plan is not None else (state, None)
