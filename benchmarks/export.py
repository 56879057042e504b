"""Frames/s of the exported streaming step (`python -m ma_resnet.export`) beside the jitted `model.step`.

    python benchmarks/export.py                                  # the five systems of the synthetic configs
    python benchmarks/export.py --systems pcma stf --frames 20 --rounds 5
    python benchmarks/export.py --systems stf --batch 1        # a fixed batch instead of the symbolic one

Each system is the model of its synthetic config (`configs/synthetic.py` with model.temporal = plain, pcma,
tma; `configs/stf_synthetic.py:mar`; `configs/lernet_synthetic.py:tha`) at the config's frame size, with
He-normal random variables, batch 1. Three ways to run one frame, interleaved in rounds (medians printed):
  jit     the jitted `model.step` on a frame already normalised on the host (what evaluation and predict run)
  export  the exported step, serialized and deserialized (`jax.export`), `jax.jit(exp.call)` on the uint8
          frame (normalisation inside), labels and logits left on the device
  runner  `ma_resnet/exported.py`'s `Stream.step`: the same call, plus its checks and the labels and logits
          fetched as numpy arrays
All carry the memory from frame to frame. First, parity over a synthetic sequence of 8 frames whose second
half is a new sequence (a reset at frame 4; the flush of a non-causal model): the runner's logits against the
jitted `model.step`'s (largest difference / largest logit) and its class maps (pixels that differ). This
prints figures; it is not a test (tests/test_export.py checks parity on tiny models).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from ma_resnet import export, inference, models, train_config
from ma_resnet import data as data_lib
from timing import he_normal_variables  # benchmarks/timing.py (this folder is on sys.path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEMS = {
    'plain': ('synthetic.py', {'model.temporal': 'plain'}),
    'pcma': ('synthetic.py', {}),
    'tma': ('synthetic.py', {'model.temporal': 'tma'}),
    'stf': ('stf_synthetic.py:mar', {'model.stf.memory_init': ''}),
    'tha': ('lernet_synthetic.py:tha', {}),
}


def _system(name):
  path, overrides = SYSTEMS[name]
  config = train_config.load_config(os.path.join(REPO, 'configs', path), overrides)
  model = models.build(config.model, data_lib.num_classes(config.data))
  size = tuple(config.data.crop_size)
  return config, model, size


def _runners(name, folder, batch=None):
  """(description, {'jit': run, 'export': run}) where run(frames) -> seconds per frame."""
  import ma_resnet.exported as runner
  config, model, size = _system(name)
  variables = he_normal_variables(model, (1, 1) + size + (3,))
  settings = inference.input_settings(config)
  start = time.perf_counter()
  manifest = export.export_model(model, variables, folder, frame_size=size, model_size=size, mean=settings.mean,
                                 std=settings.std, normalize=settings.normalize,
                                 class_names=settings.class_names, palette=settings.palette, batch=batch)
  export_seconds = time.perf_counter() - start
  megabytes = sum(f['bytes'] for f in manifest['files'].values()) / 1e6
  frame = np.random.default_rng(0).integers(0, 256, size + (3,), np.uint8)

  step = jax.jit(lambda v, x, m: model.apply(v, x, m, method=model.step))
  prepared = inference.prepare_frame(frame, size, settings.mean, settings.std, settings.normalize)
  state = {'memory': model.init_memory(1, size)}

  def jit_call():
    out = step(variables, prepared, state['memory'])
    state['memory'] = out.memory
    return out.logits

  stream = runner.load(folder)
  def deserialized(name):
    with open(os.path.join(folder, export.FUNCTIONS[name]), 'rb') as f:
      return jax.jit(jax.export.deserialize(bytearray(f.read())).call)
  exported_step = deserialized('step')
  weights = jax.device_put(export.flat_weights(variables))
  device_frame = jax.device_put(frame[None])
  exported_state = {'state': deserialized('init')(device_frame), 'reset': jnp.zeros((1,), bool)}

  def export_call():
    out, exported_state['state'] = exported_step(weights, device_frame, exported_state['state'],
                                                 exported_state['reset'])
    return out['logits']
  runner_call = lambda: stream.step(frame).labels  # noqa: E731  (numpy: synchronised)

  def timed(call):
    jax.block_until_ready(call())  # compile, fill the memory
    jax.block_until_ready(call())

    def run(frames: int) -> float:
      start = time.perf_counter()
      for _ in range(frames):
        out = call()
      jax.block_until_ready(out)
      return (time.perf_counter() - start) / frames
    return run
  parity = _parity(model, variables, settings, size, runner.load(folder))
  what = f'{model.temporal.__class__.__name__} {size[0]}x{size[1]}, delay {model.delay}, {megabytes:.1f} MB, ' \
         f'exported in {export_seconds:.1f} s'
  return what, parity, {'jit': timed(jit_call), 'export': timed(export_call), 'runner': timed(runner_call)}


def _parity(model, variables, settings, size, stream, frames: int = 8, reset_at: int = 4):
  """(largest |logits difference| / largest |logit|, class-map pixels that differ) of `stream` against the
  jitted `model.step` over a synthetic sequence with a reset."""
  video, _ = data_lib.SyntheticVideo('val', num_sequences=1, frames_per_sequence=frames, height=size[0],
                                     width=size[1]).generate_sequence(0)
  step = jax.jit(lambda v, x, m, r: model.apply(v, x, m, r, method=model.step))
  memory, worst, differing = model.init_memory(1, size), 0.0, 0
  for i, frame in enumerate(list(video) + [None] * model.delay):
    last = frame is None
    x = inference.prepare_frame(video[-1] if last else frame, size, settings.mean, settings.std,
                                settings.normalize)
    expected = step(variables, x, memory, jnp.array([last or i == reset_at]))
    memory = expected.memory
    got = stream.flush() if last else stream.step(frame, reset=i == reset_at)
    if bool(expected.ready[0]):
      logits = np.asarray(expected.logits[0])
      worst = max(worst, float(np.abs(got.logits - logits).max() / np.abs(logits).max()))
      differing += int((got.labels != logits.argmax(-1)).sum())
  return worst, differing


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--systems', nargs='+', default=list(SYSTEMS), choices=list(SYSTEMS))
  parser.add_argument('--frames', type=int, default=10, help='frames per round and way')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--batch', type=int, default=None, help='export with this fixed batch (default: symbolic)')
  args = parser.parse_args()
  print(f'# frames/s, batch 1, streaming; jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} '
        f'CPUs, load average {os.getloadavg()[0]:.1f}; medians of {args.rounds} interleaved rounds of {args.frames} '
        f'frames; exported batch {args.batch or "symbolic"}')
  parity_lines = []
  print(f'{"system":<7} {"jit model.step":>15} {"exported step":>14} {"runner":>8} {"export / jit":>13} '
        f'{"runner / jit":>13}   model')
  with tempfile.TemporaryDirectory() as root:
    for name in args.systems:
      what, parity, runs = _runners(name, os.path.join(root, name), args.batch)
      parity_lines.append(f'{name:<7} {parity[0]:17.1e} {parity[1]:20d}')
      times = {way: [] for way in runs}
      for _ in range(args.rounds):
        for way, run in runs.items():
          times[way].append(run(args.frames))
      fps = {way: 1.0 / float(np.median(t)) for way, t in times.items()}
      print(f'{name:<7} {fps["jit"]:15.1f} {fps["export"]:14.1f} {fps["runner"]:8.1f} '
            f'{fps["export"] / fps["jit"]:13.2f} {fps["runner"] / fps["jit"]:13.2f}   {what}', flush=True)
  print(f'\n# parity of the runner with the jitted model.step, 8 frames with a reset at frame 4 (+ the flush)')
  print(f'{"system":<7} {"logits (relative)":>17} {"class-map pixels off":>20}')
  print('\n'.join(parity_lines))


if __name__ == '__main__':
  main()
