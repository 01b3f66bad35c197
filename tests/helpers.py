"""Small helpers shared by tests (imported as ``from helpers import ...``; tests/ is on sys.path)."""

import numpy as np


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# diffusers -> original Wan transformer names, written independently of the library's own mapping; applied in
# order (the specific names before the generic "attn2." and friends).
_WAN_EMBEDDERS = [("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
                  ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
                  ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
                  ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
                  ("condition_embedder.time_proj", "time_projection.1")]
WAN_IMAGE_NAMES = [("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
                   ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
                   ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
                   ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
                   ("condition_embedder.image_embedder.pos_embed", "img_emb.emb_pos"),
                   ("attn2.add_k_proj.", "cross_attn.k_img."), ("attn2.add_v_proj.", "cross_attn.v_img."),
                   ("attn2.norm_added_k.", "cross_attn.norm_k_img.")]
_WAN_BLOCKS = [("proj_out", "head.head"), ("attn1.", "self_attn."), ("attn2.", "cross_attn."),
               ("to_out.0.", "o."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
               ("ffn.net.0.proj.", "ffn.0."), ("ffn.net.2.", "ffn.2."), ("norm2.", "norm3.")]


def to_original_wan_layout(sd: dict, extra=()) -> dict:
    """A diffusers Wan transformer state dict under the original Wan names; ``extra`` pairs (e.g.
    :data:`WAN_IMAGE_NAMES` for image-to-video) apply after the embedders and before the block names."""
    out = {}
    for k, v in sd.items():
        o = k
        for a, b in [*_WAN_EMBEDDERS, *extra, *_WAN_BLOCKS]:
            o = o.replace(a, b)
        if o == "scale_shift_table":
            o = "head.modulation"
        elif o.endswith(".scale_shift_table"):
            o = o.replace(".scale_shift_table", ".modulation")
        out[o] = v
    return out
