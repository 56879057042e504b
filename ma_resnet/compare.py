r"""Runs side by side: `python -m ma_resnet.compare RUN_DIR [RUN_DIR ...]`.

    python -m ma_resnet.compare workdirs/synthetic_ma workdirs/synthetic_tma workdirs/synthetic_plain --out=cmp
    python -m ma_resnet.compare runs/* --group --no-speed          # one table per dataset / split / protocol

One table of the runs (train.py workdirs): system (model.temporal + backbone), backbone, head, parameters,
GFLOPs per frame, mIoU, pixel accuracy, the video metrics where the report has them (mVC8, mVC16, ...,
temporal consistency; see `ma_resnet.video_metrics`), frames/s of the streaming step measured now, and the
checkpoint step; then the per-class IoU (classes as rows). Printed as Markdown; `--out DIR` writes
`compare.md`, `compare.csv` (one row per run, per-class IoU as `iou/<class>` columns) and `compare.png`
(mIoU against frames/s, one labelled point per run; against GFLOPs with --no-speed).

Where each number comes from:
  accuracy      the run's `eval_<split>.json` (eval.py), else the final validation in `train_result.json` when it
                is of that split; split: --split, else each run's `eval_split`
  model         `runs.load_run` at the evaluated checkpoint step (the latest when that one is gone)
  parameters    every entry of the variables' 'params' (batch-norm statistics not counted)
  GFLOPs/frame  XLA's cost analysis of the compiled one-frame `model.step` (batch 1) at the evaluation input size
                (`data.eval_size`, else the first frame of the split, else --size). XLA counts a multiply-add as 2
                FLOPs; of a conditional it counts the costlier branch (THA: the key frame, the full network)
  frames/s      the same compiled step, memory carried from frame to frame, on random frames: --rounds rounds of
                --frames frames per run, the runs interleaved within each round (the order rotated), after 2
                warm-up frames; the median round. On this machine, in this invocation only: compare figures of
                one table, not across tables

Runs are comparable when they were scored on the same data the same way: dataset, split, frame list, input size,
label size mode, classes, frames and labelled frames, and the evaluation protocol the report records (whole frames
or sliding windows with their crop and stride, flip, scales: `ma_resnet.protocols`; a report from before protocols
were recorded counts as whole frames). Runs that differ are refused (exit 2, each group listed), or with
--group shown as one table per group. A run without evaluation results: one line naming it and the command
that makes them (exit 3). Exit 4: a run folder or checkpoint that cannot be read.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import importlib.util
import io
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Sequence

from ma_resnet import cli

EXIT_USAGE, EXIT_DATA, EXIT_CHECKPOINT = cli.EXIT_USAGE, cli.EXIT_DATA, cli.EXIT_CHECKPOINT
WARMUP_FRAMES = 2


class CompareError(Exception):
  """A run that cannot be compared; `code` is the exit status."""

  def __init__(self, message: str, code: int):
    super().__init__(message)
    self.code = code


@dataclasses.dataclass
class RunResult:
  """One run: what its reports say, and (after `measure`) its model figures."""
  name: str
  workdir: str
  config: Any                      # ml_collections.ConfigDict of config.json
  split: str
  source: str                      # the file the accuracy comes from
  results: dict                    # miou, per_class_iou, class_names, video_metrics, ...
  protocol: dict                   # what must match between compared runs
  step: int | None
  parameters: int | None = None
  gflops: float | None = None
  frames_per_second: float | None = None

  @property
  def system(self) -> str:
    return f'{self.config.model.temporal} + {self.backbone}'

  @property
  def backbone(self) -> str:
    model = self.config.model
    backbone = model.get('backbone', 'resnet')
    return f'resnet{model.depth}' if backbone == 'resnet' else str(backbone)

  @property
  def video(self) -> dict:
    return self.results.get('video_metrics') or {}


def _input_size(config) -> list[int] | str:
  size = config.data.get('eval_size')
  return [int(s) for s in size] if size else 'native'


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise CompareError(f'cannot read {path}: {e}', EXIT_DATA) from None


def read_run(workdir: str, split: str | None = None) -> RunResult:
  """The evaluation results of the run in `workdir` (see the module docstring); CompareError when missing."""
  import ml_collections
  workdir = os.path.abspath(workdir)
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.isdir(workdir):
    raise CompareError(f'{workdir}: no such run folder', EXIT_CHECKPOINT)
  if not os.path.isfile(config_path):
    raise CompareError(f'{workdir} is not a train.py run folder (no config.json)', EXIT_CHECKPOINT)
  config = ml_collections.ConfigDict(_read_json(config_path))
  split = split or config.get('eval_split', 'val')
  report_path = os.path.join(workdir, f'eval_{split}.json')
  result_path = os.path.join(workdir, 'train_result.json')
  results = source = step = None
  if os.path.isfile(report_path):
    results, source = _read_json(report_path), report_path
    step = results.get('checkpoint', {}).get('step')
    protocol = {k: results.get(k) for k in ('dataset', 'input_size', 'labels')}
  elif os.path.isfile(result_path):
    stored = _read_json(result_path)
    if (stored.get('eval_metrics') or {}).get('split') == split:
      results, source, step = stored['eval_metrics'], result_path, stored.get('step')
      size = _input_size(config)
      protocol = {'dataset': config.data.name, 'input_size': size,
                  'labels': 'native' if size == 'native' or config.data.get('eval_native_labels')
                            else 'resized to input_size'}
  if results is None:
    raise CompareError(f'{workdir} has no evaluation results for split {split!r} (eval_{split}.json): make them '
                       f'with python eval.py --workdir={workdir} --split={split}', EXIT_DATA)
  missing = [k for k in ('miou', 'class_names', 'frames', 'labelled_frames') if k not in results]
  if missing or None in protocol.values():
    missing += [k for k, v in protocol.items() if v is None]
    raise CompareError(f'{source} lacks {", ".join(missing)}: make it again with python eval.py '
                       f'--workdir={workdir} --split={split}', EXIT_DATA)
  from ma_resnet import protocols
  scoring = protocols.protocol_of_report(results)
  protocol.update(split=split, classes=tuple(results['class_names']), frames=results['frames'],
                  labelled_frames=results['labelled_frames'], scoring=protocols.describe(scoring),
                  list=scoring.get('list', 'all'))
  return RunResult(name=os.path.basename(workdir), workdir=workdir, config=config, split=split, source=source,
                   results=results, protocol=protocol, step=step)


def describe_protocol(protocol: dict) -> str:
  size = protocol['input_size']
  size = 'native size' if size == 'native' else f'{size[0]}x{size[1]}'
  frame_list = '' if protocol.get('list', 'all') == 'all' else f", {protocol['list']} frame list"
  return (f"{protocol['dataset']} {protocol['split']}, input {size}, labels {protocol['labels']}, "
          f"{len(protocol['classes'])} classes, {protocol['frames']} frames ({protocol['labelled_frames']} labelled), "
          f"{protocol.get('scoring', 'whole frames')}{frame_list}")


def group_runs(runs: Sequence[RunResult]) -> list[list[RunResult]]:
  """Runs with the same protocol, in the order first given."""
  groups: dict[str, list[RunResult]] = {}
  for run in runs:
    groups.setdefault(json.dumps(run.protocol, sort_keys=True, default=list), []).append(run)
  return list(groups.values())


def _unique_names(runs: Sequence[RunResult]) -> None:
  names = [r.name for r in runs]
  if len(set(names)) < len(names):
    common = os.path.commonpath([r.workdir for r in runs])
    for run in runs:
      run.name = os.path.relpath(run.workdir, common) if run.workdir != common else run.name


# ---------------------------------------------------------------------------------------------------------
# Model figures: parameters, GFLOPs, frames/s.


def _frame_size(run: RunResult, size: tuple[int, int] | None) -> tuple[int, int]:
  if size is not None:
    return tuple(size)
  if run.protocol['input_size'] != 'native':
    return tuple(run.protocol['input_size'])
  from ma_resnet import data as data_lib
  try:
    return tuple(data_lib.make_sequences(run.config.data, run.split).read_frame(0, 0).image.shape[:2])
  except (data_lib.DataError, OSError) as e:
    raise CompareError(f'{run.workdir} was evaluated at the native frame size and its data cannot be read to '
                       f'know it ({e}): give the size with --size=H,W', EXIT_DATA) from None


def _load(run: RunResult):
  """The run's `runs.Run` at its evaluated step (the latest when that one is gone), on one device."""
  import jax
  from ma_resnet import checkpoints, parallel, runs
  mesh = parallel.make_mesh(jax.local_devices()[:1])
  try:
    try:
      return runs.load_run(run.workdir, run.step if run.step is not None else 'best', mesh=mesh)
    except checkpoints.CheckpointError:
      if run.step is None:
        raise
      return runs.load_run(run.workdir, 'latest', mesh=mesh)
  except checkpoints.CheckpointError as e:
    raise CompareError(str(e), EXIT_CHECKPOINT) from None


