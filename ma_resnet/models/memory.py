"""The PCMA memory: an explicit pytree of stored keys and values, one `StageMemory` per PCMA stage.

Layout (NHWC, per stage, T = memory length):
  keys:   (B, T, h, w, Ck)   Ck = r*C/2
  values: (B, T, h, w, Cv)   Cv = r*C
  valid:  (B, T) bool        which slots hold a stored frame

Slots are kept oldest first: slot T-1 is the newest. `push` drops slot 0 and appends (first in, first out).
`reset` clears the samples flagged in a (B,) boolean, so one batch can cross sequence boundaries.
A memory is a plain pytree (dict of flax dataclasses): it can be carried through `jax.lax.scan`, sharded,
checkpointed or inspected like any other array tree.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

Memory = dict  # stage name -> StageMemory


@flax.struct.dataclass
class StageMemory:
  keys: jax.Array
  values: jax.Array
  valid: jax.Array

  @property
  def length(self) -> int:
    return self.valid.shape[1]


def empty_stage_memory(batch_size: int, length: int, size: tuple[int, int], key_channels: int,
                       value_channels: int, dtype=jnp.float32) -> StageMemory:
  h, w = size
  return StageMemory(
      keys=jnp.zeros((batch_size, length, h, w, key_channels), dtype),
      values=jnp.zeros((batch_size, length, h, w, value_channels), dtype),
      valid=jnp.zeros((batch_size, length), bool),
  )


def push(memory: StageMemory, key: jax.Array, value: jax.Array) -> StageMemory:
  """Stores this frame's `key` (B, h, w, Ck) and `value` (B, h, w, Cv) as the newest slot (FIFO)."""
  append = lambda stored, new: jnp.concatenate([stored[:, 1:], new[:, None].astype(stored.dtype)], axis=1)
  return StageMemory(
      keys=append(memory.keys, key),
      values=append(memory.values, value),
      valid=append(memory.valid, jnp.ones(key.shape[:1], bool)),
  )


def reset(memory: Memory, flags: jax.Array) -> Memory:
  """Clears every stage's memory for the samples where `flags` (B,) is True; others are untouched."""
  def clear(m: StageMemory) -> StageMemory:
    keep = ~flags
    return StageMemory(
        keys=m.keys * keep[:, None, None, None, None].astype(m.keys.dtype),
        values=m.values * keep[:, None, None, None, None].astype(m.values.dtype),
        valid=m.valid & keep[:, None],
    )
  return {name: clear(m) for name, m in memory.items()}
