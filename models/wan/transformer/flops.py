"""Analytic FLOPs of the Wan DiT: the useful matmul work of one forward, for TFLOP/s figures."""

from __future__ import annotations

from jaxvdm.models.wan.transformer.config import WanConfig

__all__ = ["dit_flops"]


def dit_flops(cfg: WanConfig, latent_thw, text_len: int, batch: int = 1, image_len: int | None = None) -> int:
    """Analytic matmul FLOPs (2 per multiply-add) of one Wan DiT forward.

    ``latent_thw``: (T, H, W) of the latent; ``cfg``: a WanConfig. Per layer with S tokens, width D,
    feed-forward F, text length L: self-attention projections ``8 S D^2``, scores and values
    ``4 S^2 D``, cross-attention projections ``4 S D^2 + 4 L D^2`` and scores/values ``4 S L D``,
    feed-forward ``4 S D F``; plus patch embedding, text and time embedders, and the head.
    Elementwise work (norms, RoPE, softmax, modulation) is not counted.

    A model with an image branch (``cfg.image_dim``) attends to ``image_len`` image tokens as well
    (default: ``cfg.pos_embed_seq_len``, else 257, Wan's CLIP tokens): the image embedder
    ``2 Li (C^2 + C D)``, and per layer with image keys/values ``4 Li D^2`` projections and ``4 S Li D``
    scores/values (without them the image tokens simply lengthen the text context).
    """
    t, h, w = (int(v) for v in latent_thw)
    pt, ph, pw = cfg.patch_size
    S = (t // pt) * (h // ph) * (w // pw)
    D, F, L, pv = cfg.hidden_size, cfg.ffn_dim, int(text_len), cfg.patch_volume
    layer = 8 * S * D * D + 4 * S * S * D + 4 * S * D * D + 4 * L * D * D + 4 * S * L * D + 4 * S * D * F
    embed = (2 * S * cfg.in_channels * pv * D + 2 * L * (cfg.text_dim * D + D * D) + 2 * (cfg.freq_dim * D + D * D)
             + 2 * D * 6 * D)
    if cfg.has_image_branch:
        li = int(image_len if image_len is not None else (cfg.pos_embed_seq_len or 257))
        c = cfg.image_dim
        embed += 2 * li * (c * c + c * D)
        layer += 4 * li * D * D + 4 * S * li * D
    head = 2 * S * D * cfg.out_channels * pv
    return int(batch) * (cfg.num_layers * layer + embed + head)