def measure(runs: Sequence[RunResult], *, size: tuple[int, int] | None = None, speed: bool = True,
            rounds: int = 3, frames: int = 8) -> None:
  """Fills in parameters, GFLOPs per frame and (speed) frames/s of every run; see the module docstring."""
  import jax
  import numpy as np
  timers = []
  for run in runs:
    loaded = _load(run)
    model, variables = loaded.model, loaded.variables
    run.parameters = int(sum(np.prod(x.shape) for x in jax.tree.leaves(variables['params'])))
    frame_size = _frame_size(run, size)
    memory = model.init_memory(1, frame_size)
    frame = jax.random.normal(jax.random.key(0), (1,) + frame_size + (3,), np.float32)
    compiled = jax.jit(functools.partial(model.apply, method=model.step)).lower(variables, frame, memory).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    run.gflops = float(cost['flops']) / 1e9 if cost and 'flops' in cost else None
    if speed:
      timers.append(_StreamTimer(compiled, variables, frame, memory))
  if not speed:
    return
  times = [[] for _ in runs]
  for r in range(rounds):
    for k in range(len(runs)):
      i = (k + r) % len(runs)  # rotate the order from round to round
      times[i].append(timers[i].run(frames))
  for run, seconds in zip(runs, times):
    run.frames_per_second = frames / statistics.median(seconds)


