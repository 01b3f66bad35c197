"""The Wan2.1 video VAE (diffusers ``AutoencoderKLWan``) in Flax NNX, with strict loading.

Shapes (public surface, channels-first like the reference):

* ``encode(video [B, 3, F, H, W] in [-1, 1]) -> (mean, logvar)``, each ``[B, z, T, H/8, W/8]`` with
  ``F = 4(T-1) + 1``; :meth:`WanVAE.encode_moments` gives the raw ``[B, 2z, T, h, w]``.
* ``decode(z [B, z, T, h, w]) -> video [B, 3, 4(T-1)+1, 8h, 8w]`` clamped to ``[-1, 1]``.

Internally activations are channels-last ``[B, T, H, W, C]``.

**Causal chunking, exactly as the reference.** diffusers runs the encoder on frame 0 alone and then
on chunks of 4 frames, and the decoder one latent frame at a time, carrying for every causal
convolution the last two frames of its input (``CACHE_T = 2``). Every 3x3x3 convolution is then the
same as one causal (zero front-padded) convolution over the whole frame stream, *except* at the
temporal resamplers, where the first chunk is special:

* decoder ``upsample3d``: the first latent frame is not temporally upsampled (one output frame), and
  the ``time_conv`` stream starts fresh (zero history) at the second latent frame;
* encoder ``downsample3d``: frame 0 passes through; later chunks convolve (stride 2, no padding)
  over the previous chunk's last frame followed by the chunk.

Here every causal convolution carries a fixed-shape cache (zeros at the start), so the computation
is one *first step* followed by a ``lax.scan`` over equal chunks (``chunk`` latent frames per step,
default 1). Only one step's activations are alive at a time; results equal the reference's
(``chunk > 1`` is the same function computed with bigger steps: faster on accelerators, more memory).

Precision: convolutions and projections run in ``dtype``; RMS norms and the attention softmax in
float32; outputs are float32.

The spatial split used by :mod:`jaxvdm.models.wan.vae.sharded` enters through the ``sp`` argument of
the decoder layers (``None`` on one device): 3x3 convolutions take their halo from ``sp`` and the
mid-block attention gathers keys/values through it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvdm.models.wan.vae.config import WanVAEConfig

__all__ = ["WanVAE", "abstract_vae", "normalize_latents", "denormalize_latents", "CACHE_T"]

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


class Encoder(nnx.Module):
    """``WanEncoder3d``. ``__call__(x [B,T,H,W,Cin], cache, first) -> ([B,T',H/8,W/8,2z], cache)``."""

    def __init__(self, cfg: WanVAEConfig, *, param_dtype, rngs: nnx.Rngs):
        dims = [cfg.base_dim * u for u in (1, *cfg.dim_mult)]
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], **kw)
        blocks: list[nnx.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(cin, cout, **kw))
                cin = cout
            if i != len(cfg.dim_mult) - 1:
                blocks.append(Resample(cout, "downsample3d" if cfg.temperal_downsample[i] else "downsample2d", **kw))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], **kw)
        self.norm_out = RMSNorm(dims[-1], param_dtype=param_dtype)
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, **kw)

    def __call__(self, x, cache=None, *, first: bool = False):
        c_in, c_down, c_mid, c_out = (None, None, None, None) if cache is None else cache
        c_down = [None] * len(self.down_blocks) if c_down is None else list(c_down)
        x, c_in = self.conv_in(x, c_in)
        for i, blk in enumerate(self.down_blocks):
            if isinstance(blk, Resample):
                x, c_down[i] = blk(x, c_down[i], first=first)
            else:
                x, c_down[i] = blk(x, c_down[i])
        x, c_mid = self.mid_block(x, c_mid)
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), c_out)
        return x, (c_in, tuple(c_down), c_mid, c_out)


class Decoder(nnx.Module):
    """``WanDecoder3d``. ``__call__(x [B,T,h,w,z], cache, sp, first) -> ([B,T',8h,8w,3], cache)``
    where ``T' = 1`` on the ``first`` step and ``4T`` afterwards."""

    def __init__(self, cfg: WanVAEConfig, *, param_dtype, rngs: nnx.Rngs):
        d = cfg.decoder_dim
        dims = [d * u for u in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        temperal_upsample = cfg.temperal_downsample[::-1]
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], **kw)
        self.mid_block = MidBlock(dims[0], **kw)
        ups = []
        n = len(cfg.dim_mult)
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                cin = cin // 2  # the previous upsampler halved the channels
            mode = None
            if i != n - 1:
                mode = "upsample3d" if temperal_upsample[i] else "upsample2d"
            ups.append(UpBlock(cin, cout, cfg.num_res_blocks, mode, **kw))
        self.up_blocks = nnx.List(ups)
        self.norm_out = RMSNorm(dims[-1], param_dtype=param_dtype)
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, **kw)

    def __call__(self, x, cache=None, sp=None, *, first: bool = False):
        c_in, c_mid, c_up, c_out = (None, None, None, None) if cache is None else cache
        c_up = [None] * len(self.up_blocks) if c_up is None else list(c_up)
        x, c_in = self.conv_in(x, c_in, sp)
        x, c_mid = self.mid_block(x, c_mid, sp)
        for i, blk in enumerate(self.up_blocks):
            x, c_up[i] = blk(x, c_up[i], sp, first=first)
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), c_out, sp)
        return x, (c_in, c_mid, tuple(c_up), c_out)


