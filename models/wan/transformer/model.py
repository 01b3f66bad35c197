"""The Wan diffusion transformer (DiT) in Flax NNX: Wan2.1 T2V / I2V / FLF2V, Wan2.2 T2V / I2V / TI2V.

One definition serves every parallel strategy. The forward pass is split into three calls that
strategies address separately, so none of them copies the model:

* :meth:`WanTransformer.embed` — patch embedding of the latent, time and text conditioning, and the
  rotary tables for explicit token positions (a window passes its global offset);
* :meth:`WanTransformer.run_blocks` — the transformer blocks, whose parameters are **stacked on a
  leading layer axis** and applied with ``lax.scan``. Any layer range can run (a pipeline stage is a
  slice of that axis), the self-attention function is an argument (Ulysses/Ring wrap it), extra
  cached keys/values can be appended to self-attention (DualParal), and a per-layer hook can
  transform each layer's parameters before use (weight sharding gathers them there);
* :meth:`WanTransformer.head` — output modulation, projection and unpatchify.

``model(latents[B,C,T,H,W], timestep[B], context[B,L,text_dim]) -> velocity[B,C,T,H,W]`` composes
the three and is numerically the diffusers ``WanTransformer3DModel`` forward.

Image-to-video (Wan2.1 I2V/FLF2V, ``config.image_dim`` set): ``image=[B, Li, image_dim]`` (the CLIP
states) is embedded with the text by :meth:`WanTransformer.embed_condition` (the one call that takes
it); the result, :class:`CrossContext`, travels in ``Conditioning.context`` like the text alone does,
so ``run_blocks`` and ``head`` and whatever wraps them (sharded attention, layer ranges, weight
gathering) see nothing new. The I2V latent input (noise + mask + encoded image, 36 channels) is just
``in_channels``; the velocity has ``out_channels`` (16).

Per-token timesteps (Wan2.2 TI2V-5B): ``timestep`` may be ``[B, S]``, one per token (the conditioning
frame's tokens at t = 0, see :func:`token_timesteps`). The time embedding and modulation are then per
token: ``temb [B, S, D]``, ``tproj [B, S, 6, D]``. **Sequence-parallel callers** split them exactly
like the tokens: the simplest is to split the timesteps ``[B, S]`` along axis 1 the way the tokens
are split (``shard_tokens(t, axes, axis=1)``; an LP window takes the window's tokens' timesteps) and
call :meth:`WanTransformer.embed_condition` on the local ``[B, S_local]``; its ``temb`` and ``tproj``
are then local and go to ``run_blocks``/``head_tokens`` unchanged. Splitting ``tproj`` (axis 1) and
``temb`` (axis 1) after a full-sequence ``embed_condition`` gives the same numbers. Padded tokens may
carry any timestep (zeros): they are masked out of attention and dropped when gathered.

Precision: the linear layers run in ``dtype`` (bf16 on accelerators, float32 in tests); layer norms,
the time embedding, the modulation and the residual additions run in float32, as in the reference.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvdm.models.wan import rope as rope_lib
from jaxvdm.models.wan.attention import AttentionFn, get_attention
from jaxvdm.models.wan.transformer.config import WanConfig

__all__ = ["WanTransformer", "Conditioning", "CrossContext", "ExtraKV", "patchify", "unpatchify", "timestep_embedding",
           "token_timesteps", "init_transformer", "abstract_transformer", "count_parameters", "is_block_path"]

F32 = jnp.float32


class CrossContext(NamedTuple):
    """The cross-attention context of an image-to-video model (a pytree): embedded text and image.

    text: ``[B, Lt, D]``; image: ``[B, Li, D]`` (Li = 257 CLIP tokens for I2V, 514 for FLF2V).
    """

    text: jax.Array
    image: jax.Array


class Conditioning(NamedTuple):
    """What every block needs besides the hidden states (a pytree).

    tproj: float32 time projection (shift/scale/gate for attention and FFN): ``[B, 6, D]`` for one
      timestep per sample, or ``[B, S, 6, D]`` per token (Wan2.2 TI2V), ``S`` the tokens being
      processed here (this device's tokens under sequence parallelism: split like the tokens).
    context: ``[B, L, D]`` embedded text, or a :class:`CrossContext` (text and image) for I2V models.
    cos, sin: ``[S, Dh/2]`` float32 rotary tables of the tokens being processed.
    """

    tproj: jax.Array
    context: jax.Array
    cos: jax.Array
    sin: jax.Array


class ExtraKV(NamedTuple):
    """Extra self-attention keys/values appended after the block's own (DualParal's feature cache).

    k, v: ``[B, Se, D]`` projections of other tokens taken *before* ``norm_k`` and RoPE; stacked with a
      leading layer axis when passed to :meth:`WanTransformer.run_blocks`.
    cos, sin: ``[Se, Dh/2]`` rotary tables for those keys (same for every layer).
    valid: scalar bool; when False the extra keys are masked out (e.g. no successor block).
    """

    k: jax.Array
    v: jax.Array
    cos: jax.Array
    sin: jax.Array
    valid: jax.Array


# ----------------------------------------------------------------------------- building blocks


def _linear(din: int, dout: int, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def layer_norm(x: jax.Array, eps: float, scale: jax.Array | None = None, bias: jax.Array | None = None) -> jax.Array:
    """LayerNorm over the last axis in float32 (returns float32)."""
    x = x.astype(F32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps)
    if scale is not None:
        y = y * scale.astype(F32)
    if bias is not None:
        y = y + bias.astype(F32)
    return y


class RMSNorm(nnx.Module):
    """RMSNorm with a learned scale over the full hidden size (across all heads)."""

    def __init__(self, dim: int, eps: float, param_dtype):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(F32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(F32)).astype(x.dtype)


class AffineLayerNorm(nnx.Module):
    """Float32 LayerNorm with weight and bias (the cross-attention norm ``norm2``)."""

    def __init__(self, dim: int, eps: float, param_dtype):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.eps, self.scale[...], self.bias[...])


class Attention(nnx.Module):
    """Wan attention: q/k/v projections, RMSNorm across heads on q and k, optional RoPE, output proj.

    With ``added_kv`` (the cross-attention of an I2V model with ``added_kv_proj_dim``) it also holds
    the image keys/values ``add_k_proj``, ``add_v_proj`` and their norm ``norm_added_k``.
    """

    def __init__(self, cfg: WanConfig, dtype, param_dtype, rngs: nnx.Rngs, *, added_kv: bool = False):
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.to_q = _linear(d, d, dtype, param_dtype, rngs)
        self.to_k = _linear(d, d, dtype, param_dtype, rngs)
        self.to_v = _linear(d, d, dtype, param_dtype, rngs)
        self.to_out = _linear(d, d, dtype, param_dtype, rngs)
        self.norm_q = RMSNorm(d, cfg.eps, param_dtype)
        self.norm_k = RMSNorm(d, cfg.eps, param_dtype)
        self.add_k_proj = _linear(d, d, dtype, param_dtype, rngs) if added_kv else None
        self.add_v_proj = _linear(d, d, dtype, param_dtype, rngs) if added_kv else None
        self.norm_added_k = RMSNorm(d, cfg.eps, param_dtype) if added_kv else None

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.heads, x.shape[-1] // self.heads)

    def self_attention(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        *,
        attention: AttentionFn,
        kv_len=None,
        extra: ExtraKV | None = None,
        capture: tuple[int, int] | None = None,
    ):
        """Self-attention of ``x [B, S, D]`` with RoPE; returns ``(out [B,S,D], captured)``.

        ``captured`` is ``(k_raw, v)`` of tokens ``capture[0]:capture[1]`` (pre-norm, pre-RoPE keys),
        or None.
        """
        q = self.to_q(x)
        k = self.to_k(x)
        v = self.to_v(x)
        captured = None
        if capture is not None:
            captured = (k[:, capture[0] : capture[1]], v[:, capture[0] : capture[1]])
        if extra is not None:
            s_own = k.shape[1]
            k = jnp.concatenate([k, extra.k.astype(k.dtype)], axis=1)
            v = jnp.concatenate([v, extra.v.astype(v.dtype)], axis=1)
            cos_k = jnp.concatenate([cos, extra.cos], axis=0)
            sin_k = jnp.concatenate([sin, extra.sin], axis=0)
            kv_len = jnp.where(extra.valid, k.shape[1], s_own if kv_len is None else kv_len)
        else:
            cos_k, sin_k = cos, sin
        q = rope_lib.apply_rope(self._heads(self.norm_q(q)), cos, sin)
        k = rope_lib.apply_rope(self._heads(self.norm_k(k)), cos_k, sin_k)
        o = attention(q, k, self._heads(v), kv_len)
        return self.to_out(o.reshape(x.shape).astype(x.dtype)), captured

    def cross_attention(self, x: jax.Array, context, *, attention: AttentionFn) -> jax.Array:
        """Attention of ``x [B, S, D]`` over ``context`` (no mask, no RoPE).

        ``context`` is ``[B, L, D]`` or a :class:`CrossContext`. With image keys/values (``add_k_proj``)
        the query attends to the text and, separately, to the image tokens, and the two outputs are
        summed before ``to_out``; without them the image tokens precede the text in one attention.
        """
        image = None
        if isinstance(context, CrossContext):
            text, image = context.text, context.image
            if self.add_k_proj is None:
                text, image = jnp.concatenate([image.astype(text.dtype), text], axis=1), None
        else:
            text = context
        q = self._heads(self.norm_q(self.to_q(x)))
        k = self._heads(self.norm_k(self.to_k(text)))
        v = self._heads(self.to_v(text))
        o = attention(q, k, v, None)
        if image is not None:
            k_img = self._heads(self.norm_added_k(self.add_k_proj(image)))
            v_img = self._heads(self.add_v_proj(image))
            o = o + attention(q, k_img, v_img, None)
        return self.to_out(o.reshape(x.shape).astype(x.dtype))


class FeedForward(nnx.Module):
    """Linear -> GELU(tanh) -> Linear."""

    def __init__(self, cfg: WanConfig, dtype, param_dtype, rngs: nnx.Rngs):
        self.proj_in = _linear(cfg.hidden_size, cfg.ffn_dim, dtype, param_dtype, rngs)
        self.proj_out = _linear(cfg.ffn_dim, cfg.hidden_size, dtype, param_dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj_out(jax.nn.gelu(self.proj_in(x), approximate=True))


class WanBlock(nnx.Module):
    """One Wan transformer block: modulated self-attention, cross-attention, modulated FFN."""

    def __init__(self, cfg: WanConfig, dtype, param_dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.eps = cfg.eps
        self.attn1 = Attention(cfg, dtype, param_dtype, rngs)
        self.attn2 = Attention(cfg, dtype, param_dtype, rngs, added_kv=cfg.added_kv_proj_dim is not None)
        self.norm2 = AffineLayerNorm(d, cfg.eps, param_dtype) if cfg.cross_attn_norm else None
        self.ffn = FeedForward(cfg, dtype, param_dtype, rngs)
        self.scale_shift_table = nnx.Param(
            (jax.random.normal(rngs.params(), (1, 6, d)) / math.sqrt(d)).astype(param_dtype)
        )

    def __call__(
        self,
        x: jax.Array,
        cond: Conditioning,
        *,
        self_attention: AttentionFn,
        cross_attention: AttentionFn,
        kv_len=None,
        extra: ExtraKV | None = None,
        capture: tuple[int, int] | None = None,
    ):
        """``x [B, S, D] -> (x [B, S, D], captured)``; see :meth:`Attention.self_attention`."""
        dtype = x.dtype
        shift, scale, gate, c_shift, c_scale, c_gate = modulation(self.scale_shift_table[...], cond.tproj)

        h = (layer_norm(x, self.eps) * (1 + scale) + shift).astype(dtype)
        a, captured = self.attn1.self_attention(
            h, cond.cos, cond.sin, attention=self_attention, kv_len=kv_len, extra=extra, capture=capture
        )
        x = (x.astype(F32) + a.astype(F32) * gate).astype(dtype)

        h = self.norm2(x).astype(dtype) if self.norm2 is not None else x
        x = x + self.attn2.cross_attention(h, cond.context, attention=cross_attention)

        h = (layer_norm(x, self.eps) * (1 + c_scale) + c_shift).astype(dtype)
        x = (x.astype(F32) + self.ffn(h).astype(F32) * c_gate).astype(dtype)
        return x, captured


def modulation(table: jax.Array, proj: jax.Array) -> list[jax.Array]:
    """Float32 ``table [1, n, D] + proj``, cut into its ``n`` rows, each broadcastable to ``[B, S, D]``.

    ``proj`` is ``[B, n, D]`` (one per sample: rows ``[B, 1, D]``) or ``[B, S, n, D]`` (per token:
    rows ``[B, S, D]``); a size-1 ``n`` axis broadcasts against the table's.
    """
    table = table.astype(F32)
    proj = proj.astype(F32)
    n = table.shape[1]
    if proj.ndim == 3:
        mod = table + proj
        return [mod[:, i : i + 1] for i in range(n)]
    if proj.ndim == 4:
        mod = table[None] + proj
        return [mod[:, :, i] for i in range(n)]
    raise ValueError(f"time projection must be [B, n, D] or [B, S, n, D], got shape {proj.shape}")


# ----------------------------------------------------------------------------- embeddings


@functools.lru_cache(maxsize=None)
def _sinusoid_freqs(half: int, max_period: float) -> np.ndarray:
    # The float32 exponent as the reference forms it, then a correctly rounded exp on the host: with
    # timesteps near 1000 a one-ulp error in a frequency moves the angle by ~6e-5 rad, so the
    # frequencies are constants, not XLA's exp.
    exponent = (np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)) / np.float32(half)
    return np.exp(exponent.astype(np.float32).astype(np.float64)).astype(np.float32)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding ``[..., dim]`` of timesteps ``t [...]`` (``[B]`` or ``[B, S]``), cosines
    first (float32)."""
    freqs = jnp.asarray(_sinusoid_freqs(dim // 2, float(max_period)))
    args = t.astype(F32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def token_timesteps(frame_mask: jax.Array, t, patch: tuple[int, int, int]) -> jax.Array:
    """Per-token timesteps ``[S]`` of a latent (Wan2.2 TI2V, diffusers' ``expand_timesteps``).

    ``frame_mask [T, H, W]``: 1 where the latent is denoised, 0 where it is a clean condition (the
    first latent frame of image-to-video); ``t``: the step's timestep (scalar). A token takes the
    mask value of its patch's first latent position times ``t``, in the token order of
    :func:`patchify`. An LP window passes its slice of the mask.
    """
    pt, ph, pw = patch
    m = jnp.asarray(frame_mask, F32)[::pt, ::ph, ::pw]
    return (m * jnp.asarray(t, F32)).reshape(-1)


def patchify(latents: jax.Array, patch: tuple[int, int, int]) -> jax.Array:
    """``[B, C, T, H, W] -> [B, T'*H'*W', C*pt*ph*pw]`` (tokens frame-major, features (C, pt, ph, pw))."""
    b, c, t, h, w = latents.shape
    pt, ph, pw = patch
    x = latents.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.transpose(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify(tokens: jax.Array, grid: tuple[int, int, int], patch: tuple[int, int, int], channels: int) -> jax.Array:
    """``[B, T'*H'*W', pt*ph*pw*C] -> [B, C, T, H, W]`` (token features ordered (pt, ph, pw, C))."""
    b = tokens.shape[0]
    t, h, w = grid
    pt, ph, pw = patch
    x = tokens.reshape(b, t, h, w, pt, ph, pw, channels)
    x = x.transpose(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, channels, t * pt, h * ph, w * pw)


# The image embedder's LayerNorms use PyTorch's default epsilon, in the original Wan and in diffusers.
_IMAGE_NORM_EPS = 1e-5


class ImageEmbedder(nnx.Module):
    """Image-encoder states -> cross-attention tokens: (+ position embedding), LayerNorm, Linear, GELU
    (exact), Linear, LayerNorm (diffusers' ``WanImageEmbedding``, the original ``img_emb``)."""

    def __init__(self, cfg: WanConfig, dtype, param_dtype, rngs: nnx.Rngs):
        c, d = cfg.image_dim, cfg.hidden_size
        self.dtype = dtype
        self.norm1 = AffineLayerNorm(c, _IMAGE_NORM_EPS, param_dtype)
        self.linear_1 = _linear(c, c, dtype, param_dtype, rngs)
        self.linear_2 = _linear(c, d, dtype, param_dtype, rngs)
        self.norm2 = AffineLayerNorm(d, _IMAGE_NORM_EPS, param_dtype)
        p = cfg.pos_embed_seq_len
        self.pos_embed = nnx.Param(jnp.zeros((1, p, c), param_dtype)) if p is not None else None

    def __call__(self, image: jax.Array) -> jax.Array:
        """``image [B, Li, image_dim] -> [B, Li, D]`` in the computation dtype."""
        x = image.astype(F32)
        if self.pos_embed is not None:
            x = x + self.pos_embed[...].astype(F32)
        h = self.linear_1(self.norm1(x).astype(self.dtype))
        h = self.linear_2(jax.nn.gelu(h, approximate=False))
        return self.norm2(h).astype(self.dtype)


class ConditionEmbedder(nnx.Module):
    """Time embedding (float32), text projection and, for I2V models, the image embedder."""

    def __init__(self, cfg: WanConfig, dtype, param_dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.freq_dim = cfg.freq_dim
        self.time_linear_1 = _linear(cfg.freq_dim, d, F32, param_dtype, rngs)
        self.time_linear_2 = _linear(d, d, F32, param_dtype, rngs)
        self.time_proj = _linear(d, 6 * d, F32, param_dtype, rngs)
        self.text_linear_1 = _linear(cfg.text_dim, d, dtype, param_dtype, rngs)
        self.text_linear_2 = _linear(d, d, dtype, param_dtype, rngs)
        self.image_embedder = ImageEmbedder(cfg, dtype, param_dtype, rngs) if cfg.has_image_branch else None

    def __call__(self, timestep: jax.Array, context: jax.Array, image: jax.Array | None = None):
        """``timestep [B]`` or ``[B, S]`` -> ``temb [B, (S,) D]``, ``tproj [B, (S,) 6, D]`` (float32), and
        the context: ``[B, L, D]``, or ``CrossContext(text, image [B, Li, D])`` when ``image`` is given."""
        temb = self.time_linear_2(jax.nn.silu(self.time_linear_1(timestep_embedding(timestep, self.freq_dim))))
        tproj = self.time_proj(jax.nn.silu(temb))
        tproj = tproj.reshape(*tproj.shape[:-1], 6, -1)
        ctx = self.text_linear_2(jax.nn.gelu(self.text_linear_1(context), approximate=True))
        if image is not None:
            ctx = CrossContext(ctx, self.image_embedder(image))
        return temb, tproj, ctx


# ----------------------------------------------------------------------------- the model


class WanTransformer(nnx.Module):
    """The Wan DiT. See the module docstring for the embed / run_blocks / head split, image inputs and
    per-token timesteps.

    Args:
      config: the architecture.
      dtype: computation dtype of the linear layers (float32 or bfloat16).
      param_dtype: storage dtype of parameters.
      rngs: initialisation randomness.
    """

    def __init__(self, config: WanConfig, *, dtype=F32, param_dtype=F32, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        self.dtype = dtype
        d = cfg.hidden_size
        self.patch_embedding = _linear(cfg.in_channels * cfg.patch_volume, d, dtype, param_dtype, rngs)
        self.condition_embedder = ConditionEmbedder(cfg, dtype, param_dtype, rngs)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(r: nnx.Rngs) -> WanBlock:
            return WanBlock(cfg, dtype, param_dtype, r)

        self.blocks = make_blocks(rngs)
        self.proj_out = _linear(d, cfg.out_channels * cfg.patch_volume, dtype, param_dtype, rngs)
        self.scale_shift_table = nnx.Param(
            (jax.random.normal(rngs.params(), (1, 2, d)) / math.sqrt(d)).astype(param_dtype)
        )

    # -- embed ---------------------------------------------------------------------------------

    def embed_tokens(self, latents: jax.Array) -> jax.Array:
        """Patch embedding: ``[B, C, T, H, W] -> [B, S, D]`` in the computation dtype."""
        x = patchify(latents.astype(self.dtype), self.config.patch_size)
        return self.patch_embedding(x)

    def embed_condition(self, timestep: jax.Array, context: jax.Array, image: jax.Array | None = None):
        """Time, text and image conditioning.

        Args:
          timestep: ``[B]`` (one per sample) or ``[B, S]`` (one per token, Wan2.2 TI2V; ``S`` the
            tokens this call's caller processes, e.g. this device's tokens).
          context: ``[B, L, text_dim]`` text-encoder states.
          image: ``[B, Li, image_dim]`` image-encoder states; required by, and only accepted by, a
            model with ``config.image_dim``. FLF2V (``pos_embed_seq_len = P``): ``Li = P``, the first
            frame's tokens then the last frame's (diffusers' ``[2B, P/2, C]`` is ``reshape(B, P, C)``).

        Returns:
          ``(temb, tproj, context)``: ``temb [B, D]`` / ``[B, S, D]`` and ``tproj [B, 6, D]`` /
          ``[B, S, 6, D]`` float32; ``context [B, L, D]``, or a :class:`CrossContext` with an image.
        """
        cfg = self.config
        timestep = jnp.asarray(timestep)
        if timestep.ndim not in (1, 2):
            raise ValueError(f"timestep must be [B] or [B, S] (one per token), got shape {timestep.shape}")
        if image is not None:
            if not cfg.has_image_branch:
                raise ValueError("this transformer has no image branch (config.image_dim is None): call it without "
                                 "image= (Wan2.2 I2V and TI2V take the image through the latent channels)")
            image = jnp.asarray(image)
            want = cfg.pos_embed_seq_len
            if image.ndim != 3 or image.shape[0] != context.shape[0] or image.shape[2] != cfg.image_dim or (
                    want is not None and image.shape[1] != want):
                raise ValueError(
                    f"image must be [B={context.shape[0]}, {want if want is not None else 'Li'}, "
                    f"image_dim={cfg.image_dim}], got shape {image.shape}"
                    + ("; FLF2V joins the first and last frame's tokens: pass diffusers' [2B, P/2, C] states as "
                       "states.reshape(B, P, C)" if want is not None else ""))
        elif cfg.has_image_branch:
            raise ValueError(f"this transformer is image-conditioned (image_dim={cfg.image_dim}): pass "
                             f"image=[B, Li, {cfg.image_dim}] (the CLIP states of jaxvdm.models.wan.image_encoder)")
        return self.condition_embedder(timestep, context.astype(self.dtype), image)

    def rope(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Rotary ``(cos, sin)`` ``[S, Dh/2]`` for token ``positions [S, 3]``."""
        cfg = self.config
        return rope_lib.rope_cos_sin(positions, cfg.attention_head_dim, cfg.rope_max_seq_len)

    def embed(self, latents: jax.Array, timestep: jax.Array, context: jax.Array, *, image: jax.Array | None = None,
              offset=(0, 0, 0)):
        """Everything before the blocks.

        Args:
          latents: ``[B, C, T, H, W]`` (a window of the video is fine).
          timestep: ``[B]``, or ``[B, S]`` per token of ``latents`` (:func:`token_timesteps`).
          context: ``[B, L, text_dim]``.
          image: ``[B, Li, image_dim]`` for image-conditioned models (see :meth:`embed_condition`).
          offset: (t, h, w) token offset of ``latents`` in the full video (ints, may be traced), so
            tokens get their global rotary positions.

        Returns:
          ``(tokens [B, S, D], temb [B, (S,) D], Conditioning)``.
        """
        grid = self.config.token_grid(latents.shape[2:])
        tokens = self.embed_tokens(latents)
        timestep = jnp.asarray(timestep)
        if timestep.ndim == 2 and timestep.shape[1] != tokens.shape[1]:
            raise ValueError(f"per-token timestep has {timestep.shape[1]} entries, the latent has {tokens.shape[1]} "
                             f"tokens (grid {grid}); build it with token_timesteps")
        temb, tproj, ctx = self.embed_condition(timestep, context, image)
        cos, sin = self.rope(rope_lib.grid_positions(grid, offset))
        return tokens, temb, Conditioning(tproj, ctx, cos, sin)

    # -- blocks --------------------------------------------------------------------------------

    def run_blocks(
        self,
        x: jax.Array,
        cond: Conditioning,
        *,
        layers: tuple[int, int] | None = None,
        self_attention: AttentionFn | str | None = None,
        cross_attention: AttentionFn | str | None = None,
        kv_len=None,
        extra: ExtraKV | None = None,
        capture: tuple[int, int] | None = None,
        param_hook: Callable[[Any], Any] | None = None,
        layer_valid: jax.Array | None = None,
        block_state: Any = None,
    ):
        """Runs transformer blocks ``layers = (start, stop)`` (default all) over ``x [B, S, D]``.

        Args:
          self_attention, cross_attention: attention functions (or backend names); sequence-parallel
            strategies pass wrappers that communicate inside.
          kv_len: keys at positions ``>= kv_len`` are masked in self-attention (token padding).
          extra: :class:`ExtraKV` whose ``k``/``v`` carry a leading layer axis matching ``layers``.
          capture: token range whose raw self-attention ``(k, v)`` each layer returns.
          param_hook: applied to each layer's parameter state inside the scan before use (e.g. an
            all-gather of sharded weights).
          layer_valid: bool ``[n_layers]``; a False layer is skipped (identity, not computed), for padded
            pipeline stages.
          block_state: stacked block parameter state to use instead of this model's (e.g. a stage's
            shard); its leading axis is the layer axis.

        Returns:
          ``x``, or ``(x, (k [n,B,Sc,D], v [n,B,Sc,D]))`` when ``capture`` is given.
        """
        sa = get_attention(self_attention) if self_attention is None or isinstance(self_attention, str) else self_attention
        ca = get_attention(cross_attention) if cross_attention is None or isinstance(cross_attention, str) else cross_attention
        graphdef, state = nnx.split(self.blocks)
        if block_state is not None:
            state = block_state
        if layers is not None:
            start, stop = layers
            state = jax.tree.map(lambda a: a[start:stop], state)
        n = jax.tree.leaves(state)[0].shape[0]
        extra_kv = None if extra is None else (extra.k, extra.v)
        valid = jnp.ones((n,), bool) if layer_valid is None else layer_valid

        def layer(x, st, ekv):
            if param_hook is not None:
                st = param_hook(st)
            blk = nnx.merge(graphdef, st)
            e = None if ekv is None else ExtraKV(ekv[0], ekv[1], extra.cos, extra.sin, extra.valid)
            return blk(x, cond, self_attention=sa, cross_attention=ca, kv_len=kv_len, extra=e, capture=capture)

        def body(x, xs):
            st, ekv, ok = xs
            if layer_valid is None:
                return layer(x, st, ekv)
            out_shape = jax.eval_shape(layer, x, st, ekv)
            skip = lambda: (x, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape[1]))  # noqa: E731
            return jax.lax.cond(ok, lambda: layer(x, st, ekv), skip)

        x, captured = jax.lax.scan(body, x, (state, extra_kv, valid))
        return (x, captured) if capture is not None else x

    # -- head ----------------------------------------------------------------------------------

    def head_tokens(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        """Output modulation and projection per token: ``[B, S, D] -> [B, S, pt*ph*pw*C]`` (float32).

        ``temb`` is ``[B, D]`` or per token ``[B, S, D]`` (the same tokens as ``x``)."""
        shift, scale = modulation(self.scale_shift_table[...], temb[..., None, :])
        h = (layer_norm(x, self.config.eps) * (1 + scale) + shift).astype(x.dtype)
        return self.proj_out(h).astype(F32)

    def head(self, x: jax.Array, temb: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
        """``[B, S, D] -> velocity [B, C, T, H, W]`` (float32) for a token ``grid``; ``temb`` as in
        :meth:`head_tokens`."""
        cfg = self.config
        return unpatchify(self.head_tokens(x, temb), grid, cfg.patch_size, cfg.out_channels)

    # -- full forward --------------------------------------------------------------------------

    def __call__(
        self,
        latents: jax.Array,
        timestep: jax.Array,
        context: jax.Array,
        *,
        image: jax.Array | None = None,
        attention: AttentionFn | str | None = None,
        offset=(0, 0, 0),
    ) -> jax.Array:
        """The diffusers forward: ``latents [B,C,T,H,W]``, ``timestep [B]`` or ``[B, S]``,
        ``context [B,L,text_dim]``, ``image [B,Li,image_dim]`` (I2V models only) -> ``velocity
        [B,C_out,T,H,W]`` float32."""
        grid = self.config.token_grid(latents.shape[2:])
        x, temb, cond = self.embed(latents, timestep, context, image=image, offset=offset)
        x = self.run_blocks(x, cond, self_attention=attention, cross_attention=attention)
        return self.head(x, temb, grid)


# ----------------------------------------------------------------------------- construction


def is_block_path(path) -> bool:
    """Whether a key path of the model's state (``jax.tree_util`` keys) is a stacked block parameter
    (``blocks/...``, leading layer axis): what weight sharding and pipeline stages split."""
    return len(path) > 0 and getattr(path[0], "key", None) == "blocks"


def abstract_transformer(cfg: WanConfig, *, dtype=jnp.float32, param_dtype=jnp.float32) -> WanTransformer:
    """A WanTransformer whose parameters are ``jax.ShapeDtypeStruct`` (nothing allocated)."""
    return nnx.eval_shape(lambda: WanTransformer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))


def count_parameters(model: WanTransformer) -> int:
    """Number of parameters (works on an abstract model)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def init_transformer(cfg: WanConfig, *, seed: int = 0, dtype=jnp.float32, param_dtype=jnp.float32) -> WanTransformer:
    """A randomly initialised WanTransformer (for benchmarks and training from scratch)."""
    return WanTransformer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))
