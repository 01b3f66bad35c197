"""``jaxvdm bench``: its command-line options and the run that plans, measures, reports and writes JSON.

    jaxvdm bench --model wan2.1-t2v-1.3b --size 480x832 --frames 81 --dtype bf16 --attention cudnn \\
        --strategies single,cfg,ulysses,cfg+ulysses,ring,lp,parastep,dualparal --json bench.json
    jaxvdm bench --model tiny --cpu-devices 8 --strategies cfg,ulysses      # simulated CPU devices

Random weights (the preset's transformer, or the built-in ``tiny`` config), random prompt embeddings
``[2, text_len, text_dim]`` (guidance on: the cond/uncond pair), no decoding. Per-step rows (predict
transforms) time one denoising step against the one-device exact step; end-to-end rows (loop
strategies) time the whole schedule against the same algorithm on one device. See
:mod:`jaxvdm.bench.measure` for what each column measures.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from jaxvdm.bench import report
from jaxvdm.bench.spec import latent_shape, model_spec, parse_size
from jaxvdm.bench.units import plan_units
from jaxvdm.sharding.mesh import format_mesh, simulate_cpu_devices
from jaxvdm.sharding.registry import BASELINE

__all__ = ["add_parser", "run", "DEFAULT_STRATEGIES"]

DEFAULT_STRATEGIES = "single,cfg,ulysses,cfg+ulysses,ring,lp,parastep,dualparal"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``bench`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser("bench", help="time strategies on random weights (step time, compile, memory, comm)",
                              description=__doc__.split("\n\n")[2].strip(),
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny, shapes, wan2.1-t2v-1.3b, wan2.1-t2v-14b")
    p.add_argument("--size", default=None, metavar="HxW", help="height x width in pixels (default: the model's)")
    p.add_argument("--frames", type=int, default=None, help="video frames (default: the model's)")
    p.add_argument("--mesh", default=None, metavar="AXIS=N,...",
                   help="axis sizes the strategies take, e.g. cfg=2,sp=4 (an axis not given gets the remaining "
                        "devices; cfg is always 2)")
    p.add_argument("--strategies", default=DEFAULT_STRATEGIES, metavar="LIST",
                   help="comma-separated strategies/compositions")
    p.add_argument("--devices", type=int, default=None, help="use at most this many devices (default all)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f32"], help="weights and activations")
    p.add_argument("--attention", default=None, metavar="NAME",
                   help="local attention kernel: auto, xla, xla_chunked, cudnn, splash (default auto)")
    p.add_argument("--precision", default="bf16", metavar="LIST",
                   help="comma-separated precisions of the per-step rows: bf16, fp8_attention, fp8 (NVIDIA Hopper); "
                        "rows after the first are named '<strategy> (<precision>)', against the bf16 single step")
    p.add_argument("--steps", type=int, default=None, help="schedule length for per-step rows (default: model's)")
    p.add_argument("--e2e-steps", type=int, default=None,
                   help="schedule length of the loop-strategy rows and their references (default --steps; "
                        "raised to what each row needs, e.g. ParaStep's warm-up + one round)")
    p.add_argument("--e2e-frames", type=int, default=None,
                   help="video frames of the loop-strategy rows and their references (e.g. a long video for "
                        "DualParal; default --frames)")
    p.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE",
                   help="strategy option, repeatable: overlap=0.25, warmup=3, block_frames=4, context_frames=1, ...")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    p.add_argument("--repeats", type=int, default=5, help="timed calls; the median is reported")
    p.add_argument("--e2e-runs", type=int, default=2,
                   help="whole-schedule runs of e2e rows; the first is a warm-up when > 1")
    p.add_argument("--no-warm-compile", dest="warm_compile", action="store_false",
                   help="skip the second (persistent-cache) compile of per-step rows")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="do not time the single-device step (no per-step speedups)")
    p.add_argument("--baseline-from", default=None, metavar="JSON",
                   help="reuse the 'single' row of an earlier bench JSON (same model and size)")
    p.add_argument("--isolate", action="store_true",
                   help="run every row in its own process (per-row peak memory; a crash or hang loses one row)")
    p.add_argument("--unit-timeout", type=float, default=1800.0, help="seconds per isolated row")
    p.add_argument("--cache-dir", default=None,
                   help="persistent compilation cache folder (default: a fresh temporary one, so 'cold' is cold)")
    p.add_argument("--save-latents", default=None, metavar="DIR", help="keep the final latents of e2e rows here")
    p.add_argument("--torch", action="store_true", help="also time diffusers' WanTransformer3DModel (subprocess)")
    p.add_argument("--torch-compile", default="off,on", help="diffusers variants: off, on or off,on")
    p.add_argument("--torch-script", default=None, help="path of benchmarks/diffusers_step.py")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, noise and embeddings")
    p.add_argument("--cpu-devices", type=int, default=None, help="simulate this many CPU devices")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON here")
    p.add_argument("--abstract", action="store_true",
                   help="compile instead of timing: each strategy's step on abstract weights (nothing allocated), "
                        "reporting memory, collectives and, with --target, per-chip memory against the chip's HBM "
                        "and a roofline estimate of step time (what jaxvdm comm reports)")
    p.add_argument("--target", default=None, metavar="TPU",
                   help="with --abstract: compile for this TPU slice (v4-8, v5e-4, v5e-8, v5p-8, v5p-16, v6e-4, "
                        "v6e-8, v6e-16; needs libtpu, not a TPU)")
    return p


def _loop_steps(args, units, steps: int) -> dict[str, int]:
    """Each loop strategy's schedule length: ``--e2e-steps`` (or ``steps``) raised to what its rows need."""
    from jaxvdm.sharding.mesh import make_mesh
    from jaxvdm.sharding.registry import STRATEGIES, options_for, parse_options, resolve

    base = int(args.e2e_steps or steps)
    options = parse_options(args.opt)
    out: dict[str, int] = {}
    for u in units:
        if u.kind != "e2e":
            continue
        plan = resolve(u.strategy, make_mesh(dict(u.mesh)) if u.mesh else None, options_for(u.strategy, options))
        out[plan.loop] = max(out.get(plan.loop, base), STRATEGIES[plan.loop].min_steps(plan) if u.mesh else base)
    return out


