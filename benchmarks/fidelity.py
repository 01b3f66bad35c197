"""Fidelity and communication of every strategy on the shipped shapes model, against the exact run.

    python benchmarks/fidelity.py --prompts 4 --random-prompts 8 --json benchmarks/results/cpu16-2026-11-23/fidelity_cpu.json

Runs on 8 simulated CPU devices (set before JAX loads). For each strategy and mesh it generates the same
prompts from the same seeds and reports, against the single-device output: the largest latent error,
the PSNR of the uint8 frames, and the bytes each device sends per compiled program (parsed from the
optimised HLO: a denoising step for the per-step strategies, a round for ParaStep, the whole pipeline
for DualParal). Exact strategies must show float-rounding errors only; approximate ones show what they
change. The DualParal pipeline is also compared with its serial oracle (the same block-wise algorithm
on one device), which it must equal. Every output is also scored by the shapes evaluator against its
caption (the ``adherent`` column: colour, shape and motion all right), which says whether a strategy's
change matters for what the clip shows. ``--only REGEX`` runs the configurations whose label matches.
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
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a CPU benchmark (and no TPU probing where libtpu is installed)
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
    ("lp K=4 overlap 0.25", "lp", {"lp": 4}, {"overlap": 0.25}),
    ("lp K=2 unite", "lp", {"lp": 2}, {"schedule": "unite"}),
    ("lp K=4 unite", "lp", {"lp": 4}, {"schedule": "unite"}),
    ("lp+cfg K=2", "lp+cfg", {"cfg": 2, "lp": 2}, {}),
    ("parastep N=2 W=5", "parastep", {"step": 2}, {}),
    ("parastep N=3 W=5", "parastep", {"step": 3}, {}),
    ("parastep N=4 W=5", "parastep", {"step": 4}, {}),
    ("dualparal oracle (1 device)", "dualparal", None, {}),
    ("dualparal 2 stages", "dualparal", {"stage": 2}, {}),
    ("dualparal 4 stages", "dualparal", {"stage": 4}, {}),
]

PROMPTS = ["a red circle moving left on a dark background", "a big blue square moving down on a light background",
           "a green triangle growing on a gradient background", "a small yellow circle bouncing horizontally"]


def _random_captions(n: int, seed: int = 7) -> list[str]:
    from jaxvdm.models.shapes import data

    rng = np.random.default_rng(seed)
    return [data.caption(data.sample_spec(rng)) for _ in range(n)]


def _adherence(videos, prompts) -> float:
    from jaxvdm.models.shapes import evaluate as ev

    return float(np.mean([ev.score_clip(v.frames, pr)["adherent"] for v, pr in zip(videos, prompts)]))


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
    from jaxvdm.models.schedulers import make_scheduler
    from jaxvdm.sharding import parastep, sampling
    from jaxvdm.sharding.registry import resolve
    from jaxvdm.video import Video

    pipe = get_pipeline(None)
    d = pipe.defaults
    steps = kw.get("steps", d["steps"])
    sched = make_scheduler(d["scheduler"], steps, d["flow_shift"])
    den = sampling.placed(pipe.transformer, resolve("single", None), None)
    f = jax.jit(den.predict_fn(None))
    rows = []
    for n in (2, 3, 4):
        errs, psnrs, videos = [], [], []
        for i, pr in enumerate(prompts):
            ctx = pipe.encode_text([pr, d.get("negative_prompt", "")])
            noise = jax.random.normal(jax.random.PRNGKey(i), refs[i].latents.shape, jnp.float32)
            x = parastep.reuse_only(lambda x, k, p: f(den.state, x, sched.timestep(k), ctx, jnp.float32(d["guidance_scale"])),
                                    sched, noise, warmup=5, n=n)
            x = np.asarray(x)
            v = Video.from_float(np.asarray(pipe.decode(jnp.asarray(x), None))[0], fps=8)
            errs.append(float(np.max(np.abs(x - refs[i].latents))))
            psnrs.append(_psnr(v.frames, refs[i].frames))
            videos.append(v)
        row = dict(strategy=f"reuse-only baseline N={n} W=5 (1 device)", mesh={}, max_latent_error=max(errs),
                   psnr_db=float(np.mean(psnrs)), adherent=_adherence(videos, prompts), comm_bytes_per_device={},
                   seconds=float("nan"))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _host() -> str:
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _report(result: dict, json_path: str | None) -> None:
    """Prints the markdown table of ``result["rows"]`` and writes ``result`` to ``json_path`` (if given)."""
    print()
    print(f"shapes model, {len(result['prompts'])} prompts, {result['steps']} steps, 8 simulated CPU devices, "
          f"jax {result['jax']}, {result['host']}")
    print("| strategy | mesh | max latent error vs single | PSNR vs single (dB) | adherent | bytes sent per device per program |")
    print("|---|---|---|---|---|---|")
    for r in result["rows"]:
        mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items()) or "none"
        comm_s = "; ".join(f"{k.split('_')[0]}: {v / 1024:.0f} KiB" for k, v in r["comm_bytes_per_device"].items()) or "0"
        extra = f" (vs oracle {r['max_error_vs_oracle']:.1e})" if "max_error_vs_oracle" in r else ""
        print(f"| {r['strategy']} | {mesh} | {r['max_latent_error']:.2e}{extra} | {r['psnr_db']:.1f} | "
              f"{100 * r['adherent']:.0f} % | {comm_s} |")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))


def merge(paths: list[str], json_path: str | None) -> dict:
    """Joins the results of runs split with ``--only`` (same prompts and steps) into one, in CONFIGS order."""
    parts = [json.loads(Path(q).read_text()) for q in paths]
    for q, r in zip(paths[1:], parts[1:]):
        if (r["prompts"], r["steps"]) != (parts[0]["prompts"], parts[0]["steps"]):
            raise ValueError(f"{q}: its prompts or steps differ from {paths[0]}'s; merge runs of one command only")
    order = ["single (1 device)"] + [c[0] for c in CONFIGS]
    rows = {r["strategy"]: r for part in parts for r in part["rows"]}
    ranked = sorted(rows.values(), key=lambda r: (order.index(r["strategy"]) if r["strategy"] in order else len(order),
                                                  r["strategy"]))
    result = dict(parts[0], rows=ranked, command=[r["command"] for r in parts])
    _report(result, json_path)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=2, help=f"how many of the {len(PROMPTS)} fixed prompts")
    p.add_argument("--random-prompts", type=int, default=0, help="more prompts drawn from the caption grammar")
    p.add_argument("--only", default=None, help="run only the configurations whose label matches this regex")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON", help="join the JSON of runs split with --only")
    args = p.parse_args(argv)
    if args.merge:
        merge(args.merge, args.json)
        return 0

    import jax

    import jaxvdm
    from jaxvdm.sharding import make_mesh

    prompts = PROMPTS[: args.prompts] + _random_captions(args.random_prompts)
    kw = {} if args.steps is None else {"steps": args.steps}
    t0 = time.perf_counter()
    refs = [jaxvdm.generate(pr, seed=i, **kw) for i, pr in enumerate(prompts)]
    rows = [dict(strategy="single (1 device)", mesh={}, max_latent_error=0.0, psnr_db=float("inf"),
                 adherent=_adherence(refs, prompts), comm_bytes_per_device={},
                 seconds=(time.perf_counter() - t0) / len(prompts))]
    print(json.dumps(rows[0]), flush=True)
    oracle = None
    configs = [c for c in CONFIGS if args.only is None or re.search(args.only, c[0])]
    for label, strategy, axes, options in configs:
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
                   adherent=_adherence(outs, prompts), comm_bytes_per_device=comm_bytes, seconds=float(np.median(secs)))
        if strategy == "dualparal":
            if mesh is None:
                oracle = outs
            elif oracle is not None:
                row["max_error_vs_oracle"] = max(float(np.max(np.abs(a.latents - b.latents))) for a, b in zip(outs, oracle))
        rows.append(row)
        print(json.dumps(row), flush=True)

    if args.only is None or re.search(args.only, "reuse-only baseline"):
        rows += _reuse_only_rows(prompts, refs, kw)

    _report(dict(jax=jax.__version__, host=_host(), steps=refs[0].settings["steps"], prompts=prompts,
                 command=" ".join(sys.argv), rows=rows), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
