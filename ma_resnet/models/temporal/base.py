"""The temporal-module interface: what is carried from frame to frame, and where it is used.

A temporal module sits between the backbone and the head of a `VideoSegmenter`. It owns

  options           a frozen dataclass (its paper's choices and the authors' code's, as fields)
  init_state        (batch_size, feature_shapes, dtype) -> state: a pytree of arrays whose leading axis is the
                    batch (validity masks and counters included). The empty state is all zeros, so the
                    segmenter resets the samples that start a new sequence by zeroing their entries.
  stages_read       the backbone maps it reads (the segmenter runs the backbone only as far as needed)
  encode            (maps, train) -> encodings: parameterised, batched over all B x T frames of a clip.
                    maps: name -> (B, T, h, w, C); encodings: any pytree of (B, T, ...) arrays.
  scan_body         (state, encodings_t) -> (state, reads_t, enhanced_t): ONE frame, no parameters; the
                    segmenter threads it through `jax.lax.scan` over a clip and calls it once in `step`.
                    encodings_t / reads_t: the same trees with the time axis removed, (B, ...);
                    enhanced_t (B,) bool: the frame's output used a full memory (False during warm-up).
  fuse              (maps, reads, enhanced, train) -> maps: parameterised, batched over all B x T frames;
                    the maps handed to the head (a module may replace maps or add new ones).

A module with `delay = d > 0` is non-causal: a frame's output needs the d frames after it (STF: frame t+1).
Its `scan_body(state, encodings_t, reset_t)` gets the resets itself and returns (state, reads_t, enhanced_t,
ready_t): reads_t are for the frame fed d steps before (ready_t (B,) bool: such a frame exists), and a reset
(the frame fed starts a new sequence) still emits the previous sequence's last frame before the module
restarts, so the segmenter never zeroes its state. The segmenter aligns a clip's outputs to its frames (one
flush step, a reset, after the last frame); `step` returns the emitted frame with `SegmenterOutput.ready`.
Only d = 1 is supported.

With `interleaved = True` (PCMA's feed-forward option) the fused maps of a stage also feed the backbone's next
stage; the segmenter then runs the backbone stage by stage, one frame after another, calling the three parts
with the maps of one stage (T = 1). Modules must therefore accept maps holding only some of their stages.

Construction: every module is made by `from_config(options, context)` from its block of the model config (a
mapping, e.g. `model.pcma`) and a `BuildContext` (the backbone's static description, the maps the heads read,
the classes, dtype, precision). It checks its own options against them and raises ValueError naming the option
at fault; `build` prefixes 'invalid config: model.<name>'. `check_feature_shapes` refuses a frame size whose
maps the module cannot take (config validation calls it for every size a run uses, before anything runs).

Adding a module: subclass `TemporalModule` in a file of this package (its paper section in the docstring) with
`from_config`, add its options to `ma_resnet.models.build.default_model_config()` and the class to
`build.TEMPORAL_MODULES`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

FeatureShapes = dict  # map name -> (h, w, channels) for a given frame size
PROBE_SIZE = (256, 256)  # a frame size every backbone takes: channels do not depend on it


@dataclasses.dataclass(frozen=True)
class BuildContext:
  """What `TemporalModule.from_config` gets besides its options.

  backbone: the backbone module, unbound (its static description: `feature_shapes(frame size)`, and methods
    such as LERNet's `high_level`); heads_read: the maps the head and the auxiliary head read; num_classes;
    dtype / precision: of the model. notes: warnings for the user (things the config asks for that are not
    built); `build` logs them.
  """
  backbone: Any
  heads_read: frozenset
  num_classes: int
  dtype: Any = jnp.float32
  precision: Any = None
  notes: list = dataclasses.field(default_factory=list)

  def channels(self) -> dict[str, int]:
    """Map name -> channels of every map the backbone offers."""
    return {name: shape[2] for name, shape in self.backbone.feature_shapes(PROBE_SIZE).items()}

  def require_map(self, name: str, option: str) -> int:
    """The channels of backbone map `name` (set by `option`); ValueError when the backbone has no such map."""
    channels = self.channels()
    if name not in channels:
      raise ValueError(f'{option}={name!r} is not a map of the backbone {type(self.backbone).__name__} '
                       f'({sorted(channels)})')
    return channels[name]

  def require_read(self, name: str, option: str, head_hint: str) -> None:
    """ValueError unless the heads read map `name` (the map the module replaces: otherwise it is wasted)."""
    if name not in self.heads_read:
      raise ValueError(f'{option}={name!r} is not read by the head (it reads {sorted(self.heads_read)}): '
                       f'{head_hint}')


def parse_options(options_class, options: Mapping | None):
  """`options_class` (a frozen dataclass) from a config block: lists become tuples; a key that is not one of its
  fields is a ValueError naming the fields (the dataclass checks the values)."""
  options = dict(options or {})
  fields = [f.name for f in dataclasses.fields(options_class)]
  unknown = sorted(set(options) - set(fields))
  if unknown:
    raise ValueError(f'unknown option(s) {unknown}; the options of {options_class.__name__} are {fields}')
  return options_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


class TemporalModule(nn.Module):
  """Base class. Its defaults are those of a module without state (`Plain`); a module with state overrides
  every method. A stateless module (`has_state = False`) is skipped by the segmenter: no scan, nothing enhanced.
  """

  interleaved: ClassVar[bool] = False
  has_state: ClassVar[bool] = True
  # True: `encode(maps, train, backbone=, memory=, reset=)` also gets the backbone (to run more of it on some
  # frames: THA runs the high-level part on key frames only), the memory before the clip (None when empty)
  # and the resets.
  needs_backbone: ClassVar[bool] = False
  # Frames of look-ahead a frame's output needs (non-causal modules; see the module docstring).
  delay: ClassVar[int] = 0
  # What reports call a frame whose `enhanced` is False / True (evaluation scores them apart, predict lists them).
  frame_kinds: ClassVar[tuple[str, str]] = ('warm-up', 'with memory')

  @classmethod
  def from_config(cls, options: Mapping | None, context: BuildContext) -> 'TemporalModule':
    """The module for its config block `options` (e.g. `model.pcma`) and `context`; ValueError naming the option
    that does not fit."""
    raise NotImplementedError(f'{cls.__name__} must define from_config')

  def check_feature_shapes(self, feature_shapes: FeatureShapes) -> None:
    """ValueError when the module cannot take maps of these shapes (name -> (h, w, C) for one frame size)."""
    del feature_shapes

  def stages_read(self) -> tuple[str, ...]:
    return ()

  def stages_written(self) -> tuple[str, ...]:
    """Maps the module produces itself (the segmenter does not ask the backbone for them)."""
    return ()

  def init_state(self, batch_size: int, feature_shapes: FeatureShapes, dtype: Any = jnp.float32) -> Any:
    del batch_size, feature_shapes, dtype
    return {}

  def encode(self, maps: dict, train: bool) -> Any:
    del maps, train
    return {}

  def scan_body(self, state: Any, encodings_t: Any):
    raise NotImplementedError(f'{type(self).__name__} carries state and must define scan_body')

  def fuse(self, maps: dict, reads: Any, enhanced: jax.Array, train: bool) -> dict:
    del reads, enhanced, train
    return maps


def reset_state(state: Any, flags: jax.Array) -> Any:
  """Zeroes (= empties) every leaf of `state` for the samples where `flags` (B,) is True."""
  def clear(leaf):
    keep = (~flags).reshape(flags.shape + (1,) * (leaf.ndim - 1))
    return jnp.where(keep, leaf, jnp.zeros((), leaf.dtype))
  return jax.tree.map(clear, state)


def push(window: jax.Array, item: jax.Array) -> jax.Array:
  """First in, first out: `window` (B, T, ...) with slot 0 dropped and `item` (B, ...) appended as slot T-1."""
  return jnp.concatenate([window[:, 1:], item[:, None].astype(window.dtype)], axis=1)
