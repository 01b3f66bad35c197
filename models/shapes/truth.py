"""What a caption's ground truth means for a window (a crop) of a clip, checked from the renderer's geometry.

A caption describes the whole clip; a window (:class:`jaxvdm.models.shapes.data.Window`) shows frames, rows
and columns of it. The caption **holds** for a window when, for every shape it names:

1. *in view*: the shape's ``2R x 2R`` box lies inside the window in every frame the window shows, so its
   colour and its whole outline are there (as in a whole clip, where a bouncing shape touches the walls);
2. *the same motion*: what the window shows is a piece of the caption's motion. A translation, growing,
   shrinking or standing still holds for any piece (their direction never changes over a clip); a bounce
   holds only when the window shows a reversal with both legs clearly visible: its track overshoots the
   track's end points by at least ``bounce_overshoot`` of the window's side along the bounce axis and spans
   at least ``bounce_range`` of it (a piece with one leg is a translation: another motion). A window of fewer
   than three frames cannot show a bounce.

The size word keeps the whole clip's meaning (``R`` as a fraction of the whole frame's shorter side), which is
what a window of a generated video must draw. Training draws only windows for which the caption holds
(:mod:`jaxvdm.models.shapes.buckets`).

The caption is **evident** in a window when it holds and the evaluator
(:mod:`jaxvdm.models.shapes.evaluate`) can read it from the window's pixels, with room against each of its
thresholds: at least ``min_frames`` frames, every shape of half-extent at least ``min_radius_px`` pixels and
in view with a gap of ``min_gap_px`` pixels in at least half the frames (where the outline is classified); a
translation's least-squares displacement over the window at least ``translation`` of the window (the
evaluator: 0.12) within ``direction_deg`` degrees of the caption's direction; a bounce's smoothed overshoot
and range at least ``evident_overshoot`` / ``evident_range`` (the evaluator: 0.08 / 0.2); growing or
shrinking by an area ratio of at least ``grow_area_ratio`` (the evaluator: 1.8) with the centroid moving less
than ``still`` of the window; standing still. Everything is measured as the evaluator measures it: positions
as fractions of the window's width and height, time over the window's frames. The evaluator is scored on
evident windows only (a 2-frame window's motion, or a one-pixel move, is true but not legible).
"""

from __future__ import annotations

import math

import numpy as np

from jaxvdm.models.shapes import data

__all__ = ["HOLD", "EVIDENT", "window_tracks", "holds_mask", "why_not_holds", "caption_holds", "why_not_evident",
           "caption_evident"]

HOLD = dict(edge_px=-1e-6, bounce_overshoot=0.1, bounce_range=0.2)
EVIDENT = dict(min_frames=4, min_radius_px=2.5, min_gap_px=1.0, translation=0.18, direction_deg=15.0,
               evident_overshoot=0.12, evident_range=0.25, grow_area_ratio=2.5, still=0.06)

_DIRECTION_DEG = {m: math.degrees(math.atan2(d[1], d[0])) for m, d in data.DIRECTIONS.items()}


def window_tracks(spec: data.ClipSpec, whole: tuple[int, int, int], window: data.Window | None = None) -> list[dict]:
    """The exact geometry of every shape over a window of a ``whole = (F, H, W)`` clip, in the window's pixels.

    Returns one dict per shape: ``box_centre`` and ``centroid`` ``[f, 2]`` (x, y pixels, y down; the
    centroid is the area's, below the box centre for a triangle), ``radius`` ``[f]`` (half-extent R, pixels)
    and ``area`` ``[f]`` (pixels^2). The same numbers as ``data.render_batch(..., window=window)``'s geometry.
    """
    n_t, hh, ww = whole
    window = window or data.Window((0, 0, 0), tuple(whole))
    window.check(tuple(whole))
    (_, y0, x0) = window.start
    centre, radius = data._trajectories(list(spec.objects), data.clip_times(n_t, window), hh / ww)
    out = []
    for k, o in enumerate(spec.objects):
        r = radius[k] * min(hh, ww)
        box = np.stack([centre[k, :, 0] * ww - x0, centre[k, :, 1] * hh - y0], axis=1)
        cen = box + np.stack([np.zeros_like(r), data._CENTROID_DY[o.shape] * r], axis=1)
        out.append(dict(box_centre=box, centroid=cen, radius=r, area=data.AREA_FACTOR[o.shape] * r * r))
    return out


