"""Batched sampling of the shapes model (many prompts in one jitted loop), for training-time evaluation
and adherence benchmarks. ``jaxvdm.generate`` is the user-facing, one-video, any-strategy path; this is
the same sampler (flow-matching UniPC/Euler with classifier-free guidance) vectorised over prompts."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvdm.models.schedulers import make_scheduler

__all__ = ["sample_clips"]


@functools.partial(jax.jit, static_argnames=("graphdef", "scheduler", "shape"))
def _sample(graphdef, state, ids, noise_key, guidance, offset, *, scheduler, shape):
    from jaxvdm.models.shapes import data

    model = nnx.merge(graphdef, state)
    b = ids.shape[0]
    ctx = model.text(jnp.concatenate([ids, jnp.full_like(ids, data.PAD_ID)], axis=0))
    x = jax.random.normal(noise_key, (b,) + shape, jnp.float32)
    st = scheduler.init(x)

    def body(i, carry):
        x, st = carry
        t = jnp.full((2 * b,), scheduler.timestep(i))
        v = model.transformer(jnp.concatenate([x, x], axis=0), t, ctx, offset=offset)
        v = v[b:] + guidance * (v[:b] - v[b:])
        return scheduler.step(st, v, x, i)

    x, _ = jax.lax.fori_loop(0, scheduler.num_steps, body, (x, st))
    return x


def sample_clips(model, ids, key, *, steps: int = 20, guidance: float = 4.0, shift: float = 2.0,
                 scheduler: str = "unipc", num_frames: int = 16, size: int = 32, height: int | None = None,
                 width: int | None = None, offset=(0, 0, 0), batch: int = 64):
    """Generates one clip per row of token ids ``[B, L]``: returns ``[B, F, H, W, 3]`` float32 in [-1, 1]
    (``H = height or size``, ``W = width or size``).

    ``offset``: the clips' (t, h, w) token offset (RoPE positions), e.g. a Latent Parallelism window's start
    in the whole video; every offset of one size shares one compile."""
    graphdef, state = nnx.split(model)
    sched = make_scheduler(scheduler, steps, shift)
    shape = (model.transformer.config.in_channels, num_frames, height or size, width or size)
    off = jnp.asarray(offset, jnp.int32)
    outs = []
    for start in range(0, ids.shape[0], batch):
        key, sub = jax.random.split(key)
        chunk = jnp.asarray(ids[start:start + batch])
        x = _sample(graphdef, state, chunk, sub, jnp.float32(guidance), off, scheduler=sched, shape=shape)
        outs.append(jnp.clip(x, -1, 1).transpose(0, 2, 3, 4, 1))
    return jnp.concatenate(outs, axis=0)
