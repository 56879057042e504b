"""Data parallelism: one mesh axis 'data' over every device of every process.

    mesh = make_mesh()                                   # all devices, all processes
    batch = shard_batch(local_numpy_batch, mesh)         # global arrays, split on the batch axis
    state = replicate(state, mesh)                       # parameters / optimizer state on every device
    step = jax.jit(train_step, in_shardings=(replicated(mesh), data_sharding(mesh), replicated(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)))

`jax.jit` sees the *global* batch: every mean over the batch axis in the model (batch-norm statistics, the loss
normalisation by the number of valid pixels) is a mean over the global batch, and XLA inserts the cross-device
reductions itself. Batch-norm statistics are therefore synchronised across all devices and hosts (like
SyncBatchNorm), and the update is the same as on one device with the same global batch, up to float rounding.

Multi-process (multi-host) runs: `initialize_distributed` starts JAX's distributed runtime (gloo collectives
on CPUs, NCCL on GPUs, the TPU runtime on pods) with the coordinator address, process count and id given
(train.py / eval.py flags), else from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, else
from what JAX detects itself (SLURM, Open MPI, TPU pods, Kubernetes). Each process reads its rows of every
global batch (`data.pipeline.GlobalBatchSampler`: N processes train on exactly the batches of one process
with N devices) and `shard_batch` assembles the global array with `jax.make_array_from_process_local_data`.
A process that stops (killed, crashed) is noticed by the others through JAX's heartbeats within
`heartbeat_timeout` seconds; `cli.run_guarded` turns the failed collective into one clear message and exit code.

Start-up: every failure to start together is one `StartupError` line (exit 6), never JAX's abort minutes later:
  - process 0 checks that the coordinator port is free before binding it (in use: at once, naming host:port);
  - a process that is not joined by all within `initialization_timeout` seconds stops, naming the coordinator,
    the processes it saw and the missing one(s) (JAX would abort the process after its own timeout: a watchdog
    thread ends the process first, with `os._exit`, as the main thread is blocked inside JAX);
  - `check_same_launch` (after the runtime is up) gathers every process's config, flags, code version (package
    version, a hash of its source files, jax / jaxlib versions) and launch values (JAX_NUM_PROCESSES ...) and
    stops all of them, naming the first key where a process differs from process 0.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import sys
import threading
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ma_resnet.errors import EXIT_PEER

DATA_AXIS = 'data'

# Environment variables that mean "this process is one of several launched together".
_MULTI_PROCESS_ENV = ('JAX_COORDINATOR_ADDRESS', 'COORDINATOR_ADDRESS')
_PROCESS_COUNT_ENV = ('JAX_NUM_PROCESSES', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'PMI_SIZE')


def multi_process_launch_detected(environ=None) -> bool:
  """True when the environment describes a launch of several cooperating processes."""
  environ = os.environ if environ is None else environ
  if any(environ.get(name) for name in _MULTI_PROCESS_ENV):
    return True
  for name in _PROCESS_COUNT_ENV:
    try:
      if int(environ.get(name, '1')) > 1:
        return True
    except ValueError:
      pass
  return False


_initialized = False
_launch: dict = {}  # what this process was told (flags / environment), compared by `check_same_launch`


class StartupError(RuntimeError):
  """The processes of a multi-process run cannot start together (coordinator port in use, a process missing,
  processes started differently): the message names the address / processes / first differing key (exit 6)."""
  exit_code = EXIT_PEER


def _env_int(environ, name: str) -> int | None:
  value = environ.get(name)
  if value in (None, ''):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'{name}={value!r} is not an integer') from None


def distributed_arguments(coordinator_address: str | None = None, num_processes: int | None = None,
                          process_id: int | None = None, environ=None) -> dict:
  """The launch (flags first, then JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) as keyword
  arguments of `jax.distributed.initialize`; missing values are left to JAX's own cluster detection."""
  environ = os.environ if environ is None else environ
  arguments = {
      'coordinator_address': coordinator_address or environ.get('JAX_COORDINATOR_ADDRESS') or None,
      'num_processes': num_processes if num_processes is not None else _env_int(environ, 'JAX_NUM_PROCESSES'),
      'process_id': process_id if process_id is not None else _env_int(environ, 'JAX_PROCESS_ID'),
  }
  n, i = arguments['num_processes'], arguments['process_id']
  if n is not None and n < 1:
    raise ValueError(f'the number of processes must be >= 1, got {n}')
  if i is not None and n is not None and not 0 <= i < n:
    raise ValueError(f'process id {i} is not in 0..{n - 1} (number of processes {n})')
  if arguments['coordinator_address'] and (n is None or i is None) and not multi_process_launch_detected(
      {k: v for k, v in environ.items() if k not in _MULTI_PROCESS_ENV}):
    raise ValueError('a coordinator address needs the number of processes and this process\'s id: '
                     '--num_processes and --process_id (or JAX_NUM_PROCESSES and JAX_PROCESS_ID)')
  return {k: v for k, v in arguments.items() if v is not None}


DEFAULT_INITIALIZATION_TIMEOUT = 180