# ----------------------------------------------------------------------------- the model


class WanVAE(nnx.Module):
    """The Wan2.1 VAE (``AutoencoderKLWan``). See the module docstring for shapes and chunking.

    Args:
      config: the architecture (read from a checkpoint's ``config.json`` by :func:`load_vae`).
      dtype: computation dtype (float32 for parity; bfloat16 halves memory on accelerators).
      param_dtype: storage dtype of the parameters (default ``dtype``).
      rngs: initialisation randomness (loaded weights replace it).
    """

    def __init__(self, config: WanVAEConfig, *, dtype=F32, param_dtype=None, rngs: nnx.Rngs):
        param_dtype = dtype if param_dtype is None else param_dtype
        self.config = config
        self.dtype = dtype
        z = config.z_dim
        self.encoder = Encoder(config, param_dtype=param_dtype, rngs=rngs)
        self.quant_conv = CausalConv3d(2 * z, 2 * z, (1, 1, 1), param_dtype=param_dtype, rngs=rngs)
        self.post_quant_conv = CausalConv3d(z, z, (1, 1, 1), param_dtype=param_dtype, rngs=rngs)
        self.decoder = Decoder(config, param_dtype=param_dtype, rngs=rngs)

    # -- shape checks ------------------------------------------------------------------------

    def check_video(self, shape) -> int:
        """Validates ``[B, C, F, H, W]``; returns the latent frame count ``T``."""
        cfg = self.config
        if len(shape) != 5 or shape[1] != cfg.in_channels:
            raise ValueError(f"video must be [B, {cfg.in_channels}, F, H, W]; got shape {tuple(shape)}")
        f, h, w = shape[2:]
        tf, s = cfg.temporal_factor, cfg.spatial_factor
        if f < 1 or (f - 1) % tf:
            raise ValueError(
                f"the frame count F={f} must be {tf}*k+1 (e.g. {tf * ((f - 1) // tf) + 1}); trim the video"
            )
        if h % s or w % s or h == 0 or w == 0:
            raise ValueError(f"height and width ({h}, {w}) must be positive multiples of {s}; crop or pad the video")
        return 1 + (f - 1) // tf

    def check_latents(self, shape) -> None:
        if len(shape) != 5 or shape[1] != self.config.z_dim or min(shape[2:]) < 1:
            raise ValueError(f"latents must be [B, {self.config.z_dim}, T, h, w] with T, h, w >= 1; got {tuple(shape)}")

    @staticmethod
    def _check_chunk(chunk, n: int, what: str) -> None:
        if not isinstance(chunk, (int, np.integer)) or chunk < 1 or (n and n % chunk):
            raise ValueError(
                f"chunk={chunk!r} must be a positive integer dividing the {n} {what} after the first "
                f"(e.g. chunk=1)"
            )

    # -- traced implementations (usable inside jit / shard_map) --------------------------------

    def encode_traced(self, video: jax.Array, *, chunk: int = 1) -> jax.Array:
        """Raw moments ``[B, 2z, T, h, w]`` (float32) of ``video [B, 3, F, H, W]``; traceable.

        Frame 0 alone, then a scan over steps of ``chunk * 4`` frames.
        """
        t = self.check_video(video.shape)
        self._check_chunk(chunk, t - 1, "latent frames")
        b = video.shape[0]
        x = jnp.transpose(video, (0, 2, 3, 4, 1)).astype(self.dtype)  # [B, F, H, W, C]
        out, cache = self.encoder(x[:, :1], None, first=True)
        if t > 1:
            step = chunk * self.config.temporal_factor
            rest = x[:, 1:]
            rest = rest.reshape(b, (t - 1) // chunk, step, *rest.shape[2:]).swapaxes(0, 1)

            def body(c, xi):
                y, c = self.encoder(xi, c)
                return c, y

            _, ys = jax.lax.scan(body, cache, rest)  # [S, B, chunk, h, w, 2z]
            ys = ys.swapaxes(0, 1).reshape(b, t - 1, *ys.shape[3:])
            out = jnp.concatenate([out, ys], axis=1)
        out, _ = self.quant_conv(out)
        return jnp.transpose(out, (0, 4, 1, 2, 3)).astype(F32)

    def decode_traced(self, z: jax.Array, *, chunk: int = 1, sp=None) -> jax.Array:
        """``z [B, z, T, h, w] -> video [B, 3, 4(T-1)+1, 8h, 8w]`` float32 in [-1, 1]; traceable.

        Latent frame 0 alone, then a ``lax.scan`` over steps of ``chunk`` latent frames carrying the
        causal caches. ``sp`` is a spatial split (see :mod:`jaxvdm.models.wan.vae.sharded`): inside
        ``shard_map``, ``z`` is then this device's shard and so is the result.
        """
        self.check_latents(z.shape)
        b, _, t = z.shape[:3]
        self._check_chunk(chunk, t - 1, "latent frames")
        x = jnp.transpose(z, (0, 2, 3, 4, 1)).astype(self.dtype)  # [B, T, h, w, z]
        x, _ = self.post_quant_conv(x)
        first, cache = self.decoder(x[:, :1], None, sp, first=True)
        out = jnp.clip(first.astype(F32), -1.0, 1.0)
        if t > 1:
            rest = x[:, 1:].reshape(b, (t - 1) // chunk, chunk, *x.shape[2:]).swapaxes(0, 1)

            def body(c, xi):
                y, c = self.decoder(xi, c, sp)
                return c, jnp.clip(y.astype(F32), -1.0, 1.0)

            _, ys = jax.lax.scan(body, cache, rest)  # [S, B, 4*chunk, H, W, 3]
            ys = ys.swapaxes(0, 1).reshape(b, -1, *ys.shape[3:])
            out = jnp.concatenate([out, ys], axis=1)
        return jnp.transpose(out, (0, 4, 1, 2, 3))

    # -- jitted entry points -------------------------------------------------------------------

    def encode_moments(self, video, *, chunk: int = 1) -> jax.Array:
        """Raw encoder moments ``[B, 2z, T, h, w]`` (float32): ``(mean, logvar)`` on the channel axis,
        the output of diffusers' ``quant_conv``. ``video [B, 3, 4(T-1)+1, 8h, 8w]`` in [-1, 1]."""
        graphdef, state = nnx.split(self)
        return _encode_jit(graphdef, state, jnp.asarray(video), chunk)

    def encode(self, video, *, chunk: int = 1) -> tuple[jax.Array, jax.Array]:
        """``video [B, 3, F, H, W]`` -> ``(mean, logvar)``, each ``[B, z, T, h, w]`` float32.

        ``mean`` equals diffusers' ``vae.encode(x).latent_dist.mean`` (= ``.mode()``); ``logvar`` is
        clamped to [-30, 20] as there.
        """
        m = self.encode_moments(video, chunk=chunk)
        mean, logvar = jnp.split(m, 2, axis=1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z, *, chunk: int = 1) -> jax.Array:
        """``z [B, z, T, h, w]`` -> ``video [B, 3, 4(T-1)+1, 8h, 8w]`` float32 in [-1, 1] (diffusers'
        ``vae.decode(z).sample``). ``chunk`` latent frames per scan step (must divide ``T - 1``)."""
        graphdef, state = nnx.split(self)
        return _decode_jit(graphdef, state, jnp.asarray(z), chunk)

    def normalize_latents(self, z):
        """See :func:`normalize_latents`."""
        return normalize_latents(z, self.config)

    def denormalize_latents(self, z):
        """See :func:`denormalize_latents`."""
        return denormalize_latents(z, self.config)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _encode_jit(graphdef, state, video, chunk):
    return nnx.merge(graphdef, state).encode_traced(video, chunk=chunk)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _decode_jit(graphdef, state, z, chunk):
    return nnx.merge(graphdef, state).decode_traced(z, chunk=chunk)


def _stats(config: WanVAEConfig, z) -> tuple[jax.Array, jax.Array]:
    c = z.shape[1]
    if len(config.latents_mean) != c or len(config.latents_std) != c:
        raise ValueError(
            f"latents have {c} channels but the VAE config has {len(config.latents_mean)} latents_mean and "
            f"{len(config.latents_std)} latents_std values; fix latents_mean/latents_std in config.json"
        )
    shape = (1, c) + (1,) * (z.ndim - 2)
    return (jnp.asarray(config.latents_mean, F32).reshape(shape), jnp.asarray(config.latents_std, F32).reshape(shape))


def normalize_latents(z: jax.Array, config: WanVAEConfig) -> jax.Array:
    """VAE latents ``[B, z, T, h, w]`` -> the DiT's normalised latents ``(z - mean) / std`` (float32)."""
    mean, std = _stats(config, z)
    return (jnp.asarray(z, F32) - mean) / std


def denormalize_latents(z: jax.Array, config: WanVAEConfig) -> jax.Array:
    """The DiT's latents ``[B, z, T, h, w]`` -> VAE latents ``z * std + mean`` (float32), what the
    Wan pipeline passes to :meth:`WanVAE.decode`."""
    mean, std = _stats(config, z)
    return jnp.asarray(z, F32) * std + mean


def abstract_vae(config: WanVAEConfig, *, dtype=F32, param_dtype=None) -> WanVAE:
    """A WanVAE whose parameters are ``jax.ShapeDtypeStruct`` (nothing allocated)."""
    return nnx.eval_shape(lambda: WanVAE(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
