"""``jaxvdm bench`` and ``jaxvdm comm``: speed, memory, compile time and communication per strategy.

    jaxvdm bench --model wan2.1-t2v-1.3b --size 480x832 --frames 81 --dtype bf16 --attention cudnn \\
        --strategies single,cfg,ulysses,cfg+ulysses,ring,lp,parastep,dualparal --json bench.json
    python -m jaxvdm.bench --model tiny --cpu-devices 8 --strategies cfg,ulysses   # same, without the CLI
    jaxvdm comm --model wan2.1-t2v-1.3b --frames 81 --size 480x832 --mesh sp=4 --strategy ulysses

Random weights (:func:`jaxvdm.models.wan.random_pipeline`, or the built-in ``tiny`` config), random
prompt embeddings ``[2, text_len, text_dim]`` (guidance on: the cond/uncond pair), no decoding.

What a row measures
-------------------
*Per-step rows* (single, cfg, ulysses, ring, fsdp, lp and their compositions) time ONE denoising step
of :class:`jaxvdm.sampling.Denoiser`: the jitted ``step_fn`` the sampler runs (guided prediction over
the mesh + scheduler update), compiled ahead of time here, called ``warmup`` times, then ``repeats``
times with ``block_until_ready`` after each call; the row's time is the median. The output latent
and solver state are fed back (the step donates them), the step index cycles through the schedule.
Latent Parallelism's partition changes per step; the row times the partition of step 0 (its axis is
in ``lp_axis``).

*End-to-end rows* (parastep, dualparal, and their references), whose unit is not one step: the
denoising time of the whole schedule (``--e2e-steps``), compile excluded, against the matching
one-device reference measured in the same invocation: the exact sampler for ParaStep, the serial
block-wise algorithm (DualParal's oracle, same blocks, same steps) for DualParal. They also report
``rel_err_vs_reference`` = max|out - ref| / max|ref| of the final latents.

Columns
-------
- ``compile_cold_s``: lower + compile of the step with an empty persistent compilation cache (a fresh
  temporary cache folder unless ``--cache-dir``); ``compile_warm_s``: the same after
  ``jax.clear_caches()`` (in-memory caches gone), so the executable comes from the persistent cache
  (``warm_cache_hit`` says whether it did); this is what a second ``jaxvdm generate`` pays.
- ``peak_memory_bytes``: ``peak_bytes_in_use`` of ``device.memory_stats()`` (max over the row's
  devices; None where the backend has no memory stats, e.g. CPU). In one process this is the
  process's high-water mark so far (``peak_scope="process"``); ``--isolate`` runs every row in its
  own process (``peak_scope="row"``). ``compiled_memory_bytes`` is XLA's static estimate for one
  device (arguments + outputs + temporaries - aliased) and is always there.
- ``flops``: ANALYTIC matmul FLOPs of the useful work (:func:`dit_flops`: 2 per multiply-add,
  projections, attention scores and values, feed-forward, embeddings, head; CFG batch 2): the exact
  single-device step for every per-step row (so strategies that compute more, such as LP's
  overlapping windows, are not credited for it), ``steps x step`` for the ParaStep rows, window
  forwards ``x blocks x steps`` for DualParal (cached-K/V attention not counted). ``tflops`` =
  flops / time, summed over the row's devices; ``tflops_per_device`` divides by their count.
  ``hlo_cost_flops`` (XLA's cost analysis of one device's program) is shown for reference only:
  it counts the layer scan's body once and not cuDNN's custom calls.
- ``comm_bytes_per_device``: bytes sent per device (max over devices) by the collectives of the
  compiled program, read from its optimised HLO by :mod:`jaxvdm.sharding.comm` (loop trip counts
  applied): per step for per-step rows; for the whole schedule for ParaStep (one round's program x
  rounds) and DualParal (its one pipelined program). ``comm`` has the per-kind detail.
- ``speedup``: reference time / row time; per-step rows against ``single`` (one device, exact step).

``--torch`` also times diffusers' ``WanTransformer3DModel`` for the same step (batch 2, same latent,
same text length; ``benchmarks/diffusers_step.py`` in a subprocess, run before JAX takes the GPU) and
adds rows with the ratio jaxvdm / diffusers of the step times.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run", "add_comm_parser", "run_comm", "main", "dit_flops", "model_spec", "ModelSpec",
           "mesh_for", "SCHEMA"]

SCHEMA = "jaxvdm-bench/1"
DEFAULT_STRATEGIES = "single,cfg,ulysses,cfg+ulysses,ring,lp,parastep,dualparal"

# ------------------------------------------------------------------------------------------ models


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model size to benchmark: transformer config, VAE stride, text length and sampling defaults."""

    name: str
    config: Any  # WanConfig
    vae_stride: tuple[int, int, int]
    text_len: int
    defaults: dict
    block_frames: int
    context_frames: int


def _tiny_config():
    from jaxvdm.models.wan.config import WanConfig

    return WanConfig(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4,
                     text_dim=32, freq_dim=32, ffn_dim=128, num_layers=4)


def model_spec(name: str) -> ModelSpec:
    """``tiny`` (built in: 4 layers of width 64, for CPU tests) or a preset (``shapes``, ``wan2.1-t2v-1.3b``, ...)."""
    keys = ("num_frames", "height", "width", "steps", "guidance_scale", "flow_shift", "scheduler")
    if name == "tiny":
        return ModelSpec("tiny", _tiny_config(), (4, 8, 8), 16,
                         dict(num_frames=17, height=64, width=64, steps=6, guidance_scale=5.0, flow_shift=3.0,
                              scheduler="unipc"), block_frames=2, context_frames=1)
    from jaxvdm.presets import list_presets, load_preset, wan_config

    if name not in list_presets():
        raise ValueError(f"unknown model {name!r} for bench; choose tiny or a preset: {', '.join(list_presets())}")
    p = load_preset(name)
    pipe = p.get("pipeline", {})
    text_len = int(pipe.get("max_text_len", p.get("text", {}).get("max_len", 512)))
    return ModelSpec(name, wan_config(name), tuple(int(v) for v in pipe.get("vae_stride", (4, 8, 8))), text_len,
                     {k: pipe[k] for k in keys if k in pipe},
                     block_frames=int(pipe.get("dualparal_block_frames", 4)),
                     context_frames=int(pipe.get("dualparal_context_frames", 1)))


def _pipeline(spec: ModelSpec, dtype, seed: int = 0):
    if spec.name != "tiny":
        from jaxvdm.models.wan.pipeline import random_pipeline

        return random_pipeline(spec.name, dtype=dtype, seed=seed, text_len=spec.text_len)
    from jaxvdm.models.wan.loader import init_transformer
    from jaxvdm.pipeline import Pipeline

    model = init_transformer(spec.config, seed=seed, dtype=dtype, param_dtype=dtype)
    return Pipeline(name="tiny (random weights)", transformer=model, encode_text=None, decode=None,
                    vae_stride=spec.vae_stride, defaults=dict(spec.defaults))


def latent_shape(spec: ModelSpec, frames: int, height: int, width: int) -> tuple[int, ...]:
    """``(1, C, T, H, W)``; raises the pipeline's SizeError for sizes the model cannot take."""
    import types

    from jaxvdm.pipeline import Pipeline

    # only the config is read: no model, no tracing, JAX's backends stay untouched (see --isolate)
    pipe = Pipeline(spec.name, types.SimpleNamespace(config=spec.config), None, None, spec.vae_stride, {})
    return pipe.latent_shape(frames, height, width)


