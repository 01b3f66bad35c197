"""Configuration of Wan's CLIP image encoder (the fields of transformers' ``CLIPVisionConfig`` that matter)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax

__all__ = ["ClipVisionConfig", "ACTIVATIONS"]


def _quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "quick_gelu": _quick_gelu,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
}

_SIZES = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "patch_size", "image_size",
          "num_channels")


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig:
    """Architecture of a CLIP vision tower (transformers ``CLIPVisionModel``).

    The defaults are Wan2.1 I2V's image encoder, OpenCLIP ViT-H/14 (laion2B): 32 layers of width
    1280, 16 heads, patches of 14 on 224 x 224 images (257 tokens), exact GELU.
    ``projection_dim`` only sizes the unused ``visual_projection`` of a ``CLIPVisionModelWithProjection``
    checkpoint (checked, not loaded).
    """

    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_attention_heads: int = 16
    num_hidden_layers: int = 32
    patch_size: int = 14
    image_size: int = 224
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    projection_dim: int = 1024

    def __post_init__(self):
        for name in _SIZES + ("projection_dim",):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"CLIP vision config: {name} must be a positive integer, got {v!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"CLIP vision config: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIP vision config: image_size {self.image_size} is not a multiple of patch_size "
                             f"{self.patch_size}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"CLIP vision config: hidden_act {self.hidden_act!r} is not supported "
                             f"(supported: {sorted(ACTIVATIONS)})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_positions(self) -> int:
        """Tokens per image: one class token plus ``(image_size / patch_size)^2`` patches (257 for ViT-H/14)."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClipVisionConfig":
        """Builds the config from a transformers ``CLIPVisionConfig`` ``config.json`` (extra keys ignored).

        Raises ValueError for a full ``CLIPModel`` config (Wan's ``image_encoder/`` is the vision tower
        alone) or a missing or invalid field.
        """
        model_type = d.get("model_type", "clip_vision_model")
        if model_type != "clip_vision_model":
            raise ValueError(f"model_type is {model_type!r}; the image encoder is a CLIP vision tower "
                             f"(model_type 'clip_vision_model', a CLIPVisionModel or CLIPVisionModelWithProjection)")
        missing = [k for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                               "patch_size", "image_size") if k not in d]
        if missing:
            raise ValueError(f"config has no {', '.join(missing)}")
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        if "layer_norm_eps" in kw:
            kw["layer_norm_eps"] = float(kw["layer_norm_eps"])
        return cls(**kw)