def _smooth(v: np.ndarray) -> np.ndarray:
    if len(v) < 3:
        return v
    p = np.concatenate([v[:1], v, v[-1:]])
    return (p[:-2] + p[1:-1] + p[2:]) / 3


def _overshoot(v: np.ndarray) -> tuple[float, float]:
    """How far a track goes beyond its end points, and its range (the evaluator's bounce measures)."""
    lo_end, hi_end = min(v[0], v[-1]), max(v[0], v[-1])
    return float(max(0.0, v.max() - hi_end) + max(0.0, lo_end - v.min())), float(np.ptp(v))


def _slope(v: np.ndarray) -> float:
    """Least-squares change of ``v`` over the window (time 0 at the first frame, 1 at the last)."""
    t = np.arange(len(v)) / max(len(v) - 1, 1)
    tc = t - t.mean()
    return float(tc @ (v - v.mean())) / max(float(tc @ tc), 1e-12)


def _gaps(tr: dict, h: int, w: int) -> np.ndarray:
    """Smallest distance ``[f]`` in pixels from the shape's box to the window's edges (negative: outside)."""
    (cx, cy), r = tr["box_centre"].T, tr["radius"]
    return np.min(np.stack([cx - r, w - cx - r, cy - r, h - cy - r]), axis=0)


def _hold_measures(specs: list[data.ClipSpec], whole: tuple[int, int, int], window: data.Window) -> dict:
    """Per shape of every spec (flattened, spec-major): ``spec`` index, ``gap`` (smallest distance in pixels
    from the box to the window's edges over the window's frames), ``bounce`` axis (-1: no bounce),
    ``overshoot`` and ``span`` of the box track along the bounce axis (fractions of the window's side)."""
    n_t, hh, ww = whole
    window.check(tuple(whole))
    (_, y0, x0), (f, h, w) = window.start, window.size
    objs = [o for s in specs for o in s.objects]
    owner = np.array([i for i, s in enumerate(specs) for _ in s.objects], np.int64)
    if not objs:
        return dict(spec=owner, gap=np.zeros(0), bounce=np.zeros(0, np.int64), overshoot=np.zeros(0),
                    span=np.zeros(0))
    centre, radius = data._trajectories(objs, data.clip_times(n_t, window), hh / ww)
    r = radius * min(hh, ww)                                                   # [N, f]
    cx, cy = centre[..., 0] * ww - x0, centre[..., 1] * hh - y0
    gap = np.min(np.stack([cx - r, w - cx - r, cy - r, h - cy - r]), axis=(0, 2))
    bounce = np.array([-1 if not o.motion.startswith("bounce") else 0 if o.motion == "bounce-horizontal" else 1
                       for o in objs])
    track = np.where((bounce == 0)[:, None], cx / w, cy / h)                   # [N, f]
    lo_end, hi_end = np.minimum(track[:, 0], track[:, -1]), np.maximum(track[:, 0], track[:, -1])
    overshoot = np.maximum(0.0, track.max(1) - hi_end) + np.maximum(0.0, lo_end - track.min(1))
    return dict(spec=owner, gap=gap, bounce=bounce, overshoot=overshoot, span=np.ptp(track, axis=1))


def _object_reasons(m: dict, specs: list[data.ClipSpec], f: int) -> list[str | None]:
    """Why each shape of :func:`_hold_measures` breaks its caption in the window (None: it does not)."""
    objs = [(k, o) for s in specs for k, o in enumerate(s.objects)]
    out: list[str | None] = []
    for j, (k, o) in enumerate(objs):
        if m["gap"][j] < HOLD["edge_px"]:
            out.append(f"shape {k} ({o.colour} {o.shape}) leaves the window")
        elif m["bounce"][j] >= 0 and f < 3:
            out.append(f"shape {k} bounces: a window of {f} frames cannot show the reversal")
        elif m["bounce"][j] >= 0 and (m["overshoot"][j] < HOLD["bounce_overshoot"]
                                      or m["span"][j] < HOLD["bounce_range"]):
            out.append(f"shape {k} bounces but the window shows no clear reversal (overshoot "
                       f"{m['overshoot'][j]:.3f}, range {m['span'][j]:.3f})")
        else:
            out.append(None)
    return out


