"""Fidelity metrics between two videos (a parallel strategy's output against the exact one, or a jaxvdm
video against the PyTorch reference): PSNR, SSIM and the largest absolute difference.

Inputs are numpy/JAX arrays or :class:`~jaxvdm.video.Video` objects (their ``frames`` are used). Two
conventions for the value range, unless ``data_range`` is given:

* uint8 frames: ``data_range = 255``;
* floating-point frames: jaxvdm's decoded range ``[-1, 1]``, ``data_range = 2``.

Mixing a uint8 and a float array is an error (convert one first, e.g. with ``Video.from_float``). All
arithmetic is in float64.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["psnr", "ssim", "max_abs_error", "mean_abs_error", "fidelity", "SSIM_WINDOW", "SSIM_SIGMA", "SSIM_K1",
           "SSIM_K2"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _arrays(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = getattr(a, "frames", a)
    b = getattr(b, "frames", b)
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {a.shape} vs {b.shape}")
    if (a.dtype == np.uint8) != (b.dtype == np.uint8):
        raise ValueError(f"one video is uint8 and the other {a.dtype if b.dtype == np.uint8 else b.dtype}; convert "
                         f"the float one first (Video.from_float) or pass both as floats")
    return a, b


def _range(a: np.ndarray, data_range) -> float:
    if data_range is not None:
        r = float(data_range)
        if not r > 0:
            raise ValueError(f"data_range must be positive, got {data_range}")
        return r
    if a.dtype == np.uint8:
        return 255.0
    if np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
        raise ValueError(f"integer arrays of dtype {a.dtype} have no default range; pass data_range")
    return 2.0


def max_abs_error(a, b) -> float:
    """``max |a - b|`` over all elements (float64, so uint8 differences do not wrap)."""
    a, b = _arrays(a, b)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def mean_abs_error(a, b) -> float:
    """``mean |a - b|`` over all elements."""
    a, b = _arrays(a, b)
    if a.size == 0:
        return 0.0
    return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def psnr(a, b, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB over all elements (any shape);
    ``inf`` for identical inputs."""
    a, b = _arrays(a, b)
    r = _range(a, data_range)
    if a.size == 0:
        raise ValueError("empty videos have no PSNR")
    mse = float(np.mean(np.square(a.astype(np.float64) - b.astype(np.float64))))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(r * r / mse)


def _gaussian_window() -> np.ndarray:
    x = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    g = np.exp(-x * x / (2 * SSIM_SIGMA ** 2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable correlation of ``x [..., H, W]`` with ``outer(g, g)``, valid region only:
    ``[..., H - n + 1, W - n + 1]``."""
    y = sliding_window_view(x, g.size, axis=-2) @ g  # [..., H - n + 1, W]
    return sliding_window_view(y, g.size, axis=-1) @ g


def _planes(x: np.ndarray) -> np.ndarray:
    """``[F, H, W, C]`` / ``[H, W, C]`` / ``[H, W]`` -> planes ``[P, H, W]`` float64."""
    if x.ndim == 2:
        x = x[None, :, :, None]
    elif x.ndim == 3:
        x = x[None]
    elif x.ndim != 4:
        raise ValueError(f"expected a video [F, H, W, C], a frame [H, W, C] or [H, W], got shape {x.shape}")
    f, h, w, c = x.shape
    return np.moveaxis(x.astype(np.float64), -1, 1).reshape(f * c, h, w)


def ssim(a, b, data_range: float | None = None) -> float:
    """Structural similarity (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
    K2 = 0.03, population (not sample) statistics, computed where the window fits inside the frame.

    Layout ``[F, H, W, C]``, ``[H, W, C]`` or ``[H, W]`` (frames must be at least 11x11). The SSIM map is
    averaged over each frame and channel, then over frames and channels. 1.0 for identical inputs.
    """
    a, b = _arrays(a, b)
    r = _range(a, data_range)
    pa, pb = _planes(a), _planes(b)
    if min(pa.shape[1:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got "
                         f"{pa.shape[1]}x{pa.shape[2]}")
    if pa.shape[0] == 0:
        raise ValueError("empty videos have no SSIM")
    g = _gaussian_window()
    c1, c2 = (SSIM_K1 * r) ** 2, (SSIM_K2 * r) ** 2
    mu_a, mu_b = _filter_valid(pa, g), _filter_valid(pb, g)
    var_a = _filter_valid(pa * pa, g) - mu_a * mu_a
    var_b = _filter_valid(pb * pb, g) - mu_b * mu_b
    cov = _filter_valid(pa * pb, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def fidelity(video_a, video_b, data_range: float | None = None) -> dict:
    """``dict(psnr=dB, ssim=..., max_abs=..., mean_abs=...)`` of two videos ``[F, H, W, C]`` (uint8 with
    range 255, or float in [-1, 1] with range 2, unless ``data_range`` is given; or Video objects).
    ``max_abs`` and ``mean_abs`` are in the videos' own units (0..255 for uint8)."""
    a, b = _arrays(video_a, video_b)
    return dict(psnr=psnr(a, b, data_range), ssim=ssim(a, b, data_range), max_abs=max_abs_error(a, b),
                mean_abs=mean_abs_error(a, b))