class _StreamTimer:
  """A compiled one-frame step whose memory is carried from call to call."""

  def __init__(self, compiled, variables, frame, memory):
    self.compiled, self.variables, self.frame, self.memory = compiled, variables, frame, memory
    self.run(WARMUP_FRAMES)

  def run(self, frames: int) -> float:
    import jax
    start = time.perf_counter()
    for _ in range(frames):
      out = self.compiled(self.variables, self.frame, self.memory)
      self.memory = out.memory
    jax.block_until_ready(out.logits)
    return time.perf_counter() - start


def hardware() -> str:
  """The machine in words: the accelerator's kind, or e.g. '2-core x86_64 CPU'."""
  import platform
  import jax
  device = jax.devices()[0]
  if device.platform == 'cpu':
    return f'{os.cpu_count()}-core {platform.machine()} CPU'
  return f'{device.device_kind} ({device.platform})'


# ---------------------------------------------------------------------------------------------------------
# Tables and plot.


def _video_keys(runs: Sequence[RunResult]) -> list[str]:
  keys = []
  for run in runs:
    for key, value in run.video.items():
      if (key.startswith('mvc') or key == 'consistency') and isinstance(value, (int, float)) and key not in keys:
        keys.append(key)
  return sorted(keys, key=lambda k: (k == 'consistency', '_' in k, int(''.join(c for c in k if c.isdigit()) or 0)))


def _video_label(key: str) -> str:
  if key == 'consistency':
    return 'consistency'
  n, _, form = key[3:].partition('_')
  return f'mVC{n}' + (f' ({form})' if form else '')


def _percent(value) -> str:
  return '—' if value is None or (isinstance(value, float) and math.isnan(value)) else f'{100 * value:.2f}'


