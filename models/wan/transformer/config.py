"""Configuration of the Wan2.1 DiT, read from diffusers or original-format ``config.json`` files."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["WanConfig"]

# Keys diffusers writes that carry no architecture (or that must be None for text-to-video).
_DIFFUSERS_META = {"_class_name", "_diffusers_version", "_name_or_path"}
_MUST_BE_NONE = ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")


@dataclasses.dataclass(frozen=True)
class WanConfig:
    """Architecture of a Wan2.1 text-to-video transformer (diffusers' ``WanTransformer3DModel`` names).

    The defaults are Wan2.1-T2V-1.3B.
    """

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 12
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 8960
    num_layers: int = 30
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_max_seq_len: int = 1024

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive ints (t, h, w), got {self.patch_size}")
        for name in ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
                     "freq_dim", "ffn_dim", "num_layers", "rope_max_seq_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.attention_head_dim % 2 or self.freq_dim % 2:
            raise ValueError("attention_head_dim and freq_dim must be even")
        if self.qk_norm not in (None, "rms_norm_across_heads"):
            raise ValueError(f"qk_norm {self.qk_norm!r} is not supported (Wan2.1 uses 'rms_norm_across_heads')")

    @property
    def hidden_size(self) -> int:
        """D = heads x head_dim."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def patch_volume(self) -> int:
        return self.patch_size[0] * self.patch_size[1] * self.patch_size[2]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WanConfig":
        """Builds a config from a diffusers ``WanTransformer3DModel`` or original Wan ``WanModel`` config.json.

        Raises ValueError for image-to-video configs (not supported) and for unknown keys.
        """
        d = dict(d)
        if "dim" in d and "num_heads" in d:  # original Wan layout (WanModel config.json)
            return cls._from_original(d)
        for k in _DIFFUSERS_META:
            d.pop(k, None)
        for k in _MUST_BE_NONE:
            value = d.pop(k, None)
            if value is not None:
                raise ValueError(f"config has {k}={value!r}: only text-to-video Wan2.1 models are supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown Wan transformer config keys: {unknown}")
        if "patch_size" in d:
            d["patch_size"] = tuple(d["patch_size"])
        return cls(**d)

    @classmethod
    def _from_original(cls, d: dict) -> "WanConfig":
        if d.get("model_type", "t2v") != "t2v":
            raise ValueError(f"model_type {d.get('model_type')!r}: only text-to-video ('t2v') is supported")
        dim, heads = int(d["dim"]), int(d["num_heads"])
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {heads}")
        return cls(
            patch_size=tuple(d.get("patch_size", (1, 2, 2))),
            num_attention_heads=heads,
            attention_head_dim=dim // heads,
            in_channels=int(d.get("in_dim", 16)),
            out_channels=int(d.get("out_dim", 16)),
            text_dim=int(d.get("text_dim", 4096)),
            freq_dim=int(d.get("freq_dim", 256)),
            ffn_dim=int(d["ffn_dim"]),
            num_layers=int(d["num_layers"]),
            cross_attn_norm=bool(d.get("cross_attn_norm", True)),
            eps=float(d.get("eps", 1e-6)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The diffusers ``WanTransformer3DModel`` config values (JSON-serialisable)."""
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    def token_grid(self, latent_thw: tuple[int, int, int]) -> tuple[int, int, int]:
        """Token grid (T', H', W') of a latent of size (T, H, W); raises if not divisible by the patch."""
        t, h, w = latent_thw
        pt, ph, pw = self.patch_size
        if t % pt or h % ph or w % pw:
            raise ValueError(
                f"latent size (T, H, W) = {(t, h, w)} is not a multiple of the patch size {self.patch_size}"
            )
        return t // pt, h // ph, w // pw
