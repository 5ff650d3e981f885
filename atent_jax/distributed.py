"""Multi-host (multi-process) data parallelism: start-up and which rows each process reads.

One process per host (or per GPU, as the cluster launcher decides) runs the same program. Each
process holds the whole dataset in memory (CIFAR-10 is 600 MB as float32) and reads only its own
rows of every global batch: the global batch `order[i*B:(i+1)*B]` of the permutation of
(seed, epoch) is cut into `process_count` contiguous slices and process p takes slice p. The
global batch array is assembled with `jax.make_array_from_process_local_data` over the 1-D
'data' mesh of all devices (ordered by process, so process p's devices hold slice p). The
training step then computes exactly what one process with all the devices would compute.

With one process nothing here changes what the single-host code does: `initialize` does
nothing, `host_rows` is the whole batch.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from atent_jax.errors import ConfigError

# Environment variables by which launchers announce more than one process (JAX's own cluster
# detection then finds the coordinator, the process count and id).
_PROCESS_COUNT_ENV = ("OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")


def _env_process_count() -> int:
  """More than 1 when a launcher started several processes of this program."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return 2
  for name in _PROCESS_COUNT_ENV:
    value = os.environ.get(name, "")
    if value.isdigit() and int(value) > 1:
      if name == "SLURM_NTASKS" and "SLURM_STEP_ID" not in os.environ:
        continue  # an sbatch script itself (not a task started by srun) is one process
      return int(value)
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):  # a multi-host Cloud TPU slice
    return 2
  return 1


def wants_initialize(dist_config) -> bool:
  """Whether `initialize` would call jax.distributed.initialize for this config (pure)."""
  mode = dist_config.initialize
  if mode == "never":
    return False
  if mode == "always":
    return True
  return bool(dist_config.coordinator_address) or dist_config.num_processes > 1 or (
      dist_config.num_processes == 0 and _env_process_count() > 1)


def initialize(config) -> bool:
  """Calls `jax.distributed.initialize` when the config or the environment asks for more than
  one process (config.distributed; see experiments/configs/default.py). Must run before any JAX
  computation; does nothing for a single process or when JAX is already initialised for
  distribution. Returns whether it initialised."""
  d = config.distributed
  if not wants_initialize(d):
    return False
  if jax.distributed.is_initialized():
    return False
  kwargs = {}
  if d.coordinator_address:
    kwargs["coordinator_address"] = d.coordinator_address
  if d.num_processes > 0:
    kwargs["num_processes"] = d.num_processes
  if d.process_id >= 0:
    kwargs["process_id"] = d.process_id
  if d.local_device_ids:
    kwargs["local_device_ids"] = [int(i) for i in str(d.local_device_ids).split(",")]
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    raise ConfigError(
        f"jax.distributed.initialize({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) "
        f"failed ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}): set "
        "config.distributed.coordinator_address, num_processes and process_id, or "
        "config.distributed.initialize='never' for one process") from None
  return True


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def is_primary() -> bool:
  """Process 0 writes the run's files (config, run info, metrics); all take part in checkpoints."""
  return jax.process_index() == 0


def mesh_devices() -> np.ndarray:
  """All devices, those of process 0 first, then process 1, ...: a process's rows of a batch
  are contiguous. With one process this is `jax.devices()` in its order."""
  devices = jax.devices()
  if jax.process_count() == 1:
    return np.asarray(devices)
  return np.asarray(sorted(devices, key=lambda d: (d.process_index, d.id)))


def host_rows(global_batch: int, process_index: int, process_count: int) -> slice:
  """The rows [start, stop) of a global batch that process `process_index` reads: the batch
  cut into `process_count` equal contiguous slices."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process {process_index} of {process_count} does not exist")
  if global_batch % process_count:
    raise ConfigError(f"the global batch of {global_batch} is not divisible by the "
                      f"{process_count} processes: use a multiple of {process_count}")
  per = global_batch // process_count
  return slice(process_index * per, (process_index + 1) * per)


def host_batch_indices(order: np.ndarray, step_in_epoch: int, global_batch: int,
                       process_index: int, process_count: int) -> np.ndarray:
  """The dataset indices process `process_index` reads for step `step_in_epoch` of an epoch
  whose permutation is `order`."""
  batch = order[step_in_epoch * global_batch:(step_in_epoch + 1) * global_batch]
  return batch[host_rows(global_batch, process_index, process_count)]


def global_batch(local, sharding, global_rows: int):
  """A global array of `global_rows` rows, sharded per `sharding`, from this process's rows."""
  local = np.asarray(local)
  return jax.make_array_from_process_local_data(sharding, local,
                                                (global_rows,) + local.shape[1:])


def replicate(tree, sharding):
  """Puts a pytree, the same on every process, on all devices (a replicated sharding)."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(a):
    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

  return jax.tree_util.tree_map(put, tree)
