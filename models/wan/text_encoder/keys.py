"""The UMT5 encoder's checkpoint key map: transformers ``UMT5EncoderModel`` tensor names and shapes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jaxvdm.models.checkpoint import check_tensors
from jaxvdm.models.wan.text_encoder.config import UMT5EncoderConfig

__all__ = ["text_encoder_tensor_shapes", "params_from_transformers"]

# The token embedding: transformers' save_pretrained writes ``shared.weight`` (the tied copy
# ``encoder.embed_tokens.weight`` is dropped); when a checkpoint holds both with different values,
# transformers unties them and the encoder runs on ``encoder.embed_tokens.weight``, so that one wins.
_EMBED_SAVED = "shared.weight"
_EMBED_USED = "encoder.embed_tokens.weight"


# (our name under layers/, transformers name inside encoder.block.{i}., transpose?)
_LAYER_MAP = [
    ("rel_bias", "layer.0.SelfAttention.relative_attention_bias.weight", False),
    ("attn_norm", "layer.0.layer_norm.weight", False),
    ("q", "layer.0.SelfAttention.q.weight", True),
    ("k", "layer.0.SelfAttention.k.weight", True),
    ("v", "layer.0.SelfAttention.v.weight", True),
    ("o", "layer.0.SelfAttention.o.weight", True),
    ("ffn_norm", "layer.1.layer_norm.weight", False),
    ("wi_0", "layer.1.DenseReluDense.wi_0.weight", True),
    ("wi_1", "layer.1.DenseReluDense.wi_1.weight", True),
    ("wo", "layer.1.DenseReluDense.wo.weight", True),
]


def text_encoder_tensor_shapes(cfg: UMT5EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a transformers ``UMT5EncoderModel`` except the embedding, with its PyTorch shape.

    (The embedding is ``shared.weight`` and/or ``encoder.embed_tokens.weight``, ``[vocab, d_model]``.)
    """
    d, inner, f = cfg.d_model, cfg.inner_dim, cfg.d_ff
    per_layer = {
        "rel_bias": (cfg.relative_attention_num_buckets, cfg.num_heads),
        "attn_norm": (d,), "ffn_norm": (d,),
        "q": (inner, d), "k": (inner, d), "v": (inner, d), "o": (d, inner),
        "wi_0": (f, d), "wi_1": (f, d), "wo": (d, f),
    }
    shapes = {"encoder.final_layer_norm.weight": (d,)}
    for i in range(cfg.num_layers):
        for ours, theirs, _ in _LAYER_MAP:
            shapes[f"encoder.block.{i}.{theirs}"] = per_layer[ours]
    return shapes


def params_from_transformers(cfg: UMT5EncoderConfig, sd: Mapping[str, np.ndarray], *, source: str = "checkpoint",
                             param_dtype=np.float32, wo_dtype=np.float32) -> dict:
    """Converts a transformers UMT5 encoder state dict to our parameter tree (numpy arrays).

    The embedding is ``encoder.embed_tokens.weight`` if present, else ``shared.weight`` (what
    ``save_pretrained`` writes). These are tied in transformers; if a checkpoint holds both with
    different values transformers unties them and the encoder uses ``encoder.embed_tokens.weight``,
    and so do we. Linear weights ``[out, in]`` become kernels ``[in, out]``; per-layer tensors are
    stacked on a leading layer axis; each tensor is cast to its storage dtype before stacking.

    Raises CheckpointError naming every missing, unexpected or mis-shaped tensor.
    """
    expected = text_encoder_tensor_shapes(cfg)
    present = [k for k in (_EMBED_USED, _EMBED_SAVED) if k in sd] or [_EMBED_SAVED]
    for k in present:  # a missing embedding is reported under the name save_pretrained writes
        expected[k] = (cfg.vocab_size, cfg.d_model)
    check_tensors(expected, sd, source=source)

    def cast(a, dt, transpose=False):
        a = np.asarray(a)
        return (a.T if transpose else a).astype(dt)

    layers = {}
    for ours, theirs, transpose in _LAYER_MAP:
        dt = wo_dtype if ours == "wo" else param_dtype
        layers[ours] = np.stack([cast(sd[f"encoder.block.{i}.{theirs}"], dt, transpose) for i in range(cfg.num_layers)])
    return {
        "embed": cast(sd[present[0]], param_dtype),
        "layers": layers,
        "final_norm": cast(sd["encoder.final_layer_norm.weight"], param_dtype),
    }
