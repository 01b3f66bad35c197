"""3-D rotary position embedding of Wan2.1, with explicit positions.

Each head of dimension ``Dh`` is split into a frame part of ``Dh - 4*(Dh//6)`` channels and height and
width parts of ``2*(Dh//6)`` channels each (44/42/42 for Dh = 128). Channel pairs ``(2i, 2i+1)`` are
rotated together by the angle ``pos_axis * theta**(-2j/d_axis)`` of their axis.

Positions are explicit integer (t, h, w) token coordinates, so a latent window (Latent Parallelism), a
block window (DualParal) and the full video all go through the same code: a window passes its global
offset and its tokens get exactly the rotation they have in the full grid. Angles are tabulated in
float64 on the host (as the reference does) and gathered by position, so offsets may be traced values.

The tables hold ``rope_max_seq_len`` positions per axis; a position outside ``[0, max_len)`` has no
rotation, and diffusers' Wan transformer fails on such a video (slicing its table comes up short). Here
it is never clipped: :func:`check_grid` raises for a token grid that does not fit (callers that know the
full video's grid call it on the host), :func:`rope_cos_sin` raises for concrete positions outside the
table, and for traced ones (a window at a traced offset) the rows outside the table come out NaN.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["axis_dims", "rope_tables", "grid_positions", "check_grid", "rope_cos_sin", "apply_rope"]

AXES = ("frame (t)", "height (h)", "width (w)")


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of the (t, h, w) parts of one head."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


@functools.lru_cache(maxsize=16)
def rope_tables(head_dim: int, max_len: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables, each float32 ``[3, max_len, Dh/2]`` (zero-padded per axis).

    Row ``a`` holds the per-pair angles of axis ``a`` (t, h, w) in its own columns; the three are
    concatenated in :func:`rope_cos_sin` after a gather by position.
    """
    dims = axis_dims(head_dim)
    half = head_dim // 2
    cos = np.zeros((3, max_len, half), np.float32)
    sin = np.zeros((3, max_len, half), np.float32)
    col = 0
    pos = np.arange(max_len, dtype=np.float64)
    for a, d in enumerate(dims):
        inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64)[: d // 2] / d)
        ang = np.outer(pos, inv)
        cos[a, :, col : col + d // 2] = np.cos(ang)
        sin[a, :, col : col + d // 2] = np.sin(ang)
        col += d // 2
    return cos, sin


def grid_positions(grid: tuple[int, int, int], offset=(0, 0, 0)) -> jax.Array:
    """Token coordinates of a (T', H', W') token grid in (t, h, w) order, int32 ``[T'*H'*W', 3]``.

    ``offset`` (ints, possibly traced) is added per axis: the grid's origin in the full video.
    Token order is frame-major then row then column, the order the patch embedding flattens to.
    """
    t, h, w = grid
    tt, hh, ww = jnp.meshgrid(jnp.arange(t), jnp.arange(h), jnp.arange(w), indexing="ij")
    pos = jnp.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)], axis=-1).astype(jnp.int32)
    return pos + jnp.asarray(offset, jnp.int32).reshape(1, 3)


def _check_range(lo, hi, max_len: int, what: str) -> None:
    """``lo``/``hi``: the smallest/largest position per axis (3 ints); ValueError for the first axis outside."""
    for axis, a, b in zip(AXES, lo, hi):
        if b >= max_len:
            raise ValueError(
                f"rotary positions on the {axis} axis reach {int(b)} ({what}), beyond the model's table of "
                f"{max_len} positions per axis (rope_max_seq_len: 0..{max_len - 1}); diffusers' Wan transformer "
                f"cannot run it either: use a smaller video (or a model with a longer table)")
        if a < 0:
            raise ValueError(f"rotary positions on the {axis} axis start at {int(a)} ({what}); they must be >= 0")


def check_grid(grid: tuple[int, int, int], max_len: int, offset=(0, 0, 0)) -> None:
    """Raises ValueError unless every token of a ``grid`` (T', H', W') at ``offset`` has a rotary position in
    ``[0, max_len)`` on each axis; the message names the axis, the largest position and the limit.

    Host-side (``grid``, ``offset`` and ``max_len`` are Python ints): call it wherever the full video's
    token grid is known statically, e.g. before tracing a strategy whose windows lie inside it.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    lo = [int(o) for o in offset]
    hi = [o + int(n) - 1 for o, n in zip(lo, grid)]
    _check_range(lo, hi, int(max_len), f"a token grid of {tuple(int(n) for n in grid)} at offset {tuple(lo)}")


def rope_cos_sin(positions: jax.Array, head_dim: int, max_len: int = 1024) -> tuple[jax.Array, jax.Array]:
    """Per-pair cos and sin for tokens at ``positions`` ``[S, 3]``: two float32 ``[S, Dh/2]`` arrays.

    Positions must lie in ``[0, max_len)`` (the reference model's table length): concrete positions
    outside it raise ValueError (naming the axis, the largest position and the limit); traced ones
    cannot be checked here, and a token outside the table gets NaN cos/sin rather than a clipped,
    plausible-looking rotation (check the full grid with :func:`check_grid` first).
    """
    try:
        concrete = np.asarray(positions)
    except (jax.errors.TracerArrayConversionError, RuntimeError):  # traced, or not all on this process
        concrete = None
    if concrete is not None and concrete.size:
        _check_range(concrete.min(axis=0), concrete.max(axis=0), max_len, f"{concrete.shape[0]} token positions")
    cos_t, sin_t = (jnp.asarray(a) for a in rope_tables(head_dim, max_len))

    # Out-of-table rows are NaN (negative positions too: jnp.take would wrap them around).
    idx = [jnp.where(positions[:, a] < 0, max_len, positions[:, a]) for a in range(3)]

    def gather(table):
        return sum(jnp.take(table[a], idx[a], axis=0, mode="fill", fill_value=np.nan) for a in range(3))

    return gather(cos_t), gather(sin_t)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates interleaved channel pairs of ``x`` ``[B, S, H, Dh]`` by ``cos``/``sin`` ``[S, Dh/2]``.

    Computed in float32, returned in ``x.dtype``.
    """
    dtype = x.dtype
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    x1, x2 = xf[..., 0], xf[..., 1]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    out = jnp.stack([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
    return out.reshape(x.shape).astype(dtype)
