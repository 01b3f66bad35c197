"""The Wan video VAE (diffusers ``AutoencoderKLWan``): Wan2.1 and Wan2.2, in Flax NNX.

Shapes (public surface, channels-first like the reference), with ``s = config.spatial_factor``
(8 for Wan2.1, 16 for Wan2.2) and ``z = config.z_dim`` (16 / 48):

* ``encode(video [B, 3, F, H, W] in [-1, 1]) -> (mean, logvar)``, each ``[B, z, T, H/s, W/s]`` with
  ``F = 4(T-1) + 1``; :meth:`WanVAE.encode_moments` gives the raw ``[B, 2z, T, h, w]``.
* ``decode(z [B, z, T, h, w]) -> video [B, 3, 4(T-1)+1, s*h, s*w]`` clamped to ``[-1, 1]``.

Internally activations are channels-last ``[B, T, H, W, C]``.

**The two families.** Wan2.1 (``is_residual=False``) stacks residual blocks and resamplers; Wan2.2
(``is_residual=True``, TI2V-5B) groups each level into a :class:`~.residual.ResidualDownBlock` /
:class:`~.residual.ResidualUpBlock` with a parameter-free shortcut, keeps the decoder's channels
through its upsamplers, and (``patch_size=2``) folds 2x2 pixel patches into 12 channels before the
encoder and unfolds them after the decoder (:mod:`jaxvdm.models.wan.vae.residual`). The causal
chunking below is the same for both.

**Causal chunking, exactly as the reference.** diffusers runs the encoder on frame 0 alone and then
on chunks of 4 frames, and the decoder one latent frame at a time, carrying for every causal
convolution the last two frames of its input (``CACHE_T = 2``). Every 3x3x3 convolution is then the
same as one causal (zero front-padded) convolution over the whole frame stream, *except* at the
temporal resamplers, where the first chunk is special:

* decoder ``upsample3d``: the first latent frame is not temporally upsampled (one output frame), and
  the ``time_conv`` stream starts fresh (zero history) at the second latent frame; Wan2.2's
  duplicating shortcut drops its first frame there to match;
* encoder ``downsample3d``: frame 0 passes through; later chunks convolve (stride 2, no padding)
  over the previous chunk's last frame followed by the chunk; Wan2.2's averaging shortcut pads the
  one-frame first chunk with a zero frame in front.

Here every causal convolution carries a fixed-shape cache (zeros at the start), so the computation
is one *first step* followed by a ``lax.scan`` over equal chunks (``chunk`` latent frames per step,
default 1). Only one step's activations are alive at a time; results equal the reference's
(``chunk > 1`` is the same function computed with bigger steps: faster on accelerators, more memory).

The decoded video is clamped to [-1, 1] for both families, as diffusers does whatever the config's
``clip_output`` says (the published Wan2.2 config carries ``clip_output: false``, which diffusers'
``AutoencoderKLWan`` does not read).

Precision: convolutions and projections run in ``dtype``; RMS norms and the attention softmax in
float32; outputs are float32.

The spatial split used by :mod:`jaxvdm.models.wan.vae.sharded` enters through the ``sp`` argument of
the decoder layers (``None`` on one device): 3x3 convolutions take their halo from ``sp`` and the
mid-block attention gathers keys/values through it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvdm.models.wan.vae.config import WanVAEConfig
from jaxvdm.models.wan.vae.layers import CACHE_T, CausalConv3d, MidBlock, Resample, ResidualBlock, RMSNorm, UpBlock
from jaxvdm.models.wan.vae.residual import ResidualDownBlock, ResidualUpBlock, patchify, unpatchify

__all__ = ["WanVAE", "abstract_vae", "normalize_latents", "denormalize_latents", "CACHE_T"]

F32 = jnp.float32


# ----------------------------------------------------------------------------- encoder and decoder


class Encoder(nnx.Module):
    """``WanEncoder3d``. ``__call__(x [B,T,H,W,Cin], cache, first) -> ([B,T',H/f,W/f,2z], cache)`` with
    ``f = 2 ** (len(dim_mult) - 1)`` (the patch, if any, is folded in before)."""

    def __init__(self, cfg: WanVAEConfig, *, param_dtype, rngs: nnx.Rngs):
        dims = [cfg.base_dim * u for u in (1, *cfg.dim_mult)]
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], **kw)
        blocks: list[nnx.Module] = []
        last = len(cfg.dim_mult) - 1
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if cfg.is_residual:
                temporal = i != last and cfg.temperal_downsample[i]
                blocks.append(ResidualDownBlock(cin, cout, cfg.num_res_blocks, temporal, i != last, **kw))
                continue
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(cin, cout, **kw))
                cin = cout
            if i != last:
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
            if isinstance(blk, (Resample, ResidualDownBlock)):
                x, c_down[i] = blk(x, c_down[i], first=first)
            else:
                x, c_down[i] = blk(x, c_down[i])
        x, c_mid = self.mid_block(x, c_mid)
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), c_out)
        return x, (c_in, tuple(c_down), c_mid, c_out)


class Decoder(nnx.Module):
    """``WanDecoder3d``. ``__call__(x [B,T,h,w,z], cache, sp, first) -> ([B,T',f*h,f*w,out], cache)``
    with ``f = 2 ** (len(dim_mult) - 1)``, ``T' = 1`` on the ``first`` step and ``4T`` afterwards (the
    patch, if any, is unfolded after)."""

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
            up = i != n - 1
            if cfg.is_residual:  # Wan2.2: the upsamplers keep the channels
                ups.append(ResidualUpBlock(cin, cout, cfg.num_res_blocks, up and temperal_upsample[i], up, **kw))
                continue
            if i > 0:
                cin = cin // 2  # the previous upsampler halved the channels
            mode = None
            if up:
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
    """The Wan2.1 or Wan2.2 VAE (``AutoencoderKLWan``). See the module docstring for shapes and chunking.

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
        if len(shape) != 5 or shape[1] != cfg.video_channels:
            raise ValueError(f"video must be [B, {cfg.video_channels}, F, H, W]; got shape {tuple(shape)}")
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
        x = patchify(x, self.config.patch)
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
        """``z [B, z, T, h, w] -> video [B, 3, 4(T-1)+1, s*h, s*w]`` float32 in [-1, 1]; traceable.

        Latent frame 0 alone, then a ``lax.scan`` over steps of ``chunk`` latent frames carrying the
        causal caches. ``sp`` is a spatial split (see :mod:`jaxvdm.models.wan.vae.sharded`): inside
        ``shard_map``, ``z`` is then this device's shard and so is the result.
        """
        self.check_latents(z.shape)
        b, _, t = z.shape[:3]
        self._check_chunk(chunk, t - 1, "latent frames")
        x = jnp.transpose(z, (0, 2, 3, 4, 1)).astype(self.dtype)  # [B, T, h, w, z]
        x, _ = self.post_quant_conv(x)
        p = self.config.patch
        first, cache = self.decoder(x[:, :1], None, sp, first=True)
        out = unpatchify(jnp.clip(first.astype(F32), -1.0, 1.0), p)
        if t > 1:
            rest = x[:, 1:].reshape(b, (t - 1) // chunk, chunk, *x.shape[2:]).swapaxes(0, 1)

            def body(c, xi):
                y, c = self.decoder(xi, c, sp)
                return c, unpatchify(jnp.clip(y.astype(F32), -1.0, 1.0), p)

            _, ys = jax.lax.scan(body, cache, rest)  # [S, B, 4*chunk, H, W, 3]
            ys = ys.swapaxes(0, 1).reshape(b, -1, *ys.shape[3:])
            out = jnp.concatenate([out, ys], axis=1)
        return jnp.transpose(out, (0, 4, 1, 2, 3))

    # -- jitted entry points -------------------------------------------------------------------

    def encode_moments(self, video, *, chunk: int = 1) -> jax.Array:
        """Raw encoder moments ``[B, 2z, T, h, w]`` (float32): ``(mean, logvar)`` on the channel axis,
        the output of diffusers' ``quant_conv``. ``video [B, 3, 4(T-1)+1, s*h, s*w]`` in [-1, 1]."""
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
        """``z [B, z, T, h, w]`` -> ``video [B, 3, 4(T-1)+1, s*h, s*w]`` float32 in [-1, 1] (diffusers'
        ``vae.decode(z).sample``), ``s = config.spatial_factor``. ``chunk`` latent frames per scan step
        (must divide ``T - 1``)."""
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
