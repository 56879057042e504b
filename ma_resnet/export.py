r"""Exports a trained run's streaming step to files that run without this package (`jax.export`: StableHLO).

    python -m ma_resnet.export --workdir=runs/camvid_ma --size=360,480 --out=exports/camvid_ma
    python -m ma_resnet.export --workdir=runs/camvid_ma --checkpoint=latest --size=360,480 --frame-size=720,960 \
        --platforms=cpu,cuda,tpu --out=exports/camvid_ma_hd
    python -m ma_resnet.exported exports/camvid_ma --video=in.mp4 --out=out.mp4 --labels-dir=labels/

The folder (`--out`, written all or nothing) holds what a deployment needs and nothing of this package:

  manifest.json    sizes, normalisation, classes and palette, delay and frame kinds, the state tree, the
                   platforms and dtype, the run (config, step), the sha256 of every other file
  init.jaxexport   init(frames) -> state: the empty memory for a batch of streams (frames only give the batch)
  step.jaxexport   step(weights, frames, state, reset) -> (outputs, state): one frame per stream
  flush.jaxexport  flush(weights, state) -> outputs: the last frame of a non-causal model (delay 1) only
  weights.npz      the variables, one array per '/'-joined path (read with np.load(allow_pickle=False))

Each function is `jax.export`'s serialized StableHLO (`jax.export.deserialize(bytearray(...)).call(...)`, or any
PJRT runtime). frames: uint8 RGB (B, H, W, 3) at the frame size; inside, they are resized to the model's input
size with Pillow's bilinear filter computed exactly (fixed point, as `predict.py` resizes them), normalised as
in training, and segmented by the model's `step`; the logits are resized back to the frame size. outputs:
{'labels' int32 (B, H, W), 'logits' float32 (B, H, W, K), 'ready' bool (B,): the outputs are of a frame that
exists (False on a non-causal model's first frame), 'enhanced' bool (B,): that frame used the memory
(`frame_kinds`)}. reset (B,) bool: a new sequence starts at this frame (a non-causal model then returns the
previous sequence's last frame). The batch B is symbolic (any batch, one compiled program per batch) unless
--batch fixes it. `ma_resnet/exported.py` is the runner: a file of its own (jax and numpy only).

Weights are beside the functions, not inside them: the step and the flush share one copy, a folder of
weights can be checked (sha256, shapes) and exchanged for a fine-tuned one of the same architecture without
exporting again, the serialized modules stay small (XLA does not constant-fold megabytes of weights at each
compile), and a runtime puts them on the device once.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

import numpy as np

FORMAT = 'ma_resnet.export'
FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
WEIGHTS = 'weights.npz'
FUNCTIONS = {'init': 'init.jaxexport', 'step': 'step.jaxexport', 'flush': 'flush.jaxexport'}
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
EXIT_WRITE, EXIT_USAGE, EXIT_CHECKPOINT = 1, 2, 4
_PRECISION_BITS = 22  # Pillow's fixed point for 8-bit resampling (32 - 8 - 2)


class ExportError(ValueError):
  """The export cannot be made (bad flags, an --out that exists, a model that does not lower): the message
  says why."""


# -- Pillow's bilinear resize, exactly -----------------------------------------------------------------------

def pillow_bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pillow's bilinear filter along one axis, as its 8-bit resampler uses it: (index (out, taps) int32 of the
  input samples, weights (out, taps) int32 in 1/2**22). As Pillow's C code (`precompute_coeffs`,
  `normalize_coeffs_8bpc`), operation for operation: a triangle filter widened by the scale when shrinking
  (antialiasing), normalised by its sequential sum, rounded to fixed point; unused taps get weight 0."""
  scale = in_size / out_size
  filter_scale = max(scale, 1.0)
  support = 1.0 * filter_scale
  inverse = 1.0 / filter_scale
  taps = int(np.ceil(support)) * 2 + 1
  index = np.zeros((out_size, taps), np.int32)
  fixed = np.zeros((out_size, taps), np.int32)
  for o in range(out_size):
    center = (o + 0.5) * scale
    first = max(int(center - support + 0.5), 0)
    count = min(int(center + support + 0.5), in_size) - first
    weights = [max(1.0 - abs((x + first - center + 0.5) * inverse), 0.0) for x in range(count)]
    total = 0.0
    for w in weights:
      total += w
    for x, w in enumerate(weights):
      w = w / total if total != 0.0 else w
      fixed[o, x] = int(0.5 + w * (1 << _PRECISION_BITS))  # bilinear weights are >= 0
      index[o, x] = first + x
    index[o, count:] = first
  return index, fixed