def dit_flops(cfg, latent_thw, text_len: int, batch: int = 1) -> int:
    """Analytic matmul FLOPs (2 per multiply-add) of one Wan DiT forward.

    ``latent_thw``: (T, H, W) of the latent; ``cfg``: a WanConfig. Per layer with S tokens, width D,
    feed-forward F, text length L: self-attention projections ``8 S D^2``, scores and values
    ``4 S^2 D``, cross-attention projections ``4 S D^2 + 4 L D^2`` and scores/values ``4 S L D``,
    feed-forward ``4 S D F``; plus patch embedding, text and time embedders, and the head.
    Elementwise work (norms, RoPE, softmax, modulation) is not counted.
    """
    t, h, w = (int(v) for v in latent_thw)
    pt, ph, pw = cfg.patch_size
    S = (t // pt) * (h // ph) * (w // pw)
    D, F, L, pv = cfg.hidden_size, cfg.ffn_dim, int(text_len), cfg.patch_volume
    layer = 8 * S * D * D + 4 * S * S * D + 4 * S * D * D + 4 * L * D * D + 4 * S * L * D + 4 * S * D * F
    embed = (2 * S * cfg.in_channels * pv * D + 2 * L * (cfg.text_dim * D + D * D) + 2 * (cfg.freq_dim * D + D * D)
             + 2 * D * 6 * D)
    head = 2 * S * D * cfg.out_channels * pv
    return int(batch) * (cfg.num_layers * layer + embed + head)


# ------------------------------------------------------------------------------------------ meshes


def mesh_for(strategy: str, pool: dict[str, int], n_devices: int) -> tuple[dict[str, int] | None, str | None]:
    """The mesh axes of ``strategy``: sizes from ``pool`` (``--mesh``), ``cfg`` = 2, and the one axis
    left unsized gets the remaining devices. Returns ``(axes, None)`` or ``(None, reason to skip)``."""
    from jaxvdm.sharding.mesh import AXES
    from jaxvdm.sharding.registry import STRATEGIES

    names = [n.strip() for n in strategy.split("+")]
    for n in names:
        if n not in STRATEGIES:
            raise ValueError(f"unknown strategy {n!r}; available: {', '.join(STRATEGIES)} (join with '+')")
    axes = [STRATEGIES[n].axis for n in names if STRATEGIES[n].axis]
    sizes, free = {}, []
    for a in axes:
        if a in pool:
            sizes[a] = int(pool[a])
        elif a == "cfg":
            sizes[a] = 2
        else:
            free.append(a)
    known = math.prod(sizes.values()) if sizes else 1
    if len(free) > 1:
        return None, f"give the sizes of axes {free} with --mesh (e.g. --mesh {free[0]}=2)"
    if free:
        rest = n_devices // known
        if rest < 2:
            return None, (f"axis {free[0]!r} would have size {rest}: needs at least {2 * known} devices, "
                          f"have {n_devices}")
        sizes[free[0]] = rest
    total = math.prod(sizes.values()) if sizes else 1
    if total > n_devices:
        return None, f"mesh {_fmt_mesh(sizes)} needs {total} devices, have {n_devices}"
    return {a: sizes[a] for a in AXES if a in sizes}, None


def _fmt_mesh(axes: dict | None) -> str:
    return "1 device" if not axes else ",".join(f"{k}={v}" for k, v in axes.items())


def _make_mesh(axes: dict | None):
    if not axes:
        return None
    from jaxvdm.sharding.mesh import make_mesh

    return make_mesh(dict(axes))


# ------------------------------------------------------------------------------------------ jax helpers


def _set_cpu_devices(n: int | None) -> None:
    """Simulates ``n`` CPU devices (only before JAX's backends start)."""
    if n is None:
        return
    import jax

    if n < 1:
        raise ValueError(f"--cpu-devices must be at least 1, got {n}")
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
        if not os.environ.get("JAX_PLATFORMS"):
            jax.config.update("jax_platforms", "cpu")
    except RuntimeError:  # backends already up: fine if they already have that many devices
        if len(jax.devices()) < n:
            raise ValueError(f"--cpu-devices {n}: JAX already started with {len(jax.devices())} devices; "
                             "set it before anything uses JAX (or XLA_FLAGS="
                             f"--xla_force_host_platform_device_count={n})")


@contextlib.contextmanager
def _compilation_cache(path: str | os.PathLike):
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


def _comm_of_hlo(text: str):
    from jaxvdm.sharding import comm

    return comm.comm_report(comm.collectives_from_hlo(text), comm.num_devices_from_hlo(text), hlo=text)


def _comm_summary(report, multiplier: int = 1) -> dict:
    return {
        "count": report.count * multiplier,
        "bytes_per_device": report.bytes_per_device * multiplier,
        "trip_counts_known": report.trip_counts_known,
        "per_kind": {k: {"count": t.count * multiplier, "bytes_per_device": t.bytes_per_device * multiplier,
                         "group_sizes": list(t.group_sizes)} for k, t in report.per_kind.items()},
        "unaccounted": list(report.unaccounted),
    }


def _rel_err(a, b) -> float:
    import numpy as np

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def hardware_info() -> tuple[dict, dict]:
    """``(hardware, software)`` of this process's JAX backend."""
    import flax
    import jax
    import jaxlib
    import numpy as np

    devs = jax.devices()
    hw = {"platform": devs[0].platform, "device_kind": devs[0].device_kind, "device_count": len(devs),
          "process_count": jax.process_count(), "host": platform.node(), "cpu_count": os.cpu_count()}
    if devs[0].platform == "gpu" and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
            hw["nvidia_smi"] = [line.strip() for line in out.splitlines() if line.strip()]
        except Exception:
            pass
    sw = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__, "numpy": np.__version__,
          "python": platform.python_version()}
    return hw, sw


# ------------------------------------------------------------------------------------------ units


@dataclasses.dataclass
class Unit:
    """One row: ``algo`` is step | exact | parastep | dualparal | dualparal_oracle."""

    name: str
    kind: str  # "step" or "e2e"
    algo: str
    strategy: str
    mesh: dict | None
    reference: str | None = None


def plan_units(args, n_devices: int) -> tuple[list[Unit], list[dict]]:
    """The rows to measure for ``args`` on ``n_devices`` devices, and the rows skipped (with reasons)."""
    from jaxvdm.sharding.mesh import parse_mesh_spec
    from jaxvdm.sharding.registry import STRATEGIES

    pool = parse_mesh_spec(args.mesh) if args.mesh else {}
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not names:
        raise ValueError("--strategies is empty; e.g. --strategies single,cfg,ulysses")
    units: list[Unit] = []
    skipped: list[dict] = []
    if args.baseline and not args.baseline_from:
        units.append(Unit("single", "step", "step", "single", None))
    step_ref = "single" if (args.baseline or args.baseline_from) else None
    e2e_refs = set()
    for s in names:
        if s == "single":
            continue
        axes, why = mesh_for(s, pool, n_devices)
        parts = s.split("+")
        loop = next((p for p in parts if STRATEGIES[p].kind == "loop"), None)
        if axes is None:
            skipped.append({"name": s, "strategy": s, "kind": "e2e" if loop else "step", "status": "skipped",
                            "reason": why})
            continue
        if loop == "parastep":
            if "exact" not in e2e_refs:
                units.append(Unit("single (exact sampler, e2e)", "e2e", "exact", "single", None))
                e2e_refs.add("exact")
            units.append(Unit(s, "e2e", "parastep", s, axes, "single (exact sampler, e2e)"))
        elif loop == "dualparal":
            if "oracle" not in e2e_refs:
                units.append(Unit("dualparal oracle (serial, 1 device, e2e)", "e2e", "dualparal_oracle", "dualparal",
                                  None))
                e2e_refs.add("oracle")
            units.append(Unit(s, "e2e", "dualparal", s, axes, "dualparal oracle (serial, 1 device, e2e)"))
        else:
            units.append(Unit(s, "step", "step", s, axes, step_ref))
    return units, skipped


