"""The Wan diffusion transformer (DiT): its config, the Flax module, the checkpoint key map and loaders.

* :mod:`.config` -- :class:`WanConfig`, read from diffusers or original-format ``config.json``
  (T2V, and the I2V / FLF2V image branch);
* :mod:`.model` -- :class:`WanTransformer` (embed / run_blocks / head), image conditioning
  (:class:`CrossContext`), per-token timesteps (:func:`token_timesteps`) and its constructors;
* :mod:`.keys` -- diffusers and original Wan tensor names, shapes and the conversion to our tree;
* :mod:`.load` -- :func:`load_transformer` (diffusers, original or orbax folders) and :func:`save_converted`.
"""

from jaxvdm.models.wan.transformer.config import WanConfig
from jaxvdm.models.wan.transformer.keys import diffusers_tensor_shapes, original_to_diffusers_names, params_from_diffusers
from jaxvdm.models.wan.transformer.load import load_transformer, load_transformer_params, save_converted
from jaxvdm.models.wan.transformer.model import (Conditioning, CrossContext, ExtraKV, WanTransformer,
                                                 abstract_transformer, count_parameters, init_transformer, patchify,
                                                 timestep_embedding, token_timesteps, unpatchify)

__all__ = ["WanConfig", "WanTransformer", "Conditioning", "CrossContext", "ExtraKV", "patchify", "unpatchify",
           "timestep_embedding", "token_timesteps", "init_transformer", "abstract_transformer", "count_parameters",
           "load_transformer", "load_transformer_params", "save_converted", "diffusers_tensor_shapes",
           "params_from_diffusers", "original_to_diffusers_names"]
