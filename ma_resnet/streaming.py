"""Streaming frames through a one-frame step and pairing every output with its own frame, whatever the delay.

    stream = FrameStream.of_model(model, step, lanes=2)
    stream.restart(model.init_memory(2, (h, w)))               # a memory for frames of this size
    for lane, tag, output in stream.feed(frames, reset, tags):  # frames (2, h, w, 3), reset (2,), tags: 2 items
      ...                                                       # output: the step's outputs for that tag's frame
    for lane, tag, output in stream.end(): ...                  # the frames still in flight

A model's `step(frames, memory, reset)` takes one frame per *lane* (a batch entry that carries its own memory:
a video played side by side with others, or one crop of a frame) and returns, per lane, the output of the frame
fed `delay` steps before (`model.delay`: 0 for causal models; STF needs frame t+1 for frame t, so 1). Per lane
the outputs come back in the order the frames went in, so a first-in-first-out queue of `delay` entries pairs
each output with the frame it belongs to. This module is the only place outside the model that knows this:
evaluation, `inference.predict_video` and the MAR memory all stream through `FrameStream`.

- tags: anything the caller wants back with the output (a dataset item, a frame index); None marks a blank frame
  (a lane with nothing to play), whose output is dropped.
- A new sequence: the frame's `reset` is True. A non-causal model then emits the previous sequence's last frame
  with its edge rule (the missing next frame) before it restarts, so the pairing needs nothing more.
- `end()` feeds `delay` blank frames with `reset` set (a flush: every lane's last frames come back, each with its
  edge rule); afterwards the next frame of a lane must start a sequence. `restart(memory)` ends the frames in
  flight and starts again from `memory` (empty, e.g. for frames of another size).

The step is any callable `step(frames, memory, reset, due) -> (outputs, memory)`: `due` lists, per lane, the
tag whose output this step returns (None: none), for callers whose step depends on it (evaluation resizes the
logits to the size of the labels due); `outputs` is a pytree whose leaves have the lanes first (numpy or jax
arrays). Paired outputs are that tree at one lane (each leaf's row). An exported model runs the same way: wrap
its one-frame call as `step` and give its delay.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np


class Paired(NamedTuple):
  """One frame's output: the lane it played in, the tag it was fed with, the step's outputs at that lane."""
  lane: int
  tag: Any
  output: Any


class FrameStream:
  """Feeds one frame per lane to `step` and hands back every output with the tag of its own frame.

  Args:
    step: `step(frames (lanes, ...), memory, reset (lanes,) bool, due) -> (outputs, memory)` (module docstring).
    lanes: batch entries, each with its own memory.
    delay: steps between feeding a frame and getting its output (`model.delay`; `of_model` reads it).
  """

  def __init__(self, step: Callable, *, lanes: int = 1, delay: int = 0):
    if delay < 0:
      raise ValueError(f'delay must be >= 0, got {delay}')
    self._step, self.lanes, self.delay = step, int(lanes), int(delay)
    self._in_flight = [collections.deque() for _ in range(self.lanes)]  # per lane: tags fed, oldest first
    self._memory = None
    self._frames_like = None  # (shape, dtype) of the last frames fed: a flush feeds zeros of it

  @classmethod
  def of_model(cls, model, step: Callable, *, lanes: int = 1) -> 'FrameStream':
    """A stream for `model`'s one-frame step (its `delay`: 0 unless the model is non-causal)."""
    return cls(step, lanes=lanes, delay=getattr(model, 'delay', 0))

  @property
  def memory(self):
    return self._memory

  def restart(self, memory) -> list[Paired]:
    """Ends the frames in flight (`end`), then streams on from `memory` (e.g. an empty one of another size)."""
    done = self.end()
    for queue in self._in_flight:
      queue.clear()
    self._memory = memory
    return done

  def feed(self, frames, reset, tags: Sequence[Any]) -> list[Paired]:
    """One step: `frames` (lanes, ...) with `reset` (lanes,) bool and one tag per lane (None: a blank frame).
    Returns the outputs that came back, each with its frame's tag (lanes in order; blanks left out)."""
    if self._memory is None:
      raise ValueError('FrameStream.feed before restart(memory): the stream has no memory yet')
    if len(tags) != self.lanes:
      raise ValueError(f'{len(tags)} tags for {self.lanes} lanes')
    due = []
    for queue, tag in zip(self._in_flight, tags):
      queue.append(tag)
      due.append(queue.popleft() if len(queue) > self.delay else None)
    self._frames_like = (frames.shape, frames.dtype)
    outputs, self._memory = self._step(frames, self._memory, reset, due)
    return [Paired(lane, tag, jax.tree.map(lambda a, lane=lane: a[lane], outputs))
            for lane, tag in enumerate(due) if tag is not None]

  def end(self) -> list[Paired]:
    """The outputs of every frame still in flight: `delay` steps of blank frames that start a sequence."""
    done = []
    while any(tag is not None for queue in self._in_flight for tag in queue):
      done += self.feed(np.zeros(*self._frames_like), np.ones((self.lanes,), bool), [None] * self.lanes)
    return done
