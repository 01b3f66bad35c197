"""Latent Parallelism (predict transform on mesh axis ``lp``): the host side of each step's partition.

The device side is in :func:`jaxvdm.sharding.predict.guided_prediction`: each of the ``K`` devices cuts
its window out of the replicated latent, runs the whole model on it with the window's *global* token
offset (so RoPE sees the same positions as in the full video), weights its prediction with the
position-aware blend weights, and one ``psum`` over ``lp`` assembles the blended prediction. The sampler
then steps the replicated full latent, so the multistep solver state stays global (its update is linear
in the model output with scalar coefficients, so blending predictions equals blending updates).

This module turns the options into one static :class:`LPWindow` per step:

* ``schedule``: ``"rotate"`` (T, H, W, T, … with a fallback when an axis has fewer patches than K),
  a fixed ``"T"``/``"H"``/``"W"``, or ``"unite"`` (the NSDI artifact: an exact full-latent first step,
  decaying overlap from ``r_max`` to ``r_max/2``, no T late in sampling, H only at the end);
* ``overlap`` r: each window extends its core by ``floor(r * core)`` patches per side (``0 <= r <= K-1``);
* ``ramp``: ``"linear"`` (the paper) or ``"cosine"`` (the artifact) blend weights.

Windows are patch-aligned, cores split the axis evenly (no idle device), and all windows share one
length (clamped inside the video), so every step is one SPMD program; see
:mod:`jaxvdm.sharding.lp_partition` for the partition maths and the paper-exact accounting.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np

from jaxvdm.sharding import lp_partition as part
from jaxvdm.sharding.plan import Plan

__all__ = ["LPWindow", "windows_for"]

@dataclasses.dataclass(frozen=True, eq=False)
class LPWindow:
    """This step's Latent Parallelism partition (static, host-computed).

    axis: latent dim of the partition (2 = T, 3 = H, 4 = W), or None for an exact full-latent step.
    length: window length in latent indices (the same on every device).
    starts: ``[K]`` window starts in latent indices (multiples of the patch size).
    weights: ``[K, length]`` normalised blend weights (they sum to 1 over windows at every index).
    """

    axis: int | None
    length: int
    starts: np.ndarray
    weights: np.ndarray

    def key(self):
        return (self.axis, self.length, tuple(self.starts.tolist()), self.weights.tobytes())


_SCHEDULES = ("rotate", "T", "H", "W", "unite")
_RAMPS = ("linear", "cosine")


def _number(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"lp {name} must be a number (a fraction of the core, e.g. {name}=0.5), got {value!r}")
    return float(value)


def _full_threshold(n: int, k: int) -> int:
    """The smallest overlap in patches ``o`` at which every window of an ``n``-patch axis over ``k``
    devices is the whole axis (``n + 1`` if none is)."""
    c = -(-n // k)
    for o in range(n + 1):
        lengths = [min(n, (j + 1) * c + o) - max(0, j * c - o) for j in range(k) if max(0, j * c - o) < n]
        if max(lengths) >= n:
            return o
    return n + 1


def _degenerate(axis: str, n: int, k: int, r: float, partition) -> tuple[str | None, str | None]:
    """``(kind, message)`` when the partition is not what ``overlap=r`` asks for: every window the whole
    axis although ``r < K-1`` (``"full"``), or an overlap of 0 patches although ``r > 0`` (``"zero"``)."""
    c = -(-n // k)
    if partition.full and r < k - 1:
        below = _full_threshold(n, k) / c
        return "full", (f"lp overlap={r:g} at K={k} makes every window the whole {axis} axis ({n} patches): each "
                        f"device computes the whole video at those steps; an overlap below {below:.3g} splits it")
    if r > 0 and partition.o == 0:
        return "zero", (f"lp overlap={r:g} rounds to 0 patches on the {axis} axis (core {c} patches at K={k}): "
                        f"its windows do not overlap; the smallest overlap giving 1 patch there is {1 / c:.3g}")
    return None, None


def windows_for(plan: Plan, latent_shape, patch, num_steps: int) -> Callable[[int], LPWindow]:
    """Per-step partitions for ``plan``'s LP options on a latent ``[1, C, T, H, W]``.

    Every step's partition is built (and validated) here, before any compute; the returned function
    maps a step index to its :class:`LPWindow` (``axis=None``: an exact full-latent step, which runs with
    the tokens split over the ``lp`` axis, see :func:`jaxvdm.sharding.predict.guided_prediction`).

    Raises ValueError naming the problem for a latent size that is not a multiple of the patch, K larger
    than every axis's patch count, an overlap (or the unite schedule's ``r_max``) that is not a number in
    ``[0, K-1]``, an unknown schedule or ramp, or an overlap below ``K-1`` that makes every window of
    every step the whole axis (each device would compute the whole video: no parallelism, not what was
    asked). Warns (``UserWarning``, one line per axis) when some axis's windows are all whole, or when a
    positive overlap rounds to 0 patches on an axis, naming the overlap that gives what was asked. An
    explicit ``overlap=0`` (disjoint windows) and ``overlap=K-1`` (every window whole: exact) are taken as
    asked. With K = 1 (no mesh, or ``lp=1``) every step is the exact full-latent one.
    """
    k = plan.size(plan.lp_axis)
    overlap = _number("overlap", plan.option("overlap"))
    schedule = plan.option("schedule")
    ramp = plan.option("ramp")
    r_max = _number("r_max", plan.option("r_max"))
    if schedule not in _SCHEDULES:
        raise ValueError(f"lp schedule must be one of {_SCHEDULES}, got {schedule!r}")
    if ramp not in _RAMPS:
        raise ValueError(f"lp ramp must be one of {_RAMPS}, got {ramp!r}")
    grid = part.patch_grid(latent_shape, patch)
    if k == 1:  # one window covers the latent (no mesh, or lp=1): every step is the exact full-latent one
        full = LPWindow(None, 0, np.zeros((1,), np.int32), np.zeros((1, 0), np.float32))
        return lambda i: full
    if schedule != "unite" and not (0.0 <= overlap <= k - 1):
        raise ValueError(f"lp overlap must be in [0, K-1] = [0, {k - 1}] for K={k} devices, got {overlap}")
    if schedule == "unite" and not (0.0 <= r_max <= k - 1):
        raise ValueError(f"lp r_max (the unite schedule's largest overlap) must be in [0, K-1] = [0, {k - 1}] for "
                         f"K={k} devices, got {r_max}")
    axes = part.axis_schedule(num_steps, grid, k, mode=schedule)
    patch_of = dict(zip("THW", patch))
    windows: list[LPWindow] = []
    cache: dict = {}
    problems: dict[tuple[str, str], str] = {}
    for i, axis in enumerate(axes):
        if axis == "full":
            windows.append(LPWindow(None, 0, np.zeros((k,), np.int32), np.zeros((k, 0), np.float32)))
            continue
        r = min(part.unite_overlap(i, num_steps, r_max), k - 1) if schedule == "unite" else overlap
        key = (axis, r)
        if key not in cache:
            p = patch_of[axis]
            partition = part.uniform_windows(grid[axis], k, r)
            kind, message = _degenerate(axis, grid[axis], k, r, partition)
            if kind is not None:
                problems.setdefault((axis, kind), message)
            weights = part.blend_weights(partition, p, ramp=ramp).astype(np.float32)
            starts = (np.asarray(partition.win_start) * p).astype(np.int32)
            cache[key] = LPWindow(part.AXIS_DIM[axis], int(partition.length) * p, starts, weights)
        windows.append(cache[key])
    partial = [w for w in windows if w.axis is not None and w.length < latent_shape[w.axis]]
    if not partial and any(kind == "full" for _, kind in problems):
        sizes = ", ".join(f"{a}={grid[a]}" for a in "THW")
        raise ValueError(f"lp overlap={overlap if schedule != 'unite' else r_max:g} at K={k} makes every window of "
                         f"every step the whole axis (patch grid {sizes}): every device would compute the whole "
                         f"video; use a smaller overlap, fewer LP devices or a larger video "
                         f"({'; '.join(m.split(': ', 1)[1] for (a, kd), m in problems.items() if kd == 'full')})")
    for message in problems.values():
        warnings.warn(message, stacklevel=3)
    return lambda i: windows[i]