def pillow_vertical_first(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
  """Whether Pillow resizes the height before the width (each pass rounds to uint8, so the order shows in the
  result): Pillow >= 13 does when the height shrinks by more than twice as many rows as the width loses
  columns; earlier versions never do."""
  import PIL
  if int(PIL.__version__.split('.')[0]) < 13:
    return False
  shrink = in_size[0] - out_size[0]
  return shrink > 0 and shrink > (in_size[1] - out_size[1]) * 2


def resize_uint8(frames, size: tuple[int, int], vertical_first: bool | None = None):
  """uint8 (B, H, W, 3) -> uint8 (B, h, w, 3): `PIL.Image.resize(..., BILINEAR)` to the last bit (one pass per
  axis, each rounded to uint8, in Pillow's order), in int32 arithmetic: gathers and multiply-adds, no float.
  vertical_first: None = the installed Pillow's order (`pillow_vertical_first`)."""
  import jax.numpy as jnp

  def along(x, axis, out_size):
    if x.shape[axis] == out_size:
      return x
    index, weights = pillow_bilinear_taps(x.shape[axis], out_size)
    total = jnp.full(x.shape[:axis] + (out_size,) + x.shape[axis + 1:], 1 << (_PRECISION_BITS - 1), jnp.int32)
    shape = (out_size,) + (1,) * (x.ndim - axis - 1)
    for tap in range(index.shape[1]):
      total += jnp.take(x, index[:, tap], axis=axis) * weights[:, tap].reshape(shape)
    return jnp.clip(total >> _PRECISION_BITS, 0, 255)

  if vertical_first is None:
    vertical_first = pillow_vertical_first(frames.shape[1:3], size)
  x = frames.astype(jnp.int32)
  if vertical_first:
    x = along(along(x, 1, size[0]), 2, size[1])
  else:
    x = along(along(x, 2, size[1]), 1, size[0])
  return x.astype(jnp.uint8)


# -- trees with named leaves -----------------------------------------------------------------------------------

def flat_weights(variables) -> dict[str, np.ndarray]:
  """{'params/backbone/stem/...': array}: the variables as the flat dict weights.npz stores (`trees.flatten`)."""
  from ma_resnet import trees
  return {path: np.asarray(leaf) for path, leaf in trees.flatten(variables).items()}


def _spec_tree(tree) -> dict:
  """{'shape': [...], 'dtype': ...} in place of every array of a nested dict (symbolic dimensions by name)."""
  if isinstance(tree, dict):
    return {k: _spec_tree(v) for k, v in tree.items()}
  return {'shape': [d if isinstance(d, int) else str(d) for d in tree.shape], 'dtype': str(np.dtype(tree.dtype))}


# -- the functions exported --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StreamingFunctions:
  """The pure functions `export_model` serializes (jit them to run them here): the model's `step` wrapped so that
  it takes uint8 frames at `frame_size` and returns labels and logits at that size, with the state as nested
  dicts. init(frames) -> state; step(weights, frames, state, reset) -> (outputs, state); flush(weights, state)
  -> outputs (None for a causal model)."""
  init: Any
  step: Any
  flush: Any
  frame_size: tuple[int, int]
  model_size: tuple[int, int]


def streaming_functions(model, *, frame_size: tuple[int, int], model_size: tuple[int, int], mean: Sequence[float],
                        std: Sequence[float], normalize: bool = True) -> StreamingFunctions:
  """The exported computation of `model` (a `VideoSegmenter`) for uint8 frames of `frame_size` seen at
  `model_size`: Pillow's resize (`resize_uint8`), `data.normalize_images`, the model's `step` (or `flush`), the
  logits resized back to `frame_size` (`inference.segment_frames`), their arg-max."""
  import jax
  import jax.numpy as jnp
  from flax import serialization
  from ma_resnet import trees
  from ma_resnet.data import normalize_images
  from ma_resnet.models.ops import resize_bilinear

  frame_size, model_size = tuple(int(s) for s in frame_size), tuple(int(s) for s in model_size)
  like = jax.eval_shape(lambda: model.init_memory(1, model_size))
  # uint8 value -> model input, per channel (256, 3), by the training code's own arithmetic: a lookup keeps the
  # float results bit for bit (XLA would fuse x * scale - shift into one fused multiply-add).
  values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
  table = normalize_images(values, mean, std) if normalize else values.astype(np.float32)

  def prepare(frames):
    if model_size != frame_size:
      frames = resize_uint8(frames, model_size)
    return jnp.asarray(table)[frames.astype(jnp.int32), jnp.arange(3)]

  def outputs(out):
    logits = out.logits
    if tuple(logits.shape[1:3]) != frame_size:
      logits = resize_bilinear(logits, frame_size)
    return {'labels': jnp.argmax(logits, axis=-1).astype(jnp.int32), 'logits': logits.astype(jnp.float32),
            'ready': out.ready.astype(bool), 'enhanced': out.enhanced.astype(bool)}

  # The memory crosses the export as nested dicts (`to_state_dict`), a tree `jax.export` serializes without the
  # classes of this package; the weights as the flat dict of `flat_weights`.
  def init(frames):
    return serialization.to_state_dict(model.init_memory(frames.shape[0], model_size))

  def step(weights, frames, state, reset):
    out = model.apply(trees.unflatten(weights), prepare(frames), serialization.from_state_dict(like, state), reset,
                      method=model.step)
    return outputs(out), serialization.to_state_dict(out.memory)

  def flush(weights, state):
    memory = serialization.from_state_dict(like, state)
    batch = jax.tree_util.tree_leaves(memory)[0].shape[0]
    frame = jnp.zeros((batch,) + model_size + (3,), jnp.float32)  # only gives the size (`VideoSegmenter.flush`)
    return outputs(model.apply(trees.unflatten(weights), frame, memory, method=model.flush))

  return StreamingFunctions(init=init, step=step, flush=flush if model.delay else None, frame_size=frame_size,
                            model_size=model_size)


def _sha256(path: str) -> str:
  import pooch
  return pooch.file_hash(path, alg='sha256')


def check_out(out: str) -> str:
  """The absolute path of a new export folder: absent, or an empty folder (nothing is ever overwritten)."""
  out = os.path.abspath(os.fspath(out))
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ExportError(f'--out {out} already exists and is not empty: give a new or empty folder (nothing was '
                      'overwritten)')
  return out


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
  platforms = tuple(dict.fromkeys(p.strip().lower() for p in platforms if p.strip()))
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown or not platforms:
    raise ExportError(f'--platforms must be some of {",".join(PLATFORMS)}, got {",".join(platforms) or "none"}')
  return platforms


def export_model(model, variables, out: str, *, frame_size: tuple[int, int], model_size: tuple[int, int],
                 mean: Sequence[float], std: Sequence[float], normalize: bool = True,
                 class_names: Sequence[str], palette: np.ndarray, batch: int | None = None,
                 platforms: Sequence[str] = ('cpu',), about: dict | None = None) -> dict:
  """Writes the export folder `out` (see the module docstring), all or nothing; returns the manifest.

  batch: None exports a symbolic batch 'b' (any batch), else a fixed one. about: more manifest fields (the
  run: workdir, checkpoint, step, config; the compute dtype).
  """
  import jax
  import jax.numpy as jnp
  from jax import export as jax_export
  from ma_resnet import files

  out = check_out(out)
  platforms = check_platforms(platforms)
  functions = streaming_functions(model, frame_size=frame_size, model_size=model_size, mean=mean, std=std,
                                  normalize=normalize)
  weights = flat_weights(variables)
  b = jax_export.symbolic_shape('b')[0] if batch is None else int(batch)
  frames = jax.ShapeDtypeStruct((b,) + functions.frame_size + (3,), jnp.uint8)
  one = jax.eval_shape(functions.init, jax.ShapeDtypeStruct((1,) + functions.frame_size + (3,), jnp.uint8))
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct((b,) + a.shape[1:], a.dtype), one)
  weight_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}
  args = {'init': (frames,), 'step': (weight_specs, frames, state, jax.ShapeDtypeStruct((b,), jnp.bool_)),
          'flush': (weight_specs, state)}
  exported = {}
  for name in FUNCTIONS:
    fn = getattr(functions, name)
    if fn is None:
      continue
    try:
      exported[name] = jax_export.export(jax.jit(fn), platforms=platforms)(*args[name])
    except Exception as e:  # pylint: disable=broad-except  (tracing or lowering: shape polymorphism limits)
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      hint = ' (try a fixed --batch)' if batch is None else ''
      raise ExportError(f'cannot export {name} for {",".join(platforms)}{hint}: {type(e).__name__}: {first}') from e
  b_name = 'b' if batch is None else int(batch)
  h, w = functions.frame_size
  num_classes = len(class_names)
  manifest = {
      'format': FORMAT,
      'format_version': FORMAT_VERSION,
      'frame': {'height': h, 'width': w, 'channels': 'RGB', 'dtype': 'uint8'},
      'model_input': {'size': list(functions.model_size),
                      'resize': ('none' if functions.model_size == functions.frame_size else
                                 f'bilinear, as Pillow {_pillow_version()} (exact)'),
                      'normalize': bool(normalize), 'mean': [float(m) for m in mean], 'std': [float(s) for s in std],
                      'formula': '(x / 255 - mean) / std' if normalize else 'x (0..255)'},
      'batch': b_name,
      'classes': {'names': list(class_names), 'palette': np.asarray(palette, np.uint8)[:num_classes].tolist()},
      'delay': int(model.delay),
      'frame_kinds': list(model.frame_kinds) if model.frame_kinds else None,
      'state': _spec_tree(state),
      'outputs': {'labels': {'shape': [b_name, h, w], 'dtype': 'int32'},
                  'logits': {'shape': [b_name, h, w, num_classes], 'dtype': 'float32'},
                  'ready': {'shape': [b_name], 'dtype': 'bool'},
                  'enhanced': {'shape': [b_name], 'dtype': 'bool'}},
      'functions': {name: {'file': FUNCTIONS[name], 'calling_convention_version': e.calling_convention_version}
                    for name, e in exported.items()},
      'weights': {'file': WEIGHTS, 'arrays': {k: {'shape': list(v.shape), 'dtype': str(v.dtype)}
                                              for k, v in weights.items()}},
      'platforms': list(platforms),
      'package': {'name': 'ma_resnet', 'version': _package_version(), 'jax': jax.__version__},
      **(about or {}),
  }
  with files.atomic_path(out, folder=True) as tmp:
    for name, e in exported.items():
      with open(os.path.join(tmp, FUNCTIONS[name]), 'wb') as f:
        f.write(e.serialize())
    np.savez(os.path.join(tmp, WEIGHTS), **weights)
    manifest['files'] = {name: {'sha256': _sha256(os.path.join(tmp, name)),
                                'bytes': os.path.getsize(os.path.join(tmp, name))}
                         for name in sorted(os.listdir(tmp))}
    with open(os.path.join(tmp, MANIFEST), 'w') as f:
      json.dump(manifest, f, indent=1)
      f.write('\n')
  return manifest


