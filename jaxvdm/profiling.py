"""Profiling: ``jax.profiler`` traces of the denoising loop."""

from __future__ import annotations

import contextlib
import os

import jax

__all__ = ["maybe_trace"]


@contextlib.contextmanager
def maybe_trace(profile_dir: str | os.PathLike | None):
    """Records a ``jax.profiler`` trace into ``profile_dir`` for the duration (no-op for None)."""
    if profile_dir is None:
        yield
        return
    os.makedirs(profile_dir, exist_ok=True)
    jax.profiler.start_trace(str(profile_dir))
    try:
        yield
    finally:
        jax.profiler.stop_trace()
