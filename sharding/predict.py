"""One guided prediction, composed from the predict transforms of a :class:`~jaxvdm.sharding.registry.Plan`.

:func:`guided_prediction` is per-device code (it runs inside ``shard_map`` over the whole mesh, or
plainly on one device). Reading it top to bottom is reading the composition:

1. **lp** — cut this device's latent window (a static partition for this step), remembering its global
   token offset for the rotary positions; an exact full-latent LP step (the ``unite`` schedule's first)
   instead splits the whole video's tokens over ``lp`` like Ulysses;
2. **cfg** — pick this device's half of the (cond, uncond) pair, or batch both;
3. **ulysses / ring / fsdp** — split the window's tokens over the sequence axes; self-attention
   communicates inside, everything else is per token; weights of fsdp are gathered per layer;
4. the model's head, tokens gathered back, unpatchified;
5. **cfg** — exchange the pair once (all-gather) and apply guidance;
6. **lp** — weight the window by its blend weights, place it in a zero latent, ``psum`` over ``lp``.

Outside of this function nothing about the model changes: it is the one ``WanTransformer``, called
with other tokens, positions and attention functions.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxvdm.models.wan import rope as rope_lib
from jaxvdm.models.wan.attention import cross_attention_backend, get_attention, get_attention_with_lse
from jaxvdm.models.wan.i2v import FirstFrameCondition, VideoCondition, text_of
from jaxvdm.models.wan.transformer.model import Conditioning, WanTransformer, is_block_path, unpatchify
from jaxvdm.sharding import fsdp as fsdp_lib
from jaxvdm.sharding import lp as lp_lib
from jaxvdm.sharding import sequence
from jaxvdm.sharding.lp import LPWindow
from jaxvdm.sharding.plan import Plan

__all__ = ["LPWindow", "guided_prediction", "model_forward", "guide", "step_windows", "forward_tokens", "state_specs",
           "block_dims", "shard_map"]


def shard_map(f, *, mesh, in_specs, out_specs):
    """``jax.shard_map`` with replication checks off: jaxvdm's outputs marked ``P()`` are replicated
    by construction (results of ``psum``/``all_gather`` or identical replays), which the checker of
    some JAX versions cannot prove."""
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def state_specs(state, plan: Plan):
    """PartitionSpecs for the model state under ``plan`` (block weights sharded on fsdp, else replicated)."""
    return fsdp_lib.param_specs(state, plan.fsdp_axis, plan.size(plan.fsdp_axis))


def block_dims(model: WanTransformer, plan: Plan):
    """The fsdp shard dim of every stacked block leaf of ``model``'s state (None where unsharded), in
    leaf order: what :func:`~jaxvdm.sharding.fsdp.gather_hook` gathers per layer (None without fsdp)."""
    if not plan.fsdp_axis:
        return None
    n = plan.size(plan.fsdp_axis)
    state = nnx.state(model)
    return [d for (path, _), d in zip(jax.tree_util.tree_leaves_with_path(state), fsdp_lib.shard_dims(state, n))
            if is_block_path(path)]


def guide(cond, uncond, guidance):
    """Classifier-free guidance: ``uncond + guidance * (cond - uncond)`` (the one copy of the formula)."""
    return uncond + guidance * (cond - uncond)


def step_windows(plan: Plan, latent_shape, patch, num_steps: int) -> tuple[LPWindow | None, ...]:
    """Each step's Latent Parallelism partition under ``plan`` (None for every step of a plan without an
    ``lp`` axis), built and validated on the host before any compute."""
    if not plan.lp_axis:
        return (None,) * num_steps
    windows = lp_lib.windows_for(plan, latent_shape, patch, num_steps)
    return tuple(windows(i) for i in range(num_steps))


def forward_tokens(plan: Plan, latent_shape, patch, num_steps: int, defaults=None) -> int:
    """The most tokens one device's forward holds at once under ``plan`` (per batch element), for a latent
    ``[1, C, T, H, W]``: the whole video's tokens, or an LP window's, divided over the sequence axes.
    Host arithmetic only: what a memory estimate made before any compile needs."""
    import math
    import warnings

    grid = [d // p for d, p in zip(latent_shape[2:], patch)]
    total = math.prod(grid)
    split = math.prod(plan.size(a) for a in (plan.fsdp_axis, plan.sp_axis) if a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sampler warns about its partitions itself
        windows = {None if w is None else w.key(): w for w in step_windows(plan, latent_shape, patch, num_steps)}
    most = 0
    for w in windows.values():
        if w is None:
            tokens = total
        elif w.axis is None:  # the exact full-latent LP step: tokens split over lp too
            tokens = -(-total // plan.size(plan.lp_axis))
        else:
            tokens = total * w.length // latent_shape[w.axis]
        most = max(most, -(-tokens // split))
    return most


def model_forward(model: WanTransformer, x, t, ctx, *, plan: Plan, offset=(0, 0, 0), attention: str | None = None,
                  dims=None, lp_tokens: bool = False, image=None):
    """The transformer on ``x [b, C, T, H, W]`` with tokens split over the plan's sequence axes.

    Per-device code. ``t [b]``, ``ctx [b, L, text_dim]``; ``offset`` is the token offset of ``x`` in
    the full video; ``t`` may be ``[b, S]`` per token (Wan2.2 TI2V), split over the sequence axes like the
    tokens; ``image [b, Li, image_dim]`` the CLIP states of an I2V model (None otherwise; every
    device holds them whole, like the text). ``lp_tokens``: also split the tokens over the ``lp`` axis, with Ulysses attention
    over it (the exact full-latent step of an LP schedule: every device works on the whole video's
    step, none repeats another's work). Returns the velocity ``[b, C, T, H, W]`` float32, replicated
    over the sequence axes.
    """
    cfg = model.config
    grid = cfg.token_grid(x.shape[2:])
    tokens = model.embed_tokens(x)
    positions = rope_lib.grid_positions(grid, offset)
    lp_axis = plan.lp_axis if lp_tokens and plan.size(plan.lp_axis) > 1 else None
    seq_axes = tuple(a for a in (plan.fsdp_axis, plan.sp_axis, lp_axis) if a)  # slowest first
    if t.ndim == 2 and seq_axes:  # per-token timesteps (Wan2.2 TI2V) are split exactly like the tokens
        t = sequence.shard_tokens(t, seq_axes, axis=1)
    temb, tproj, context = model.embed_condition(t, ctx, image)
    s = tokens.shape[1]
    local = get_attention(attention)
    attn = local
    hook = None
    if plan.fsdp_axis:
        attn = sequence.allgather_kv(plan.fsdp_axis, attn)
        hook = fsdp_lib.gather_hook(dims if dims is not None else block_dims(model, plan), plan.fsdp_axis)
    if plan.sp_kind == "ulysses":
        attn = sequence.ulysses(plan.sp_axis, attn)
    elif plan.sp_kind == "ring":
        attn = sequence.ring(plan.sp_axis, get_attention_with_lse(attention))
    if lp_axis:  # the outermost wrapper: its axis varies fastest in the token order
        attn = sequence.ulysses(lp_axis, attn)
    if seq_axes:
        tokens = sequence.shard_tokens(tokens, seq_axes)
        positions = sequence.shard_tokens(positions, seq_axes, axis=0)
    cos, sin = model.rope(positions)
    h = model.run_blocks(tokens, Conditioning(tproj, context, cos, sin), self_attention=attn,
                         cross_attention=get_attention(cross_attention_backend(attention)),
                         kv_len=s if seq_axes else None, param_hook=hook)
    out = model.head_tokens(h, temb)
    if seq_axes:
        out = sequence.gather_tokens(out, seq_axes, s)
    return unpatchify(out, grid, cfg.patch_size, cfg.out_channels)


def guided_prediction(model: WanTransformer, x, t, ctx, guidance, *, plan: Plan, lp: LPWindow | None = None,
                      attention: str | None = None, dims=None):
    """The guided velocity for the full latent ``x [1, C, T, H, W]`` at timestep ``t`` (scalar).

    Per-device code. ``ctx`` is ``[2, L, text_dim]`` (cond, uncond) with guidance, or ``[1, L, ·]``
    without, or an image-to-video :class:`~jaxvdm.models.wan.i2v.VideoCondition` holding that text, the
    CLIP states (or None) and the conditioning latent ``[1, Cy, T, H, W]``: the latent is cut with the
    same LP window as ``x`` and joined to it on the channels (``x ‖ latent``, the model's input), the
    CLIP states go to every forward of the pair; or a Wan2.2 TI2V
    :class:`~jaxvdm.models.wan.i2v.FirstFrameCondition`: the window's frames at global latent frame 0 are
    replaced by the image latent and their tokens get timestep 0 (diffusers' ``expand_timesteps``);
    ``guidance`` a float32 scalar; ``lp`` this step's partition (required with an ``lp`` axis:
    see :func:`step_windows`); ``dims`` the fsdp shard dims (:func:`block_dims`). Returns
    ``[1, C, T, H, W]`` float32, identical on every device of the mesh.
    """
    if plan.lp_axis and lp is None:
        raise ValueError("an LP plan was sampled without its step's partition; build the partitions with "
                         "jaxvdm.sharding.predict.step_windows (every device would otherwise compute the whole video)")
    patch = model.config.patch_size
    lp_on = lp is not None and lp.axis is not None
    lp_full = lp is not None and lp.axis is None and plan.size(plan.lp_axis) > 1
    cond = ctx.latent if isinstance(ctx, VideoCondition) else None
    image = ctx.image if isinstance(ctx, VideoCondition) else None
    first = ctx.latent if isinstance(ctx, FirstFrameCondition) else None
    ctx = text_of(ctx)
    if lp_on:
        with jax.named_scope("lp_window"):
            k = lax.axis_index(plan.lp_axis)
            start = jnp.asarray(lp.starts, jnp.int32)[k]
            xw = lax.dynamic_slice_in_dim(x, start, lp.length, axis=lp.axis)
            if cond is not None:
                cond = lax.dynamic_slice_in_dim(cond, start, lp.length, axis=lp.axis)
            if first is not None and lp.axis != 2:  # one latent frame: cut only along H or W
                first = lax.dynamic_slice_in_dim(first, start, lp.length, axis=lp.axis)
            offset = [0, 0, 0]
            offset[lp.axis - 2] = start // patch[lp.axis - 2]
    else:
        xw, offset = x, [0, 0, 0]
    if cond is not None:  # the I2V input: noise ‖ mask ‖ conditioning latent
        xw = jnp.concatenate([xw, cond.astype(xw.dtype)], axis=1)
    frame0 = None
    if first is not None:  # Wan2.2 TI2V: the video's first latent frame is the image's, at timestep 0
        t0 = offset[0] * patch[0] if lp_on and lp.axis == 2 else 0
        frame0 = (jnp.arange(xw.shape[2]) + t0) == 0
        xw = jnp.where(frame0[None, None, :, None, None], first.astype(xw.dtype), xw)

    with_cfg = ctx.shape[0] == 2
    if with_cfg and plan.cfg_axis:
        c = lax.axis_index(plan.cfg_axis)
        ctx_b, xb = lax.dynamic_slice_in_dim(ctx, c, 1, axis=0), xw
    elif with_cfg:
        ctx_b, xb = ctx, jnp.concatenate([xw, xw], axis=0)
    else:
        ctx_b, xb = ctx, xw
    tb = jnp.full((xb.shape[0],), t, jnp.float32)
    if frame0 is not None:
        grid = model.config.token_grid(xw.shape[2:])
        per_frame = jnp.where(frame0[:: patch[0]], 0.0, t).astype(jnp.float32)  # [T'] (temporal patch 1 for Wan)
        tb = jnp.broadcast_to(jnp.repeat(per_frame, grid[1] * grid[2])[None], (xb.shape[0], math.prod(grid)))
    if image is not None:
        image = jnp.broadcast_to(image, (xb.shape[0],) + image.shape[1:])
    with jax.named_scope("model_forward"):
        v = model_forward(model, xb, tb, ctx_b, plan=plan, offset=tuple(offset), attention=attention, dims=dims,
                          lp_tokens=lp_full, image=image)

    if with_cfg:
        with jax.named_scope("cfg_combine"):
            both = lax.all_gather(v, plan.cfg_axis, axis=0, tiled=True) if plan.cfg_axis else v
            v = guide(both[0:1], both[1:2], guidance)

    if lp_on:
        with jax.named_scope("lp_combine"):
            w = jnp.asarray(lp.weights, jnp.float32)[k]
            shape = [1] * v.ndim
            shape[lp.axis] = lp.length
            placed = lax.dynamic_update_slice_in_dim(jnp.zeros_like(x, jnp.float32), v * w.reshape(shape), start,
                                                     axis=lp.axis)
            v = lax.psum(placed, plan.lp_axis)
    return v