def _package_version() -> str:
  import ma_resnet
  return str(ma_resnet.__version__)


def _pillow_version() -> str:
  import PIL
  return PIL.__version__


def export_run(workdir: str, out: str, *, checkpoint: str = 'best', size: tuple[int, int] | None = None,
               frame_size: tuple[int, int] | None = None, batch: int | None = None,
               platforms: Sequence[str] = ('cpu',), dtype: str = 'float32', run=None) -> dict:
  """`export_model` of a trained run (`runs.load_run(workdir, checkpoint)`, or `run` when given).

  size: the model's input size (None: the run's data.eval_size); frame_size: the frames the export takes
  (None: `size`), resized to `size` inside; dtype: the compute dtype ('float32' | 'bfloat16'; the weights
  stay float32).
  """
  from ma_resnet import inference, models, runs
  from ma_resnet import data as data_lib

  out = check_out(out)
  platforms = check_platforms(platforms)
  if dtype not in ('float32', 'bfloat16'):
    raise ExportError(f'--dtype must be float32 or bfloat16, got {dtype!r}')
  if batch is not None and batch < 1:
    raise ExportError(f'--batch must be >= 1, got {batch}')
  if run is None:
    run = runs.load_run(workdir, checkpoint, mesh=_one_device_mesh())
  settings = inference.input_settings(run.config)
  size = tuple(size) if size is not None else settings.eval_size
  if size is None:
    raise ExportError(f'the run has no data.eval_size: give the model\'s input size (--size=H,W)')
  model = run.model
  if dtype != run.config.model.get('dtype', 'float32'):
    model_config = run.config.model.copy_and_resolve_references()
    model_config.dtype = dtype
    model = models.build(model_config, data_lib.num_classes(run.config.data))
  about = {'model': _describe(run.config.model),
           'dtype': dtype,
           'run': {'workdir': run.run_dir, 'checkpoint': run.checkpoint_path, 'step': int(run.step),
                   'config': json.loads(run.config.to_json())}}
  return export_model(model, run.variables, out, frame_size=tuple(frame_size or size), model_size=size,
                      mean=settings.mean, std=settings.std, normalize=settings.normalize,
                      class_names=settings.class_names, palette=settings.palette, batch=batch, platforms=platforms,
                      about=about)


