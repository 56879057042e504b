"""streaming.FrameStream: every output is paired with its own frame, for any delay, with blank lanes, restarts
(another frame size) and the final flush; on the non-causal STF model, stepping two lanes of several sequences
gives each frame the logits the clip apply gives it."""
import functools

import jax
import numpy as np
import pytest

from ma_resnet.models import build
from ma_resnet.streaming import FrameStream
from test_stf import CLASSES, H, W, tiny_config


def delay_line(delay: int):
  """A model that returns, per lane, the frame fed `delay` steps before (zeros before the first): memory
  (lanes, delay + 1) of the last frames fed, oldest first."""
  def step(frames, memory, reset, due):
    del reset
    memory = np.concatenate([memory[:, 1:], frames[:, None]], axis=1)
    step.due.append(list(due))
    return {'value': memory[:, 0]}, memory
  step.due = []
  return step


@pytest.mark.parametrize('lanes', [1, 3])
@pytest.mark.parametrize('delay', [0, 1, 2, 3])
def test_every_output_comes_back_with_its_own_frame(delay, lanes):
  rng = np.random.default_rng(delay * 10 + lanes)
  step = delay_line(delay)
  stream = FrameStream(step, lanes=lanes, delay=delay)
  empty = lambda: np.zeros((lanes, delay + 1))
  assert stream.restart(empty()) == []
  fed, paired, next_id = [], [], 1
  for tick in range(12):
    if tick == 7:  # e.g. frames of another size: everything in flight comes out first
      paired += stream.restart(empty())
    tags = []
    for lane in range(lanes):
      if rng.random() < 0.25:
        tags.append(None)  # a blank lane: its output is dropped
      else:
        tags.append((lane, next_id))
        fed.append((lane, next_id))
        next_id += 1
    frames = np.array([0.0 if tag is None else float(tag[1]) for tag in tags])
    paired += stream.feed(frames, np.zeros((lanes,), bool), tags)
  paired += stream.end()
  assert sorted(p.tag for p in paired) == sorted(fed)  # every frame once, nothing else
  for p in paired:
    assert p.lane == p.tag[0] and p.output['value'] == p.tag[1]  # its own frame's output
  for lane in range(lanes):  # in the order the lane played them
    ids = [p.tag[1] for p in paired if p.lane == lane]
    assert ids == sorted(ids)
  returned = [tag for due in step.due for tag in due if tag is not None]
  assert sorted(returned) == sorted(fed)  # the step was told which frame each output belongs to
  assert stream.end() == []


def test_feeding_before_a_memory_and_bad_lanes_are_refused():
  stream = FrameStream(delay_line(1), lanes=2, delay=1)
  with pytest.raises(ValueError, match='before restart'):
    stream.feed(np.zeros(2), np.zeros(2, bool), [None, None])
  stream.restart(np.zeros((2, 2)))
  with pytest.raises(ValueError, match='1 tags for 2 lanes'):
    stream.feed(np.zeros(2), np.zeros(2, bool), [None])


def test_stf_streamed_in_two_lanes_equals_each_sequence_as_a_clip():
  """Lane 0 plays sequences A (3 frames) then B (2), lane 1 plays C (4) then nothing: STF returns each frame one
  step late, a new sequence's first frame ends the previous one and the end flushes the last frames."""
  model = build(tiny_config(), CLASSES)
  assert model.delay == 1
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 1, H, W, 3), np.float32))
  sequences = {name: np.asarray(jax.random.normal(jax.random.key(seed), (length, H, W, 3)))
               for name, seed, length in (('A', 1, 3), ('B', 2, 2), ('C', 3, 4))}
  step = jax.jit(functools.partial(model.apply, method=model.step))
  stream = FrameStream.of_model(
      model, lambda frames, memory, reset, due: (lambda out: (out.logits, out.memory))(
          step(variables, frames, memory, reset)), lanes=2)
  stream.restart(model.init_memory(2, (H, W)))
  plays = [[('A', i) for i in range(3)] + [('B', i) for i in range(2)], [('C', i) for i in range(4)]]
  paired = []
  for tick in range(5):
    tags = [play[tick] if tick < len(play) else None for play in plays]
    frames = np.stack([np.zeros((H, W, 3), np.float32) if tag is None else sequences[tag[0]][tag[1]]
                       for tag in tags])
    reset = np.array([tag is None or tag[1] == 0 for tag in tags])
    paired += stream.feed(frames, reset, tags)
  paired += stream.end()
  assert sorted(p.tag for p in paired) == sorted(plays[0] + plays[1])
  clips = {name: np.asarray(jax.jit(model.apply)(variables, frames[None]).logits[0])
           for name, frames in sequences.items()}
  for p in paired:
    want = clips[p.tag[0]][p.tag[1]]
    # The same frames in another batch: rounding only. A frame paired with another frame's output (or with the
    # wrong neighbours) differs by the size of the logits themselves.
    np.testing.assert_allclose(p.output, want, rtol=0, atol=1e-4 * max(1.0, float(np.abs(want).max())))