def rows(runs: Sequence[RunResult]) -> tuple[list[str], list[list[str]]]:
  """The summary table of one group: (header, rows) of strings."""
  video = _video_keys(runs)
  header = (['run', 'system', 'backbone', 'head', 'parameters', 'GFLOPs/frame', 'mIoU %', 'pixel acc. %']
            + [f'{_video_label(k)} %' for k in video] + ['frames/s', 'step'])
  table = []
  for run in runs:
    table.append([run.name, run.system, run.backbone, str(run.config.model.head),
                  '—' if run.parameters is None else f'{run.parameters / 1e6:.4g} M',
                  '—' if run.gflops is None else f'{run.gflops:.4g}',
                  _percent(run.results.get('miou')), _percent(run.results.get('pixel_accuracy'))]
                 + [_percent(run.video.get(k)) for k in video]
                 + ['—' if run.frames_per_second is None else f'{run.frames_per_second:.2f}',
                    '—' if run.step is None else str(run.step)])
  return header, table


def _markdown_table(header: Sequence[str], table: Sequence[Sequence[str]], right_from: int = 1) -> str:
  align = ['---' if i < right_from else '---:' for i in range(len(header))]
  return '\n'.join('| ' + ' | '.join(line) + ' |' for line in [header, align, *table])


def markdown(groups: Sequence[Sequence[RunResult]], *, speed_note: str) -> str:
  parts = ['# Runs compared', '', speed_note]
  for group in groups:
    header, table = rows(group)
    parts += ['', f'## {describe_protocol(group[0].protocol)}', '', _markdown_table(header, table, right_from=4)]
    classes = group[0].protocol['classes']
    per_class = [[name] + [_percent(r.results.get('per_class_iou', {}).get(name)) for r in group]
                 for name in classes]
    parts += ['', 'Per-class IoU (%):', '', _markdown_table(['class'] + [r.name for r in group], per_class)]
    absent = [r for r in group if 'mvc_absent' in r.video]
    if absent:
      parts += ['', f'mVC absent ({absent[0].video["mvc_absent"]}): {", ".join(r.name for r in absent)}.']
    older = [r.name for r in group if not r.video]
    if older:
      parts += ['', f'No video metrics in the reports of {", ".join(older)} (evaluated before they existed: '
                    'run eval.py again).']
  return '\n'.join(parts) + '\n'


def csv_text(groups: Sequence[Sequence[RunResult]]) -> str:
  records = []
  for g, group in enumerate(groups):
    for run in group:
      record = {'group': g, 'run': run.name, 'workdir': run.workdir, 'system': run.system,
                'backbone': run.backbone, 'head': run.config.model.head, 'parameters': run.parameters,
                'gflops_per_frame': run.gflops, 'miou': run.results.get('miou'),
                'pixel_accuracy': run.results.get('pixel_accuracy')}
      record.update({k: run.video.get(k) for k in _video_keys(group)})
      record.update(frames_per_second=run.frames_per_second, step=run.step, source=run.source,
                    dataset=run.protocol['dataset'], split=run.split,
                    input_size=('native' if run.protocol['input_size'] == 'native'
                                else 'x'.join(str(s) for s in run.protocol['input_size'])),
                    labels=run.protocol['labels'], protocol=run.protocol['scoring'], frame_list=run.protocol['list'])
      record.update({f'iou/{k}': v for k, v in run.results.get('per_class_iou', {}).items()})
      records.append(record)
  fields = list(dict.fromkeys(k for r in records for k in r))
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=fields, lineterminator='\n')
  writer.writeheader()
  writer.writerows({k: '' if v is None else v for k, v in r.items()} for r in records)
  return out.getvalue()


