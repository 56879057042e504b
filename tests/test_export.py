"""Exported streaming steps (`python -m ma_resnet.export`) and their standalone runner (`ma_resnet/exported.py`).

Nothing is trained: each of the five systems (plain, PCMA, TMA, STF + MAR's STF, LERNet + THA) is a tiny config
with random variables, exported for 40x48 frames seen at 32x32 (the resize runs inside the export). The runner
is copied alone into a temporary folder and run in a subprocess whose PYTHONPATH holds only it: it must import
neither this package nor flax, grain, orbax. Its outputs over a synthetic sequence with a reset are compared with
the jitted `model.step` fed the way `predict.py` feeds it (Pillow resize, numpy normalisation), and its label
folders with `predict.py`'s.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from PIL import Image

pytest.importorskip('imageio_ffmpeg', reason='the video round trip needs imageio-ffmpeg')

from ma_resnet import export, exported, inference, models, train_config, video_io  # noqa: E402
from ma_resnet.runs import Run, load_run  # noqa: E402
from ma_resnet import data as data_lib  # noqa: E402
from ma_resnet.data import SyntheticVideo  # noqa: E402
from test_predict import _write_random_run  # noqa: E402  (a train.py-style run folder with random variables)
from test_training_support import CACHE_DIR, REPO  # noqa: E402

SIZE, FRAME = (32, 32), (40, 48)   # the model's input, the frames the export takes
NUM_FRAMES, RESET_AT = 7, 4        # a second sequence starts at frame 4
TINY = {'data.synthetic.height': 32, 'data.synthetic.width': 32, 'data.crop_size': (32, 32)}
SYSTEMS = {  # name -> (config, overrides)
    'plain': ('test.py', {'model.temporal': 'plain'}),
    'pcma': ('test.py', {}),
    'tma': ('synthetic.py', {**TINY, 'model.temporal': 'tma', 'model.head_options.channels': 8,
                             'model.tma.key_channels': 8, 'model.tma.value_channels': 8, 'model.tma.channels': 16}),
    'stf': ('stf_synthetic.py:stf', {**TINY, 'model.pspnet.channels': 16, 'model.stf.ffn_channels': 8,
                                     'model.stf.block_size': (2, 2), 'model.stf.embedding_size': (4, 4),
                                     'model.frozen': ()}),
    'tha': ('lernet_synthetic.py:tha', {**TINY, 'model.tha.key_interval': 3, 'model.lernet.dilations': (1, 2)}),
}
# float32 logits of the export vs the jitted step: the same computation compiled as another program (the
# shape-polymorphic one); measured at most 7e-6 of the largest logit (STF), exactly equal for the others.
LOGITS_RTOL = 1e-5


def _config(name):
  path, overrides = SYSTEMS[name]
  return train_config.load_config(os.path.join(REPO, 'configs', path), overrides)


def _random_run(name) -> Run:
  """A `Run` of the tiny system with random variables (He-normal kernels, batch-norm statistics
  away from the identity), in memory."""
  import jax
  import jax.numpy as jnp
  config = _config(name)
  model = models.build(config.model, data_lib.num_classes(config.data))
  abstract = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 2, *SIZE, 3), jnp.float32))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    if leaf.ndim >= 2:
      return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))).astype(leaf.dtype)
    if getattr(path[-1], 'key', '') in ('scale', 'var'):
      return (1.0 + 0.1 * rng.random(leaf.shape)).astype(leaf.dtype)
    return (0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
  variables = jax.tree_util.tree_map_with_path(fill, {k: abstract[k] for k in ('params', 'batch_stats')
                                                      if k in abstract})
  return Run(config=config, model=model, variables=variables, step=0, checkpoint_path='(random)',
                         config_source='test', run_dir=None, metrics=None)


def _reference(run, frames, resets):
  """The jitted `model.step` on frames prepared as predict.py prepares them, logits resized to the frame size:
  per output (logits, ready, enhanced); a non-causal model's flush last."""
  import jax
  import jax.numpy as jnp
  from ma_resnet.models.ops import resize_bilinear
  model, settings = run.model, inference.input_settings(run.config)

  @jax.jit
  def step(variables, x, memory, reset):
    out = model.apply(variables, x, memory, reset, method=model.step)
    return resize_bilinear(out.logits, FRAME), out.memory, out.ready, out.enhanced

  memory, outputs, x = model.init_memory(1, SIZE), [], None
  for frame, reset in zip(frames, resets):
    x = inference.prepare_frame(frame, SIZE, settings.mean, settings.std, settings.normalize)
    logits, memory, ready, enhanced = step(run.variables, x, memory, jnp.array([reset]))
    outputs.append((np.asarray(logits[0]), bool(ready[0]), bool(enhanced[0])))
  if model.delay:  # flush: a step whose reset ends the stream
    logits, _, ready, enhanced = step(run.variables, x, memory, jnp.ones((1,), bool))
    outputs.append((np.asarray(logits[0]), bool(ready[0]), bool(enhanced[0])))
  return outputs