class _Context:
    """What every row of one invocation shares: the model, inputs, schedulers, FLOP counts."""

    def __init__(self, args):
        import jax
        import jax.numpy as jnp

        from jaxvdm.schedulers import make_scheduler

        self.args = args
        self.spec = model_spec(args.model)
        d = self.spec.defaults
        self.frames = int(args.frames or d["num_frames"])
        self.height, self.width = _size(args.size) if args.size else (int(d["height"]), int(d["width"]))
        self.shape = latent_shape(self.spec, self.frames, self.height, self.width)
        self.dtype = {"bf16": jnp.bfloat16, "f32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16,
                      "float32": jnp.float32}[args.dtype]
        self.attention = args.attention
        self.guidance = float(d.get("guidance_scale", 5.0))
        self.shift = float(d.get("flow_shift", 3.0))
        self.scheduler_name = d.get("scheduler", "unipc")
        self.steps = int(args.steps or d.get("steps", 50))
        self.step_sched = make_scheduler(self.scheduler_name, self.steps, self.shift)
        self.pipe = _pipeline(self.spec, self.dtype, seed=args.seed)
        cfg = self.spec.config
        self.noise = jax.random.normal(jax.random.PRNGKey(args.seed), self.shape, jnp.float32)
        self.context = jax.random.normal(jax.random.PRNGKey(args.seed + 1), (2, self.spec.text_len, cfg.text_dim),
                                         jnp.float32)
        self.step_flops = dit_flops(cfg, self.shape[2:], self.spec.text_len, batch=2)
        self.options = dict(_parse_options(args.opt))
        self.options.setdefault("block_frames", self.spec.block_frames)
        self.options.setdefault("context_frames", self.spec.context_frames)

    def options_for(self, strategy: str) -> dict:
        from jaxvdm.sharding.registry import STRATEGIES

        known = {k for n in strategy.split("+") for k in STRATEGIES[n].options}
        return {k: v for k, v in self.options.items() if k in known}

    def e2e_steps(self, n: int = 1) -> int:
        warmup = int(self.options.get("warmup", 5))
        return max(int(self.args.e2e_steps or self.steps), warmup + n)

    def dualparal_shape(self):
        frames = int(self.args.dualparal_frames or self.frames)
        return latent_shape(self.spec, frames, self.height, self.width)


def _size(text: str) -> tuple[int, int]:
    h, sep, w = str(text).lower().partition("x")
    if not sep or not h.strip().isdigit() or not w.strip().isdigit():
        raise ValueError(f"--size {text!r}: write HEIGHTxWIDTH, e.g. --size 480x832")
    return int(h), int(w)


def _parse_options(items) -> list[tuple[str, Any]]:
    out = []
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--opt {item!r}: write NAME=VALUE, e.g. --opt overlap=0.25 --opt warmup=3")
        v: Any = value.strip()
        for conv in (int, float):
            try:
                v = conv(v)
                break
            except ValueError:
                continue
        out.append((key.strip(), v))
    return out


def _timed_runs(fn, runs: int):
    """Calls ``fn(run_index) -> (latent, timings)`` ``runs`` times, clearing JAX's in-memory caches
    between runs (so run 2's compile comes from the persistent cache)."""
    import jax

    results = []
    for r in range(max(1, runs)):
        if r:
            jax.clear_caches()
        with _CacheEvents() as ev:
            out, timing = fn(r)
        results.append((out, dict(timing), ev.hits, ev.misses))
    return results


def _e2e_row(results, extra: dict | None = None) -> dict:
    denoise = [t["denoise_s"] for _, t, _, _ in results]
    timed = denoise[1:] if len(denoise) > 1 else denoise
    row = {"time_s": statistics.median(timed), "times_s": denoise,
           "compile_cold_s": results[0][1].get("compile_s"),
           "compile_warm_s": results[1][1].get("compile_s") if len(results) > 1 else None,
           "warm_cache_hit": (results[1][2] > 0 and results[1][3] == 0) if len(results) > 1 else None}
    row.update(extra or {})
    return row


def _measure_step(ctx: _Context, unit: Unit) -> tuple[dict, Any]:
    import jax
    import jax.numpy as jnp

    from jaxvdm.sampling import Denoiser
    from jaxvdm.sharding import lp
    from jaxvdm.sharding.registry import resolve

    mesh = _make_mesh(unit.mesh)
    plan = resolve(unit.strategy, mesh, ctx.options_for(unit.strategy))
    den = Denoiser(ctx.pipe.transformer, plan, mesh, attention=ctx.attention)
    sched = ctx.step_sched
    window = None
    row: dict = {}
    if plan.lp_axis and mesh is not None:
        window = lp.windows_for(plan, ctx.shape, ctx.spec.config.patch_size, sched.num_steps)(0)
        row["lp_axis"] = None if window.axis is None else "THW"[window.axis - 2]
    x = den.place(jnp.array(ctx.noise, jnp.float32, copy=True))
    c = den.place(ctx.context)
    g = den.place(jnp.float32(ctx.guidance))
    s = den.place(jax.tree.map(lambda a: jnp.array(a, copy=True), sched.init(x)))
    step = den.step_fn(sched, window)
    args = (den.state, x, s, jnp.int32(0), c, g)
    with _CacheEvents() as ev:
        t0 = time.perf_counter()
        compiled = step.lower(*args).compile()
        row["compile_cold_s"] = time.perf_counter() - t0
    row["cold_cache_hit"] = ev.hits > 0
    if ctx.args.warm_compile:
        jax.clear_caches()
        with _CacheEvents() as ev:
            t0 = time.perf_counter()
            step.lower(*args).compile()
            row["compile_warm_s"] = time.perf_counter() - t0
        row["warm_cache_hit"] = ev.hits > 0 and ev.misses == 0
    report = _comm_of_hlo(compiled.as_text())
    row["comm_bytes_per_device"] = report.bytes_per_device
    row["comm"] = _comm_summary(report)
    row["hlo_cost_flops"] = _hlo_cost_flops(compiled)
    row["compiled_memory_bytes"] = _compiled_memory(compiled)
    n = sched.num_steps
    i = 0

    def one():
        nonlocal x, s, i
        x, s = compiled(den.state, x, s, jnp.int32(i % n), c, g)
        i += 1

    for _ in range(ctx.args.warmup):
        one()
    x.block_until_ready()
    times = []
    for _ in range(max(1, ctx.args.repeats)):
        t0 = time.perf_counter()
        one()
        x.block_until_ready()
        times.append(time.perf_counter() - t0)
    row.update(time_s=statistics.median(times), times_s=times, flops=ctx.step_flops,
               peak_memory_bytes=_peak_memory(mesh), finite=bool(jnp.isfinite(x).all()))
    del compiled, den, x, s
    return row, None


def _measure_exact(ctx: _Context, unit: Unit) -> tuple[dict, Any]:
    from jaxvdm.sampling import Denoiser
    from jaxvdm.schedulers import make_scheduler
    from jaxvdm.sharding.registry import resolve

    n = _loop_size(ctx, "parastep")
    sched = make_scheduler(ctx.scheduler_name, ctx.e2e_steps(n), ctx.shift)
    plan = resolve("single", None)

    def once(r):
        den = Denoiser(ctx.pipe.transformer, plan, None, attention=ctx.attention)  # fresh: compiles again
        return den.sample(ctx.noise, ctx.context, ctx.guidance, sched, progress=False)

    results = _timed_runs(once, ctx.args.e2e_runs)
    row = _e2e_row(results, {"steps": sched.num_steps, "flops": sched.num_steps * ctx.step_flops,
                             "comm_bytes_per_device": 0, "peak_memory_bytes": _peak_memory(None),
                             "sequential_model_calls": sched.num_steps})
    return row, results[-1][0]


