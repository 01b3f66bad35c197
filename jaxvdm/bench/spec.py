"""What ``jaxvdm bench`` measures: a model size with random weights, its latent, inputs and FLOPs."""

from __future__ import annotations

from jaxvdm.models.pipeline import latent_shape as _latent_shape
from jaxvdm.models.pipeline import parse_size
from jaxvdm.models.presets import ModelSpec, model_spec
from jaxvdm.models.wan.transformer.flops import dit_flops

__all__ = ["ModelSpec", "model_spec", "dit_flops", "latent_shape", "parse_size", "random_transformer"]


def latent_shape(spec: ModelSpec, frames: int, height: int, width: int) -> tuple[int, ...]:
    """``(1, C, T, H, W)`` of a video size; raises SizeError for sizes the model cannot take (reads only
    the config: no model is built and JAX's backends stay untouched, see ``--isolate``)."""
    cfg = spec.config
    return _latent_shape(frames, height, width, vae_stride=spec.vae_stride, patch=cfg.patch_size,
                         channels=cfg.in_channels, name=spec.name)


def random_transformer(spec: ModelSpec, dtype, seed: int = 0):
    """The spec's transformer with random weights in ``dtype`` (speed depends only on the shapes)."""
    from jaxvdm.models.wan.transformer.model import init_transformer

    return init_transformer(spec.config, seed=seed, dtype=dtype, param_dtype=dtype)
