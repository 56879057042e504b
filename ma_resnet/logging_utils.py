"""Run logs in the workdir: TensorBoard events, `metrics.jsonl`, `config.json`, the library log, the progress bar.

Quiet runs: `quiet_console()` (train.py, eval.py) keeps library INFO (orbax, grain, absl) and orbax's
warnings off the console, which then shows the progress bar, the validation summaries, where things were
written, and warnings and errors; `log_to_file(path)` sends the library log, from the start of the process,
to `<workdir>/train.log` once the run may write its workdir. `--verbosity=0` (absl) brings it all back.
`native_stdout_to_stderr()` (multi-process runs) sends what native libraries print on stdout (gloo's
"[Gloo] Rank 0 is connected to 1 peer ranks" lines) to stderr, so stdout keeps only the run's own lines.

Only process 0 writes. `metrics.jsonl` has one JSON object per line: {"step": s, "loss": ..., "lr": ..., ...}
for every training step, and {"step": s, "eval/miou": ...} after each validation run. When a run resumes
from step s, the lines of steps after s (written by the interrupted run, possibly cut mid-line) are dropped
first, so the file reads as one uninterrupted run.
"""
from __future__ import annotations

import io
import json
import logging as std_logging
from logging import handlers as log_handlers
import math
import os
import sys
import time

import jax
from absl import logging

from ma_resnet.files import atomic_write_text

METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'
LOG_FILE = 'train.log'

_pending_log: log_handlers.MemoryHandler | None = None  # library records before the log file exists


class _NotOrbaxChatter(std_logging.Filter):
  """Drops orbax's INFO and WARNING records (routine checkpoint-manager notes) from the console."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.ERROR or f'{os.sep}orbax{os.sep}' not in record.pathname


def quiet_console(verbose: bool = False) -> None:
  """Console: warnings and errors only (orbax's routine warnings left out), unless `verbose`. Everything
  from INFO up is kept in memory for `log_to_file`."""
  global _pending_log
  root = std_logging.getLogger()
  if not verbose:
    console = logging.get_absl_handler()
    console.setLevel(std_logging.WARNING)
    console.addFilter(_NotOrbaxChatter())
  logging.set_verbosity(logging.INFO)
  if _pending_log is None:
    _pending_log = log_handlers.MemoryHandler(capacity=1 << 20, flushLevel=std_logging.CRITICAL + 1)
    _pending_log.setLevel(std_logging.INFO)
    root.addHandler(_pending_log)


def native_stdout_to_stderr() -> None:
  """From now on what native code writes to the process's stdout (file descriptor 1: gloo, XLA) goes to stderr;
  Python's `sys.stdout` (print) keeps writing to the real stdout."""
  sys.stdout.flush()
  real_stdout = os.dup(1)
  os.dup2(2, 1)
  sys.stdout = io.TextIOWrapper(io.FileIO(real_stdout, 'w'), encoding=sys.stdout.encoding,
                                errors=sys.stdout.errors, line_buffering=True)


def log_to_file(path: str) -> str:
  """From now on the library log (INFO and up) also goes to `path`, after what was kept since
  `quiet_console`. Returns `path`."""
  global _pending_log
  handler = std_logging.FileHandler(path)
  handler.setLevel(std_logging.INFO)
  handler.setFormatter(std_logging.Formatter('%(asctime)s %(levelname).1s %(filename)s:%(lineno)d] %(message)s'))
  root = std_logging.getLogger()
  root.addHandler(handler)
  if _pending_log is not None:
    _pending_log.setTarget(handler)
    _pending_log.flush()
    root.removeHandler(_pending_log)
    _pending_log = None
  return path


def write_config(workdir: str, config) -> None:
  """The resolved config as `<workdir>/config.json`."""
  if jax.process_index() == 0:
    atomic_write_text(os.path.join(workdir, CONFIG_FILE), config.to_json(indent=2, sort_keys=True) + '\n')


def read_jsonl(path: str) -> list[dict]:
  """The well-formed lines of a JSON-lines file (a line cut by a crash is skipped)."""
  records = []
  if not os.path.exists(path):
    return records
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
  return records


def _json_value(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)


class MetricWriter:
  """Scalars to TensorBoard (tensorboardX) and to `metrics.jsonl` in `workdir` (process 0 only)."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.workdir = workdir
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    if os.path.exists(path):  # drop what an interrupted run logged after the checkpoint we resume from
      kept = [r for r in read_jsonl(path) if int(r.get('step', 0)) <= resume_step]
      atomic_write_text(path, ''.join(json.dumps(r) + '\n' for r in kept))
    self._jsonl = open(path, 'a')
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(logdir=workdir, purge_step=resume_step if resume_step > 0 else None)
    except ImportError:  # pragma: no cover - tensorboardX is a dependency of the training scripts
      logging.warning('tensorboardX is not installed: no TensorBoard event files')

  def write_jsonl(self, step: int, values: dict) -> None:
    if self._jsonl is not None:
      self._jsonl.write(json.dumps({'step': int(step), **{k: _json_value(v) for k, v in values.items()}}) + '\n')
      self._jsonl.flush()

  def write_scalars(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    if self._tb is not None:
      for key, value in values.items():
        self._tb.add_scalar(key, float(value), int(step))
      self._tb.flush()
    if any(k.startswith('eval/') for k in values):
      self.write_jsonl(step, values)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None


def console(message: str) -> None:
  """A line for the person running the program (stderr, process 0 only), also in the log file."""
  logging.info('%s', message)
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


class StepTimer:
  """Steps per second since the previous call."""

  def __init__(self, step: int):
    self._step, self._time = step, time.time()

  def steps_per_second(self, step: int) -> float:
    now = time.time()
    rate = (step - self._step) / max(now - self._time, 1e-9)
    self._step, self._time = step, now
    return rate


class ProgressBar:
  """A tqdm bar over training steps (step, loss, lr, steps/s); silent on processes other than 0."""

  def __init__(self, total: int, initial: int = 0, enabled: bool = True):
    self._bar = None
    if enabled and jax.process_index() == 0:
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=initial, unit='step', dynamic_ncols=True, file=sys.stderr,
                       mininterval=1.0)

  def update_to(self, step: int, **postfix) -> None:
    if self._bar is None:
      return
    self._bar.update(step - self._bar.n)
    self._bar.set_postfix({k: (f'{v:.4g}' if isinstance(v, float) else v) for k, v in postfix.items()},
                          refresh=True)

  def write(self, message: str) -> None:
    if self._bar is not None:
      logging.info('%s', message)
      self._bar.write(message)
    else:
      console(message)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
