"""Configuration of the UMT5 text encoder (the fields of transformers' ``UMT5Config`` that matter)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax

__all__ = ["UMT5EncoderConfig", "ACTIVATIONS"]

ACTIVATIONS = {
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class UMT5EncoderConfig:
    """Architecture of a UMT5 encoder (the fields of transformers' ``UMT5Config`` that matter).

    ``dense_act_fn``/``is_gated_act`` are derived from ``feed_forward_proj`` exactly as transformers
    does (``"gated-gelu"`` -> gated, ``"gelu_new"``), not read from config.json.
    """

    vocab_size: int
    d_model: int
    d_kv: int
    num_heads: int
    d_ff: int
    num_layers: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dense_act_fn: str = "gelu_new"
    is_gated_act: bool = True

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"UMT5 config: {name} must be a positive integer, got {v!r}")
        if self.relative_attention_num_buckets < 4:
            raise ValueError("UMT5 config: relative_attention_num_buckets must be at least 4 (bidirectional buckets)")
        if self.dense_act_fn not in ACTIVATIONS:
            raise ValueError(
                f"UMT5 config: activation {self.dense_act_fn!r} is not supported (supported: {sorted(ACTIVATIONS)})"
            )
        if not self.is_gated_act:
            raise ValueError("UMT5 config: only the gated feed-forward (feed_forward_proj 'gated-*') is supported")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "UMT5EncoderConfig":
        """Builds the config from a transformers ``config.json`` dict (extra keys are ignored).

        Raises ValueError if a size field is missing, the model is not UMT5 (T5/mT5 share one
        position bias between layers, so their weights would not fit), or the feed-forward type is
        not a supported gated one.
        """
        model_type = d.get("model_type", "umt5")
        if model_type != "umt5":
            raise ValueError(
                f"model_type is {model_type!r}; this encoder is UMT5 (model_type 'umt5', a position bias per layer)"
            )
        required = ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"config has no {', '.join(missing)}")
        ffp = str(d.get("feed_forward_proj", "gated-gelu"))
        parts = ffp.split("-")
        if (len(parts) > 1 and parts[0] != "gated") or len(parts) > 2:
            raise ValueError(f"feed_forward_proj {ffp!r} is not of the form 'act' or 'gated-act'")
        act = "gelu_new" if ffp == "gated-gelu" else parts[-1]
        return cls(
            vocab_size=d["vocab_size"],
            d_model=d["d_model"],
            d_kv=d["d_kv"],
            num_heads=d["num_heads"],
            d_ff=d["d_ff"],
            num_layers=d["num_layers"],
            relative_attention_num_buckets=d.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=d.get("relative_attention_max_distance", 128),
            layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-6)),
            dense_act_fn=act,
            is_gated_act=parts[0] == "gated",
        )
