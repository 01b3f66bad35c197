"""Prompt adherence of a shapes model per view: whole clips of several sizes and strategy windows.

A *view* is a :class:`jaxvdm.models.shapes.buckets.Bucket`: a clip size, and for a window the whole clip it
is cut from and its RoPE rule. For a window the model generates the window alone from noise, called with
the window's RoPE offset (a Latent Parallelism window's start in tokens, or 0 for a DualParal block), and the
evaluator scores it against the caption. The captions are the ones whose ground truth the evaluator can read
in that window (``buckets.draw_batch(..., evident=True)``: e.g. no bounce that the window cannot show), drawn
at ``windows_per_view`` window positions; a whole clip's captions are the caption grammar's, as in training's
evaluation. Strategy runs themselves (windows denoised together and blended) are measured by
``benchmarks/fidelity.py``.
"""

from __future__ import annotations

import time
import zlib

import jax
import numpy as np

from jaxvdm.models.shapes import buckets as bk
from jaxvdm.models.shapes import data
from jaxvdm.models.shapes import evaluate as ev

__all__ = ["view_prompts", "evaluate_views"]


def view_prompts(view: bk.Bucket, n: int, seed: int, windows: int = 4) -> list[bk.BucketBatch]:
    """``n`` evaluation captions for ``view`` in groups of one window each (``windows`` groups for a window
    view, one for a whole clip), reproducible from ``seed``."""
    rng = np.random.default_rng([seed, zlib.crc32(view.name.encode())])
    groups = windows if view.cropped else 1
    sizes = [n // groups + (g < n % groups) for g in range(groups)]
    return [bk.draw_batch(rng, view, m, evident=view.cropped, long_travel=False) for m in sizes if m]


def evaluate_views(model, views, prompts_per_view: int, *, seed: int, settings=None, windows: int = 4,
                   batch: int = 64, max_len: int | None = None, scheduler: str = "unipc") -> dict:
    """``{setting: {view name: scores}}``: the evaluator's means (:func:`evaluate.mean_scores`, with
    ``seconds``) over ``prompts_per_view`` generated clips per view, for each ``(steps, guidance, shift)``
    in ``settings`` (default ``[(20, 4.0, 3.0)]``). ``max_len``: the caption length the model reads (its
    word encoder's positions by default)."""
    from jaxvdm.models.shapes.sample import sample_clips

    max_len = max_len or int(model.text.position.shape[0])
    prompts = {v.name: view_prompts(v, prompts_per_view, seed, windows) for v in views}
    results: dict = {}
    for steps, guidance, shift in settings or [(20, 4.0, 3.0)]:
        key = f"steps={steps},guidance={guidance},shift={shift}"
        results[key] = {}
        for v in views:
            t0 = time.time()
            scores = []
            for g, group in enumerate(prompts[v.name]):
                f, h, w = group.window.size
                ids = data.tokenize_batch(group.captions, max_len)
                clips = np.asarray(sample_clips(model, ids, jax.random.key(seed + g), steps=steps, guidance=guidance,
                                                shift=shift, scheduler=scheduler, num_frames=f, height=h, width=w,
                                                offset=group.offset, batch=batch))
                scores += [ev.score_clip(c, t) for c, t in zip(clips, group.captions)]
            out = ev.mean_scores(scores)
            out["seconds"] = time.time() - t0
            results[key][v.name] = out
            print(f"eval {key} {v.name}: adherent {out['adherent']:.3f} (n={out['n']})", flush=True)
    return results
