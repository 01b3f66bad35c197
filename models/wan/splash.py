"""Pallas TPU *splash* attention behind jaxvdm's attention contract.

The kernel is ``jax.experimental.pallas.ops.tpu.splash_attention`` (a flash-attention kernel written in
Pallas for TPUs). This module wraps it as an attention backend (``attention="splash"``, see
:mod:`jaxvdm.models.wan.attention`): ``q [B, Sq, H, Dh]``, ``k, v [B, Sk, H, Dh]``, an optional ``kv_len``
(an int or a traced int32 scalar; keys at positions ``>= kv_len`` are masked), softmax scale
``1/sqrt(Dh)``. What the wrapper adds to the bare kernel:

* **Padding to whole blocks.** The kernel needs ``Sq`` and ``Sk`` to be multiples of its block sizes (an
  incomplete block is not handled). Queries and keys are padded with zeros to a block multiple, the
  padded keys masked, the outputs cut back to ``Sq``.
* **Key masking with a traced length.** Padded keys and keys ``>= kv_len`` get segment id 0, every query
  and every valid key segment id 1: the kernel's segment mask then drops exactly those keys. ``kv_len`` may
  be a tracer (Ulysses and Ring pass one), since segment ids are ordinary array inputs.
* **The scale.** The kernel computes ``q @ k.T`` unscaled, so ``q`` is multiplied by ``1/sqrt(Dh)`` first
  (in float32, then cast back to ``q.dtype``).
* **Layout and batch.** The kernel is per example over ``[H, S, Dh]``; the wrapper transposes and
  ``vmap``-s over the batch.
* **Interpret mode off TPU.** By default the program holds the real Mosaic kernel when it is lowered for
  a TPU and the kernel in Pallas' interpret mode (plain XLA ops, slow but exact) for any other platform
  (CPU tests, GPUs): the choice is made per lowering platform (``jax.lax.platform_dependent``), so a
  program compiled on a CPU host for TPU devices (a TPU topology, ``jaxvdm comm --target``) holds the
  real kernel. ``SplashConfig(interpret=True/False)`` forces either.
* **The log-sum-exp.** :func:`splash_attention_with_lse` asks the kernel for its residual (the float32
  ``log(sum(exp(scores)))`` of each query row), which Ring attention needs to merge chunks exactly.

A Pallas TPU kernel cannot be partitioned by XLA's SPMD partitioner: in a program over several TPU
devices it must run inside ``shard_map`` (every jaxvdm strategy calls attention per device, inside
``shard_map`` over its mesh); in a one-device program it needs nothing.

Block sizes (:class:`SplashConfig`). Defaults: ``block_q = block_kv = 1024``, ``block_kv_compute = 512``.
They were not timed here (no TPU was available); they were chosen for Wan's head dim 128 from the kernel's
arithmetic: every K/V block loaded from HBM is reused by ``block_q`` query rows, i.e. about ``block_q``
FLOPs per byte, against a ridge of about 240 FLOP/byte on v5e (197 TFLOP/s / 819 GB/s) and 560 on v6e
(918 / 1640), so ``block_q = 1024`` keeps the kernel compute-bound; ``block_kv_compute = 512`` bounds the
float32 score tile (``block_q x block_kv_compute``, 2 MiB) well inside the scoped VMEM of v5e (16 MiB);
Wan 1.3B at 480p (32,760 tokens) pads to 32,768. The kernel with these blocks (and its log-sum-exp form)
compiles for v4, v5e, v5p and v6e at 32,768 tokens x 12 heads x 128 (deviceless compiles, fitting each
chip's scoped VMEM). Sequences shorter than a block use a smaller block (rounded up to 128). Override with
``get_attention("splash", block_q=..., block_kv=..., block_kv_compute=...)`` (see
:func:`jaxvdm.models.wan.attention.get_attention`) or by passing ``config=SplashConfig(...)`` here.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SplashConfig", "DEFAULT_CONFIG", "splash_attention", "splash_attention_with_lse", "block_plan"]

_LANES = 128  # the kernel's key blocks must be multiples of the TPU lane width


@dataclasses.dataclass(frozen=True)
class SplashConfig:
    """Tile sizes of the splash kernel and whether to run it interpreted.

    block_q: query rows per block (a multiple of 128).
    block_kv: keys per block loaded from HBM (a multiple of ``block_kv_compute``).
    block_kv_compute: keys per inner step (a multiple of 128; the score tile is ``block_q x block_kv_compute``).
    interpret: None (default) interprets the kernel on every platform but TPU; True or False forces it.
    """

    block_q: int = 1024
    block_kv: int = 1024
    block_kv_compute: int = 512
    interpret: bool | None = None

    def __post_init__(self):
        for name in ("block_q", "block_kv", "block_kv_compute"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < _LANES or v % _LANES:
                raise ValueError(f"splash {name} must be a positive multiple of {_LANES}, got {v!r}")
        if self.block_kv % self.block_kv_compute:
            raise ValueError(f"splash block_kv={self.block_kv} must be a multiple of "
                             f"block_kv_compute={self.block_kv_compute}")
        if self.interpret not in (None, True, False):
            raise ValueError(f"splash interpret must be None, True or False, got {self.interpret!r}")


DEFAULT_CONFIG = SplashConfig()


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def block_plan(sq: int, sk: int, config: SplashConfig = DEFAULT_CONFIG) -> tuple[int, int, int, int, int]:
    """``(block_q, block_kv, block_kv_compute, sq_pad, sk_pad)`` the kernel runs for ``sq`` queries and
    ``sk`` keys: the configured blocks, shrunk (to a multiple of 128) for sequences shorter than a block,
    and the sequence lengths padded to whole blocks."""
    bq = min(config.block_q, _round_up(sq, _LANES))
    bkc = min(config.block_kv_compute, _round_up(sk, _LANES))
    bkv = min(config.block_kv, _round_up(sk, bkc))
    return bq, bkv, bkc, _round_up(sq, bq), _round_up(sk, bkv)


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, sq_pad: int, sk_pad: int, bq: int, bkv: int, bkc: int, interpret: bool, lse: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    mask = sa.MultiHeadMask([sa.FullMask((sq_pad, sk_pad))] * heads)
    # backward blocks too, so that jax.grad through the kernel works (the shapes model trains with "auto")
    sizes = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkc, block_q_dkv=bq, block_kv_dkv=bkv,
                          block_kv_dkv_compute=bkc, block_q_dq=bq, block_kv_dq=bkv)
    # the kernel holds its block-mask tables as arrays: made concrete here (not tracers of the trace that
    # first asked for this kernel), so the cached kernel is valid in every later trace
    with jax.ensure_compile_time_eval():
        return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, save_residuals=lse,
                                  interpret=interpret)


def _splash(q, k, v, kv_len, config: SplashConfig, lse: bool):
    """Shared body: returns ``(out [B,Sq,H,Dh] q.dtype, lse [B,H,Sq] float32 or None)``."""
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"splash attention takes q [B,Sq,H,Dh] and k, v [B,Sk,H,Dh] with the same B, H, Dh; "
                         f"got q {q.shape}, k {k.shape}, v {v.shape}")
    b, sq, h, d = q.shape
    sk = k.shape[1]
    bq, bkv, bkc, sq_pad, sk_pad = block_plan(sq, sk, config)
    scale = 1.0 / math.sqrt(d)
    qh = jnp.swapaxes((q.astype(jnp.float32) * scale).astype(q.dtype), 1, 2)  # [B, H, Sq, Dh]
    kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    qh = jnp.pad(qh, ((0, 0), (0, 0), (0, sq_pad - sq), (0, 0)))
    kh = jnp.pad(kh, ((0, 0), (0, 0), (0, sk_pad - sk), (0, 0)))
    vh = jnp.pad(vh, ((0, 0), (0, 0), (0, sk_pad - sk), (0, 0)))
    segments = None
    if kv_len is not None or sk_pad != sk:
        from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

        valid = sk if kv_len is None else jnp.minimum(jnp.asarray(kv_len, jnp.int32), sk)
        segments = SegmentIds(q=jnp.ones((sq_pad,), jnp.int32),
                              kv=(jnp.arange(sk_pad, dtype=jnp.int32) < valid).astype(jnp.int32))

    def run(interpret: bool):
        kernel = _kernel(h, sq_pad, sk_pad, bq, bkv, bkc, interpret, lse)

        def one(qb, kb, vb):
            return kernel(qb, kb, vb, segment_ids=segments)

        return jax.vmap(one)(qh, kh, vh)

    if config.interpret is None:
        res = jax.lax.platform_dependent(default=lambda: run(True), tpu=lambda: run(False))
    else:
        res = run(config.interpret)
    if lse:
        out, (stats,) = res
        stats = stats[:, :, :sq].astype(jnp.float32)
    else:
        out, stats = res, None
    return jnp.swapaxes(out[:, :, :sq], 1, 2), stats


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, kv_len=None, *,
                     config: SplashConfig = DEFAULT_CONFIG) -> jax.Array:
    """Splash attention: ``q [B,Sq,H,Dh]``, ``k, v [B,Sk,H,Dh]`` -> ``[B,Sq,H,Dh]`` in ``q.dtype``.

    Keys at positions ``>= kv_len`` (an int or traced int32 scalar; None: none) are masked; any ``Sq``,
    ``Sk`` and head count (padded to whole blocks inside). Inputs in any dtype the kernel takes (float32,
    bfloat16); scores and softmax statistics are float32.
    """
    return _splash(q, k, v, kv_len, config, lse=False)[0]


def splash_attention_with_lse(q: jax.Array, k: jax.Array, v: jax.Array, kv_len=None, *,
                              config: SplashConfig = DEFAULT_CONFIG) -> tuple[jax.Array, jax.Array]:
    """Splash attention with the kernel's log-sum-exp: ``(out [B,Sq,H,Dh] float32, lse [B,H,Sq] float32)``.

    The contract of :func:`jaxvdm.models.wan.attention.attention_with_lse` (Ring's exact merge). When
    every key is masked (``kv_len == 0``) ``lse`` is about ``-2.4e38`` and ``out`` is meaningless, which
    Ring discards.
    """
    out, lse = _splash(q, k, v, kv_len, config, lse=True)
    return out.astype(jnp.float32), lse