def _describe(model) -> str:
  backbone = model.get('backbone', 'resnet')
  backbone = f'resnet{model.depth}' if backbone == 'resnet' else backbone
  return f'{model.temporal} + {backbone} + {model.head}'


def _one_device_mesh():
  import jax
  from ma_resnet import parallel
  return parallel.make_mesh(jax.local_devices()[:1])


# -- the command line ------------------------------------------------------------------------------------------

def _parse_size(text: str | None, flag: str) -> tuple[int, int] | None:
  if not text:
    return None
  m = re.fullmatch(r'\s*(\d+)\s*[,x]\s*(\d+)\s*', text)
  if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
    raise ExportError(f'--{flag} must be H,W (two positive integers), got {text!r}')
  return int(m.group(1)), int(m.group(2))


def _define_flags():
  from absl import flags
  flags.DEFINE_string('workdir', None, 'Run folder written by train.py (or a checkpoint step folder).')
  flags.DEFINE_string('checkpoint', 'best', "'best' (by validation mIoU), 'latest' or a step number.")
  flags.DEFINE_string('size', None, "H,W: the model's input size (default: the run's data.eval_size).")
  flags.DEFINE_string('frame-size', None, 'H,W of the frames the export takes, resized to --size inside '
                      '(default: --size).')
  flags.DEFINE_integer('batch', None, 'A fixed batch (default: symbolic, any batch).')
  flags.DEFINE_list('platforms', ['cpu'], f'Platforms to lower for: some of {",".join(PLATFORMS)}.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype (the weights stay float32).')
  flags.DEFINE_string('out', None, 'The export folder to create (absent or empty).')
  flags.mark_flags_as_required(['workdir', 'out'])
  return flags.FLAGS


