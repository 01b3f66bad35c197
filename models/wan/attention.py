"""Attention kernels, pluggable into the Wan DiT.

An attention function takes ``q [B, Sq, H, Dh]``, ``k, v [B, Sk, H, Dh]`` and an optional ``kv_len``
(an int or a traced int32 scalar): keys at positions ``>= kv_len`` are masked out (padding always sits
at the end of the key sequence in jaxvdm). It returns ``[B, Sq, H, Dh]`` in ``q.dtype``. The softmax
scale is ``1/sqrt(Dh)``, as in the reference.

Backends:

* ``"xla"`` — einsum + softmax with float32 accumulation. Exact reference on CPU; materialises the
  ``[B, H, Sq, Sk]`` scores, so it is for small sequences.
* ``"xla_chunked"`` — the same maths with queries processed in chunks (bounded memory), for CPU/TPU or
  GPU without cuDNN at long sequences.
* ``"cudnn"`` — fused flash attention through ``jax.nn.dot_product_attention(implementation="cudnn")``
  (GPU, bf16/fp16 inputs).
* ``"auto"`` — cuDNN on GPU for half-precision inputs, XLA otherwise.

:func:`attention_with_lse` additionally returns the log-sum-exp of each query row, which Ring attention
needs to merge partial results; :func:`cudnn_attention_with_lse` is its fused GPU form (cuDNN's float32
softmax statistics), and :func:`get_attention_with_lse` picks one by backend name.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["AttentionFn", "xla_attention", "xla_chunked_attention", "cudnn_attention", "attention_with_lse",
           "cudnn_attention_with_lse", "get_attention", "get_attention_with_lse", "BACKENDS"]

AttentionFn = Callable[..., jax.Array]
_NEG = -1e30


def _scores(q, k, kv_len):
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if kv_len is not None:
        valid = jnp.arange(k.shape[1]) < kv_len
        s = jnp.where(valid[None, None, None, :], s, _NEG)
    return s


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, kv_len=None) -> jax.Array:
    """Plain softmax attention, float32 accumulation. Shapes as in the module docstring."""
    s = _scores(q, k, kv_len)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return o.astype(q.dtype)


def attention_with_lse(q: jax.Array, k: jax.Array, v: jax.Array, kv_len=None) -> tuple[jax.Array, jax.Array]:
    """Softmax attention returning ``(out [B,Sq,H,Dh] float32, lse [B,H,Sq] float32)``.

    ``lse`` is ``log(sum_k exp(score))`` per query row (``-1e30``-ish when every key is masked), so
    partial results over disjoint key sets can be merged exactly.
    """
    s = _scores(q, k, kv_len)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - m)
    l = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("bhqk,bkhd->bqhd", (p / l).astype(v.dtype), v, preferred_element_type=jnp.float32)
    lse = (m + jnp.log(l))[..., 0]
    return o, lse


def xla_chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, kv_len=None, *, chunk: int = 1024) -> jax.Array:
    """:func:`xla_attention` over query chunks of ``chunk`` tokens (memory ``B*H*chunk*Sk``)."""
    b, sq, h, d = q.shape
    if sq <= chunk:
        return xla_attention(q, k, v, kv_len)
    n = -(-sq // chunk)
    qp = jnp.pad(q, ((0, 0), (0, n * chunk - sq), (0, 0), (0, 0))).reshape(b, n, chunk, h, d)
    out = jax.lax.map(lambda qc: xla_attention(qc, k, v, kv_len), jnp.moveaxis(qp, 1, 0))
    return jnp.moveaxis(out, 0, 1).reshape(b, n * chunk, h, d)[:, :sq]


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, kv_len=None) -> jax.Array:
    """cuDNN fused attention (GPU; q, k, v in bf16 or fp16)."""
    lengths = None
    if kv_len is not None:
        lengths = jnp.full((q.shape[0],), kv_len, jnp.int32)
    return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation="cudnn")


def cudnn_attention_with_lse(q: jax.Array, k: jax.Array, v: jax.Array, kv_len=None) -> tuple[jax.Array, jax.Array]:
    """cuDNN flash attention with its log-sum-exp: ``(out [B,Sq,H,Dh] float32, lse [B,H,Sq] float32)``.

    The same contract as :func:`attention_with_lse` (GPU, bf16/fp16 inputs), without materialising the
    scores. The statistics come from cuDNN in float32 (the public ``jax.nn.dot_product_attention``
    rounds them to the output dtype, which would make Ring's merge inexact in bf16, so the fused
    primitive is called directly, falling back to the public API if a JAX version lacks it).
    """
    b, sq, _, dh = q.shape
    scale = 1.0 / math.sqrt(dh)
    kv_lengths = None if kv_len is None else jnp.full((b,), kv_len, jnp.int32)
    try:
        from jax._src.cudnn.fused_attention_stablehlo import MaskType
        from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as fused
    except ImportError:  # pragma: no cover - depends on the JAX version
        fused = None
    if fused is not None:
        q_lengths = None if kv_lengths is None else jnp.full((b,), sq, jnp.int32)
        mask = MaskType.NO_MASK if kv_lengths is None else MaskType.PADDING
        out, stats = fused(q, k, v, None, None, q_lengths, kv_lengths, scale=scale, mask_type=mask,
                           return_residual=True)
    else:  # pragma: no cover
        out, stats = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=kv_lengths, implementation="cudnn",
                                                  return_residual=True)
        stats = jnp.swapaxes(stats, 1, 2)  # [B, Sq, H] -> [B, H, Sq]
    return out.astype(jnp.float32), stats.astype(jnp.float32)


def _cudnn_suits(q) -> bool:
    """What ``"auto"`` picks cuDNN for: a GPU and half-precision inputs."""
    return jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)


def _auto_attention(q, k, v, kv_len=None):
    if _cudnn_suits(q):
        return cudnn_attention(q, k, v, kv_len)
    if q.shape[1] * k.shape[1] * q.shape[2] * q.shape[0] > (1 << 28):
        return xla_chunked_attention(q, k, v, kv_len)
    return xla_attention(q, k, v, kv_len)


BACKENDS: dict[str, AttentionFn] = {
    "xla": xla_attention,
    "xla_chunked": xla_chunked_attention,
    "cudnn": cudnn_attention,
    "auto": _auto_attention,
}


def _auto_attention_with_lse(q, k, v, kv_len=None):
    if _cudnn_suits(q):
        return cudnn_attention_with_lse(q, k, v, kv_len)
    return attention_with_lse(q, k, v, kv_len)


def get_attention_with_lse(name: str | None = "auto"):
    """The ``(out, lse)`` attention of backend ``name`` (see :func:`attention_with_lse`): cuDNN's for
    ``"cudnn"`` (and ``"auto"`` on GPU in half precision), the XLA one otherwise."""
    name = name or "auto"
    get_attention(name)  # validates the name
    if name == "cudnn":
        return cudnn_attention_with_lse
    if name == "auto":
        return _auto_attention_with_lse
    return attention_with_lse


@functools.lru_cache(maxsize=None)
def get_attention(name: str | None = "auto") -> AttentionFn:
    """The attention function called ``name`` (``None`` means ``"auto"``)."""
    name = name or "auto"
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]
