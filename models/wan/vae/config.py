"""Configuration of the Wan video VAE (the fields of a diffusers ``AutoencoderKLWan`` ``config.json``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["WanVAEConfig"]

_WAN21_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
_WAN21_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """Architecture of an ``AutoencoderKLWan`` (the fields of its ``config.json`` that matter).

    Only the Wan2.1 family is supported: ``is_residual=False``, no ``patch_size``, no encoder
    attention (``attn_scales=[]``). Defaults are the released Wan2.1 VAE.
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
        if self.is_residual:
            raise ValueError("is_residual=True is the Wan2.2 VAE, which jaxvdm does not implement; use a Wan2.1 VAE")
        if self.patch_size not in (None, 1):
            raise ValueError(
                f"patch_size={self.patch_size} (Wan2.2 VAE) is not supported; use a Wan2.1 VAE (patch_size null)"
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

    @property
    def decoder_dim(self) -> int:
        return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along H and W (8 for Wan2.1)."""
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first (4 for Wan2.1)."""
        return 2 ** sum(bool(b) for b in self.temperal_downsample)