def _loop_size(ctx: _Context, loop: str) -> int:
    """The loop axis size the parastep rows of this invocation use (for a common schedule length)."""
    return int(ctx.args._loop_sizes.get(loop, 1)) if hasattr(ctx.args, "_loop_sizes") else 1


def _measure_parastep(ctx: _Context, unit: Unit) -> tuple[dict, Any]:
    from jaxvdm.schedulers import make_scheduler
    from jaxvdm.sharding import parastep
    from jaxvdm.sharding.registry import resolve

    mesh = _make_mesh(unit.mesh)
    plan = resolve(unit.strategy, mesh, ctx.options_for(unit.strategy))
    n = plan.size(plan.loop_axis)
    sched = make_scheduler(ctx.scheduler_name, ctx.e2e_steps(_loop_size(ctx, "parastep")), ctx.shift)
    pipe = ctx.pipe

    def once(r):
        pipe._denoisers.clear()
        return parastep.sample(pipe, plan, mesh, ctx.noise, ctx.context, ctx.guidance, sched, attention=ctx.attention,
                               progress=False)

    results = _timed_runs(once, ctx.args.e2e_runs)
    warmup = int(plan.option("warmup"))
    rounds = parastep.rounds(sched.num_steps, warmup, n)
    round_report = parastep.round_report(pipe, plan, mesh, ctx.noise, ctx.context, sched, attention=ctx.attention)
    # the round's collective (the all-gather of the N guided outputs) has the same size in a short last round
    info = results[-1][1]
    row = _e2e_row(results, {
        "steps": sched.num_steps, "warmup_steps": warmup, "rounds": len(rounds),
        "flops": sched.num_steps * ctx.step_flops, "comm_bytes_per_device": round_report.bytes_per_device * len(rounds),
        "comm": _comm_summary(round_report, len(rounds)), "comm_bytes_per_round": round_report.bytes_per_device,
        "sequential_model_calls": info.get("sequential_model_calls"),
        "total_model_calls": info.get("total_model_calls"),
        "speedup_bound": parastep.speedup_bound(sched.num_steps, warmup, n), "peak_memory_bytes": _peak_memory(mesh)})
    pipe._denoisers.clear()
    return row, results[-1][0]


def _dualparal_setup(ctx: _Context, strategy: str, mesh):
    from jaxvdm.schedulers import make_scheduler
    from jaxvdm.sharding import dualparal as dp
    from jaxvdm.sharding.registry import resolve

    import jax
    import jax.numpy as jnp

    shape = ctx.dualparal_shape()
    plan = resolve(strategy, mesh, ctx.options_for(strategy))
    B, C = int(plan.option("block_frames")), int(plan.option("context_frames"))
    geo = dp.geometry(shape, ctx.spec.config.patch_size, B, C)
    noise = jax.random.normal(jax.random.PRNGKey(ctx.args.seed + 2), shape, jnp.float32)
    sched = make_scheduler(ctx.scheduler_name, int(ctx.args.dualparal_steps or ctx.args.e2e_steps or ctx.steps),
                           ctx.shift)
    window_flops = dit_flops(ctx.spec.config, (geo.window,) + tuple(shape[3:]), ctx.spec.text_len, batch=2)
    extra = {"steps": sched.num_steps, "latent_shape": list(shape), "block_frames": B, "context_frames": C,
             "blocks": geo.num_blocks, "flops": window_flops * geo.num_blocks * sched.num_steps}
    return plan, geo, noise, sched, extra


