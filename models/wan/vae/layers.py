"""The layers of the Wan video VAE (diffusers ``AutoencoderKLWan``), shared by Wan2.1 and Wan2.2.

Activations are channels-last ``[B, T, H, W, C]``. Every causal layer takes and returns its cache
explicitly (see :mod:`jaxvdm.models.wan.vae.model` for the chunking this serves); ``sp`` is the
spatial split of :mod:`jaxvdm.models.wan.vae.sharded` (``None`` on one device).

Precision: convolutions and projections run in the input's dtype; RMS norms and the attention
softmax in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["CACHE_T", "CausalConv3d", "RMSNorm", "ResidualBlock", "AttentionBlock", "MidBlock", "SpatialConv",
           "Resample", "UpBlock"]

F32 = jnp.float32
CACHE_T = 2  # frames of history every causal 3x3x3 convolution carries between chunks


# ----------------------------------------------------------------------------- primitives


def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, *, stride=(1, 1, 1), pad_hw=((1, 1), (1, 1)), sp=None):
    """3-D convolution, channels-last, no temporal padding (the caller prepends history).

    x: ``[B, T, H, W, Cin]``; kernel: ``[kt, kh, kw, Cin, Cout]``; bias: ``[Cout]``.
    ``pad_hw`` is the zero padding of H and W. With a spatial split ``sp`` the padding of the split
    axis is replaced by the neighbours' halo (zeros at the global edges), so the result is the
    single-device convolution's shard.
    """
    pads = [(0, 0), tuple(pad_hw[0]), tuple(pad_hw[1])]
    if sp is not None:
        ax = sp.dim  # 2 (H) or 3 (W) of [B, T, H, W, C]
        lo, hi = pads[ax - 1]
        if kernel.shape[ax - 1] > 1 or lo or hi:
            x = sp.halo(sp.mask(x), lo, hi)
            pads[ax - 1] = (0, 0)
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=stride, padding=pads, dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )
    return y + bias.astype(y.dtype)


def _rms_norm(x: jax.Array, gamma: jax.Array) -> jax.Array:
    """``WanRMS_norm`` over channels (last axis): ``x / max(||x||, 1e-12) * sqrt(C) * gamma``, in float32."""
    xf = x.astype(F32)
    n = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
    y = xf / jnp.maximum(n, 1e-12) * np.float32(math.sqrt(x.shape[-1])) * gamma.astype(F32)
    return y.astype(x.dtype)


def _init(rngs: nnx.Rngs, shape, fan_in: int, dtype) -> jax.Array:
    return (jax.random.normal(rngs.params(), shape, F32) / math.sqrt(max(fan_in, 1))).astype(dtype)


class CausalConv3d(nnx.Module):
    """``WanCausalConv3d``: a 3-D convolution, causal in time (``kt - 1`` frames of history), zero
    padded in space (``kh // 2``, ``kw // 2``).

    ``__call__(x [B,T,H,W,Cin], cache [B,kt-1,H,W,Cin] | None, sp) -> (y [B,T,H,W,Cout], new cache)``.
    A ``None`` cache means zero history (the start of the stream); the new cache is the last
    ``kt - 1`` frames of the history followed by ``x``. Kernels with ``kt == 1`` carry no cache.
    """

    def __init__(self, cin: int, cout: int, kernel=(3, 3, 3), *, param_dtype, rngs: nnx.Rngs):
        kt, kh, kw = kernel
        self.kernel = nnx.Param(_init(rngs, (kt, kh, kw, cin, cout), kt * kh * kw * cin, param_dtype))
        self.bias = nnx.Param(jnp.zeros((cout,), param_dtype))

    def __call__(self, x: jax.Array, cache: jax.Array | None = None, sp=None):
        k = self.kernel[...]
        kt, kh, kw = k.shape[:3]
        new_cache = None
        if kt > 1:
            if cache is None:
                cache = jnp.zeros((x.shape[0], kt - 1, *x.shape[2:]), x.dtype)
            x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
            new_cache = x[:, -(kt - 1) :]
        y = _conv(x, k, self.bias[...], pad_hw=((kh // 2, kh // 2), (kw // 2, kw // 2)), sp=sp)
        return y, new_cache


class RMSNorm(nnx.Module):
    """``WanRMS_norm`` (channel axis last here); see :func:`_rms_norm`."""

    def __init__(self, dim: int, *, param_dtype):
        self.gamma = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return _rms_norm(x, self.gamma[...])


class ResidualBlock(nnx.Module):
    """``WanResidualBlock``: RMS-SiLU-conv, RMS-SiLU-conv, plus a (1x1x1 when channels change) shortcut.

    ``__call__(x [B,T,H,W,Cin], cache (c1, c2) | None, sp) -> (y [B,T,H,W,Cout], (c1, c2))``.
    """

    def __init__(self, cin: int, cout: int, *, param_dtype, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(cin, param_dtype=param_dtype)
        self.conv1 = CausalConv3d(cin, cout, param_dtype=param_dtype, rngs=rngs)
        self.norm2 = RMSNorm(cout, param_dtype=param_dtype)
        self.conv2 = CausalConv3d(cout, cout, param_dtype=param_dtype, rngs=rngs)
        self.conv_shortcut = (
            CausalConv3d(cin, cout, (1, 1, 1), param_dtype=param_dtype, rngs=rngs) if cin != cout else None
        )

    def __call__(self, x, cache=None, sp=None):
        c1, c2 = (None, None) if cache is None else cache
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)[0]
        y, c1 = self.conv1(jax.nn.silu(self.norm1(x)), c1, sp)
        y, c2 = self.conv2(jax.nn.silu(self.norm2(y)), c2, sp)
        return y + h, (c1, c2)


class AttentionBlock(nnx.Module):
    """``WanAttentionBlock``: single-head self-attention over the H*W pixels of each frame.

    ``__call__(x [B,T,H,W,C], sp) -> [B,T,H,W,C]``. With a spatial split, queries stay local and keys
    and values are gathered from every shard (padding columns masked out).
    """

    def __init__(self, dim: int, *, param_dtype, rngs: nnx.Rngs):
        self.norm = RMSNorm(dim, param_dtype=param_dtype)
        self.to_qkv = nnx.Linear(dim, 3 * dim, param_dtype=param_dtype, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, sp=None) -> jax.Array:
        b, t, h, w, c = x.shape
        qkv = _dense(self.norm(x), self.to_qkv)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        key_valid = None
        if sp is not None:
            k, v = sp.gather(k), sp.gather(v)
            key_valid = sp.key_valid(k.shape[sp.dim])  # None unless the split axis is padded
        hk, wk = k.shape[2], k.shape[3]
        q = q.reshape(b * t, h * w, c)
        k = k.reshape(b * t, hk * wk, c)
        v = v.reshape(b * t, hk * wk, c)
        logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=F32) / np.float32(math.sqrt(c))
        if key_valid is not None:
            kv = key_valid[:, None] if sp.dim == 2 else key_valid[None, :]
            kv = jnp.broadcast_to(kv, (hk, wk)).reshape(-1)
            logits = jnp.where(kv[None, None, :], logits, -jnp.inf)
        p = jax.nn.softmax(logits, axis=-1)
        o = jnp.einsum("bqk,bkc->bqc", p.astype(v.dtype), v, preferred_element_type=F32).astype(x.dtype)
        return x + _dense(o.reshape(b, t, h, w, c), self.proj)


def _dense(x: jax.Array, lin: nnx.Linear) -> jax.Array:
    """A 1x1 convolution as a matmul on the channel axis (``lin.kernel [Cin, Cout]``)."""
    return jnp.einsum("...i,io->...o", x, lin.kernel[...].astype(x.dtype)) + lin.bias[...].astype(x.dtype)


class MidBlock(nnx.Module):
    """``WanMidBlock``: residual block, attention, residual block. Cache: ``(c0, c1)`` of the two blocks."""

    def __init__(self, dim: int, *, param_dtype, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResidualBlock(dim, dim, param_dtype=param_dtype, rngs=rngs) for _ in range(2)])
        self.attentions = nnx.List([AttentionBlock(dim, param_dtype=param_dtype, rngs=rngs)])

    def __call__(self, x, cache=None, sp=None):
        c0, c1 = (None, None) if cache is None else cache
        x, c0 = self.resnets[0](x, c0, sp)
        x = self.attentions[0](x, sp)
        x, c1 = self.resnets[1](x, c1, sp)
        return x, (c0, c1)


class SpatialConv(nnx.Module):
    """The 3x3 2-D convolution inside a resampler (kernel stored as ``[1, 3, 3, Cin, Cout]``)."""

    def __init__(self, cin: int, cout: int, *, param_dtype, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_init(rngs, (1, 3, 3, cin, cout), 9 * cin, param_dtype))
        self.bias = nnx.Param(jnp.zeros((cout,), param_dtype))


class Resample(nnx.Module):
    """``WanResample``: ``upsample2d``/``upsample3d`` (decoder) or ``downsample2d``/``downsample3d`` (encoder).

    ``__call__(x [B,T,H,W,C], cache, sp, first) -> (y, cache)``:

    * upsample: (3d only) ``time_conv`` doubles the frames, except on the ``first`` step where the
      frame passes through and the history stays zero; then nearest x2 in H and W and a 3x3 conv to
      ``out_dim`` channels. Cache: the ``time_conv`` history ``[B, 2, H, W, C]`` (None for 2d).
    * downsample: zero pad bottom/right by one, 3x3 conv with stride 2; (3d only) a temporal conv
      (kernel 3, stride 2, unpadded) over the previous step's last frame followed by this step's
      frames, skipped on the ``first`` step. Cache: the last frame ``[B, 1, H/2, W/2, C]``.
    """

    def __init__(self, dim: int, mode: str, out_dim: int | None = None, *, param_dtype, rngs: nnx.Rngs):
        self.mode = mode
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        if mode.startswith("upsample"):
            self.resample = SpatialConv(dim, dim // 2 if out_dim is None else out_dim, **kw)
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), **kw) if mode == "upsample3d" else None
        elif mode.startswith("downsample"):
            self.resample = SpatialConv(dim, dim, **kw)
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), **kw) if mode == "downsample3d" else None
        else:
            raise ValueError(f"unknown resample mode {mode!r}")

    def __call__(self, x, cache=None, sp=None, *, first: bool = False):
        if self.mode.startswith("upsample"):
            if self.time_conv is not None:
                if first:
                    cache = jnp.zeros((x.shape[0], CACHE_T, *x.shape[2:]), x.dtype)
                else:
                    y, cache = self.time_conv(x, cache)
                    b, t, h, w, c2 = y.shape
                    # channel halves [first frame | second frame] -> interleaved frames
                    x = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c2 // 2)
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
            return _conv(x, self.resample.kernel[...], self.resample.bias[...], sp=sp), cache
        if sp is not None:
            raise NotImplementedError("the encoder's downsampling does not take a spatial split; encode on one device")
        x = _conv(x, self.resample.kernel[...], self.resample.bias[...], stride=(1, 2, 2), pad_hw=((0, 1), (0, 1)))
        if self.time_conv is None:
            return x, cache
        if first:
            return x, x[:, -1:]
        xin = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
        y = _conv(xin, self.time_conv.kernel[...], self.time_conv.bias[...], stride=(2, 1, 1), pad_hw=((0, 0), (0, 0)))
        return y, x[:, -1:]


class UpBlock(nnx.Module):
    """``WanUpBlock``: ``num_res_blocks + 1`` residual blocks, then an optional upsampler."""

    def __init__(self, cin: int, cout: int, num_res_blocks: int, mode: str | None, *, param_dtype, rngs: nnx.Rngs):
        blocks = []
        for _ in range(num_res_blocks + 1):
            blocks.append(ResidualBlock(cin, cout, param_dtype=param_dtype, rngs=rngs))
            cin = cout
        self.resnets = nnx.List(blocks)
        self.upsamplers = (
            nnx.List([Resample(cout, mode, param_dtype=param_dtype, rngs=rngs)]) if mode is not None else None
        )

    def __call__(self, x, cache=None, sp=None, *, first: bool = False):
        rc, uc = (None, None) if cache is None else cache
        rc = [None] * len(self.resnets) if rc is None else list(rc)
        for i, blk in enumerate(self.resnets):
            x, rc[i] = blk(x, rc[i], sp)
        if self.upsamplers is not None:
            x, uc = self.upsamplers[0](x, uc, sp, first=first)
        return x, (tuple(rc), uc)