DRIVER = textwrap.dedent('''
    import json, sys
    import numpy as np
    import exported

    folders, video, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    data = np.load(f'{out}/frames.npz', allow_pickle=False)
    frames, resets = data['frames'], data['resets']
    results = {}
    for name, folder in folders.items():
      stream = exported.load(folder)
      outputs = [stream.step(f, reset=bool(r)) for f, r in zip(frames, resets)]
      last = stream.flush()
      outputs += [last] if last is not None else []
      for field in exported.Output._fields:
        results[f'{name}/{field}'] = np.stack([getattr(o, field) for o in outputs])
      if name == 'pcma':  # two streams side by side (the batch is symbolic): lane 0 is the stream above
        batch = [stream.step(np.stack([f, g])) for f, g in zip(frames, frames[::-1])]
        results['pcma_batch/logits'] = np.stack([o.logits for o in batch])
    np.savez(f'{out}/results.npz', **results)
    codes = {name: exported.main([folder, f'--video={video}', f'--out={out}/{name}.mkv', '--lossless', '--alpha=1',
                                  f'--labels-dir={out}/{name}_labels', '--noprogress'])
             for name, folder in folders.items() if name in ('pcma', 'stf')}
    roots = sorted({m.split('.')[0] for m in sys.modules})
    with open(f'{out}/driver.json', 'w') as f:
      json.dump({'codes': codes, 'module_roots': roots, 'exported_file': exported.__file__}, f)
''')


def _isolated_env() -> dict:
  """The environment of a deployment: no PYTHONPATH to this repository (only the copied runner's folder)."""
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return env


def _copied_runner(root: str) -> str:
  folder = os.path.join(root, 'deploy')
  os.makedirs(folder, exist_ok=True)
  shutil.copy(exported.__file__, os.path.join(folder, 'exported.py'))
  return folder


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('export'))
  frames, _ = SyntheticVideo('val', num_sequences=1, frames_per_sequence=NUM_FRAMES, height=FRAME[0], width=FRAME[1],
                             reveal_period=2).generate_sequence(0)
  resets = np.arange(NUM_FRAMES) == RESET_AT
  video = video_io.write_video(os.path.join(root, 'in.mkv'), frames, fps=6, lossless=True)
  # PCMA goes through the command line, from a run folder; the others through `export_run(run=...)`.
  runs, folders = {}, {}
  workdir = os.path.join(root, 'pcma_run')
  _write_random_run(workdir, _config('pcma'))
  folders['pcma'] = os.path.join(root, 'exports', 'pcma')
  command = [sys.executable, '-m', 'ma_resnet.export', f'--workdir={workdir}', '--size=32,32', '--frame-size=40,48',
             f'--out={folders["pcma"]}']
  env = dict(_isolated_env(), PYTHONPATH=REPO)
  cli = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert cli.returncode == 0, cli.stderr[-3000:]
  runs['pcma'] = load_run(workdir)
  for name in SYSTEMS:
    if name != 'pcma':
      runs[name] = _random_run(name)
      folders[name] = os.path.join(root, 'exports', name)
      export.export_run(None, folders[name], size=SIZE, frame_size=FRAME, run=runs[name])
  deploy = _copied_runner(root)
  out = os.path.join(root, 'driver_out')
  os.makedirs(out)
  np.savez(os.path.join(out, 'frames.npz'), frames=frames, resets=resets)
  with open(os.path.join(deploy, 'driver.py'), 'w') as f:
    f.write(DRIVER)
  driver = subprocess.run([sys.executable, 'driver.py', json.dumps(folders), video, out], cwd=deploy,
                          env=_isolated_env(), capture_output=True, text=True, timeout=600)
  assert driver.returncode == 0, driver.stderr[-4000:]
  with open(os.path.join(out, 'driver.json')) as f:
    report = json.load(f)
  with np.load(os.path.join(out, 'results.npz'), allow_pickle=False) as results:
    results = dict(results)
  return types.SimpleNamespace(root=root, frames=frames, resets=resets, video=video, runs=runs, folders=folders,
                               cli=cli, deploy=deploy, out=out, report=report, results=results)