def _split_address(address: str) -> tuple[str, int] | None:
  host, _, port = address.rpartition(':')
  return (host.strip('[]'), int(port)) if host and port.isdigit() else None


def check_coordinator_port(address: str) -> None:
  """StartupError when the port of `address` (host:port) is in use here, where process 0's coordinator binds it
  (JAX_COORDINATOR_BIND_ADDRESS, else every interface: [::], or 0.0.0.0 without IPv6)."""
  bind = os.environ.get('JAX_COORDINATOR_BIND_ADDRESS')
  split = _split_address(bind or address)
  if split is None:
    return
  host, port = split if bind else ('', split[1])
  for family, where in ((socket.AF_INET6, host or '::'), (socket.AF_INET, host or '0.0.0.0')):
    try:
      with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to the service
        s.bind((where, port))
      return
    except OSError as e:
      if e.errno == errno.EADDRINUSE:
        raise StartupError(f'process 0: the coordinator port {address} is already in use (another run or '
                           'program holds it): choose another port in --coordinator_address (the same on every '
                           'process), or stop what holds it') from None
      # Otherwise (no IPv6 here, an IPv4 bind address, ...) try the other family; then let the coordinator try.


def _reachable(address: str) -> bool:
  split = _split_address(address)
  if split is None:
    return False
  try:
    with socket.create_connection(split, timeout=2):
      return True
  except OSError:
    return False


def _joined_too_late(address: str, n: int, i: int, timeout: float) -> str:
  """The line of a process that was not joined by every process within `timeout` seconds."""
  if i == 0:
    missing = '1' if n == 2 else f'one or more of 1..{n - 1}'
    return (f'process 0 of {n}: not every process joined the coordinator {address} within {timeout:g} s '
            f'(seen: process 0, this one; missing: {missing}). Start every process with the same '
            f'--coordinator_address and --num_processes={n}, or raise --initialization_timeout')
  others = '0, the coordinator' if n == 2 else f'0 (the coordinator) or another of 0..{n - 1}'
  answer = ('something listens there but did not answer as the coordinator of this run (another program or '
            'run on that port?)' if _reachable(address) else 'nothing listens there')
  return (f'process {i} of {n}: the run did not start within {timeout:g} s at the coordinator {address}: '
          f'{answer} (seen: process {i}, this one; missing: process {others}). Start process 0 with the same '
          f'--coordinator_address and --num_processes={n}, or raise --initialization_timeout')


