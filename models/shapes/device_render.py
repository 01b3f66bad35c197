"""Renders shapes clips with JAX from spec arrays: the pictures of :func:`jaxvdm.models.shapes.data.render_batch`
(to float32 rounding), computed where the model trains.

A clip spec is a handful of numbers, its pixels are 196 KB (``16 x 32 x 32 x 3`` float32), so training
batches cross from the data workers to the accelerator as spec arrays (:func:`spec_arrays`, about 60 bytes
per shape) and :func:`render` draws them inside the jitted training step: whole clips of any size, or a
window of a longer and larger whole clip (its start and whole traced, so one compile serves every position).

Spec arrays (``B`` clips, ``K`` shapes per clip, absent shapes have ``present = False``):

    shape [B, K] int32 (index in data.SHAPES)      colour [B, K, 3] float32 (RGB in [0, 1])
    start, velocity [B, K, 2] float32 (x, y)        radius, radius_end [B, K] float32
    bounce, present [B, K] bool                     bg_lo, bg_hi, bg_angle [B] float32
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxvdm.models.shapes import data

__all__ = ["SPEC_FIELDS", "spec_arrays", "render"]

SPEC_FIELDS = ("shape", "colour", "start", "velocity", "radius", "radius_end", "bounce", "present",
               "bg_lo", "bg_hi", "bg_angle")


def spec_arrays(specs: list[data.ClipSpec], max_objects: int | None = None) -> dict[str, np.ndarray]:
    """The spec arrays of ``specs`` (see the module docstring), ``K = max_objects`` or the most shapes of a
    clip in ``specs``. Raises ValueError on an unknown shape, colour or background, or too many shapes."""
    k_max = max_objects or max((len(s.objects) for s in specs), default=1)
    b = len(specs)
    out = {"shape": np.zeros((b, k_max), np.int32), "colour": np.zeros((b, k_max, 3), np.float32),
           "start": np.zeros((b, k_max, 2), np.float32), "velocity": np.zeros((b, k_max, 2), np.float32),
           "radius": np.zeros((b, k_max), np.float32), "radius_end": np.zeros((b, k_max), np.float32),
           "bounce": np.zeros((b, k_max), bool), "present": np.zeros((b, k_max), bool),
           "bg_lo": np.zeros(b, np.float32), "bg_hi": np.zeros(b, np.float32), "bg_angle": np.zeros(b, np.float32)}
    for i, s in enumerate(specs):
        if len(s.objects) > k_max:
            raise ValueError(f"spec {i} has {len(s.objects)} shapes; max_objects is {k_max}")
        if s.background not in data.BACKGROUND_LEVELS:
            raise ValueError(f"unknown background {s.background!r}; choose from {list(data.BACKGROUNDS)}")
        out["bg_lo"][i], out["bg_hi"][i] = data.BACKGROUND_LEVELS[s.background]
        out["bg_angle"][i] = s.bg_angle
        for k, o in enumerate(s.objects):
            if o.shape not in data.SHAPES or o.colour not in data.COLOURS:
                raise ValueError(f"unknown shape or colour ({o.shape!r}, {o.colour!r}); choose from "
                                 f"{list(data.SHAPES)} and {list(data.COLOURS)}")
            out["shape"][i, k] = data.SHAPES.index(o.shape)
            out["colour"][i, k] = data.COLOURS[o.colour]
            out["start"][i, k], out["velocity"][i, k] = o.start, o.velocity
            out["radius"][i, k], out["radius_end"][i, k] = o.radius, o.radius_end
            out["bounce"][i, k] = o.motion.startswith("bounce")
            out["present"][i, k] = True
    return out


def _fold(u, lo, hi):
    span = hi - lo
    v = jnp.mod(u - lo, 2 * span)
    return lo + jnp.where(v > span, 2 * span - v, v)


def render(arrays: dict, num_frames: int = 16, size: int = 32, *, height: int | None = None, width: int | None = None,
           whole=None, start=None) -> jax.Array:
    """Clips ``[B, f, h, w, 3]`` float32 in ``[-1, 1]`` from spec arrays; jit-able.

    ``(f, h, w) = (num_frames, height or size, width or size)`` are the rendered clip's dimensions (static).
    With ``whole = (F, H, W)`` and ``start = (t, y, x)`` (may be traced: one compile serves every window of
    one size) the clip is the window of frames ``[t, t+f)``, rows ``[y, y+h)`` and columns ``[x, x+w)`` of a
    whole ``F x H x W`` clip; by default the whole clip is the rendered one. Equal to
    ``data.render_batch(specs, F, height=H, width=W, window=data.Window(start, (f, h, w)))`` within float32
    rounding (~1e-5). The specs must have been drawn for the whole's aspect ``H / W`` (the numpy renderer
    checks it; this one cannot, on traced values).
    """
    f, h, w = num_frames, height or size, width or size
    a = {k: jnp.asarray(v) for k, v in arrays.items()}
    f32 = jnp.float32
    whole = jnp.asarray((f, h, w) if whole is None else whole, f32)
    start = jnp.asarray((0, 0, 0) if start is None else start, f32)
    n_t, n_h, n_w = whole[0], whole[1], whole[2]
    frames = start[0] + jnp.arange(f, dtype=f32)
    t = jnp.where(n_t > 1, frames / jnp.maximum(n_t - 1, 1), 0.0)
    short = jnp.minimum(n_h, n_w)
    scale = jnp.stack([short / n_w, short / n_h])                              # half-extent per axis
    r0, r1 = a["radius"].astype(f32), a["radius_end"].astype(f32)           # [B, K]
    centre = a["start"][:, :, None, :] + t[None, None, :, None] * a["velocity"][:, :, None, :]  # [B, K, f, 2]
    wall = r0[:, :, None, None] * scale
    folded = _fold(centre, wall, 1 - wall)
    centre = jnp.where(a["bounce"][:, :, None, None], folded, centre)
    cx = centre[..., 0] * n_w - start[2]
    cy = centre[..., 1] * n_h - start[1]
    radius = (r0[:, :, None] + t[None, None, :] * (r1 - r0)[:, :, None]) * short  # [B, K, f]

    px = jnp.arange(w, dtype=f32) + 0.5
    py = jnp.arange(h, dtype=f32) + 0.5
    dx = px[None, None, None, None, :] - cx[..., None, None]                 # [B, K, f, 1, w]
    dy = py[None, None, None, :, None] - cy[..., None, None]                 # [B, K, f, h, 1]
    r = radius[..., None, None]
    sdf = jnp.stack([jnp.sqrt(dx * dx + dy * dy) - r,
                     jnp.maximum(jnp.abs(dx), jnp.abs(dy)) - r,
                     jnp.maximum(dy - r, (2 * jnp.abs(dx) - dy - r) * f32(1 / math.sqrt(5)))], axis=0)
    sdf = jnp.take_along_axis(sdf, a["shape"][None, :, :, None, None, None], axis=0)[0]  # [B, K, f, h, w]
    alpha = jnp.clip(f32(0.5) - sdf, 0.0, 1.0) * a["present"][:, :, None, None, None]

    qx = (start[2] + px) / n_w - 0.5
    qy = (start[1] + py) / n_h - 0.5
    c, s = jnp.cos(a["bg_angle"]), jnp.sin(a["bg_angle"])
    u = ((qx[None, None, :] * c[:, None, None] + qy[None, :, None] * s[:, None, None])
         / (jnp.abs(c) + jnp.abs(s))[:, None, None] + 0.5)
    lo, hi = a["bg_lo"][:, None, None], a["bg_hi"][:, None, None]
    grey = jnp.where(lo == hi, lo, lo + (hi - lo) * u) * 2 - 1                # [B, h, w]
    img = jnp.broadcast_to(grey[:, None, :, :, None], (grey.shape[0], f, h, w, 3))
    for k in range(alpha.shape[1]):
        colour = a["colour"][:, k][:, None, None, None, :] * 2 - 1            # [B, 1, 1, 1, 3]
        img = img + alpha[:, k][..., None] * (colour - img)
    return img
