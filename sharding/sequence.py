"""Sequence parallelism: tokens split over mesh axes, attention that communicates.

All functions here run *inside* ``shard_map`` (per-device code).

Token layout. A sequence of ``S`` tokens is padded to ``S_pad = ceil(S / n) * n`` (``n`` = product of
the sequence axes' sizes) and cut into ``n`` equal chunks. Chunk ``c`` goes to the device whose
row-major index over the axes ``order`` (slowest first) is ``c``. Padding therefore sits at the end of
the global sequence, and attention masks it with ``kv_len = S`` (keys at positions ``>= S`` never
contribute), so any token count works on any device count.

Attention wrappers (each takes ``q, k, v [B, S_local, H, Dh]`` and ``kv_len``):

* :func:`ulysses` — all-to-all from sequence-sharded to head-sharded, attention over the axis group's
  whole sequence for ``H/n`` heads, all-to-all back. Head counts the axis does not divide are padded
  with zero heads (their outputs are dropped), so Wan 1.3B's 12 heads run on 8 devices.
  Bytes per device per layer: 4 all-to-alls of ``(n-1)/n * B*S_local*H_pad*Dh`` elements.
* :func:`ring` — K/V chunks passed around the ring with ``ppermute``; partial attentions merged exactly
  with their log-sum-exp. Each next chunk's transfer is issued before the current chunk's attention
  (double-buffered), so the transfer can overlap the attention.
* :func:`allgather_kv` — keys and values all-gathered over the axis (used by weight sharding, whose
  axis also splits tokens).

Wrappers nest: ``ulysses("sp", inner=allgather_kv("fsdp"))`` with token order ``("fsdp", "sp")``
(the outer wrapper's axis varies fastest) sees the keys in global order, so ``kv_len`` stays a prefix.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxvdm.models.wan.attention import AttentionFn, attention_with_lse

__all__ = ["padded_length", "shard_tokens", "gather_tokens", "ulysses", "ring", "allgather_kv"]


def _size(axes) -> int:
    return math.prod(lax.axis_size(a) for a in axes) if axes else 1


def padded_length(s: int, n: int) -> int:
    """``S`` rounded up to a multiple of ``n``."""
    return -(-s // n) * n


def _linear_index(axes: tuple[str, ...]) -> jax.Array:
    idx = jnp.int32(0)
    for a in axes:
        idx = idx * lax.axis_size(a) + lax.axis_index(a)
    return idx


def shard_tokens(x: jax.Array, axes: tuple[str, ...], axis: int = 1) -> jax.Array:
    """This device's chunk of ``x`` along ``axis`` (padded with zeros to a multiple of the device count)."""
    if not axes:
        return x
    n = _size(axes)
    s = x.shape[axis]
    s_pad = padded_length(s, n)
    if s_pad != s:
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, s_pad - s)
        x = jnp.pad(x, pad)
    chunk = s_pad // n
    return lax.dynamic_slice_in_dim(x, _linear_index(axes) * chunk, chunk, axis=axis)


def gather_tokens(x: jax.Array, axes: tuple[str, ...], length: int, axis: int = 1) -> jax.Array:
    """Inverse of :func:`shard_tokens`: all-gathers the chunks and drops the padding (``length`` tokens)."""
    if not axes:
        return x
    full = lax.all_gather(x, axes if len(axes) > 1 else axes[0], axis=axis, tiled=True)
    return lax.slice_in_dim(full, 0, length, axis=axis)


def ulysses(axis: str, inner: AttentionFn) -> AttentionFn:
    """Ulysses attention over mesh ``axis`` around ``inner`` (see the module docstring)."""

    def attend(q, k, v, kv_len=None):
        n = lax.axis_size(axis)
        h = q.shape[2]
        hp = padded_length(h, n)
        if hp != h:
            pad = ((0, 0), (0, 0), (0, hp - h), (0, 0))
            q, k, v = (jnp.pad(a, pad) for a in (q, k, v))
        to_heads = functools.partial(lax.all_to_all, axis_name=axis, split_axis=2, concat_axis=1, tiled=True)
        o = inner(to_heads(q), to_heads(k), to_heads(v), kv_len)
        o = lax.all_to_all(o, axis_name=axis, split_axis=1, concat_axis=2, tiled=True)
        return o[:, :, :h]

    return attend


def allgather_kv(axis: str, inner: AttentionFn) -> AttentionFn:
    """Attention of local queries over keys/values all-gathered across mesh ``axis``."""

    def attend(q, k, v, kv_len=None):
        k = lax.all_gather(k, axis, axis=1, tiled=True)
        v = lax.all_gather(v, axis, axis=1, tiled=True)
        return inner(q, k, v, kv_len)

    return attend


def ring(axis: str, with_lse=attention_with_lse) -> AttentionFn:
    """Ring attention over mesh ``axis``: exact, float32 online-softmax merge of per-chunk attention.

    ``with_lse(q, k, v, kv_len) -> (out, lse)`` attends to one K/V chunk (the XLA reference by default;
    :func:`~jaxvdm.models.wan.attention.cudnn_attention_with_lse` on GPU). A chunk that holds only
    padding contributes nothing, whatever the kernel returns for it.
    """

    def attend(q, k, v, kv_len=None):
        n = lax.axis_size(axis)
        me = lax.axis_index(axis)
        chunk = k.shape[1]
        perm = [(i, (i + 1) % n) for i in range(n)]
        b, sq, h, d = q.shape
        out = jnp.zeros((b, sq, h, d), jnp.float32)
        lse = jnp.full((b, h, sq), -jnp.inf, jnp.float32)
        kc, vc = k, v
        for step in range(n):
            # the next chunk's transfer is issued before this chunk's attention (double-buffered: this
            # chunk and the next are alive together), so the ppermute can run under the attention
            nxt = lax.ppermute((kc, vc), axis, perm) if step < n - 1 else None
            src = (me - step) % n  # the ring position whose chunk we hold now
            blen = None if kv_len is None else jnp.clip(kv_len - src * chunk, 0, chunk)
            o_s, lse_s = with_lse(q, kc, vc, blen)
            if blen is not None:
                lse_s = jnp.where(blen > 0, lse_s, -jnp.inf)
            m = jnp.maximum(lse, lse_s)
            m = jnp.where(jnp.isfinite(m), m, 0.0)
            w_old = jnp.exp(lse - m)
            w_new = jnp.exp(lse_s - m)
            tot = w_old + w_new
            safe = jnp.where(tot > 0, tot, 1.0)
            t = lambda w: jnp.swapaxes(w / safe, 1, 2)[..., None]  # noqa: E731  [B,H,Sq] -> [B,Sq,H,1]
            o_s = jnp.where(t(w_new) > 0, o_s, 0.0)  # a masked chunk's output may be anything (NaN included)
            out = out * t(w_old) + o_s * t(w_new)
            lse = jnp.where(tot > 0, m + jnp.log(safe), -jnp.inf)
            if nxt is not None:
                kc, vc = nxt
        return out.astype(q.dtype)

    return attend
