"""The shipped shapes model as a :class:`jaxvdm.Pipeline` (the default model of :func:`jaxvdm.generate`).

    video = jaxvdm.generate("a red circle moving left on a dark background")

Text: captions are tokenized with the shapes grammar's word vocabulary (unknown words are an error that
lists the vocabulary; "and", which joins two shapes, is refused by a model trained on one shape per caption,
as the shipped one is) and embedded by the shipped word encoder; the empty prompt is all zeros, the
unconditional prompt the model was trained with. Decoding is the identity: the latent is the video.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp

__all__ = ["load_shapes_pipeline", "encode_captions", "draws_two_shapes"]


def draws_two_shapes(model) -> bool:
    """Whether ``model`` was trained on two-shape captions: its word encoder reads
    :data:`data.MAX_LEN_TWO_SHAPES` words (training with ``--two-shapes`` gives it that many; the shipped
    model reads 12 and was trained on one shape per caption)."""
    from jaxvdm.models.shapes import data

    return int(model.text.position.shape[0]) >= data.MAX_LEN_TWO_SHAPES


def encode_captions(model, prompts: list[str]) -> jax.Array:
    """``prompts`` -> ``[B, max_len, text_dim]`` float32 embeddings from the shapes model's word encoder.

    Raises ValueError naming any word outside the vocabulary (and listing the words the model takes), and,
    for a model trained on one shape per caption (:func:`draws_two_shapes`), for a prompt that joins two
    shapes with "and"."""
    import numpy as np

    from jaxvdm.models.shapes import data

    max_len = int(model.text.position.shape[0])
    two = draws_two_shapes(model)
    rows = []
    for p in prompts:
        words = data._words(p)
        unknown = sorted({w for w in words if w not in data.VOCAB or w.startswith("<")})
        if unknown:
            vocab = ", ".join(w for w in data.VOCAB if w not in ("<pad>", "<unk>") and (two or w != "and"))
            raise ValueError(f"prompt {p!r}: the shapes model does not know {unknown}; its words are: {vocab}")
        if "and" in words and not two:
            raise ValueError(f"prompt {p!r}: the shipped shapes model draws one shape per caption; 'and' joins two, "
                             f"which it was not trained on. Describe one shape (e.g. 'a red circle moving left'), or "
                             f"use a shapes model trained on two-shape captions, which accepts them (python -m "
                             f"jaxvdm.models.shapes.train --mix varied --two-shapes 0.2, then pass its "
                             f"weights.safetensors as the model: --model FILE on the command line)")
        if len(words) > max_len:
            raise ValueError(f"prompt {p!r} has {len(words)} words; the shapes model takes at most {max_len}")
        rows.append(data.tokenize(p, max_len))
    return model.text(jnp.asarray(np.stack(rows), jnp.int32))


def load_shapes_pipeline(path: str | os.PathLike | None = None):
    """The shipped model (or retrained weights at ``path``) as a Pipeline with the preset's defaults."""
    from jaxvdm.models.shapes.model import load_model, preset
    from jaxvdm.models.pipeline import Pipeline

    model = load_model(path)
    p = preset()["pipeline"]
    keys = ("num_frames", "height", "width", "steps", "guidance_scale", "flow_shift", "scheduler", "fps",
            "negative_prompt", "dualparal_block_frames", "dualparal_context_frames")
    defaults = {k: p[k] for k in keys if k in p}

    def encode_text(prompts):
        return encode_captions(model, list(prompts))

    def decode(latents, mesh=None):
        return jnp.clip(latents, -1.0, 1.0)

    name = "shapes" if path is None else f"shapes ({Path(path).name})"
    return Pipeline(name=name, transformer=model.transformer, encode_text=encode_text, decode=decode,
                    vae_stride=tuple(p.get("vae_stride", (1, 1, 1))), defaults=defaults)
