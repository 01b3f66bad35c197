"""Scores whether a (generated) shapes clip does what its caption says.

The evaluator knows the data (:mod:`jaxvdm.models.shapes.data`): the six named colours, three shapes and
thirteen motions. For a clip ``[F, H, W, 3]`` (float in ``[-1, 1]`` or uint8) it

1. estimates the background of every frame by a robust (trimmed, iterated) least-squares fit of an
   affine function of ``(x, y)`` per channel: plain and gradient backgrounds alike;
2. models every pixel as ``background + alpha * (colour - background)`` (what antialiasing and blur
   produce): for each named colour it finds ``alpha`` and the angle between the pixel's deviation from the
   background and the colour's. A pixel is *core* for the colour with the smallest angle when that angle is
   below 25 degrees and ``alpha`` is between 0.5 and 1.6 (so mixtures at blurred edges never count as a
   third colour, and noise of sigma 0.05 is 5 sigma away from alpha 0.5);
3. per tracked colour and frame, takes the largest 8-connected core component, grows it by two pixels to
   take in the soft edge, and measures the alpha-weighted area and centroid (invariant to blur) and shape
   features;
4. classifies the shape (triangle: vertical/horizontal skewness of the mass, |skew| > 0.25 where an
   upright triangle has 0.57 and circles and squares 0; square vs circle: longest diagonal chord over longest
   axis-parallel chord, sqrt 2 for a square and 1 for a circle, threshold 1.19; medians over the frames
   where the shape is large and clear of the border) and the motion (bounce: the track overshoots both of
   its end points by >= 0.08 of the frame along one axis; translation: fitted displacement over the clip
   >= 0.12 of the frame, direction in one of eight 45-degree sectors; grow/shrink: fitted area ratio over
   the clip >= 1.8 or <= 1/1.8; otherwise standing still).

The training data keep clear of every threshold (translations >= 0.3 of the frame per axis, bounces
overshoot >= 0.14, radius ratios >= 1.8, i.e. area ratios >= 3.2), so imperfect generated clips have room.

Scores (:func:`score_clip`): ``colour_right`` (the most frequent colours are the caption's),
``shape_right``, ``direction_right`` (the classified motion is the caption's), ``adherent`` (all three),
``consistency`` in [0, 1] (fraction of consecutive frame pairs in which the shape is found in both and
moves and changes size smoothly: jump <= max(2.5 x median jump, 0.05 of the frame) and area ratio within
[2/3, 3/2]), plus ``found_fraction``, ``size_right`` / ``background_right`` (None when the caption does not
say) and the predicted attributes.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from jaxvdm.models.shapes import data

__all__ = ["score_clip", "score_batch", "analyse_clip", "classify_shape", "classify_motion", "THRESHOLDS"]

THRESHOLDS = dict(
    core_alpha=(0.5, 1.6),     # alpha range of a core pixel
    core_sin=math.sin(math.radians(25)),   # largest angle (as its sine) of a core pixel's deviation
    soft_sin=0.5,              # edge pixels (alpha 0.2..0.5) may deviate more
    soft_alpha=0.2,
    triangle_skew=0.25,
    square_diag_ratio=1.19,
    bounce_overshoot=0.08,
    bounce_range=0.2,
    translation=0.12,
    grow_area_ratio=1.8,
    small_big_radius=0.15,     # between data.SIZE_RANGES small (<= 0.13) and big (>= 0.17)
    gradient_range=0.2,
    dark_light_level=0.45,
)

_COLOUR_NAMES = tuple(data.COLOURS)
_COLOUR_RGB = np.array([data.COLOURS[c] for c in _COLOUR_NAMES], np.float32)  # [6, 3]
_AREA_FACTOR = {"circle": math.pi, "square": 4.0, "triangle": 2.0}


def _to_unit(clip) -> np.ndarray:
    """``[F, H, W, 3]`` float32 in [0, 1] from float in [-1, 1] or uint8."""
    a = np.asarray(clip)
    if a.ndim != 4 or a.shape[-1] != 3:
        hint = " (channels-first [3, F, H, W]? transpose to [F, H, W, 3])" if a.ndim == 4 and a.shape[0] == 3 else ""
        raise ValueError(f"expected a clip [F, H, W, 3], got shape {a.shape}{hint}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"expected float frames in [-1, 1] or uint8, got dtype {a.dtype}")
    return (np.clip(np.nan_to_num(a.astype(np.float32), nan=-1.0), -1, 1) + 1) / 2


def _fit_background(pix: np.ndarray, h: int, w: int) -> np.ndarray:
    """Robust per-frame affine background ``[F, N, 3]`` for pixels ``[F, N, 3]`` (N = h*w, row-major)."""
    yy, xx = np.meshgrid((np.arange(h) + 0.5) / h - 0.5, (np.arange(w) + 0.5) / w - 0.5, indexing="ij")
    x = np.stack([np.ones(h * w), xx.ravel(), yy.ravel()], axis=1).astype(np.float64)  # [N, 3]
    bg = np.median(pix, axis=1, keepdims=True)
    res = np.linalg.norm(pix - bg, axis=-1)  # [F, N]
    for it in range(4):
        q = np.quantile(res, 0.5 if it == 0 else 0.4, axis=1, keepdims=True)
        wgt = (res <= (q if it == 0 else np.maximum(q, 0.1))).astype(np.float64)
        xtwx = np.einsum("fn,ni,nj->fij", wgt, x, x) + 1e-6 * np.eye(3)
        xtwy = np.einsum("fn,ni,fnc->fic", wgt, x, pix)
        coef = np.linalg.solve(xtwx, xtwy)  # [F, 3, 3c]
        bg = np.einsum("ni,fic->fnc", x, coef)
        res = np.linalg.norm(pix - bg, axis=-1)
    return bg.astype(np.float32)


def _colour_fields(pix: np.ndarray, bg: np.ndarray):
    """alpha and sine of the deviation angle of every pixel for every named colour: ``[6, F, N]`` each."""
    q = pix - bg  # [F, N, 3]
    d = _COLOUR_RGB[:, None, None, :] - bg[None]  # [6, F, N, 3]
    dd = np.maximum(np.sum(d * d, -1), 1e-6)
    alpha = np.einsum("fnc,kfnc->kfn", q, d) / dd
    resid = np.linalg.norm(q[None] - alpha[..., None] * d, axis=-1)
    sin = resid / np.maximum(np.linalg.norm(q, axis=-1)[None], 1e-6)
    return alpha, sin


_EIGHT = np.ones((3, 3), bool)


def _frame_features(m: np.ndarray) -> dict:
    """Area, centroid and shape features of a soft mask ``[H, W]`` (values in [0, 1])."""
    h, w = m.shape
    a = float(m.sum())
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cx, cy = float((m * xx).sum() / a), float((m * yy).sum() / a)
    dx, dy = xx - cx, yy - cy
    vx, vy = float((m * dx * dx).sum() / a), float((m * dy * dy).sum() / a)
    skx = float((m * dx ** 3).sum() / a) / max(vx, 1e-6) ** 1.5
    sky = float((m * dy ** 3).sum() / a) / max(vy, 1e-6) ** 1.5
    axis = max(m.sum(0).max(), m.sum(1).max())
    i, j = np.mgrid[0:h, 0:w]
    diag = max(np.bincount((i - j + w - 1).ravel(), m.ravel()).max(), np.bincount((i + j).ravel(), m.ravel()).max())
    return dict(area=a, cx=cx, cy=cy, skew=max(abs(skx), abs(sky)), diag_ratio=math.sqrt(2) * diag / max(axis, 1e-6))


def _track(alpha: np.ndarray, sin: np.ndarray, core: np.ndarray, h: int, w: int) -> list[dict | None]:
    """Per frame: features of the largest core component of one colour (None where none is found)."""
    min_core = max(3, int(round(0.003 * h * w)))
    out = []
    for f in range(core.shape[0]):
        c = core[f].reshape(h, w)
        lab, n = ndimage.label(c, structure=_EIGHT)
        if n == 0:
            out.append(None)
            continue
        sizes = np.bincount(lab.ravel())[1:]
        biggest = int(np.argmax(sizes)) + 1
        if sizes[biggest - 1] < min_core:
            out.append(None)
            continue
        comp = lab == biggest
        region = ndimage.binary_dilation(comp, structure=_EIGHT, iterations=2)
        a = alpha[f].reshape(h, w)
        soft = (a > THRESHOLDS["soft_alpha"]) & (sin[f].reshape(h, w) < THRESHOLDS["soft_sin"])
        m = np.where(region & (soft | comp), np.clip(a, 0, 1), 0.0)
        feats = _frame_features(m)
        rows, cols = np.nonzero(comp)
        feats["touches_border"] = bool(rows.min() == 0 or cols.min() == 0 or rows.max() == h - 1 or cols.max() == w - 1)
        out.append(feats)
    return out


def classify_shape(frames: list[dict | None]) -> str | None:
    """"circle" / "square" / "triangle" from per-frame features (None if the shape is never found)."""
    found = [f for f in frames if f is not None]
    if not found:
        return None
    big = max(f["area"] for f in found)
    good = [f for f in found if not f["touches_border"] and f["area"] >= 0.5 * big] or found
    skew = float(np.median([f["skew"] for f in good]))
    if skew > THRESHOLDS["triangle_skew"]:
        return "triangle"
    ratio = float(np.median([f["diag_ratio"] for f in good]))
    return "square" if ratio > THRESHOLDS["square_diag_ratio"] else "circle"


def _smooth(v: np.ndarray) -> np.ndarray:
    if len(v) < 3:
        return v
    p = np.concatenate([v[:1], v, v[-1:]])
    return (p[:-2] + p[1:-1] + p[2:]) / 3


def classify_motion(frames: list[dict | None], h: int, w: int) -> str | None:
    """One of :data:`data.MOTIONS` from per-frame centroids and areas (None if the shape is found in fewer
    than half the frames, or in fewer than 3)."""
    n = len(frames)
    idx = [i for i, f in enumerate(frames) if f is not None]
    if len(idx) < max(3, (n + 1) // 2):
        return None
    t = np.array(idx, np.float64) / max(n - 1, 1)
    x = np.array([frames[i]["cx"] for i in idx]) / w
    y = np.array([frames[i]["cy"] for i in idx]) / h
    area = np.array([frames[i]["area"] for i in idx])
    overs, ranges = [], []
    for v in (x, y):
        s = _smooth(v)
        lo_end, hi_end = min(s[0], s[-1]), max(s[0], s[-1])
        overs.append(max(0.0, s.max() - hi_end) + max(0.0, lo_end - s.min()))
        ranges.append(s.max() - s.min())
    ax = int(np.argmax(overs))
    if (overs[ax] >= THRESHOLDS["bounce_overshoot"] and ranges[ax] >= THRESHOLDS["bounce_range"]
            and overs[ax] >= 2 * overs[1 - ax]):
        return "bounce-horizontal" if ax == 0 else "bounce-vertical"
    tc = t - t.mean()
    denom = max(float(tc @ tc), 1e-9)
    dx, dy = float(tc @ (x - x.mean())) / denom, float(tc @ (y - y.mean())) / denom
    if math.hypot(dx, dy) >= THRESHOLDS["translation"]:
        sector = int(round(math.atan2(dy, dx) / (math.pi / 4))) % 8
        return ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right")[sector]
    la = np.log(np.maximum(area, 1e-3))
    ratio = math.exp(float(tc @ (la - la.mean())) / denom)
    if ratio >= THRESHOLDS["grow_area_ratio"]:
        return "grow"
    if ratio <= 1 / THRESHOLDS["grow_area_ratio"]:
        return "shrink"
    return "static"


def _consistency(frames: list[dict | None], h: int, w: int) -> float:
    n = len(frames)
    if n < 2:
        return float(frames[0] is not None) if frames else 0.0
    pairs = [(a, b) for a, b in zip(frames[:-1], frames[1:])]
    jumps = [math.hypot((b["cx"] - a["cx"]) / w, (b["cy"] - a["cy"]) / h) for a, b in pairs if a and b]
    if not jumps:
        return 0.0
    limit = max(2.5 * float(np.median(jumps)), 0.05)
    ok = 0
    for a, b in pairs:
        if a and b:
            jump = math.hypot((b["cx"] - a["cx"]) / w, (b["cy"] - a["cy"]) / h)
            r = b["area"] / max(a["area"], 1e-6)
            ok += jump <= limit and 2 / 3 <= r <= 1.5
    return ok / (n - 1)


def analyse_clip(clip, num_objects: int = 1) -> dict:
    """What the evaluator sees in a clip, caption-free: background, colour supports and, for the
    ``num_objects`` most frequent colours, per-frame tracks with their classified shape and motion.

    Returns ``dict(background=..., colour_support={colour: core pixels over the clip}, objects=[dict(colour,
    shape, motion, frames, found_fraction, consistency, radius), ...])`` with ``radius`` the median
    half-extent as a fraction of the frame (from the area and the classified shape).
    """
    v = _to_unit(clip)
    f, h, w, _ = v.shape
    pix = v.reshape(f, h * w, 3)
    bg = _fit_background(pix, h, w)
    alpha, sin = _colour_fields(pix, bg)
    lo, hi = THRESHOLDS["core_alpha"]
    ok = (alpha >= lo) & (alpha <= hi) & (sin < THRESHOLDS["core_sin"])
    best = np.argmin(np.where(ok, sin, np.inf), axis=0)  # [F, N]
    has = ok.any(axis=0)
    support = {c: int(np.sum(has & (best == k))) for k, c in enumerate(_COLOUR_NAMES)}
    min_support = max(3, int(round(0.003 * h * w))) * max(1, f // 4)
    ranked = [c for c in sorted(_COLOUR_NAMES, key=lambda c: -support[c]) if support[c] >= min_support]

    level = float(bg.mean())
    spread = float(np.mean(bg.max(axis=1) - bg.min(axis=1)))
    if spread >= THRESHOLDS["gradient_range"]:
        background = "gradient"
    else:
        background = "dark" if level < THRESHOLDS["dark_light_level"] else "light"

    objects = []
    for colour in ranked[:num_objects]:
        k = _COLOUR_NAMES.index(colour)
        core = has & (best == k)
        frames = _track(alpha[k], sin[k], core, h, w)
        shape = classify_shape(frames)
        found = [fr for fr in frames if fr is not None]
        radius = None
        if shape is not None:
            radius = math.sqrt(float(np.median([fr["area"] for fr in found])) / _AREA_FACTOR[shape]) / min(h, w)
        objects.append(dict(colour=colour, shape=shape, motion=classify_motion(frames, h, w), frames=frames,
                            found_fraction=len(found) / f, consistency=_consistency(frames, h, w), radius=radius))
    return dict(background=background, colour_support=support, objects=objects)


def score_clip(clip, text: str) -> dict:
    """Scores one clip (``[F, H, W, 3]``, float in [-1, 1] or uint8) against its caption.

    Returns a dict: ``colour_right``, ``shape_right``, ``direction_right``, ``adherent`` (bools),
    ``consistency`` and ``found_fraction`` (floats in [0, 1]), ``size_right`` and ``background_right``
    (bool, or None when the caption says no size / no background), and the predicted ``colour``,
    ``shape``, ``motion`` of the first shape (``objects`` holds them for every shape of the caption).
    Raises ValueError for a caption outside the grammar (see :func:`data.parse_caption`).
    """
    want = data.parse_caption(text)
    k = len(want.objects)
    seen = analyse_clip(clip, num_objects=k)
    tracked = list(seen["objects"])
    colour_right = sorted(o["colour"] for o in tracked) == sorted(o.colour for o in want.objects)
    # match caption shapes to tracked colours: same colour first, then the leftovers in order of support
    left = list(tracked)
    match: list[dict | None] = [None] * k
    for i, o in enumerate(want.objects):
        for t in left:
            if t["colour"] == o.colour:
                match[i] = t
                left.remove(t)
                break
    for i in range(k):
        if match[i] is None and left:
            match[i] = left.pop(0)
    per = []
    for o, t in zip(want.objects, match):
        if t is None:
            per.append(dict(colour=None, shape=None, motion=None, shape_right=False, direction_right=False,
                            size_right=False if o.size_word else None, consistency=0.0, found_fraction=0.0))
            continue
        size_right = None
        if o.size_word and t["radius"] is not None:
            size_right = ("small" if t["radius"] < THRESHOLDS["small_big_radius"] else "big") == o.size_word
        elif o.size_word:
            size_right = False
        per.append(dict(colour=t["colour"], shape=t["shape"], motion=t["motion"], shape_right=t["shape"] == o.shape,
                        direction_right=t["motion"] == o.motion, size_right=size_right,
                        consistency=t["consistency"], found_fraction=t["found_fraction"]))
    shape_right = all(p["shape_right"] for p in per)
    direction_right = all(p["direction_right"] for p in per)
    sizes = [p["size_right"] for p in per if p["size_right"] is not None]
    return dict(
        colour_right=bool(colour_right), shape_right=bool(shape_right), direction_right=bool(direction_right),
        adherent=bool(colour_right and shape_right and direction_right),
        consistency=float(np.mean([p["consistency"] for p in per])),
        found_fraction=float(np.mean([p["found_fraction"] for p in per])),
        size_right=bool(all(sizes)) if sizes else None,
        background_right=None if want.background is None else seen["background"] == want.background,
        colour=per[0]["colour"], shape=per[0]["shape"], motion=per[0]["motion"], objects=per,
    )


_MEAN_KEYS = ("adherent", "colour_right", "shape_right", "direction_right", "consistency", "found_fraction",
              "size_right", "background_right")


def score_batch(clips, captions) -> dict:
    """Means of :func:`score_clip`'s scores over clips ``[B, F, H, W, 3]`` and their captions.

    Returns ``{key: mean}`` for adherent, colour_right, shape_right, direction_right, consistency,
    found_fraction, size_right and background_right (the last two over the clips whose caption says a
    size / background; None if none does), plus ``n``, the number of clips. Plain floats (JSON-ready).
    """
    clips = np.asarray(clips)
    captions = list(captions)
    if clips.ndim != 5 or len(captions) != clips.shape[0]:
        raise ValueError(f"expected clips [B, F, H, W, 3] and B captions, got shape {clips.shape} and "
                         f"{len(captions)} captions")
    scores = [score_clip(c, t) for c, t in zip(clips, captions)]
    out: dict = {}
    for key in _MEAN_KEYS:
        vals = [float(s[key]) for s in scores if s[key] is not None]
        out[key] = float(np.mean(vals)) if vals else None
    out["n"] = len(scores)
    return out