def initialize_distributed(mode: str = 'auto', *, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           heartbeat_timeout: int = 60,
                           initialization_timeout: int = DEFAULT_INITIALIZATION_TIMEOUT) -> bool:
  """Starts `jax.distributed` for mode 'yes', or for 'auto' when a multi-process launch is given or detected.

  Must run before anything touches the devices. Returns whether the distributed runtime was initialised.
  heartbeat_timeout: seconds after which a silent peer counts as dead (the run then stops);
  initialization_timeout: seconds to wait for every process to join; then this process prints one line and
  ends with exit code 6 (see the module docstring). StartupError when the coordinator port is in use.
  """
  global _initialized
  if mode not in ('auto', 'yes', 'no'):
    raise ValueError(f"distributed must be 'auto', 'yes' or 'no', got {mode!r}")
  if _initialized:
    return True
  arguments = distributed_arguments(coordinator_address, num_processes, process_id)
  if mode == 'no' or (mode == 'auto' and not arguments and not multi_process_launch_detected()):
    return False
  if arguments.get('num_processes') == 1:
    return False
  address, n, i = (arguments.get(k) for k in ('coordinator_address', 'num_processes', 'process_id'))
  _launch.update(num_processes=n)
  if address and i == 0:
    check_coordinator_port(address)
  watchdog = None
  if address and n is not None and i is not None:
    def too_late():
      print(f'error: {_joined_too_late(address, n, i, initialization_timeout)}', file=sys.stderr, flush=True)
      os._exit(6)  # the main thread is blocked inside JAX's connect, which would abort the process later
    watchdog = threading.Timer(initialization_timeout, too_late)
    watchdog.daemon = True
    watchdog.start()
  try:
    jax.distributed.initialize(**arguments, heartbeat_timeout_seconds=int(heartbeat_timeout),
                               # JAX aborts the process at its own timeout: the watchdog speaks first
                               initialization_timeout=int(initialization_timeout) + (30 if watchdog else 0))
  except Exception as e:  # pylint: disable=broad-except  (jaxlib's runtime error: e.g. the port taken meanwhile)
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise StartupError(f'process {i} of {n}: cannot start the distributed runtime at {address}: {first}') from None
  finally:
    if watchdog is not None:
      watchdog.cancel()
  _initialized = True
  logging.info('jax.distributed initialised: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def code_version() -> dict:
  """What every process of a run must share: the package version, a SHA-256 of its source files, jax's."""
  import jaxlib
  import ma_resnet
  root = os.path.dirname(os.path.abspath(ma_resnet.__file__))
  digest = hashlib.sha256()
  for folder, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    for name in sorted(files):
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        digest.update(os.path.relpath(path, root).encode() + b'\0')
        with open(path, 'rb') as f:
          digest.update(f.read() + b'\0')
  return {'ma_resnet': ma_resnet.__version__, 'sources_sha256': digest.hexdigest()[:16], 'jax': jax.__version__,
          'jaxlib': jaxlib.__version__}


def _flatten(tree: Mapping, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and value:
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


_ABSENT = '<absent>'


def first_difference(records: list[Mapping]) -> tuple[int, str, Any, Any, int] | None:
  """(process, key, process 0's value, that process's value, number of differing keys) for the first process
  whose (nested) record differs from process 0's, keys in sorted order; None when all agree."""
  reference = _flatten(records[0])
  for process, record in enumerate(records[1:], start=1):
    mine = _flatten(record)
    differing = [k for k in sorted(set(reference) | set(mine))
                 if reference.get(k, _ABSENT) != mine.get(k, _ABSENT)]
    if differing:
      key = differing[0]
      return process, key, reference.get(key, _ABSENT), mine.get(key, _ABSENT), len(differing)
  return None


def _allgather_bytes(payload: bytes) -> list[bytes]:
  """Every process's `payload`, in process order (two small all-gathers: sizes, then padded bytes)."""
  from jax.experimental import multihost_utils
  sizes = np.asarray(multihost_utils.process_allgather(np.array([len(payload)], np.int32))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:len(payload)] = np.frombuffer(payload, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [gathered[p, :int(size)].tobytes() for p, size in enumerate(sizes)]


def check_same_launch(values: Mapping, failure: BaseException | None = None) -> None:
  """Stops every process of a multi-process run unless all were started the same way; a no-op with one process.

  values: what must agree (config, flags; JSON-able), compared together with `code_version()` and what each
  process was told about the launch (JAX_NUM_PROCESSES, --num_processes). failure: an error this process met at
  start-up (process 0's workdir lock): every process stops, this one with `failure` itself, the others with a
  StartupError naming it. Raises StartupError naming the first key where a process differs from process 0
  (process 0's value vs that process's value).
  """
  if jax.process_count() == 1:
    if failure is not None:
      raise failure
    return
  n, me = jax.process_count(), jax.process_index()
  record = {'failure': str(failure) if failure is not None else None,
            'values': {'launch': dict(_launch), 'code': code_version(), **values}}
  payloads = _allgather_bytes(json.dumps(record, sort_keys=True, default=str).encode())
  records = [json.loads(p) for p in payloads]
  if failure is not None:
    raise failure
  for process, other in enumerate(records):
    if other['failure']:
      raise StartupError(f'process {me} of {n}: process {process} stopped at start-up: {other["failure"]}')
  found = first_difference([r['values'] for r in records])
  if found is not None:
    process, key, reference, theirs, count = found
    short = lambda v: (repr(v) if len(repr(v)) <= 120 else repr(v)[:117] + '...')
    this = ' (this process)' if process == me else ''
    raise StartupError(
        f'process {me} of {n}: the processes were started differently: {key} is {short(reference)} on process 0'
        f'{" (this process)" if me == 0 else ""}, {short(theirs)} on process {process}{this}'
        f'{f" ({count} keys differ)" if count > 1 else ""}. Start every process with the same code, config, '
        'flags and JAX_NUM_PROCESSES; nothing was written')


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Split the leading (batch) axis over the 'data' axis; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
  """The per-process batch for `global_batch`; ValueError unless it splits evenly over devices and processes."""
  devices = mesh.devices.size
  if global_batch % devices:
    raise ValueError(f'batch_size {global_batch} is not divisible by the {devices} devices of the mesh')
  if global_batch % jax.process_count():
    raise ValueError(f'batch_size {global_batch} is not divisible by the {jax.process_count()} processes')
  return global_batch // jax.process_count()


def shard_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's numpy batch -> global arrays sharded on the batch axis (non-array entries dropped)."""
  sharding = data_sharding(mesh)
  out = {}
  for key, value in batch.items():
    if isinstance(value, (np.ndarray, jax.Array)):
      out[key] = jax.make_array_from_process_local_data(sharding, np.asarray(value))
  return out


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Puts every leaf of `tree` (host or single-device values, the same in every process) on every device of
  the mesh. Works across processes: each process contributes the copy for its own devices."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def local_rows(array: jax.Array) -> np.ndarray:
  """The rows of a batch-sharded global array held by this process, in order, as numpy.

  For a replicated array (or a single process) this is the whole array.
  """
  if jax.process_count() == 1 or array.is_fully_replicated:
    return np.asarray(array)
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for shard in shards:
    start = shard.index[0].start or 0
    if start in seen:  # the same rows on several local devices
      continue
    seen.add(start)
    rows.append(np.asarray(shard.data))
  return np.concatenate(rows, axis=0)


def sum_over_processes(value: np.ndarray) -> np.ndarray:
  """Sum of a host array over all processes (the array itself with one process)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(value)).sum(axis=0).astype(value.dtype)
