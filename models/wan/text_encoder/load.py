"""Loading the UMT5 text encoder (a transformers ``text_encoder/`` folder) and its tokenizer, offline."""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvdm.models.checkpoint import CheckpointError, model_from_params, read_config, read_safetensors_dir
from jaxvdm.models.wan.text_encoder.config import UMT5EncoderConfig
from jaxvdm.models.wan.text_encoder.keys import params_from_transformers
from jaxvdm.models.wan.text_encoder.model import UMT5Encoder

__all__ = ["load_text_encoder", "load_tokenizer"]

F32 = jnp.float32
_WEIGHTS = "model"


def load_text_encoder(path: str | os.PathLike, dtype=F32, *, param_dtype=None,
                      keep_wo_fp32: bool = False) -> UMT5Encoder:
    """Loads a transformers ``UMT5EncoderModel`` folder (Wan's ``text_encoder/``).

    Reads ``path/config.json`` and ``path/model.safetensors`` or the shards listed in
    ``path/model.safetensors.index.json`` (never pickles). Loading is strict.

    Args:
      path: the folder.
      dtype: computation dtype (float32, or bfloat16 on accelerators).
      param_dtype: storage dtype (default ``dtype``).
      keep_wo_fp32: keep the feed-forward output projections in float32 (transformers does so in
        float16 only; useful with float16, unnecessary with bfloat16).

    Returns:
      A :class:`UMT5Encoder` holding the checkpoint's weights.

    Raises:
      CheckpointError: no config.json or weights, an invalid config, or any missing, unexpected or
        mis-shaped tensor (all named in one message).
    """
    path = Path(path)
    cfg_dict = read_config(path)
    try:
        cfg = UMT5EncoderConfig.from_dict(cfg_dict)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'config.json'}: invalid UMT5 text-encoder config: {e}") from None
    sd = read_safetensors_dir(path, _WEIGHTS)
    param_dtype = dtype if param_dtype is None else param_dtype
    wo_dtype = F32 if keep_wo_fp32 else param_dtype
    params = params_from_transformers(cfg, sd, source=str(path), param_dtype=np.dtype(param_dtype),
                                      wo_dtype=np.dtype(wo_dtype))
    abstract = nnx.eval_shape(lambda: UMT5Encoder(cfg, dtype=dtype, param_dtype=param_dtype,
                                                  keep_wo_fp32=keep_wo_fp32, rngs=nnx.Rngs(0)))
    return model_from_params(abstract, params)



_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


def load_tokenizer(path: str | os.PathLike):
    """Loads the transformers tokenizer saved in folder ``path`` (Wan's ``tokenizer/``), offline.

    The folder must hold ``tokenizer.json`` and/or a sentencepiece ``spiece.model`` (with the usual
    ``tokenizer_config.json``). Nothing is downloaded (``local_files_only=True``).

    Raises:
      CheckpointError if the folder or its tokenizer files are missing or transformers cannot read them.
      ImportError if transformers is not installed.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected a tokenizer folder holding {' or '.join(_TOKENIZER_FILES)})")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        present = sorted(p.name for p in path.iterdir())[:12]
        raise CheckpointError(
            f"{path}: no tokenizer files (expected {' or '.join(_TOKENIZER_FILES)}; found {present or 'nothing'})"
        )
    try:
        from transformers import AutoTokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("tokenizing prompts needs transformers: pip install transformers sentencepiece") from e
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: transformers could not load the tokenizer: {e}") from None
