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
   * In a short last round (``n < N``) devices ``j >= n`` have no step to evaluate: they skip the model
     call (as in the paper's code), and no reuse chain runs past the round's last step.

Guidance is applied *before* the exchange, which halves the bytes: guidance
``u + g·(c − u)`` is linear in the pair with a constant scale, so reusing the guided output is the
same as reusing the raw pair and guiding afterwards.

Sequential model calls on the critical path: ``W + ceil((T−W)/N)``; model calls in all:
``T + (N−1)·W`` (the warm-up is replicated; every later step is evaluated once, on one device). Speed-up
bound ``T / (W + ceil((T−W)/N))``.

Inner predict transforms compose: ``parastep+cfg`` (each device's evaluation split over ``cfg``) and
``parastep+lp`` (each evaluation latent-parallel over ``lp``). With ``lp``, every evaluation uses its own
step's partition, so the axis keeps rotating: device ``j`` of a round starting at ``s`` evaluates step
``s + j`` with step ``s + j``'s partition (a static branch per distinct partition, picked by ``j``).
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

from jaxvdm.sharding import runtime, sampling
from jaxvdm.sharding.experts import as_experts, expert_guidance, primary, step_experts
from jaxvdm.sharding.plan import Plan
from jaxvdm.sharding.predict import LPWindow, guided_prediction, shard_map

__all__ = ["rounds", "model_calls", "speedup_bound", "validate", "min_steps", "sample", "round_program",
           "round_windows", "serial_reenactment", "reuse_only"]

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
    """``(sequential calls on the critical path, total calls over all devices)``: the calls :func:`sample`
    runs (a short last round's spare devices make none)."""
    return warmup + math.ceil((num_steps - warmup) / n), num_steps + (n - 1) * warmup


def speedup_bound(num_steps: int, warmup: int, n: int) -> float:
    """``T / (W + ceil((T - W) / N))``: the speed-up if a round cost one model call."""
    return num_steps / model_calls(num_steps, warmup, n)[0]


def min_steps(plan: Plan) -> int:
    """The shortest schedule ``plan`` can run: its warm-up and one full round."""
    return int(plan.option("warmup")) + plan.size(plan.loop_axis)


def _where(c, a, b):
    return jax.tree.map(lambda u, v: jnp.where(c, u, v), a, b)


def _reuse(scheduler, cache, x, sstate, s, j, n_max):
    """``min(j, n_max - 1)`` updates from ``x`` with the fixed output ``cache`` (masked, for a traced ``j``);
    ``n_max`` is the round's number of positions, so no update runs past the round's last step."""
    xh, st = x, sstate
    for k in range(n_max - 1):
        xn, sn = scheduler.step(st, cache, xh, s + k)
        use = k < j
        xh, st = _where(use, xn, xh), _where(use, sn, st)
    return xh


def round_windows(windows, s: int, n: int) -> tuple[LPWindow | None, ...]:
    """The LP partition each of the ``n`` devices of the round starting at step ``s`` evaluates with: its
    own step's, ``windows[min(s + j, T - 1)]`` (a short last round's spare devices, which skip the model call,
    get the last step's)."""
    last = len(windows) - 1
    return tuple(windows[min(s + j, last)] for j in range(n))


def _predict_for_position(models, xh, t, ctx, gs, j, lps, exps, plan, attention, dims):
    """Device ``j``'s guided prediction with its own step's partition ``lps[j]`` and its own step's expert
    ``models[exps[j]]`` (guidance ``gs[exps[j]]``): one branch per distinct (expert, partition), chosen by
    ``j`` (every device of an ``lp`` group shares ``j``, so its collectives match)."""
    keys = [(e, None if lp is None else lp.key()) for e, lp in zip(exps, lps)]
    distinct = list(dict.fromkeys(keys))

    def branch(pos):
        e, lp = exps[pos], lps[pos]
        return lambda xh, t: guided_prediction(models[e], xh, t, ctx, gs[e], plan=plan, lp=lp, attention=attention,
                                               dims=dims)

    if len(distinct) == 1:
        return branch(0)(xh, t)
    which = jnp.asarray([distinct.index(k) for k in keys], jnp.int32)[j]
    return lax.switch(which, [branch(keys.index(k)) for k in distinct], xh, t)


def _round_body(graphdef, plan: Plan, scheduler, n_pos: int, policy: str, lps, exps, attention, dims):
    axis = plan.loop_axis
    last = scheduler.num_steps - 1

    def body(params, x, sstate, cache, s, ctx, g):
        n = lax.axis_size(axis)
        j = lax.axis_index(axis)
        models = [nnx.merge(graphdef, p) for p in params]  # one per expert
        with jax.named_scope("parastep_reuse"):
            xh = _reuse(scheduler, cache[0], x, sstate, s, j, n_pos)
        i = jnp.minimum(s + j, last)

        def predict():
            return _predict_for_position(models, xh, scheduler.timestep(i), ctx, g, j, lps, exps, plan, attention,
                                         dims)

        if n_pos < n:  # a short last round: devices past its positions have no step and skip the model call
            o = lax.cond(j < n_pos, lambda: predict().astype(jnp.float32), lambda: jnp.zeros(x.shape, jnp.float32))
        else:
            o = predict()
        with jax.named_scope("parastep_exchange"):
            gathered = lax.all_gather(o, axis, axis=0)  # [N, 1, C, T, H, W]
        with jax.named_scope("parastep_replay"):
            for k in range(n_pos):
                x, sstate = scheduler.step(sstate, gathered[k], x, s + k)
        new_cache = o if policy == "own" else gathered[n_pos - 1]
        return x, sstate, new_cache[None]

    return body


def _round_fn(dens, scheduler, n_pos: int, lps, exps=None):
    """The shard_mapped round ``(params, x, sstate, cache [N, ...], s, ctx, g) -> (x, sstate, cache)``;
    ``params`` and ``g`` are tuples, one entry per expert (``dens``: their Denoisers, one config); ``lps``
    is each position's partition (:func:`round_windows`), ``exps`` each position's expert (default all 0)."""
    den = dens[0]
    plan = den.plan
    exps = (0,) * len(lps) if exps is None else tuple(exps)
    body = _round_body(den.graphdef, plan, scheduler, n_pos, plan.option("cache"), lps, exps, den.attention, den.dims)
    specs = tuple(d.specs for d in dens)
    gspec = tuple(P() for _ in dens)
    return shard_map(body, mesh=den.mesh, in_specs=(specs, P(), P(), P(plan.loop_axis), P(), P(), gspec),
                     out_specs=(P(), P(), P(plan.loop_axis)))


def sample(model, plan: Plan, mesh, noise, context, guidance: float, scheduler, *, attention=None, progress=None,
           defaults=None, seed=None):
    """Runs ParaStep on ``mesh``. Returns ``(latents, timings)`` like the exact loop, plus call counts.

    ``model``: one transformer or an :class:`~jaxvdm.sharding.experts.Experts`; every evaluation (warm-up
    step or round position) uses the expert and guidance of its own step, also in a round that straddles
    the boundary (both experts' weights stay placed)."""
    n = plan.size(plan.loop_axis)
    warmup, policy = plan.option("warmup"), plan.option("cache")
    T = scheduler.num_steps
    validate(T, warmup, n, policy)
    warmup = int(warmup)
    experts = as_experts(model)
    which, guidances = step_experts(experts, scheduler), expert_guidance(experts, guidance)
    dens = tuple(sampling.placed(m, plan, mesh, attention) for m in experts.models)
    den = dens[0]
    if mesh is None:  # N = 1: every round is one step evaluated where it stands, i.e. the serial loop
        x, timing = sampling.denoise(dens, which, noise, context, guidances, scheduler, progress=progress)
        return x, {**timing, "sequential_model_calls": T, "total_model_calls": T}
    windows = den.windows(noise.shape, T)
    x, ctx, g0, sstate = runtime.place_inputs(mesh, noise, context, guidances[0], scheduler)
    gs = (g0,) + tuple(den.place(jnp.float32(g)) for g in guidances[1:])
    states = tuple(d.state for d in dens)
    programs = runtime.Programs(mesh)
    name = plan.describe()

    def warm_fn(lp, e):
        predict = dens[e].predict_fn(lp)

        def warm(params, x, sstate, i, ctx, g):
            v = predict(params, x, scheduler.timestep(i), ctx, g)
            x, sstate = scheduler.step(sstate, v, x, i)
            return x, sstate, v

        return programs.get(("warm", e, None if lp is None else lp.key()), f"parastep_warmup_{name}",
                            lambda: jax.jit(warm), (dens[e].state, x, sstate, jnp.int32(0), ctx, gs[e]))

    cache_sharding = jax.sharding.NamedSharding(mesh, P(plan.loop_axis))
    cache_shape = (n,) + tuple(noise.shape)
    cache_abs = jax.ShapeDtypeStruct(cache_shape, jnp.float32, sharding=cache_sharding)

    def round_fn(n_pos, lps, exps):
        key = ("round", n_pos, tuple(None if lp is None else lp.key() for lp in lps), exps)
        return programs.get(key, f"parastep_round{n_pos}_{name}",
                            lambda: jax.jit(_round_fn(dens, scheduler, n_pos, lps, exps)),
                            (states, x, sstate, cache_abs, jnp.int32(0), ctx, gs))

    plan_rounds = rounds(T, warmup, n)
    warm_fns = [warm_fn(windows[i], which[i]) for i in range(warmup)]
    round_fns = [round_fn(n_pos, round_windows(windows, s, n), round_windows(which, s, n)) for s, n_pos in plan_rounds]
    compile_s = programs.seconds

    t0 = time.perf_counter()
    with runtime.progress_bar(T, f"denoise [{name}]", progress) as bar:
        v = None
        for i, fn in enumerate(warm_fns):
            x, sstate, v = fn(dens[which[i]].state, x, sstate, jnp.int32(i), ctx, gs[which[i]])
            bar.done(1, x)
        cache = jax.device_put(jnp.broadcast_to(v, cache_shape), cache_sharding)
        for (s, n_pos), fn in zip(plan_rounds, round_fns):
            x, sstate, cache = fn(states, x, sstate, cache, jnp.int32(s), ctx, gs)
            bar.done(n_pos, x)
        x.block_until_ready()
    seq, total = warmup + len(plan_rounds), warmup * n + sum(n_pos for _, n_pos in plan_rounds)
    return x, {"compile_s": compile_s, "denoise_s": time.perf_counter() - t0, "sequential_model_calls": seq,
               "total_model_calls": total, "useful_forwards": [(tuple(noise.shape[2:]), T)], "rounds": len(plan_rounds),
               "speedup_bound": speedup_bound(T, warmup, n)}


def round_program(model, plan: Plan, mesh, latent_shape, text_shape, scheduler, *, attention=None, defaults=None,
                  step: int | None = None) -> sampling.Program:
    """One full ParaStep round compiled for ``model`` (abstract or real) and abstract inputs; it runs once
    per round of the schedule (a short last round moves the same bytes: its all-gather has N outputs)."""
    n = plan.size(plan.loop_axis)
    validate(scheduler.num_steps, plan.option("warmup"), n, plan.option("cache"))
    if mesh is None:
        raise ValueError("a ParaStep round program needs a mesh with a 'step' axis")
    den = sampling.placed(primary(model), plan, mesh, attention)
    s = int(plan.option("warmup")) if step is None else step
    lps = round_windows(den.windows(latent_shape, scheduler.num_steps), s, n)
    x = jax.ShapeDtypeStruct(tuple(latent_shape), jnp.float32)
    args = sampling.abstract_like((x, jax.eval_shape(scheduler.init, x)), mesh)
    cache = jax.ShapeDtypeStruct((n,) + tuple(latent_shape), jnp.float32,
                                 sharding=jax.sharding.NamedSharding(mesh, P(plan.loop_axis)))
    rest = sampling.abstract_like((jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct(tuple(text_shape),
                                   jnp.float32), (jax.ShapeDtypeStruct((), jnp.float32),)), mesh)
    compiled = jax.jit(_round_fn((den,), scheduler, n, lps)).lower((den.state,), *args, cache, *rest).compile()
    n_rounds = len(rounds(scheduler.num_steps, int(plan.option("warmup")), n))
    return sampling.Program(name=f"round of {n} steps", compiled=compiled, runs=n_rounds)


def serial_reenactment(predict, scheduler, noise, *, warmup: int, n: int, cache: str = "own"):
    """The ParaStep algorithm run literally, one evaluation after another, on one device.

    ``predict(x, i, p) -> guided velocity`` evaluates the model for step ``i`` with the partition of
    step ``p`` (always ``p = i``: with Latent Parallelism every evaluation uses its own step's partition).
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
            outs.append(predict(xh, s + j, s + j))
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
