"""The UMT5 text encoder of Wan2.1 in Flax NNX, its tokenizer, and Wan's prompt encoding.

* :class:`UMT5Encoder` — the encoder stack of UMT5 (``google/umt5-xxl`` for Wan2.1): a token
  embedding, ``num_layers`` blocks of [T5 RMSNorm → self-attention with a relative position bias
  of the block's own (UMT5 does not share it between layers), no ``1/sqrt(d)`` scaling → residual;
  RMSNorm → gated feed-forward ``wo(act(wi_0 x) * wi_1 x)`` → residual], and a final RMSNorm.
  ``encoder(input_ids[B, L], attention_mask[B, L]) -> last_hidden_state[B, L, d_model]`` is
  numerically transformers' ``UMT5EncoderModel(...).last_hidden_state``. Per-layer parameters are
  stacked on a leading layer axis and applied with ``lax.scan`` (one compiled layer for all 24).
* :func:`load_text_encoder` — strict loading of a transformers ``text_encoder/`` folder.
* :func:`load_tokenizer` — the transformers tokenizer of a ``tokenizer/`` folder, offline.
* :func:`encode_prompts` — diffusers ``WanPipeline._get_t5_prompt_embeds``: clean the prompt, tokenize
  to ``max_length`` with the attention mask, encode with the mask, keep the first ``length`` rows of
  each sequence and set the rest to exactly zero.

Precision: matmuls run in ``dtype`` (float32 in tests, bfloat16 allowed); the RMSNorm statistics,
attention scores, the position bias and the softmax are float32, and so is the residual stream (in
bfloat16 transformers keeps the residual in bfloat16; ours is the more accurate of the two).
``keep_wo_fp32=True`` stores and applies the feed-forward output projections ``wo`` in float32, which
is what transformers does for UMT5 in float16 (``_keep_in_fp32_modules``; not in bfloat16, where
``wo`` stays bfloat16 — our default).

Tokenization needs ``transformers`` (with ``tokenizers``/``sentencepiece``) at run time; the encoder
itself does not.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvdm.models.wan.text_encoder.config import ACTIVATIONS, UMT5EncoderConfig

__all__ = ["UMT5Encoder", "encoder_forward", "relative_position_buckets"]

F32 = jnp.float32


# ----------------------------------------------------------------------------- building blocks


def relative_position_buckets(query_len: int, key_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 relative-position buckets, ``[query_len, key_len]`` int32 in ``[0, num_buckets)``.

    Position ``key - query`` goes to: half the buckets for ``key > query`` and half for ``key <= query``;
    within each half, ``|d| < num_buckets/4`` gets its own bucket and larger distances share
    logarithmically wider ones up to ``max_distance`` (everything beyond shares the last). The
    logarithm is taken in float32 with the same operation order as transformers, so the integer
    buckets agree with it (the boundaries depend on float32 rounding).
    """
    rel = np.arange(key_len, dtype=np.int64)[None, :] - np.arange(query_len, dtype=np.int64)[:, None]
    half = num_buckets // 2
    out = (rel > 0).astype(np.int64) * half
    n = np.abs(rel)
    max_exact = half // 2
    safe = np.maximum(n, max_exact).astype(np.float32)  # the log is only used where n >= max_exact
    ratio = np.log(safe / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + (ratio * np.float32(half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (out + np.where(n < max_exact, n, large)).astype(np.int32)


def _rms_norm(x: jax.Array, scale: jax.Array, eps: float, dtype) -> jax.Array:
    """T5 RMSNorm: no mean subtraction, no bias; statistics in float32; output ``dtype``."""
    x = x.astype(F32)
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
    return y.astype(dtype) * scale.astype(dtype)


def _encoder_layer(x, p, buckets, key_bias, cfg: UMT5EncoderConfig, dtype):
    """One UMT5 block. x: ``[B, L, D]`` float32 residual; p: this layer's parameters; returns x."""
    b, length, _ = x.shape
    heads, d_kv = cfg.num_heads, cfg.d_kv

    h = _rms_norm(x, p["attn_norm"], cfg.layer_norm_epsilon, dtype)
    q = (h @ p["q"].astype(dtype)).reshape(b, length, heads, d_kv)
    k = (h @ p["k"].astype(dtype)).reshape(b, length, heads, d_kv)
    v = (h @ p["v"].astype(dtype)).reshape(b, length, heads, d_kv)
    # No 1/sqrt(d_kv): T5 folds it into the initialisation.
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=F32)
    position_bias = jnp.transpose(p["rel_bias"].astype(F32)[buckets], (2, 0, 1))  # [H, L, L]
    scores = scores + position_bias[None] + key_bias
    probs = jax.nn.softmax(scores, axis=-1)
    attn = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v).reshape(b, length, heads * d_kv)
    x = x + (attn @ p["o"].astype(dtype)).astype(F32)

    h = _rms_norm(x, p["ffn_norm"], cfg.layer_norm_epsilon, dtype)
    act = ACTIVATIONS[cfg.dense_act_fn]
    gated = act(h @ p["wi_0"].astype(dtype)) * (h @ p["wi_1"].astype(dtype))
    wo = p["wo"]
    y = gated.astype(wo.dtype) @ wo  # in wo's own dtype (float32 with keep_wo_fp32)
    return x + y.astype(F32)


_LAYER_PARAMS = ("rel_bias", "attn_norm", "q", "k", "v", "o", "ffn_norm", "wi_0", "wi_1", "wo")


class _Layers(nnx.Module):
    """The per-layer parameters of all blocks, stacked on a leading layer axis ``N``.

    rel_bias ``[N, buckets, H]``; attn_norm, ffn_norm ``[N, D]``; q, k, v ``[N, D, H*d_kv]``;
    o ``[N, H*d_kv, D]``; wi_0, wi_1 ``[N, D, d_ff]``; wo ``[N, d_ff, D]`` (kernels are ``[in, out]``).
    """

    def __init__(self, cfg: UMT5EncoderConfig, param_dtype, wo_dtype, key: jax.Array):
        n, d, inner, f = cfg.num_layers, cfg.d_model, cfg.inner_dim, cfg.d_ff
        ks = jax.random.split(key, 7)

        def normal(k, shape, std, dt):
            return (jax.random.normal(k, shape, F32) * std).astype(dt)

        # Standard deviations of transformers' UMT5 initialisation (used only for random models).
        self.rel_bias = nnx.Param(normal(ks[0], (n, cfg.relative_attention_num_buckets, cfg.num_heads), d**-0.5, param_dtype))
        self.attn_norm = nnx.Param(jnp.ones((n, d), param_dtype))
        self.q = nnx.Param(normal(ks[1], (n, d, inner), (d * cfg.d_kv) ** -0.5, param_dtype))
        self.k = nnx.Param(normal(ks[2], (n, d, inner), d**-0.5, param_dtype))
        self.v = nnx.Param(normal(ks[3], (n, d, inner), d**-0.5, param_dtype))
        self.o = nnx.Param(normal(ks[4], (n, inner, d), inner**-0.5, param_dtype))
        self.ffn_norm = nnx.Param(jnp.ones((n, d), param_dtype))
        self.wi_0 = nnx.Param(normal(ks[5], (n, d, f), d**-0.5, param_dtype))
        self.wi_1 = nnx.Param(normal(ks[6], (n, d, f), d**-0.5, param_dtype))
        self.wo = nnx.Param(normal(jax.random.fold_in(key, 7), (n, f, d), f**-0.5, wo_dtype))


class UMT5Encoder(nnx.Module):
    """The UMT5 encoder stack (transformers ``UMT5EncoderModel``), Flax NNX.

    Args:
      config: architecture.
      dtype: computation dtype of the matmuls (float32 or bfloat16).
      param_dtype: storage dtype of the parameters (default ``dtype``).
      keep_wo_fp32: store and apply the feed-forward output projections ``wo`` in float32, as
        transformers does for UMT5 loaded in float16 (default False: ``wo`` in ``param_dtype``).
      rngs: random initialisation (a random model is only useful for tests and benchmarks).

    Parameters: ``embed [vocab, D]``, ``layers`` (see :class:`_Layers`), ``final_norm [D]``.
    """

    def __init__(self, config: UMT5EncoderConfig, *, dtype=F32, param_dtype=None, keep_wo_fp32: bool = False,
                 rngs: nnx.Rngs):
        param_dtype = dtype if param_dtype is None else param_dtype
        self.config = config
        self.dtype = dtype
        key = rngs.params()
        k_embed, k_layers = jax.random.split(key)
        self.embed = nnx.Param(jax.random.normal(k_embed, (config.vocab_size, config.d_model), F32).astype(param_dtype))
        self.layers = _Layers(config, param_dtype, F32 if keep_wo_fp32 else param_dtype, k_layers)
        self.final_norm = nnx.Param(jnp.ones((config.d_model,), param_dtype))

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Encodes token ids.

        Args:
          input_ids: ``[B, L]`` integer token ids, each in ``[0, vocab_size)`` (not checked here;
            :func:`encode_prompts` checks them).
          attention_mask: ``[B, L]``, nonzero where a token is real. Keys at zero positions get a
            float32-minimum additive bias (their softmax weight is exactly 0), exactly as
            transformers; queries at padded positions are still computed. None means all ones.

        Returns:
          ``last_hidden_state [B, L, d_model]`` in ``dtype``.
        """
        cfg = self.config
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        b, length = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, length), jnp.int32)
        attention_mask = jnp.asarray(attention_mask)
        if attention_mask.shape != (b, length):
            raise ValueError(f"attention_mask {attention_mask.shape} must have the shape of input_ids {(b, length)}")
        key_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(F32).min).astype(F32)
        buckets = jnp.asarray(relative_position_buckets(
            length, length, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance))

        x = jnp.take(self.embed[...], input_ids, axis=0).astype(F32)
        stacked = {name: getattr(self.layers, name)[...] for name in _LAYER_PARAMS}

        def body(carry, p):
            return _encoder_layer(carry, p, buckets, key_bias, cfg, self.dtype), None

        x, _ = jax.lax.scan(body, x, stacked)
        return _rms_norm(x, self.final_norm[...], cfg.layer_norm_epsilon, self.dtype)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, input_ids, attention_mask):
    return nnx.merge(graphdef, state)(input_ids, attention_mask)


def encoder_forward(encoder: UMT5Encoder, input_ids, attention_mask=None) -> jax.Array:
    """``encoder(input_ids, attention_mask)`` under ``jax.jit`` (one compilation per shape and dtype).

    input_ids, attention_mask: ``[B, L]``; returns ``[B, L, d_model]`` in the encoder's dtype.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    graphdef, state = nnx.split(encoder)
    return _forward(graphdef, state, input_ids, jnp.asarray(attention_mask, jnp.int32))
