"""The CLIP image encoder's checkpoint key map: transformers ``CLIPVisionModel`` tensor names and shapes.

A Wan ``image_encoder/`` folder holds a ``CLIPVisionModel`` or ``CLIPVisionModelWithProjection``.
transformers 4 wrote both with a ``vision_model.`` prefix; transformers 5 writes ``CLIPVisionModel``
without it. Either layout loads; ``visual_projection.weight`` (the WithProjection head) and the layers
past the ones run (Wan stops at the penultimate) are checked by name and shape, then left out.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jaxvdm.models.checkpoint import check_tensors
from jaxvdm.models.wan.image_encoder.config import ClipVisionConfig

__all__ = ["image_encoder_tensor_shapes", "strip_prefix", "params_from_transformers"]

PREFIX = "vision_model."
PROJECTION = "visual_projection.weight"
# transformers < 4.31 saved the position-id buffer; it holds no weights.
_IGNORED = ("embeddings.position_ids",)

# (our stacked name, transformers name inside encoder.layers.{i}., transpose?)
_LAYER_MAP = [
    ("ln1_scale", "layer_norm1.weight", False), ("ln1_bias", "layer_norm1.bias", False),
    ("q_kernel", "self_attn.q_proj.weight", True), ("q_bias", "self_attn.q_proj.bias", False),
    ("k_kernel", "self_attn.k_proj.weight", True), ("k_bias", "self_attn.k_proj.bias", False),
    ("v_kernel", "self_attn.v_proj.weight", True), ("v_bias", "self_attn.v_proj.bias", False),
    ("o_kernel", "self_attn.out_proj.weight", True), ("o_bias", "self_attn.out_proj.bias", False),
    ("ln2_scale", "layer_norm2.weight", False), ("ln2_bias", "layer_norm2.bias", False),
    ("fc1_kernel", "mlp.fc1.weight", True), ("fc1_bias", "mlp.fc1.bias", False),
    ("fc2_kernel", "mlp.fc2.weight", True), ("fc2_bias", "mlp.fc2.bias", False),
]


def image_encoder_tensor_shapes(cfg: ClipVisionConfig, *, with_projection: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor of a transformers ``CLIPVisionModel`` of ``cfg`` (unprefixed names, PyTorch shapes);
    ``with_projection`` adds the ``CLIPVisionModelWithProjection`` head."""
    d, f, p = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size
    shapes = {
        "embeddings.class_embedding": (d,),
        "embeddings.patch_embedding.weight": (d, cfg.num_channels, p, p),
        "embeddings.position_embedding.weight": (cfg.num_positions, d),
        "pre_layrnorm.weight": (d,), "pre_layrnorm.bias": (d,),
        "post_layernorm.weight": (d,), "post_layernorm.bias": (d,),
    }
    per_layer = {"mlp.fc1.weight": (f, d), "mlp.fc1.bias": (f,), "mlp.fc2.weight": (d, f)}
    for i in range(cfg.num_hidden_layers):
        for _, name, transpose in _LAYER_MAP:
            default = (d, d) if transpose else (d,)
            shapes[f"encoder.layers.{i}.{name}"] = per_layer.get(name, default)
    if with_projection:
        shapes[PROJECTION] = (cfg.projection_dim, d)
    return shapes


def strip_prefix(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops transformers 4's ``vision_model.`` prefix (names without it are kept as they are)."""
    return {k.removeprefix(PREFIX): v for k, v in sd.items()}


def params_from_transformers(cfg: ClipVisionConfig, sd: Mapping[str, np.ndarray], *, num_layers: int,
                             source: str = "checkpoint", param_dtype=np.float32) -> dict:
    """Converts a transformers CLIP vision state dict to the parameter tree of a
    :class:`~jaxvdm.models.wan.image_encoder.model.ClipVisionEncoder` running ``num_layers`` layers.

    The whole checkpoint is checked (every layer, ``post_layernorm``, and ``visual_projection`` when
    present); only the embeddings and the first ``num_layers`` layers are converted. Linear weights
    become ``[in, out]`` kernels; the patch convolution ``[D, C, p, p]`` a ``[C*p*p, D]`` kernel.
    Raises CheckpointError naming every missing, unexpected or mis-shaped tensor.
    """
    sd = strip_prefix(sd)
    check_tensors(image_encoder_tensor_shapes(cfg, with_projection=PROJECTION in sd), sd, source=source,
                  ignore_unexpected=_IGNORED)

    def cast(a, transpose=False):
        a = np.asarray(a)
        return (a.T if transpose else a).astype(param_dtype)

    w = np.asarray(sd["embeddings.patch_embedding.weight"])
    layers = {ours: np.stack([cast(sd[f"encoder.layers.{i}.{theirs}"], t) for i in range(num_layers)])
              for ours, theirs, t in _LAYER_MAP}
    return {
        "patch_embedding": cast(w.reshape(w.shape[0], -1), transpose=True),
        "class_embedding": cast(sd["embeddings.class_embedding"]),
        "position_embedding": cast(sd["embeddings.position_embedding.weight"]),
        "pre_norm_scale": cast(sd["pre_layrnorm.weight"]),
        "pre_norm_bias": cast(sd["pre_layrnorm.bias"]),
        "layers": layers,
    }
