"""Exceptions raised by the data layer.

Every problem with the data on disk (a missing folder, an empty split, a corrupt image, a label of the wrong size
or with a value outside the class range) raises one `DataError` whose message names the file or folder at fault.
`DataError` is a `ValueError`; its subclass `DataNotFoundError` is also a `FileNotFoundError`, so callers can catch
either the specific built-in kind or every data problem at once with `except DataError`.
"""

from __future__ import annotations

import os

from ma_resnet.errors import EXIT_DATA


class DataError(ValueError):
  """Bad or inconsistent data: the message names the file or folder at fault."""
  exit_code = EXIT_DATA


class DataNotFoundError(DataError, FileNotFoundError):
  """A file or folder the dataset needs does not exist (or a split has no frames)."""


def require_dir(path: str | os.PathLike, what: str) -> None:
  """Raises DataNotFoundError naming `path` when it is not an existing folder."""
  if not os.path.isdir(path):
    raise DataNotFoundError(f"{what}: folder not found: {os.fspath(path)}")


def require_file(path: str | os.PathLike, what: str) -> None:
  """Raises DataNotFoundError naming `path` when it is not an existing file."""
  if not os.path.isfile(path):
    raise DataNotFoundError(f"{what}: file not found: {os.fspath(path)}")
