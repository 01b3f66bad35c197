"""The UMT5 text encoder of Wan: config, Flax module, key map, loaders, and Wan's prompt encoding.

* :mod:`.config` -- :class:`UMT5EncoderConfig`;
* :mod:`.model` -- :class:`UMT5Encoder` and :func:`encoder_forward`;
* :mod:`.keys` -- transformers ``UMT5EncoderModel`` tensor names and shapes;
* :mod:`.load` -- :func:`load_text_encoder` and :func:`load_tokenizer` (offline);
* :mod:`.prompts` -- :func:`prompt_clean` and :func:`encode_prompts` (diffusers' Wan prompt encoding).
"""

from jaxvdm.models.wan.text_encoder.config import UMT5EncoderConfig
from jaxvdm.models.wan.text_encoder.keys import params_from_transformers, text_encoder_tensor_shapes
from jaxvdm.models.wan.text_encoder.load import load_text_encoder, load_tokenizer
from jaxvdm.models.wan.text_encoder.model import UMT5Encoder, encoder_forward, relative_position_buckets
from jaxvdm.models.wan.text_encoder.prompts import encode_prompts, prompt_clean

__all__ = ["UMT5EncoderConfig", "UMT5Encoder", "relative_position_buckets", "text_encoder_tensor_shapes",
           "params_from_transformers", "load_text_encoder", "encoder_forward", "load_tokenizer", "prompt_clean",
           "encode_prompts"]
