"""What every sampler needs around its compiled programs, written once: placing the inputs, compiling
the program variants ahead of time (timed, and recorded for HLO dumps), and a progress bar.

The surface (``jaxvdm.generate``, ``jaxvdm.profiling``) and the strategies both use this module; it
imports nothing from either.

* :func:`place_inputs` -- fresh, replicated copies of the noise, text context, guidance scale and
  solver state (the samplers donate them to their steps, so they are never the caller's buffers).
* :class:`Programs` -- ahead-of-time compiled variants keyed by a hashable key; the time spent
  compiling is counted apart from the time spent running, and every program is reported to
  :func:`record_compiled` (also when it comes from the cache).
* :func:`dump_hlo_to` / :func:`record_compiled` -- inside ``with dump_hlo_to(dir)`` every recorded
  program's optimised HLO is written to ``dir/<name>.hlo.txt``.
* :func:`progress_bar` -- a tqdm bar over *finished* units of work, or a no-op.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxvdm.sharding.mesh import place

__all__ = ["PHASES", "place_inputs", "Programs", "MemoryBudgetError", "available_bytes", "check_fits",
           "check_activations", "dump_hlo_to",
           "record_compiled", "progress_enabled", "progress_bar"]

PHASES = ("lp_window", "model_forward", "cfg_combine", "lp_combine", "scheduler", "parastep_reuse",
          "parastep_exchange", "parastep_replay", "dualparal_update", "dualparal_stage", "dualparal_exchange")
"""The ``jax.named_scope`` names the strategies give their phases; XLA keeps them in each op's ``op_name``."""

_hlo_dir: contextvars.ContextVar[Path | None] = contextvars.ContextVar("jaxvdm_hlo_dir", default=None)


# ------------------------------------------------------------------------------------------ inputs


def place_inputs(mesh, noise, context, guidance: float, scheduler):
    """``(x, ctx, g, solver_state)`` replicated over ``mesh`` (plain arrays without one).

    ``x`` is a float32 copy of ``noise [1, C, T, H, W]``, ``ctx`` the text context, ``g`` the guidance
    scale as a float32 scalar, ``solver_state`` ``scheduler.init(x)`` in fresh buffers (a state may alias
    the sample, and samplers donate both)."""
    x = place(jnp.array(noise, jnp.float32, copy=True), mesh)
    ctx = place(jax.tree.map(jnp.asarray, context), mesh)  # an array, or a pytree (image-to-video)
    g = place(jnp.float32(guidance), mesh)
    sstate = place(jax.tree.map(lambda a: jnp.array(a, copy=True), scheduler.init(x)), mesh)
    return x, ctx, g, sstate


# ------------------------------------------------------------------------------------------ programs


@contextlib.contextmanager
def dump_hlo_to(directory: str | os.PathLike | None):
    """Within this context, every program passed to :func:`record_compiled` has its optimised HLO written
    into ``directory`` (no-op for None)."""
    if directory is None:
        yield
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    token = _hlo_dir.set(path)
    try:
        yield
    finally:
        _hlo_dir.reset(token)


def record_compiled(name: str, compiled) -> None:
    """Reports a compiled program; inside :func:`dump_hlo_to` its HLO is written as ``<name>.hlo.txt``
    (a different program of the same name gets ``<name>_1.hlo.txt``, ...)."""
    directory = _hlo_dir.get()
    if directory is None:
        return
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120]
    text = compiled.as_text()
    target = directory / f"{safe}.hlo.txt"
    n = 1
    while target.exists() and target.read_text() != text:
        target = directory / f"{safe}_{n}.hlo.txt"
        n += 1
    target.write_text(text)


class MemoryBudgetError(ValueError):
    """A compiled program needs more memory than its devices have free (raised before it runs).

    ``needed`` and ``available`` are bytes (for all the simulated CPU devices of one host together, or
    per accelerator); ``where`` names the device(s)."""

    def __init__(self, needed: int, available: int, where: str):
        self.needed, self.available, self.where = int(needed), int(available), where
        super().__init__(f"this run needs about {needed / 2**30:.1f} GiB of memory beyond the weights and inputs "
                         f"but {where} has {available / 2**30:.1f} GiB free")


def available_bytes(device) -> int | None:
    """Free memory of ``device`` in bytes: the accelerator's ``bytes_limit - bytes_in_use``; for a CPU
    device the host's available memory (``MemAvailable``); None where neither is known."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    if device.platform == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(compiled, devices) -> None:
    """Raises :class:`MemoryBudgetError` when ``compiled`` (one program per device of ``devices``) needs more
    memory than is free: its temporaries and outputs (``memory_analysis``; arguments are resident already,
    donated outputs reuse them). Simulated CPU devices share one host, so their needs add up."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - a backend without the analysis: nothing to check
        return
    if m is None:
        return
    per_device = max(0, int(m.temp_size_in_bytes) + int(m.output_size_in_bytes) - int(m.alias_size_in_bytes))
    devices = list(devices)
    if devices[0].platform == "cpu":
        needed, free, where = per_device * len(devices), available_bytes(devices[0]), "this host"
    else:
        needed, free, where = per_device, available_bytes(devices[0]), f"each {devices[0].device_kind}"
    if free is not None and needed > free:
        raise MemoryBudgetError(needed, free, where)


