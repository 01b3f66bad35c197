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
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxvdm.sharding.mesh import place

__all__ = ["PHASES", "place_inputs", "Programs", "dump_hlo_to", "record_compiled", "progress_enabled", "progress_bar"]

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
    ctx = place(jnp.asarray(context), mesh)
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


class Programs:
    """Ahead-of-time compiled program variants, keyed by a hashable key (e.g. an LP partition).

    ``get(key, name, build, args)`` returns ``build().lower(*args).compile()``, built once per key;
    ``seconds`` accumulates the time spent lowering and compiling, so a sampler reports compile time
    apart from its loop. Every ``get`` reports the program to :func:`record_compiled`.
    """

    def __init__(self):
        self._compiled: dict = {}
        self.seconds = 0.0

    def get(self, key: Hashable, name: str, build: Callable[[], Callable], args) -> Callable:
        if key not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[key] = build().lower(*args).compile()
            self.seconds += time.perf_counter() - t0
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


class _Bar:
    def __init__(self, bar):
        self._bar = bar

    def done(self, n: int = 1, result=None) -> None:
        """Counts ``n`` finished units, after waiting until ``result`` (a pytree of arrays) is computed."""
        if self._bar is None:
            return
        if result is not None:
            jax.block_until_ready(result)
        self._bar.update(n)


@contextlib.contextmanager
def progress_bar(total: int, desc: str, progress: bool | None, unit: str = "step") -> Iterator[_Bar]:
    """A bar over ``total`` units that advances when a unit has *finished* (``bar.done(n, result)`` waits
    for ``result``); a no-op (nothing waited for) when :func:`progress_enabled` says no."""
    if not progress_enabled(progress):
        yield _Bar(None)
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=False)
    try:
        yield _Bar(bar)
    finally:
        bar.close()
