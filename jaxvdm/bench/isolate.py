"""``jaxvdm bench --isolate``: every row in its own process, so its peak memory is its own and a crash or
hang loses one row. The parent writes a job file; the child (``python -m jaxvdm.bench --_unit JOB``)
measures and writes the row beside it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from jaxvdm.bench.report import hardware_info, json_default, jsonable
from jaxvdm.bench.units import Unit
from jaxvdm.sharding.mesh import format_mesh, simulate_cpu_devices

__all__ = ["child", "spawn"]


def child(job_path: str) -> int:
    """The worker: measure one unit (or, for ``unit: null``, probe the hardware) and write its JSON."""
    from jaxvdm.bench.measure import Context, compilation_cache, run_unit

    job = json.loads(Path(job_path).read_text())
    args = argparse.Namespace(**job["args"])
    simulate_cpu_devices(args.cpu_devices)
    out_path = Path(job_path + ".out.json")
    if job["unit"] is None:
        hw, sw = hardware_info()
        out_path.write_text(json.dumps({"hardware": hw, "software": sw}))
        return 0
    unit = Unit(**job["unit"])
    with compilation_cache(job["cache_dir"]):
        ctx = Context(args, job.get("loop_steps", {}))
        row = run_unit(ctx, unit, Path(job["latents_dir"]) if job.get("latents_dir") else None)
    row["peak_scope"] = "row"
    out_path.write_text(json.dumps(row, default=json_default))
    return 0


def spawn(args, unit: Unit | None, workdir: Path, index: int, cache_dir: str, latents_dir: Path | None,
          loop_steps: dict, timeout: float) -> dict:
    """Runs :func:`child` for ``unit`` in a new process; returns its row (or an error row saying why)."""
    path = workdir / f"unit{index}.json"
    a = {k: v for k, v in vars(args).items() if not k.startswith("_") and jsonable(v)}
    path.write_text(json.dumps({"args": a, "unit": None if unit is None else dataclasses.asdict(unit),
                                "cache_dir": cache_dir, "latents_dir": str(latents_dir) if latents_dir else None,
                                "loop_steps": loop_steps}))
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
    return {"name": unit.name, "kind": unit.kind, "precision": unit.precision, "strategy": unit.strategy, "mesh": format_mesh(unit.mesh),
            "devices": math.prod(unit.mesh.values()) if unit.mesh else 1,
            "reference": unit.reference, "status": "error", "reason": err, "wall_s": time.perf_counter() - t0}
