"""Multi-process (multi-host) runs: one JAX process per host, meshes over every process's devices.

    import jaxvdm
    jaxvdm.sharding.initialize_distributed("10.0.0.1:1234", num_processes=2, process_id=0)  # per process
    mesh = jaxvdm.sharding.make_mesh(cfg=2, sp=8)          # spans the devices of all processes
    video = jaxvdm.generate("a red circle moving left", mesh=mesh, strategy="cfg+ulysses")
    if jaxvdm.sharding.is_main_process():
        video.save("out.mp4")

Every process runs the same program (same prompt, seed, sizes, strategy and mesh); each returns the same
:class:`~jaxvdm.video.Video`. :func:`initialize_distributed` must run before anything touches JAX
devices (``jax.devices()``, any computation), i.e. first thing in the program.

The coordinator, process count and process id come from the arguments, else from the environment
variables ``JAXVDM_COORDINATOR`` (``host:port`` of process 0), ``JAXVDM_NUM_PROCESSES`` and
``JAXVDM_PROCESS_ID``; with none of the three given, JAX's own cluster detection (TPU pods, SLURM,
Open MPI, ...) fills them in. Giving some but not all three is an error naming the missing ones.

On CPU the cross-process collectives use gloo (``jax_cpu_collectives_implementation``), which this
module turns on when the JAX build has it off.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax

__all__ = ["initialize_distributed", "DistributedInfo", "is_main_process", "ENV_VARS"]

ENV_VARS = {"coordinator_address": "JAXVDM_COORDINATOR", "num_processes": "JAXVDM_NUM_PROCESSES",
            "process_id": "JAXVDM_PROCESS_ID"}
_FLAGS = {"coordinator_address": "--coordinator", "num_processes": "--num-processes", "process_id": "--process-id"}


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands after :func:`initialize_distributed`.

    process_id: this process's index (``jax.process_index()``).
    num_processes: the process count (``jax.process_count()``).
    local_devices: devices attached to this process.
    global_devices: devices of all processes (what :func:`~jaxvdm.sharding.make_mesh` spans).
    """

    process_id: int
    num_processes: int
    local_devices: int
    global_devices: int

    @property
    def is_main(self) -> bool:
        return self.process_id == 0


def is_main_process() -> bool:
    """True on process 0 (and in every single-process run): the process that should write files."""
    return jax.process_index() == 0


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer") from None


def _check_address(address: str) -> str:
    host, sep, port = str(address).strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator address {address!r} must be host:port of process 0, e.g. 10.0.0.1:1234 "
                         f"(the same on every process)")
    return f"{host}:{port}"


def _info() -> DistributedInfo:
    return DistributedInfo(jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_ids: int | Sequence[int] | None = None,
                           ) -> DistributedInfo:
    """Connects this process to the others (``jax.distributed.initialize``); call it once, first thing.

    Args:
      coordinator_address: ``host:port`` where process 0 listens (the same string on every process);
        default ``$JAXVDM_COORDINATOR``.
      num_processes: how many processes take part; default ``$JAXVDM_NUM_PROCESSES``.
      process_id: this process's index in ``[0, num_processes)``; default ``$JAXVDM_PROCESS_ID``.
      local_device_ids: the accelerators this process uses (default: all it sees).

    With none of the three known, JAX's cluster detection is used (TPU pods, SLURM, Open MPI, ...).

    Returns:
      A :class:`DistributedInfo`. Calling again is a no-op returning the same information, provided any
      settings given agree with the running set-up.

    Raises:
      ValueError: some but not all of the three settings given; a bad address, count or id; a second
        call with other settings; no cluster detected with nothing given.
      RuntimeError: JAX already started its devices in this process (call this before anything else).
    """
    settings = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    if settings["coordinator_address"] is None:
        settings["coordinator_address"] = os.environ.get(ENV_VARS["coordinator_address"]) or None
    for key in ("num_processes", "process_id"):
        if settings[key] is None:
            settings[key] = _env_int(ENV_VARS[key])
    for key in ("num_processes", "process_id"):
        v = settings[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            try:
                if int(v) != v:
                    raise ValueError
                settings[key] = int(v)
            except (TypeError, ValueError):
                raise ValueError(f"{key} must be an integer, got {v!r}") from None
    if settings["coordinator_address"] is not None:
        settings["coordinator_address"] = _check_address(settings["coordinator_address"])

    known = {k for k, v in settings.items() if v is not None}
    if known and known != set(settings):
        missing = [k for k in settings if k not in known]
        how = ", ".join(f"{k} (argument, {_FLAGS[k]}, or ${ENV_VARS[k]})" for k in missing)
        raise ValueError(f"multi-process set-up is incomplete: give all of coordinator address, process count and "
                         f"process id, or none (to let JAX detect the cluster); missing: {how}")
    n, pid = settings["num_processes"], settings["process_id"]
    if known:
        if n < 1:
            raise ValueError(f"num_processes must be at least 1, got {n}")
        if not 0 <= pid < n:
            raise ValueError(f"process_id must be in [0, {n - 1}] for num_processes={n}, got {pid}")

    if _joined():
        info = _info()
        if known and (info.num_processes, info.process_id) != (n, pid):
            raise ValueError(f"jax.distributed is already initialized as process {info.process_id} of "
                             f"{info.num_processes}; cannot re-initialize as process {pid} of {n} (restart the "
                             "program to change the set-up)")
        return info

    if known and n == 1:
        return _info()  # a one-process "cluster" needs no coordination

    too_late = ("initialize_distributed() must be called before JAX starts its devices: call it first thing in "
                "the program, before jax.devices(), make_mesh, generate or any computation")
    if _backends_started():
        raise RuntimeError(too_late)
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "", "none"):
        # CPU devices need gloo to talk across processes (harmless on GPU/TPU hosts)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(settings["coordinator_address"], n, pid, local_device_ids)
    except RuntimeError as e:
        if "before" in str(e):
            raise RuntimeError(too_late) from e
        raise
    except ValueError as e:
        if known:
            raise
        raise ValueError(
            f"no cluster detected for a multi-process run ({e}); pass coordinator_address, num_processes and "
            f"process_id (or --coordinator/--num-processes/--process-id, or set "
            f"{', '.join(ENV_VARS.values())})") from None
    return _info()


def _joined() -> bool:
    """Whether this process already joined a multi-process run (``jax.distributed.initialize`` ran)."""
    check = getattr(jax.distributed, "is_initialized", None)
    if check is not None:
        return bool(check())
    from jax._src import distributed as _dist

    return _dist.global_state.client is not None


def _backends_started() -> bool:
    """Whether JAX already created its devices in this process (then it is too late to join a cluster)."""
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API moved: jax.distributed.initialize says it itself
        return False
