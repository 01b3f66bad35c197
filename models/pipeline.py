"""A video diffusion model as plain data: :class:`Pipeline` (text encoder, transformer, decoder, strides,
defaults) and the size rules every model shares.

Loaders build it (:func:`jaxvdm.models.wan.load_pipeline`, the shipped shapes model); strategies never
see it: :func:`jaxvdm.generate` reads the values they need from it and hands those over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.sharding import Mesh

if TYPE_CHECKING:  # annotations only: the Pipeline holds any model with a WanTransformer's interface
    from jaxvdm.models.wan.transformer.model import WanTransformer

__all__ = ["Pipeline", "SizeError", "latent_shape", "parse_size", "valid_frames"]


class SizeError(ValueError):
    """A video size or frame count the model cannot take; the message names the nearest valid one."""


@dataclasses.dataclass
class Pipeline:
    """A text-to-video model: text encoder, transformer, decoder, and its default settings.

    Attributes:
      name: what to call it in settings and messages.
      transformer: the DiT.
      encode_text: ``list[str] -> [B, L, text_dim]`` float32 (or None: embeddings must be given).
      decode: ``(latents [1, C, T, H, W], mesh | None) -> video [1, 3, F, H, W]`` in ``[-1, 1]``
        (or None: :func:`generate` then returns latents only).
      vae_stride: (t, h, w) compression from pixels to latents (``F = stride_t*(T-1) + 1``).
      defaults: num_frames, height, width, steps, guidance_scale, flow_shift, scheduler, fps,
        negative_prompt; with ``transformer_2`` also ``boundary_ratio`` and ``guidance_scale_2``.
      transformer_2: Wan2.2 A14B's low-noise expert (None: one transformer). ``transformer`` then is the
        high-noise expert, used while a step's timestep ``t >= boundary_ratio * num_train_timesteps``.
      encode_image: image-to-video models only (None otherwise): ``(text, image, last_image, num_frames,
        height, width) -> context``, the text states joined with the image conditioning the strategies
        carry (:class:`jaxvdm.models.wan.i2v.VideoCondition` or, Wan2.2 TI2V, ``FirstFrameCondition``).
    """

    name: str
    transformer: WanTransformer
    encode_text: Callable[[list[str]], Any] | None
    decode: Callable[[jax.Array, Mesh | None], jax.Array] | None
    vae_stride: tuple[int, int, int]
    defaults: dict[str, Any]
    transformer_2: WanTransformer | None = None
    encode_image: Callable | None = None

    @property
    def latent_channels(self) -> int:
        """The channels of the noise the sampler denoises: the transformer's ``out_channels`` (an I2V
        transformer's ``in_channels`` add its conditioning); ``in_channels`` for a config without one."""
        cfg = self.transformer.config
        return getattr(cfg, "out_channels", cfg.in_channels)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        """``(1, C, T, H, W)`` for a video size; raises SizeError naming the nearest valid size."""
        return latent_shape(num_frames, height, width, vae_stride=self.vae_stride,
                            patch=self.transformer.config.patch_size, channels=self.latent_channels, name=self.name)


def latent_shape(num_frames: int, height: int, width: int, *, vae_stride, patch, channels: int,
                 name: str = "this model") -> tuple[int, int, int, int, int]:
    """``(1, channels, T, H, W)`` of a video of ``num_frames x height x width`` for a model with VAE stride
    ``(st, sh, sw)`` and DiT patch ``(pt, ph, pw)``: ``T = (num_frames - 1) / st + 1`` must be a multiple of
    ``pt``, height and width multiples of ``sh * ph`` and ``sw * pw``. Raises SizeError naming the nearest
    valid value (never truncates)."""
    st, sh, sw = vae_stride
    pt, ph, pw = patch
    for what, v in (("num_frames", num_frames), ("height", height), ("width", width)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise SizeError(f"{what} must be a positive integer, got {v!r}")
    if not valid_frames(num_frames, st, pt):
        near = _nearest(num_frames, lambda f: valid_frames(f, st, pt))
        rule = f"{st}*k+1" if st > 1 else "any count"
        if pt > 1:
            rule += f" giving a latent length (k+1) that is a multiple of the patch {pt}"
        raise SizeError(f"num_frames={num_frames} is not valid for {name}: frames must be {rule}; nearest valid: {near}")
    for what, v, s, p in (("height", height, sh, ph), ("width", width, sw, pw)):
        m = s * p
        if v % m:
            lo = max(m, v // m * m)
            hi = lo + m
            near = lo if v - lo <= hi - v else hi
            raise SizeError(f"{what}={v} must be a multiple of {m} for {name} (VAE stride {s} x patch {p}); nearest valid: {near}")
    t = (num_frames - 1) // st + 1
    return (1, channels, t, height // sh, width // sw)


def valid_frames(f: int, st: int, pt: int) -> bool:
    """Whether ``f`` video frames encode to a whole latent (``st * k + 1``) whose length is a multiple of ``pt``."""
    return f >= 1 and (f - 1) % st == 0 and ((f - 1) // st + 1) % pt == 0


def _nearest(v: int, ok) -> int:
    for delta in range(0, 10_000):
        for cand in (v - delta, v + delta):
            if cand >= 1 and ok(cand):
                return cand
    raise ValueError("no valid size found")


def parse_size(text: str) -> tuple[int, int]:
    """``"480x832"`` -> ``(480, 832)`` (height, width); raises ValueError naming the format otherwise."""
    h, sep, w = str(text).lower().partition("x")
    if not sep or not h.strip().isdigit() or not w.strip().isdigit():
        raise ValueError(f"--size {text!r}: write HEIGHTxWIDTH, e.g. --size 480x832")
    return int(h), int(w)