def test_the_runner_imports_neither_this_package_nor_flax_grain_orbax(setup):
  roots = set(setup.report['module_roots'])
  assert {'jax', 'numpy', 'exported'} <= roots
  assert not roots & {'ma_resnet', 'flax', 'grain', 'orbax', 'optax', 'ml_collections', 'PIL'}, sorted(roots)
  assert setup.report['exported_file'] == os.path.join(setup.deploy, 'exported.py')


@pytest.mark.parametrize('name', list(SYSTEMS))
def test_the_exported_step_equals_the_jitted_step(setup, name):
  """Over a sequence with a reset (and the flush of a non-causal model): logits within LOGITS_RTOL of the largest,
  identical class maps and flags."""
  expected = _reference(setup.runs[name], setup.frames, setup.resets)
  got = {field: setup.results[f'{name}/{field}'] for field in exported.Output._fields}
  delay = setup.runs[name].model.delay
  assert len(got['logits']) == len(expected) == NUM_FRAMES + delay
  for i, (logits, ready, enhanced) in enumerate(expected):
    scale = np.abs(logits).max()
    np.testing.assert_allclose(got['logits'][i], logits, rtol=0, atol=LOGITS_RTOL * scale, err_msg=f'output {i}')
    np.testing.assert_array_equal(got['labels'][i], logits.argmax(-1), err_msg=f'output {i}')
    assert (bool(got['ready'][i]), bool(got['enhanced'][i])) == (ready, enhanced), f'output {i}'
  if delay:  # the first frame has no output; the reset returns the first sequence's last frame
    assert got['ready'].tolist() == [False] + [True] * NUM_FRAMES
  else:
    assert got['ready'].all()
  if name in ('pcma', 'tma', 'tha'):  # the memory is used, and emptied by the reset
    assert got['enhanced'][1] and not got['enhanced'][0] and not got['enhanced'][RESET_AT]


def test_a_batch_of_streams_is_independent(setup):
  single, batch = setup.results['pcma/logits'], setup.results['pcma_batch/logits']
  assert batch.shape == (NUM_FRAMES, 2) + single.shape[1:]
  scale = np.abs(single).max()
  # lane 0 sees the frames without the reset at RESET_AT: equal up to it
  np.testing.assert_allclose(batch[:RESET_AT, 0], single[:RESET_AT], rtol=0, atol=LOGITS_RTOL * scale)
  assert not np.allclose(batch[:, 1], batch[:, 0])


