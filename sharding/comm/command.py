"""``jaxvdm comm``: the collectives and bytes per device of one strategy's compiled unit, for a real model
size on abstract weights (nothing is allocated, so Wan 14B compiles on a laptop with simulated devices).

The unit is the strategy's program (``plan.program``, the same function ``jaxvdm bench`` uses): one
denoising step for predict transforms (``--step-index`` picks which: LP's partition rotates), one
round for ParaStep, the whole pipelined run for DualParal.

``--target v5e-8`` (a name of :data:`jaxvdm.sharding.topologies.TARGETS`; libtpu installed, no TPU
needed) compiles the unit for that TPU slice's chips instead of CPU devices, with the Pallas splash
attention kernel by default, and adds per chip: memory against the chip's HBM (from the compiler's
memory analysis, or its refusal), FLOPs and HBM bytes read from the TPU HLO with loop trips included
(:mod:`jaxvdm.sharding.comm.hlo_cost`; XLA's own cost analysis counts the layer scan once and no
kernels, and is reported beside), and a roofline *estimate* of the unit's time and of a whole video's
denoising. Without ``--mesh`` the strategy's axes take all the target's chips.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from jaxvdm.sharding.comm.report import format_bytes, report_of_hlo
from jaxvdm.sharding.mesh import format_mesh, mesh_order, parse_mesh_spec, simulate_cpu_devices

__all__ = ["add_comm_parser", "run_comm", "phase_breakdown", "target_axes", "tpu_summary"]


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


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it says something: not for None, False or empty defaults, nor where
    the help text already names the default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def add_comm_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``comm`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser("comm", help="collectives and bytes per device of a strategy's compiled step (from HLO)",
                              description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                              formatter_class=DefaultsFormatter)
    p.add_argument("--model", default="wan2.1-t2v-1.3b", help="tiny or a preset")
    p.add_argument("--size", default=None, metavar="HxW", help="height x width in pixels (default: the model's)")
    p.add_argument("--frames", type=int, default=None, help="video frames (default: the model's)")
    p.add_argument("--mesh", default=None, metavar="AXIS=N,...", help="e.g. sp=4 or cfg=2,sp=4 (default: one device)")
    p.add_argument("--strategy", default="single", metavar="LIST", help="a strategy or a comma-separated list of them")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f32"], help="weights and activations")
    p.add_argument("--attention", default=None, type=_attention_name, metavar="NAME",
                   help="local attention kernel: auto, xla, xla_chunked, cudnn or splash, with options as in "
                        "splash:block_q=2048 (default auto; splash with --target)")
    p.add_argument("--steps", type=int, default=None, help="schedule length (default: the model's)")
    p.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE", help="strategy option, repeatable")
    p.add_argument("--step-index", type=int, default=None,
                   help="which step's program (LP's partition; ParaStep's round start); default: the first")
    p.add_argument("--cpu-devices", type=int, default=None, help="simulate this many CPU devices")
    p.add_argument("--target", default=None, metavar="TPU",
                   help="compile for this TPU slice instead (v4-8, v5e-4, v5e-8, v5p-8, v5p-16, v6e-4, v6e-8, "
                        "v6e-16; needs libtpu, not a TPU)")
    p.add_argument("--opt-level", default=None, choices=["O0", "O1", "O2", "O3"],
                   help="XLA optimisation level of the compile (default: O0 with --target, a fast TPU compile; "
                        "otherwise XLA's default, minutes per Wan step for a TPU on 2 cores)")
    p.add_argument("--hlo", default=None, metavar="DIR", help="also write each program's optimised HLO here")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON here")
    return p


def _attention_name(text: str) -> str:
    from jaxvdm.models.wan.attention import parse_backend

    try:
        parse_backend(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def target_axes(strategy: str, pool: dict[str, int], chips: int) -> dict[str, int]:
    """The mesh axes of ``strategy`` on ``chips`` chips: sizes from ``pool`` (``--mesh``), a fixed-size axis
    at its size (``cfg`` = 2), and the one axis left unsized takes the remaining chips; a strategy with no
    axis gets a one-chip mesh (``sp=1``). Raises ValueError when two axes are unsized or the chips do not
    suffice."""
    from jaxvdm.sharding.registry import sized_axes

    sizes, free = sized_axes(strategy, pool)
    if len(free) > 1:
        raise ValueError(f"strategy {strategy!r} has axes {free} to size: give all but one with --mesh "
                         f"(e.g. --mesh {free[0]}=2)")
    known = math.prod(sizes.values()) if sizes else 1
    if free:
        sizes[free[0]] = chips // known
    if not sizes:
        return {"sp": 1}
    total = math.prod(sizes.values())
    if min(sizes.values()) < 1 or total > chips:
        raise ValueError(f"mesh {format_mesh(sizes)} needs {total} chips, the target has {chips}")
    return mesh_order(sizes)


def tpu_summary(compiled, target, runs: int, compile_s: float) -> dict:
    """Per-chip memory fit, FLOPs and bytes (from the TPU HLO), XLA's cost analysis, and the roofline estimate
    of one unit and of ``runs`` units (a video) for a program compiled for ``target``'s chips."""
    from jaxvdm.sharding import topologies
    from jaxvdm.sharding.comm.hlo_cost import hlo_cost

    t = topologies.get_target(target)
    fit = topologies.memory_fit(compiled, t)
    cost = hlo_cost(compiled.as_text())
    xla = compiled.cost_analysis() or {}
    if isinstance(xla, (list, tuple)):  # older JAX: one dict per program
        xla = xla[0] if xla else {}
    seconds = topologies.roofline(cost.flops, cost.hbm_bytes, t)
    return {"target": t.name, "chip": t.chip, "chips": t.chips, "compile_s": compile_s, "memory": fit.to_dict(),
            "per_chip": cost.to_dict(),
            "xla_cost_analysis": {k: float(xla[k]) for k in ("flops", "bytes accessed") if k in xla},
            "estimate": {"what": "roofline estimate per chip: max(FLOPs / peak bf16, HBM bytes / bandwidth); no "
                                 "communication, launch or overlap losses",
                         "compute_s": cost.flops / (t.bf16_tflops * 1e12),
                         "hbm_s": cost.hbm_bytes / (t.hbm_gbps * 1e9),
                         "unit_s": seconds, "runs_per_video": runs, "video_s": seconds * runs}}


