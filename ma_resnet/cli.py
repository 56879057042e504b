"""Shared command-line plumbing of `train.py` and `eval.py`: flag parsing with clear errors, exit codes.

Every expected failure ends the process with one line `error: ...` (plus indented details) on stderr and a
non-zero exit code, without a traceback. The failures are told apart by their type (`ma_resnet.errors`), each
carrying its exit code:

  2  bad command line or config (unknown --config key, wrong value type, missing config file, bad value):
     `errors.ConfigError`
  3  data not found / unreadable (missing dataset folder, empty split, corrupt file): `data.DataError`
  4  checkpoint problem (a workdir or init_from checkpoint of another architecture, no checkpoint to evaluate,
     a corrupt checkpoint, a checkpoint or workdir that cannot be written: disk full, permissions, a workdir
     another training run holds): `checkpoints.CheckpointError`
  5  training diverged (NaN / inf loss); the last good checkpoint is kept: `training.NonFiniteLossError`
  6  multi-process run: a peer process stopped (its collective failed; the last checkpoint is kept):
     `errors.PeerError`; or the processes cannot start together (coordinator port in use, a process missing
     after --initialization_timeout, processes started with different configs / flags / code):
     `parallel.StartupError`

Any other exception is a bug, not the user's input: it ends with its traceback (exit 1).
"""
from __future__ import annotations

import difflib
import errno
import os
import re
import sys
from typing import Callable, Sequence

from absl import flags

from ma_resnet.errors import EXIT_CHECKPOINT, EXIT_DATA, EXIT_DIVERGED, EXIT_PEER, EXIT_USAGE, PeerError


def define_distributed_flags() -> None:
  """--coordinator_address / --num_processes / --process_id / --heartbeat_timeout (train.py, eval.py)."""
  flags.DEFINE_string('coordinator_address', None, 'Multi-process runs: host:port of process 0 (default: '
                      '$JAX_COORDINATOR_ADDRESS, else what JAX detects: SLURM, Open MPI, TPU pods, Kubernetes).')
  flags.DEFINE_integer('num_processes', None, 'Multi-process runs: number of processes ($JAX_NUM_PROCESSES).')
  flags.DEFINE_integer('process_id', None, 'Multi-process runs: this process, 0..num_processes-1 '
                       '($JAX_PROCESS_ID).')
  flags.DEFINE_integer('heartbeat_timeout', 60, 'Multi-process runs: seconds after which a silent peer counts '
                       'as dead and the run stops.')
  flags.DEFINE_integer('initialization_timeout', 180, 'Multi-process runs: seconds to wait at start-up for every '
                       'process to join; then each waiting process stops with one line naming the missing ones.')


def start_distributed(flag_values, mode: str) -> None:
  """Starts JAX's distributed runtime from the flags / environment (see `parallel.initialize_distributed`)."""
  from ma_resnet import logging_utils, parallel
  try:
    started = parallel.initialize_distributed(
        mode, coordinator_address=flag_values.coordinator_address, num_processes=flag_values.num_processes,
        process_id=flag_values.process_id, heartbeat_timeout=flag_values.heartbeat_timeout,
        initialization_timeout=flag_values.initialization_timeout)
  except ValueError as e:
    fail(f'distributed launch: {e}', EXIT_USAGE)
  if started:
    logging_utils.native_stdout_to_stderr()  # gloo's connection lines


def loaded_config(flag_values, name: str = 'config'):
  """The config of `--<name>=FILE`, or exit 2 with one line when the file is missing, not a file or broken
  (ml_collections reports a load failure only when the config is first used)."""
  try:
    config = flag_values[name].value
    config.keys()  # a config that failed to load raises on first use
    return config
  except Exception as e:  # pylint: disable=broad-except  (ml_collections raises OSError / the file's error)
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    detail = '; '.join(lines[-2:]) if lines else type(e).__name__
    fail(f'cannot load --{name}: {detail}', EXIT_USAGE)


