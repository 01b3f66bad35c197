"""Loading a Wan VAE checkpoint (the ``vae/`` folder of a diffusers Wan download), strictly."""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp

from jaxvdm.models.checkpoint import CheckpointError, model_from_params, read_config, read_safetensors_dir
from jaxvdm.models.wan.vae.config import WanVAEConfig
from jaxvdm.models.wan.vae.keys import params_from_diffusers
from jaxvdm.models.wan.vae.model import WanVAE, abstract_vae

__all__ = ["load_vae"]

F32 = jnp.float32
_WEIGHTS = "diffusion_pytorch_model"


def _family_hint(config: WanVAEConfig) -> str:
    if config.is_residual:
        return ("config.json describes the Wan2.2 VAE layout (is_residual=true); Wan2.1 VAE weights need "
                "is_residual=false and patch_size=null")
    return ("config.json describes the Wan2.1 VAE layout (is_residual=false); Wan2.2 VAE weights need "
            "is_residual=true (and patch_size=2, in/out_channels=12, z_dim=48)")


def load_vae(path: str | os.PathLike, dtype=F32, *, param_dtype=None) -> WanVAE:
    """Loads a diffusers ``AutoencoderKLWan`` folder (the ``vae/`` folder of a Wan2.1 or Wan2.2 Diffusers download).

    Reads ``path/config.json`` and ``path/diffusion_pytorch_model.safetensors`` (or the sharded
    layout with its index) strictly: a missing config, truncated file, or any missing, unexpected
    or mis-shaped tensor raises :class:`~jaxvdm.models.checkpoint.CheckpointError` naming it.

    Args:
      path: the folder.
      dtype: computation dtype (float32 for parity with the reference).
      param_dtype: storage dtype (default ``dtype``).
    """
    path = Path(path)
    cfg_dict = read_config(path)
    try:
        config = WanVAEConfig.from_dict(cfg_dict)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'config.json'}: unsupported or invalid VAE config: {e}") from None
    sd = read_safetensors_dir(path, _WEIGHTS)
    try:
        params = params_from_diffusers(config, sd, source=str(path))
    except CheckpointError as e:
        raise CheckpointError(f"{e}\n  {_family_hint(config)}") from None
    return model_from_params(abstract_vae(config, dtype=dtype, param_dtype=dtype if param_dtype is None else param_dtype), params)
