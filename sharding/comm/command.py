"""``jaxvdm comm``: the collectives and bytes per device of one strategy's compiled unit, for a real model
size on abstract weights (nothing is allocated, so Wan 14B compiles on a laptop with simulated devices).

The unit is the strategy's program (``plan.program``, the same function ``jaxvdm bench`` uses): one
denoising step for predict transforms (``--step-index`` picks which: LP's partition rotates), one
round for ParaStep, the whole pipelined run for DualParal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jaxvdm.sharding.comm.report import format_bytes, report_of_hlo
from jaxvdm.sharding.mesh import format_mesh, parse_mesh_spec, simulate_cpu_devices

__all__ = ["add_comm_parser", "run_comm", "phase_breakdown"]


def phase_breakdown(report) -> dict[str, dict]:
    """Collectives per jaxvdm phase (the named scope in each one's ``op_name``): count and bytes per device."""
    from jaxvdm.sharding.runtime import PHASES

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
    """Adds the ``comm`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser("comm", help="collectives and bytes per device of a strategy's compiled step (from HLO)",
                              description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="wan2.1-t2v-1.3b", help="tiny or a preset")
    p.add_argument("--size", default=None, metavar="HxW", help="height x width in pixels (default: the model's)")
    p.add_argument("--frames", type=int, default=None, help="video frames (default: the model's)")
    p.add_argument("--mesh", default=None, metavar="AXIS=N,...", help="e.g. sp=4 or cfg=2,sp=4 (default: one device)")
    p.add_argument("--strategy", default="single", metavar="LIST", help="a strategy or a comma-separated list of them")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f32"], help="weights and activations")
    p.add_argument("--attention", default=None, choices=["auto", "xla", "xla_chunked", "cudnn"],
                   help="local attention kernel (default auto)")
    p.add_argument("--steps", type=int, default=None, help="schedule length (default: the model's)")
    p.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE", help="strategy option, repeatable")
    p.add_argument("--step-index", type=int, default=None,
                   help="which step's program (LP's partition; ParaStep's round start); default: the first")
    p.add_argument("--cpu-devices", type=int, default=None, help="simulate this many CPU devices")
    p.add_argument("--hlo", default=None, metavar="DIR", help="also write each program's optimised HLO here")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON here")
    return p


def run_comm(args) -> int:
    """``jaxvdm comm``: prints the communication of each strategy's program; returns the exit status."""
    simulate_cpu_devices(args.cpu_devices)
    import jax
    import jax.numpy as jnp

    from jaxvdm.models.pipeline import latent_shape, parse_size
    from jaxvdm.models.presets import model_spec
    from jaxvdm.models.wan.transformer.model import abstract_transformer
    from jaxvdm.models.schedulers import make_scheduler
    from jaxvdm.sharding.mesh import make_mesh
    from jaxvdm.sharding.registry import STRATEGIES, options_for, parse_options, resolve, split_names

    spec = model_spec(args.model)
    d = spec.defaults
    frames = int(args.frames or d["num_frames"])
    height, width = parse_size(args.size) if args.size else (int(d["height"]), int(d["width"]))
    cfg = spec.config
    shape = latent_shape(frames, height, width, vae_stride=spec.vae_stride, patch=cfg.patch_size,
                         channels=cfg.in_channels, name=spec.name)
    dtype = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
    pool = parse_mesh_spec(args.mesh) if args.mesh else {}
    options = parse_options(args.opt)
    sched = make_scheduler(d.get("scheduler", "unipc"), int(args.steps or d.get("steps", 50)),
                           float(d.get("flow_shift", 3.0)))
    model = abstract_transformer(cfg, dtype=dtype, param_dtype=dtype)
    text_shape = (2, spec.text_len, cfg.text_dim)
    defaults = {**d, "vae_stride": spec.vae_stride}
    out = {"model": spec.name, "latent": list(shape), "dtype": args.dtype, "results": []}
    for strategy in [s.strip() for s in args.strategy.split(",") if s.strip()]:
        names = split_names(strategy)
        own = {STRATEGIES[n].axis for n in names if STRATEGIES[n].axis}
        axes = {a: v for a, v in pool.items() if a in own}
        mesh = make_mesh(axes) if axes else None
        plan = resolve(strategy, mesh, options_for(strategy, options))
        program = plan.program(model, plan, mesh, shape, text_shape, sched, attention=args.attention,
                               defaults=defaults, step=args.step_index if args.step_index is not None else
                               (0 if plan.loop is None else None))
        text = program.compiled.as_text()
        report = report_of_hlo(text)
        phases = phase_breakdown(report)
        print(f"{strategy} on {format_mesh(axes)}: {spec.name} latent {tuple(shape)} {args.dtype}, "
              f"{program.name} (runs {program.runs}x per video)")
        print(report.table())
        print("by phase: " + ", ".join(f"{k} {v['count']} ({format_bytes(v['bytes_per_device'])})"
                                        for k, v in phases.items()) if phases else "by phase: -")
        print()
        if args.hlo:
            Path(args.hlo).mkdir(parents=True, exist_ok=True)
            slug = "".join(ch if ch.isalnum() else "_" for ch in f"{strategy}_{format_mesh(axes)}")
            (Path(args.hlo) / f"{slug}.hlo.txt").write_text(text)
        out["results"].append({"strategy": strategy, "mesh": format_mesh(axes), "unit": program.name,
                               "runs_per_video": program.runs, **report.to_dict(), "phases": phases})
    if jax.default_backend() == "cpu" and args.dtype == "bf16":
        print("note: compiled for CPU, whose XLA performs bfloat16 collectives in float32 (converted around them); "
              "an accelerator's program moves bfloat16 (about half these bytes for bf16 tensors)")
        out["note"] = "CPU compile: bf16 collectives counted as XLA CPU performs them (float32)"
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0