def main(argv) -> None:
  from absl import logging
  from ma_resnet import cli
  from ma_resnet.checkpoints import CheckpointError
  flag_values = _FLAGS
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}', EXIT_USAGE)
  logging.set_verbosity(logging.ERROR)
  try:
    size = _parse_size(flag_values.size, 'size')
    frame_size = _parse_size(flag_values['frame-size'].value, 'frame-size')
    check_out(flag_values.out)  # before anything is loaded
    check_platforms(flag_values.platforms)
  except ExportError as e:
    cli.fail(str(e), EXIT_USAGE)
  try:
    manifest = export_run(flag_values.workdir, flag_values.out, checkpoint=flag_values.checkpoint, size=size,
                          frame_size=frame_size, batch=flag_values.batch, platforms=flag_values.platforms,
                          dtype=flag_values.dtype)
  except CheckpointError as e:
    cli.fail(str(e), EXIT_CHECKPOINT)
  except ExportError as e:
    cli.fail(f'{e}\n  (nothing was written to {flag_values.out})', EXIT_USAGE)
  except OSError as e:
    cli.fail(f'cannot write {flag_values.out}: {e}', EXIT_WRITE)
  total = sum(f['bytes'] for f in manifest['files'].values())
  frame = manifest['frame']
  print(f'wrote {os.path.abspath(flag_values.out)}: {manifest["model"]}, step {manifest["run"]["step"]}; frames '
        f'{frame["width"]}x{frame["height"]} uint8 RGB (model input {manifest["model_input"]["size"][1]}x'
        f'{manifest["model_input"]["size"][0]}), batch {manifest["batch"]}, delay {manifest["delay"]}, '
        f'{",".join(manifest["platforms"])}, {manifest["dtype"]}; {len(manifest["files"])} files, '
        f'{total / 1e6:.1f} MB', flush=True)


_FLAGS = None


def run(argv=None) -> None:
  """Entry point of `python -m ma_resnet.export`."""
  from absl import app
  from ma_resnet import cli
  global _FLAGS
  _FLAGS = _define_flags()
  app.run(main, argv=argv, flags_parser=cli.make_flags_parser('config'))


if __name__ == '__main__':
  run()
