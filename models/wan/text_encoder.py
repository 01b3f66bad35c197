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

import dataclasses
import functools
import html
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvdm.models.checkpoint import CheckpointError, check_tensors, read_config, read_safetensors_dir

try:  # diffusers cleans prompts with ftfy when it is installed, and skips that step when it is not
    import ftfy as _ftfy
except ImportError:  # pragma: no cover - depends on the environment
    _ftfy = None

__all__ = [
    "UMT5EncoderConfig",
    "UMT5Encoder",
    "relative_position_buckets",
    "text_encoder_tensor_shapes",
    "params_from_transformers",
    "load_text_encoder",
    "encoder_forward",
    "load_tokenizer",
    "prompt_clean",
    "encode_prompts",
]

F32 = jnp.float32
_WEIGHTS = "model"
# The token embedding: transformers' save_pretrained writes ``shared.weight`` (the tied copy
# ``encoder.embed_tokens.weight`` is dropped); when a checkpoint holds both with different values,
# transformers unties them and the encoder runs on ``encoder.embed_tokens.weight``, so that one wins.
_EMBED_SAVED = "shared.weight"
_EMBED_USED = "encoder.embed_tokens.weight"

_ACTIVATIONS = {
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class UMT5EncoderConfig:
    """Architecture of a UMT5 encoder (the fields of transformers' ``UMT5Config`` that matter).

    ``dense_act_fn``/``is_gated_act`` are derived from ``feed_forward_proj`` exactly as transformers
    does (``"gated-gelu"`` -> gated, ``"gelu_new"``), not read from config.json.
    """

    vocab_size: int
    d_model: int
    d_kv: int
    num_heads: int
    d_ff: int
    num_layers: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dense_act_fn: str = "gelu_new"
    is_gated_act: bool = True

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"UMT5 config: {name} must be a positive integer, got {v!r}")
        if self.relative_attention_num_buckets < 4:
            raise ValueError("UMT5 config: relative_attention_num_buckets must be at least 4 (bidirectional buckets)")
        if self.dense_act_fn not in _ACTIVATIONS:
            raise ValueError(
                f"UMT5 config: activation {self.dense_act_fn!r} is not supported (supported: {sorted(_ACTIVATIONS)})"
            )
        if not self.is_gated_act:
            raise ValueError("UMT5 config: only the gated feed-forward (feed_forward_proj 'gated-*') is supported")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "UMT5EncoderConfig":
        """Builds the config from a transformers ``config.json`` dict (extra keys are ignored).

        Raises ValueError if a size field is missing, the model is not UMT5 (T5/mT5 share one
        position bias between layers, so their weights would not fit), or the feed-forward type is
        not a supported gated one.
        """
        model_type = d.get("model_type", "umt5")
        if model_type != "umt5":
            raise ValueError(
                f"model_type is {model_type!r}; this encoder is UMT5 (model_type 'umt5', a position bias per layer)"
            )
        required = ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"config has no {', '.join(missing)}")
        ffp = str(d.get("feed_forward_proj", "gated-gelu"))
        parts = ffp.split("-")
        if (len(parts) > 1 and parts[0] != "gated") or len(parts) > 2:
            raise ValueError(f"feed_forward_proj {ffp!r} is not of the form 'act' or 'gated-act'")
        act = "gelu_new" if ffp == "gated-gelu" else parts[-1]
        return cls(
            vocab_size=d["vocab_size"],
            d_model=d["d_model"],
            d_kv=d["d_kv"],
            num_heads=d["num_heads"],
            d_ff=d["d_ff"],
            num_layers=d["num_layers"],
            relative_attention_num_buckets=d.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=d.get("relative_attention_max_distance", 128),
            layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-6)),
            dense_act_fn=act,
            is_gated_act=parts[0] == "gated",
        )


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
    act = _ACTIVATIONS[cfg.dense_act_fn]
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


# ----------------------------------------------------------------------------- checkpoints

# (our name under layers/, transformers name inside encoder.block.{i}., transpose?)
_LAYER_MAP = [
    ("rel_bias", "layer.0.SelfAttention.relative_attention_bias.weight", False),
    ("attn_norm", "layer.0.layer_norm.weight", False),
    ("q", "layer.0.SelfAttention.q.weight", True),
    ("k", "layer.0.SelfAttention.k.weight", True),
    ("v", "layer.0.SelfAttention.v.weight", True),
    ("o", "layer.0.SelfAttention.o.weight", True),
    ("ffn_norm", "layer.1.layer_norm.weight", False),
    ("wi_0", "layer.1.DenseReluDense.wi_0.weight", True),
    ("wi_1", "layer.1.DenseReluDense.wi_1.weight", True),
    ("wo", "layer.1.DenseReluDense.wo.weight", True),
]


