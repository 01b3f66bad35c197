"""Configuration of the Wan video VAE (the fields of a diffusers ``AutoencoderKLWan`` ``config.json``).

Two families share the class: Wan2.1 (the defaults) and Wan2.2 (:meth:`WanVAEConfig.wan22`, the
TI2V-5B VAE: ``is_residual=True``, ``z_dim=48``, ``patch_size=2``, 4x16x16 compression).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["WanVAEConfig"]

_WAN21_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
_WAN21_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip
# Wan2.2 (TI2V-5B) VAE latent statistics, from its published config.json.
_WAN22_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
_WAN22_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """Architecture of an ``AutoencoderKLWan`` (the fields of its ``config.json`` that matter).

    Defaults are the released Wan2.1 VAE; :meth:`wan22` is the released Wan2.2 (TI2V-5B) VAE.
    ``is_residual`` selects Wan2.2's residual down/up blocks, ``patch_size`` (None or 1: none) the
    pixel patch folded into ``in_channels``/``out_channels`` (Wan2.2: 2, so 12 = 3 * 2 * 2).
    Encoder attention (``attn_scales``) is not supported (no released Wan VAE uses it).

    diffusers config keys that do not change the computation are ignored by :meth:`from_dict`:
    ``scale_factor_spatial``/``scale_factor_temporal`` (derived here as :attr:`spatial_factor` and
    :attr:`temporal_factor`), ``dropout``, and ``clip_output`` (diffusers' ``AutoencoderKLWan``
    does not read it and always clamps the decoded video to [-1, 1]; so does :class:`WanVAE`).
    """

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = _WAN21_MEAN
    latents_std: tuple[float, ...] = _WAN21_STD
    in_channels: int = 3
    out_channels: int = 3
    is_residual: bool = False
    patch_size: int | None = None

    def __post_init__(self):
        if self.patch_size is not None and (not isinstance(self.patch_size, (int, np.integer)) or self.patch_size < 1):
            raise ValueError(f"patch_size must be null or a positive integer (Wan2.2: 2), got {self.patch_size!r}")
        p2 = self.patch * self.patch
        for name in ("in_channels", "out_channels"):
            if int(getattr(self, name)) % p2:
                raise ValueError(
                    f"{name}={getattr(self, name)} is not a multiple of patch_size**2 = {p2}: the {self.patch}x"
                    f"{self.patch} pixel patch is folded into the channels (Wan2.2: 12 = 3 * 2 * 2)"
                )
        if tuple(self.attn_scales):
            raise ValueError(
                f"attn_scales={list(self.attn_scales)}: encoder attention is not supported (the reference's "
                "chunked encoder cannot run it either); Wan2.1 uses attn_scales=[]"
            )
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample has {len(self.temperal_downsample)} entries but dim_mult "
                f"{list(self.dim_mult)} needs {len(self.dim_mult) - 1} (one per downsampling level)"
            )
        for name in ("base_dim", "z_dim", "num_res_blocks", "in_channels", "out_channels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.is_residual:
            self._check_residual_shortcuts()

    def _check_residual_shortcuts(self) -> None:
        """Wan2.2's shortcuts regroup channels: each level's factor must divide evenly (as diffusers asserts)."""
        last = len(self.dim_mult) - 1
        enc = [self.base_dim * u for u in (1, *self.dim_mult)]
        for i, (cin, cout) in enumerate(zip(enc[:-1], enc[1:])):
            f = (2 if i != last and self.temperal_downsample[i] else 1) * (4 if i != last else 1)
            if cin * f % cout:
                raise ValueError(f"is_residual: encoder level {i} averages {cin}*{f} channels into {cout}, which does "
                                 "not divide; check base_dim and dim_mult")
        dec = [self.decoder_dim * u for u in (self.dim_mult[-1], *self.dim_mult[::-1])]
        up = self.temperal_downsample[::-1]
        for i, (cin, cout) in enumerate(zip(dec[:-1], dec[1:])):
            if i != last and cout * (2 if up[i] else 1) * 4 % cin:
                raise ValueError(f"is_residual: decoder level {i} duplicates {cin} channels into {cout} times its "
                                 "factor, which does not divide; check decoder_base_dim and dim_mult")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WanVAEConfig:
        """From a diffusers ``config.json`` dict; unknown keys (``_class_name``, ``dropout``, ...) are ignored."""
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in d or d[f.name] is None and f.name not in ("decoder_base_dim", "patch_size"):
                continue
            v = d[f.name]
            if v is not None:
                if f.name in ("dim_mult", "attn_scales", "latents_mean", "latents_std"):
                    v = tuple(v)
                elif f.name == "temperal_downsample":
                    v = tuple(bool(b) for b in v)
            kw[f.name] = v
        return cls(**kw)

    @classmethod
    def wan22(cls) -> WanVAEConfig:
        """The released Wan2.2 VAE (``Wan-AI/Wan2.2-TI2V-5B-Diffusers``, ``vae/config.json``)."""
        return cls(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                   temperal_downsample=(False, True, True), latents_mean=_WAN22_MEAN, latents_std=_WAN22_STD,
                   in_channels=12, out_channels=12, is_residual=True, patch_size=2)

    @property
    def decoder_dim(self) -> int:
        return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim

    @property
    def patch(self) -> int:
        """Side of the pixel patch folded into channels (1: none; Wan2.2: 2)."""
        return 1 if self.patch_size is None else int(self.patch_size)

    @property
    def video_channels(self) -> int:
        """Channels of the video the VAE encodes (``in_channels / patch**2``: 3 for both releases)."""
        return self.in_channels // (self.patch * self.patch)

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along H and W (8 for Wan2.1, 16 for Wan2.2: its 2x2 patch times 8)."""
        return self.patch * 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first (4 for Wan2.1)."""
        return 2 ** sum(bool(b) for b in self.temperal_downsample)
