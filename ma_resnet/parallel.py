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
`heartbeat_timeout` seconds; `watch_peers` turns a stalled collective into one clear message and exit code.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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


def initialize_distributed(mode: str = 'auto', *, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           heartbeat_timeout: int = 60, initialization_timeout: int = 300) -> bool:
  """Starts `jax.distributed` for mode 'yes', or for 'auto' when a multi-process launch is given or detected.

  Must run before anything touches the devices. Returns whether the distributed runtime was initialised.
  heartbeat_timeout: seconds after which a silent peer counts as dead (the run then stops);
  initialization_timeout: seconds to wait for every process to join.
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
  jax.distributed.initialize(**arguments, heartbeat_timeout_seconds=int(heartbeat_timeout),
                             initialization_timeout=int(initialization_timeout))
  _initialized = True
  logging.info('jax.distributed initialised: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


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