def _measure_dualparal_oracle(ctx: _Context, unit: Unit) -> tuple[dict, Any]:
    """The serial block-wise algorithm on one device, compiled ahead of time so the loop time is
    denoising only (the same item function and order as ``dualparal.serial_oracle``)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax import lax

    from jaxvdm.sharding import dualparal as dp
    from jaxvdm.sharding.dualparal_schedule import serial_order

    plan, geo, noise, sched, extra = _dualparal_setup(ctx, "dualparal", None)
    model = ctx.pipe.transformer
    attention = ctx.attention

    def once(r):
        graphdef, state = nnx.split(model)

        def item(state, x, sstate, k, d, cx, g, ck, cv, read):
            m = nnx.merge(graphdef, state)
            xw = lax.dynamic_slice_in_dim(x, geo.start(k), geo.window, axis=2)
            t = sched.timestep(d)
            h = dp.embed_window(m, xw, cx)
            h, (nk, nv) = dp.window_layers(m, h, t, cx, geo, (ck, cv), read, attention=attention)
            v = dp.window_head(m, h, t, cx, g, geo)
            x, sstate = dp.update_block(sched, x, sstate, v, k, d, geo)
            return x, sstate, nk, nv

        x = dp.coordinated_noise(noise, geo)
        sstate = sched.init(x)
        cx = jnp.asarray(ctx.context)
        ck, cv = dp.empty_cache(model, geo, cx.shape[0])
        g = jnp.float32(ctx.guidance)
        t0 = time.perf_counter()
        f = jax.jit(item).lower(state, x, sstate, jnp.int32(0), jnp.int32(0), cx, g, ck, cv,
                                jnp.asarray(True)).compile()
        compile_s = time.perf_counter() - t0
        order = serial_order(geo.num_blocks, sched.num_steps)
        t0 = time.perf_counter()
        for it in order:
            x, sstate, ck, cv = f(state, x, sstate, jnp.int32(it.k), jnp.int32(it.d), cx, g, ck, cv,
                                  jnp.asarray(it.has_successor_context))
        x.block_until_ready()
        return x, {"compile_s": compile_s, "denoise_s": time.perf_counter() - t0, "items": len(order)}

    results = _timed_runs(once, ctx.args.e2e_runs)
    row = _e2e_row(results, {**extra, "comm_bytes_per_device": 0, "peak_memory_bytes": _peak_memory(None),
                             "sequential_model_calls": results[-1][1]["items"]})
    return row, results[-1][0]


def _measure_dualparal(ctx: _Context, unit: Unit) -> tuple[dict, Any]:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxvdm.sharding import dualparal as dp
    from jaxvdm.sharding import dualparal_pipeline

    mesh = _make_mesh(unit.mesh)
    plan, geo, noise, sched, extra = _dualparal_setup(ctx, unit.strategy, mesh)

    def once(r):
        return dp.sample(ctx.pipe, plan, mesh, noise, ctx.context, ctx.guidance, sched, attention=ctx.attention,
                         progress=False)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bubble-ratio warning: reported in the row instead
        results = _timed_runs(once, ctx.args.e2e_runs)
    # communication of the whole pipelined program (one scan over the schedule's slots)
    f, _, arrays, state, specs = dualparal_pipeline.build(ctx.pipe.transformer, plan, mesh, geo, sched,
                                                          with_cfg=True, attention=ctx.attention)
    rep = NamedSharding(mesh, P())

    def sds(a, sharding):
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)

    abstract = (jax.tree.map(lambda a, s: sds(a, NamedSharding(mesh, s)), state, specs),
                sds(noise, rep), sds(jnp.asarray(ctx.context), rep), sds(jnp.float32(0), rep),
                jax.tree.map(lambda a: sds(jnp.asarray(a), rep), arrays))
    del state
    report = _comm_of_hlo(f.lower(*abstract).compile().as_text())
    info = results[-1][1]
    extra.update(comm_bytes_per_device=report.bytes_per_device, comm=_comm_summary(report),
                 bubble_ratio=info.get("bubble_ratio"), slots=info.get("slots"), peak_memory_bytes=_peak_memory(mesh))
    return _e2e_row(results, extra), results[-1][0]


_MEASURE = {"step": _measure_step, "exact": _measure_exact, "parastep": _measure_parastep,
            "dualparal": _measure_dualparal, "dualparal_oracle": _measure_dualparal_oracle}


def _run_unit(ctx: _Context, unit: Unit, latents_dir: Path | None) -> dict:
    """Measures one row; errors become a row with ``status="error"`` (the others still run)."""
    import numpy as np

    base = {"name": unit.name, "kind": unit.kind, "strategy": unit.strategy, "mesh": _fmt_mesh(unit.mesh),
            "devices": math.prod(unit.mesh.values()) if unit.mesh else 1, "reference": unit.reference}
    t0 = time.perf_counter()
    try:
        row, out = _MEASURE[unit.algo](ctx, unit)
    except Exception as e:  # noqa: BLE001  (a row that fails must not lose the others)
        msg = f"{type(e).__name__}: {e}"
        return {**base, "status": "error", "reason": msg[:2000], "wall_s": time.perf_counter() - t0}
    finally:
        gc.collect()
    if out is not None and latents_dir is not None:
        latents_dir.mkdir(parents=True, exist_ok=True)
        np.save(latents_dir / f"{_slug(unit.name)}.npy", np.asarray(out, np.float32))
    return {**base, "status": "ok", **row, "wall_s": time.perf_counter() - t0}


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


# ------------------------------------------------------------------------------------------ torch


def _torch_script(args) -> Path:
    if args.torch_script:
        return Path(args.torch_script)
    return Path(__file__).resolve().parent.parent / "benchmarks" / "diffusers_step.py"


def run_torch(args, spec: ModelSpec, shape, timeout: float | None = None) -> dict:
    """Runs ``benchmarks/diffusers_step.py`` for the same step in a subprocess; returns its JSON (or an error)."""
    script = _torch_script(args)
    if not script.exists():
        return {"status": "error", "reason": f"{script} not found (pass --torch-script)"}
    cfg = spec.config
    config = {"patch_size": list(cfg.patch_size), "num_attention_heads": cfg.num_attention_heads,
              "attention_head_dim": cfg.attention_head_dim, "in_channels": cfg.in_channels,
              "out_channels": cfg.out_channels, "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim,
              "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers, "cross_attn_norm": cfg.cross_attn_norm,
              "qk_norm": cfg.qk_norm, "eps": cfg.eps, "rope_max_seq_len": cfg.rope_max_seq_len}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torch.json"
        cmd = [sys.executable, str(script), "--config-json", json.dumps(config),
               "--latent", ",".join(str(v) for v in shape[1:]), "--batch", "2", "--text-len", str(spec.text_len),
               "--dtype", args.dtype, "--compile", args.torch_compile, "--warmup", str(args.warmup),
               "--repeats", str(args.repeats), "--json", str(out)]
        env = dict(os.environ)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or args.unit_timeout, env=env)
        except subprocess.TimeoutExpired as e:
            res = json.loads(out.read_text()) if out.exists() else {"variants": []}  # variants finished in time
            res.update(status="ok" if any(v.get("status") == "ok" for v in res.get("variants", [])) else "error",
                       reason=f"timed out after {e.timeout:.0f} s (--unit-timeout); later variants missing",
                       command=shlex.join(cmd))
            return res
        if out.exists():
            res = json.loads(out.read_text())
            res.setdefault("status", "ok")
            if p.returncode:
                res["stderr_tail"] = p.stderr[-2000:]
            return res
        return {"status": "error", "reason": f"exit {p.returncode}: {(p.stderr or p.stdout)[-2000:]}",
                "command": shlex.join(cmd)}


# ------------------------------------------------------------------------------------------ isolate


def _child(spec_path: str) -> int:
    """Worker for ``--isolate``: measure one unit (or probe the hardware) and write its JSON."""
    spec = json.loads(Path(spec_path).read_text())
    args = argparse.Namespace(**spec["args"])
    _set_cpu_devices(args.cpu_devices)
    out_path = Path(spec_path + ".out.json")
    if spec["unit"] is None:
        hw, sw = hardware_info()
        out_path.write_text(json.dumps({"hardware": hw, "software": sw}))
        return 0
    unit = Unit(**spec["unit"])
    args._loop_sizes = spec.get("loop_sizes", {})
    with _compilation_cache(spec["cache_dir"]):
        ctx = _Context(args)
        row = _run_unit(ctx, unit, Path(spec["latents_dir"]) if spec.get("latents_dir") else None)
    row["peak_scope"] = "row"
    out_path.write_text(json.dumps(row, default=_json_default))
    return 0


def _spawn(args, unit: Unit | None, workdir: Path, index: int, cache_dir: str, latents_dir: Path | None,
           loop_sizes: dict, timeout: float) -> dict:
    path = workdir / f"unit{index}.json"
    a = {k: v for k, v in vars(args).items() if not k.startswith("_") and _jsonable(v)}
    path.write_text(json.dumps({"args": a, "unit": None if unit is None else dataclasses.asdict(unit),
                                "cache_dir": cache_dir, "latents_dir": str(latents_dir) if latents_dir else None,
                                "loop_sizes": loop_sizes}))
    cmd = [sys.executable, "-m", "jaxvdm.bench", "--_unit", str(path)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        err = None if p.returncode == 0 else f"exit {p.returncode}: {(p.stderr or p.stdout)[-2000:]}"
    except subprocess.TimeoutExpired as e:
        err = f"timed out after {e.timeout:.0f} s (--unit-timeout)"
    out = Path(str(path) + ".out.json")
    if out.exists():
        return json.loads(out.read_text())
    if unit is None:
        raise RuntimeError(f"could not probe the devices: {err}")
    return {"name": unit.name, "kind": unit.kind, "strategy": unit.strategy, "mesh": _fmt_mesh(unit.mesh),
            "devices": math.prod(unit.mesh.values()) if unit.mesh else 1, "reference": unit.reference,
            "status": "error", "reason": err, "wall_s": time.perf_counter() - t0}


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# ------------------------------------------------------------------------------------------ run


def _finish_rows(rows: list[dict], latents_dir: Path | None) -> None:
    """Speedups against each row's reference, TFLOP/s, errors of e2e latents vs their reference."""
    by_name = {r["name"]: r for r in rows if r.get("status") == "ok"}
    for r in rows:
        if r.get("status") != "ok":
            continue
        ref = by_name.get(r.get("reference")) if r.get("reference") else None
        r["speedup"] = (ref["time_s"] / r["time_s"]) if ref and r.get("time_s") else None
        if r.get("flops") and r.get("time_s"):
            r["tflops"] = r["flops"] / r["time_s"] / 1e12
            r["tflops_per_device"] = r["tflops"] / max(1, r.get("devices", 1))
        if r["kind"] == "e2e" and ref is not None and latents_dir is not None:
            a, b = latents_dir / f"{_slug(r['name'])}.npy", latents_dir / f"{_slug(ref['name'])}.npy"
            if a.exists() and b.exists():
                import numpy as np

                r["rel_err_vs_reference"] = _rel_err(np.load(a), np.load(b))


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    from jaxvdm.sharding.comm import format_bytes

    return format_bytes(n)


