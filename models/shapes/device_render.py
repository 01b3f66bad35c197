"""Renders shapes clips with JAX from spec arrays: the pictures of :func:`jaxvdm.models.shapes.data.render_batch`
(to float32 rounding), computed where the model trains.

A clip spec is a handful of numbers, its pixels are 196 KB (``16 x 32 x 32 x 3`` float32), so training
batches cross from the data workers to the accelerator as spec arrays (:func:`spec_arrays`, about 60 bytes
per shape) and :func:`render` draws them inside the jitted training step.

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


def render(arrays: dict, num_frames: int = 16, size: int = 32) -> jax.Array:
    """Clips ``[B, F, size, size, 3]`` float32 in ``[-1, 1]`` from spec arrays; jit-able (``num_frames`` and
    ``size`` static). Equal to ``data.render_batch`` of the same specs within float32 rounding (~1e-5)."""
    a = {k: jnp.asarray(v) for k, v in arrays.items()}
    f32 = jnp.float32
    t = jnp.linspace(0.0, 1.0, num_frames, dtype=f32) if num_frames > 1 else jnp.zeros(1, f32)
    r0, r1 = a["radius"].astype(f32), a["radius_end"].astype(f32)           # [B, K]
    centre = a["start"][:, :, None, :] + t[None, None, :, None] * a["velocity"][:, :, None, :]  # [B, K, F, 2]
    folded = _fold(centre, r0[:, :, None, None], 1 - r0[:, :, None, None])
    centre = jnp.where(a["bounce"][:, :, None, None], folded, centre) * size
    radius = (r0[:, :, None] + t[None, None, :] * (r1 - r0)[:, :, None]) * size  # [B, K, F]

    p = jnp.arange(size, dtype=f32) + 0.5
    dx = p[None, None, None, None, :] - centre[..., 0][..., None, None]      # [B, K, F, 1, W]
    dy = p[None, None, None, :, None] - centre[..., 1][..., None, None]      # [B, K, F, H, 1]
    r = radius[..., None, None]
    sdf = jnp.stack([jnp.sqrt(dx * dx + dy * dy) - r,
                     jnp.maximum(jnp.abs(dx), jnp.abs(dy)) - r,
                     jnp.maximum(dy - r, (2 * jnp.abs(dx) - dy - r) * f32(1 / math.sqrt(5)))], axis=0)
    sdf = jnp.take_along_axis(sdf, a["shape"][None, :, :, None, None, None], axis=0)[0]  # [B, K, F, H, W]
    alpha = jnp.clip(f32(0.5) - sdf, 0.0, 1.0) * a["present"][:, :, None, None, None]

    q = (jnp.arange(size, dtype=f32) + 0.5) / size - 0.5
    c, s = jnp.cos(a["bg_angle"]), jnp.sin(a["bg_angle"])
    u = ((q[None, None, :] * c[:, None, None] + q[None, :, None] * s[:, None, None])
         / (jnp.abs(c) + jnp.abs(s))[:, None, None] + 0.5)
    lo, hi = a["bg_lo"][:, None, None], a["bg_hi"][:, None, None]
    grey = jnp.where(lo == hi, lo, lo + (hi - lo) * u) * 2 - 1                # [B, H, W]
    img = jnp.broadcast_to(grey[:, None, :, :, None], (grey.shape[0], num_frames, size, size, 3))
    for k in range(alpha.shape[1]):
        colour = a["colour"][:, k][:, None, None, None, :] * 2 - 1            # [B, 1, 1, 1, 3]
        img = img + alpha[:, k][..., None] * (colour - img)
    return img
