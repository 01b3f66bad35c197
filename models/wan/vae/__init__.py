"""The Wan video VAE (diffusers ``AutoencoderKLWan``, Wan2.1 and Wan2.2): config, Flax module, key map, loader,
split decoding.

* :mod:`.config` -- :class:`WanVAEConfig` (``WanVAEConfig.wan22()``: the released Wan2.2 VAE);
* :mod:`.layers` -- the causal convolutions, norms, residual/attention blocks and resamplers;
* :mod:`.residual` -- Wan2.2's residual down/up blocks, their shortcuts and the pixel patch;
* :mod:`.model` -- :class:`WanVAE` (chunked causal encode/decode) and the latent (de)normalisation;
* :mod:`.keys` -- diffusers tensor names, shapes and layouts;
* :mod:`.load` -- :func:`load_vae`;
* :mod:`.sharded` -- :func:`decode_sharded`, decoding split over a mesh's devices.
"""

from jaxvdm.models.wan.vae.config import WanVAEConfig
from jaxvdm.models.wan.vae.keys import diffusers_tensor_shapes, params_from_diffusers
from jaxvdm.models.wan.vae.load import load_vae
from jaxvdm.models.wan.vae.model import WanVAE, abstract_vae, denormalize_latents, normalize_latents

__all__ = ["WanVAEConfig", "WanVAE", "abstract_vae", "load_vae", "normalize_latents", "denormalize_latents",
           "diffusers_tensor_shapes", "params_from_diffusers"]
