"""ParaStep at few steps on the shipped shapes model: is the speckle the method or its last, partial round?

    python benchmarks/shapes_parastep_tail.py --steps 20 22 --n 3 --prompts 6 \
        --json benchmarks/results/cpu2-2026-12-02-parastep-tail/parastep_tail_cpu.json

Runs on 8 simulated CPU devices (set before JAX loads). For every caption, step count and N it generates the
single-device clip and the ParaStep clip (``jaxvdm.generate(..., strategy="parastep", mesh=step=N)``, cache
"own", W = 5) from the same seed and reports against the single-device clip: PSNR of the uint8 frames, the
largest latent error, the evaluator's adherence, and where the error sits (the share of the squared error on
the shape's edge pixels: those whose single-device value differs from a neighbour's by more than 32 of 255).
Beside it, on one device and sharing only the model's prediction with the strategy:

* ``reuse-only``: ParaStep's step-skipping baseline at the same sequential call count;
* ``reenactment``: ParaStep run literally, one call after another (``parastep.serial_reenactment``): the
  parallel run must equal it (its largest latent difference is reported);
* ``exact last step``: the same re-enactment but the final step's model call made at the true latent instead
  of the predicted one (one more sequential call): a diagnosis of where the speckle comes from, not a method;
* the mismatch between each predicted point and the true latent of its step, ``|x̂ - x|_rms``, per position,
  and the model calls the strategy reports against those a counting predict records.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAXVDM_PROGRESS", "0")

import numpy as np  # noqa: E402

PROMPTS = ["a red circle moving left", "a big blue square moving down on a light background",
           "a green triangle growing on a gradient background", "a small yellow circle bouncing horizontally",
           "a magenta square moving right on a dark background", "a cyan triangle moving up-left"]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _edge_share(frames: np.ndarray, ref: np.ndarray) -> float:
    """Share of the squared error (against ``ref``, uint8 ``[F, H, W, 3]``) on ``ref``'s edge pixels."""
    r = ref.astype(np.float64)
    grad = np.zeros(r.shape[:3])
    for ax in (1, 2):
        d = np.abs(np.diff(r, axis=ax)).max(-1)
        pad = [(0, 0)] * 3
        pad[ax] = (0, 1)
        grad = np.maximum(grad, np.pad(d, pad))
        pad[ax] = (1, 0)
        grad = np.maximum(grad, np.pad(d, pad))
    edge = grad > 32
    err = ((frames.astype(np.float64) - r) ** 2).sum(-1)
    return float(err[edge].sum() / max(err.sum(), 1e-12))