def _fmt(v, spec=".3f", none="-") -> str:
    return none if v is None else format(v, spec)


def format_table(result: dict) -> str:
    """The Markdown table printed by ``jaxvdm bench``."""
    shape = result["shape"]
    lines = [f"## jaxvdm bench: {result['model']['name']} {shape['height']}x{shape['width']}x{shape['frames']} "
             f"({result['model']['dtype']}, attention {result['model']['attention']}) on "
             f"{result['hardware'].get('device_count', '?')} x {result['hardware'].get('device_kind', '?')}",
             "",
             f"latent {tuple(shape['latent'])}, {shape['tokens']} tokens, text {shape['text_len']}, CFG batch 2; "
             f"analytic step FLOPs {result['flops']['per_step']:.3e}",
             ""]
    head = ("| strategy | mesh | unit | time (ms) | speedup | vs | compile cold / warm (s) | peak mem | TFLOP/s "
            "(per dev) | comm/device | note |")
    lines += [head, "|" + "---|" * 11]
    for r in result["rows"]:
        unit = "step" if r["kind"] == "step" else (f"e2e {r['steps']} steps" if r.get("steps") else "e2e")
        if r.get("status") != "ok":
            lines.append(f"| {r['name']} | {r.get('mesh', '-')} | {unit} | - | - | - | - | - | - | - | "
                         f"{r.get('status')}: {str(r.get('reason', ''))[:120]} |")
            continue
        note = []
        if r.get("lp_axis"):
            note.append(f"lp axis {r['lp_axis']}")
        if r.get("rel_err_vs_reference") is not None:
            note.append(f"rel err {r['rel_err_vs_reference']:.2e}")
        if r.get("speedup_bound"):
            note.append(f"bound {r['speedup_bound']:.2f}x")
        if r.get("bubble_ratio") is not None:
            note.append(f"bubbles {r['bubble_ratio']:.0%}")
        if r.get("blocks"):
            note.append(f"{r['blocks']} blocks of {r['block_frames']}+{r['context_frames']}")
        if r.get("warm_cache_hit") is False:
            note.append("warm compile missed the cache")
        comp = f"{_fmt(r.get('compile_cold_s'), '.1f')} / {_fmt(r.get('compile_warm_s'), '.1f')}"
        tfl = f"{_fmt(r.get('tflops'), '.3g')} ({_fmt(r.get('tflops_per_device'), '.3g')})"
        speed = _fmt(r.get("speedup"), ".2f") + ("x" if r.get("speedup") is not None else "")
        lines.append(f"| {r['name']} | {r['mesh']} | {unit} | {r['time_s'] * 1e3:.1f} | {speed} | "
                     f"{r.get('reference') or '-'} | {comp} | {_fmt_bytes(r.get('peak_memory_bytes'))} | {tfl} | "
                     f"{_fmt_bytes(r.get('comm_bytes_per_device'))} | {'; '.join(note)} |")
    t = result.get("torch")
    if t:
        lines += ["", "### diffusers WanTransformer3DModel, same step (batch 2, SDPA)", "",
                  "| variant | time (ms) | compile (s) | jaxvdm / diffusers time | diffusers / jaxvdm (speedup) |",
                  "|---|---|---|---|---|"]
        for v in result.get("torch_rows", []):
            if v.get("status") != "ok":
                lines.append(f"| {v['name']} | - | - | - | {v.get('status')}: {str(v.get('reason', ''))[:120]} |")
                continue
            lines.append(f"| {v['name']} | {v['time_s'] * 1e3:.1f} | {_fmt(v.get('compile_s'), '.1f')} | "
                         f"{_fmt(v.get('ratio_jaxvdm_over_diffusers'), '.3f')} | "
                         f"{_fmt(v.get('speedup_jaxvdm_vs_diffusers'), '.2f')} |")
        if t.get("status") != "ok":
            lines.append(f"diffusers: {t.get('status')}: {str(t.get('reason', ''))[:300]}")
    lines += ["", "time: per-step rows = median of one denoising step (prediction over the mesh + scheduler "
              "update); e2e rows = whole-schedule denoising, compile excluded, vs the one-device reference named "
              "in 'vs'. TFLOP/s from analytic FLOPs of the useful work. comm = bytes sent per device, from the "
              "compiled HLO (per step; e2e rows: whole schedule)."]
    return "\n".join(lines)


def _torch_rows(torch_res: dict, rows: list[dict]) -> list[dict]:
    single = next((r for r in rows if r["name"] == "single" and r.get("status") == "ok"), None)
    out = []
    for v in torch_res.get("variants", []):
        row = {"name": f"diffusers ({v.get('name')})", **v}
        if v.get("status") == "ok" and single is not None:
            row["ratio_jaxvdm_over_diffusers"] = single["time_s"] / v["time_s"]
            row["speedup_jaxvdm_vs_diffusers"] = v["time_s"] / single["time_s"]
        out.append(row)
    return out


def _base_result(args, command, spec, shape, frames, height, width) -> dict:
    d = spec.defaults
    cfg = spec.config
    pt, ph, pw = cfg.patch_size
    return {
        "schema": SCHEMA,
        "command": command,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_") and _jsonable(v)},
        "hardware": None,
        "software": None,
        "model": {"name": spec.name, "config": dataclasses.asdict(cfg), "dtype": args.dtype,
                  "attention": args.attention or "auto", "weights": "random", "text_embeddings": "random",
                  "decode": False},
        "shape": {"height": height, "width": width, "frames": frames, "latent": list(shape),
                  "tokens": (shape[2] // pt) * (shape[3] // ph) * (shape[4] // pw), "text_len": spec.text_len,
                  "cfg_batch": 2, "guidance_scale": float(d.get("guidance_scale", 5.0)),
                  "scheduler": d.get("scheduler", "unipc"), "steps": int(args.steps or d.get("steps", 50))},
        "flops": {"per_step": dit_flops(cfg, shape[2:], spec.text_len, batch=2),
                  "source": "analytic (jaxvdm.bench.dit_flops): matmul FLOPs of the exact single-device step, CFG "
                            "batch 2; hlo_cost_flops per row is XLA's cost analysis of one device's program (layer "
                            "scan body counted once, custom calls not counted)"},
        "timing": {"warmup": args.warmup, "repeats": args.repeats, "statistic": "median", "e2e_runs": args.e2e_runs,
                   "isolate": bool(args.isolate),
                   "compile_cache": "fresh temporary folder" if args.cache_dir is None else str(args.cache_dir)},
        "rows": [],
        "torch": None,
        "torch_rows": [],
        "complete": False,
    }


def _write_json(result: dict, path: str | None) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=_json_default))
    os.replace(tmp, path)


