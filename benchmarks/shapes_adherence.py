"""Prompt adherence of the shipped shapes model on captions it was not evaluated on during training.

    python benchmarks/shapes_adherence.py --prompts 1024 --generate 32 --json benchmarks/results/h200x1-2026-11-23-shapes/adherence_gpu.json
    python benchmarks/shapes_adherence.py --prompts 100 --generate 8     # a 2-core CPU: about 40 minutes

Draws ``--prompts`` random captions of the caption grammar from ``--seed`` (training's evaluation used seed
0), samples one clip per caption with the model's default settings (the preset's steps, guidance, shift
and scheduler) from the weights file as shipped (float16 on disk), and scores each clip with the shipped
evaluator (``jaxvdm.models.shapes.evaluate``). Reports the means, the accuracy per motion, shape and colour,
and every non-adherent caption with what the evaluator saw. ``--generate M`` also runs the first M captions
through ``jaxvdm.generate`` (the user's path: one video per call, the seed-derived noise) and scores those,
so the batched sampler's numbers are checked against the public API. ``--views N`` also scores N captions
per view of ``jaxvdm.models.shapes.buckets.EVAL_VIEWS`` (the default clip, 8x32x32, 32x32x32, 16x48x32, and
Latent Parallelism and DualParal windows generated at their RoPE offsets; see
``jaxvdm.models.shapes.eval_views``), the adherence per bucket of a model trained on varied shapes:

    python benchmarks/shapes_adherence.py --weights runs/varied/weights.safetensors --prompts 1024 --views 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def _breakdown(scores: list[dict], captions: list[str]) -> dict:
    from jaxvdm.models.shapes import data

    groups: dict = defaultdict(lambda: defaultdict(list))
    for s, c in zip(scores, captions):
        want = data.parse_caption(c).objects[0]
        groups["motion"][want.motion].append(s["adherent"])
        groups["shape"][want.shape].append(s["adherent"])
        groups["colour"][want.colour].append(s["adherent"])
    return {k: {v: round(float(np.mean(x)), 4) for v, x in sorted(g.items())} for k, g in groups.items()}


def _summary(scores: list[dict]) -> dict:
    """The evaluator's means of ``scores``, rounded to 4 places for the JSON."""
    from jaxvdm.models.shapes import evaluate as ev

    return {k: round(v, 4) if isinstance(v, float) else v for k, v in ev.mean_scores(scores).items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=100, help="captions scored with the batched sampler")
    ap.add_argument("--generate", type=int, default=8, help="of those, how many also go through jaxvdm.generate")
    ap.add_argument("--seed", type=int, default=20261123, help="seed of the captions and the noise")
    ap.add_argument("--weights", default=None, help="a shapes weights file (default: the shipped one)")
    ap.add_argument("--batch", type=int, default=64, help="clips per sampler call")
    ap.add_argument("--views", type=int, default=0, help="also score this many captions per evaluation view")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    import jax

    import jaxvdm
    from jaxvdm.models.shapes import data
    from jaxvdm.models.shapes import evaluate as ev
    from jaxvdm.models.shapes.model import load_model, preset
    from jaxvdm.models.shapes.pipeline import load_shapes_pipeline
    from jaxvdm.models.shapes.sample import sample_clips

    p = preset()["pipeline"]
    model = load_model(args.weights)
    rng = np.random.default_rng(args.seed)
    captions = [data.caption(data.sample_spec(rng)) for _ in range(args.prompts)]
    settings = dict(steps=p["steps"], guidance=p["guidance_scale"], shift=p["flow_shift"], scheduler=p["scheduler"])
    t0 = time.perf_counter()
    clips = np.asarray(sample_clips(model, data.tokenize_batch(captions), jax.random.key(args.seed),
                                    num_frames=p["num_frames"], size=p["height"], batch=args.batch, **settings))
    sample_s = time.perf_counter() - t0
    scores = [ev.score_clip(c, t) for c, t in zip(clips, captions)]
    result = {
        "weights": str(args.weights or "shipped"), "seed": args.seed, "settings": settings,
        "device": jax.devices()[0].device_kind, "jax": jax.__version__,
        "batched": {**_summary(scores), "seconds": round(sample_s, 2)},
        "by": _breakdown(scores, captions),
        "failures": [{"caption": c, "saw": {k: s[k] for k in ("colour", "shape", "motion")}}
                     for s, c in zip(scores, captions) if not s["adherent"]],
    }
    print(f"batched sampler, {args.prompts} captions, {sample_s:.1f} s: {result['batched']}", flush=True)

    if args.generate:
        pipe = load_shapes_pipeline(args.weights)
        gen_scores, t0 = [], time.perf_counter()
        for i, c in enumerate(captions[:args.generate]):
            video = jaxvdm.generate(c, model=pipe, seed=args.seed + i, progress=False)
            gen_scores.append(ev.score_clip(video.frames, c))
        result["generate"] = {**_summary(gen_scores), "seconds": round(time.perf_counter() - t0, 2)}
        print(f"jaxvdm.generate, {args.generate} captions: {result['generate']}", flush=True)

    if args.views:
        from jaxvdm.models.shapes import buckets
        from jaxvdm.models.shapes.eval_views import evaluate_views

        per_view = evaluate_views(model, buckets.EVAL_VIEWS, args.views, seed=args.seed, batch=args.batch,
                                  settings=[(settings["steps"], settings["guidance"], settings["shift"])],
                                  scheduler=settings["scheduler"])
        result["views"] = {name: {k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()}
                           for name, s in next(iter(per_view.values())).items()}

    for f in result["failures"]:
        print(f"  not adherent: {f['caption']!r} -> saw {f['saw']}")
    print(json.dumps({k: result[k] for k in ("batched", "by")}, indent=1))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
