"""DualParal's pipeline over mesh axis ``stage``: one ``lax.scan`` over the host schedule's slots.

Per device (stage ``s``) and slot ``τ``:

1. stage 0 applies the prediction that arrived from the last stage (the item that left it in slot
   ``τ-1``) to that block's latent and solver state;
2. stage 0 embeds the entering item's window from the latent video; the other stages take the hidden
   states received from the previous stage;
3. the stage runs its layers (its shard of the stacked block parameters, padded layers skipped) at the
   item's timestep, reading its layers' feature cache when the schedule says the item has successor
   context, and writing the cache for every real item (never in a bubble);
4. the last stage applies the head and guidance;
5. ``ppermute``: hidden states stage ``s -> s+1``, the guided prediction ``N-1 -> 0``.

With a ``cfg`` axis each pipeline carries one half of the guidance pair and the last stages exchange
their predictions (``all_gather`` over ``cfg``) before guidance.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxvdm.models.wan.transformer.model import is_block_path, unpatchify
from jaxvdm.sharding import dualparal_block as dp
from jaxvdm.sharding import dualparal_schedule as sched_lib
from jaxvdm.sharding import runtime
from jaxvdm.sharding.mesh import place
from jaxvdm.sharding.predict import guide, shard_map

__all__ = ["run", "stacked_stage_params"]


def stacked_stage_params(state, num_layers: int, num_stages: int):
    """Re-stacks block parameters ``[L, ...]`` to ``[N * Lmax, ...]`` (stage-major, zero-padded) and
    returns ``(state, valid [N, Lmax] bool)``. Sharding the leading axis over ``stage`` gives every
    device its consecutive layers."""
    ranges = dp.stage_layers(num_layers, num_stages)
    lmax = max(b - a for a, b in ranges)
    index = np.zeros((num_stages, lmax), np.int64)
    valid = np.zeros((num_stages, lmax), bool)
    for s, (a, b) in enumerate(ranges):
        index[s, : b - a] = np.arange(a, b)
        valid[s, : b - a] = True
    flat_idx, flat_valid = index.reshape(-1), valid.reshape(-1)

    def restack(path, leaf):
        if not is_block_path(path):
            return leaf
        if isinstance(leaf, jax.ShapeDtypeStruct):  # abstract model: only the shape changes
            return jax.ShapeDtypeStruct((flat_idx.size,) + tuple(leaf.shape[1:]), leaf.dtype)
        picked = jnp.take(leaf, jnp.asarray(flat_idx), axis=0)
        mask = jnp.asarray(flat_valid).reshape((-1,) + (1,) * (leaf.ndim - 1))
        return jnp.where(mask, picked, jnp.zeros_like(picked))

    return jax.tree_util.tree_map_with_path(restack, state), valid


def _specs(state, axis):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: P(axis) if is_block_path(path) else P(), state)


def build(model, plan, mesh, geo, scheduler, *, with_cfg: bool, attention=None):
    """The jitted pipelined run and the host schedule; returns ``(fn, schedule, arrays, stage_state, specs)``.

    ``fn(params, x0, ctx, guidance, arrays) -> final latent video`` (replicated).
    """
    cfg = model.config
    axis = plan.loop_axis
    n = plan.size(axis)
    dp.stage_layers(cfg.num_layers, n)  # validates
    schedule = sched_lib.pipeline_schedule(geo.num_blocks, scheduler.num_steps, n)
    arrays = sched_lib.as_arrays(schedule)
    graphdef, state = nnx.split(model)
    state, valid = stacked_stage_params(state, cfg.num_layers, n)
    specs = _specs(state, axis)
    cfg_axis = plan.cfg_axis if with_cfg else None
    batch = 1 if cfg_axis else (2 if with_cfg else 1)

    def body(params, x, ctx, g, xs):
        s = lax.axis_index(axis)
        m = nnx.merge(graphdef, params)
        if cfg_axis:
            ctx = lax.dynamic_slice_in_dim(ctx, lax.axis_index(cfg_axis), 1, axis=0)
        layer_valid = jnp.asarray(valid)[s]
        sstate = scheduler.init(x)
        ck, cv = dp.empty_cache(m, geo, batch, n_layers=valid.shape[1])
        hidden = jnp.zeros((batch, geo.window * geo.tokens_per_frame, cfg.hidden_size), m.dtype)
        pred = jnp.zeros((1, cfg.out_channels, geo.window) + tuple(x.shape[3:]), jnp.float32)

        def slot(carry, row):
            hidden, pred, ck, cv, x, sstate = carry
            pick = lambda a: a[s]  # noqa: E731
            ik, id_, iv, ird = pick(row["item_k"]), pick(row["item_d"]), pick(row["item_valid"]), pick(row["item_read"])
            ak, ad, av = row["arrival_k"], row["arrival_d"], row["arrival_valid"]
            with jax.named_scope("dualparal_update"):
                xa, sa = dp.update_block(scheduler, x, sstate, pred, ak, ad, geo)
                apply = av & (s == 0)
                x = jnp.where(apply, xa, x)
                sstate = jax.tree.map(lambda new, old: jnp.where(apply, new, old), sa, sstate)
            xw = lax.dynamic_slice_in_dim(x, geo.start(ik), geo.window, axis=2)
            h = jnp.where(s == 0, dp.embed_window(m, xw, ctx), hidden)
            t = scheduler.timestep(id_)
            with jax.named_scope("dualparal_stage"):
                out = dp.window_layers(m, h, t, ctx, geo, (ck, cv), ird, attention=attention, layer_valid=layer_valid)
                if geo.C > 0:
                    h, (nk, nv) = out
                    ck, cv = jnp.where(iv, nk, ck), jnp.where(iv, nv, cv)
                else:
                    h = out[0]
            temb, _, _ = m.embed_condition(jnp.full((h.shape[0],), t, jnp.float32), ctx)
            v = unpatchify(m.head_tokens(h, temb), geo.grid, cfg.patch_size, cfg.out_channels)
            if with_cfg:
                both = lax.all_gather(v, cfg_axis, axis=0, tiled=True) if cfg_axis else v
                v = guide(both[0:1], both[1:2], g)
            with jax.named_scope("dualparal_exchange"):
                hidden = lax.ppermute(h, axis, [(i, i + 1) for i in range(n - 1)]) if n > 1 else h
                pred = lax.ppermute(v, axis, [(n - 1, 0)]) if n > 1 else v
            return (hidden, pred, ck, cv, x, sstate), None

        carry, _ = lax.scan(slot, (hidden, pred, ck, cv, x, sstate), xs)
        # only stage 0 holds the latents; one psum at the very end replicates them (adding exact zeros)
        return lax.psum(jnp.where(s == 0, carry[4], 0.0), axis)

    f = jax.jit(shard_map(body, mesh=mesh, in_specs=(specs, P(), P(), P(), P()), out_specs=P()))
    return f, schedule, arrays, state, specs


def run(model, plan, mesh, x0, context, guidance, scheduler, geo, *, attention=None):
    """The pipelined DualParal run; returns ``(latent video, timings)``."""
    ctx_full = jnp.asarray(context, jnp.float32)
    f, schedule, arrays, state, specs = build(model, plan, mesh, geo, scheduler, with_cfg=ctx_full.shape[0] == 2,
                                              attention=attention)
    args = (place(state, mesh, specs), place(x0, mesh), place(ctx_full, mesh), place(jnp.float32(guidance), mesh),
            place({k: jnp.asarray(v) for k, v in arrays.items()}, mesh))
    programs = runtime.Programs()
    compiled = programs.get("run", f"dualparal_{plan.describe()}", lambda: f, args)
    t0 = time.perf_counter()
    x = compiled(*args)
    x.block_until_ready()
    return x, {"compile_s": programs.seconds, "denoise_s": time.perf_counter() - t0,
               "bubble_ratio": float(sched_lib.bubble_ratio(schedule)), "slots": int(arrays["arrival_k"].shape[0]),
               "useful_forwards": [(geo.window_shape, len(schedule.items))], "blocks": geo.num_blocks,
               "block_frames": geo.B, "context_frames": geo.C}
