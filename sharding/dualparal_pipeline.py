"""DualParal's pipeline over mesh axis ``stage``: one ``lax.scan`` over the host schedule's slots.

Per device (stage ``s``) and slot ``τ``, each stage doing only its own part (DUALPARAL.md §2.4–2.5):

1. stage 0 applies the prediction that arrived from the last stage (the item that left it in slot
   ``τ-1``) to that block's latent and solver state;
2. stage 0 embeds the entering item's window from the latent video; the other stages take the hidden
   states received from the previous stage;
3. every stage runs its layers (its shard of the stacked block parameters, padded layers skipped) at the
   item's timestep, reading its layers' feature cache when the schedule says the item has successor
   context, and writing the cache for every real item (never in a bubble);
4. the last stage applies the head and guidance (with a ``cfg`` axis: after exchanging its half of the
   pair with its ``cfg`` partner);
5. ``ppermute``: hidden states stage ``s -> s+1``; from the last stage to stage 0 only the block's own
   frames of the guided prediction (``B`` frames; block 0 owns ``B + C``, so when block 0 leaves the
   last stage its first ``C`` frames follow in a second, conditional message).

Stage-specific work runs under ``lax.cond`` on the stage index, so a device never computes another
stage's part; :func:`stage_flops` compiles each stage's slot with the index fixed, to show it.
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
from jaxvdm.sharding.experts import as_experts, expert_guidance, primary, step_experts
from jaxvdm.sharding.mesh import place
from jaxvdm.sharding.predict import guide, shard_map

__all__ = ["build", "run", "stacked_stage_params", "stage_flops"]


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


def _when(pred, on_true, on_false):
    """``on_true()`` when ``pred`` holds, else ``on_false()``: a Python branch for a static bool (a stage
    compiled with its index fixed), ``lax.cond`` for a traced one (the SPMD program)."""
    if isinstance(pred, (bool, np.bool_)):
        return on_true() if pred else on_false()
    return lax.cond(pred, on_true, on_false)


def _both(a, b):
    """``a and b`` for a static or traced ``a``."""
    if isinstance(a, (bool, np.bool_)):
        return b if a else False
    return a & b


def _by_expert(e, branches):
    """``branches[e]()``: a plain call for one expert, ``lax.switch`` on the traced index for more."""
    if len(branches) == 1:
        return branches[0]()
    return lax.switch(e, branches)


def _slot_compute(ms, geo, scheduler, ctx, gs, layer_valid, carry, row, *, stage, first, last, cfg_axis, with_cfg,
                  attention, experts_of_step=None):
    """One stage's work in one slot, before the exchange: returns ``(h, v_own, v_front, ck, cv, x, sstate)``.

    ``ms``/``gs``: the experts' models (this stage's share) and guidance scales; ``experts_of_step [T]``
    the expert index of each step (None with one expert): the item's embedding, layers and head run on
    the expert of the item's own step. ``stage`` indexes the schedule rows; ``first``/``last`` say whether
    this is stage 0 / the last stage (Python bools for a fixed stage, traced for the SPMD program)."""
    cfg = ms[0].config
    hidden, pred_own, pred_front, ck, cv, x, sstate = carry
    ik, id_ = row["item_k"][stage], row["item_d"][stage]
    iv, ird = row["item_valid"][stage], row["item_read"][stage]
    e = 0 if experts_of_step is None else experts_of_step[id_]

    def apply_arrival():
        v = jnp.concatenate([pred_front, pred_own], axis=2) if geo.C > 0 else pred_own
        return dp.update_block(scheduler, x, sstate, v, row["arrival_k"], row["arrival_d"], geo)

    with jax.named_scope("dualparal_update"):
        x, sstate = _when(_both(first, row["arrival_valid"]), apply_arrival, lambda: (x, sstate))

    def embed():
        xw = lax.dynamic_slice_in_dim(x, geo.start(ik), geo.window, axis=2)
        return _by_expert(e, [lambda m=m: dp.embed_window(m, xw, ctx).astype(hidden.dtype) for m in ms])

    h = _when(first, embed, lambda: hidden)
    t = scheduler.timestep(id_)
    with jax.named_scope("dualparal_stage"):
        out = _by_expert(e, [lambda m=m: dp.window_layers(m, h, t, ctx, geo, (ck, cv), ird, attention=attention,
                                                          layer_valid=layer_valid) for m in ms])
        if geo.C > 0:
            h, (nk, nv) = out
            ck, cv = jnp.where(iv, nk, ck), jnp.where(iv, nv, cv)
        else:
            h = out[0]

    def head():
        def expert_head(m, g):
            temb, _, _ = m.embed_condition(jnp.full((h.shape[0],), t, jnp.float32), ctx)
            v = unpatchify(m.head_tokens(h, temb), geo.grid, cfg.patch_size, cfg.out_channels)
            if with_cfg:
                both = lax.all_gather(v, cfg_axis, axis=0, tiled=True) if cfg_axis else v
                v = guide(both[0:1], both[1:2], g)
            return v

        v = _by_expert(e, [lambda m=m, g=g: expert_head(m, g) for m, g in zip(ms, gs)])
        return v[:, :, geo.C:], v[:, :, :geo.C]

    v_own, v_front = _when(last, head, lambda: (jnp.zeros_like(pred_own), jnp.zeros_like(pred_front)))
    return h, v_own, v_front, ck, cv, x, sstate


def _initial_carry(m, geo, x, batch: int, n_layers: int, scheduler):
    cfg = m.config
    ck, cv = dp.empty_cache(m, geo, batch, n_layers=n_layers)
    hidden = jnp.zeros((batch, geo.window * geo.tokens_per_frame, cfg.hidden_size), m.dtype)
    frames = tuple(x.shape[3:])
    pred_own = jnp.zeros((1, cfg.out_channels, geo.B) + frames, jnp.float32)
    pred_front = jnp.zeros((1, cfg.out_channels, geo.C) + frames, jnp.float32)
    return hidden, pred_own, pred_front, ck, cv, x, scheduler.init(x)


def build(model, plan, mesh, geo, scheduler, *, with_cfg: bool, attention=None):
    """The jitted pipelined run and the host schedule; returns ``(fn, schedule, arrays, stage_state, specs)``.

    ``fn(params, x0, ctx, guidance, arrays) -> final latent video`` (replicated). ``model`` is one
    transformer (``params`` its stage state, ``guidance`` a scalar) or an
    :class:`~jaxvdm.sharding.experts.Experts` of two (``params`` and ``guidance`` are then tuples, one
    entry per expert): both experts' stage shares are resident, and every item runs on the expert of its
    own step (a table ``[T]`` indexed by the item's step inside the program).
    """
    experts = as_experts(model)
    multi = len(experts.models) > 1
    cfg = experts.config
    axis = plan.loop_axis
    n = plan.size(axis)
    dp.stage_layers(cfg.num_layers, n)  # validates
    schedule = sched_lib.pipeline_schedule(geo.num_blocks, scheduler.num_steps, n)
    arrays = sched_lib.as_arrays(schedule)
    graphdefs, states = [], []
    for m in experts.models:
        graphdef, state = nnx.split(m)
        state, valid = stacked_stage_params(state, cfg.num_layers, n)
        graphdefs.append(graphdef)
        states.append(state)
    state = tuple(states) if multi else states[0]
    specs = tuple(_specs(st, axis) for st in states) if multi else _specs(state, axis)
    table = np.asarray(step_experts(experts, scheduler), np.int32) if multi else None
    cfg_axis = plan.cfg_axis if with_cfg else None
    batch = 1 if cfg_axis else (2 if with_cfg else 1)
    to_next = [(i, i + 1) for i in range(n - 1)]

    def body(params, x, ctx, g, xs):
        s = lax.axis_index(axis)
        ms = [nnx.merge(gd, p) for gd, p in zip(graphdefs, params if multi else (params,))]
        gs = g if multi else (g,)
        if cfg_axis:
            ctx = lax.dynamic_slice_in_dim(ctx, lax.axis_index(cfg_axis), 1, axis=0)
        layer_valid = jnp.asarray(valid)[s]
        experts_of_step = None if table is None else jnp.asarray(table)

        def slot(carry, row):
            h, v_own, v_front, ck, cv, x, sstate = _slot_compute(
                ms, geo, scheduler, ctx, gs, layer_valid, carry, row, stage=s, first=s == 0, last=s == n - 1,
                cfg_axis=cfg_axis, with_cfg=with_cfg, attention=attention, experts_of_step=experts_of_step)
            pred_front = carry[2]
            with jax.named_scope("dualparal_exchange"):
                if n > 1:
                    h = lax.ppermute(h, axis, to_next)
                    v_own = lax.ppermute(v_own, axis, [(n - 1, 0)])
                    if geo.C > 0:  # block 0's first C frames, only when block 0 leaves the last stage
                        leaving0 = row["item_valid"][n - 1] & (row["item_k"][n - 1] == 0)  # the same on every stage
                        v_front = lax.cond(leaving0, lambda: lax.ppermute(v_front, axis, [(n - 1, 0)]),
                                           lambda: pred_front)
            return (h, v_own, v_front, ck, cv, x, sstate), None

        carry, _ = lax.scan(slot, _initial_carry(ms[0], geo, x, batch, valid.shape[1], scheduler), xs)
        # only stage 0 holds the latents; one psum at the very end replicates them (adding exact zeros)
        return lax.psum(jnp.where(s == 0, carry[5], 0.0), axis)

    gspec = tuple(P() for _ in experts.models) if multi else P()
    f = jax.jit(shard_map(body, mesh=mesh, in_specs=(specs, P(), P(), gspec, P()), out_specs=P()))
    return f, schedule, arrays, state, specs


def stage_flops(model, plan, geo, scheduler, *, with_cfg: bool = True, attention=None) -> list[float]:
    """XLA's cost analysis (FLOPs) of one slot's computation of each stage, compiled with the stage index
    fixed (one device, no exchange): what the SPMD program's ``lax.cond`` lets each stage run. The layer
    scan's body is counted once by XLA, so the stages differ exactly by their own extras: stage 0 the
    arrival update and the embedding, the last stage the head and guidance. Plans without a ``cfg`` axis."""
    if plan.cfg_axis:
        raise ValueError("stage_flops compiles each stage on one device: give a plan without a cfg axis")
    model = primary(model)
    cfg = model.config
    n = plan.size(plan.loop_axis)
    arrays = sched_lib.as_arrays(sched_lib.pipeline_schedule(geo.num_blocks, scheduler.num_steps, n))
    graphdef, state = nnx.split(model)
    state, valid = stacked_stage_params(state, cfg.num_layers, n)
    batch = 2 if with_cfg else 1
    x = jax.ShapeDtypeStruct((1, cfg.in_channels, geo.total) + tuple(geo.window_shape[1:]), jnp.float32)
    ctx = jax.ShapeDtypeStruct((batch, 8, cfg.text_dim), jnp.float32)
    row = {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in arrays.items()}
    lmax = valid.shape[1]

    def share(path, a):  # one stage's share of the parameters: Lmax layers of each block tensor
        shape = (lmax,) + tuple(a.shape[1:]) if is_block_path(path) else tuple(a.shape)
        return jax.ShapeDtypeStruct(shape, a.dtype)

    local = jax.tree_util.tree_map_with_path(share, state)
    out = []
    for stage in range(n):
        def slot(params, x, ctx, g, row, stage=stage):
            m = nnx.merge(graphdef, params)
            carry = _initial_carry(m, geo, x, batch, lmax, scheduler)
            return _slot_compute((m,), geo, scheduler, ctx, (g,), jnp.asarray(valid[stage]), carry, row, stage=stage,
                                 first=stage == 0, last=stage == n - 1, cfg_axis=None, with_cfg=with_cfg,
                                 attention=attention)

        cost = jax.jit(slot).lower(local, x, ctx, jax.ShapeDtypeStruct((), jnp.float32), row).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        out.append(float(cost["flops"]))
    return out


def run(model, plan, mesh, x0, context, guidance, scheduler, geo, *, attention=None):
    """The pipelined DualParal run; returns ``(latent video, timings)``. ``model``: one transformer or an
    :class:`~jaxvdm.sharding.experts.Experts` (each item on its own step's expert, with its guidance)."""
    ctx_full = jnp.asarray(context, jnp.float32)
    f, schedule, arrays, state, specs = build(model, plan, mesh, geo, scheduler, with_cfg=ctx_full.shape[0] == 2,
                                              attention=attention)
    experts = as_experts(model)
    gs = tuple(jnp.float32(g) for g in expert_guidance(experts, guidance))
    args = (place(state, mesh, specs), place(x0, mesh), place(ctx_full, mesh),
            place(gs if len(gs) > 1 else gs[0], mesh),
            place({k: jnp.asarray(v) for k, v in arrays.items()}, mesh))
    programs = runtime.Programs(mesh)
    compiled = programs.get("run", f"dualparal_{plan.describe()}", lambda: f, args)
    t0 = time.perf_counter()
    x = compiled(*args)
    x.block_until_ready()
    return x, {"compile_s": programs.seconds, "denoise_s": time.perf_counter() - t0,
               "bubble_ratio": float(sched_lib.bubble_ratio(schedule)), "slots": int(arrays["arrival_k"].shape[0]),
               "useful_forwards": [(geo.window_shape, len(schedule.items))], "blocks": geo.num_blocks,
               "block_frames": geo.B, "context_frames": geo.C}