def plot(groups: Sequence[Sequence[RunResult]], path: str) -> None:
  """mIoU against frames/s (GFLOPs per frame without speed figures), one labelled point per run, one panel
  per group; written to `path` (PNG) all or nothing."""
  from matplotlib.figure import Figure
  from ma_resnet.files import atomic_path
  figure = Figure(figsize=(6.4 * len(groups), 4.8), layout='constrained')
  axes = figure.subplots(1, len(groups), squeeze=False)[0]
  for ax, group in zip(axes, groups):
    speed = all(r.frames_per_second is not None for r in group)
    for run in group:
      x = run.frames_per_second if speed else run.gflops
      y = run.results.get('miou')
      if x is None or y is None:
        continue
      ax.scatter([x], [100 * y])
      ax.annotate(run.name, (x, 100 * y), textcoords='offset points', xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f'frames/s (streaming step, {hardware()})' if speed else 'GFLOPs per frame')
    ax.set_ylabel('mIoU (%)')
    ax.set_title(describe_protocol(group[0].protocol), fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.margins(0.2)
  with atomic_path(path) as tmp:
    figure.savefig(tmp, format='png', dpi=120)


# ---------------------------------------------------------------------------------------------------------
# Command line.


def _parse_size(text: str) -> tuple[int, int]:
  parts = text.replace('x', ',').split(',')
  if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
    raise argparse.ArgumentTypeError(f'--size must be H,W (two positive integers), got {text!r}')
  return int(parts[0]), int(parts[1])


def _positive(text: str) -> int:
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f'must be a positive integer, got {text!r}')
  return int(text)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m ma_resnet.compare', description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('runs', nargs='+', metavar='RUN_DIR', help='train.py run folders')
  p.add_argument('--split', help="evaluation split (default: each run's eval_split)")
  p.add_argument('--out', help='write compare.md, compare.csv and compare.png into this folder')
  p.add_argument('--group', action='store_true', help='one table per dataset / split / protocol instead of '
                 'refusing runs that differ')
  p.add_argument('--no-speed', dest='speed', action='store_false', help='do not measure frames/s')
  p.add_argument('--rounds', type=_positive, default=3, help='timing rounds (interleaved across runs)')
  p.add_argument('--frames', type=_positive, default=8, help='frames per run and round')
  p.add_argument('--size', type=_parse_size, help='H,W of the frames for GFLOPs and frames/s (default: each '
                 "run's evaluation input size)")
  return p


def _error(message: str, code: int) -> int:
  print(f'error: {message}', file=sys.stderr, flush=True)
  return code


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status (bad flags: argparse's SystemExit 2)."""
  args = parser().parse_args(argv)
  try:
    runs, missing = [], []
    for workdir in args.runs:
      try:
        runs.append(read_run(workdir, args.split))
      except CompareError as e:
        if e.code != EXIT_DATA:
          raise
        missing.append(str(e))
    if missing:
      for message in missing:
        _error(message, EXIT_DATA)
      return EXIT_DATA
    _unique_names(runs)
    groups = group_runs(runs)
    if len(groups) > 1 and not args.group:
      lines = [f'  {describe_protocol(g[0].protocol)}: {", ".join(r.name for r in g)}' for g in groups]
      return _error('the runs were not scored on the same data the same way (dataset, split, frame list, '
                    'protocol, input size, labels, classes, frames); pass --group for one table per group:\n' + '\n'.join(lines), EXIT_USAGE)
    measure(runs, size=args.size, speed=args.speed, rounds=args.rounds, frames=args.frames)
  except CompareError as e:
    return _error(str(e), e.code)
  if args.speed:
    note = (f'Speed: {hardware()}; the jitted one-frame `model.step` (batch 1, memory carried), random frames at '
            f'the evaluation input size, median of {args.rounds} interleaved rounds of {args.frames} frames per '
            f'run after {WARMUP_FRAMES} warm-up frames, measured in this invocation. GFLOPs: XLA cost analysis '
            'of the same step (a multiply-add = 2 FLOPs).')
  else:
    note = 'GFLOPs: XLA cost analysis of the jitted one-frame `model.step` (a multiply-add = 2 FLOPs); no speed.'
  text = markdown(groups, speed_note=note)
  print(text, end='')
  if args.out:
    from ma_resnet.files import atomic_write_text
    atomic_write_text(os.path.join(args.out, 'compare.md'), text)
    atomic_write_text(os.path.join(args.out, 'compare.csv'), csv_text(groups))
    written = 'compare.csv'
    if importlib.util.find_spec('matplotlib') is None:
      print("warning: no compare.png: matplotlib is not installed (pip install 'ma_resnet[plot]')", file=sys.stderr)
    else:
      plot(groups, os.path.join(args.out, 'compare.png'))
      written += ', compare.png'
    print(f'wrote {os.path.join(args.out, "compare.md")}, {written}')
  return 0


if __name__ == '__main__':
  from absl import logging
  logging.set_verbosity(logging.ERROR)  # the console: the tables and errors, no library chatter (orbax's notes)
  sys.exit(main())
