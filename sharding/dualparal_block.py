"""DualParal's block algorithm, one forward at a time: the block geometry, coordinated noise, the layer
split into stages, and the pieces of one block-window forward (embedding, layers with the feature cache,
head with guidance, the block's scheduler update). :mod:`jaxvdm.sharding.dualparal` runs them serially
(the oracle) or pipelined (:mod:`jaxvdm.sharding.dualparal_pipeline`); the method is described there.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from jaxvdm.models.wan import rope as rope_lib
from jaxvdm.models.wan.attention import cross_attention_backend
from jaxvdm.models.wan.transformer.model import Conditioning, ExtraKV, WanTransformer, unpatchify
from jaxvdm.sharding.dualparal_schedule import block_layout, noise_pool_order
from jaxvdm.sharding.predict import guide

__all__ = ["Geometry", "geometry", "coordinated_noise", "stage_layers", "embed_window", "window_layers",
           "window_head", "update_block", "empty_cache"]


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Static sizes of a DualParal run (latent frames unless stated)."""

    B: int
    C: int
    num_blocks: int
    total: int
    grid: tuple[int, int, int]  # token grid of one window (B+C, h', w')
    tokens_per_frame: int
    patch: tuple[int, int, int]

    @property
    def window(self) -> int:
        return self.B + self.C

    @property
    def window_shape(self) -> tuple[int, int, int]:
        """``(B + C, H, W)``: the latent size of every block-window forward."""
        return (self.window, self.grid[1] * self.patch[1], self.grid[2] * self.patch[2])

    def start(self, k):
        return k * self.B

    def frame_mask(self, k) -> jax.Array:
        """``[B+C]`` bool: which window frames block ``k`` owns (all for block 0, the last B otherwise)."""
        f = jnp.arange(self.window)
        return (f >= self.C) | (k == 0)

    @property
    def capture(self) -> tuple[int, int] | None:
        """Token range of the first C own frames (what the predecessor's forward will attend to)."""
        if self.C == 0:
            return None
        return self.C * self.tokens_per_frame, 2 * self.C * self.tokens_per_frame


