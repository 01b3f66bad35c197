"""Configuration of the Wan DiT, read from diffusers or original-format ``config.json`` files.

One config describes every Wan2.1/Wan2.2 transformer jaxvdm runs: text-to-video (T2V), the Wan2.1
image-to-video and first-last-frame models (an image branch: ``image_dim``, ``added_kv_proj_dim``,
``pos_embed_seq_len``), Wan2.2's I2V (36 input channels, no image branch) and TI2V-5B (48 channels,
per-token timesteps, which need no config field).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["WanConfig"]

# Keys diffusers writes that carry no architecture.
_DIFFUSERS_META = {"_class_name", "_diffusers_version", "_name_or_path"}
# Original ``WanModel`` model types jaxvdm reads. The image branch of an original "i2v"/"flf2v"
# checkpoint is read from its tensors (Wan2.1's I2V has one, Wan2.2's I2V has none; both say "i2v").
ORIGINAL_MODEL_TYPES = ("t2v", "i2v", "flf2v", "ti2v")


@dataclasses.dataclass(frozen=True)
class WanConfig:
    """Architecture of a Wan transformer (diffusers' ``WanTransformer3DModel`` names).

    The defaults are Wan2.1-T2V-1.3B. The image branch (Wan2.1 I2V / FLF2V):

    * ``image_dim``: width of the image-encoder states (CLIP ViT-H/14: 1280); adds the image
      embedder (norm, linear, GELU, linear, norm) whose output joins the cross-attention context;
    * ``added_kv_proj_dim``: when set (it must equal the hidden size), every cross-attention has its
      own image keys/values (``add_k_proj``, ``add_v_proj``, ``norm_added_k``) and attends to the image
      tokens separately, the two outputs summed; when None the image tokens are put before the text
      tokens in the ordinary cross-attention (what diffusers does for such a config);
    * ``pos_embed_seq_len``: a learned position embedding added to the image tokens (FLF2V: 2 x 257,
      the first and the last frame's CLIP tokens).
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
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    pos_embed_seq_len: int | None = None

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
        for name in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or int(v) < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")
        if self.image_dim is None and (self.added_kv_proj_dim is not None or self.pos_embed_seq_len is not None):
            raise ValueError("added_kv_proj_dim and pos_embed_seq_len belong to the image branch: they need image_dim "
                             "(the image-encoder width, 1280 for Wan2.1 I2V/FLF2V)")
        if self.added_kv_proj_dim is not None and self.added_kv_proj_dim != self.hidden_size:
            raise ValueError(f"added_kv_proj_dim={self.added_kv_proj_dim} must equal the hidden size "
                             f"{self.hidden_size}: the image keys/values are projected from the embedded image tokens")

    @property
    def has_image_branch(self) -> bool:
        """Whether the model takes image-encoder states (``image_dim`` is set)."""
        return self.image_dim is not None

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

        An original config carries no image branch (its tensors do: :func:`..keys.original_image_fields`).
        Raises ValueError for unknown keys and invalid values.
        """
        d = dict(d)
        if "dim" in d and "num_heads" in d:  # original Wan layout (WanModel config.json)
            return cls._from_original(d)
        for k in _DIFFUSERS_META:
            d.pop(k, None)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown Wan transformer config keys: {unknown}")
        if "patch_size" in d:
            d["patch_size"] = tuple(d["patch_size"])
        return cls(**d)

    @classmethod
    def _from_original(cls, d: dict) -> "WanConfig":
        if d.get("model_type", "t2v") not in ORIGINAL_MODEL_TYPES:
            raise ValueError(f"model_type {d.get('model_type')!r} is not supported (supported: {ORIGINAL_MODEL_TYPES})")
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
