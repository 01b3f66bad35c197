"""What one training step of each bucket of a shapes training mix costs, and what a run of it would take.

    python benchmarks/shapes_bucket_cost.py --mix varied --batch-size 8 --steps 3 --json benchmarks/results/cpu2-2026-12-01-shapes/bucket_cost_cpu.json
    python benchmarks/shapes_bucket_cost.py --mix varied --batch-size 128 --steps 20 --dtype bfloat16   # on a GPU

For every window size of the mix (one compile each; buckets of one size share it) it times the compile and
``--steps`` training steps of the shipped architecture (after one warm step) in ``--rounds`` interleaved rounds
(each size's fastest round counts: robust to a shared machine), on batches drawn as training's workers draw
them, and the time a data worker takes to draw one batch of each bucket. It reports the mix's mean step time (each bucket's weight times its size's step time) relative to
the default ``16x32x32`` clip's (sizes left out with ``--sizes`` are predicted from the timed ones: ``c1 S +
c2 S^2`` per clip of ``S`` tokens, least squares), which turns a measured default-clip throughput (run 6: 55,083 steps of 128
clips in 3,550 s on one H200) into the minutes a run of the mix takes: ``--estimate-steps`` steps at
``--default-step-s`` seconds per default step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", default="varied")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per window size and round (after a warm step)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; each size's fastest counts")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--sizes", default="", help="time only these window sizes, e.g. '16x32x32;8x32x32' (default: "
                    "all); the others are predicted from them")
    ap.add_argument("--two-shapes", type=float, default=0.0)
    ap.add_argument("--estimate-steps", type=int, default=20000, help="steps of the run to estimate")
    ap.add_argument("--default-step-s", type=float, default=3550 / 55083,
                    help="seconds per default-clip step of batch 128 on the target machine (run 6 on one H200)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxvdm.models.shapes import buckets, train
    from jaxvdm.models.shapes.model import init_model

    mix = buckets.get_mix(args.mix)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    max_len = 18 if args.two_shapes else 12
    model = init_model(0, dtype=dtype, max_len=max_len)
    graphdef, params = nnx.split(model, nnx.Param)
    opt = train._optimizer(1e-4).init(params)
    ema = jax.tree.map(jnp.copy, params)
    step_fn = train._train_step(graphdef, 1e-4, 3.0, 0.1, 0.999)
    wanted = {tuple(int(v) for v in s.split("x")) for s in args.sizes.split(";") if s}

    # one batch per bucket, drawn as training's workers draw them: the data cost of each bucket
    draws = {}
    for i, b in enumerate(mix):
        t0 = time.perf_counter()
        drawn = buckets.draw_batch(np.random.default_rng(i), b, args.batch_size, two_shapes=args.two_shapes)
        draws[b.name] = (train.pack_batch(drawn, args.two_shapes), time.perf_counter() - t0)
    sizes: dict = {}
    inputs: dict = {}
    for b in mix:  # compile (and warm) each window size once
        if (wanted and tuple(b.window) not in wanted) or tuple(b.window) in sizes:
            continue
        (specs, ids, view, window), _ = draws[b.name]
        inputs[window] = (specs, ids, view)
        t0 = time.perf_counter()
        out = step_fn(params, opt, ema, specs, ids, view, jax.random.key(0), jnp.float32(0), jnp.float32(1e-4),
                      window=window)
        jax.block_until_ready(out)
        sizes[window] = {"window": list(window), "tokens": window[0] * (window[1] // 4) * (window[2] // 4),
                         "compile_s": round(time.perf_counter() - t0, 2), "rounds_s": []}
        print(f"compiled {'x'.join(map(str, window))} in {sizes[window]['compile_s']:.1f} s", flush=True)
    for r in range(args.rounds):  # interleaved rounds: the fastest round of each size is the least disturbed
        for window, (specs, ids, view) in inputs.items():
            t0 = time.perf_counter()
            for s in range(args.steps):
                out = step_fn(params, opt, ema, specs, ids, view, jax.random.key(s), jnp.float32(s),
                              jnp.float32(1e-4), window=window)
            jax.block_until_ready(out)
            sizes[window]["rounds_s"].append(round((time.perf_counter() - t0) / args.steps, 4))
    for window, m in sizes.items():
        m["step_s"] = min(m["rounds_s"])
        print(f"{'x'.join(map(str, window)):>10s}: {m['tokens']:5d} tokens/clip, step {1e3 * m['step_s']:8.1f} ms "
              f"(batch {args.batch_size}; rounds {m['rounds_s']})", flush=True)

    # sizes not measured (--sizes) are predicted from the measured ones: a step costs c1*S + c2*S^2 per clip
    # of S tokens (the token-wise layers, then attention within a clip), fitted by least squares
    meas = list(sizes.values())
    s_tok = np.array([m["tokens"] for m in meas], np.float64)
    coef = np.linalg.lstsq(np.stack([s_tok, s_tok ** 2], 1), np.array([m["step_s"] for m in meas]), rcond=None)[0] \
        if len(meas) >= 2 else np.array([meas[0]["step_s"] / meas[0]["tokens"], 0.0])

    def step_s(window):
        if tuple(window) in sizes:
            return sizes[tuple(window)]["step_s"]
        tok = window[0] * (window[1] // 4) * (window[2] // 4)
        return float(coef[0] * tok + coef[1] * tok ** 2)

    result = {"mix": args.mix, "batch_size": args.batch_size, "dtype": args.dtype,
              "device": jax.devices()[0].device_kind, "jax": jax.__version__, "sizes": meas,
              "fit_per_step": {"per_token_s": float(coef[0]), "per_token_squared_s": float(coef[1])},
              "draw_s": {name: round(dt, 4) for name, (_, dt) in draws.items()},
              "command": "python benchmarks/shapes_bucket_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    default = step_s((16, 32, 32))
    rel = sum(b.weight * step_s(b.window) for b in mix) / sum(b.weight for b in mix) / default
    draw = sum(b.weight * draws[b.name][1] for b in mix) / sum(b.weight for b in mix)
    run_s = args.estimate_steps * rel * args.default_step_s
    n_sizes = len({tuple(b.window) for b in mix})
    per_compile = float(np.mean([m["compile_s"] for m in meas]))
    result["per_bucket_step_vs_default"] = {b.name: round(step_s(b.window) / default, 3) for b in mix}
    result["estimate"] = {"mean_step_vs_default": round(rel, 3), "mean_draw_s_per_batch": round(draw, 4),
                          "steps": args.estimate_steps, "default_step_s": args.default_step_s,
                          "train_minutes": round(run_s / 60, 1), "window_sizes": n_sizes,
                          "compile_s_per_size_here": round(per_compile, 1)}
    print(f"the mix's mean step is {rel:.3f} x the default clip's; {args.estimate_steps} steps at "
          f"{args.default_step_s * 1e3:.1f} ms per default step: {run_s / 60:.1f} min of training; "
          f"{n_sizes} window sizes to compile ({per_compile:.0f} s each here); a worker draws a batch in "
          f"{draw:.3f} s on average (batch {args.batch_size})", flush=True)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
