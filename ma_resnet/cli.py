"""Shared command-line plumbing of `train.py` and `eval.py`: flag parsing with clear errors, exit codes.

Every expected failure ends the process with one line `error: ...` (plus indented details) on stderr and a
non-zero exit code, without a traceback:

  2  bad command line or config (unknown --config key, wrong value type, missing config file, bad value)
  3  data not found / unreadable (missing dataset folder, empty split, corrupt file)
  4  checkpoint problem (a workdir or init_from checkpoint of another architecture, no checkpoint to evaluate)
  5  training diverged (NaN / inf loss); the last good checkpoint is kept
"""
from __future__ import annotations

import difflib
import os
import re
import sys
from typing import Callable, Sequence

from absl import flags

EXIT_USAGE, EXIT_DATA, EXIT_CHECKPOINT, EXIT_DIVERGED = 2, 3, 4, 5


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
        text = str(e).strip().strip('"').strip("'")
        message = text if text else type(e).__name__
      fail(message + f'\n  (run {os.path.basename(argv[0])} --helpfull for the flags)', EXIT_USAGE)
    return []
  return parse


def run_guarded(main: Callable[[], None]) -> None:
  """Runs `main()`, mapping the expected failures to one message and an exit code (see the docstring)."""
  from ma_resnet.checkpoints import CheckpointError
  from ma_resnet.data import DataError
  from ma_resnet.training import NonFiniteLossError
  try:
    main()
  except NonFiniteLossError as e:
    fail(str(e), EXIT_DIVERGED)
  except CheckpointError as e:
    fail(str(e), EXIT_CHECKPOINT)
  except DataError as e:
    fail(f'{e}\n  (check data.root / the dataset folder; nothing was written to the workdir)', EXIT_DATA)
  except FileNotFoundError as e:
    fail(str(e), EXIT_CHECKPOINT if 'checkpoint' in str(e) else EXIT_DATA)
  except ValueError as e:
    if str(e).startswith('invalid config') or 'must be' in str(e):
      fail(str(e), EXIT_USAGE)
    raise
