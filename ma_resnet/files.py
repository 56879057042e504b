"""All-or-nothing outputs: a file or folder is written under a temporary sibling name and renamed at the end.

    with atomic_path('out/report.json') as tmp:     # tmp: '.report.json.partial-xxxx' beside the target
      write(tmp)
    # the target now holds the complete new content; after an exception it is as it was and tmp is gone

`atomic_path(..., folder=True)` gives a temporary folder that replaces a target folder (which must then be
absent or empty). The rename is atomic on one filesystem, so readers see the old content or the new one,
never a half-written file. Every writer of the package (reports, config.json, metrics, PNGs, videos, label
folders, converted checkpoints) goes through here. What it creates gets the permissions the user's umask gives
(0666 / 0777 masked, as `open` and `mkdir` give), not the 0600 / 0700 of the temporary names.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


def partial_name(target: str) -> tuple[str, str]:
  """(folder, prefix) of a temporary sibling of `target`: hidden, named after it, same extension."""
  folder, name = os.path.split(os.path.abspath(os.fspath(target)))
  return folder, f'.{name}.partial-'


def umask() -> int:
  """The process's file-creation mask."""
  try:  # Linux: read it without setting it (os.umask sets it, for every thread, until it is set back)
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('Umask:'):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def utf8_problem(path: str | None) -> str | None:
  """None when `path` is valid UTF-8 (or None); else a message naming it. Checkpoints, TensorBoard files and
  JSON reports name their files in UTF-8, so a path with other bytes is refused at start-up."""
  if path is None:
    return None
  try:
    os.fsencode(path).decode('utf-8')
    return None
  except UnicodeDecodeError as e:
    return (f'{path!r} is not valid UTF-8 (byte {os.fsencode(path)[e.start:e.start + 1]!r} at position '
            f'{e.start}): checkpoints and reports need UTF-8 paths; rename the folder')


@contextlib.contextmanager
def atomic_path(target: str, *, folder: bool = False) -> Iterator[str]:
  """Yields a temporary path beside `target`; renames it onto `target` when the block succeeds.

  folder: the temporary path is a new empty folder, and `target` must be absent or an empty folder.
  Missing parent folders are created. On an exception the temporary path (and the parent folders created
  here) are removed and `target` is untouched.
  """
  target = os.path.abspath(os.fspath(target))
  parent, prefix = partial_name(target)
  created, p = [], parent
  while not os.path.exists(p):
    created.append(p)
    p = os.path.dirname(p)
  os.makedirs(parent, exist_ok=True)
  if folder:
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(tmp, 0o777 & ~umask())
  else:
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=os.path.splitext(target)[1], dir=parent)
    os.fchmod(fd, 0o666 & ~umask())
    os.close(fd)
  try:
    yield tmp
    if folder and os.path.isdir(target):
      os.rmdir(target)  # must be empty: a folder that filled up meanwhile makes this fail, and nothing is lost
    os.replace(tmp, target)
  except BaseException:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
    elif os.path.lexists(tmp):
      os.remove(tmp)
    for folder_created in created:  # deepest first; stops at one that is not empty
      try:
        os.rmdir(folder_created)
      except OSError:
        break
    raise


def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` to `path` all or nothing (flushed to disk before the rename)."""
  with atomic_path(path) as tmp:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
