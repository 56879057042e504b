"""One training run per workdir: an exclusive lock file `<workdir>/train.lock` held while a run may write it.

    lock = WorkdirLock.acquire(workdir)   # WorkdirInUseError (exit 4) naming the holder when another run has it
    try:
      train(...)
    finally:
      lock.release()                      # removes the file (and the workdir, if it was created here and is empty)

The lock is `fcntl.flock` on the file, which the kernel releases when the process ends however it ends
(kill -9 included); the file names its owner as one JSON line (host, pid, start time, command) for the message
a second run prints. A file left by an owner that is gone is *stale*:

  - same host, owner's pid not alive: taken over (a note in the log);
  - another host: the lock cannot be checked from here (flock does not reach across hosts on every shared
    filesystem: NFSv4 does, gcsfuse does not), so the run stops, naming the owner and the way to break the lock
    (delete the file once that run is known to have stopped).

Readers (`eval.py`, `predict.py`, `runs.load_run`) take no lock: they read finished checkpoints, and a
checkpoint that training deletes meanwhile is reported as removed (see `runs.load_run`).

Multi-process runs: only process 0 takes the lock (one per run, wherever its processes live); the others learn
its outcome in the start-up check (`parallel.check_same_launch`) and stop with it.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys

from absl import logging

from ma_resnet.checkpoints import CheckpointError

LOCK_FILE = 'train.lock'


class WorkdirInUseError(CheckpointError):
  """Another run holds the workdir's lock: the message names it (host, pid, since when, command)."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


def _owner_text(owner: dict) -> str:
  return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, since {owner.get('started', '?')}"
          f"{': ' + owner['command'] if owner.get('command') else ''}")


def _read_owner(fd: int) -> dict | None:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 1 << 16).decode('utf-8', 'replace').strip()
  if not text:
    return None
  try:
    owner = json.loads(text)
    return owner if isinstance(owner, dict) else {'command': text[:200]}
  except ValueError:
    return {'command': text[:200]}


class WorkdirLock:
  """The held lock of one workdir (see the module docstring); `acquire` takes it, `release` gives it back."""

  def __init__(self, path: str, fd: int, created_dirs: list[str]):
    self.path = path
    self._fd = fd
    self._created_dirs = created_dirs

  @classmethod
  def acquire(cls, workdir: str) -> 'WorkdirLock':
    """Locks `workdir` (created if missing) for this process; WorkdirInUseError when another run holds it."""
    workdir = os.path.abspath(workdir)
    created, p = [], workdir
    while not os.path.exists(p):
      created.append(p)
      p = os.path.dirname(p)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    while True:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
      try:
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
          owner = _read_owner(fd) or {}
          raise WorkdirInUseError(f'workdir {workdir} is in use by another training run ({_owner_text(owner)}); '
                                  f'wait for it to finish, or use another --workdir (lock: {path})') from None
        except OSError as e:  # a filesystem without flock (e.g. gcsfuse): the owner line alone decides
          if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        try:
          same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # released (unlinked) by its owner between our open and flock: try again
          same_file = False
        if not same_file:
          os.close(fd)
          continue
        cls._check_stale(fd, path, workdir)
        owner = {'host': socket.gethostname(), 'pid': os.getpid(),
                 'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                 'command': ' '.join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + '\n').encode('utf-8', 'backslashreplace'), 0)
        os.fsync(fd)
        return cls(path, fd, created)
      except BaseException:
        os.close(fd)
        raise

  @staticmethod
  def _check_stale(fd: int, path: str, workdir: str) -> None:
    """With the flock held: the owner line a previous run left. Stale (same host, pid gone) is fine; else
    WorkdirInUseError (another host, or a live pid that does not hold the flock: it cannot be told apart from
    a run on a filesystem whose locks do not reach here)."""
    owner = _read_owner(fd)
    if owner is None or owner.get('pid') == os.getpid() and owner.get('host') == socket.gethostname():
      return
    pid = owner.get('pid')
    if owner.get('host') == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
      logging.warning('Workdir %s: taking over the stale lock of a run that stopped (%s)', workdir,
                      _owner_text(owner))
      return
    where = 'another host' if owner.get('host') != socket.gethostname() else 'this host, still alive'
    raise WorkdirInUseError(
        f'workdir {workdir} is locked by a training run on {where} ({_owner_text(owner)}) and this host cannot '
        f'check whether it still runs. If it has stopped, delete {path} and start again; else use another '
        '--workdir')

  def release(self) -> None:
    """Removes the lock file and gives the lock back; removes the workdir if `acquire` created it and it is
    still empty (a run refused at start-up leaves nothing behind)."""
    if self._fd is None:
      return
    try:
      if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
        os.unlink(self.path)
    except FileNotFoundError:
      pass
    finally:
      os.close(self._fd)
      self._fd = None
    for folder in self._created_dirs:  # deepest first; stops at one that is not empty
      try:
        os.rmdir(folder)
      except OSError:
        break

  def __enter__(self) -> 'WorkdirLock':
    return self

  def __exit__(self, *exc) -> None:
    self.release()
