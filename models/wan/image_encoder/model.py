"""The CLIP vision encoder Wan2.1 I2V / FLF2V conditions on, in Flax NNX.

Wan (the original ``clip.visual(..., use_31_block=True)`` and diffusers' ``encode_image``, which takes
``hidden_states[-2]``) uses the hidden states after the *penultimate* of the 32 layers, before the
final layer and the pooling norm. :class:`ClipVisionEncoder` therefore holds only the layers it runs:
``num_layers`` (default ``num_hidden_layers - 1``). Its output for ``pixel_values [B, 3, 224, 224]`` is
``[B, 257, 1280]``, what the transformer's ``image=`` takes (FLF2V: two images per sample, their
states joined along the token axis).

Precision: the matmuls run in ``dtype``; LayerNorms, the softmax and the residual stream in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvdm.models.wan.image_encoder.config import ACTIVATIONS, ClipVisionConfig

__all__ = ["ClipVisionEncoder", "encode_image", "LAYER_PARAMS"]

F32 = jnp.float32

# Stacked per-layer parameters (leading layer axis); kernels are [in, out].
LAYER_PARAMS = ("ln1_scale", "ln1_bias", "q_kernel", "q_bias", "k_kernel", "k_bias", "v_kernel", "v_bias",
                "o_kernel", "o_bias", "ln2_scale", "ln2_bias", "fc1_kernel", "fc1_bias", "fc2_kernel", "fc2_bias")


def _layer_norm(x, scale, bias, eps):
    x = x.astype(F32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale.astype(F32) + bias.astype(F32)


def _dense(x, kernel, bias, dtype):
    return x.astype(dtype) @ kernel.astype(dtype) + bias.astype(dtype)


def _encoder_layer(x, p, cfg: ClipVisionConfig, dtype):
    """One pre-norm CLIP layer. x: ``[B, N, D]`` float32 residual; returns x."""
    b, n, d = x.shape
    heads, hd = cfg.num_attention_heads, cfg.head_dim
    h = _layer_norm(x, p["ln1_scale"], p["ln1_bias"], cfg.layer_norm_eps)
    q, k, v = (_dense(h, p[f"{c}_kernel"], p[f"{c}_bias"], dtype).reshape(b, n, heads, hd) for c in "qkv")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=F32) * (hd**-0.5)
    probs = jax.nn.softmax(scores, axis=-1)
    attn = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v).reshape(b, n, d)
    x = x + _dense(attn, p["o_kernel"], p["o_bias"], dtype).astype(F32)
    h = _layer_norm(x, p["ln2_scale"], p["ln2_bias"], cfg.layer_norm_eps)
    h = ACTIVATIONS[cfg.hidden_act](_dense(h, p["fc1_kernel"], p["fc1_bias"], dtype))
    return x + _dense(h, p["fc2_kernel"], p["fc2_bias"], dtype).astype(F32)


class _Layers(nnx.Module):
    """The parameters of the layers run, stacked on a leading layer axis ``N`` (see :data:`LAYER_PARAMS`)."""

    def __init__(self, cfg: ClipVisionConfig, n: int, param_dtype, key: jax.Array):
        d, f = cfg.hidden_size, cfg.intermediate_size
        shapes = {"q_kernel": (d, d), "k_kernel": (d, d), "v_kernel": (d, d), "o_kernel": (d, d),
                  "fc1_kernel": (d, f), "fc2_kernel": (f, d), "fc1_bias": (f,)}
        keys = iter(jax.random.split(key, len(LAYER_PARAMS)))
        for name in LAYER_PARAMS:
            shape = (n, *shapes.get(name, (d,)))
            k = next(keys)
            if name.endswith("_kernel"):
                value = jax.random.normal(k, shape, F32) * shape[1] ** -0.5
            elif name.endswith("_scale"):
                value = jnp.ones(shape, F32)
            else:
                value = jnp.zeros(shape, F32)
            setattr(self, name, nnx.Param(value.astype(param_dtype)))


class ClipVisionEncoder(nnx.Module):
    """The CLIP vision tower up to layer ``num_layers`` (transformers ``CLIPVisionModel``), Flax NNX.

    Args:
      config: architecture.
      num_layers: layers to run (default ``num_hidden_layers - 1``: Wan's penultimate-layer states,
        transformers' ``hidden_states[-2]``); ``num_hidden_layers`` gives ``last_hidden_state``.
      dtype: computation dtype of the matmuls (float32, or bfloat16 on accelerators).
      param_dtype: storage dtype (default ``dtype``).
      rngs: random initialisation (random models are for tests and benchmarks).

    Parameters: ``patch_embedding [C*p*p, D]`` (features ordered (C, p, p)), ``class_embedding [D]``,
    ``position_embedding [N, D]``, ``pre_norm_scale/bias [D]``, ``layers`` (:class:`_Layers`).
    """

    def __init__(self, config: ClipVisionConfig, *, num_layers: int | None = None, dtype=F32, param_dtype=None,
                 rngs: nnx.Rngs):
        cfg = config
        n = cfg.num_hidden_layers - 1 if num_layers is None else int(num_layers)
        if not 1 <= n <= cfg.num_hidden_layers:
            raise ValueError(f"num_layers must be in [1, {cfg.num_hidden_layers}], got {num_layers}")
        param_dtype = dtype if param_dtype is None else param_dtype
        self.config = cfg
        self.num_layers = n
        self.dtype = dtype
        d, p = cfg.hidden_size, cfg.patch_size
        k_patch, k_cls, k_pos, k_layers = jax.random.split(rngs.params(), 4)
        fan_in = cfg.num_channels * p * p
        patch = jax.random.normal(k_patch, (fan_in, d), F32) * fan_in**-0.5
        self.patch_embedding = nnx.Param(patch.astype(param_dtype))
        self.class_embedding = nnx.Param((jax.random.normal(k_cls, (d,), F32) * d**-0.5).astype(param_dtype))
        self.position_embedding = nnx.Param((jax.random.normal(k_pos, (cfg.num_positions, d), F32) * 0.02)
                                            .astype(param_dtype))
        self.pre_norm_scale = nnx.Param(jnp.ones((d,), param_dtype))
        self.pre_norm_bias = nnx.Param(jnp.zeros((d,), param_dtype))
        self.layers = _Layers(cfg, n, param_dtype, k_layers)

    def embed(self, pixel_values: jax.Array) -> jax.Array:
        """``[B, C, H, W] -> [B, N, D]`` float32: patches, class token, positions, pre-LayerNorm."""
        cfg = self.config
        b, c, h, w = pixel_values.shape
        p = cfg.patch_size
        x = pixel_values.astype(self.dtype).reshape(b, c, h // p, p, w // p, p)
        x = x.transpose(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)
        patches = (x @ self.patch_embedding[...].astype(self.dtype)).astype(F32)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(F32), (b, 1, cfg.hidden_size))
        x = jnp.concatenate([cls, patches], axis=1) + self.position_embedding[...].astype(F32)
        return _layer_norm(x, self.pre_norm_scale[...], self.pre_norm_bias[...], cfg.layer_norm_eps)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """Encodes preprocessed images (:func:`~jaxvdm.models.wan.image_encoder.preprocess_images`).

        Args:
          pixel_values: ``[B, num_channels, image_size, image_size]`` float.

        Returns:
          ``[B, num_positions, hidden_size]`` in ``dtype``: the hidden states after ``num_layers`` layers.
        """
        cfg = self.config
        want = (cfg.num_channels, cfg.image_size, cfg.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != want:
            raise ValueError(f"pixel_values must be [B, {want[0]}, {want[1]}, {want[2]}] (preprocess_images gives "
                             f"that), got shape {tuple(pixel_values.shape)}")
        x = self.embed(pixel_values)
        stacked = {name: getattr(self.layers, name)[...] for name in LAYER_PARAMS}

        def body(carry, p):
            return _encoder_layer(carry, p, cfg, self.dtype), None

        x, _ = jax.lax.scan(body, x, stacked)
        return x.astype(self.dtype)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, pixel_values):
    return nnx.merge(graphdef, state)(pixel_values)


def encode_image(encoder: ClipVisionEncoder, pixel_values) -> jax.Array:
    """``encoder(pixel_values)`` under ``jax.jit``: ``[B, C, S, S] -> [B, N, D]`` (one compile per shape)."""
    graphdef, state = nnx.split(encoder)
    return _forward(graphdef, state, jnp.asarray(pixel_values))
