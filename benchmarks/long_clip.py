"""A clip 10x the shipped model's training length with DualParal, and how smooth its block boundaries are.

    python benchmarks/long_clip.py --frames 160 --stages 4 --json benchmarks/results/cpu16-2026-11-23/long_clip_cpu.json

Runs the DualParal pipeline on simulated CPU devices (``stage`` axis) and its serial oracle on one
device, checks they agree, and reports: the mean frame-to-frame change (mean |frame[f+1] - frame[f]|, in
[0, 255] levels) across block boundaries and inside blocks, their ratio, and the colour/background
adherence of each 16-frame segment against the same scores of ordinary 16-frame clips.
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

PROMPT = "a red circle moving right on a dark background"


def boundary_ratio(frames: np.ndarray, context: int, block: int) -> dict:
    """Mean absolute change between consecutive frames at block boundaries and inside blocks."""
    diffs = np.abs(np.diff(frames.astype(np.float64), axis=0)).mean(axis=(1, 2, 3))  # [F-1]
    # latent frame f belongs to block (f - context) // block; boundaries are where that changes
    blocks = np.maximum(np.arange(len(frames)) - context, -1) // block
    at = blocks[1:] != blocks[:-1]
    return {"boundary_change": float(diffs[at].mean()), "inside_change": float(diffs[~at].mean()),
            "ratio": float(diffs[at].mean() / diffs[~at].mean())}


def segment_scores(frames: np.ndarray, caption: str, length: int = 16) -> dict:
    from jaxvdm.models.shapes import evaluate as ev

    clips = [frames[s:s + length] for s in range(0, len(frames) - length + 1, length)]
    clips = np.stack([c.astype(np.float32) / 127.5 - 1 for c in clips])
    return ev.score_batch(clips, [caption] * len(clips))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=160)
    p.add_argument("--stages", type=int, default=4)
    p.add_argument("--block-frames", type=int, default=4)
    p.add_argument("--context-frames", type=int, default=4)
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import jax

    import jaxvdm
    from jaxvdm.sharding import make_mesh

    opts = dict(block_frames=args.block_frames, context_frames=args.context_frames)
    t0 = time.perf_counter()
    long = jaxvdm.generate(args.prompt, num_frames=args.frames, mesh=make_mesh(stage=args.stages),
                           strategy="dualparal", **opts)
    t_pipe = time.perf_counter() - t0
    t0 = time.perf_counter()
    oracle = jaxvdm.generate(args.prompt, num_frames=args.frames, strategy="dualparal", **opts)
    t_oracle = time.perf_counter() - t0
    short = [jaxvdm.generate(args.prompt, seed=s) for s in range(4)]

    from jaxvdm.models.shapes import evaluate as ev

    short_scores = ev.score_batch(np.stack([v.frames.astype(np.float32) / 127.5 - 1 for v in short]),
                                  [args.prompt] * len(short))
    result = {
        "prompt": args.prompt, "frames": args.frames, "stages": args.stages, **opts,
        "pipeline_vs_oracle_max_latent_error": float(np.max(np.abs(long.latents - oracle.latents))),
        "pipeline_seconds": t_pipe, "oracle_seconds": t_oracle,
        "timings": long.settings["timings"],
        "boundaries": boundary_ratio(long.frames, args.context_frames, args.block_frames),
        "long_segments": segment_scores(long.frames, args.prompt),
        "short_clips": short_scores,
        "jax": jax.__version__, "command": "python " + " ".join(sys.argv),
    }
    print(json.dumps(result, indent=1, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
