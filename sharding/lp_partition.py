"""Host-side partition maths of Latent Parallelism (LP): windows, blend weights, axis schedules and the
communication count. Pure numpy/Python; nothing here touches a device.

Conventions
-----------
* The latent is ``[B, C, T, H, W]``. An LP step cuts it along one axis ``"T"``, ``"H"`` or ``"W"``
  (latent dim 2, 3 or 4; :data:`AXIS_DIM`) into ``K`` overlapping windows, one per device.
* Partitions are computed in **patch units** along the axis (one patch = one token row along that axis);
  latent indices are patch indices times the DiT patch size ``p`` of that axis (Wan: ``(1, 2, 2)``), so
  window boundaries never cut a patch. A token offset equals the patch index.
* ``K`` devices, overlap ratio ``r`` with ``0 <= r <= K-1``; a window extends its core by
  ``o = floor(r * c)`` patches per side, ``c`` a core length (see :func:`uniform_windows`).

Two partitions
--------------
* :func:`uniform_windows` is the run-time (SPMD) partition: balanced cores, one window length for every
  device, windows clamped inside the axis.
* :func:`paper_windows` is the paper's / artifact's slicing (ceil cores, clipped windows of different
  lengths, empty windows dropped). It is used for the paper's communication accounting
  (:func:`paper_comm_mib`), which it reproduces to the last published digit.

Blend weights (:func:`blend_weights`) are a partition of unity over the windows (normalised in float64),
1 on each window's core and ramping down (linear or raised cosine) outside it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "AXES",
    "AXIS_DIM",
    "Partition",
    "PaperWindows",
    "overlap_patches",
    "uniform_windows",
    "paper_windows",
    "blend_weights",
    "axis_weights",
    "window_token_offsets",
    "patch_grid",
    "axis_schedule",
    "unite_overlap",
    "paper_comm_mib",
    "lp_psum_bytes_per_device",
]

AXES = ("T", "H", "W")
"""Partition axes in rotation order."""

AXIS_DIM = {"T": 2, "H": 3, "W": 4}
"""Latent dim of each axis in a ``[B, C, T, H, W]`` latent."""

SCHEDULE_MODES = ("rotate", "T", "H", "W", "unite")
RAMPS = ("linear", "cosine")
FULL = "full"
"""Axis string of an exact full-latent step (step 0 of the ``"unite"`` schedule)."""

# floor(r * c) with a relative tolerance, so a ratio written in decimal gives the intended integer
# (0.29 * 100 = 28.999999999999996 -> 29). The artifact's int() truncation differs only in such cases.
_FLOOR_EPS = 1e-9


# ----------------------------------------------------------------------------------------------------
# validation helpers


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_overlap(overlap, k: int) -> float:
    try:
        r = float(overlap)
    except (TypeError, ValueError):
        raise ValueError(f"overlap must be a number in [0, K-1], got {overlap!r}") from None
    if not math.isfinite(r) or r < 0.0 or r > k - 1:
        raise ValueError(
            f"overlap r={overlap} is outside [0, K-1] = [0, {k - 1}] for K={k} devices: r=0 gives disjoint "
            f"windows and r=K-1 already makes every window the whole axis; pick r in that range"
        )
    return r


def overlap_patches(overlap: float, core: int) -> int:
    """``floor(overlap * core)`` patches per side (with a 1e-9 relative tolerance against decimal
    round-off, e.g. ``0.29 * 100`` gives 29)."""
    x = float(overlap) * int(core)
    return int(math.floor(x + _FLOOR_EPS * max(1.0, abs(x))))


def _readonly(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64)
    a.setflags(write=False)
    return a


# ----------------------------------------------------------------------------------------------------
# partitions


@dataclasses.dataclass(frozen=True, eq=False)
class Partition:
    """A uniform-length LP partition of one axis (see :func:`uniform_windows`).

    Fields are in units of ``unit`` latent indices: patches when ``unit == 1`` (as returned by
    :func:`uniform_windows`), latent indices after :meth:`in_latent`.

    n: axis length; k: number of devices; overlap: the ratio r; o: overlap per side;
    length: the window length shared by all devices: the longest of the paper's clipped windows (§3.1);
    core_start, core_end, win_start, win_end: ``[K]`` int64 read-only arrays, device ``k``'s core
    ``[core_start[k], core_end[k])`` and window ``[win_start[k], win_end[k])``.

    Guarantees: cores tile ``[0, n)`` in order and their lengths differ by at most 1 unit-of-patch;
    ``win_end - win_start == length`` for every device; ``0 <= win_start <= core_start`` and
    ``core_end <= win_end <= n``.
    """

    n: int
    k: int
    overlap: float
    o: int
    length: int
    core_start: np.ndarray
    core_end: np.ndarray
    win_start: np.ndarray
    win_end: np.ndarray
    unit: int = 1

    @property
    def core_len(self) -> np.ndarray:
        """``[K]`` core lengths."""
        return self.core_end - self.core_start

    @property
    def full(self) -> bool:
        """True when every window is the whole axis (full overlap; each device sees the whole latent)."""
        return self.length == self.n

    def in_latent(self, patch_size: int) -> Partition:
        """The same partition in latent indices along the axis (every field times ``patch_size``)."""
        if self.unit != 1:
            raise ValueError(f"partition is already in latent units (unit={self.unit}); call in_latent on "
                             "the patch-unit partition returned by uniform_windows")
        p = _check_int("patch_size", patch_size, 1)
        return Partition(self.n * p, self.k, self.overlap, self.o * p, self.length * p,
                         _readonly(self.core_start * p), _readonly(self.core_end * p),
                         _readonly(self.win_start * p), _readonly(self.win_end * p), unit=p)


def uniform_windows(n_patches: int, K: int, overlap: float) -> Partition:
    """The run-time (SPMD) partition of an axis of ``n_patches`` patches over ``K`` devices.

    * Cores are balanced: device ``k`` owns patches ``[floor(k*n/K), floor((k+1)*n/K))``, so no device is
      idle and core lengths are ``floor(n/K)`` or ``ceil(n/K)``.
    * The overlap per side is ``o = floor(overlap * c)`` with ``c = ceil(n/K)`` the **largest** core
      length; this ``c`` is the paper's core length, so ``o`` equals the paper's overlap. The shared window
      length ``L`` is the longest of the paper's clipped windows ``[max(0, k*c - o), min(n, (k+1)*c + o))``
      (:func:`paper_windows`): ``c + 2*o`` when an interior window exists (K >= 3 and it fits), ``c + o``
      at K = 2 (both windows are edge windows), never more than ``n``.
    * Every window has length ``L``. Window ``k`` starts at ``core_start[k] - o``, clamped into
      ``[0, n - L]``; a shorter core (``c - 1``) thus gets one extra patch after its core. The clamp only
      moves a window towards the interior, so every window contains its core, and also contains
      ``[core_start - o, core_end + o]`` clipped to the axis (the paper's window around this core).

    Returns a :class:`Partition` in patch units. Raises ValueError for ``K < 1``, ``K > n_patches`` (an
    axis with fewer patches than devices cannot give every device a core; partition another axis, as
    :func:`axis_schedule` does) and ``overlap`` outside ``[0, K-1]``.
    """
    k = _check_int("K (number of LP devices)", K, 1)
    n = _check_int("n_patches", n_patches, 1)
    if k > n:
        raise ValueError(
            f"cannot split an axis of {n} patches over K={k} devices (every device needs at least one "
            f"patch of core): partition an axis with at least {k} patches, or use fewer LP devices"
        )
    r = _check_overlap(overlap, k)
    idx = np.arange(k + 1, dtype=np.int64)
    bounds = (idx * n) // k
    core_start, core_end = bounds[:-1], bounds[1:]
    c = -(-n // k)
    o = overlap_patches(r, c)
    length = int(paper_windows(n, k, r).lengths.max())
    win_start = np.clip(core_start - o, 0, n - length)
    win_end = win_start + length
    return Partition(n, k, r, o, length, _readonly(core_start), _readonly(core_end),
                     _readonly(win_start), _readonly(win_end))


@dataclasses.dataclass(frozen=True, eq=False)
class PaperWindows:
    """The paper's slicing of one axis (see :func:`paper_windows`), in patch units.

    n, k, overlap: inputs; c: core length ``ceil(n/K)`` (1 if ``n < K``); o: ``floor(overlap*c)``;
    core_start, core_end, win_start, win_end: ``[M]`` int64 arrays for the ``M <= K`` non-empty windows
    (cores clipped to the axis, so a kept window can have an empty core when ``k*c >= n``).
    """

    n: int
    k: int
    overlap: float
    c: int
    o: int
    core_start: np.ndarray
    core_end: np.ndarray
    win_start: np.ndarray
    win_end: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """``[M]`` window lengths in patches."""
        return self.win_end - self.win_start


def paper_windows(n_patches: int, K: int, overlap: float) -> PaperWindows:
    """The slicing of the LP paper (§3.1) and of its artifact, for accounting and tests.

    Core length ``c = ceil(n/K)`` (1 if ``n < K``), ``o = floor(overlap * c)``; slab ``k`` has core
    ``[k*c, min((k+1)*c, n))`` and window ``[max(0, k*c - o), min(n, (k+1)*c + o))``. Windows are
    clipped at the borders (edge windows are shorter) and empty windows are dropped, so fewer than ``K``
    windows can come back (devices idle). Raises ValueError for ``K < 1`` or ``overlap`` outside
    ``[0, K-1]``.
    """
    k = _check_int("K (number of LP devices)", K, 1)
    n = _check_int("n_patches", n_patches, 1)
    r = _check_overlap(overlap, k)
    c = 1 if n < k else -(-n // k)
    o = overlap_patches(r, c)
    cs, ce, ws, we = [], [], [], []
    for j in range(k):
        s, e = j * c, (j + 1) * c
        a, b = max(0, s - o), min(n, e + o)
        if a < b:
            cs.append(min(s, n))
            ce.append(min(e, n))
            ws.append(a)
            we.append(b)
    return PaperWindows(n, k, r, c, o, _readonly(cs), _readonly(ce), _readonly(ws), _readonly(we))


# ----------------------------------------------------------------------------------------------------
# blend weights


def _ramp(values: np.ndarray, ramp: str) -> np.ndarray:
    if ramp == "linear":
        return values
    return 0.5 * (1.0 - np.cos(np.pi * values))


def _raw_axis_weights(part: Partition, p: int, ramp: str) -> np.ndarray:
    """``[K, n*p]`` float64 unnormalised weights of every window over the whole axis (0 outside)."""
    n_lat = part.n * p
    w = np.zeros((part.k, n_lat), np.float64)
    if part.full:
        w[:] = 1.0
        return w
    x = np.arange(n_lat)
    cl = part.core_len
    for j in range(part.k):
        s, e = int(part.core_start[j]) * p, int(part.core_end[j]) * p
        w[j, s:e] = 1.0
        # ramp length on each side: the overlap o, capped at the neighbouring core on that side
        # (0 at the axis borders), in latent indices
        front = p * min(part.o, int(cl[j - 1])) if j > 0 else 0
        rear = p * min(part.o, int(cl[j + 1])) if j + 1 < part.k else 0
        for length, dist in ((front, s - x), (rear, x - (e - 1))):
            if length > 0:
                sel = (dist >= 1) & (dist <= length)
                w[j, sel] = _ramp(1.0 - dist[sel] / (length + 1.0), ramp)
    return w


def axis_weights(partition: Partition, patch_size: int, ramp: str = "linear", *,
                 normalise: bool = True) -> np.ndarray:
    """``[K, n*p]`` float64 blend weights of every window over the **whole axis** (latent indices),
    zero outside each window; normalised (column sums exactly 1 up to float64 rounding) by default.

    See :func:`blend_weights` for the weight rule; this is the same map before it is cut to windows.
    """
    part = _check_partition(partition)
    p = _check_int("patch_size", patch_size, 1)
    if ramp not in RAMPS:
        raise ValueError(f"ramp must be one of {RAMPS}, got {ramp!r}")
    w = _raw_axis_weights(part, p, ramp)
    if normalise:
        w = w / w.sum(axis=0, keepdims=True)  # every index is in one core (weight 1), so the sum >= 1
    return w


def blend_weights(partition: Partition, patch_size: int, ramp: str = "linear", *,
                  normalise: bool = True, dtype=np.float32) -> np.ndarray:
    """Each device's blend weight over the latent indices of **its window**: ``[K, length*p]``.

    ``partition`` is a patch-unit :class:`Partition` from :func:`uniform_windows`; ``patch_size`` the
    DiT patch size ``p`` along its axis. Entry ``[k, j]`` weights device ``k``'s prediction at latent
    index ``win_start[k]*p + j``; the weight depends only on that index (broadcast over the other axes).

    Rule (unnormalised ``w_k``), per latent index ``x``:

    * ``w_k = 1`` on device ``k``'s core;
    * on each side, over the ``A = p * min(o, neighbouring core length)`` latent indices next to the core
      (``A = 0`` at the axis borders), the index at distance ``d = 1 … A`` from the core gets
      ``rho(1 - d/(A+1))``: ``rho(u) = u`` for ``ramp="linear"`` (the paper, §3.4) or
      ``rho(u) = (1 - cos(pi*u))/2`` for ``ramp="cosine"`` (the artifact's raised cosine, §4.5). Both
      endpoints are excluded: the ramp would reach 1 at ``d = 0`` (the core edge) and 0 at ``d = A+1``,
      so every ramp index gets a weight strictly in (0, 1) (unlike the artifact, no index of an overlap
      gets weight 0) and the weight is continuous into the core;
    * ``w_k = 0`` elsewhere in the window: the context a window has beyond that (from sharing one
      length and clamping at the borders) feeds attention but its prediction is not used.
    * If every window is the whole axis (``partition.full``: full overlap, or ``K = 1``), ``w_k = 1``
      for every device: the K predictions are then identical up to rounding and are simply averaged.

    With ``normalise=True`` (default) the result is ``w_k / sum_j w_j`` (computed in float64, cut back to
    window coordinates, then cast to ``dtype``), so device code multiplies its prediction by it and one
    ``psum`` gives the blended prediction. Guarantees: weights >= 0; placed at their window offsets they
    sum to 1 at every latent index; a full partition gives exactly ``1/K`` everywhere (``K = 1``: 1);
    each core index gets >= 1/2 from its own window unless the partition is full (only the two
    neighbouring windows reach a core, with ramps no longer than it, and ``rho(u) + rho(1-u) = 1``).
    """
    part = _check_partition(partition)
    p = _check_int("patch_size", patch_size, 1)
    w = axis_weights(part, p, ramp, normalise=normalise)
    length = part.length * p
    out = np.empty((part.k, length), np.float64)
    for j in range(part.k):
        s = int(part.win_start[j]) * p
        out[j] = w[j, s:s + length]
    return out.astype(dtype)


def _check_partition(partition) -> Partition:
    if not isinstance(partition, Partition):
        raise ValueError(f"expected a Partition from uniform_windows, got {type(partition).__name__}")
    if partition.unit != 1:
        raise ValueError("blend weights take the patch-unit partition returned by uniform_windows, "
                         f"not one converted with in_latent (unit={partition.unit})")
    return partition


# ----------------------------------------------------------------------------------------------------
# positions and grids


def window_token_offsets(partition: Partition, axis: str) -> np.ndarray:
    """``[K, 3]`` int64 token offsets ``(t, h, w)`` of each device's window in the full token grid.

    The entry of ``axis`` is the window's start in tokens (its latent start divided by the patch size,
    i.e. ``win_start`` in patches); the other two are 0. Adding it to a window's local token coordinates
    gives the global ones, so RoPE sees the same positions as in the full video.
    """
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    part = _check_partition(partition)
    off = np.zeros((part.k, 3), np.int64)
    off[:, AXES.index(axis)] = part.win_start
    return off


def patch_grid(latent_shape: Sequence[int], patch: Sequence[int]) -> dict[str, int]:
    """Patches per axis ``{"T": n_T, "H": n_H, "W": n_W}`` of a latent ``[B, C, T, H, W]`` (or
    ``[T, H, W]``) under DiT patch sizes ``patch = (p_T, p_H, p_W)``.

    Raises ValueError naming the axis when a latent size is not a multiple of its patch size.
    """
    dims = tuple(int(d) for d in latent_shape[-3:])
    if len(dims) != 3 or len(patch) != 3:
        raise ValueError(f"need a latent [..., T, H, W] and a 3-axis patch, got {tuple(latent_shape)} / {patch}")
    grid = {}
    for name, d, p in zip(AXES, dims, patch):
        p = _check_int(f"patch size along {name}", p, 1)
        if d % p:
            raise ValueError(f"latent {name} size {d} is not a multiple of the patch size {p} along {name}; "
                             f"use a video size whose latent {name} is a multiple of {p}")
        grid[name] = d // p
    return grid


# ----------------------------------------------------------------------------------------------------
# schedules


def _grid_dict(grid_patches) -> dict[str, int]:
    if isinstance(grid_patches, Mapping):
        missing = [a for a in AXES if a not in grid_patches]
        if missing:
            raise ValueError(f"grid_patches needs the patch counts of axes {AXES}, missing {missing}")
        vals = [grid_patches[a] for a in AXES]
    else:
        vals = list(grid_patches)
        if len(vals) != 3:
            raise ValueError(f"grid_patches must be (n_T, n_H, n_W), got {grid_patches!r}")
    return {a: _check_int(f"patches along {a}", v, 1) for a, v in zip(AXES, vals)}


def axis_schedule(num_steps: int, grid_patches: Mapping[str, int] | Sequence[int], K: int,
                  mode: str = "rotate") -> list[str]:
    """The partition axis of each denoising step ``i = 0 … num_steps-1``: a list of ``"T"``, ``"H"``,
    ``"W"`` (or ``"full"`` for an exact full-latent step).

    ``grid_patches``: patches per axis, ``{"T": n_T, "H": n_H, "W": n_W}`` or ``(n_T, n_H, n_W)``.
    An axis is *usable* when it has at least ``K`` patches.

    * ``"rotate"`` (the paper): step ``i`` takes ``("T", "H", "W")[i % 3]``; if that axis is not usable,
      the next usable one after it in the cycle T → H → W → T.
    * ``"T"`` / ``"H"`` / ``"W"``: that axis at every step (it must be usable).
    * ``"unite"`` (the NSDI artifact, spec §4.2), with ``p = i / max(S-1, 1)``: step 0 is ``"full"``;
      for ``i >= 1``: if ``p >= 0.92``, H (else W if usable); otherwise if ``p >= 0.80``, H for even
      ``i`` and W for odd ``i`` (else the other of the two if usable); otherwise the base rotation
      ``("T", "H", "W")[i % 3]`` (i = 1 → H, 2 → W, 3 → T), falling back to H then W when not usable,
      and with T turned into H (else W) once ``p >= 0.70``. Where the artifact would cut an unusable
      axis (H and W both too short), T is used instead. For S = 50: steps 1–34 rotate H, W, T, …;
      35–39 use H and W only; 40–45 alternate H (even) / W (odd); 46–49 use H.

    Raises ValueError for an unknown mode, ``num_steps < 1``, ``K < 1``, or when no allowed axis has
    ``K`` patches (the message names the patch counts).
    """
    s = _check_int("num_steps", num_steps, 1)
    k = _check_int("K (number of LP devices)", K, 1)
    grid = _grid_dict(grid_patches)
    if mode not in SCHEDULE_MODES:
        raise ValueError(f"LP schedule mode must be one of {SCHEDULE_MODES}, got {mode!r}")
    usable = {a: grid[a] >= k for a in AXES}
    sizes = ", ".join(f"{a}={grid[a]}" for a in AXES)
    if mode in AXES:
        if not usable[mode]:
            raise ValueError(f"cannot partition axis {mode} over K={k} devices: it has {grid[mode]} patches "
                             f"(patch grid {sizes}); pick an axis with at least {k} patches or fewer devices")
        return [mode] * s
    if not any(usable.values()):
        raise ValueError(f"no axis has at least K={k} patches (patch grid {sizes}): Latent Parallelism "
                         "needs one patch of core per device; use fewer LP devices or a larger video")
    if mode == "rotate":
        out = []
        for i in range(s):
            j = i % 3
            out.append(next(AXES[(j + d) % 3] for d in range(3) if usable[AXES[(j + d) % 3]]))
        return out
    return [_unite_axis(i, s, usable) for i in range(s)]


def _unite_axis(i: int, s: int, usable: dict[str, bool]) -> str:
    if i == 0:
        return FULL
    p = i / max(s - 1, 1)
    if p >= 0.92:
        for a in ("H", "W"):
            if usable[a]:
                return a
    if p >= 0.80:
        first, second = ("H", "W") if i % 2 == 0 else ("W", "H")
        for a in (first, second):
            if usable[a]:
                return a
    cand = AXES[i % 3]
    if not usable[cand]:
        cand = next((a for a in ("H", "W") if usable[a] and a != cand), "T")
    if p >= 0.70 and cand == "T":
        for a in ("H", "W"):
            if usable[a]:
                return a
    return cand


def unite_overlap(step: int, num_steps: int, r_max: float) -> float:
    """The unite schedule's overlap ratio at ``step``: ``r_max*(1-p) + 0.5*r_max*p`` with
    ``p = step / max(num_steps-1, 1)``, decaying linearly from ``r_max`` to ``r_max/2``."""
    s = _check_int("num_steps", num_steps, 1)
    i = _check_int("step", step, 0)
    if i >= s:
        raise ValueError(f"step {i} is outside [0, num_steps) = [0, {s})")
    r = float(r_max)
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"r_max must be a finite number >= 0, got {r_max!r}")
    p = i / max(s - 1, 1)
    return r * (1.0 - p) + 0.5 * r * p


# ----------------------------------------------------------------------------------------------------
# communication accounting


def paper_comm_mib(frames: int, K: int = 4, overlap: float = 0.5, steps: int = 60, height: int = 480,
                   width: int = 832, vae_stride: Sequence[int] = (4, 8, 8), patch: Sequence[int] = (1, 2, 2),
                   channels: int = 16) -> float:
    """The LP paper's communication total in MiB (§3.5): ``sum over steps of 4 B * (|z| + 2 * sum_k |z_k|)``.

    ``|z| = channels * T * H * W`` with ``T = (frames-1)/stride_T + 1``, ``H = height/stride_H``,
    ``W = width/stride_W``; ``|z_k|`` the element count of window ``k`` of :func:`paper_windows` along
    the step's axis, the axes cycling T, H, W from the first step. Defaults are the paper's setting
    (Wan2.1-1.3B, 480p, 4 GPUs, 60 steps, r = 0.5); it gives 1354.34 / 2191.29 MiB at 49 / 81 frames.
    Raises ValueError for sizes that are not multiples of the VAE stride or patch.
    """
    f = _check_int("frames", frames, 1)
    st, sh, sw = (_check_int("vae_stride", v, 1) for v in vae_stride)
    n_steps = _check_int("steps", steps, 1)
    c = _check_int("channels", channels, 1)
    if (f - 1) % st:
        raise ValueError(f"frames={f} is not 1 + a multiple of the temporal VAE stride {st}; "
                         f"use e.g. {f - (f - 1) % st}")
    for name, size, stride in (("height", height, sh), ("width", width, sw)):
        if size % stride:
            raise ValueError(f"{name}={size} is not a multiple of the VAE stride {stride}")
    dims = ((f - 1) // st + 1, height // sh, width // sw)
    grid = patch_grid(dims, patch)
    z = c * dims[0] * dims[1] * dims[2]
    per_axis = {}
    for a, d, p in zip(AXES, dims, patch):
        win = paper_windows(grid[a], K, overlap)
        per_axis[a] = int(win.lengths.sum()) * int(p) * (z // d)
    total = sum(z + 2 * per_axis[AXES[i % 3]] for i in range(n_steps))
    return 4.0 * total / 2.0**20


def lp_psum_bytes_per_device(latent_shape: Sequence[int], K: int, dtype_bytes: int = 4) -> float:
    """Bytes each device sends per LP step at run time: one ring all-reduce of the full latent,
    ``2 (K-1)/K * |z| * dtype_bytes`` (0 for K = 1). ``latent_shape`` is the full latent shape."""
    k = _check_int("K (number of LP devices)", K, 1)
    b = _check_int("dtype_bytes", dtype_bytes, 1)
    size = int(np.prod([_check_int("latent dim", d, 1) for d in latent_shape]))
    return 2.0 * (k - 1) / k * size * b