def _print_tpu(summary: dict) -> None:
    m, c, e = summary["memory"], summary["per_chip"], summary["estimate"]
    print(f"memory per chip ({m['target']}): {m['message']}")
    if c is None:
        return
    xla = summary["xla_cost_analysis"]
    print(f"work per chip per unit (TPU HLO, loop trips included): {_flop(c['flops'])} (matmuls "
          f"{_flop(c['matmul_flops'])} + {c['kernels']} splash kernels {_flop(c['kernel_flops'])}), HBM "
          f"{format_bytes(c['hbm_bytes'])} (estimate); XLA cost analysis (layer scan counted once, kernels not "
          f"at all): {_flop(xla.get('flops', 0.0))}, {format_bytes(xla.get('bytes accessed', 0.0))}")
    print(f"ESTIMATE (roofline, {summary['chip']}: compute {e['compute_s']:.3g} s, HBM {e['hbm_s']:.3g} s): "
          f"{e['unit_s']:.3g} s per unit, {e['video_s']:.3g} s for {e['runs_per_video']} units (one video's "
          f"denoising); not a measurement: no communication, launch or overlap losses")


def _flop(x: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} FLOP"


def run_comm(args) -> int:
    """``jaxvdm comm``: prints the communication of each strategy's program; returns the exit status."""
    target = getattr(args, "target", None)
    if target is not None:
        from jaxvdm.sharding import topologies

        topologies.get_target(target)  # an unknown name fails before anything is built
        if args.cpu_devices is not None:
            raise ValueError("--target compiles for TPU chips; --cpu-devices does not apply")
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
    attention = args.attention
    devices = level = None
    if target is not None:
        devices = topologies.target_devices(target)
        attention = attention or "splash"
        level = getattr(args, "opt_level", None) or "O0"
    else:
        level = getattr(args, "opt_level", None)
    out = {"model": spec.name, "latent": list(shape), "dtype": args.dtype, "attention": attention or "auto",
           "results": []}
    if target is not None:
        out["target"] = dataclasses.asdict(topologies.get_target(target)) | {"optimization_level": level}
    for strategy in [s.strip() for s in args.strategy.split(",") if s.strip()]:
        names = split_names(strategy)
        if target is not None:
            axes = target_axes(strategy, pool, len(devices))
        else:
            own = {STRATEGIES[n].axis for n in names if STRATEGIES[n].axis}
            axes = {a: v for a, v in pool.items() if a in own}
        mesh = make_mesh(axes, devices=devices) if axes else None
        plan = resolve(strategy, mesh, options_for(strategy, options))
        where = f"{format_mesh(axes)}" + (f" of {target}" if target else "")
        t0 = time.perf_counter()
        try:
            with _level(level):
                program = plan.program(model, plan, mesh, shape, text_shape, sched, attention=attention,
                                       defaults=defaults, step=args.step_index if args.step_index is not None else
                                       (0 if plan.loop is None else None))
        except Exception as e:  # a TPU compile refused for lack of HBM is a result, not a failure
            fit = topologies.memory_fit_from_error(e, target) if target is not None else None
            if fit is None:
                raise
            print(f"{strategy} on {where}: {spec.name} latent {tuple(shape)} {args.dtype}")
            print(f"memory per chip ({target}): {fit.message}")
            print()
            out["results"].append({"strategy": strategy, "mesh": format_mesh(axes), "compiled": False,
                                   "tpu": {"target": target, "memory": fit.to_dict(), "per_chip": None,
                                           "compile_s": time.perf_counter() - t0}})
            continue
        compile_s = time.perf_counter() - t0
        text = program.compiled.as_text()
        report = report_of_hlo(text)
        phases = phase_breakdown(report)
        print(f"{strategy} on {where}: {spec.name} latent {tuple(shape)} {args.dtype}, "
              f"{program.name} (runs {program.runs}x per video)")
        print(report.table())
        print("by phase: " + ", ".join(f"{k} {v['count']} ({format_bytes(v['bytes_per_device'])})"
                                        for k, v in phases.items()) if phases else "by phase: -")
        if program.details:
            print(_details_line(program.details))
        row = {"strategy": strategy, "mesh": format_mesh(axes), "unit": program.name,
               "runs_per_video": program.runs, **report.to_dict(), "phases": phases, "details": program.details}
        if target is not None:
            row["tpu"] = tpu_summary(program.compiled, target, program.runs, compile_s)
            _print_tpu(row["tpu"])
            print(f"compiled in {compile_s:.1f} s (XLA optimization level {level})")
        print()
        if args.hlo:
            Path(args.hlo).mkdir(parents=True, exist_ok=True)
            slug = "".join(ch if ch.isalnum() else "_" for ch in f"{strategy}_{format_mesh(axes)}")
            (Path(args.hlo) / f"{slug}.hlo.txt").write_text(text)
        out["results"].append(row)
    if target is None and jax.default_backend() == "cpu" and args.dtype == "bf16":
        print("note: compiled for CPU, whose XLA performs bfloat16 collectives in float32 (converted around them); "
              "an accelerator's program moves bfloat16 (about half these bytes for bf16 tensors)")
        out["note"] = "CPU compile: bf16 collectives counted as XLA CPU performs them (float32)"
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


def _details_line(details: dict) -> str:
    """One line of what the strategy measured about its program (e.g. DualParal's slots, bubble ratio and
    the FLOPs each stage runs per slot, from each stage's own compiled work)."""
    parts = []
    for key, value in details.items():
        if key == "stage_flops_per_slot":
            flops = [float(v) for v in value]
            spread = max(flops) / min(flops) if min(flops) > 0 else float("inf")
            parts.append(f"FLOPs per slot by stage {', '.join(_flop(v) for v in flops)} (max/min {spread:.3f})")
        elif isinstance(value, float):
            parts.append(f"{key.replace('_', ' ')} {value:.3f}")
        else:
            parts.append(f"{key.replace('_', ' ')} {value}")
    return "details: " + "; ".join(parts)


def _level(level):
    from jaxvdm.sharding.topologies import optimization_level

    return optimization_level(level)
