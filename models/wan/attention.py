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
* ``"splash"`` — the Pallas TPU splash (flash) attention kernel (:mod:`jaxvdm.models.wan.splash`): the real
  kernel in programs lowered for TPUs, the same kernel in Pallas' interpret mode elsewhere (exact, slow: for
  tests). Block sizes are options: ``get_attention("splash", block_q=2048)``, or in a backend name
  ``"splash:block_q=2048,block_kv=1024"`` (the form that travels as ``attention=`` through strategies and
  CLIs). On several TPU devices it must run inside ``shard_map``, as every jaxvdm strategy calls attention.
* ``"auto"`` — cuDNN on GPU for half-precision inputs, splash when JAX's default backend is a TPU, XLA
  otherwise (chunked beyond 2**28 scores).

:func:`attention_with_lse` additionally returns the log-sum-exp of each query row, which Ring attention
needs to merge partial results; :func:`cudnn_attention_with_lse` is its fused GPU form (cuDNN's float32
softmax statistics), ``splash_attention_with_lse`` its TPU form (the kernel's float32 log-sum-exp), and
:func:`get_attention_with_lse` picks one by backend name.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxvdm.models.wan import splash

__all__ = ["AttentionFn", "xla_attention", "xla_chunked_attention", "cudnn_attention", "attention_with_lse",
           "cudnn_attention_with_lse", "splash_attention", "splash_attention_with_lse", "get_attention",
           "get_attention_with_lse", "parse_backend", "BACKENDS"]

splash_attention = splash.splash_attention
splash_attention_with_lse = splash.splash_attention_with_lse

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


def _on_tpu() -> bool:
    """What ``"auto"`` picks splash for: JAX's default backend is a TPU."""
    return jax.default_backend() == "tpu"


def _auto_attention(q, k, v, kv_len=None):
    if _cudnn_suits(q):
        return cudnn_attention(q, k, v, kv_len)
    if _on_tpu():
        return splash_attention(q, k, v, kv_len)
    if q.shape[1] * k.shape[1] * q.shape[2] * q.shape[0] > (1 << 28):
        return xla_chunked_attention(q, k, v, kv_len)
    return xla_attention(q, k, v, kv_len)


def _cudnn_fp8_attention(q, k, v, kv_len=None):
    from jaxvdm.models.wan.fp8 import fp8_attention

    return fp8_attention(q, k, v, kv_len)


BACKENDS: dict[str, AttentionFn] = {
    "xla": xla_attention,
    "xla_chunked": xla_chunked_attention,
    "cudnn": cudnn_attention,
    "cudnn_fp8": _cudnn_fp8_attention,
    "splash": splash_attention,
    "auto": _auto_attention,
}

_CROSS = {"cudnn_fp8": "cudnn"}


def cross_attention_backend(name: str | None) -> str | None:
    """The backend cross-attention uses when self-attention uses ``name``: the same, except FP8 self-attention
    keeps cross-attention in bf16 cuDNN (its 512 text keys are about 2 % of the attention FLOPs)."""
    base, _ = parse_backend(name)
    return _CROSS.get(base, name)

_OPTIONS = {"splash": ("block_q", "block_kv", "block_kv_compute")}


def _auto_attention_with_lse(q, k, v, kv_len=None):
    if _cudnn_suits(q):
        return cudnn_attention_with_lse(q, k, v, kv_len)
    if _on_tpu():
        return splash_attention_with_lse(q, k, v, kv_len)
    return attention_with_lse(q, k, v, kv_len)


def parse_backend(name: str | None) -> tuple[str, tuple[tuple[str, int], ...]]:
    """``"splash:block_q=2048,block_kv=1024"`` -> ``("splash", (("block_q", 2048), ("block_kv", 1024)))``.

    A bare name has no options; ``None`` means ``"auto"``. Raises ValueError naming an unknown backend, an
    option the backend does not take, or a malformed ``key=value``.
    """
    name = name or "auto"
    if not isinstance(name, str):
        raise ValueError(f"attention backend must be a name such as 'auto' or 'splash', got {name!r}")
    base, _, rest = name.partition(":")
    base = base.strip()
    if base not in BACKENDS:
        raise ValueError(f"unknown attention backend {base!r}; choose one of {sorted(BACKENDS)}")
    options = []
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not value.strip().isdigit():
            raise ValueError(f"bad attention option {part!r} in {name!r}: write KEY=INT, e.g. 'splash:block_q=2048'")
        options.append((key, int(value)))
    _check_options(base, dict(options))
    return base, tuple(options)


def _check_options(base: str, options: dict) -> None:
    allowed = _OPTIONS.get(base, ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
        raise ValueError(f"attention backend {base!r} has no option(s) {unknown}; {takes}")


def _splash_config(options: dict) -> splash.SplashConfig:
    return dataclasses.replace(splash.DEFAULT_CONFIG, **options)


def _resolve(name: str | None, options: dict) -> tuple[str, tuple]:
    """``(backend, sorted options)``: the name's options updated by ``options``, validated."""
    base, parsed = parse_backend(name)
    merged = dict(parsed) | dict(options)
    _check_options(base, merged)
    if base == "splash":
        _splash_config(merged)  # validates the block sizes
    return base, tuple(sorted(merged.items()))


def get_attention_with_lse(name: str | None = "auto", **options):
    """The ``(out, lse)`` attention of backend ``name`` (see :func:`attention_with_lse`): cuDNN's for
    ``"cudnn"`` (and ``"auto"`` on GPU in half precision), splash's for ``"splash"`` (and ``"auto"`` on
    TPU), the XLA one otherwise. ``options`` / ``"name:key=value"`` as for :func:`get_attention`."""
    return _with_lse(*_resolve(name, options))


@functools.lru_cache(maxsize=None)
def _with_lse(base: str, opts: tuple):
    if base in ("cudnn", "cudnn_fp8"):  # the FP8 inference kernel returns no log-sum-exp: Ring stays bf16
        return cudnn_attention_with_lse
    if base == "splash":
        return functools.partial(splash_attention_with_lse, config=_splash_config(dict(opts)))
    if base == "auto":
        return _auto_attention_with_lse
    return attention_with_lse


def get_attention(name: str | None = "auto", **options) -> AttentionFn:
    """The attention function called ``name`` (``None`` means ``"auto"``).

    ``options`` configure a backend that has some (splash: ``block_q``, ``block_kv``,
    ``block_kv_compute``); they may also be written into the name, ``"splash:block_q=2048"``. The same
    name and options return the same function object. Raises ValueError for an unknown backend or option,
    or invalid block sizes.
    """
    return _get(*_resolve(name, options))


@functools.lru_cache(maxsize=None)
def _get(base: str, opts: tuple) -> AttentionFn:
    if base == "splash" and opts:
        return functools.partial(splash_attention, config=_splash_config(dict(opts)))
    return BACKENDS[base]
