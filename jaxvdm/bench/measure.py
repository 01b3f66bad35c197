"""Measuring one row of ``jaxvdm bench``: compile (cold and warm), time, memory, FLOPs and communication.

Every row goes through its strategy's registry entry: the program (``plan.program``, the same function
``jaxvdm comm`` compiles) for compile time, memory and collectives, and for per-step rows the timed
step itself; the sampler (``plan.sample``) for end-to-end rows. Nothing here knows a strategy by name.

*Per-step rows* time one denoising step: the step program is compiled ahead of time, called
``warmup`` times, then ``repeats`` times with ``block_until_ready`` after each; the row's time is the
median. A plan whose step program differs between steps (Latent Parallelism: the partition axis
rotates) times the first step of each distinct axis and reports each (``step_variants``) and their
mean as the row's time. *End-to-end rows* time the whole schedule (compile excluded) through the
strategy's sampler.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from typing import Any

from jaxvdm.bench.spec import dit_flops, latent_shape, model_spec, parse_size, random_transformer
from jaxvdm.bench.units import Unit

__all__ = ["Context", "run_unit", "compilation_cache"]


class Context:
    """What every row of one invocation shares: the model, inputs, schedules, FLOP counts.

    ``loop_steps`` maps a loop strategy to the schedule length of its rows and its reference (the longest
    of ``--e2e-steps`` and what every row of that loop needs, e.g. ParaStep's warm-up + one round).
    """

    def __init__(self, args, loop_steps: dict[str, int] | None = None):
        import jax
        import jax.numpy as jnp

        self.args = args
        self.spec = model_spec(args.model)
        d = self.spec.defaults
        self.frames = int(args.frames or d["num_frames"])
        self.height, self.width = parse_size(args.size) if args.size else (int(d["height"]), int(d["width"]))
        self.shape = latent_shape(self.spec, self.frames, self.height, self.width)
        self.e2e_shape = latent_shape(self.spec, int(args.e2e_frames), self.height, self.width) if args.e2e_frames \
            else self.shape
        self.dtype = {"bf16": jnp.bfloat16, "f32": jnp.float32}[args.dtype]
        self.attention = args.attention
        self.guidance = float(d.get("guidance_scale", 5.0))
        self.shift = float(d.get("flow_shift", 3.0))
        self.scheduler_name = d.get("scheduler", "unipc")
        self.steps = int(args.steps or d.get("steps", 50))
        self.loop_steps = dict(loop_steps or {})
        self.model = random_transformer(self.spec, self.dtype, seed=args.seed)
        cfg = self.spec.config
        self.text_shape = (2, self.spec.text_len, cfg.text_dim)
        self.noise = jax.random.normal(jax.random.PRNGKey(args.seed), self.shape, jnp.float32)
        self.e2e_noise = jax.random.normal(jax.random.PRNGKey(args.seed + 2), self.e2e_shape, jnp.float32)
        self.context = jax.random.normal(jax.random.PRNGKey(args.seed + 1), self.text_shape, jnp.float32)
        from jaxvdm.sharding.registry import parse_options

        self.options = parse_options(args.opt)
        self.defaults = {**d, "vae_stride": self.spec.vae_stride}
        self._precise: dict = {}

    def model_for(self, precision: str):
        """``(model, attention)`` of a row's precision (the FP8 model quantised once per invocation)."""
        if precision not in self._precise:
            from jaxvdm.pipeline import with_precision

            self._precise[precision] = with_precision(self.model, precision, self.attention)
        return self._precise[precision]

    def step_flops(self, latent_thw) -> int:
        return dit_flops(self.spec.config, latent_thw, self.spec.text_len, batch=2)

    def scheduler(self, steps: int):
        from jaxvdm.models.schedulers import make_scheduler

        return make_scheduler(self.scheduler_name, steps, self.shift)

    def plan(self, strategy: str, mesh):
        """The strategy resolved on ``mesh`` with the ``--opt`` options it knows."""
        from jaxvdm.sharding.registry import options_for, resolve

        return resolve(strategy, mesh, options_for(strategy, self.options))

    def e2e_steps(self, loop: str) -> int:
        return int(self.loop_steps.get(loop, self.args.e2e_steps or self.steps))


# ------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def compilation_cache(path):
    """JAX's persistent compilation cache in ``path`` (every executable cached), restored afterwards."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    keys = {"jax_compilation_cache_dir": str(path), "jax_persistent_cache_min_compile_time_secs": 0.0,
            "jax_persistent_cache_min_entry_size_bytes": 0}
    old = {k: getattr(jax.config, k) for k in keys}
    Path(path).mkdir(parents=True, exist_ok=True)
    for k, v in keys.items():
        jax.config.update(k, v)
    cc.reset_cache()
    try:
        yield Path(path)
    finally:
        for k, v in old.items():
            jax.config.update(k, v)
        cc.reset_cache()


class _CacheEvents:
    """Counts persistent-cache hits and misses (``jax.monitoring`` events) inside a ``with``."""

    def __enter__(self):
        import jax

        self.hits = self.misses = 0
        jax.monitoring.register_event_listener(self._on)
        return self

    def _on(self, event, **_):
        if event.endswith("/compilation_cache/cache_hits"):
            self.hits += 1
        elif event.endswith("/compilation_cache/cache_misses"):
            self.misses += 1

    def __exit__(self, *exc):
        import jax

        jax.monitoring.unregister_event_listener(self._on)
        return False


def _peak_memory(mesh) -> int | None:
    import jax

    devs = list(mesh.devices.flat) if mesh is not None else [jax.devices()[0]]
    peaks = []
    for d in devs:
        try:
            stats = d.memory_stats()
        except Exception:  # backends without memory stats
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def _compiled_memory(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _hlo_cost_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def _comm(program, runs: int | None = None) -> dict:
    """The program's collectives (from its HLO) as row fields, multiplied to one video's runs."""
    from jaxvdm.sharding.comm import report_of_hlo

    report = report_of_hlo(program.compiled.as_text())
    k = program.runs if runs is None else runs
    return {"comm_bytes_per_device": report.bytes_per_device * k, "comm_bytes_per_run": report.bytes_per_device,
            "comm_runs": k, "comm_unit": program.name,
            "comm": {"count": report.count * k, "bytes_per_device": report.bytes_per_device * k,
                     "trip_counts_known": report.trip_counts_known,
                     "per_kind": {kind: {"count": t.count * k, "bytes_per_device": t.bytes_per_device * k,
                                         "group_sizes": list(t.group_sizes)} for kind, t in report.per_kind.items()},
                     "unaccounted": list(report.unaccounted)}}


def _make_mesh(axes: dict | None):
    if not axes:
        return None
    from jaxvdm.sharding.mesh import make_mesh

    return make_mesh(dict(axes))


# ------------------------------------------------------------------------------------------ rows


def _compile_program(ctx: Context, plan, mesh, sched, step: int, warm: bool, precision: str) -> tuple[Any, dict]:
    """The plan's program for ``step``, compiled cold (and again from the persistent cache when ``warm``)."""
    import jax

    model, attention = ctx.model_for(precision)

    def build():
        return plan.program(model, plan, mesh, ctx.shape, ctx.text_shape, sched, attention=attention,
                            defaults=ctx.defaults, step=step)

    row: dict = {}
    with _CacheEvents() as ev:
        t0 = time.perf_counter()
        program = build()
        row["compile_cold_s"] = time.perf_counter() - t0
    row["cold_cache_hit"] = ev.hits > 0
    if warm:
        jax.clear_caches()
        with _CacheEvents() as ev:
            t0 = time.perf_counter()
            program = build()
            row["compile_warm_s"] = time.perf_counter() - t0
        row["warm_cache_hit"] = ev.hits > 0 and ev.misses == 0
    return program, row


def _time_step(ctx: Context, den, compiled, sched, step: int) -> list[float]:
    import jax.numpy as jnp

    from jaxvdm.sharding import runtime

    x, c, g, s = runtime.place_inputs(den.mesh, ctx.noise, ctx.context, ctx.guidance, sched)
    times = []
    for r in range(ctx.args.warmup + max(1, ctx.args.repeats)):
        t0 = time.perf_counter()
        x, s = compiled(den.state, x, s, jnp.int32(step), c, g)
        x.block_until_ready()
        if r >= ctx.args.warmup:
            times.append(time.perf_counter() - t0)
    if not bool(jnp.isfinite(x).all()):
        raise FloatingPointError(f"the step at index {step} produced non-finite latents")
    return times


def measure_step(ctx: Context, unit: Unit) -> tuple[dict, Any]:
    """A per-step row (predict transforms): every distinct step variant of the schedule, compiled and timed."""
    from jaxvdm.sharding import sampling

    mesh = _make_mesh(unit.mesh)
    plan = ctx.plan(unit.strategy, mesh)
    sched = ctx.scheduler(ctx.steps)
    sampling.clear_placements()
    model, attention = ctx.model_for(unit.precision)
    den = sampling.placed(model, plan, mesh, attention)  # the program below reuses this placement
    windows = den.windows(ctx.shape, sched.num_steps)
    first: dict = {}
    for i, lp in enumerate(windows):
        axis = None if lp is None or lp.axis is None else "THW"[lp.axis - 2]
        first.setdefault(axis, i)
    variants, row = [], {}
    for axis, step in first.items():
        program, compile_row = _compile_program(ctx, plan, mesh, sched, step, not variants and ctx.args.warm_compile,
                                                unit.precision)
        if not variants:
            row.update(compile_row, **_comm(program, runs=1), hlo_cost_flops=_hlo_cost_flops(program.compiled),
                       compiled_memory_bytes=_compiled_memory(program.compiled))
        times = _time_step(ctx, den, program.compiled, sched, step)
        variants.append({"step": step, "lp_axis": axis, "time_s": statistics.median(times), "times_s": times,
                         "compile_cold_s": compile_row["compile_cold_s"]})
    row.update(precision=unit.precision, time_s=statistics.mean(v["time_s"] for v in variants),
               times_s=variants[0]["times_s"],
               flops=ctx.step_flops(ctx.shape[2:]), peak_memory_bytes=_peak_memory(mesh), finite=True)
    if len(variants) > 1 or variants[0]["lp_axis"] is not None:
        row["step_variants"] = variants
        row["lp_axis"] = "/".join(str(v["lp_axis"] or "full") for v in variants)
    sampling.clear_placements()
    return row, None


def _timed_runs(fn, runs: int):
    """Calls ``fn() -> (latent, timings)`` ``runs`` times; between runs JAX's in-memory caches and the
    samplers' placements are cleared, so run 2's compile comes from the persistent cache."""
    import jax

    from jaxvdm.sharding import sampling

    results = []
    for r in range(max(1, runs)):
        if r:
            jax.clear_caches()
        sampling.clear_placements()
        with _CacheEvents() as ev:
            out, timing = fn()
        results.append((out, dict(timing), ev.hits, ev.misses))
    sampling.clear_placements()
    return results


def measure_e2e(ctx: Context, unit: Unit) -> tuple[dict, Any]:
    """An end-to-end row (loop strategies and their one-device references): the strategy's sampler."""
    import warnings

    mesh = _make_mesh(unit.mesh)
    plan = ctx.plan(unit.strategy, mesh)
    sched = ctx.scheduler(ctx.e2e_steps(plan.loop))

    def once():
        return plan.sample(ctx.model, plan, mesh, ctx.e2e_noise, ctx.context, ctx.guidance, sched,
                           attention=ctx.attention, progress=False, defaults=ctx.defaults, seed=ctx.args.seed)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. DualParal's bubble-ratio warning: reported in the row instead
        results = _timed_runs(once, ctx.args.e2e_runs)
    denoise = [t["denoise_s"] for _, t, _, _ in results]
    info = results[-1][1]
    row = {"time_s": statistics.median(denoise[1:] if len(denoise) > 1 else denoise), "times_s": denoise,
           "compile_cold_s": results[0][1].get("compile_s"),
           "compile_warm_s": results[1][1].get("compile_s") if len(results) > 1 else None,
           "warm_cache_hit": (results[1][2] > 0 and results[1][3] == 0) if len(results) > 1 else None,
           "steps": sched.num_steps, "latent_shape": list(ctx.e2e_shape), "peak_memory_bytes": _peak_memory(mesh),
           "flops": sum(ctx.step_flops(thw) * n for thw, n in info.get("useful_forwards", ()))}
    row.update({k: v for k, v in info.items() if k not in ("compile_s", "denoise_s", "useful_forwards")})
    if mesh is None:
        row.update(comm_bytes_per_device=0, comm={"count": 0, "bytes_per_device": 0, "per_kind": {}})
    else:
        program = plan.program(ctx.model, plan, mesh, ctx.e2e_shape, ctx.text_shape, sched, attention=ctx.attention,
                               defaults=ctx.defaults)
        row.update(_comm(program))
    return row, results[-1][0]


def run_unit(ctx: Context, unit: Unit, latents_dir: Path | None) -> dict:
    """Measures one row; an error becomes a row with ``status="error"`` and the whole reason."""
    import gc

    import numpy as np

    from jaxvdm.bench.report import slug
    from jaxvdm.sharding.mesh import format_mesh

    base = {"name": unit.name, "kind": unit.kind, "strategy": unit.strategy, "mesh": format_mesh(unit.mesh),
            "devices": int(np.prod(list(unit.mesh.values()))) if unit.mesh else 1, "reference": unit.reference}
    t0 = time.perf_counter()
    try:
        row, out = (measure_step if unit.kind == "step" else measure_e2e)(ctx, unit)
    except Exception as e:  # noqa: BLE001  (a row that fails must not lose the others)
        msg = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        return {**base, "status": "error", "reason": f"{type(e).__name__}: {msg}", "wall_s": time.perf_counter() - t0}
    finally:
        gc.collect()
    if out is not None and latents_dir is not None:
        latents_dir.mkdir(parents=True, exist_ok=True)
        np.save(latents_dir / f"{slug(unit.name)}.npy", np.asarray(out, np.float32))
    return {**base, "status": "ok", **row, "wall_s": time.perf_counter() - t0}
