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
3. per tracked colour (the caption's number of shapes, most frequent colours first) and frame, takes the
   largest 8-connected core component, grows it by three pixels to take in the soft edge (alpha > 0.15),
   and measures the alpha-weighted area and centroid (both unchanged by blur);
4. classifies the shape from medians over the frames where it is at least half its largest area and
   clear of the border and of other shapes: triangle when the third cumulant of the mass along x or y,
   over area^1.5, exceeds 0.0085 (an upright triangle has 0.021, circles and squares 0); otherwise square
   when the mean of ``(diagonal / axis chord - 1) / (sqrt2 - 1)`` and ``(1 - diagonal / axis fourth
   cumulant) / 0.5`` (each 0 for a disc, 1 for a square) exceeds 0.35, else circle. Cumulants above the
   second are unchanged by a Gaussian blur, which is why these features survive blurry clips;
5. classifies the motion from the centroid track: bounce when the (3-frame smoothed) track overshoots
   both its end points by >= 0.08 of the frame along one axis, covering >= 0.2; else translation when the
   least-squares displacement over the clip is >= 0.12 of the frame, its direction rounded to one of
   eight 45-degree sectors; else grow/shrink when the fitted area ratio over the clip is >= 1.8 or
   <= 1/1.8; else standing still.

The training data keep clear of every threshold (translations >= 0.3 of the frame per axis, bounces
overshoot >= 0.13, radius ratios >= 1.8, i.e. area ratios >= 3.2), so imperfect generated clips have room.

Scores (:func:`score_clip`): ``colour_right`` (the most frequent colours are the caption's),
``shape_right``, ``direction_right`` (the classified motion is the caption's), ``adherent`` (all three),
``consistency`` in [0, 1] (fraction of consecutive frame pairs in which the shape is found in both and
moves and changes size smoothly: jump <= max(2.5 x the typical step of the 5-frame-averaged track, 0.07 of
the frame) and area ratio within [2/3, 3/2]), ``found_fraction``, and two scores outside ``adherent``:
``size_right`` (half-extent from the area and the classified shape, corrected for washed-out colour,
below 0.15 of the frame is "small") and ``background_right`` (gradient when the fitted background spans
>= 0.2 across the frame, else dark below a mean level of 0.45, else light), each None when the caption
does not say. All thresholds are in :data:`THRESHOLDS`.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage

from jaxvdm.models.shapes import data

__all__ = ["score_clip", "score_batch", "mean_scores", "analyse_clip", "classify_shape", "classify_motion", "THRESHOLDS"]

THRESHOLDS = dict(
    core_alpha=(0.5, 1.6),     # alpha range of a core pixel
    core_sin=math.sin(math.radians(25)),   # largest angle (as its sine) of a core pixel's deviation
    soft_alpha=0.15,           # edge pixels next to the core count from this alpha...
    soft_sin=0.6,              # ...and may deviate more in colour
    triangle_k3=0.0085,
    squareness=0.35,
    bounce_overshoot=0.08,
    bounce_range=0.2,
    translation=0.12,
    grow_area_ratio=1.8,
    small_big_radius=0.15,     # between data.SIZE_RANGES small (<= 0.13) and big (>= 0.17)
    consistency_jump=0.07,     # a step this small (fraction of the frame) is always smooth
    consistency_area=1.5,      # largest area change between consecutive frames
    gradient_range=0.2,
    dark_light_level=0.45,
)

_COLOUR_NAMES = tuple(data.COLOURS)
_COLOUR_RGB = np.array([data.COLOURS[c] for c in _COLOUR_NAMES], np.float32)  # [6, 3]


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
    """Robust per-frame affine background ``[3, F, N]`` for channel planes ``pix`` ``[3, F, N]`` (N = h*w,
    row-major): least squares on the pixels closest to the previous estimate (first the median colour),
    three times, on every other row and column (an affine function needs no more)."""
    yy, xx = np.meshgrid((np.arange(h) + 0.5) / h - 0.5, (np.arange(w) + 0.5) / w - 0.5, indexing="ij")
    x = np.stack([np.ones(h * w), xx.ravel(), yy.ravel()], axis=1).astype(np.float32)  # [N, 3]
    sub = (np.arange(h)[:, None] % 2 == 0) & (np.arange(w)[None, :] % 2 == 0)
    xs, ps = x[sub.ravel()], np.ascontiguousarray(pix[:, :, sub.ravel()])  # [n, 3], [3, F, n]
    bg = np.median(ps, axis=2, keepdims=True)
    for it in range(3):
        res = _norm3(ps - bg)  # [F, n]
        q = np.quantile(res, 0.5 if it == 0 else 0.4, axis=1, keepdims=True)
        wgt = (res <= (q if it == 0 else np.maximum(q, 0.1))).astype(np.float32)
        xw = xs.T[None] * wgt[:, None, :]  # [F, 3, n]
        lhs = xw @ xs + 1e-6 * np.eye(3, dtype=np.float32)  # [F, 3, 3]
        rhs = xw @ ps.transpose(1, 2, 0)  # [F, 3 coefficients, 3 channels]
        coef = np.linalg.solve(lhs, rhs).transpose(2, 0, 1)[..., None]  # [3 channels, F, 3, 1]
        bg = coef[:, :, 0] + coef[:, :, 1] * xs[:, 1] + coef[:, :, 2] * xs[:, 2]
    return coef[:, :, 0] + coef[:, :, 1] * x[:, 1] + coef[:, :, 2] * x[:, 2]


def _norm3(v: np.ndarray) -> np.ndarray:
    return np.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])


def _colour_fields(pix: np.ndarray, bg: np.ndarray):
    """alpha and sine of the deviation angle of every pixel for every named colour: ``[6, F, N]`` each
    (``pix``, ``bg``: ``[3, F, N]``)."""
    q = pix - bg
    qq = np.maximum(q[0] * q[0] + q[1] * q[1] + q[2] * q[2], 1e-12)
    alpha, sin = [], []
    for rgb in _COLOUR_RGB:
        d0, d1, d2 = rgb[0] - bg[0], rgb[1] - bg[1], rgb[2] - bg[2]
        dd = np.maximum(d0 * d0 + d1 * d1 + d2 * d2, 1e-6)
        qd = q[0] * d0 + q[1] * d1 + q[2] * d2
        alpha.append(qd / dd)
        # |q - alpha d|^2 = |q|^2 - (q.d)^2 / |d|^2
        sin.append(np.sqrt(np.clip(1 - qd * qd / (dd * qq), 0, 1)))
    return np.stack(alpha), np.stack(sin)


_IN_FRAME = np.zeros((3, 3, 3), bool)  # 8-connectivity within a frame, none across frames
_IN_FRAME[1] = True


@functools.lru_cache(maxsize=16)
def _grids(h: int, w: int):
    """Pixel-centre coordinates ``[H, W]`` and the flat diagonal / anti-diagonal indices of a frame."""
    i, j = np.mgrid[0:h, 0:w]
    return i + 0.5, j + 0.5, (i - j + w - 1).ravel(), (i + j).ravel()


def _track(alpha: np.ndarray, sin: np.ndarray, core: np.ndarray, h: int, w: int,
           others: np.ndarray | None = None) -> list[dict | None]:
    """Per frame: area, centroid and shape features of the largest core component of one colour (None in
    frames where none of at least ``max(3, 0.003 H W)`` pixels is found). ``alpha, sin, core``: ``[F, N]``;
    ``others``: ``[F, H, W]`` core pixels of the other tracked colours (to flag frames where the shapes touch,
    so one may hide part of the other)."""
    f = core.shape[0]
    min_core = max(3, int(round(0.003 * h * w)))
    lab, n = ndimage.label(core.reshape(f, h, w), structure=_IN_FRAME)
    if n == 0:
        return [None] * f
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    frame_of = np.array([sl[0].start for sl in ndimage.find_objects(lab)])  # frame of each label 1..n
    best = np.zeros(f, np.int64)
    best_size = np.zeros(f, np.int64)
    for lbl in range(1, n + 1):
        fr = frame_of[lbl - 1]
        if sizes[lbl] > best_size[fr]:
            best[fr], best_size[fr] = lbl, sizes[lbl]
    found = best_size >= min_core
    comp = (lab == best[:, None, None]) & found[:, None, None]
    region = ndimage.binary_dilation(comp, structure=_IN_FRAME, iterations=3)
    a = alpha.reshape(f, h, w)
    soft = (a > THRESHOLDS["soft_alpha"]) & (sin.reshape(f, h, w) < THRESHOLDS["soft_sin"])
    m = np.where(region & (soft | comp), np.clip(a, 0, 1), 0).astype(np.float64)  # soft mask [F, H, W]
    yy, xx, diag_i, diag_j = _grids(h, w)
    area = np.maximum(m.sum((1, 2)), 1e-9)

    def mean(v):  # mass-weighted mean per frame
        return (m * v).sum((1, 2)) / area

    cx, cy = mean(xx), mean(yy)
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
    # third cumulant along x and y over area^1.5: 0.021 for an upright triangle, 0 for circles and squares;
    # a Gaussian blur adds nothing to third and fourth cumulants and keeps the area
    k3 = np.maximum(np.abs(mean(dx * dx * dx)), np.abs(mean(dy * dy * dy))) / area ** 1.5

    def k4(u):  # fourth cumulant along a direction
        u2 = u * u
        v2 = mean(u2)
        return mean(u2 * u2) - 3 * v2 * v2

    du, dv = (dx + dy) * math.sqrt(0.5), (dx - dy) * math.sqrt(0.5)
    # diagonal over axis-parallel fourth cumulant: 1 for a disc (isotropic), 1/2 for a square
    k4_ratio = (k4(du) + k4(dv)) / np.minimum(k4(dx) + k4(dy), -1e-12)
    # longest diagonal chord over longest axis-parallel chord: sqrt 2 for a square, 1 for a disc
    axis = np.maximum(m.sum(1).max(1), m.sum(2).max(1))
    nd = h + w - 1
    offset = (np.arange(f) * nd)[:, None]
    d1 = np.bincount((offset + diag_i).ravel(), m.ravel(), f * nd).reshape(f, nd)  # sums along diagonals
    d2 = np.bincount((offset + diag_j).ravel(), m.ravel(), f * nd).reshape(f, nd)  # ...and anti-diagonals
    diag_ratio = math.sqrt(2) * np.maximum(d1.max(1), d2.max(1)) / np.maximum(axis, 1e-6)
    edge = comp[:, 0, :].any(1) | comp[:, -1, :].any(1) | comp[:, :, 0].any(1) | comp[:, :, -1].any(1)
    near = np.zeros(f, bool)
    if others is not None:
        near = (ndimage.binary_dilation(region, structure=_IN_FRAME) & others).any((1, 2))
    # mean alpha inside the shape (1 for the exact colour, < 1 for a washed-out one), to size it by area
    level = np.clip((a * comp).sum((1, 2)) / np.maximum(comp.sum((1, 2)), 1), 0.5, 1.0)
    return [dict(area=float(area[i]), level=float(level[i]), cx=float(cx[i]), cy=float(cy[i]), k3=float(k3[i]),
                 k4_ratio=float(k4_ratio[i]), diag_ratio=float(diag_ratio[i]), touches_border=bool(edge[i]),
                 touches_other=bool(near[i]))
            if found[i] else None for i in range(f)]


def classify_shape(frames: list[dict | None]) -> str | None:
    """"circle" / "square" / "triangle" from per-frame features (None if the shape is never found)."""
    found = [f for f in frames if f is not None]
    if not found:
        return None
    big = max(f["area"] for f in found)
    good = [f for f in found if not f["touches_border"] and not f.get("touches_other") and f["area"] >= 0.5 * big]
    good = good or [f for f in found if not f.get("touches_other")] or found
    third = float(np.median([f["k3"] for f in good]))
    if third > THRESHOLDS["triangle_k3"]:
        return "triangle"
    diag = float(np.median([f["diag_ratio"] for f in good]))
    k4 = float(np.median([f["k4_ratio"] for f in good]))
    squareness = 0.5 * (diag - 1) / (math.sqrt(2) - 1) + 0.5 * (1 - k4) / 0.5
    return "square" if squareness > THRESHOLDS["squareness"] else "circle"


def _smooth(v: np.ndarray) -> np.ndarray:
    if len(v) < 3:
        return v
    p = np.concatenate([v[:1], v, v[-1:]])
    return (p[:-2] + p[1:-1] + p[2:]) / 3


def classify_motion(frames: list[dict | None], h: int, w: int) -> str | None:
    """One of :data:`data.MOTIONS` from per-frame centroids and areas (None if the shape is found in fewer
    than half the frames, or in fewer than 3)."""
    n = len(frames)
    need = max(3, (n + 1) // 2)
    idx = [i for i, f in enumerate(frames) if f is not None]
    if len(idx) < need:
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
    """Fraction of consecutive frame pairs where the shape is in both, moves no more than
    ``max(2.5 x typical step, 0.07 of the frame)`` and changes area by less than 1.5x. The typical step is
    the median step of the track after a 5-frame moving average: the speed of a smooth track, but a fraction
    of the jumps of a track that hops around (whose average stays put)."""
    n = len(frames)
    if n < 2:
        return float(frames[0] is not None) if frames else 0.0
    found = [fr for fr in frames if fr is not None]
    if len(found) < 2:
        return 0.0
    xy = np.array([[fr["cx"] / w, fr["cy"] / h] for fr in found])
    k = min(5, len(xy))
    avg = np.stack([np.convolve(xy[:, i], np.ones(k) / k, mode="valid") for i in (0, 1)], axis=1)
    typical = float(np.median(np.hypot(*np.diff(avg, axis=0).T))) if len(avg) > 1 else 0.0
    limit = max(2.5 * typical, THRESHOLDS["consistency_jump"])
    ok = 0
    for a, b in zip(frames[:-1], frames[1:]):
        if a and b:
            jump = math.hypot((b["cx"] - a["cx"]) / w, (b["cy"] - a["cy"]) / h)
            r = b["area"] / max(a["area"], 1e-6)
            ok += jump <= limit and 1 / THRESHOLDS["consistency_area"] <= r <= THRESHOLDS["consistency_area"]
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
    pix = np.ascontiguousarray(v.reshape(f, h * w, 3).transpose(2, 0, 1))  # [3, F, N]
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
    spread = float(np.mean(bg.max(axis=2) - bg.min(axis=2)))
    if spread >= THRESHOLDS["gradient_range"]:
        background = "gradient"
    else:
        background = "dark" if level < THRESHOLDS["dark_light_level"] else "light"

    objects = []
    tracked = ranked[:num_objects]
    cores = {c: has & (best == _COLOUR_NAMES.index(c)) for c in tracked}
    for colour in tracked:
        k = _COLOUR_NAMES.index(colour)
        core = cores[colour]
        others = None
        if len(tracked) > 1:
            others = np.any([cores[c] for c in tracked if c != colour], axis=0).reshape(f, h, w)
        frames = _track(alpha[k], sin[k], core, h, w, others)
        shape = classify_shape(frames)
        found = [fr for fr in frames if fr is not None]
        radius = None
        if shape is not None:
            full_area = float(np.median([fr["area"] / fr["level"] for fr in found]))
            radius = math.sqrt(full_area / data.AREA_FACTOR[shape]) / min(h, w)
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
    return mean_scores([score_clip(c, t) for c, t in zip(clips, captions)])


def mean_scores(scores: list[dict]) -> dict:
    """Means of a list of :func:`score_clip` results, as :func:`score_batch` returns them.

    For callers that keep the per-clip scores as well (to list the failures) and must not score twice.
    """
    out: dict = {}
    for key in _MEAN_KEYS:
        vals = [float(s[key]) for s in scores if s[key] is not None]
        out[key] = float(np.mean(vals)) if vals else None
    out["n"] = len(scores)
    return out
