"""What the benchmark scripts share: realistic random variables and a per-frame timer of a streamed `step`.

    from timing import he_normal_variables, streaming_runner      # benchmarks/ is on sys.path when a script runs
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np


def he_normal_variables(model, clip_shape):
  """`model`'s variables for clips `clip_shape` (B, T, H, W, 3) without running its init: He-normal kernels
  (seeded by their fan-in), unit batch-norm scales and variances, zeros elsewhere (finite, realistic maps)."""
  def value(path, leaf):
    name = getattr(path[-1], 'key', '')
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(np.random.default_rng(fan_in).normal(0, np.sqrt(2 / fan_in), leaf.shape), leaf.dtype)
    return jnp.ones(leaf.shape, leaf.dtype) if name in ('scale', 'var') else jnp.zeros(leaf.shape, leaf.dtype)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(tuple(clip_shape), jnp.float32))
  return jax.tree_util.tree_map_with_path(value, shapes)


def streaming_runner(model, variables, frame, memory, *, advance: bool = True, warmup: int = 3):
  """(compile seconds, run(frames) -> seconds per frame) of the jitted one-frame `model.step` on `frame`.

  advance: the memory is carried from call to call (streaming; `warmup` calls fill it first); False: every
  call starts from `memory` (the same kind of frame each time, e.g. THA's key or non-key frame).
  """
  start = time.perf_counter()
  step = jax.jit(functools.partial(model.apply, method=model.step)).lower(variables, frame, memory).compile()
  compile_seconds = time.perf_counter() - start
  state = {'memory': memory}

  def call():
    out = step(variables, frame, state['memory'])
    if advance:
      state['memory'] = out.memory
    return out

  for _ in range(warmup):
    jax.block_until_ready(call().logits)

  def run(frames: int) -> float:
    start = time.perf_counter()
    for _ in range(frames):
      out = call()
    jax.block_until_ready(out.logits)
    return (time.perf_counter() - start) / frames
  return compile_seconds, run
