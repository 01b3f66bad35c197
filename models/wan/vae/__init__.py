"""The Wan video VAE (diffusers ``AutoencoderKLWan``): config, Flax module, key map, loader, split decoding.

* :mod:`.config` -- :class:`WanVAEConfig`;
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
