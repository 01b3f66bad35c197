"""The Wan diffusion transformer (DiT): its config, the Flax module, the checkpoint key map and loaders.

* :mod:`.config` -- :class:`WanConfig`, read from diffusers or original-format ``config.json``;
* :mod:`.model` -- :class:`WanTransformer` (embed / run_blocks / head) and its constructors;
* :mod:`.keys` -- diffusers and original Wan tensor names, shapes and the conversion to our tree;
* :mod:`.load` -- :func:`load_transformer` (diffusers, original or orbax folders) and :func:`save_converted`.
"""

from jaxvdm.models.wan.transformer.config import WanConfig
from jaxvdm.models.wan.transformer.keys import diffusers_tensor_shapes, original_to_diffusers_names, params_from_diffusers
from jaxvdm.models.wan.transformer.load import load_transformer, load_transformer_params, save_converted
from jaxvdm.models.wan.transformer.model import (Conditioning, ExtraKV, WanTransformer, abstract_transformer,
                                                 count_parameters, init_transformer, patchify, timestep_embedding,
                                                 unpatchify)

__all__ = ["WanConfig", "WanTransformer", "Conditioning", "ExtraKV", "patchify", "unpatchify", "timestep_embedding",
           "init_transformer", "abstract_transformer", "count_parameters", "load_transformer", "load_transformer_params",
           "save_converted", "diffusers_tensor_shapes", "params_from_diffusers", "original_to_diffusers_names"]