def _reenact(predict, sched, noise, warmup, n, exact_last=False, mismatch=None):
    """ParaStep's cache="own" schedule run serially (written here from the algorithm, not parastep's code);
    with ``exact_last`` the final step is evaluated at the true latent. ``mismatch`` collects
    ``(step, position, rms |x̂ - x|)`` for every predicted point, the true latent being known after the round."""
    import jax.numpy as jnp

    T = sched.num_steps
    x, st = jnp.asarray(noise, jnp.float32), sched.init(jnp.asarray(noise, jnp.float32))
    v = None
    for i in range(warmup):
        v = predict(x, i)
        x, st = sched.step(st, v, x, i)
    cache = [v] * n
    s = warmup
    while s < T:
        m = min(n, T - s)
        outs, points = [], []
        for j in range(m):
            xh, sh = x, st
            for k in range(j):
                xh, sh = sched.step(sh, cache[j], xh, s + k)
            points.append(xh)
            outs.append(predict(xh, s + j))
        trues = []
        for k in range(m):
            trues.append(x)
            if exact_last and s + k == T - 1:
                outs[k] = predict(x, s + k)
            x, st = sched.step(st, outs[k], x, s + k)
        if mismatch is not None:
            mismatch += [(s + j, j, float(jnp.sqrt(jnp.mean((points[j] - trues[j]) ** 2)))) for j in range(m)]
        cache = outs + cache[m:]
        s += m
    return x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[20, 22])
    p.add_argument("--n", type=int, nargs="+", default=[3])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--prompts", type=int, default=len(PROMPTS))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    import jaxvdm
    from jaxvdm.models.schedulers import make_scheduler
    from jaxvdm.models.shapes import evaluate as ev
    from jaxvdm.pipeline import get_pipeline
    from jaxvdm.sharding import make_mesh, parastep, sampling
    from jaxvdm.sharding.registry import resolve
    from jaxvdm.video import Video

    pipe = get_pipeline(None)
    d = pipe.defaults
    den = sampling.placed(pipe.transformer, resolve("single", None), None)
    f = jax.jit(den.predict_fn(None))
    prompts = PROMPTS[: args.prompts]
    rows = []
    t_start = time.perf_counter()
    for steps in args.steps:
        sched = make_scheduler(d["scheduler"], steps, d["flow_shift"])
        for n in args.n:
            mesh = make_mesh(step=n)
            per = []
            for i, pr in enumerate(prompts):
                ref = jaxvdm.generate(pr, seed=i, steps=steps)
                par = jaxvdm.generate(pr, seed=i, steps=steps, mesh=mesh, strategy="parastep", warmup=args.warmup)
                ctx = pipe.encode_text([pr, d.get("negative_prompt", "")])
                noise = jax.random.normal(jaxvdm.pipeline.seed_key(i), ref.latents.shape, jnp.float32)
                g = jnp.float32(d["guidance_scale"])

                def predict(x, k, _ctx=ctx):
                    return f(den.state, x, sched.timestep(k), _ctx, g)

                def video(x):
                    return Video.from_float(np.asarray(pipe.decode(jnp.asarray(x), None))[0], fps=8, latents=np.asarray(x))

                mism: list = []
                reen = np.asarray(_reenact(predict, sched, noise, args.warmup, n, mismatch=mism))
                exact_last = np.asarray(_reenact(predict, sched, noise, args.warmup, n, exact_last=True))
                reuse = np.asarray(parastep.reuse_only(lambda x, k, q: predict(x, k), sched, noise,
                                                       warmup=args.warmup, n=n))
                vids = {"parastep": par, "exact last step": video(exact_last), "reuse-only": video(reuse)}
                rec = {"prompt": pr, "seed": i, "single_adherent": bool(ev.score_clip(ref.frames, pr)["adherent"]),
                       "parallel_vs_reenactment": float(np.max(np.abs(par.latents - reen))),
                       "reported_calls": [par.settings["timings"].get("sequential_model_calls"),
                                          par.settings["timings"].get("total_model_calls")],
                       "last_round_mismatch": [m for m in mism if m[0] >= steps - n],
                       "mismatch_by_position": {j: float(np.mean([m[2] for m in mism if m[1] == j])) for j in range(n)}}
                for name, v in vids.items():
                    rec[name] = {"psnr_db": _psnr(v.frames, ref.frames),
                                 "max_latent_error": float(np.max(np.abs(v.latents - ref.latents))),
                                 "adherent": bool(ev.score_clip(v.frames, pr)["adherent"]),
                                 "edge_share_of_error": _edge_share(v.frames, ref.frames)}
                per.append(rec)
                print(json.dumps({"steps": steps, "n": n, **rec}), flush=True)
            row = {"steps": steps, "n": n, "warmup": args.warmup, "rounds": parastep.rounds(steps, args.warmup, n),
                   "model_calls_formula": parastep.model_calls(steps, args.warmup, n),
                   "single_adherent": float(np.mean([r["single_adherent"] for r in per])),
                   "parallel_vs_reenactment": max(r["parallel_vs_reenactment"] for r in per), "per_prompt": per}
            for name in ("parastep", "exact last step", "reuse-only"):
                row[name] = {k: float(np.mean([r[name][k] for r in per]))
                             for k in ("psnr_db", "adherent", "edge_share_of_error")}
                row[name]["max_latent_error"] = max(r[name]["max_latent_error"] for r in per)
            rows.append(row)
            print(f"T={steps} N={n}: " + "; ".join(
                f"{k} PSNR {row[k]['psnr_db']:.1f} dB adherent {row[k]['adherent']:.2f} edge share "
                f"{row[k]['edge_share_of_error']:.2f}" for k in ("parastep", "exact last step", "reuse-only")), flush=True)
    out = {"jax": jax.__version__, "command": " ".join(sys.argv), "seconds": time.perf_counter() - t_start,
           "prompts": prompts, "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
