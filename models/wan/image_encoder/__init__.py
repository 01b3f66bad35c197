"""Wan2.1's CLIP image encoder (ViT-H/14) for image-to-video: config, Flax module, key map, loaders,
and the CLIP image preprocessing.

* :mod:`.config` -- :class:`ClipVisionConfig` (transformers ``CLIPVisionConfig`` fields);
* :mod:`.model` -- :class:`ClipVisionEncoder` (penultimate-layer states, what Wan conditions on) and
  :func:`encode_image`;
* :mod:`.keys` -- transformers ``CLIPVisionModel`` tensor names and shapes;
* :mod:`.load` -- :func:`load_image_encoder` and :func:`load_image_processor` (offline, strict);
* :mod:`.preprocess` -- :func:`preprocess_images` (``CLIPImageProcessor``: resize, centre crop, normalise).

    encoder = load_image_encoder("Wan2.1-I2V-14B-480P-Diffusers/image_encoder")
    pixels = preprocess_images([first_frame])            # uint8 [H, W, 3] -> [1, 3, 224, 224]
    states = encode_image(encoder, pixels)               # [1, 257, 1280] -> transformer(image=states)
"""

from jaxvdm.models.wan.image_encoder.config import ClipVisionConfig
from jaxvdm.models.wan.image_encoder.keys import image_encoder_tensor_shapes, params_from_transformers
from jaxvdm.models.wan.image_encoder.load import load_image_encoder, load_image_processor
from jaxvdm.models.wan.image_encoder.model import ClipVisionEncoder, encode_image
from jaxvdm.models.wan.image_encoder.preprocess import (ImageProcessorConfig, center_crop, preprocess_image,
                                                        preprocess_images, resize_uint8)

__all__ = ["ClipVisionConfig", "ClipVisionEncoder", "encode_image", "image_encoder_tensor_shapes",
           "params_from_transformers", "load_image_encoder", "load_image_processor", "ImageProcessorConfig",
           "preprocess_image", "preprocess_images", "resize_uint8", "center_crop"]
