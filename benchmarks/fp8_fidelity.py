"""FP8 against bf16 on one GPU: the per-step prediction, 50-step latents, and the shipped model's adherence.

    python benchmarks/fp8_fidelity.py --json fp8_fidelity.json      # an NVIDIA Hopper GPU (refused elsewhere)

1. Wan 1.3B at 480x832x81 with random weights (bf16), random text embeddings, guidance 5, a 50-step UniPC
   schedule (shift 3) run in bf16: at five of its steps, the guided prediction of ``precision="fp8_attention"``
   and ``"fp8"`` on the bf16 trajectory's latent against bf16's: cosine similarity and relative error
   ``||a - b|| / ||b||``.
2. The same 50 steps run end to end in each precision from the same noise: PSNR of the final latents
   against bf16's, peak = the bf16 latents' range (max - min).
3. The shipped shapes model in bf16 and in each FP8 precision: 20 steps (its defaults) on ``--captions``
   random captions (seed 20261123, as ``benchmarks/shapes_adherence.py``), scored by the shipped evaluator.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

PRECISIONS = ("bf16", "fp8_attention", "fp8")


def _cos_rel(a, b) -> tuple[float, float]:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))), float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _psnr(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    mse = float(np.mean((a - ref) ** 2))
    peak = float(ref.max() - ref.min())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def wan_fidelity(steps: int, probe_steps: list[int], seed: int, report=None) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxvdm.models.presets import wan_config
    from jaxvdm.models.schedulers import UniPC
    from jaxvdm.models.wan.transformer import init_transformer
    from jaxvdm.pipeline import with_precision
    from jaxvdm.sharding.registry import resolve
    from jaxvdm.sharding.sampling import Denoiser

    base = init_transformer(wan_config("wan2.1-t2v-1.3b"), seed=seed, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    noise = jax.random.normal(jax.random.PRNGKey(seed), (1, 16, 21, 60, 104), jnp.float32)
    ctx = jax.random.normal(jax.random.PRNGKey(seed + 1), (2, 512, 4096), jnp.float32)
    sched = UniPC(steps, shift=3.0)
    plan = resolve("single", None)
    dens = {}
    for p in PRECISIONS:
        model, attention = with_precision(base, p, "cudnn")
        dens[p] = Denoiser(model, plan, None, attention=attention)
    g = jnp.float32(5.0)
    # the bf16 trajectory, keeping the latents of the probe steps
    den = dens["bf16"]
    x = jnp.array(noise, copy=True)
    st = jax.tree.map(lambda a: jnp.array(a, copy=True), sched.init(x))
    step = den.compiled_step(sched, None, (den.state, x, st, jnp.int32(0), ctx, g))
    kept = {}
    t0 = time.perf_counter()
    for i in range(steps):
        if i in probe_steps:
            kept[i] = x + 0.0
        x, st = step(den.state, x, st, jnp.int32(i), ctx, g)
    finals = {"bf16": np.asarray(x)}  # the bf16 run end to end is this trajectory
    seconds = {"bf16": time.perf_counter() - t0}
    per_step = []
    predict = {p: jax.jit(d.predict_fn(None)) for p, d in dens.items()}
    for i in probe_steps:
        t = sched.timestep(i)
        ref = predict["bf16"](dens["bf16"].state, kept[i], t, ctx, g)
        row = {"step": i, "timestep": float(t)}
        for p in PRECISIONS[1:]:
            row[p] = dict(zip(("cosine", "rel_err"), _cos_rel(predict[p](dens[p].state, kept[i], t, ctx, g), ref)))
        per_step.append(row)
        print(json.dumps(row), flush=True)
    result = {"model": "wan2.1-t2v-1.3b (random weights, bf16)", "latent": list(noise.shape), "steps": steps,
              "per_step_prediction": per_step, "final_latents_vs_bf16": {}}
    for p in ("fp8", "fp8_attention"):
        out, timing = dens[p].sample(noise, ctx, 5.0, sched, progress=False)
        finals[p] = np.asarray(out)
        seconds[p] = timing["denoise_s"]
        result["final_latents_vs_bf16"][p] = {"psnr_db": _psnr(finals[p], finals["bf16"]),
                                              "cosine": _cos_rel(finals[p], finals["bf16"])[0],
                                              "denoise_s": seconds[p], "bf16_denoise_s": seconds["bf16"]}
        print(p, json.dumps(result["final_latents_vs_bf16"][p]), flush=True)
        if report:
            report(result)
    return result


def shapes_adherence(captions: int, seed: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxvdm.models.schedulers import make_scheduler
    from jaxvdm.models.shapes import data
    from jaxvdm.models.shapes import evaluate as ev
    from jaxvdm.models.shapes.model import load_model, preset
    from jaxvdm.pipeline import with_precision

    p = preset()["pipeline"]
    rng = np.random.default_rng(seed)
    texts = [data.caption(data.sample_spec(rng)) for _ in range(captions)]
    ids = jnp.asarray(data.tokenize_batch(texts))
    sched = make_scheduler(p["scheduler"], p["steps"], p["flow_shift"])
    shape = (3, p["num_frames"], p["height"], p["width"])
    out = {}
    for precision in PRECISIONS:
        model = load_model(dtype=jnp.bfloat16)
        model.transformer, attention = with_precision(model.transformer, precision, "cudnn")
        graphdef, state = nnx.split(model)

        @jax.jit
        def sample(state, ids, key):
            m = nnx.merge(graphdef, state)
            b = ids.shape[0]
            ctx = m.text(jnp.concatenate([ids, jnp.full_like(ids, data.PAD_ID)], axis=0))
            x = jax.random.normal(key, (b,) + shape, jnp.float32)

            def body(i, carry):
                x, st = carry
                v = m.transformer(jnp.concatenate([x, x]), jnp.full((2 * b,), sched.timestep(i)), ctx,
                                  attention=attention)
                return sched.step(st, v[b:] + p["guidance_scale"] * (v[:b] - v[b:]), x, i)

            x, _ = jax.lax.fori_loop(0, sched.num_steps, body, (x, sched.init(x)))
            return jnp.clip(x, -1, 1).transpose(0, 2, 3, 4, 1)

        clips, key = [], jax.random.key(seed)
        t0 = time.perf_counter()
        for start in range(0, captions, 64):
            key, sub = jax.random.split(key)
            clips.append(np.asarray(sample(state, ids[start:start + 64], sub)))
        seconds = time.perf_counter() - t0
        scores = [ev.score_clip(c, t) for c, t in zip(np.concatenate(clips), texts)]
        means = ev.mean_scores(scores)
        out[precision] = {k: round(v, 4) if isinstance(v, float) else v for k, v in means.items()}
        out[precision]["seconds"] = round(seconds, 2)
        print(precision, json.dumps(out[precision]), flush=True)
    return {"captions": captions, "seed": seed, "settings": {k: p[k] for k in ("steps", "guidance_scale", "flow_shift")},
            "by_precision": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--captions", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", default="wan,shapes")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import jax

    from jaxvdm.models.wan.fp8_support import check_fp8

    try:
        support = check_fp8()
    except ValueError as e:
        print(f"fp8_fidelity: {e}", file=sys.stderr)
        return 2
    result = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "fp8_support": str(support)}

    def write():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1, default=str)

    parts = args.parts.split(",")
    if "shapes" in parts:
        result["shapes_adherence"] = shapes_adherence(args.captions, 20261123)
        write()
    if "wan" in parts:
        probes = sorted({0, args.steps // 4, args.steps // 2, 3 * args.steps // 4, args.steps - 1})
        def partial(wan):
            result["wan"] = wan
            write()

        result["wan"] = wan_fidelity(args.steps, probes, args.seed, report=partial)
        write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
