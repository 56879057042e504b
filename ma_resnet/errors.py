"""The errors a user's input can cause, each carrying the exit code the command lines give it (`cli.run_guarded`).

  ConfigError (ValueError)          2  a config value or flag out of its range, or sizes the model cannot take
  data.DataError (ValueError)       3  data missing, unreadable or inconsistent (`ma_resnet.data.errors`)
  checkpoints.CheckpointError       4  no usable checkpoint, one of another model, or one that cannot be written
  training.NonFiniteLossError       5  the loss or the parameters became NaN / inf
  PeerError (RuntimeError)          6  a multi-process run lost a peer process
  parallel.StartupError             6  the processes of a multi-process run cannot start together

Anything else is a bug, not the user's input: the command lines let it end with its traceback (exit 1).
This module imports nothing, so every layer can raise these.
"""

EXIT_USAGE, EXIT_DATA, EXIT_CHECKPOINT, EXIT_DIVERGED, EXIT_PEER = 2, 3, 4, 5, 6


class ConfigError(ValueError):
  """A bad config value, flag or size: the message names the field (`invalid config: model.depth ...`)."""
  exit_code = EXIT_USAGE


class PeerError(RuntimeError):
  """A multi-process run: another process stopped (its collective failed or its heartbeat went silent)."""
  exit_code = EXIT_PEER
