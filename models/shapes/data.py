"""Procedural training data for the shipped shapes model: clips of coloured shapes moving on simple
backgrounds, each with a caption from a small fixed grammar.

Clip layout: ``[F, H, W, 3]`` float32 RGB in ``[-1, 1]`` (``F = num_frames``; ``H = W = size`` unless
``height``/``width`` are given); batches add a leading ``B``. Geometry is in pixels with ``x`` to the right
and ``y`` *down* (so "moving up" means ``y`` decreases); specs store positions as fractions of the frame
along each axis (x of the width, y of the height) and half-extents as fractions of the frame's shorter side,
so one spec renders at any size of the aspect ratio it was drawn for (``ClipSpec.aspect = H / W``; square
by default). A :class:`Window` renders part of a clip (frames, rows and columns of the whole) directly: the
same pixels as cropping the whole render.

Grammar (every word is in :data:`VOCAB`)::

    caption    := object ["and" object] ["on" "a" background "background"]
    object     := "a" [size] colour shape motion
    size       := "small" | "big"                    (never said for growing/shrinking shapes)
    colour     := "red" | "green" | "blue" | "yellow" | "magenta" | "cyan"
    shape      := "circle" | "square" | "triangle"
    motion     := "moving" direction | "bouncing" ("horizontally" | "vertically")
                | "growing" | "shrinking" | "standing" "still"
    direction  := "left" | "right" | "up" | "down" | "up-left" | "up-right" | "down-left" | "down-right"
    background := "dark" | "light" | "gradient"

e.g. ``"a small red circle moving left on a dark background"``, ``"a blue square growing"``. Sampled
captions leave out the size word (30 %) and the background phrase (20 %) now and then, so short prompts
such as ``"a red circle moving left"`` are in the training distribution.

Rendering: shapes are drawn from signed distance functions with one-pixel antialiasing
(``coverage = clip(0.5 - distance, 0, 1)``), so edges are smooth and the inside of a shape is exactly its
colour. Circles have radius ``R``; squares half-side ``R``; triangles point up with base ``2R`` and height
``2R`` (all inside the ``2R x 2R`` box around the spec's centre). A second shape is drawn over the first.

Motion over the clip (``t = f / (F - 1)`` in ``[0, 1]``; ``F`` the whole clip's frames, also for a window of
it): translations move the box centre by the spec's
``velocity`` (at least 1/3 of the frame per axis for left/right/up/down, 0.3 per axis for diagonals) and
stay inside the frame; bounces move along one axis and reflect where the shape touches a wall (at least
one reversal, both legs clearly visible); growing/shrinking change ``R`` linearly by a factor in
``[1.8, 2.3]`` about a fixed centre; "standing still" does nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SHAPES", "COLOURS", "BACKGROUNDS", "BACKGROUND_LEVELS", "MOTIONS", "MOTION_PHRASES", "DIRECTIONS", "SIZE_WORDS",
    "VOCAB", "PAD_ID", "UNK_ID", "MAX_LEN", "MAX_LEN_TWO_SHAPES", "ObjectSpec", "ClipSpec", "CaptionObject",
    "ParsedCaption", "Window", "AREA_FACTOR", "axis_scale", "clip_times", "sample_spec", "render", "render_batch",
    "caption", "parse_caption", "tokenize",
    "tokenize_batch", "detokenize", "sample_batch", "to_rng",
]

SHAPES = ("circle", "square", "triangle")

#: Shape colours as RGB in [0, 1]. Chosen so that, seen from any background grey between 0.1 and 0.8, the
#: directions ``colour - background`` of any two colours are at least 38 degrees apart and every colour is at
#: least 0.5 (Euclidean) from the background: antialiased or blurred edges (mixtures of colour and
#: background) never look like another colour.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.12),
    "green": (0.15, 0.80, 0.15),
    "blue": (0.12, 0.22, 0.98),
    "yellow": (0.95, 0.85, 0.10),
    "magenta": (0.85, 0.15, 0.85),
    "cyan": (0.10, 0.88, 0.80),
}

BACKGROUNDS = ("dark", "light", "gradient")
#: Grey levels in [0, 1]: plain dark, plain light, and the two ends of the (neutral grey) gradient.
BACKGROUND_LEVELS = {"dark": (0.10, 0.10), "light": (0.80, 0.80), "gradient": (0.22, 0.62)}

MOTIONS = ("left", "right", "up", "down", "up-left", "up-right", "down-left", "down-right",
           "bounce-horizontal", "bounce-vertical", "grow", "shrink", "static")
#: Unit-step direction (dx, dy) of each translation, y down.
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
              "up-left": (-1, -1), "up-right": (1, -1), "down-left": (-1, 1), "down-right": (1, 1)}
MOTION_PHRASES = {**{m: f"moving {m}" for m in DIRECTIONS},
                  "bounce-horizontal": "bouncing horizontally", "bounce-vertical": "bouncing vertically",
                  "grow": "growing", "shrink": "shrinking", "static": "standing still"}
SIZE_WORDS = ("small", "big")
#: Half-extent R of a shape as a fraction of the frame size, per size word.
SIZE_RANGES = {"small": (0.09, 0.13), "big": (0.17, 0.22)}
GROW_START = (0.08, 0.11)   # R at the small end of a grow/shrink
GROW_FACTOR = (1.8, 2.3)    # R_large / R_small
TRAVEL_MIN = {"cardinal": 0.34, "diagonal": 0.30}  # per moving axis, fraction of the frame
LONG_TRAVEL = 0.85  # with long_travel, moving shapes cross at least this share of the room they have

#: Word-level vocabulary (fixed order: shipped weights depend on it). ``<pad>`` is 0 and ``<unk>`` is 1.
VOCAB = ("<pad>", "<unk>", "a", "and", "on", "background", "small", "big",
         "red", "green", "blue", "yellow", "magenta", "cyan",
         "circle", "square", "triangle",
         "moving", "left", "right", "up", "down", "up-left", "up-right", "down-left", "down-right",
         "bouncing", "horizontally", "vertically", "growing", "shrinking", "standing", "still",
         "dark", "light", "gradient")
PAD_ID = 0
UNK_ID = 1
MAX_LEN = 12             # one-shape captions have at most 10 words
MAX_LEN_TWO_SHAPES = 18  # two-shape captions have at most 17 words
_WORD_ID = {w: i for i, w in enumerate(VOCAB)}
_CAPTION_WORDS = tuple(w for w in VOCAB if not w.startswith("<"))


# --------------------------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class ObjectSpec:
    """One shape and its motion. Positions and sizes are fractions of the frame (x right, y down).

    Attributes:
      shape, colour, motion: names from :data:`SHAPES`, :data:`COLOURS`, :data:`MOTIONS`.
      size_word: "small" or "big", or "" for growing/shrinking shapes (their size is what changes).
      start: ``(x, y)`` of the centre of the shape's ``2R x 2R`` box at the first frame.
      velocity: ``(dx, dy)`` displacement over the whole clip (for bounces, before reflection at walls).
      radius, radius_end: the half-extent ``R`` at the first and last frame.
    """

    shape: str
    colour: str
    motion: str
    size_word: str
    start: tuple[float, float]
    velocity: tuple[float, float]
    radius: float
    radius_end: float

    @property
    def speed(self) -> float:
        """Distance travelled over the clip (path length for bounces), in frame widths."""
        return math.hypot(*self.velocity)


@dataclass(frozen=True)
class ClipSpec:
    """A clip: one or two shapes over a background. The attribute properties read the first shape.

    Attributes:
      objects: the shapes, drawn in order (later ones on top).
      background: a name from :data:`BACKGROUNDS`.
      bg_angle: direction of the gradient in radians (0: dark at the left, light at the right; pi/2: dark
        at the top). Unused for plain backgrounds.
      say_size, say_background: whether :func:`caption` says the size word / the background phrase.
      aspect: height / width of the frames the spec was drawn for (:func:`sample_spec`'s ``aspect``); it
        renders at any size of that aspect ratio (the walls its shapes keep inside depend on it).
    """

    objects: tuple[ObjectSpec, ...]
    background: str
    bg_angle: float = 0.0
    say_size: bool = True
    say_background: bool = True
    aspect: float = 1.0

    shape = property(lambda self: self.objects[0].shape)
    colour = property(lambda self: self.objects[0].colour)
    motion = property(lambda self: self.objects[0].motion)
    size_word = property(lambda self: self.objects[0].size_word)
    start = property(lambda self: self.objects[0].start)
    velocity = property(lambda self: self.objects[0].velocity)
    speed = property(lambda self: self.objects[0].speed)
    radius = property(lambda self: self.objects[0].radius)
    radius_end = property(lambda self: self.objects[0].radius_end)


def to_rng(key_or_seed) -> np.random.Generator:
    """A numpy Generator from an int / sequence of ints seed, a Generator (returned as is) or a JAX key."""
    if isinstance(key_or_seed, np.random.Generator):
        return key_or_seed
    if isinstance(key_or_seed, (int, np.integer)):
        return np.random.default_rng(int(key_or_seed))
    if isinstance(key_or_seed, (tuple, list)):
        return np.random.default_rng([int(k) for k in key_or_seed])
    if hasattr(key_or_seed, "dtype"):  # a JAX key (typed or raw uint32) or an integer array
        import jax

        arr = key_or_seed
        if jax.dtypes.issubdtype(arr.dtype, jax.dtypes.prng_key):
            arr = jax.random.key_data(arr)
        return np.random.default_rng(np.asarray(arr).astype(np.uint64).ravel().tolist())
    raise TypeError(f"expected an int seed, a numpy Generator or a JAX key, got {type(key_or_seed).__name__}")


def axis_scale(aspect: float) -> tuple[float, float]:
    """``(sx, sy)``: a half-extent ``R`` (a fraction of the shorter side) is ``R * sx`` of the width and
    ``R * sy`` of the height of a frame with ``height / width = aspect`` (both 1 for a square frame)."""
    if not aspect > 0 or not math.isfinite(aspect):
        raise ValueError(f"aspect (height / width) must be a positive number, got {aspect!r}")
    return min(aspect, 1.0), min(1.0, 1.0 / aspect)


@dataclass(frozen=True)
class Window:
    """The part of a whole clip that a cropped clip shows: frames ``[t, t+f)``, rows ``[y, y+h)`` and
    columns ``[x, x+w)`` for ``start = (t, y, x)`` and ``size = (f, h, w)`` (frames and pixels)."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]

    def check(self, whole: tuple[int, int, int]) -> None:
        """Raises ValueError unless the window is non-empty and lies inside a whole clip ``(F, H, W)``."""
        for name, a, n, m in zip(("frames", "rows", "columns"), self.start, self.size, whole):
            if not (isinstance(a, (int, np.integer)) and isinstance(n, (int, np.integer))) or a < 0 or n < 1 \
                    or a + n > m:
                raise ValueError(f"window {self} does not fit the whole clip {tuple(whole)} (F, H, W): its "
                                 f"{name} [{a}, {a + n}) must lie in [0, {m}) with at least one")

    def token_offset(self, patch: tuple[int, int, int]) -> tuple[int, int, int]:
        """The window's start in tokens of a ``patch = (pt, ph, pw)`` grid: its RoPE offset in the whole.
        Raises ValueError when the start is not a multiple of the patch (the window is not token-aligned)."""
        if any(a % p for a, p in zip(self.start, patch)):
            raise ValueError(f"window start {self.start} is not a multiple of the patch {tuple(patch)}: a window "
                             f"must start on a token boundary to have a RoPE offset")
        return tuple(int(a // p) for a, p in zip(self.start, patch))


def _sample_object(rng: np.random.Generator, motion: str, shape: str, colour: str,
                   long_travel: bool = False, scale: tuple[float, float] = (1.0, 1.0)) -> ObjectSpec:
    if motion in ("grow", "shrink"):
        small = rng.uniform(*GROW_START)
        large = small * rng.uniform(*GROW_FACTOR)
        r0, r1 = (small, large) if motion == "grow" else (large, small)
        size_word = ""
    else:
        size_word = SIZE_WORDS[rng.integers(len(SIZE_WORDS))]
        r0 = r1 = rng.uniform(*SIZE_RANGES[size_word])
    r_max = max(r0, r1)
    margin = [r_max * scale[0] + 0.02, r_max * scale[1] + 0.02]  # per axis, fractions of that axis
    pos = [rng.uniform(margin[0], 1 - margin[0]), rng.uniform(margin[1], 1 - margin[1])]
    vel = [0.0, 0.0]
    if motion in DIRECTIONS:
        d = DIRECTIONS[motion]
        avail = min(1 - 2 * margin[ax] for ax in (0, 1) if d[ax])
        least = TRAVEL_MIN["diagonal" if d[0] and d[1] else "cardinal"]
        travel = rng.uniform(max(least, LONG_TRAVEL * avail) if long_travel else least, avail)
        for ax in (0, 1):
            if d[ax]:
                lo = margin[ax] if d[ax] > 0 else margin[ax] + travel
                pos[ax] = rng.uniform(lo, lo + (1 - 2 * margin[ax]) - travel)
                vel[ax] = d[ax] * travel
    elif motion.startswith("bounce"):
        ax = 0 if motion == "bounce-horizontal" else 1
        lo, hi = r0 * scale[ax], 1 - r0 * scale[ax]  # the shape touches the wall when its centre reaches lo or hi
        avail = hi - lo
        while True:  # at least one reversal, with both legs clearly visible
            x0 = rng.uniform(lo, hi)
            sign = 1 if rng.random() < 0.5 else -1
            first_leg = hi - x0 if sign > 0 else x0 - lo
            path = rng.uniform(0.9, 1.8) * avail
            if first_leg >= 0.25 * avail and path - first_leg >= 0.35 * avail:
                break
        pos[ax] = x0
        vel[ax] = sign * path
    return ObjectSpec(shape=shape, colour=colour, motion=motion, size_word=size_word,
                      start=(float(pos[0]), float(pos[1])), velocity=(float(vel[0]), float(vel[1])),
                      radius=float(r0), radius_end=float(r1))


_MAX_TRIES = 1000
_GAP = 0.03  # smallest gap between the boxes of two shapes, as a fraction of the frame


def _boxes_meet(a: ObjectSpec, b: ObjectSpec, samples: int = 33, aspect: float = 1.0) -> bool:
    """Whether the ``2R`` boxes of two shapes come closer than :data:`_GAP` at any time of the clip."""
    scale = np.asarray(axis_scale(aspect))
    centre, radius = _trajectories([a, b], np.linspace(0.0, 1.0, samples), aspect)
    gap = np.abs(centre[0] - centre[1]) - (radius[0] + radius[1])[:, None] * scale  # [T, 2] per axis
    return bool(np.any(np.max(gap, axis=1) < _GAP))


def sample_spec(rng, *, two_shapes: bool = False, motions=MOTIONS, shapes=SHAPES, colours=tuple(COLOURS),
                backgrounds=BACKGROUNDS, p_say_size: float = 0.7, p_say_background: float = 0.8,
                long_travel: bool = False, aspect: float = 1.0) -> ClipSpec:
    """A random clip spec (uniform over the given motions, shapes, colours, backgrounds), for frames of
    ``height / width = aspect`` (every shape stays inside such a frame all clip long).

    With ``long_travel`` a shape moving in a direction crosses at least ``LONG_TRAVEL`` of the room it has,
    so it starts near the edge it moves away from (its direction then shows from the first frame).

    ``rng``: anything :func:`to_rng` takes. With ``two_shapes`` the second shape has a different colour and a
    different shape from the first, and its own random motion; the pair is redrawn (up to 1000 times) until
    their boxes stay at least 0.03 of the frame apart all clip long, so neither hides the other (this favours
    pairs of motions that can keep apart, e.g. fewer two big shapes crossing).
    """
    rng = to_rng(rng)
    scale = axis_scale(aspect)
    for name, vals, known in (("motion", motions, MOTIONS), ("shape", shapes, SHAPES), ("colour", colours, COLOURS),
                              ("background", backgrounds, BACKGROUNDS)):
        bad = [v for v in vals if v not in known]
        if bad or not vals:
            raise ValueError(f"unknown {name}(s) {bad}; choose from {list(known)}")
    n_objects = 2 if two_shapes else 1
    if n_objects > min(len(shapes), len(colours)):
        raise ValueError("two_shapes needs at least two shapes and two colours to choose from")
    for _ in range(_MAX_TRIES):  # keep two shapes apart, so neither hides part of the other
        objs: list[ObjectSpec] = []
        for k in range(n_objects):
            shape_choices = [s for s in shapes if all(o.shape != s for o in objs)]
            colour_choices = [c for c in colours if all(o.colour != c for o in objs)]
            objs.append(_sample_object(rng, motions[rng.integers(len(motions))],
                                       shape_choices[rng.integers(len(shape_choices))],
                                       colour_choices[rng.integers(len(colour_choices))], long_travel, scale))
        if n_objects == 1 or not _boxes_meet(objs[0], objs[1], aspect=aspect):
            break
    background = backgrounds[rng.integers(len(backgrounds))]
    return ClipSpec(objects=tuple(objs), background=background, bg_angle=float(rng.uniform(0, 2 * math.pi)),
                    say_size=bool(rng.random() < p_say_size), say_background=bool(rng.random() < p_say_background),
                    aspect=float(aspect))


# ------------------------------------------------------------------------------------------ rendering

def _fold(u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Reflects ``u`` into ``[lo, hi]`` (a ball bouncing between two walls)."""
    span = hi - lo
    v = np.mod(u - lo, 2 * span)
    return lo + np.where(v > span, 2 * span - v, v)


def _trajectories(objs: list[ObjectSpec], t: np.ndarray, aspect: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Box centres ``[N, T, 2]`` (fractions of the width / height) and half-extents ``[N, T]`` (fractions of
    the shorter side) at clip times ``t`` ``[T]`` in [0, 1], in a frame of ``height / width = aspect``."""
    t = np.asarray(t, np.float64)
    start = np.array([o.start for o in objs], np.float64)[:, None, :]
    vel = np.array([o.velocity for o in objs], np.float64)[:, None, :]
    r0 = np.array([o.radius for o in objs])[:, None]
    r1 = np.array([o.radius_end for o in objs])[:, None]
    centre = start + t[None, :, None] * vel
    bounce = np.array([o.motion.startswith("bounce") for o in objs])
    if bounce.any():
        wall = r0[bounce][..., None] * np.asarray(axis_scale(aspect))  # [n, 1, 2] half-extent per axis
        centre[bounce] = _fold(centre[bounce], wall, 1 - wall)
    radius = r0 + t[None, :] * (r1 - r0)
    return centre, radius


def clip_times(num_frames: int, window: "Window | None" = None) -> np.ndarray:
    """Clip times ``t = f / (F - 1)`` ``[f]`` of the frames a window shows (all ``F`` frames without one)."""
    frames = np.arange(num_frames) if window is None else np.arange(window.start[0], window.start[0] + window.size[0])
    return frames / (num_frames - 1) if num_frames > 1 else np.zeros(len(frames))


def _coverage(shape: str, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, h: int, w: int) -> np.ndarray:
    """Antialiased coverage ``[N, F, h, w]`` in [0, 1] of shapes with box centres/half-extents in pixels of
    the rendered frame (``cx, cy, r``: ``[N, F]``)."""
    px = (np.arange(w, dtype=np.float32) + 0.5)
    py = (np.arange(h, dtype=np.float32) + 0.5)
    dx = px[None, None, None, :] - cx[..., None, None].astype(np.float32)
    dy = py[None, None, :, None] - cy[..., None, None].astype(np.float32)
    r = r[..., None, None].astype(np.float32)
    if shape == "circle":
        sdf = np.sqrt(dx * dx + dy * dy) - r
    elif shape == "square":
        sdf = np.maximum(np.abs(dx), np.abs(dy)) - r
    elif shape == "triangle":  # apex (0, -r), base corners (+-r, r): the slanted edges have normals (+-2, -1)/sqrt5
        sdf = np.maximum(dy - r, (2 * np.abs(dx) - dy - r) * np.float32(1 / math.sqrt(5)))
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {list(SHAPES)}")
    return np.clip(np.float32(0.5) - sdf, 0.0, 1.0)


def _backgrounds(specs: list[ClipSpec], whole: tuple[int, int], window: tuple[int, int, int, int]) -> np.ndarray:
    """Background grey levels ``[B, h, w]`` in [0, 1] of rows ``[y, y+h)`` and columns ``[x, x+w)``
    (``window = (y, x, h, w)``) of a ``whole = (H, W)`` frame."""
    (hh, ww), (y0, x0, h, w) = whole, window
    px = (np.arange(x0, x0 + w, dtype=np.float32) + 0.5) / ww - 0.5
    py = (np.arange(y0, y0 + h, dtype=np.float32) + 0.5) / hh - 0.5
    out = np.empty((len(specs), h, w), np.float32)
    for i, s in enumerate(specs):
        if s.background not in BACKGROUND_LEVELS:
            raise ValueError(f"unknown background {s.background!r}; choose from {list(BACKGROUNDS)}")
        lo, hi = BACKGROUND_LEVELS[s.background]
        if lo == hi:
            out[i] = lo
        else:
            c, sn = math.cos(s.bg_angle), math.sin(s.bg_angle)
            u = (px[None, :] * c + py[:, None] * sn) / (abs(c) + abs(sn)) + 0.5  # 0..1 across the frame
            out[i] = lo + (hi - lo) * u
    return out


AREA_FACTOR = {"circle": math.pi, "square": 4.0, "triangle": 2.0}      # area / R^2
_CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 3.0}   # centroid - box centre, in R


def render_batch(specs: list[ClipSpec], num_frames: int = 16, size: int = 32, *, height: int | None = None,
                 width: int | None = None, window: Window | None = None) -> tuple[np.ndarray, dict]:
    """Renders specs to clips ``[B, F, H, W, 3]`` float32 in [-1, 1] (``H = height or size``, ``W = width
    or size``); with ``window`` only that part of the ``F x H x W`` clip, ``[B, f, h, w, 3]`` (the same
    pixels as cropping the whole render, to float32 rounding).

    Returns ``(clips, geometry)`` where geometry, from the renderer's own shapes (not re-segmented), has
    ``centroid`` and ``box_centre`` ``[B, K, f, 2]`` (x, y) in pixels of the rendered frame (the window's),
    ``radius`` ``[B, K, f]`` (half-extent R, pixels), ``area`` ``[B, K, f]`` (of the whole shape, pixels^2;
    part of it may lie outside a window) and ``present`` ``[B, K]`` (False for the missing second shape of a
    one-shape clip; K is the largest number of shapes in the batch). Raises ValueError for a spec drawn for
    another aspect ratio than ``H / W`` or a window outside the clip.
    """
    hh, ww = height or size, width or size
    if num_frames < 1 or min(hh, ww) < 8:
        raise ValueError(f"need num_frames >= 1 and height, width >= 8, got num_frames={num_frames}, "
                         f"height={hh}, width={ww}")
    window = window or Window((0, 0, 0), (num_frames, hh, ww))
    window.check((num_frames, hh, ww))
    (_, y0, x0), (f, h, w) = window.start, window.size
    aspect = hh / ww
    for i, s in enumerate(specs):
        if abs(s.aspect - aspect) > 1e-6 * aspect:
            raise ValueError(f"spec {i} was drawn for frames of height/width {s.aspect:g}, not {hh}x{ww} ({aspect:g}): "
                             f"draw it with sample_spec(..., aspect=height/width) for this frame")
    b = len(specs)
    k_max = max((len(s.objects) for s in specs), default=0)
    t = clip_times(num_frames, window)
    grey = _backgrounds(specs, (hh, ww), (y0, x0, h, w)) * 2 - 1
    img = np.broadcast_to(grey[:, None, :, :, None], (b, f, h, w, 1))  # [B, f, h, w, 1->3]
    geo = {"centroid": np.zeros((b, k_max, f, 2)), "box_centre": np.zeros((b, k_max, f, 2)),
           "radius": np.zeros((b, k_max, f)), "area": np.zeros((b, k_max, f)), "present": np.zeros((b, k_max), bool)}
    for k in range(k_max):
        idx = [i for i, s in enumerate(specs) if len(s.objects) > k]
        objs = [specs[i].objects[k] for i in idx]
        for o in objs:
            if o.colour not in COLOURS:
                raise ValueError(f"unknown colour {o.colour!r}; choose from {list(COLOURS)}")
        centre, radius = _trajectories(objs, t, aspect)
        cx_px, cy_px, radius_px = centre[..., 0] * ww - x0, centre[..., 1] * hh - y0, radius * min(hh, ww)
        alpha = np.zeros((b, f, h, w, 1), np.float32)
        colour = np.zeros((b, 1, 1, 1, 3), np.float32)
        for shape in SHAPES:
            sel = [j for j, o in enumerate(objs) if o.shape == shape]
            if not sel:
                continue
            rows = np.array([idx[j] for j in sel])
            alpha[rows, ..., 0] = _coverage(shape, cx_px[sel], cy_px[sel], radius_px[sel], h, w)
            colour[rows, 0, 0, 0] = [COLOURS[objs[j].colour] for j in sel]
            geo["box_centre"][rows, k, :, 0] = cx_px[sel]
            geo["box_centre"][rows, k, :, 1] = cy_px[sel]
            geo["centroid"][rows, k, :, 0] = cx_px[sel]
            geo["centroid"][rows, k, :, 1] = cy_px[sel] + _CENTROID_DY[shape] * radius_px[sel]
            geo["radius"][rows, k] = radius_px[sel]
            geo["area"][rows, k] = AREA_FACTOR[shape] * radius_px[sel] ** 2
            geo["present"][rows, k] = True
        img = img + alpha * ((colour * 2 - 1) - img)  # over-composite (absent shapes have alpha 0)
    return np.ascontiguousarray(np.broadcast_to(img, (b, f, h, w, 3)), np.float32), geo


def render(spec: ClipSpec, num_frames: int = 16, size: int = 32, *, height: int | None = None,
           width: int | None = None, window: Window | None = None) -> tuple[np.ndarray, dict]:
    """Renders one spec: ``(clip [F, H, W, 3] float32 in [-1, 1], ground_truth)`` (see :func:`render_batch`
    for ``height``, ``width`` and ``window``).

    ground_truth: ``centroid`` ``[F, 2]`` (x, y pixels, y down), ``radius`` ``[F]`` (half-extent, pixels)
    and ``area`` ``[F]`` (pixels^2) of the first shape, from the renderer's geometry; ``objects`` holds
    the same dict for every shape.
    """
    clips, geo = render_batch([spec], num_frames, size, height=height, width=width, window=window)
    objects = [{"centroid": geo["centroid"][0, k], "radius": geo["radius"][0, k], "area": geo["area"][0, k]}
               for k in range(len(spec.objects))]
    return clips[0], {**objects[0], "objects": objects}


# ------------------------------------------------------------------------------------------ captions

def _object_words(o, say_size: bool) -> list[str]:
    words = ["a"]
    if say_size and o.size_word:
        words.append(o.size_word)
    return words + [o.colour, o.shape] + MOTION_PHRASES[o.motion].split()


def caption(spec: ClipSpec) -> str:
    """The caption of a spec, from the grammar in this module's docstring."""
    words = _object_words(spec.objects[0], spec.say_size)
    for o in spec.objects[1:]:
        words += ["and"] + _object_words(o, spec.say_size)
    if spec.say_background:
        words += ["on", "a", spec.background, "background"]
    return " ".join(words)


@dataclass(frozen=True)
class CaptionObject:
    """One shape as a caption describes it (``size_word`` is "" when the caption gives none)."""

    shape: str
    colour: str
    motion: str
    size_word: str = ""


@dataclass(frozen=True)
class ParsedCaption:
    """The attributes a caption states; ``background`` is None when it names none. The attribute
    properties read the first shape."""

    objects: tuple[CaptionObject, ...]
    background: str | None

    shape = property(lambda self: self.objects[0].shape)
    colour = property(lambda self: self.objects[0].colour)
    motion = property(lambda self: self.objects[0].motion)
    size_word = property(lambda self: self.objects[0].size_word)


def _words(text: str) -> list[str]:
    return re.sub(r"[.,;!?]", " ", text.lower()).split()


_PHRASE_MOTION = {tuple(p.split()): m for m, p in MOTION_PHRASES.items()}


def parse_caption(text: str) -> ParsedCaption:
    """Inverse of :func:`caption`: the shapes, colours, motions, sizes and background a caption states.

    Case and the punctuation ``.,;!?`` are ignored. Raises ValueError on a word outside the vocabulary
    (listing the valid words) or on a word sequence the grammar cannot produce (naming what was expected).
    """
    words = _words(text)
    unknown = sorted({w for w in words if w not in _WORD_ID or w.startswith("<")})
    if unknown:
        raise ValueError(f"caption {text!r}: unknown word(s) {unknown}; valid words are: {' '.join(_CAPTION_WORDS)}")
    pos = 0

    def expect(options, what):
        nonlocal pos
        if pos >= len(words) or words[pos] not in options:
            got = repr(words[pos]) if pos < len(words) else "the end"
            raise ValueError(f"caption {text!r}: expected {what} ({' | '.join(options)}) at word {pos + 1}, got {got}; "
                             f"captions read like 'a small red circle moving left on a dark background'")
        pos += 1
        return words[pos - 1]

    objects = []
    while True:
        expect(("a",), "'a'")
        size_word = ""
        if pos < len(words) and words[pos] in SIZE_WORDS:
            size_word = words[pos]
            pos += 1
        colour = expect(tuple(COLOURS), "a colour")
        shape = expect(SHAPES, "a shape")
        for phrase, motion in _PHRASE_MOTION.items():
            if tuple(words[pos:pos + len(phrase)]) == phrase:
                pos += len(phrase)
                break
        else:
            got = " ".join(words[pos:pos + 2]) or "the end"
            raise ValueError(f"caption {text!r}: expected a motion at word {pos + 1}, got {got!r}; motions are: "
                             + ", ".join(repr(p) for p in MOTION_PHRASES.values()))
        if size_word and motion in ("grow", "shrink"):
            raise ValueError(f"caption {text!r}: a size word ('{size_word}') does not go with "
                             f"'{MOTION_PHRASES[motion]}'")
        objects.append(CaptionObject(shape=shape, colour=colour, motion=motion, size_word=size_word))
        if pos < len(words) and words[pos] == "and":
            pos += 1
            continue
        break
    background = None
    if pos < len(words):
        expect(("on",), "'and', 'on' or the end")
        expect(("a",), "'a'")
        background = expect(BACKGROUNDS, "a background")
        expect(("background",), "'background'")
    if pos != len(words):
        raise ValueError(f"caption {text!r}: unexpected {words[pos]!r} after the end of the caption")
    return ParsedCaption(objects=tuple(objects), background=background)


def tokenize(text: str, max_len: int = MAX_LEN) -> list[int]:
    """Word-level token ids of a caption, padded with :data:`PAD_ID` to ``max_len``.

    Case and ``.,;!?`` are ignored; a word outside :data:`VOCAB` becomes :data:`UNK_ID`. The empty string
    gives all padding (the unconditional prompt). Raises ValueError if the caption has more than
    ``max_len`` words (nothing is cut off silently).
    """
    words = _words(text)
    if len(words) > max_len:
        raise ValueError(f"caption {text!r} has {len(words)} words; the text encoder reads at most {max_len} "
                         f"(captions of the shapes grammar have at most 10 words for one shape, 17 for two)")
    ids = [_WORD_ID.get(w, UNK_ID) if not w.startswith("<") else UNK_ID for w in words]
    return ids + [PAD_ID] * (max_len - len(ids))


def tokenize_batch(texts, max_len: int = MAX_LEN) -> np.ndarray:
    """Token ids ``[B, max_len]`` int32 for a list of captions (see :func:`tokenize`)."""
    return np.array([tokenize(t, max_len) for t in texts], np.int32).reshape(len(texts), max_len)


def detokenize(ids) -> str:
    """The words of token ids, padding dropped (``<unk>`` kept as is)."""
    return " ".join(VOCAB[int(i)] for i in np.asarray(ids).ravel() if int(i) != PAD_ID)


# ------------------------------------------------------------------------------------------ batches

def sample_batch(key_or_seed, batch_size: int, *, num_frames: int = 16, size: int = 32, height: int | None = None,
                 width: int | None = None, two_shapes: bool = False, max_len: int | None = None,
                 **spec_kwargs) -> tuple[np.ndarray, list[str], np.ndarray]:
    """A training batch: ``(clips [B, F, H, W, 3] float32 in [-1, 1], captions, ids [B, max_len] int32)``
    (``H = height or size``, ``W = width or size``).

    ``key_or_seed``: int seed, numpy Generator or JAX key (same seed, same batch). ``max_len`` defaults to
    :data:`MAX_LEN` (:data:`MAX_LEN_TWO_SHAPES` with ``two_shapes``). Extra keyword arguments go to
    :func:`sample_spec`.
    """
    rng = to_rng(key_or_seed)
    hh, ww = height or size, width or size
    specs = [sample_spec(rng, two_shapes=two_shapes, aspect=hh / ww, **spec_kwargs) for _ in range(batch_size)]
    clips, _ = render_batch(specs, num_frames, size, height=hh, width=ww)
    captions = [caption(s) for s in specs]
    max_len = max_len or (MAX_LEN_TWO_SHAPES if two_shapes else MAX_LEN)
    return clips, captions, tokenize_batch(captions, max_len)