def text_encoder_tensor_shapes(cfg: UMT5EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a transformers ``UMT5EncoderModel`` except the embedding, with its PyTorch shape.

    (The embedding is ``shared.weight`` and/or ``encoder.embed_tokens.weight``, ``[vocab, d_model]``.)
    """
    d, inner, f = cfg.d_model, cfg.inner_dim, cfg.d_ff
    per_layer = {
        "rel_bias": (cfg.relative_attention_num_buckets, cfg.num_heads),
        "attn_norm": (d,), "ffn_norm": (d,),
        "q": (inner, d), "k": (inner, d), "v": (inner, d), "o": (d, inner),
        "wi_0": (f, d), "wi_1": (f, d), "wo": (d, f),
    }
    shapes = {"encoder.final_layer_norm.weight": (d,)}
    for i in range(cfg.num_layers):
        for ours, theirs, _ in _LAYER_MAP:
            shapes[f"encoder.block.{i}.{theirs}"] = per_layer[ours]
    return shapes


def params_from_transformers(cfg: UMT5EncoderConfig, sd: Mapping[str, np.ndarray], *, source: str = "checkpoint",
                             param_dtype=np.float32, wo_dtype=np.float32) -> dict:
    """Converts a transformers UMT5 encoder state dict to our parameter tree (numpy arrays).

    The embedding is ``encoder.embed_tokens.weight`` if present, else ``shared.weight`` (what
    ``save_pretrained`` writes). These are tied in transformers; if a checkpoint holds both with
    different values transformers unties them and the encoder uses ``encoder.embed_tokens.weight``,
    and so do we. Linear weights ``[out, in]`` become kernels ``[in, out]``; per-layer tensors are
    stacked on a leading layer axis; each tensor is cast to its storage dtype before stacking.

    Raises CheckpointError naming every missing, unexpected or mis-shaped tensor.
    """
    expected = text_encoder_tensor_shapes(cfg)
    present = [k for k in (_EMBED_USED, _EMBED_SAVED) if k in sd] or [_EMBED_SAVED]
    for k in present:  # a missing embedding is reported under the name save_pretrained writes
        expected[k] = (cfg.vocab_size, cfg.d_model)
    check_tensors(expected, sd, source=source)

    def cast(a, dt, transpose=False):
        a = np.asarray(a)
        return (a.T if transpose else a).astype(dt)

    layers = {}
    for ours, theirs, transpose in _LAYER_MAP:
        dt = wo_dtype if ours == "wo" else param_dtype
        layers[ours] = np.stack([cast(sd[f"encoder.block.{i}.{theirs}"], dt, transpose) for i in range(cfg.num_layers)])
    return {
        "embed": cast(sd[present[0]], param_dtype),
        "layers": layers,
        "final_norm": cast(sd["encoder.final_layer_norm.weight"], param_dtype),
    }


def load_text_encoder(path: str | os.PathLike, dtype=F32, *, param_dtype=None,
                      keep_wo_fp32: bool = False) -> UMT5Encoder:
    """Loads a transformers ``UMT5EncoderModel`` folder (Wan's ``text_encoder/``).

    Reads ``path/config.json`` and ``path/model.safetensors`` or the shards listed in
    ``path/model.safetensors.index.json`` (never pickles). Loading is strict.

    Args:
      path: the folder.
      dtype: computation dtype (float32, or bfloat16 on accelerators).
      param_dtype: storage dtype (default ``dtype``).
      keep_wo_fp32: keep the feed-forward output projections in float32 (transformers does so in
        float16 only; useful with float16, unnecessary with bfloat16).

    Returns:
      A :class:`UMT5Encoder` holding the checkpoint's weights.

    Raises:
      CheckpointError: no config.json or weights, an invalid config, or any missing, unexpected or
        mis-shaped tensor (all named in one message).
    """
    path = Path(path)
    cfg_dict = read_config(path)
    try:
        cfg = UMT5EncoderConfig.from_dict(cfg_dict)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'config.json'}: invalid UMT5 text-encoder config: {e}") from None
    sd = read_safetensors_dir(path, _WEIGHTS)
    param_dtype = dtype if param_dtype is None else param_dtype
    wo_dtype = F32 if keep_wo_fp32 else param_dtype
    params = params_from_transformers(cfg, sd, source=str(path), param_dtype=np.dtype(param_dtype),
                                      wo_dtype=np.dtype(wo_dtype))
    abstract = nnx.eval_shape(lambda: UMT5Encoder(cfg, dtype=dtype, param_dtype=param_dtype,
                                                  keep_wo_fp32=keep_wo_fp32, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)

    def take(keypath, leaf):
        node = params
        for k in keypath:
            node = node[getattr(k, "key", k)]
        if tuple(node.shape) != tuple(leaf.shape):  # guarded by check_tensors; this guards the conversion
            raise CheckpointError(f"internal: converted {jax.tree_util.keystr(keypath)} is {node.shape}, model needs {leaf.shape}")
        return jnp.asarray(node, dtype=leaf.dtype)

    pure = jax.tree_util.tree_map_with_path(take, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


# ----------------------------------------------------------------------------- tokenizer and prompts

_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


def load_tokenizer(path: str | os.PathLike):
    """Loads the transformers tokenizer saved in folder ``path`` (Wan's ``tokenizer/``), offline.

    The folder must hold ``tokenizer.json`` and/or a sentencepiece ``spiece.model`` (with the usual
    ``tokenizer_config.json``). Nothing is downloaded (``local_files_only=True``).

    Raises:
      CheckpointError if the folder or its tokenizer files are missing or transformers cannot read them.
      ImportError if transformers is not installed.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected a tokenizer folder holding {' or '.join(_TOKENIZER_FILES)})")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        present = sorted(p.name for p in path.iterdir())[:12]
        raise CheckpointError(
            f"{path}: no tokenizer files (expected {' or '.join(_TOKENIZER_FILES)}; found {present or 'nothing'})"
        )
    try:
        from transformers import AutoTokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("tokenizing prompts needs transformers: pip install transformers sentencepiece") from e
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: transformers could not load the tokenizer: {e}") from None


# Unicode White_Space, which is what diffusers' `regex` pattern r"\s+" matches (Python's `re` would also
# match U+001C..U+001F).
_WHITESPACE = re.compile(
    "[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"
)


def prompt_clean(text: str) -> str:
    """diffusers' Wan prompt cleaning: ``ftfy.fix_text`` (only if ftfy is installed, as in diffusers),
    HTML-unescape twice, strip, collapse every run of Unicode whitespace to one space, strip."""
    if _ftfy is not None:
        text = _ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip()


@jax.jit
def _cut_and_pad(hidden: jax.Array, lengths: jax.Array) -> jax.Array:
    keep = jnp.arange(hidden.shape[1])[None, :] < lengths[:, None]
    return jnp.where(keep[..., None], hidden.astype(F32), 0.0)


def encode_prompts(encoder: UMT5Encoder, tokenizer, prompts: Sequence[str] | str,
                   max_length: int = 512) -> tuple[jax.Array, np.ndarray]:
    """Wan's prompt encoding (diffusers ``WanPipeline._get_t5_prompt_embeds``).

    Steps: :func:`prompt_clean` each prompt; tokenize with ``padding="max_length"``,
    ``max_length``, ``truncation=True``, ``add_special_tokens=True`` (T5 appends ``</s>``), with the
    attention mask; ``length = sum(mask > 0)``; run the encoder on ids and mask; keep rows
    ``[0, length)`` of each sequence and set rows ``[length, max_length)`` to exactly zero.

    An empty prompt is valid (it is ``</s>`` alone, length 1). A prompt longer than ``max_length``
    tokens (``</s>`` included) is truncated to ``max_length - 1`` tokens + ``</s>``, as diffusers does,
    and a ``UserWarning`` says how many tokens were dropped.

    Args:
      encoder: a :class:`UMT5Encoder`.
      tokenizer: from :func:`load_tokenizer` (any transformers tokenizer with ``__call__``).
      prompts: ``B`` strings (or one string).
      max_length: the padded length (Wan: 512).

    Returns:
      ``(embeddings [B, max_length, d_model] float32, lengths [B] int32 numpy)``.

    Raises:
      TypeError/ValueError on a non-string prompt, an empty list, ``max_length < 1``, or token ids
      outside the encoder's vocabulary (tokenizer and encoder do not belong together).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("encode_prompts: give at least one prompt (an empty string is a valid prompt)")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"encode_prompts: prompt {i} is a {type(p).__name__}, not a string")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"encode_prompts: max_length must be a positive integer, got {max_length!r}")
    cleaned = [prompt_clean(p) for p in prompts]

    full = tokenizer(cleaned, add_special_tokens=True, padding=False, truncation=False, verbose=False)["input_ids"]
    for i, ids in enumerate(full):
        if len(ids) > max_length:
            warnings.warn(
                f"prompt {i} is {len(ids)} tokens long (with the end token) but max_length is {max_length}: "
                f"{len(ids) - max_length} token(s) were dropped from its end. Shorten the prompt to keep them.",
                UserWarning,
                stacklevel=2,
            )

    enc = tokenizer(cleaned, padding="max_length", max_length=max_length, truncation=True,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="np")
    ids = np.asarray(enc["input_ids"], np.int64)
    mask = np.asarray(enc["attention_mask"], np.int64)
    if ids.shape != (len(prompts), max_length):
        raise ValueError(f"tokenizer returned input_ids of shape {ids.shape}, expected {(len(prompts), max_length)}")
    vocab = encoder.config.vocab_size
    if ids.min() < 0 or ids.max() >= vocab:
        raise ValueError(
            f"token id {int(ids.max())} is outside the text encoder's vocabulary of {vocab}: "
            "the tokenizer does not belong to this encoder"
        )
    lengths = (mask > 0).sum(axis=1).astype(np.int32)
    hidden = encoder_forward(encoder, ids.astype(np.int32), mask.astype(np.int32))
    return _cut_and_pad(hidden, jnp.asarray(lengths)), lengths