def fail(message: str, code: int) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def _unknown_override(argv: Sequence[str], flag_name: str) -> str | None:
  """A message for the first `--<flag>.a.b=...` whose key path does not exist in the config file."""
  config_path = None
  for arg in argv:
    m = re.match(rf'--{flag_name}=(.+)', arg)
    if m:
      config_path = m.group(1)
  if config_path is None or not os.path.exists(config_path):
    return None
  try:
    from ma_resnet import train_config
    config = train_config.load_config(config_path)
  except Exception:  # the config file itself is broken: let the original error speak
    return None
  for arg in argv:
    m = re.match(rf'--{flag_name}\.([^=]+)', arg)
    if not m:
      continue
    node, walked = config, []
    for part in m.group(1).split('.'):
      keys = list(node.keys()) if hasattr(node, 'keys') else []
      if part not in keys:
        where = '.'.join(walked) or 'the config'
        close = difflib.get_close_matches(part, keys, n=3)
        hint = f' Did you mean {", ".join(repr(c) for c in close)}?' if close else ''
        return (f"unknown config key '{'.'.join(walked + [part])}' (from {arg.split('=')[0]}): {where} has no "
                f"field {part!r}.{hint}\n  fields of {where}: {', '.join(sorted(keys))}")
      node = node[part]
      walked.append(part)
  return None


def make_flags_parser(flag_name: str = 'config') -> Callable[[list[str]], list[str]]:
  """An absl `flags_parser` that turns flag / config-override errors into one clear message (exit 2)."""
  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
      message = _unknown_override(argv, flag_name)
      if message is None:
        text = str(e).strip()
        if len(text) > 1 and text[0] == text[-1] and text[0] in '"\'':  # a KeyError's quotes, not the flag's
          text = text[1:-1]
        message = text if text else type(e).__name__
      fail(message + f'\n  (run {os.path.basename(argv[0])} --helpfull for the flags)', EXIT_USAGE)
    return []
  return parse


_WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST)


def _peer_failure(error: BaseException) -> bool:
  """In a multi-process run: the error of a collective whose peer process has gone."""
  import jax
  text = str(error)
  return jax.process_count() > 1 and any(marker in text for marker in (
      'Gloo', 'Connection reset by peer', 'heartbeat', 'UNAVAILABLE', 'NCCL', 'DEADLINE_EXCEEDED'))


def run_guarded(main: Callable[[], None]) -> None:
  """Runs `main()`, mapping the expected failures (by type) to one message and their exit code (see the
  docstring); anything else propagates with its traceback."""
  from ma_resnet.checkpoints import CheckpointError
  from ma_resnet.data import DataError
  from ma_resnet.errors import ConfigError
  from ma_resnet.parallel import StartupError
  from ma_resnet.training import NonFiniteLossError
  try:
    main()
  except DataError as e:
    fail(f'{e}\n  (check data.root / the dataset folder)', e.exit_code)
  except (ConfigError, CheckpointError, NonFiniteLossError, StartupError) as e:
    fail(str(e), e.exit_code)
  except PeerError as e:
    _peer_stop(e)
  except FileNotFoundError as e:
    fail(str(e), EXIT_DATA)
  except OSError as e:
    if e.errno in _WRITE_ERRNOS:  # the workdir or its files cannot be written
      fail(f'cannot write {e.filename or "the workdir"}: {e.strerror}', EXIT_CHECKPOINT)
    raise
  except Exception as e:  # pylint: disable=broad-except
    if _peer_failure(e):  # the runtime's own error of a collective whose peer has gone
      _peer_stop(PeerError(str(e)))
    raise


def _peer_stop(error: BaseException) -> None:
  """One line, then exit at once: a normal exit would wait for JAX's shutdown barrier, which the dead peer
  never reaches (the process would then abort after the heartbeat timeout)."""
  import jax
  first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  print(f'error: process {jax.process_index()} of {jax.process_count()}: a peer process stopped (its '
        f'collective failed: {first[:300]}). This process stops too; the last checkpoint is kept. Restart every '
        'process with the same command to resume.', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(EXIT_PEER)
