"""The results of ``jaxvdm bench``: the JSON document, speedups and errors between rows, the printed table."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

from jaxvdm.bench.spec import dit_flops

__all__ = ["SCHEMA", "hardware_info", "base_result", "finish_rows", "format_table", "write_json", "json_default",
           "slug"]

SCHEMA = "jaxvdm-bench/2"


def slug(name: str) -> str:
    """A file-name-safe form of a row name."""
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def write_json(result: dict, path: str | os.PathLike | None) -> None:
    """Writes ``result`` to ``path`` atomically (a temporary file renamed over it); None does nothing."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=json_default))
    os.replace(tmp, path)


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


def base_result(args, command: str, spec, shape, frames: int, height: int, width: int) -> dict:
    """The JSON document before any row is measured."""
    d = spec.defaults
    cfg = spec.config
    pt, ph, pw = cfg.patch_size
    return {
        "schema": SCHEMA,
        "command": command,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_") and jsonable(v)},
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
                  "source": "analytic (jaxvdm.models.wan.transformer.flops.dit_flops): matmul FLOPs of the useful "
                            "one-device work, CFG batch 2; hlo_cost_flops per row is XLA's cost analysis of one "
                            "device's program (layer scan body counted once, custom calls not counted)"},
        "timing": {"warmup": args.warmup, "repeats": args.repeats, "statistic": "median", "e2e_runs": args.e2e_runs,
                   "isolate": bool(args.isolate),
                   "compile_cache": "fresh temporary folder" if args.cache_dir is None else str(args.cache_dir)},
        "rows": [],
        "torch": None,
        "torch_rows": [],
        "complete": False,
    }


def _rel_err(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def finish_rows(rows: list[dict], latents_dir: Path | None) -> None:
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
            a, b = latents_dir / f"{slug(r['name'])}.npy", latents_dir / f"{slug(ref['name'])}.npy"
            if a.exists() and b.exists():
                import numpy as np

                r["rel_err_vs_reference"] = _rel_err(np.load(a), np.load(b))


def torch_rows(torch_res: dict, rows: list[dict]) -> list[dict]:
    """diffusers' variants as rows, with their time ratio to jaxvdm's ``single`` step (and to each other
    precision's ``single`` step: ``speedup_by_precision``)."""
    from jaxvdm.sharding.registry import BASELINE

    singles = {r.get("precision", "bf16"): r for r in rows
               if r.get("strategy") == BASELINE and r.get("kind") == "step" and r.get("status") == "ok"}
    single = singles.get("bf16")
    out = []
    for v in torch_res.get("variants", []):
        row = {"name": f"diffusers ({v.get('name')})", **v}
        if v.get("status") == "ok" and single is not None:
            row["ratio_jaxvdm_over_diffusers"] = single["time_s"] / v["time_s"]
            row["speedup_jaxvdm_vs_diffusers"] = v["time_s"] / single["time_s"]
        if v.get("status") == "ok":
            row["speedup_by_precision"] = {p: v["time_s"] / r["time_s"] for p, r in singles.items()}
        out.append(row)
    return out


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    from jaxvdm.sharding.comm import format_bytes

    return format_bytes(n)


def _fmt(v, spec=".3f", none="-") -> str:
    return none if v is None else format(v, spec)


def format_table(result: dict) -> str:
    """The Markdown table printed by ``jaxvdm bench`` (failed and skipped rows with their whole reason)."""
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
                         f"{r.get('status')}: {r.get('reason', '')} |")
            continue
        note = []
        for v in r.get("step_variants", ()):
            note.append(f"step {v['step']} (lp axis {v['lp_axis'] or 'full'}) {v['time_s'] * 1e3:.1f} ms")
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
        time_ms = f"{r['time_s'] * 1e3:.1f}" + (" (mean)" if r.get("step_variants") else "")
        lines.append(f"| {r['name']} | {r['mesh']} | {unit} | {time_ms} | {speed} | "
                     f"{r.get('reference') or '-'} | {comp} | {_fmt_bytes(r.get('peak_memory_bytes'))} | {tfl} | "
                     f"{_fmt_bytes(r.get('comm_bytes_per_device'))} | {'; '.join(note)} |")
    t = result.get("torch")
    if t:
        lines += ["", "### diffusers WanTransformer3DModel, same step (batch 2, SDPA)", "",
                  "| variant | time (ms) | compile (s) | jaxvdm / diffusers time | diffusers / jaxvdm (speedup) |",
                  "|---|---|---|---|---|"]
        for v in result.get("torch_rows", []):
            if v.get("status") != "ok":
                lines.append(f"| {v['name']} | - | - | - | {v.get('status')}: {v.get('reason', '')} |")
                continue
            by = v.get("speedup_by_precision") or {}
            extra = "; ".join(f"{p}: {x:.2f}x" for p, x in by.items() if p != "bf16")
            lines.append(f"| {v['name']} | {v['time_s'] * 1e3:.1f} | {_fmt(v.get('compile_s'), '.1f')} | "
                         f"{_fmt(v.get('ratio_jaxvdm_over_diffusers'), '.3f')} | "
                         f"{_fmt(v.get('speedup_jaxvdm_vs_diffusers'), '.2f')}{' (' + extra + ')' if extra else ''} |")
        if t.get("status") != "ok":
            lines.append(f"diffusers: {t.get('status')}: {t.get('reason', '')}")
    lines += ["", "time: per-step rows = median of one denoising step (prediction over the mesh + scheduler "
              "update; a rotating LP partition: the mean of one step per axis); e2e rows = whole-schedule "
              "denoising, compile excluded, vs the one-device run of the same algorithm named in 'vs'. TFLOP/s "
              "from analytic FLOPs of the useful work. comm = bytes sent per device, from the compiled HLO (per "
              "step; e2e rows: whole schedule)."]
    return "\n".join(lines)