def _run_abstract(args) -> int:
    """``jaxvdm bench --abstract``: each strategy's compiled unit on abstract weights, as ``jaxvdm comm``
    reports it (the same code), with bench's flags; nothing is allocated or timed."""
    import argparse

    from jaxvdm.sharding.comm.command import run_comm

    comm_args = argparse.Namespace(
        model=args.model, size=args.size, frames=args.frames, mesh=args.mesh, strategy=args.strategies,
        dtype=args.dtype, attention=args.attention, steps=args.steps, opt=args.opt, step_index=None,
        cpu_devices=args.cpu_devices, target=args.target, opt_level=None, hlo=None, json=args.json)
    return run_comm(comm_args)


def run(args) -> int:
    """``jaxvdm bench``: measures, prints the table, writes ``--json``. Returns the exit status: 0 when every
    row was measured or skipped with a reason, 1 when a row failed (the table says why)."""
    from jaxvdm.bench.isolate import spawn
    from jaxvdm.bench.measure import Context, compilation_cache, run_unit
    from jaxvdm.bench.torch_ref import run_torch

    if args.target is not None and not args.abstract:
        raise ValueError("--target compiles for TPU chips without running anything: add --abstract")
    if args.abstract:
        return _run_abstract(args)
    t_start = time.perf_counter()
    command = getattr(args, "command_line", None) or shlex.join([Path(sys.argv[0]).name] + sys.argv[1:])
    spec = model_spec(args.model)
    d = spec.defaults
    frames = int(args.frames or d["num_frames"])
    height, width = parse_size(args.size) if args.size else (int(d["height"]), int(d["width"]))
    shape = latent_shape(spec, frames, height, width)
    if args.repeats < 1 or args.warmup < 0 or args.e2e_runs < 1:
        raise ValueError("--repeats and --e2e-runs must be at least 1 and --warmup at least 0")
    result = report.base_result(args, command, spec, shape, frames, height, width)
    rows: list[dict] = result["rows"]
    baseline = None
    if args.baseline_from:
        prev = json.loads(Path(args.baseline_from).read_text())
        baseline = next((r for r in prev.get("rows", []) if r.get("name") == BASELINE and r.get("status") == "ok"),
                        None)
        if baseline is None:
            raise ValueError(f"--baseline-from {args.baseline_from}: no successful 'single' row in it")
        if prev.get("shape", {}).get("latent") != list(shape) or prev.get("model", {}).get("name") != spec.name:
            raise ValueError(f"--baseline-from {args.baseline_from}: it measured another model or size")

    if args.torch:  # before JAX takes the accelerator
        print("[bench] diffusers step (subprocess) ...", file=sys.stderr, flush=True)
        result["torch"] = run_torch(args, spec, shape)
        report.write_json(result, args.json)

    own_cache = args.cache_dir is None
    cache_dir = Path(tempfile.mkdtemp(prefix="jaxvdm-bench-cache-")) if own_cache else Path(args.cache_dir)
    workdir = Path(tempfile.mkdtemp(prefix="jaxvdm-bench-"))
    latents_dir = Path(args.save_latents) if args.save_latents else workdir / "latents"

    def finish_and_write():
        report.finish_rows(rows, latents_dir)
        if result["torch"]:
            result["torch_rows"] = report.torch_rows(result["torch"], rows)
        result["wall_s"] = time.perf_counter() - t_start
        report.write_json(result, args.json)

    try:
        if args.isolate:
            probe = spawn(args, None, workdir, 0, str(cache_dir), None, {}, args.unit_timeout)
            result["hardware"], result["software"] = probe["hardware"], probe["software"]
        else:
            simulate_cpu_devices(args.cpu_devices)
            result["hardware"], result["software"] = report.hardware_info()
        n_devices = int(args.devices or result["hardware"]["device_count"])
        precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
        from jaxvdm.pipeline import PRECISIONS

        bad = [p for p in precisions if p not in PRECISIONS]
        if bad or not precisions:
            raise ValueError(f"--precision {args.precision!r}: choose from {', '.join(PRECISIONS)}")
        units, skipped = plan_units(args.strategies, args.mesh, n_devices, baseline=args.baseline,
                                    baseline_given=bool(args.baseline_from), precisions=precisions)
        loop_steps = _loop_steps(args, units, int(args.steps or d.get("steps", 50)))
        if baseline is not None:
            rows.append({**baseline, "reused_from": str(args.baseline_from)})
        rows.extend(skipped)
        finish_and_write()
        from jaxvdm.sharding.runtime import progress_bar

        with progress_bar(len(units), "bench", None, unit="row") as bar:  # on a terminal: rows finished, time left
            if args.isolate:
                for i, u in enumerate(units, start=1):
                    print(f"[bench] {u.name} on {format_mesh(u.mesh)} ({i}/{len(units)}) ...", file=sys.stderr,
                          flush=True)
                    rows.append(spawn(args, u, workdir, i, str(cache_dir), latents_dir, loop_steps,
                                      args.unit_timeout))
                    finish_and_write()
                    bar.done(1)
            else:
                with compilation_cache(cache_dir):
                    ctx = Context(args, loop_steps)
                    for i, u in enumerate(units, start=1):
                        print(f"[bench] {u.name} on {format_mesh(u.mesh)} ({i}/{len(units)}) ...", file=sys.stderr,
                              flush=True)
                        row = run_unit(ctx, u, latents_dir)
                        row["peak_scope"] = "process"
                        rows.append(row)
                        finish_and_write()
                        bar.done(1)
                    del ctx
        order = {id(r): i for i, r in enumerate(rows)}
        rows.sort(key=lambda r: (r.get("kind") != "step", order[id(r)]))
        result["complete"] = True
        finish_and_write()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if own_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)
    print(report.format_table(result))
    if args.json:
        print(f"\nwrote {args.json}")
    failed = [r["name"] for r in rows if r.get("status") == "error"]
    if failed:
        print(f"jaxvdm bench: {len(failed)} row(s) failed: {', '.join(failed)} (reasons in the table)", file=sys.stderr)
        return 1
    return 0
