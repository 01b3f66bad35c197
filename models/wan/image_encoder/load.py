"""Loading Wan's CLIP image encoder (a transformers ``image_encoder/`` folder) and its preprocessing."""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvdm.models.checkpoint import CheckpointError, model_from_params, read_config, read_safetensors_dir
from jaxvdm.models.wan.image_encoder.config import ClipVisionConfig
from jaxvdm.models.wan.image_encoder.keys import params_from_transformers
from jaxvdm.models.wan.image_encoder.model import ClipVisionEncoder
from jaxvdm.models.wan.image_encoder.preprocess import ImageProcessorConfig

__all__ = ["load_image_encoder", "load_image_processor"]

F32 = jnp.float32
_WEIGHTS = "model"


def load_image_encoder(path: str | os.PathLike, dtype=F32, *, param_dtype=None,
                       num_layers: int | None = None) -> ClipVisionEncoder:
    """Loads a transformers ``CLIPVisionModel`` / ``CLIPVisionModelWithProjection`` folder (Wan's
    ``image_encoder/``).

    Reads ``path/config.json`` and ``path/model.safetensors`` or the shards listed in
    ``path/model.safetensors.index.json`` (never pickles). Loading is strict (every tensor of the
    checkpoint is checked, including the layers Wan does not run).

    Args:
      path: the folder.
      dtype: computation dtype (float32, or bfloat16 on accelerators).
      param_dtype: storage dtype (default ``dtype``).
      num_layers: layers to run (default: all but the last, Wan's penultimate-layer states).

    Returns:
      A :class:`ClipVisionEncoder`; ``encoder(pixel_values [B, 3, 224, 224]) -> [B, 257, 1280]`` for ViT-H/14.

    Raises:
      CheckpointError: no config.json or weights, an invalid config, or any missing, unexpected or
        mis-shaped tensor (all named in one message).
    """
    path = Path(path)
    try:
        cfg = ClipVisionConfig.from_dict(read_config(path))
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'config.json'}: invalid CLIP vision config: {e}") from None
    param_dtype = dtype if param_dtype is None else param_dtype
    abstract = nnx.eval_shape(lambda: ClipVisionEncoder(cfg, num_layers=num_layers, dtype=dtype,
                                                        param_dtype=param_dtype, rngs=nnx.Rngs(0)))
    sd = read_safetensors_dir(path, _WEIGHTS)
    params = params_from_transformers(cfg, sd, num_layers=abstract.num_layers, source=str(path),
                                      param_dtype=np.dtype(param_dtype))
    return model_from_params(abstract, params)


def load_image_processor(path: str | os.PathLike) -> ImageProcessorConfig:
    """Reads a ``CLIPImageProcessor`` ``preprocessor_config.json`` (Wan's ``image_processor/``).

    Raises CheckpointError if the file is missing or describes preprocessing this module does not do.
    """
    path = Path(path)
    try:
        return ImageProcessorConfig.from_dict(read_config(path, "preprocessor_config.json"))
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'preprocessor_config.json'}: {e}") from None