@pytest.mark.parametrize('name', ['pcma', 'stf'])
def test_label_folders_equal_predict(setup, name, tmp_path):
  """`python -m ma_resnet.exported` writes what predict.py writes (same names, same PNG pixels and palette, the
  same lossless overlay video), for a causal (PCMA) and a non-causal (STF, delay 1) model."""
  assert setup.report['codes'][name] == 0
  labels = str(tmp_path / 'labels')
  inference.predict_file(setup.runs[name], setup.video, str(tmp_path / 'out.mkv'), labels_dir=labels, size=SIZE,
                         alpha=1.0, lossless=True, progress=False)
  ours = os.path.join(setup.out, f'{name}_labels')
  names = sorted(os.listdir(labels))
  assert names == sorted(os.listdir(ours)) == [f'{i:06d}.png' for i in range(NUM_FRAMES)]
  for n in names:
    with Image.open(os.path.join(labels, n)) as a, Image.open(os.path.join(ours, n)) as b:
      assert a.mode == b.mode == 'P' and a.getpalette() == b.getpalette(), n
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=n)
  np.testing.assert_array_equal(video_io.read_video(os.path.join(setup.out, f'{name}.mkv')),
                                video_io.read_video(str(tmp_path / 'out.mkv')))


def test_the_manifest_describes_the_export(setup):
  folder = setup.folders['stf']
  manifest = exported.read_manifest(folder)
  assert manifest['frame'] == {'height': 40, 'width': 48, 'channels': 'RGB', 'dtype': 'uint8'}
  assert manifest['model_input']['size'] == [32, 32] and manifest['model_input']['resize'].startswith('bilinear')
  settings = inference.input_settings(setup.runs['stf'].config)
  assert manifest['model_input']['mean'] == list(settings.mean)
  assert manifest['classes']['names'] == list(settings.class_names)
  assert manifest['classes']['palette'] == settings.palette[:len(settings.class_names)].tolist()
  assert (manifest['delay'], manifest['frame_kinds']) == (1, ['sequence edge', 'both neighbours'])
  assert manifest['state'] == {'maps': {'shape': ['b', 2, 4, 4, 16], 'dtype': 'float32'},
                               'seen': {'shape': ['b'], 'dtype': 'int32'}}
  assert (manifest['batch'], manifest['platforms'], manifest['dtype']) == ('b', ['cpu'], 'float32')
  assert manifest['package']['version'] == __import__('ma_resnet').__version__
  assert manifest['run']['config']['model']['temporal'] == 'stf'
  assert sorted(manifest['files']) == ['flush.jaxexport', 'init.jaxexport', 'step.jaxexport', 'weights.npz']
  assert sorted(os.listdir(setup.folders['plain'])) == ['init.jaxexport', 'manifest.json', 'step.jaxexport',
                                                       'weights.npz']  # a causal model has no flush
  cli_manifest = exported.read_manifest(setup.folders['pcma'])
  assert cli_manifest['run']['step'] == 0 and cli_manifest['frame_kinds'] == ['warm-up', 'with memory']
  assert 'wrote ' in setup.cli.stdout and 'delay 0' in setup.cli.stdout


def test_pillow_resize_is_reproduced_exactly():
  import jax
  rng = np.random.default_rng(3)
  for (h, w), size in [((40, 48), (32, 32)), ((32, 32), (45, 61)), ((100, 37), (13, 90)), ((9, 50), (3, 49)),
                       ((61, 45), (61, 20))]:  # (100, 37) -> (13, 90): Pillow >= 13 resizes the height first
    frames = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    got = np.asarray(jax.jit(lambda f, s=size: export.resize_uint8(f, s))(frames))
    want = np.stack([np.asarray(Image.fromarray(f).resize(size[::-1], Image.BILINEAR)) for f in frames])
    np.testing.assert_array_equal(got, want, err_msg=f'{(h, w)} -> {size}')


# -- bad input ---------------------------------------------------------------------------------------------------

