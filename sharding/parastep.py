"""ParaStep: step-level parallelism by reuse-then-predict (loop strategy on mesh axis ``step``).

With ``N`` devices on ``step``, ``W`` warm-up steps and ``T`` steps in all:

1. **Warm-up.** Steps ``0 … W-1`` run serially on every device (redundantly, no communication).
   Every device's *cache* is the guided output of step ``W-1``.
2. **Rounds.** The remaining steps are cut into rounds of ``N`` (the last may be shorter, ``n < N``).
   In the round starting at step ``s``, device ``j``:

   * **reuses** its cached output for ``j`` scheduler updates from the round's start latent ``x_s``
     (on a private copy of the solver state), reaching a predicted latent ``x̂_{s+j}``;
   * **predicts**: evaluates the model once at ``(x̂_{s+j}, t_{s+j})``, guidance applied;
   * all devices **all-gather** the ``N`` guided outputs and **replay** the ``n`` true scheduler
     updates ``x_{s+k+1} = step(x_{s+k}, G[k], s+k)`` identically, so the latent and the whole
     multistep (UniPC) history stay replicated with no broadcast.
   * The cache becomes the device's own output (``cache="own"``, the paper's code) or the round's
     newest output ``G[n-1]`` (``cache="fresh"``).

Guidance is applied *before* the exchange, which halves the bytes: guidance
``u + g·(c − u)`` is linear in the pair with a constant scale, so reusing the guided output is the
same as reusing the raw pair and guiding afterwards.

Sequential model calls on the critical path: ``W + ceil((T−W)/N)``; model calls in all:
``T + (N−1)·W`` (the warm-up is replicated). Speed-up bound ``T / (W + ceil((T−W)/N))``.

Inner predict transforms compose: ``parastep+cfg`` (each device's evaluation split over ``cfg``) and
``parastep+lp`` (each evaluation latent-parallel over ``lp``). With ``lp``, the partition of a round is
the one of its start step ``s`` for every device (the partition must be static per compiled round).
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxvdm.profiling import record_compiled
from jaxvdm.sharding.predict import LPWindow, guided_prediction, shard_map
from jaxvdm.sharding.registry import Plan

__all__ = ["rounds", "model_calls", "speedup_bound", "validate", "sample", "serial_reenactment", "reuse_only"]

CACHE_POLICIES = ("own", "fresh")


def validate(num_steps: int, warmup: int, n: int, cache: str = "own") -> None:
    """Raises ValueError for W < 1, a cache policy other than own/fresh, or N larger than T − W."""
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 1:
        raise ValueError(f"parastep warmup must be an integer >= 1 (the cache needs a first output), got {warmup!r}")
    if warmup >= num_steps:
        raise ValueError(f"parastep warmup={warmup} leaves no steps to parallelise out of steps={num_steps}; "
                         f"use warmup < steps")
    if n > num_steps - warmup:
        raise ValueError(f"parastep on {n} devices needs at least {n} steps after warm-up, got {num_steps - warmup} "
                         f"(steps={num_steps}, warmup={warmup}); use fewer devices on 'step' or more steps")
    if cache not in CACHE_POLICIES:
        raise ValueError(f"parastep cache must be one of {CACHE_POLICIES}, got {cache!r}")


def rounds(num_steps: int, warmup: int, n: int) -> list[tuple[int, int]]:
    """``[(start_step, positions)]`` of the parallel rounds (the last may have fewer than ``n``)."""
    return [(s, min(n, num_steps - s)) for s in range(warmup, num_steps, n)]


def model_calls(num_steps: int, warmup: int, n: int) -> tuple[int, int]:
    """``(sequential calls on the critical path, total calls over all devices)``."""
    return warmup + math.ceil((num_steps - warmup) / n), num_steps + (n - 1) * warmup


def speedup_bound(num_steps: int, warmup: int, n: int) -> float:
    return num_steps / model_calls(num_steps, warmup, n)[0]


def _where(c, a, b):
    return jax.tree.map(lambda u, v: jnp.where(c, u, v), a, b)


def _reuse(scheduler, cache, x, sstate, s, j, n_max):
    """``j`` updates from ``x`` with the fixed output ``cache`` (masked, for a traced ``j``)."""
    xh, st = x, sstate
    for k in range(n_max - 1):
        xn, sn = scheduler.step(st, cache, xh, s + k)
        use = k < j
        xh, st = _where(use, xn, xh), _where(use, sn, st)
    return xh


def _round_body(graphdef, plan: Plan, scheduler, n_pos: int, policy: str, lp: LPWindow | None, attention, block_dims):
    axis = plan.loop_axis
    last = scheduler.num_steps - 1

    def body(params, x, sstate, cache, s, ctx, g):
        n = lax.axis_size(axis)
        j = lax.axis_index(axis)
        model = nnx.merge(graphdef, params)
        with jax.named_scope("parastep_reuse"):
            xh = _reuse(scheduler, cache[0], x, sstate, s, j, n)
        i = jnp.minimum(s + j, last)
        o = guided_prediction(model, xh, scheduler.timestep(i), ctx, g, plan=plan, lp=lp, attention=attention,
                              block_dims=block_dims)
        with jax.named_scope("parastep_exchange"):
            gathered = lax.all_gather(o, axis, axis=0)  # [N, 1, C, T, H, W]
        with jax.named_scope("parastep_replay"):
            for k in range(n_pos):
                x, sstate = scheduler.step(sstate, gathered[k], x, s + k)
        new_cache = o if policy == "own" else gathered[n_pos - 1]
        return x, sstate, new_cache[None]

    return body


def sample(pipe, plan: Plan, mesh, noise, context, guidance: float, scheduler, *, attention=None, progress=None):
    """Runs ParaStep on ``mesh``. Returns ``(latents, timings)`` like the exact loop, plus call counts."""
    from jaxvdm.sampling import progress_enabled

    n = plan.size(plan.loop_axis)
    warmup, policy = plan.option("warmup"), plan.option("cache")
    T = scheduler.num_steps
    validate(T, warmup, n, policy)
    warmup = int(warmup)
    den = pipe.denoiser(plan, mesh, attention)
    if mesh is None:  # N = 1: every round is one step evaluated where it stands, i.e. the serial loop
        x, timing = den.sample(noise, context, guidance, scheduler, progress=progress)
        return x, {**timing, "sequential_model_calls": T, "total_model_calls": T}
    windows = None
    if plan.lp_axis:
        from jaxvdm.sharding import lp as lp_lib

        windows = lp_lib.windows_for(plan, noise.shape, pipe.transformer.config.patch_size, T)
    window = (lambda i: windows(i)) if windows else (lambda i: None)

    x = den.place(jnp.array(noise, jnp.float32, copy=True))
    ctx = den.place(jnp.asarray(context))
    g = den.place(jnp.float32(guidance))
    sstate = den.place(jax.tree.map(lambda a: jnp.array(a, copy=True), scheduler.init(x)))

    compiled = {}
    t0 = time.perf_counter()

    def warm_fn(lp):
        key = ("warm", None if lp is None else lp.key())
        if key not in compiled:
            predict = den.predict_fn(lp)

            def warm(params, x, sstate, i, ctx, g):
                v = predict(params, x, scheduler.timestep(i), ctx, g)
                x, sstate = scheduler.step(sstate, v, x, i)
                return x, sstate, v

            compiled[key] = jax.jit(warm).lower(den.state, x, sstate, jnp.int32(0), ctx, g).compile()
            record_compiled(f"parastep_warmup_{plan.describe()}", compiled[key])
        return compiled[key]

    cache_sharding = jax.sharding.NamedSharding(mesh, P(plan.loop_axis))
    cache_shape = (n,) + tuple(noise.shape)

    def round_fn(n_pos, lp):
        key = ("round", n_pos, None if lp is None else lp.key())
        if key not in compiled:
            body = _round_body(den.graphdef, plan, scheduler, n_pos, policy, lp, attention, den.block_dims)
            f = shard_map(body, mesh=mesh, in_specs=(den.specs, P(), P(), P(plan.loop_axis), P(), P(), P()),
                          out_specs=(P(), P(), P(plan.loop_axis)))
            cache_abs = jax.ShapeDtypeStruct(cache_shape, jnp.float32, sharding=cache_sharding)
            compiled[key] = jax.jit(f).lower(den.state, x, sstate, cache_abs, jnp.int32(0), ctx, g).compile()
            record_compiled(f"parastep_round{n_pos}_{plan.describe()}", compiled[key])
        return compiled[key]

    plan_rounds = rounds(T, warmup, n)
    for i in range(warmup):
        warm_fn(window(i))
    for s, n_pos in plan_rounds:
        round_fn(n_pos, window(s))
    compile_s = time.perf_counter() - t0

    bar = None
    if progress_enabled(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=T, desc=f"denoise [{plan.describe()}]", leave=False)
    t0 = time.perf_counter()
    v = None
    for i in range(warmup):
        x, sstate, v = warm_fn(window(i))(den.state, x, sstate, jnp.int32(i), ctx, g)
        if bar:
            bar.update(1)
    cache = jax.device_put(jnp.broadcast_to(v, cache_shape), cache_sharding)
    for s, n_pos in plan_rounds:
        x, sstate, cache = round_fn(n_pos, window(s))(den.state, x, sstate, cache, jnp.int32(s), ctx, g)
        if bar:
            bar.update(n_pos)
    x.block_until_ready()
    if bar:
        bar.close()
    seq, total = warmup + len(plan_rounds), warmup * n + (T - warmup)
    return x, {"compile_s": compile_s, "denoise_s": time.perf_counter() - t0, "sequential_model_calls": seq,
               "total_model_calls": total}


def round_report(pipe, plan: Plan, mesh, noise, context, scheduler, *, attention=None):
    """Communication of one full ParaStep round, read from its compiled HLO (``jaxvdm.sharding.comm``)."""
    from jaxvdm.sharding import comm

    n = plan.size(plan.loop_axis)
    den = pipe.denoiser(plan, mesh, attention)
    body = _round_body(den.graphdef, plan, scheduler, n, plan.option("cache"), None, attention, den.block_dims)
    f = shard_map(body, mesh=mesh, in_specs=(den.specs, P(), P(), P(plan.loop_axis), P(), P(), P()),
                  out_specs=(P(), P(), P(plan.loop_axis)))
    rep = jax.sharding.NamedSharding(mesh, P())
    x = jax.ShapeDtypeStruct(tuple(noise.shape), jnp.float32, sharding=rep)
    st = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), scheduler.init(jnp.zeros(noise.shape)))
    cache = jax.ShapeDtypeStruct((n,) + tuple(noise.shape), jnp.float32,
                                 sharding=jax.sharding.NamedSharding(mesh, P(plan.loop_axis)))
    ctx = jax.ShapeDtypeStruct(tuple(context.shape), jnp.float32, sharding=rep)
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    return comm.measure(jax.jit(f), den.state, x, st, cache, step, ctx, scalar)


def serial_reenactment(predict, scheduler, noise, *, warmup: int, n: int, cache: str = "own"):
    """The ParaStep algorithm run literally, one evaluation after another, on one device.

    ``predict(x, i, p) -> guided velocity`` evaluates the model for step ``i`` with the partition of
    step ``p`` (Latent Parallelism: warm-up steps use their own, a round uses its start step's).
    This is the oracle the parallel run must equal.
    """
    T = scheduler.num_steps
    validate(T, warmup, n, cache)
    x = jnp.asarray(noise, jnp.float32)
    st = scheduler.init(x)
    v = None
    for i in range(warmup):
        v = predict(x, i, i)
        x, st = scheduler.step(st, v, x, i)
    caches = [v] * n
    for s, n_pos in rounds(T, warmup, n):
        outs = []
        for j in range(n_pos):
            xh, sh = x, st
            for k in range(j):
                xh, sh = scheduler.step(sh, caches[j], xh, s + k)
            outs.append(predict(xh, s + j, s))
        for k in range(n_pos):
            x, st = scheduler.step(st, outs[k], x, s + k)
        caches = outs + caches[n_pos:] if cache == "own" else [outs[n_pos - 1]] * n
    return x


def reuse_only(predict, scheduler, noise, *, warmup: int, n: int):
    """Step-skipping baseline with ParaStep's sequential call count: after ``warmup`` serial steps,
    evaluate the model every ``n``-th step and reuse that output for the next ``n-1`` updates."""
    T = scheduler.num_steps
    x = jnp.asarray(noise, jnp.float32)
    st = scheduler.init(x)
    v = None
    for i in range(T):
        if i < warmup or (i - warmup) % n == 0:
            v = predict(x, i, i)
        x, st = scheduler.step(st, v, x, i)
    return x
