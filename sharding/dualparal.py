"""DualParal: block-wise denoising through a pipeline of layer stages (loop strategy on mesh axis ``stage``).

The latent video of ``C + Nb*B`` frames is cut into ``Nb`` blocks (block 0 owns the first ``B + C``
frames, block k >= 1 owns ``[C + k*B, C + (k+1)*B)``). Blocks go through a queue in which neighbours are
one denoising step apart: in outer iteration ``i`` block ``k`` takes step ``d = i - k``, tail to head.
Every block walks the whole schedule with its own solver state.

Every forward is one **window** of ``B + C`` frames ``[kB, kB + B + C)``: the last ``C`` frames of the
previous block (context, one step cleaner) then the block's own ``B`` (block 0: its own ``B + C``), with
window-local RoPE positions. Self-attention also sees the **cached keys/values** (taken before
``norm_k`` and RoPE, at positions ``B+C .. B+2C-1``) of the first ``C`` own frames of the next block,
written by the previous forward on the same layers in the same iteration; the cache is reset every
iteration. The prediction updates only the block's own frames.

On a mesh the transformer's layers are split into ``N`` consecutive stages (``ceil``/``floor`` as
evenly as possible, padded to one length with skipped layers), hidden states go stage to stage with
``lax.ppermute`` and the guided prediction returns from the last stage to the first, along a static
schedule with bubbles computed on the host (:mod:`jaxvdm.sharding.dualparal_schedule`). The context of
item (k, d) is always block k-1 after d+1 steps (the deterministic rule), so the pipelined run equals the
serial oracle (``mesh=None``) up to float rounding.

Coordinated noise: one pool of ``B + C`` noise frames (the first ``B + C`` frames of the initial noise);
each block takes a permutation of it as in the reference (see ``noise_pool_order``).

Implementation note: the latent video and one video-shaped solver state hold every block; updates are
applied on the ``B + C``-frame window with a frame mask (UniPC's state is elementwise), so every shape is
static.
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from jaxvdm.models.wan import rope as rope_lib
from jaxvdm.models.wan.transformer import Conditioning, ExtraKV, WanTransformer, unpatchify

__all__ = ["Geometry", "geometry", "coordinated_noise", "serial_oracle", "sample", "stage_layers"]


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
    from jaxvdm.sharding.dualparal_schedule import block_layout

    t, h, w = (int(v) for v in latent_shape[2:])
    pt, ph, pw = patch
    if pt != 1:
        raise ValueError(f"dualparal needs a temporal patch size of 1, got {pt}")
    layout = block_layout(t, block_frames, context_frames, vae_stride_t=vae_stride_t)
    B, C = layout.B, layout.C
    return Geometry(B=B, C=C, num_blocks=layout.num_blocks, total=t, grid=(B + C, h // ph, w // pw),
                    tokens_per_frame=(h // ph) * (w // pw), patch=tuple(patch))


def coordinated_noise(noise: jax.Array, geo: Geometry, seed: int = 0) -> jax.Array:
    """The initial latent video built from a pool: the first ``B + C`` frames of ``noise``, permuted per block."""
    from jaxvdm.sharding.dualparal_schedule import noise_pool_order

    pool = noise[:, :, : geo.window]
    order = noise_pool_order(geo.num_blocks, geo.B, geo.C, seed)
    parts = [jnp.take(pool, jnp.asarray(idx), axis=2) for idx in order]
    return jnp.concatenate(parts, axis=2)


# ------------------------------------------------------------------------------------------ one forward


def _rope(model: WanTransformer, geo: Geometry):
    """Window queries at frames 0..B+C-1; cached keys at frames B+C..B+2C-1."""
    cfg = model.config
    cos, sin = model.rope(rope_lib.grid_positions(geo.grid))
    extra_grid = (geo.C, geo.grid[1], geo.grid[2])
    cos_e, sin_e = model.rope(rope_lib.grid_positions(extra_grid, (geo.window, 0, 0)))
    del cfg
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
                           cross_attention=attention, extra=extra, capture=geo.capture, block_state=block_state,
                           layer_valid=layer_valid)
    if geo.C == 0:
        return out, cache
    return out


def window_head(model, h, t, ctx, guidance, geo):
    """Head and guidance: ``[b, S, D] -> guided velocity [1, Cch, B+C, h, w]`` (float32)."""
    temb, _, _ = model.embed_condition(jnp.full((h.shape[0],), t, jnp.float32), ctx)
    cfg = model.config
    v = unpatchify(model.head_tokens(h, temb), geo.grid, cfg.patch_size, cfg.out_channels)
    if v.shape[0] == 2:
        v = v[1:2] + guidance * (v[0:1] - v[1:2])
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


# ------------------------------------------------------------------------------------------ serial oracle


def serial_oracle(model: WanTransformer, x0, ctx, guidance, scheduler, geo: Geometry, *, attention=None,
                  progress=False):
    """The block-wise algorithm on one device: one forward after another, caches and context exact.

    ``x0 [1, Cch, total, h, w]`` is the initial latent video (coordinated noise already applied).
    Returns the final latent video (float32).
    """
    graphdef, state = nnx.split(model)
    b = ctx.shape[0]

    @jax.jit
    def item(state, x, sstate, k, d, ctx, g, ck, cv, read):
        m = nnx.merge(graphdef, state)
        xw = lax.dynamic_slice_in_dim(x, geo.start(k), geo.window, axis=2)
        t = scheduler.timestep(d)
        h = embed_window(m, xw, ctx)
        h, (nk, nv) = window_layers(m, h, t, ctx, geo, (ck, cv), read, attention=attention)
        v = window_head(m, h, t, ctx, g, geo)
        x, sstate = update_block(scheduler, x, sstate, v, k, d, geo)
        return x, sstate, nk, nv

    x = jnp.asarray(x0, jnp.float32)
    sstate = scheduler.init(x)
    ck, cv = empty_cache(model, geo, b)
    g = jnp.float32(guidance)
    from jaxvdm.sharding.dualparal_schedule import serial_order

    for it in serial_order(geo.num_blocks, scheduler.num_steps):
        x, sstate, ck, cv = item(state, x, sstate, jnp.int32(it.k), jnp.int32(it.d), ctx, g, ck, cv,
                                 it.has_successor_context)
    return x


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


def sample(pipe, plan, mesh, noise, context, guidance, scheduler, *, attention=None, progress=None):
    """Runs DualParal (pipelined on ``mesh``'s ``stage`` axis, or the serial oracle without a mesh)."""
    model = pipe.transformer
    b, c = plan.option("block_frames"), plan.option("context_frames")
    b = pipe.defaults.get("dualparal_block_frames") if b is None else b
    c = pipe.defaults.get("dualparal_context_frames") if c is None else c
    if b is None or c is None:
        raise ValueError("dualparal needs block_frames and context_frames (latent frames per block and of context), "
                         "e.g. block_frames=8, context_frames=8")
    geo = geometry(noise.shape, model.config.patch_size, b, c, vae_stride_t=int(pipe.vae_stride[0]))
    x0 = coordinated_noise(jnp.asarray(noise, jnp.float32), geo)
    t0 = time.perf_counter()
    if mesh is None or plan.size(plan.loop_axis) == 1 and not plan.cfg_axis:
        x = serial_oracle(model, x0, jnp.asarray(context), guidance, scheduler, geo, attention=attention)
        x.block_until_ready()
        return x, {"compile_s": 0.0, "denoise_s": time.perf_counter() - t0}
    from jaxvdm.sharding import dualparal_pipeline
    from jaxvdm.sharding import dualparal_schedule as sched_lib

    n = plan.size(plan.loop_axis)
    if geo.num_blocks < n + 1:
        ratio = sched_lib.bubble_ratio(sched_lib.pipeline_schedule(geo.num_blocks, scheduler.num_steps, n))
        warnings.warn(f"dualparal: {geo.num_blocks} blocks cannot fill a pipeline of {n} stages (use at least {n + 1} "
                      f"blocks); the bubble ratio of this run is {ratio:.0%}", stacklevel=2)
    return dualparal_pipeline.run(pipe, plan, mesh, x0, context, guidance, scheduler, geo, attention=attention,
                                  progress=progress)
