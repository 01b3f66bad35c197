"""The Wan2.2 VAE's own layers: residual down/up blocks with parameter-free shortcuts, and the pixel patch.

Wan2.2 (``is_residual=True``) wraps each encoder level and each decoder level in a residual whose
shortcut has no parameters:

* :func:`avg_down` (diffusers ``AvgDown3D``): space-to-channel by the level's factors (``ft`` frames,
  ``fs x fs`` pixels), then the mean over consecutive groups of channels down to ``out`` channels.
  A chunk whose frame count is not a multiple of ``ft`` is zero-padded *in front* first (the first
  one-frame chunk of the causal encoder, so its shortcut is half its frame);
* :func:`dup_up` (diffusers ``DupUp3D``): the inverse layout: each channel repeated, then
  channel-to-space; on the decoder's first step the first ``ft - 1`` output frames are dropped, as
  the main path's temporal upsampler passes the first latent frame through once.

:func:`patchify` / :func:`unpatchify` fold a ``p x p`` pixel patch into channels before the encoder
and unfold it after the decoder, with diffusers' channel order ``(c, pw, ph)`` (width index before
height index).

All functions are channels-last ``[B, T, H, W, C]`` and per pixel block (no neighbourhood), so they
run unchanged on a spatial slab of :mod:`jaxvdm.models.wan.vae.sharded`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvdm.models.wan.vae.layers import Resample, ResidualBlock

__all__ = ["avg_down", "dup_up", "patchify", "unpatchify", "ResidualDownBlock", "ResidualUpBlock"]


def avg_down(x: jax.Array, out: int, ft: int, fs: int) -> jax.Array:
    """``[B, T, H, W, C] -> [B, ceil(T/ft), H/fs, W/fs, out]``: fold ``ft x fs x fs`` into channels
    (index ``((c*ft + t)*fs + h)*fs + w``) and average consecutive groups of ``C*ft*fs*fs/out``."""
    b, t, h, w, c = x.shape
    pad_t = (-t) % ft
    if pad_t:
        x = jnp.concatenate([jnp.zeros((b, pad_t, h, w, c), x.dtype), x], axis=1)
        t += pad_t
    x = x.reshape(b, t // ft, ft, h // fs, fs, w // fs, fs, c)
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, t // ft, h // fs, w // fs, out, -1)
    return jnp.mean(x, axis=-1)


def dup_up(x: jax.Array, out: int, ft: int, fs: int, *, first: bool = False) -> jax.Array:
    """``[B, T, H, W, C] -> [B, T*ft, H*fs, W*fs, out]`` (``T*ft - ft + 1`` frames when ``first``):
    repeat each channel ``out*ft*fs*fs/C`` times, then unfold channel ``((o*ft + t)*fs + h)*fs + w``."""
    b, t, h, w, c = x.shape
    x = jnp.repeat(x, out * ft * fs * fs // c, axis=-1)
    x = x.reshape(b, t, h, w, out, ft, fs, fs).transpose(0, 1, 5, 2, 6, 3, 7, 4)
    x = x.reshape(b, t * ft, h * fs, w * fs, out)
    return x[:, ft - 1 :] if first else x


def patchify(x: jax.Array, p: int) -> jax.Array:
    """``[B, T, H, W, C] -> [B, T, H/p, W/p, C*p*p]``, channel ``(c*p + pw)*p + ph`` (diffusers' order)."""
    if p == 1:
        return x
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
    return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
    """Inverse of :func:`patchify`: ``[B, T, h, w, C*p*p] -> [B, T, h*p, w*p, C]``."""
    if p == 1:
        return x
    b, t, h, w, cp = x.shape
    x = x.reshape(b, t, h, w, cp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
    return x.reshape(b, t, h * p, w * p, cp // (p * p))


class ResidualDownBlock(nnx.Module):
    """``WanResidualDownBlock``: residual blocks and an optional downsampler, plus :func:`avg_down` of
    the block's input. ``__call__(x, cache, first) -> (y, (resnet caches, downsampler cache))``."""

    def __init__(self, cin: int, cout: int, num_res_blocks: int, temporal: bool, down: bool, *, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.cout = cout
        self.ft = 2 if temporal else 1
        self.fs = 2 if down else 1
        blocks = []
        for _ in range(num_res_blocks):
            blocks.append(ResidualBlock(cin, cout, **kw))
            cin = cout
        self.resnets = nnx.List(blocks)
        self.downsampler = Resample(cout, "downsample3d" if temporal else "downsample2d", **kw) if down else None

    def __call__(self, x, cache=None, *, first: bool = False):
        rc, dc = (None, None) if cache is None else cache
        rc = [None] * len(self.resnets) if rc is None else list(rc)
        shortcut = avg_down(x, self.cout, self.ft, self.fs)
        for i, blk in enumerate(self.resnets):
            x, rc[i] = blk(x, rc[i])
        if self.downsampler is not None:
            x, dc = self.downsampler(x, dc, first=first)
        return x + shortcut.astype(x.dtype), (tuple(rc), dc)


class ResidualUpBlock(nnx.Module):
    """``WanResidualUpBlock``: ``num_res_blocks + 1`` residual blocks and an optional upsampler (to
    ``cout`` channels), plus :func:`dup_up` of the block's input when it upsamples.
    ``__call__(x, cache, sp, first) -> (y, (resnet caches, upsampler cache))``."""

    def __init__(self, cin: int, cout: int, num_res_blocks: int, temporal: bool, up: bool, *, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.cout = cout
        self.ft = 2 if temporal else 1
        self.up = up
        blocks = []
        for _ in range(num_res_blocks + 1):
            blocks.append(ResidualBlock(cin, cout, **kw))
            cin = cout
        self.resnets = nnx.List(blocks)
        mode = "upsample3d" if temporal else "upsample2d"
        self.upsampler = Resample(cout, mode, cout, **kw) if up else None

    def __call__(self, x, cache=None, sp=None, *, first: bool = False):
        rc, uc = (None, None) if cache is None else cache
        rc = [None] * len(self.resnets) if rc is None else list(rc)
        shortcut = dup_up(x, self.cout, self.ft, 2, first=first) if self.up else None
        for i, blk in enumerate(self.resnets):
            x, rc[i] = blk(x, rc[i], sp)
        if self.upsampler is not None:
            x, uc = self.upsampler(x, uc, sp, first=first)
        if shortcut is not None:
            x = x + shortcut.astype(x.dtype)
        return x, (tuple(rc), uc)
