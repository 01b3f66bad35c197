"""Image-to-video conditioning (Wan2.1 I2V / FLF2V, Wan2.2 I2V): what the transformer sees beside the noise.

An I2V transformer takes ``in_channels = z + stride_t + z`` input channels: the noisy latent (``z``), a
frame mask over the VAE's temporal groups (``stride_t`` channels) and the VAE latent of a conditioning
video (the first image, zeros, and for FLF2V the last image). A Wan2.1 I2V transformer also attends to
the CLIP ViT-H/14 penultimate states of the image(s). :func:`image_condition` builds both, as diffusers'
``WanImageToVideoPipeline`` does:

* the image is resized to the video size with Pillow's Lanczos filter and mapped to ``[-1, 1]``;
* the conditioning video ``[1, 3, F, H, W]`` is the image, ``F - 1`` zero frames (FLF2V: ``F - 2`` and
  the last image), VAE-encoded to its mean and normalised like the DiT's latents;
* the mask is 1 on the given frames; its first frame is repeated ``stride_t`` times so that the ``4T``
  mask frames fold into ``[stride_t, T]`` (each latent frame's temporal group);
* CLIP states of the original image(s) (FLF2V: both, joined along the tokens).

:class:`VideoCondition` carries them with the text context through every strategy: the samplers treat
it as one pytree, :func:`jaxvdm.sharding.predict.guided_prediction` cuts ``latent`` with each latent
window and feeds the model ``noise ‖ latent`` and ``image``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvdm.models.wan.image_encoder import encode_image, preprocess_images
from jaxvdm.models.wan.image_encoder.preprocess import _as_rgb_uint8

__all__ = ["VideoCondition", "FirstFrameCondition", "inject_first_frame", "first_frame_latent", "text_of", "load_image", "video_pixels", "frame_mask", "image_condition", "LANCZOS"]

LANCZOS = 1  # PIL.Image.Resampling.LANCZOS: diffusers' VaeImageProcessor default


class VideoCondition(NamedTuple):
    """The conditioning of an image-to-video run (a pytree; ``image`` may be None).

    text: ``[B, L, text_dim]`` text-encoder states (B = 2, cond then uncond, with guidance).
    image: ``[1, Li, image_dim]`` CLIP states (Wan2.1 I2V; FLF2V: both images' tokens), or None.
    latent: ``[1, stride_t + z, T, H, W]`` float32: frame mask ‖ normalised VAE latent of the
      conditioning video, on the noise's latent grid.
    """

    text: jax.Array
    image: jax.Array | None
    latent: jax.Array


class FirstFrameCondition(NamedTuple):
    """Wan2.2 TI2V's image conditioning (diffusers' ``expand_timesteps``; a pytree).

    text: ``[B, L, text_dim]`` as in :class:`VideoCondition`.
    latent: ``[1, z, 1, H, W]`` float32, the normalised VAE latent of the image: the model's input has it as
      its first latent frame (whose tokens take timestep 0) at every step, and the final latents too.
    """

    text: jax.Array
    latent: jax.Array


def text_of(context):
    """The text states of ``context`` (a plain ``[B, L, D]`` array, a :class:`VideoCondition` or a
    :class:`FirstFrameCondition`)."""
    return context.text if isinstance(context, (VideoCondition, FirstFrameCondition)) else context


def inject_first_frame(x, latent):
    """``x [1, z, T, H, W]`` with its first latent frame replaced by ``latent [1, z, 1, H, W]`` (float32)."""
    x = jnp.asarray(x, jnp.float32)
    return x.at[:, :, :1].set(jnp.asarray(latent, jnp.float32))


def first_frame_latent(image, *, height: int, width: int, vae, encode_video, normalize):
    """Wan2.2 TI2V: the image (path, PIL or uint8 array; Lanczos-resized to the video) VAE-encoded alone, its
    mean normalised: ``[1, z, 1, height/s, width/s]`` float32 (diffusers' ``prepare_latents`` condition)."""
    video = video_pixels(load_image(image), height, width)[None, :, None]  # [1, 3, 1, H, W]
    return jnp.asarray(normalize(encode_video(vae, jnp.asarray(video))), jnp.float32)


def load_image(image) -> np.ndarray:
    """``image`` (a path, a PIL image, or a uint8 ``[H, W, 3]`` / ``[H, W]`` array) as uint8 ``[H, W, 3]``.
    Raises ValueError for a missing file or another dtype or shape."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"image file {str(path)!r} does not exist; give the path of a PNG/JPEG image")
        from PIL import Image

        with Image.open(path) as im:
            return _as_rgb_uint8(im)
    return _as_rgb_uint8(image)


def video_pixels(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 ``[h, w, 3]`` -> float32 ``[3, height, width]`` in [-1, 1]: Pillow's Lanczos resize (none when
    the size already matches), ``/ 255``, ``2x - 1`` (diffusers' ``VideoProcessor.preprocess`` of a PIL image).
    The resize is Pillow's own (which orders its two passes by size), so it needs Pillow installed."""
    if image.shape[:2] != (height, width):
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - Pillow comes with diffusers and imageio
            raise ValueError(f"the image is {image.shape[1]}x{image.shape[0]} and the video {width}x{height}: "
                             "resizing it needs Pillow (pip install pillow), or give an image of the video's "
                             "size") from None
        image = np.asarray(Image.fromarray(image).resize((width, height), resample=LANCZOS))
    x = image.astype(np.float32) / np.float32(255.0)
    return np.moveaxis(2.0 * x - 1.0, -1, 0).astype(np.float32)


def frame_mask(num_frames: int, latent_grid, stride_t: int, *, last: bool) -> np.ndarray:
    """``[1, stride_t, T, h, w]`` float32: 1 on the given frames (the first; with ``last`` also the last) of
    ``num_frames`` video frames, the first repeated ``stride_t`` times, folded per latent frame."""
    t, h, w = latent_grid
    given = np.zeros(num_frames, np.float32)
    given[0] = 1.0
    if last:
        given[-1] = 1.0
    frames = np.concatenate([np.repeat(given[:1], stride_t), given[1:]])  # stride_t * T frames
    if frames.size != stride_t * t:
        raise ValueError(f"{num_frames} frames do not fold into {t} latent frames of {stride_t}")
    folded = frames.reshape(t, stride_t).T  # [stride_t, T]: mask channel c of latent frame i is frame stride_t*i + c
    return np.broadcast_to(folded[None, :, :, None, None], (1, stride_t, t, h, w)).astype(np.float32)


def image_condition(image, last_image, *, num_frames: int, height: int, width: int, vae, encode_video,
                    normalize, image_encoder=None, image_processor=None, stride_t: int = 4,
                    flf2v: bool = False):
    """The I2V conditioning of one video: ``(latent [1, stride_t + z, T, H/s, W/s], clip [1, Li, D] | None)``.

    Args:
      image, last_image: the first (and, for FLF2V, last) frame: paths, PIL images or uint8 arrays.
      num_frames, height, width: the video size (already validated against the model's strides).
      vae: the VAE (only passed through to ``encode_video``).
      encode_video: ``(vae, video [1, 3, F, H, W] float32 in [-1, 1]) -> mean latent [1, z, T, h, w]``.
      normalize: ``mean latent -> the DiT's normalised latent``.
      image_encoder, image_processor: the CLIP encoder and its ``ImageProcessorConfig`` (None: a
        transformer without an image branch, e.g. Wan2.2 I2V); ``flf2v`` joins the two images' states.

    Returns float32 arrays; the latent equals diffusers' ``prepare_latents`` condition, the CLIP states its
    ``encode_image`` (FLF2V: ``[2, N, D]`` reshaped to ``[1, 2N, D]``).
    """
    first = load_image(image)
    last = None if last_image is None else load_image(last_image)
    video = np.zeros((1, 3, num_frames, height, width), np.float32)
    video[0, :, 0] = video_pixels(first, height, width)
    if last is not None:
        video[0, :, -1] = video_pixels(last, height, width)
    z = normalize(encode_video(vae, jnp.asarray(video)))
    mask = frame_mask(num_frames, z.shape[2:], stride_t, last=last is not None)
    latent = jnp.concatenate([jnp.asarray(mask), jnp.asarray(z, jnp.float32)], axis=1)
    clip = None
    if image_encoder is not None:
        pixels = preprocess_images([first] + ([last] if last is not None else []), image_processor)
        states = jnp.asarray(encode_image(image_encoder, pixels), jnp.float32)
        clip = states.reshape(1, -1, states.shape[-1]) if flf2v else states
    return latent, clip
