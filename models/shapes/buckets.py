"""Training buckets of the varied-shape mix: clip sizes, and windows cut out of longer and larger clips.

A :class:`Bucket` is one training clip size ``window = (f, h, w)`` (frames, pixels) with a rule for where it
sits in a ``whole = (F, H, W)`` clip: ``window == whole`` is a whole clip; otherwise every batch draws one
token-aligned start and cuts that window out of the whole render (:class:`jaxvdm.models.shapes.data.Window`,
rendered directly). The model is called with the window's RoPE token offset in the whole (``rope =
"global"``, as Latent Parallelism runs its windows) or with window-local positions from 0 (``"local"``, as
DualParal runs its blocks). Every clip of a bucket is drawn from the whole clip's distribution
(:func:`jaxvdm.models.shapes.data.sample_spec`, for the whole's aspect ratio) and kept only when its caption
holds for the window (:mod:`jaxvdm.models.shapes.truth`), so no crop loses its shape or shows another motion.

Each training batch is one bucket (one window size per batch: one compile per size; the window's start and
offset are traced values). :data:`MIXES` names the bucket lists: ``"varied"`` (built by :func:`varied_mix`
from the windows the strategies use at the default size, :func:`strategy_windows`), ``"default"`` (the
shipped model's one clip size), ``"smoke"`` (tiny, for CPU tests) and ``"varied-smoke"`` (three buckets of
the varied mix, for a CPU smoke of its recipe).

The windows of the strategies (at the default ``16 x 32 x 32`` clip, patch ``1 x 4 x 4``: a ``16 x 8 x 8``
token grid), computed here without :mod:`jaxvdm.sharding` (the layering rule) and checked against it by the
tests:

* Latent Parallelism, K devices along T, H or W at overlap r: core ``c = ceil(n/K)`` patches, overlap
  ``o = floor(r c)`` per side. The paper's longest clipped window is ``c + o`` at K = 2 and ``c + 2o`` at
  K >= 3 when there are interior windows; the run-time partition (``lp_partition.uniform_windows``) gives
  every window that longest length (an edge window shifted inwards). Windows keep their global RoPE
  positions.
* DualParal with ``B`` block and ``C`` context frames runs windows of ``B + C`` frames of the whole frame
  size, with window-local positions from 0, whatever the number of stages or the clip's length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from jaxvdm.models.shapes import data, truth

__all__ = ["PATCH", "MIN_WINDOW_SIDE", "Bucket", "BucketBatch", "StrategyWindow", "lp_window_lengths",
           "lp_windows", "dualparal_windows", "strategy_windows", "coverage", "varied_mix", "MIXES", "get_mix",
           "EVAL_VIEWS", "choose_bucket", "draw_batch", "batch_for_step"]

PATCH = (1, 4, 4)
#: A window narrower than this (pixels) holds no captioned shape in view at the default size: at 8 px the
#: caption holds for under 1 % of drawn clips (never legibly), at 4 px for none; such windows are not drawn.
MIN_WINDOW_SIDE = 16
_ROPE = ("global", "local")


@dataclass(frozen=True)
class Bucket:
    """One clip size of the training mix and where it sits in its whole clip (see the module docstring).

    Attributes:
      name: a short label (logs, evaluation keys).
      whole: ``(F, H, W)`` of the whole clip (frames, pixels; H and W multiples of the patch).
      window: ``(f, h, w)`` of the training clip, inside ``whole`` (equal to it for a whole clip).
      rope: ``"global"`` (RoPE offset = the window's start in tokens) or ``"local"`` (offset 0).
      weight: the bucket's share of the mix (normalised over the mix).
    """

    name: str
    whole: tuple[int, int, int]
    window: tuple[int, int, int]
    rope: str = "global"
    weight: float = 1.0

    def __post_init__(self):
        if self.rope not in _ROPE:
            raise ValueError(f"bucket {self.name!r}: rope must be one of {_ROPE}, got {self.rope!r}")
        if not self.weight > 0:
            raise ValueError(f"bucket {self.name!r}: weight must be positive, got {self.weight}")
        for what, dims in (("whole", self.whole), ("window", self.window)):
            if len(dims) != 3 or any(int(d) != d or d < 1 for d in dims) or any(d % p for d, p in zip(dims, PATCH)):
                raise ValueError(f"bucket {self.name!r}: {what} {dims} must be three positive sizes (F, H, W) in "
                                 f"multiples of the patch {PATCH}")
        if any(a > b for a, b in zip(self.window, self.whole)):
            raise ValueError(f"bucket {self.name!r}: window {self.window} does not fit its whole clip {self.whole}")

    @property
    def cropped(self) -> bool:
        """Whether the training clip is a window of a larger or longer whole clip."""
        return tuple(self.window) != tuple(self.whole)

    def starts(self) -> list[range]:
        """The token-aligned starts of the window along (t, y, x): one range per axis."""
        return [range(0, n - m + 1, p) for n, m, p in zip(self.whole, self.window, PATCH)]

    def draw_window(self, rng: np.random.Generator) -> data.Window:
        """A window position, uniform over the token-aligned starts of each axis."""
        start = tuple(int(r[rng.integers(len(r))]) for r in self.starts())
        return data.Window(start, tuple(self.window))

    def rope_offset(self, window: data.Window) -> tuple[int, int, int]:
        """The (t, h, w) token offset the model is called with for ``window``."""
        return window.token_offset(PATCH) if self.rope == "global" else (0, 0, 0)


class BucketBatch(NamedTuple):
    """A drawn batch: its bucket, window (start and size in the whole), RoPE offset (tokens), specs, captions."""

    bucket: Bucket
    window: data.Window
    offset: tuple[int, int, int]
    specs: list
    captions: list


# ------------------------------------------------------------------------------------- strategy windows

@dataclass(frozen=True)
class StrategyWindow:
    """One window size a strategy shows the model: ``size = (f, h, w)`` out of ``whole``, RoPE ``rope``."""

    strategy: str
    setting: str
    whole: tuple[int, int, int]
    size: tuple[int, int, int]
    rope: str


def _floor_ratio(r: float, c: int) -> int:
    x = float(r) * int(c)
    return int(math.floor(x + 1e-9 * max(1.0, abs(x))))  # a decimal ratio gives the intended integer


def lp_window_lengths(n_patches: int, k: int, overlap: float) -> dict[str, int]:
    """Window lengths (patches) of Latent Parallelism on an axis of ``n_patches`` over ``k`` devices:
    ``"paper"``, the longest of the paper's clipped windows, and ``"runtime"``, the one length of the run-time
    partition (see the module docstring; the two agree: the run-time windows are the paper's longest)."""
    if k < 1 or n_patches < 1 or not 0 <= overlap <= k - 1:
        raise ValueError(f"need k >= 1, n_patches >= 1 and 0 <= overlap <= k-1, got k={k}, n={n_patches}, "
                         f"overlap={overlap}")
    c = 1 if n_patches < k else -(-n_patches // k)
    o = _floor_ratio(overlap, c)
    windows = [(max(0, j * c - o), min(n_patches, (j + 1) * c + o)) for j in range(k)]
    paper = max(b - a for a, b in windows if a < b)
    return {"paper": paper, "runtime": paper}


def lp_windows(whole=(16, 32, 32), ks=(2, 4, 8), overlaps=(0.25, 0.5)) -> list[StrategyWindow]:
    """Every window size of Latent Parallelism on a ``whole`` clip, at each K, overlap and axis (T, H, W),
    in both the paper's and the run-time lengths. Axes with fewer patches than K are skipped (the
    sampler partitions another axis there)."""
    out = []
    grid = [n // p for n, p in zip(whole, PATCH)]
    for k in ks:
        for r in overlaps:
            for ax, name in enumerate("THW"):
                if grid[ax] < k:
                    continue
                for kind, length in lp_window_lengths(grid[ax], k, r).items():
                    size = list(whole)
                    size[ax] = length * PATCH[ax]
                    out.append(StrategyWindow("lp", f"K={k} overlap={r} on {name} ({kind})", tuple(whole),
                                              tuple(size), "global"))
    return out


#: DualParal settings to cover: the preset's 4 + 4 frames on the 16-frame clip (1, 2 and 4 stages) and on
#: the 160-frame clip of benchmarks/long_clip.py (4 stages). Stages split layers, never frames.
DUALPARAL_SETTINGS = (("16 frames, 1 stage", (16, 32, 32), 4, 4), ("16 frames, 2 stages", (16, 32, 32), 4, 4),
                      ("16 frames, 4 stages", (16, 32, 32), 4, 4), ("160 frames, 4 stages", (160, 32, 32), 4, 4))


def dualparal_windows(settings=DUALPARAL_SETTINGS) -> list[StrategyWindow]:
    """The ``B + C``-frame windows (window-local positions) of DualParal for each ``(label, whole, B, C)``.
    Raises ValueError for a clip length that is not ``C + Nb * B`` (as the sampler does)."""
    out = []
    for label, whole, b, c in settings:
        if (whole[0] - c) % b or whole[0] < b + c:
            raise ValueError(f"dualparal needs C + Nb*B frames: {whole[0]} frames with B={b}, C={c} ({label})")
        out.append(StrategyWindow("dualparal", f"B={b} C={c}, {label}", tuple(whole), (b + c, whole[1], whole[2]),
                                  "local"))
    return out


def strategy_windows() -> list[StrategyWindow]:
    """LP windows at K = 2, 4, 8, overlaps 0.25 and 0.5 on the default clip, and DualParal's windows."""
    return lp_windows() + dualparal_windows()


def coverage(windows: list[StrategyWindow], mix: tuple[Bucket, ...]) -> list[tuple[StrategyWindow, Bucket | None, str]]:
    """For each strategy window the bucket that trains it (same size and RoPE rule; a global window also
    the same whole clip, so its offsets are the strategy's), or None with the reason it is not trained."""
    out = []
    for sw in windows:
        if min(sw.size[1:]) < MIN_WINDOW_SIDE:
            out.append((sw, None, f"{min(sw.size[1:])} px side: narrower than {MIN_WINDOW_SIDE} px, no captioned "
                                  f"shape stays in view"))
            continue
        hit = next((b for b in mix if tuple(b.window) == sw.size and b.rope == sw.rope
                    and (sw.rope == "local" and b.whole[1:] == sw.whole[1:] or tuple(b.whole) == sw.whole)), None)
        out.append((sw, hit, "" if hit else "no bucket of this size and RoPE rule"))
    return out


# ---------------------------------------------------------------------------------------------- mixes

def varied_mix() -> tuple[Bucket, ...]:
    """The varied-shape training mix (weights sum to 1):

    * 45 % the default ``16 x 32 x 32`` clip (what the shipped model was trained on: keeps its adherence);
    * 9 % whole clips of 4, 8, 12, 24 and 32 frames at 32 x 32; 9 % whole 16-frame clips of 48 x 32,
      32 x 48, 48 x 48, 24 x 24 and 16 x 16 pixels;
    * 25 % Latent Parallelism windows of the default clip with their global offsets: every window size of
      :func:`lp_windows` at least :data:`MIN_WINDOW_SIDE` pixels wide that is not the whole clip;
    * 6 % windows of longer and larger clips at global offsets: 16 and 8 frames of a 32-frame clip,
      32 x 32 of a 48 x 48 clip;
    * 6 % DualParal windows (8 frames, local positions) of 16- and 32-frame clips.
    """
    default = (16, 32, 32)
    mix = [Bucket("default", default, default, weight=0.45)]
    mix += [Bucket(f"whole {f}x32x32", (f, 32, 32), (f, 32, 32), weight=0.09 / 5) for f in (4, 8, 12, 24, 32)]
    mix += [Bucket(f"whole 16x{h}x{w}", (16, h, w), (16, h, w), weight=0.09 / 5)
            for h, w in ((48, 32), (32, 48), (48, 48), (24, 24), (16, 16))]
    lp = sorted({sw.size for sw in lp_windows(default) if sw.size != default and min(sw.size[1:]) >= MIN_WINDOW_SIDE})
    mix += [Bucket(f"lp {f}x{h}x{w} of 16x32x32", default, size, weight=0.25 / len(lp)) for size in lp
            for f, h, w in [size]]
    mix += [Bucket("16x32x32 of 32x32x32", (32, 32, 32), (16, 32, 32), weight=0.02),
            Bucket("8x32x32 of 32x32x32", (32, 32, 32), (8, 32, 32), weight=0.02),
            Bucket("32x32 of 16x48x48", (16, 48, 48), (16, 32, 32), weight=0.02)]
    mix += [Bucket("dualparal 8 of 16", default, (8, 32, 32), rope="local", weight=0.04),
            Bucket("dualparal 8 of 32", (32, 32, 32), (8, 32, 32), rope="local", weight=0.02)]
    return tuple(mix)


def _smoke_mix() -> tuple[Bucket, ...]:
    """Tiny buckets for CPU tests, all of one window size (one compile): a whole clip, windows at time and
    space offsets of longer, larger and non-square clips, and a window with local positions."""
    return (Bucket("whole 4x16x16", (4, 16, 16), (4, 16, 16)),
            Bucket("4x16x16 of 8x16x16", (8, 16, 16), (4, 16, 16)),
            Bucket("16x16 of 4x24x24", (4, 24, 24), (4, 16, 16)),
            Bucket("4x16x16 of 8x24x16", (8, 24, 16), (4, 16, 16)),
            Bucket("local 4 of 8x16x16", (8, 16, 16), (4, 16, 16), rope="local"))


def _varied_smoke_mix() -> tuple[Bucket, ...]:
    """Three buckets of the varied mix in two window sizes, for a CPU smoke of the varied recipe at the
    shipped model's size: the default clip, an LP window at its global offset and a DualParal window at local
    positions (both 8 x 32 x 32: one compile)."""
    keep = ("default", "lp 8x32x32 of 16x32x32", "dualparal 8 of 16")
    return tuple(Bucket(b.name, b.whole, b.window, b.rope, 1.0) for b in varied_mix() if b.name in keep)


def default_mix(frames: int = 16, size: int = 32) -> tuple[Bucket, ...]:
    """One bucket: whole clips of ``frames x size x size`` (the shipped model's training data)."""
    return (Bucket("default", (frames, size, size), (frames, size, size)),)


MIXES = {"default": default_mix, "varied": varied_mix, "smoke": _smoke_mix, "varied-smoke": _varied_smoke_mix}


def get_mix(name: str, frames: int = 16, size: int = 32) -> tuple[Bucket, ...]:
    """The bucket list called ``name`` (``frames``/``size`` apply to ``"default"`` only)."""
    if name not in MIXES:
        raise ValueError(f"unknown mix {name!r}; choose from {sorted(MIXES)}")
    return MIXES[name](frames, size) if name == "default" else MIXES[name]()


#: Where training evaluates a varied model: the default clip, three other sizes, and strategy windows.
EVAL_VIEWS = (Bucket("default", (16, 32, 32), (16, 32, 32)),
              Bucket("whole 8x32x32", (8, 32, 32), (8, 32, 32)),
              Bucket("whole 32x32x32", (32, 32, 32), (32, 32, 32)),
              Bucket("whole 16x48x32", (16, 48, 32), (16, 48, 32)),
              Bucket("lp K=4 T: 8x32x32 of 16x32x32", (16, 32, 32), (8, 32, 32)),
              Bucket("lp K=4 H: 16x16x32 of 16x32x32", (16, 32, 32), (16, 16, 32)),
              Bucket("lp K=4 W: 16x32x16 of 16x32x32", (16, 32, 32), (16, 32, 16)),
              Bucket("lp K=2 T: 12x32x32 of 16x32x32", (16, 32, 32), (12, 32, 32)),
              Bucket("dualparal 8 of 16", (16, 32, 32), (8, 32, 32), rope="local"))


# ---------------------------------------------------------------------------------------------- drawing

def choose_bucket(rng: np.random.Generator, mix: tuple[Bucket, ...]) -> Bucket:
    """A bucket of ``mix`` drawn with probability proportional to its weight."""
    w = np.array([b.weight for b in mix], np.float64)
    return mix[int(rng.choice(len(mix), p=w / w.sum()))]


def draw_batch(rng, bucket: Bucket, batch_size: int, *, two_shapes: float = 0.0, long_travel: bool = True,
               evident: bool = False, max_tries: int = 400, **spec_kwargs) -> BucketBatch:
    """``batch_size`` clips of one bucket at one window: the window drawn first (for a cropped bucket), then
    each spec drawn from the whole clip's distribution (a two-shape clip with probability ``two_shapes``)
    and kept only if its caption holds for the window (with ``evident``, only if the evaluator can read it
    there: evaluation prompts). Extra keyword arguments go to ``data.sample_spec``.

    ``rng``: anything ``data.to_rng`` takes (same seed, same batch). Raises ValueError when fewer than one
    in ``max_tries`` drawn clips hold (a window too small for the whole clip's shapes), naming the bucket.
    """
    rng = data.to_rng(rng)
    whole = tuple(bucket.whole)
    # a whole clip draws no window: its batches are data.sample_spec's stream, as before buckets
    window = bucket.draw_window(rng) if bucket.cropped else data.Window((0, 0, 0), whole)
    aspect = whole[1] / whole[2]
    specs: list = []
    tries = 0
    chunk = batch_size  # then more of at least 32 while too few hold
    while len(specs) < batch_size:
        if tries >= max_tries * batch_size:
            raise ValueError(f"bucket {bucket.name!r}: the caption held for only {len(specs)} of {tries} clips "
                             f"drawn for window {window}; the window is too small for the shapes of its whole clip "
                             f"{whole} (use a window at least {MIN_WINDOW_SIDE} px wide)")
        cand = [data.sample_spec(rng, two_shapes=bool(two_shapes and rng.random() < two_shapes),
                                 long_travel=long_travel, aspect=aspect, **spec_kwargs) for _ in range(chunk)]
        tries += chunk
        chunk = max(batch_size, 32)
        ok = truth.holds_mask(cand, whole, window)
        if evident:
            ok = [o and truth.caption_evident(s, whole, window) for s, o in zip(cand, ok)]
        specs += [s for s, o in zip(cand, ok) if o]
    specs = specs[:batch_size]
    return BucketBatch(bucket, window, bucket.rope_offset(window), specs, [data.caption(s) for s in specs])


def batch_for_step(seed: int, step: int, mix: tuple[Bucket, ...], batch_size: int, **kwargs) -> BucketBatch:
    """Training batch ``step`` of a run: its bucket, window and clips follow from ``(seed, step)`` alone, so
    a resumed run draws the same batches (keyword arguments go to :func:`draw_batch`)."""
    rng = data.to_rng(seed * 1_000_003 + step)
    bucket = mix[0] if len(mix) == 1 else choose_bucket(rng, mix)
    return draw_batch(rng, bucket, batch_size, **kwargs)