def check_activations(tokens: int, batch: int, width: int, itemsize: int, mesh=None) -> None:
    """A lower bound of one device's activation memory, checked before anything is compiled: one forward of
    ``batch x tokens`` holds at least its feed-forward activation ``[batch, tokens, width]`` (``width`` the
    FFN size, ``itemsize`` bytes per element). Raises :class:`MemoryBudgetError` when even that exceeds the
    free memory (the compiled program's own figure is checked again by :class:`Programs`)."""
    devices = list(mesh.devices.flat) if mesh is not None else [jax.devices()[0]]
    need = int(batch) * int(tokens) * int(width) * int(itemsize)
    free = available_bytes(devices[0])
    if devices[0].platform == "cpu":
        need, where = need * len(devices), "this host"
    else:
        where = f"each {devices[0].device_kind}"
    if free is not None and need > free:
        raise MemoryBudgetError(need, free, where)


class Programs:
    """Ahead-of-time compiled program variants, keyed by a hashable key (e.g. an LP partition).

    ``get(key, name, build, args)`` returns ``build().lower(*args).compile()``, built once per key and
    checked against the free memory of the ``mesh``'s devices (:func:`check_fits`: a program that cannot
    fit raises before it runs); ``seconds`` accumulates the time spent lowering and compiling, so a
    sampler reports compile time apart from its loop. Every ``get`` reports the program to
    :func:`record_compiled`.
    """

    def __init__(self, mesh=None):
        self._compiled: dict = {}
        self._devices = list(mesh.devices.flat) if mesh is not None else [jax.devices()[0]]
        self.seconds = 0.0

    def get(self, key: Hashable, name: str, build: Callable[[], Callable], args) -> Callable:
        if key not in self._compiled:
            t0 = time.perf_counter()
            compiled = build().lower(*args).compile()
            self.seconds += time.perf_counter() - t0
            check_fits(compiled, self._devices)
            self._compiled[key] = compiled
        record_compiled(name, self._compiled[key])
        return self._compiled[key]

    def clear(self) -> None:
        self._compiled.clear()


# ------------------------------------------------------------------------------------------ progress


def progress_enabled(progress: bool | None) -> bool:
    """Whether to show progress: ``progress`` if given, else on for a terminal unless ``JAXVDM_PROGRESS=0``."""
    if progress is not None:
        return bool(progress)
    if os.environ.get("JAXVDM_PROGRESS", "1") == "0":
        return False
    return sys.stderr.isatty()


LONG_RUN_S = 3600.0
"""A run estimated to take longer than this (from its first unit) is warned about."""


class _Bar:
    def __init__(self, bar, total: int, desc: str):
        self._bar, self._total, self._desc = bar, total, desc
        self._t0, self._count = time.perf_counter(), 0

    def done(self, n: int = 1, result=None) -> None:
        """Counts ``n`` finished units, after waiting until ``result`` (a pytree of arrays) is computed.

        Without a bar nothing is waited for, except the first unit of a run of 500 units or more, which is
        timed to warn (``UserWarning``) when the whole run would take more than an hour."""
        first = self._count == 0
        self._count += n
        timed = self._bar is not None or (first and self._total >= 500)
        if not timed:
            return
        if result is not None:
            jax.block_until_ready(result)
        if first:
            per_unit = (time.perf_counter() - self._t0) / max(n, 1)
            estimate = per_unit * self._total
            if estimate > LONG_RUN_S:
                warnings.warn(f"{self._desc}: {self._total} units at about {per_unit:.2g} s each will take about "
                              f"{_duration(estimate)}; fewer steps (or a smaller video) finish sooner", stacklevel=2)
        if self._bar is not None:
            self._bar.update(n)


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


@contextlib.contextmanager
def progress_bar(total: int, desc: str, progress: bool | None, unit: str = "step") -> Iterator[_Bar]:
    """A bar over ``total`` units that advances when a unit has *finished* (``bar.done(n, result)`` waits
    for ``result``), with units per second and time left; without it (:func:`progress_enabled` says no)
    nothing is waited for (see ``_Bar.done`` for the warning about very long runs)."""
    if not progress_enabled(progress):
        yield _Bar(None, total, desc)
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=False)
    try:
        yield _Bar(bar, total, desc)
    finally:
        bar.close()