def run(args) -> int:
    """``jaxvdm bench``: measures, prints the table, writes ``--json``. Returns the exit status.

    The JSON file is rewritten after every row (``"complete": false`` until the end), so a run that is
    killed keeps the rows it measured.
    """
    t_start = time.perf_counter()
    command = getattr(args, "command_line", None) or shlex.join([Path(sys.argv[0]).name] + sys.argv[1:])
    spec = model_spec(args.model)
    d = spec.defaults
    frames = int(args.frames or d["num_frames"])
    height, width = _size(args.size) if args.size else (int(d["height"]), int(d["width"]))
    shape = latent_shape(spec, frames, height, width)
    if args.repeats < 1 or args.warmup < 0 or args.e2e_runs < 1:
        raise ValueError("--repeats and --e2e-runs must be at least 1 and --warmup at least 0")
    result = _base_result(args, command, spec, shape, frames, height, width)
    rows: list[dict] = result["rows"]
    baseline = None
    if args.baseline_from:
        prev = json.loads(Path(args.baseline_from).read_text())
        baseline = next((r for r in prev.get("rows", []) if r.get("name") == "single" and r.get("status") == "ok"),
                        None)
        if baseline is None:
            raise ValueError(f"--baseline-from {args.baseline_from}: no successful 'single' row in it")
        if prev.get("shape", {}).get("latent") != list(shape) or prev.get("model", {}).get("name") != spec.name:
            raise ValueError(f"--baseline-from {args.baseline_from}: it measured another model or size")

    if args.torch:  # before JAX takes the accelerator
        print("[bench] diffusers step (subprocess) ...", file=sys.stderr, flush=True)
        result["torch"] = run_torch(args, spec, shape)
        _write_json(result, args.json)

    own_cache = args.cache_dir is None
    cache_dir = Path(tempfile.mkdtemp(prefix="jaxvdm-bench-cache-")) if own_cache else Path(args.cache_dir)
    workdir = Path(tempfile.mkdtemp(prefix="jaxvdm-bench-"))
    latents_dir = Path(args.save_latents) if args.save_latents else workdir / "latents"

    def finish_and_write():
        _finish_rows(rows, latents_dir)
        if result["torch"]:
            result["torch_rows"] = _torch_rows(result["torch"], rows)
        result["wall_s"] = time.perf_counter() - t_start
        _write_json(result, args.json)

    try:
        if args.isolate:
            probe = _spawn(args, None, workdir, 0, str(cache_dir), None, {}, args.unit_timeout)
            result["hardware"], result["software"] = probe["hardware"], probe["software"]
        else:
            _set_cpu_devices(args.cpu_devices)
            result["hardware"], result["software"] = hardware_info()
        n_devices = int(args.devices or result["hardware"]["device_count"])
        units, skipped = plan_units(args, n_devices)
        loop_sizes = {}
        for u in units:
            if u.algo == "parastep":
                loop_sizes["parastep"] = max(loop_sizes.get("parastep", 1), int(u.mesh.get("step", 1)))
        args._loop_sizes = loop_sizes
        if baseline is not None:
            rows.append({**baseline, "reused_from": str(args.baseline_from)})
        rows.extend(skipped)
        finish_and_write()
        if args.isolate:
            for i, u in enumerate(units, start=1):
                print(f"[bench] {u.name} on {_fmt_mesh(u.mesh)} ...", file=sys.stderr, flush=True)
                rows.append(_spawn(args, u, workdir, i, str(cache_dir), latents_dir, loop_sizes, args.unit_timeout))
                finish_and_write()
        else:
            with _compilation_cache(cache_dir):
                ctx = _Context(args)
                for u in units:
                    print(f"[bench] {u.name} on {_fmt_mesh(u.mesh)} ...", file=sys.stderr, flush=True)
                    row = _run_unit(ctx, u, latents_dir)
                    row["peak_scope"] = "process"
                    rows.append(row)
                    finish_and_write()
                del ctx
        order = {id(r): i for i, r in enumerate(rows)}
        rows.sort(key=lambda r: (r.get("kind") != "step", order[id(r)]))
        result["complete"] = True
        finish_and_write()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if own_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)
    print(format_table(result))
    if args.json:
        print(f"\nwrote {args.json}")
    return 0 if any(r.get("status") == "ok" for r in rows) else 1


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``bench`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser("bench", help="time strategies on random weights (step time, compile, memory, comm)",
                              description=__doc__.split("What a row measures")[0].strip(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _bench_args(p)
    return p


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="tiny, shapes, wan2.1-t2v-1.3b, wan2.1-t2v-14b (default tiny)")
    p.add_argument("--size", default=None, help="HEIGHTxWIDTH in pixels (default: the model's)")
    p.add_argument("--frames", type=int, default=None, help="video frames (default: the model's)")
    p.add_argument("--mesh", default=None,
                   help="axis sizes the strategies take, e.g. cfg=2,sp=4 (an axis not given gets the remaining "
                        "devices; cfg is always 2)")
    p.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                   help=f"comma-separated strategies/compositions (default {DEFAULT_STRATEGIES})")
    p.add_argument("--devices", type=int, default=None, help="use at most this many devices (default all)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f32"], help="weights and activations (default bf16)")
    p.add_argument("--attention", default=None, choices=["auto", "xla", "xla_chunked", "cudnn"])
    p.add_argument("--steps", type=int, default=None, help="schedule length for per-step rows (default: model's)")
    p.add_argument("--e2e-steps", type=int, default=None,
                   help="schedule length of the parastep/dualparal rows and their references (default --steps; "
                        "raised to parastep warm-up + devices if shorter)")
    p.add_argument("--dualparal-frames", type=int, default=None,
                   help="video frames of the dualparal rows (a long video; default --frames)")
    p.add_argument("--dualparal-steps", type=int, default=None,
                   help="schedule length of the dualparal rows (default --e2e-steps)")
    p.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE",
                   help="strategy option, repeatable: overlap=0.25, warmup=3, block_frames=4, context_frames=1, ...")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls; the median is reported (default 5)")
    p.add_argument("--e2e-runs", type=int, default=2,
                   help="whole-schedule runs of e2e rows; the first is a warm-up when > 1 (default 2)")
    p.add_argument("--no-warm-compile", dest="warm_compile", action="store_false",
                   help="skip the second (persistent-cache) compile of per-step rows")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="do not time the single-device step (no per-step speedups)")
    p.add_argument("--baseline-from", default=None, metavar="JSON",
                   help="reuse the 'single' row of an earlier bench JSON (same model and size)")
    p.add_argument("--isolate", action="store_true",
                   help="run every row in its own process (per-row peak memory; a crash or hang loses one row)")
    p.add_argument("--unit-timeout", type=float, default=1800.0, help="seconds per isolated row (default 1800)")
    p.add_argument("--cache-dir", default=None,
                   help="persistent compilation cache folder (default: a fresh temporary one, so 'cold' is cold)")
    p.add_argument("--save-latents", default=None, metavar="DIR", help="keep the final latents of e2e rows here")
    p.add_argument("--torch", action="store_true", help="also time diffusers' WanTransformer3DModel (subprocess)")
    p.add_argument("--torch-compile", default="off,on", help="diffusers variants: off, on or off,on (default)")
    p.add_argument("--torch-script", default=None, help="path of benchmarks/diffusers_step.py")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-devices", type=int, default=None, help="simulate this many CPU devices")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON here")


# ------------------------------------------------------------------------------------------ comm


def abstract_step(model, plan, mesh, scheduler, lp=None, attention=None):
    """The jitted denoising step of :class:`jaxvdm.sampling.Denoiser` for an abstract model (nothing placed).

    Uses the Denoiser's own ``predict_fn`` / ``step_fn`` code, so the program is the sampler's.
    Returns ``(step_fn, state_specs)``.
    """
    import functools
    import types

    from flax import nnx

    from jaxvdm.sampling import Denoiser
    from jaxvdm.sharding.predict import _block_dims, state_specs

    plan = plan if mesh is not None else plan.local()
    graphdef, state = nnx.split(model)
    ns = types.SimpleNamespace(model=model, plan=plan, mesh=mesh, attention=attention, graphdef=graphdef,
                               specs=state_specs(state, plan),
                               block_dims=_block_dims(model, plan) if plan.fsdp_axis else None, _steps={})
    ns.predict_fn = functools.partial(Denoiser.predict_fn, ns)
    return Denoiser.step_fn(ns, scheduler, lp), state, ns.specs


def comm_of_step(spec: ModelSpec, strategy: str, mesh, shape, *, dtype, attention=None, options=None,
                 steps: int | None = None, step_index: int = 0):
    """Lowers and compiles one denoising step for abstract weights and inputs; returns the
    :class:`jaxvdm.sharding.comm.Report` of its HLO (nothing is allocated)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxvdm.models.wan.loader import abstract_transformer
    from jaxvdm.schedulers import make_scheduler
    from jaxvdm.sharding import lp as lp_lib
    from jaxvdm.sharding.registry import resolve

    plan = resolve(strategy, mesh, options or {})
    if plan.loop:
        raise ValueError(f"comm measures one denoising step of a predict strategy; {plan.loop!r} is a loop strategy "
                         f"(run 'jaxvdm bench --strategies {strategy}' for its whole-schedule communication)")
    d = spec.defaults
    sched = make_scheduler(d.get("scheduler", "unipc"), int(steps or d.get("steps", 50)),
                           float(d.get("flow_shift", 3.0)))
    model = abstract_transformer(spec.config, dtype=dtype, param_dtype=dtype)
    window = None
    if plan.lp_axis and mesh is not None:
        window = lp_lib.windows_for(plan, shape, spec.config.patch_size, sched.num_steps)(step_index)
    step, state, specs = abstract_step(model, plan, mesh, sched, window, attention)

    def sds(shape_, dt, spec_=P()):
        return jax.ShapeDtypeStruct(shape_, dt, sharding=NamedSharding(mesh, spec_)) if mesh is not None else \
            jax.ShapeDtypeStruct(shape_, dt)

    params = jax.tree.map(lambda a, s: sds(a.shape, a.dtype, s), state, specs)
    x = sds(tuple(shape), jnp.float32)
    sstate = jax.tree.map(lambda a: sds(a.shape, a.dtype),
                          jax.eval_shape(sched.init, jax.ShapeDtypeStruct(tuple(shape), jnp.float32)))
    ctx = sds((2, spec.text_len, spec.config.text_dim), jnp.float32)
    compiled = step.lower(params, x, sstate, sds((), jnp.int32), ctx, sds((), jnp.float32)).compile()
    return _comm_of_hlo(compiled.as_text())


def phase_breakdown(report) -> dict[str, dict]:
    """Collectives per jaxvdm phase (the named scope in each one's ``op_name``): count and bytes per device."""
    import numpy as np

    from jaxvdm.profiling import PHASES

    out: dict[str, dict] = {}
    for c in report.collectives:
        parts = c.op_name.split("/")
        phase = next((p for p in reversed(parts) if p in PHASES), "other")
        sent, _ = c.traffic(report.num_devices)
        e = out.setdefault(phase, {"count": 0, "bytes_per_device": 0.0, "kinds": {}})
        e["count"] += c.executions
        e["bytes_per_device"] += float(np.max(sent)) * c.executions
        e["kinds"][c.kind] = e["kinds"].get(c.kind, 0) + c.executions
    return out


def add_comm_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``comm`` subcommand (communication of one compiled denoising step, no weights needed)."""
    p = subparsers.add_parser("comm", help="collectives and bytes per device of one denoising step (from its HLO)",
                              description="Compiles one denoising step for abstract weights (nothing allocated) and "
                                          "prints its collectives, read from the optimised HLO.")
    p.add_argument("--model", default="wan2.1-t2v-1.3b", help="tiny or a preset (default wan2.1-t2v-1.3b)")
    p.add_argument("--size", default=None, help="HEIGHTxWIDTH (default: the model's)")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--mesh", default=None, help="e.g. sp=4 or cfg=2,sp=4 (default: one device)")
    p.add_argument("--strategy", default="single", help="a strategy or a comma-separated list of them")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    p.add_argument("--attention", default=None, choices=["auto", "xla", "xla_chunked", "cudnn"])
    p.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE", help="strategy option, repeatable")
    p.add_argument("--step-index", type=int, default=0, help="which step's LP partition (default 0)")
    p.add_argument("--cpu-devices", type=int, default=None, help="simulate this many CPU devices")
    p.add_argument("--hlo", default=None, metavar="DIR", help="also write each step's optimised HLO here")
    p.add_argument("--json", default=None, metavar="PATH")
    return p


def run_comm(args) -> int:
    """``jaxvdm comm``: prints the communication of one step per strategy; returns the exit status."""
    _set_cpu_devices(args.cpu_devices)
    import jax.numpy as jnp

    from jaxvdm.sharding.comm import format_bytes
    from jaxvdm.sharding.mesh import parse_mesh_spec
    from jaxvdm.sharding.registry import STRATEGIES

    spec = model_spec(args.model)
    d = spec.defaults
    frames = int(args.frames or d["num_frames"])
    height, width = _size(args.size) if args.size else (int(d["height"]), int(d["width"]))
    shape = latent_shape(spec, frames, height, width)
    dtype = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
    pool = parse_mesh_spec(args.mesh) if args.mesh else {}
    options = dict(_parse_options(args.opt))
    out = {"model": spec.name, "latent": list(shape), "dtype": args.dtype, "results": []}
    for strategy in [s.strip() for s in args.strategy.split(",") if s.strip()]:
        names = strategy.split("+")
        for n in names:
            if n not in STRATEGIES:
                raise ValueError(f"unknown strategy {n!r}; available: {', '.join(STRATEGIES)}")
        own = {STRATEGIES[n].axis for n in names if STRATEGIES[n].axis}
        axes = {a: v for a, v in pool.items() if a in own}
        mesh = _make_mesh(axes) if axes else None
        known = {k for n in names for k in STRATEGIES[n].options}
        report = comm_of_step(spec, strategy, mesh, shape, dtype=dtype, attention=args.attention,
                              options={k: v for k, v in options.items() if k in known}, step_index=args.step_index)
        phases = phase_breakdown(report)
        print(f"{strategy} on {_fmt_mesh(axes)}: {spec.name} latent {tuple(shape)} {args.dtype}")
        print(report.table())
        print("by phase: " + ", ".join(f"{k} {v['count']} ({format_bytes(v['bytes_per_device'])})"
                                        for k, v in phases.items()) if phases else "by phase: -")
        print()
        if args.hlo:
            Path(args.hlo).mkdir(parents=True, exist_ok=True)
            (Path(args.hlo) / f"step_{_slug(strategy)}_{_slug(_fmt_mesh(axes))}.hlo.txt").write_text(report.hlo)
        out["results"].append({"strategy": strategy, "mesh": _fmt_mesh(axes), **report.to_dict(), "phases": phases})
    import jax

    if jax.default_backend() == "cpu" and args.dtype == "bf16":
        print("note: compiled for CPU, whose XLA performs bfloat16 collectives in float32 (converted around them); "
              "an accelerator's program moves bfloat16 (about half these bytes for bf16 tensors)")
        out["note"] = "CPU compile: bf16 collectives counted as XLA CPU performs them (float32)"
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=_json_default))
    return 0


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    """``python -m jaxvdm.bench [bench args]`` (or ``python -m jaxvdm.bench comm [comm args]``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    given = list(argv)
    if argv[:1] == ["--_unit"]:
        return _child(argv[1])
    parser = argparse.ArgumentParser(prog="python -m jaxvdm.bench")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    add_comm_parser(sub)
    if not argv or argv[0] not in ("bench", "comm", "-h", "--help"):
        argv = ["bench"] + argv
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "jaxvdm.bench"] + given)
    try:
        return run_comm(args) if args.command == "comm" else run(args)
    except ValueError as e:
        print(f"jaxvdm bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
