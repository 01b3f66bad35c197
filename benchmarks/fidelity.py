"""Fidelity and communication of every strategy on the shipped shapes model, against the exact run.

    python benchmarks/fidelity.py --prompts 2 --json docs/fidelity_cpu.json

Runs on 8 simulated CPU devices (set before JAX loads). For each strategy and mesh it generates the same
prompts from the same seeds and reports, against the single-device output: the largest latent error,
the PSNR of the uint8 frames, and the bytes each device sends per compiled program (parsed from the
optimised HLO: a denoising step for the per-step strategies, a round for ParaStep, the whole pipeline
for DualParal). Exact strategies must show float-rounding errors only; approximate ones show what they
change. The DualParal pipeline is also compared with its serial oracle (the same block-wise algorithm
on one device), which it must equal.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAXVDM_PROGRESS", "0")

import numpy as np  # noqa: E402

CONFIGS = [  # (label, strategy, mesh axes, options)
    ("cfg", "cfg", {"cfg": 2}, {}),
    ("ulysses", "ulysses", {"sp": 4}, {}),
    ("ring", "ring", {"sp": 4}, {}),
    ("cfg+ulysses", "cfg+ulysses", {"cfg": 2, "sp": 4}, {}),
    ("fsdp", "fsdp", {"fsdp": 2}, {}),
    ("lp K=2 overlap 0.5", "lp", {"lp": 2}, {}),
    ("lp K=2 overlap 0.25", "lp", {"lp": 2}, {"overlap": 0.25}),
    ("lp K=4 overlap 0.5", "lp", {"lp": 4}, {}),
    ("lp+cfg K=2", "lp+cfg", {"cfg": 2, "lp": 2}, {}),
    ("parastep N=2 W=5", "parastep", {"step": 2}, {}),
    ("parastep N=4 W=5", "parastep", {"step": 4}, {}),
    ("dualparal oracle (1 device)", "dualparal", None, {}),
    ("dualparal 2 stages", "dualparal", {"stage": 2}, {}),
]

PROMPTS = ["a red circle moving left on a dark background", "a big blue square moving down on a light background",
           "a green triangle growing on a gradient background", "a small yellow circle bouncing horizontally"]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _comm(hlo_dir: Path) -> dict[str, int]:
    """Bytes sent per device by each distinct compiled program in an HLO dump folder."""
    from jaxvdm.sharding import comm

    out = {}
    for f in sorted(hlo_dir.glob("*.hlo.txt")):
        name = re.sub(r"_\d+$", "", f.name[: -len(".hlo.txt")])
        if name in out:
            continue
        text = f.read_text()
        rep = comm.comm_report(comm.collectives_from_hlo(text), comm.num_devices_from_hlo(text))
        out[name] = rep.bytes_per_device
    return out


def _reuse_only_rows(prompts, refs, kw) -> list[dict]:
    """ParaStep's baseline: skip steps by reusing the last output, at ParaStep's sequential call count."""
    import jax
    import jax.numpy as jnp

    from jaxvdm.pipeline import get_pipeline
    from jaxvdm.schedulers import make_scheduler
    from jaxvdm.sharding import parastep
    from jaxvdm.sharding.registry import resolve
    from jaxvdm.video import Video

    pipe = get_pipeline(None)
    d = pipe.defaults
    steps = kw.get("steps", d["steps"])
    sched = make_scheduler(d["scheduler"], steps, d["flow_shift"])
    den = pipe.denoiser(resolve("single", None), None, None)
    f = jax.jit(den.predict_fn(None))
    rows = []
    for n in (2, 4):
        errs, psnrs = [], []
        for i, pr in enumerate(prompts):
            ctx = pipe.encode_text([pr, d.get("negative_prompt", "")])
            noise = jax.random.normal(jax.random.PRNGKey(i), refs[i].latents.shape, jnp.float32)
            x = parastep.reuse_only(lambda x, k, p: f(den.state, x, sched.timestep(k), ctx, jnp.float32(d["guidance_scale"])),
                                    sched, noise, warmup=5, n=n)
            x = np.asarray(x)
            v = Video.from_float(np.asarray(pipe.decode(jnp.asarray(x), None))[0], fps=8)
            errs.append(float(np.max(np.abs(x - refs[i].latents))))
            psnrs.append(_psnr(v.frames, refs[i].frames))
        row = dict(strategy=f"reuse-only baseline N={n} W=5 (1 device)", mesh={}, max_latent_error=max(errs),
                   psnr_db=float(np.mean(psnrs)), comm_bytes_per_device={}, seconds=float("nan"))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import jax

    import jaxvdm
    from jaxvdm.sharding import make_mesh

    prompts = PROMPTS[: args.prompts]
    kw = {} if args.steps is None else {"steps": args.steps}
    refs = [jaxvdm.generate(pr, seed=i, **kw) for i, pr in enumerate(prompts)]
    oracle = None
    rows = []
    for label, strategy, axes, options in CONFIGS:
        mesh = make_mesh(**axes) if axes else None
        errs, psnrs, secs = [], [], []
        comm_bytes = {}
        outs = []
        for i, pr in enumerate(prompts):
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                v = jaxvdm.generate(pr, seed=i, mesh=mesh, strategy=strategy, dump_hlo=d if i == 0 else None,
                                    **kw, **options)
                secs.append(time.perf_counter() - t0)
                if i == 0:
                    comm_bytes = _comm(Path(d))
            outs.append(v)
            errs.append(float(np.max(np.abs(v.latents - refs[i].latents))))
            psnrs.append(_psnr(v.frames, refs[i].frames))
        row = dict(strategy=label, mesh=axes or {}, max_latent_error=max(errs), psnr_db=float(np.mean(psnrs)),
                   comm_bytes_per_device=comm_bytes, seconds=float(np.median(secs)))
        if strategy == "dualparal":
            if mesh is None:
                oracle = outs
            elif oracle is not None:
                row["max_error_vs_oracle"] = max(float(np.max(np.abs(a.latents - b.latents))) for a, b in zip(outs, oracle))
        rows.append(row)
        print(json.dumps(row), flush=True)

    rows += _reuse_only_rows(prompts, refs, kw)

    print()
    print(f"shapes model, {len(prompts)} prompts, {refs[0].settings['steps']} steps, 8 simulated CPU devices, "
          f"jax {jax.__version__}")
    print(f"| strategy | mesh | max latent error vs single | PSNR vs single (dB) | bytes sent per device per program |")
    print("|---|---|---|---|---|")
    for r in rows:
        mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items()) or "none"
        comm_s = "; ".join(f"{k.split('_')[0]}: {v / 1024:.0f} KiB" for k, v in r["comm_bytes_per_device"].items()) or "0"
        extra = f" (vs oracle {r['max_error_vs_oracle']:.1e})" if "max_error_vs_oracle" in r else ""
        print(f"| {r['strategy']} | {mesh} | {r['max_latent_error']:.2e}{extra} | {r['psnr_db']:.1f} | {comm_s} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"jax": jax.__version__, "prompts": prompts, "command": " ".join(sys.argv),
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
