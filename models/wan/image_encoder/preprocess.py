"""CLIP image preprocessing as Wan's ``image_processor/`` configures it, in numpy.

``CLIPImageProcessor`` (transformers' PIL backend, the one transformers falls back to without
torchvision): resize the shortest edge to 224 with bicubic resampling on the uint8 pixels, centre-crop
224 x 224, rescale by 1/255, normalise with the OpenAI CLIP mean and std. The resize is Pillow's own
(as transformers' PIL backend calls it), so the output equals transformers' on the same uint8 image.

(With torchvision installed, transformers 5 picks a torchvision backend whose antialiased resize
differs from Pillow's by a grey level here and there; Wan's published ``preprocessor_config.json``
names the processor, not the backend.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ImageProcessorConfig", "CLIP_MEAN", "CLIP_STD", "resize_uint8", "resize_output_size", "center_crop",
           "preprocess_image", "preprocess_images"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_BILINEAR, _BICUBIC = 2, 3  # PIL.Image.Resampling values, as preprocessor_config.json stores them


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """What ``CLIPImageProcessor`` does (its ``preprocessor_config.json`` fields). Defaults: Wan's."""

    shortest_edge: int | None = 224
    size: tuple[int, int] | None = None  # (height, width) when resizing to a fixed size instead
    crop_size: tuple[int, int] = (224, 224)
    resample: int = _BICUBIC
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    def __post_init__(self):
        if self.resample not in (_BILINEAR, _BICUBIC):
            raise ValueError(f"resample={self.resample} is not supported (2 = bilinear, 3 = bicubic, Wan's)")
        if self.do_resize and (self.shortest_edge is None) == (self.size is None):
            raise ValueError("resizing needs exactly one of shortest_edge and size (height, width)")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std must have 3 values (RGB)")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ImageProcessorConfig":
        """From a ``preprocessor_config.json`` dict (``size``/``crop_size`` as dicts or ints, as
        transformers writes and reads them). Raises ValueError for unsupported settings."""
        kind = d.get("image_processor_type", "CLIPImageProcessor")
        if kind not in ("CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPImageProcessorPil"):
            raise ValueError(f"image_processor_type {kind!r} is not supported (CLIPImageProcessor)")
        if d.get("do_pad") or d.get("do_convert_rgb") is False:
            raise ValueError("do_pad, and do_convert_rgb=False, are not supported")
        size = d.get("size", {"shortest_edge": 224})
        shortest, hw = None, None
        if isinstance(size, int):
            shortest = size
        elif "shortest_edge" in size and "longest_edge" not in size:
            shortest = int(size["shortest_edge"])
        elif "height" in size and "width" in size:
            hw = (int(size["height"]), int(size["width"]))
        else:
            raise ValueError(f"size {size!r} is not supported ({{'shortest_edge': n}} or {{'height', 'width'}})")
        crop = d.get("crop_size", {"height": 224, "width": 224})
        crop = (crop, crop) if isinstance(crop, int) else (int(crop["height"]), int(crop["width"]))
        return cls(shortest_edge=shortest, size=hw, crop_size=crop, resample=int(d.get("resample", _BICUBIC)),
                   rescale_factor=float(d.get("rescale_factor", 1 / 255)),
                   image_mean=tuple(float(v) for v in d.get("image_mean", CLIP_MEAN)),
                   image_std=tuple(float(v) for v in d.get("image_std", CLIP_STD)),
                   **{k: bool(d.get(k, True)) for k in ("do_resize", "do_center_crop", "do_rescale", "do_normalize")})


# ----------------------------------------------------------------------------- resizing


def resize_uint8(image: np.ndarray, size: tuple[int, int], resample: int = _BICUBIC) -> np.ndarray:
    """Pillow's ``Image.resize(size, resample)`` of a uint8 ``[H, W, C]`` image (C = 1 or 3): ``-> [h, w, C]``
    uint8 (``size`` = (h, w)). Pillow itself does it (what transformers' PIL backend calls), so the pass
    order Pillow picks when both axes change is its own."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"resize_uint8 takes a uint8 [H, W, 1 or 3] image, got {image.dtype} {image.shape}")
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"resize target must be positive, got {size}")
    if (h, w) == image.shape[:2]:
        return image
    pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    out = np.asarray(pil.resize((w, h), resample=int(resample)))
    return out.reshape(h, w, image.shape[2])


# ----------------------------------------------------------------------------- the processor


def resize_output_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """``(h, w)`` with the shorter side ``shortest_edge`` and the aspect ratio kept (the longer side
    truncated, as transformers computes it)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centre ``size = (h, w)`` of ``[C, H, W]``; a smaller image is zero-padded around its centre
    first (transformers' ``center_crop``)."""
    ch, cw = size
    _, h, w = image.shape
    if h < ch or w < cw:
        nh, nw = max(h, ch), max(w, cw)
        top, left = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
        padded = np.zeros(image.shape[:1] + (nh, nw), image.dtype)
        padded[:, top:top + h, left:left + w] = image
        image, h, w = padded, nh, nw
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[:, top:top + ch, left:left + cw]


def _as_rgb_uint8(image) -> np.ndarray:
    if hasattr(image, "mode") and hasattr(image, "convert"):  # a PIL image (not imported here)
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            raise ValueError("the image has an alpha channel: composite it onto a background first "
                             "(transformers composites onto white)")
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8 RGB pixels [H, W, 3] (as decoded from a file), got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"images must be [H, W, 3] RGB (or [H, W] grey), got shape {image.shape}")
    return image


def preprocess_image(image, config: ImageProcessorConfig = ImageProcessorConfig()) -> np.ndarray:
    """One image (uint8 ``[H, W, 3]``, ``[H, W]`` grey, or an RGB/L PIL image) -> float32 ``[3, h, w]``
    (``h, w`` = the crop size), equal to ``CLIPImageProcessor``'s ``pixel_values`` for it."""
    img = _as_rgb_uint8(image)
    if config.do_resize:
        target = config.size if config.size is not None else resize_output_size(*img.shape[:2], config.shortest_edge)
        img = resize_uint8(img, target, config.resample)
    x = np.moveaxis(img, -1, 0)
    if config.do_center_crop:
        x = center_crop(x, config.crop_size)
    x = (x.astype(np.float64) * config.rescale_factor).astype(np.float32) if config.do_rescale else x.astype(np.float32)
    if config.do_normalize:
        mean = np.asarray(config.image_mean, np.float32)[:, None, None]
        std = np.asarray(config.image_std, np.float32)[:, None, None]
        x = (x - mean) / std
    return x


def preprocess_images(images: Sequence, config: ImageProcessorConfig = ImageProcessorConfig()) -> np.ndarray:
    """A list of images -> float32 ``[B, 3, h, w]`` (see :func:`preprocess_image`)."""
    if not len(images):
        raise ValueError("no images given")
    return np.stack([preprocess_image(im, config) for im in images])