def holds_mask(specs: list[data.ClipSpec], whole: tuple[int, int, int],
               window: data.Window | None = None) -> np.ndarray:
    """``[len(specs)]`` bool: whether each spec's caption holds for ``window`` of the ``whole`` clip
    (:func:`caption_holds` for many specs at once; what training's rejection sampling calls)."""
    window = window or data.Window((0, 0, 0), tuple(whole))
    m = _hold_measures(specs, whole, window)
    f = window.size[0]
    bad_bounce = (m["bounce"] >= 0) & ((f < 3) | (m["overshoot"] < HOLD["bounce_overshoot"])
                                       | (m["span"] < HOLD["bounce_range"]))
    bad = (m["gap"] < HOLD["edge_px"]) | bad_bounce
    ok = np.ones(len(specs), bool)
    np.logical_and.at(ok, m["spec"], ~bad)
    return ok


def why_not_holds(spec: data.ClipSpec, whole: tuple[int, int, int], window: data.Window | None = None) -> str | None:
    """Why the caption of ``spec`` does not hold for ``window`` of the ``whole`` clip (see the module
    docstring), or None when it holds."""
    window = window or data.Window((0, 0, 0), tuple(whole))
    reasons = _object_reasons(_hold_measures([spec], whole, window), [spec], window.size[0])
    return next((r for r in reasons if r), None)


def caption_holds(spec: data.ClipSpec, whole: tuple[int, int, int], window: data.Window | None = None) -> bool:
    """Whether the caption of ``spec`` is true for ``window`` of the ``whole = (F, H, W)`` clip."""
    return why_not_holds(spec, whole, window) is None


def why_not_evident(spec: data.ClipSpec, whole: tuple[int, int, int], window: data.Window | None = None) -> str | None:
    """Why the evaluator could not read the caption of ``spec`` in ``window`` with room to spare (see the
    module docstring), or None when the caption is evident there."""
    window = window or data.Window((0, 0, 0), tuple(whole))
    reason = why_not_holds(spec, whole, window)
    if reason:
        return reason
    f, h, w = window.size
    if f < EVIDENT["min_frames"]:
        return f"{f} frames: too few to read a motion"
    for k, (o, tr) in enumerate(zip(spec.objects, window_tracks(spec, whole, window))):
        if tr["radius"].min() < EVIDENT["min_radius_px"]:
            return f"shape {k} is {tr['radius'].min():.1f} px: too small to read its outline"
        if np.mean(_gaps(tr, h, w) >= EVIDENT["min_gap_px"]) < 0.5:
            return f"shape {k} touches the window's edge in most frames"
        u = tr["centroid"][:, 0] / w
        v = tr["centroid"][:, 1] / h
        du, dv = _slope(u), _slope(v)
        if o.motion in data.DIRECTIONS:
            if math.hypot(du, dv) < EVIDENT["translation"]:
                return f"shape {k} moves {math.hypot(du, dv):.3f} of the window: too little to read"
            off = (math.degrees(math.atan2(dv, du)) - _DIRECTION_DEG[o.motion] + 180) % 360 - 180
            if abs(off) > EVIDENT["direction_deg"]:
                return f"shape {k} moves {off:.0f} degrees off '{o.motion}' in the window's proportions"
        elif o.motion.startswith("bounce"):
            ax = 0 if o.motion == "bounce-horizontal" else 1
            over, span = _overshoot(_smooth(u if ax == 0 else v))
            if over < EVIDENT["evident_overshoot"] or span < EVIDENT["evident_range"]:
                return f"shape {k}'s bounce shows faintly (overshoot {over:.3f}, range {span:.3f})"
        else:
            if math.hypot(du, dv) >= EVIDENT["still"]:
                return f"shape {k} ({o.motion}) drifts {math.hypot(du, dv):.3f} of the window"
            if o.motion in ("grow", "shrink"):
                ratio = math.exp(_slope(np.log(tr["area"])))
                if max(ratio, 1 / ratio) < EVIDENT["grow_area_ratio"]:
                    return f"shape {k} changes its area by {ratio:.2f} over the window: too little to read"
    return None


def caption_evident(spec: data.ClipSpec, whole: tuple[int, int, int], window: data.Window | None = None) -> bool:
    """Whether the caption of ``spec`` holds for ``window`` and the evaluator can read it there."""
    return why_not_evident(spec, whole, window) is None