def geometry(latent_shape, patch, block_frames: int, context_frames: int, *, vae_stride_t: int = 4) -> Geometry:
    """Validates the block layout for a latent ``[1, C, T, H, W]`` and returns its geometry
    (``vae_stride_t`` only words the error message in video frames)."""
    t, h, w = (int(v) for v in latent_shape[2:])
    pt, ph, pw = patch
    if pt != 1:
        raise ValueError(f"dualparal needs a temporal patch size of 1, got {pt}")
    layout = block_layout(t, block_frames, context_frames, vae_stride_t=vae_stride_t)
    B, C = layout.B, layout.C
    return Geometry(B=B, C=C, num_blocks=layout.num_blocks, total=t, grid=(B + C, h // ph, w // pw),
                    tokens_per_frame=(h // ph) * (w // pw), patch=tuple(patch))


def coordinated_noise(noise: jax.Array, geo: Geometry, seed: int) -> jax.Array:
    """The initial latent video built from a pool: the first ``B + C`` frames of ``noise``, permuted per
    block with permutations drawn from ``seed`` (see ``noise_pool_order``)."""
    pool = noise[:, :, : geo.window]
    order = noise_pool_order(geo.num_blocks, geo.B, geo.C, seed)
    parts = [jnp.take(pool, jnp.asarray(idx), axis=2) for idx in order]
    return jnp.concatenate(parts, axis=2)


# ------------------------------------------------------------------------------------------ one forward


def _rope(model: WanTransformer, geo: Geometry):
    """Window queries at frames 0..B+C-1; cached keys at frames B+C..B+2C-1."""
    cos, sin = model.rope(rope_lib.grid_positions(geo.grid))
    extra_grid = (geo.C, geo.grid[1], geo.grid[2])
    cos_e, sin_e = model.rope(rope_lib.grid_positions(extra_grid, (geo.window, 0, 0)))
    return cos, sin, cos_e, sin_e


def embed_window(model: WanTransformer, xw, ctx):
    """Tokens of a window, batched for guidance: ``[b, S, D]`` (b = 2 with guidance)."""
    tokens = model.embed_tokens(xw)
    return jnp.broadcast_to(tokens, (ctx.shape[0],) + tokens.shape[1:])


def window_layers(model, h, t, ctx, geo, cache, read, *, attention=None, layers=None, block_state=None,
                  layer_valid=None):
    """Runs layers over window hidden states ``h [b, S, D]`` at timestep ``t``; returns ``(h, (k, v))``.

    ``cache = (k, v)`` each ``[n_layers, b, C*hw, D]`` is the successor's cached keys/values, used when
    ``read`` is True; the returned pair is this window's (its first C own frames), for the predecessor.
    """
    temb, tproj, context = model.embed_condition(jnp.full((h.shape[0],), t, jnp.float32), ctx)
    cos, sin, cos_e, sin_e = _rope(model, geo)
    extra = None
    if geo.C > 0:
        extra = ExtraKV(cache[0], cache[1], cos_e, sin_e, jnp.asarray(read))
    out = model.run_blocks(h, Conditioning(tproj, context, cos, sin), layers=layers, self_attention=attention,
                           cross_attention=cross_attention_backend(attention), extra=extra, capture=geo.capture,
                           block_state=block_state, layer_valid=layer_valid)
    if geo.C == 0:
        return out, cache
    return out


def window_head(model, h, t, ctx, guidance, geo):
    """Head and guidance: ``[b, S, D] -> guided velocity [1, Cch, B+C, h, w]`` (float32)."""
    temb, _, _ = model.embed_condition(jnp.full((h.shape[0],), t, jnp.float32), ctx)
    cfg = model.config
    v = unpatchify(model.head_tokens(h, temb), geo.grid, cfg.patch_size, cfg.out_channels)
    if v.shape[0] == 2:
        v = guide(v[0:1], v[1:2], guidance)
    return v


def update_block(scheduler, x, sstate, v, k, d, geo: Geometry):
    """Applies block ``k``'s step ``d`` with window prediction ``v`` to the latent video and solver state."""
    start = geo.start(k)
    xw = lax.dynamic_slice_in_dim(x, start, geo.window, axis=2)
    sw = jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, geo.window, axis=2), sstate)
    xn, sn = scheduler.step(sw, v, xw, d)
    m = geo.frame_mask(k)[None, None, :, None, None]
    xn = jnp.where(m, xn, xw)
    sn = jax.tree.map(lambda new, old: jnp.where(m, new, old), sn, sw)
    x = lax.dynamic_update_slice_in_dim(x, xn, start, axis=2)
    sstate = jax.tree.map(lambda a, b: lax.dynamic_update_slice_in_dim(a, b, start, axis=2), sstate, sn)
    return x, sstate


def empty_cache(model: WanTransformer, geo: Geometry, batch: int, n_layers: int | None = None):
    cfg = model.config
    n = cfg.num_layers if n_layers is None else n_layers
    shape = (n, batch, max(geo.C, 0) * geo.tokens_per_frame, cfg.hidden_size)
    return jnp.zeros(shape, model.dtype), jnp.zeros(shape, model.dtype)


def stage_layers(num_layers: int, num_stages: int) -> list[tuple[int, int]]:
    """Consecutive layer ranges per stage: the first ``L mod N`` stages get one layer more."""
    if num_stages > num_layers:
        raise ValueError(f"dualparal has more stages ({num_stages}) than transformer layers ({num_layers}); "
                         f"use at most {num_layers} devices on 'stage'")
    base, extra = divmod(num_layers, num_stages)
    out, start = [], 0
    for s in range(num_stages):
        n = base + (1 if s < extra else 0)
        out.append((start, start + n))
        start += n
    return out