def _damaged_copy(setup, tmp_path, damage: str) -> str:
  folder = str(tmp_path / damage.replace(' ', '_'))
  shutil.copytree(setup.folders['plain'], folder)
  if damage == 'truncated weights':
    path = os.path.join(folder, export.WEIGHTS)
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)
  elif damage == 'altered step':
    path = os.path.join(folder, export.FUNCTIONS['step'])
    data = bytearray(open(path, 'rb').read())
    data[len(data) // 2] ^= 1
    open(path, 'wb').write(bytes(data))
  elif damage == 'missing init':
    os.remove(os.path.join(folder, export.FUNCTIONS['init']))
  elif damage == 'not an export':
    os.remove(os.path.join(folder, export.MANIFEST))
  return folder


@pytest.mark.parametrize('damage, message', [
    ('truncated weights', 'weights.npz does not match the manifest'),
    ('altered step', 'step.jaxexport does not match the manifest'),
    ('missing init', 'init.jaxexport is missing'),
    ('not an export', 'is not an export: it has no manifest.json'),
])
def test_a_damaged_folder_is_refused(setup, tmp_path, damage, message):
  folder = _damaged_copy(setup, tmp_path, damage)
  with pytest.raises(exported.ExportError, match=message):
    exported.load(folder)


def test_the_runner_command_line_refuses_a_damaged_folder_in_one_line(setup, tmp_path):
  folder = _damaged_copy(setup, tmp_path, 'altered step')
  out = tmp_path / 'out.mp4'
  result = subprocess.run([sys.executable, 'exported.py', folder, f'--video={setup.video}', f'--out={out}'],
                          cwd=setup.deploy, env=_isolated_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == exported.EXIT_EXPORT, result.stderr
  assert result.stderr.startswith('error: ') and len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert 'step.jaxexport does not match the manifest' in result.stderr and not out.exists()


def test_a_frame_of_another_size_or_dtype_is_one_error_naming_both(setup):
  stream = exported.load(setup.folders['plain'])
  with pytest.raises(exported.InputError, match=r'the frame is uint8 \(32, 32, 3\); this export takes uint8 '
                                                r'\(40, 48, 3\)'):
    stream.step(np.zeros((32, 32, 3), np.uint8))
  with pytest.raises(exported.InputError, match=r'the frame is float32 \(40, 48, 3\); this export takes uint8'):
    stream.step(np.zeros((40, 48, 3), np.float32))


def test_a_video_of_another_size_is_refused_and_nothing_written(setup, tmp_path):
  video = video_io.write_video(str(tmp_path / 'small.mkv'), setup.frames[:2, :32, :32], fps=6, lossless=True)
  stream = exported.load(setup.folders['plain'])
  out, labels = tmp_path / 'out.mp4', tmp_path / 'labels'
  with pytest.raises(exported.InputError, match=r'has 32x32 \(HxW\) frames; this export takes 40x48'):
    exported.predict(stream, video, str(out), labels_dir=str(labels))
  assert sorted(os.listdir(tmp_path)) == ['small.mkv']


def test_a_platform_the_export_was_not_lowered_for_is_named(setup, tmp_path):
  folder = str(tmp_path / 'tpu_only')
  export.export_run(None, folder, size=SIZE, frame_size=FRAME, platforms=('tpu',), run=setup.runs['plain'])
  assert exported.read_manifest(folder)['platforms'] == ['tpu']
  with pytest.raises(exported.ExportError, match='was lowered for tpu, not for cpu'):
    exported.load(folder)
  with pytest.raises(export.ExportError, match='--platforms must be some of cpu,cuda,rocm,tpu, got gpu'):
    export.export_run(None, str(tmp_path / 'gpu'), size=SIZE, platforms=('gpu',), run=setup.runs['plain'])


def test_an_existing_out_is_never_overwritten(setup, tmp_path):
  out = tmp_path / 'taken'
  out.mkdir()
  (out / 'keep.txt').write_text('previous')
  with pytest.raises(export.ExportError, match='already exists and is not empty'):
    export.export_run(None, str(out), size=SIZE, run=setup.runs['plain'])
  result = subprocess.run([sys.executable, '-m', 'ma_resnet.export', f'--workdir={tmp_path}', '--size=32,32',
                           f'--out={out}'], cwd=REPO, env=dict(_isolated_env(), PYTHONPATH=REPO),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == export.EXIT_USAGE and 'already exists and is not empty' in result.stderr
  assert result.stderr.startswith('error: ') and 'Traceback' not in result.stderr
  assert sorted(os.listdir(out)) == ['keep.txt'] and (out / 'keep.txt').read_text() == 'previous'
  assert [n for n in os.listdir(tmp_path) if '.partial-' in n] == []
