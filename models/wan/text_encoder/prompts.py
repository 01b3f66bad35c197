"""Wan's prompt encoding: diffusers' prompt cleaning, tokenization to a fixed length, UMT5, zeroed padding."""

from __future__ import annotations

import html
import re
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvdm.models.wan.text_encoder.model import UMT5Encoder, encoder_forward

try:  # diffusers cleans prompts with ftfy when it is installed, and skips that step when it is not
    import ftfy as _ftfy
except ImportError:  # pragma: no cover - depends on the environment
    _ftfy = None

__all__ = ["prompt_clean", "encode_prompts"]

F32 = jnp.float32

# Unicode White_Space, which is what diffusers' `regex` pattern r"\s+" matches (Python's `re` would also
# match U+001C..U+001F).
_WHITESPACE = re.compile(
    "[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"
)


def prompt_clean(text: str) -> str:
    """diffusers' Wan prompt cleaning: ``ftfy.fix_text`` (only if ftfy is installed, as in diffusers),
    HTML-unescape twice, strip, collapse every run of Unicode whitespace to one space, strip."""
    if _ftfy is not None:
        text = _ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip()


@jax.jit
def _cut_and_pad(hidden: jax.Array, lengths: jax.Array) -> jax.Array:
    keep = jnp.arange(hidden.shape[1])[None, :] < lengths[:, None]
    return jnp.where(keep[..., None], hidden.astype(F32), 0.0)


def encode_prompts(encoder: UMT5Encoder, tokenizer, prompts: Sequence[str] | str,
                   max_length: int = 512) -> tuple[jax.Array, np.ndarray]:
    """Wan's prompt encoding (diffusers ``WanPipeline._get_t5_prompt_embeds``).

    Steps: :func:`prompt_clean` each prompt; tokenize with ``padding="max_length"``,
    ``max_length``, ``truncation=True``, ``add_special_tokens=True`` (T5 appends ``</s>``), with the
    attention mask; ``length = sum(mask > 0)``; run the encoder on ids and mask; keep rows
    ``[0, length)`` of each sequence and set rows ``[length, max_length)`` to exactly zero.

    An empty prompt is valid (it is ``</s>`` alone, length 1). A prompt longer than ``max_length``
    tokens (``</s>`` included) is truncated to ``max_length - 1`` tokens + ``</s>``, as diffusers does,
    and a ``UserWarning`` says how many tokens were dropped.

    Args:
      encoder: a :class:`UMT5Encoder`.
      tokenizer: from :func:`load_tokenizer` (any transformers tokenizer with ``__call__``).
      prompts: ``B`` strings (or one string).
      max_length: the padded length (Wan: 512).

    Returns:
      ``(embeddings [B, max_length, d_model] float32, lengths [B] int32 numpy)``.

    Raises:
      TypeError/ValueError on a non-string prompt, an empty list, ``max_length < 1``, or token ids
      outside the encoder's vocabulary (tokenizer and encoder do not belong together).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("encode_prompts: give at least one prompt (an empty string is a valid prompt)")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"encode_prompts: prompt {i} is a {type(p).__name__}, not a string")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"encode_prompts: max_length must be a positive integer, got {max_length!r}")
    cleaned = [prompt_clean(p) for p in prompts]

    full = tokenizer(cleaned, add_special_tokens=True, padding=False, truncation=False, verbose=False)["input_ids"]
    for i, ids in enumerate(full):
        if len(ids) > max_length:
            warnings.warn(
                f"prompt {i} is {len(ids)} tokens long (with the end token) but max_length is {max_length}: "
                f"{len(ids) - max_length} token(s) were dropped from its end. Shorten the prompt to keep them.",
                UserWarning,
                stacklevel=2,
            )

    enc = tokenizer(cleaned, padding="max_length", max_length=max_length, truncation=True,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="np")
    ids = np.asarray(enc["input_ids"], np.int64)
    mask = np.asarray(enc["attention_mask"], np.int64)
    if ids.shape != (len(prompts), max_length):
        raise ValueError(f"tokenizer returned input_ids of shape {ids.shape}, expected {(len(prompts), max_length)}")
    vocab = encoder.config.vocab_size
    if ids.min() < 0 or ids.max() >= vocab:
        raise ValueError(
            f"token id {int(ids.max())} is outside the text encoder's vocabulary of {vocab}: "
            "the tokenizer does not belong to this encoder"
        )
    lengths = (mask > 0).sum(axis=1).astype(np.int32)
    hidden = encoder_forward(encoder, ids.astype(np.int32), mask.astype(np.int32))
    return _cut_and_pad(hidden, jnp.asarray(lengths)), lengths
