"""Meshes and placement helpers.

jaxvdm names mesh axes after the strategy that owns them: ``cfg`` (classifier-free-guidance pair),
``sp`` (Ulysses / Ring sequence parallelism), ``fsdp`` (weight sharding), ``lp`` (Latent Parallelism),
``step`` (ParaStep), ``stage`` (DualParal pipeline stages).

Meshes made here use ``AxisType.Explicit`` axes (the default of newer JAX). jaxvdm never relies on
implicit resharding: every input is placed with :func:`place` before a jitted call, so a user's mesh
with ``Auto`` axes works the same way.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

__all__ = ["AXES", "make_mesh", "mesh_order", "format_mesh", "parse_mesh_spec", "axis_size", "place", "replicated", "mesh_shape",
           "simulate_cpu_devices"]

AXES = ("cfg", "lp", "step", "stage", "fsdp", "sp")


def mesh_order(sizes: dict[str, int]) -> dict[str, int]:
    """``sizes`` with its axes in :data:`AXES` order (others after them, as given): the order meshes are built in."""
    return {a: sizes[a] for a in [a for a in AXES if a in sizes] + [a for a in sizes if a not in AXES]}


def make_mesh(axes: Mapping[str, int] | None = None, /, *, devices=None, **sizes: int) -> Mesh:
    """A mesh with the given axis sizes over the first ``prod(sizes)`` available devices.

    ``make_mesh(cfg=2, sp=4)`` or ``make_mesh({"cfg": 2, "sp": 4})``. Axes keep the order given.
    A mesh smaller than the device count takes the first devices; a larger one is an error naming
    both numbers. After :func:`~jaxvdm.sharding.initialize_distributed` the devices are those of every
    process (``jax.devices()`` is global), ordered process by process, and the mesh must use all of them.
    """
    spec = dict(axes or {})
    spec.update(sizes)
    if not spec:
        raise ValueError("make_mesh needs at least one axis, e.g. make_mesh(sp=4)")
    for name, n in spec.items():
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"mesh axis {name!r} must have a positive integer size, got {n!r}")
    given = devices is not None
    devices = list(jax.devices() if devices is None else devices)
    need = math.prod(spec.values())
    if need > len(devices):
        procs = jax.process_count()
        where = f" over {procs} processes" if procs > 1 and not given else ""
        raise ValueError(
            f"mesh {format_mesh(spec)} needs {need} devices but only {len(devices)} are available{where}; "
            "use smaller axis sizes"
        )
    if not given and jax.process_count() > 1:
        # multi-process: process-major order, so the last (fastest) axes stay inside one process; every
        # process must own part of the mesh (each runs the same program on its own devices)
        devices.sort(key=lambda d: (d.process_index, d.id))
        if need != len(devices):
            raise ValueError(
                f"mesh {format_mesh(spec)} has {need} devices, but a run over {jax.process_count()} processes must "
                f"use all {len(devices)} of their devices; choose axis sizes whose product is {len(devices)}"
            )
    arr = np.array(devices[:need], dtype=object).reshape(tuple(spec.values()))
    return Mesh(arr, tuple(spec), axis_types=(AxisType.Explicit,) * len(spec))


def format_mesh(spec: Mapping[str, int] | None) -> str:
    """``"cfg=2,sp=4"`` (the ``--mesh`` syntax), or ``"1 device"`` for an empty or missing mesh."""
    return ",".join(f"{k}={v}" for k, v in spec.items()) if spec else "1 device"


def _backends_started() -> bool:
    """Whether JAX has created its devices (after which the CPU device count is fixed)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API moved: assume started, the safe answer
        return True


def simulate_cpu_devices(n: int | None) -> None:
    """Makes JAX's CPU backend offer ``n`` devices (``--cpu-devices``; None does nothing).

    Works until JAX creates its devices (importing jax is fine): it sets
    ``--xla_force_host_platform_device_count`` and, unless ``JAX_PLATFORMS`` is set, the CPU platform.
    Afterwards JAX must already have at least ``n`` CPU devices. Raises ValueError saying which.
    """
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--cpu-devices must be a positive integer, got {n!r}")
    if _backends_started():
        have = jax.devices()
        if jax.default_backend() != "cpu" or len(have) < n:
            raise ValueError(f"--cpu-devices {n} cannot take effect: JAX already started with {len(have)} "
                             f"{jax.default_backend()} device(s) in this process; run the command in a new process")
        return
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={n}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    if not os.environ.get("JAX_PLATFORMS"):
        os.environ["JAX_PLATFORMS"] = "cpu"
        jax.config.update("jax_platforms", "cpu")  # jax read JAX_PLATFORMS when it was imported


def parse_mesh_spec(text: str) -> dict[str, int]:
    """Parses ``"cfg=2,lp=4"`` into ``{"cfg": 2, "lp": 4}``; raises ValueError naming the bad part."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not name or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"bad mesh axis {part!r}: write axis=size, e.g. --mesh cfg=2,sp=4")
        if name in out:
            raise ValueError(f"mesh axis {name!r} given twice in {text!r}")
        out[name] = int(value)
    if not out:
        raise ValueError(f"empty mesh spec {text!r}: write axis=size, e.g. --mesh cfg=2,sp=4")
    return out


def mesh_shape(mesh: Mesh | None) -> dict[str, int]:
    """``{axis: size}`` of a mesh (empty for None)."""
    return {} if mesh is None else dict(mesh.shape)


def axis_size(mesh: Mesh | None, name: str) -> int:
    """Size of axis ``name`` (1 if the mesh is None or lacks it)."""
    return 1 if mesh is None else int(mesh.shape.get(name, 1))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def place(tree, mesh: Mesh | None, specs=None):
    """``device_put`` every leaf of ``tree`` on ``mesh`` with ``specs`` (a matching tree of
    PartitionSpecs, or None for replicated). With ``mesh=None`` the tree is returned as jax arrays."""
    if mesh is None:
        return jax.tree.map(jax.numpy.asarray, tree)
    if specs is None:
        sh = replicated(mesh)
        return jax.tree.map(lambda a: jax.device_put(a, sh), tree)
    return jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), tree, specs)
