"""DualParal: block-wise denoising through a pipeline of layer stages (loop strategy on mesh axis ``stage``).

The latent video of ``C + Nb*B`` frames is cut into ``Nb`` blocks (block 0 owns the first ``B + C``
frames, block k >= 1 owns ``[C + k*B, C + (k+1)*B)``). Blocks go through a queue in which neighbours are
one denoising step apart: in outer iteration ``i`` block ``k`` takes step ``d = i - k``, tail to head.
Every block walks the whole schedule with its own solver state.

Every forward is one **window** of ``B + C`` frames ``[kB, kB + B + C)``: the last ``C`` frames of the
previous block (context, one step cleaner) then the block's own ``B`` (block 0: its own ``B + C``), with
window-local RoPE positions. Self-attention also sees the **cached keys/values** (taken before
``norm_k`` and RoPE, at positions ``B+C .. B+2C-1``) of the first ``C`` own frames of the next block,
written by the previous forward on the same layers in the same iteration; the cache is reset every
iteration. The prediction updates only the block's own frames.

On a mesh the transformer's layers are split into ``N`` consecutive stages (``ceil``/``floor`` as
evenly as possible, padded to one length with skipped layers), hidden states go stage to stage with
``lax.ppermute`` and the guided prediction returns from the last stage to the first, along a static
schedule with bubbles computed on the host (:mod:`jaxvdm.sharding.dualparal_schedule`). The context of
item (k, d) is always block k-1 after d+1 steps (the deterministic rule), so the pipelined run equals the
serial oracle (``mesh=None``) up to float rounding.

Coordinated noise: one pool of ``B + C`` noise frames (the first ``B + C`` frames of the initial noise);
each block takes a permutation of it as in the reference (see ``noise_pool_order``).

Implementation note: the latent video and one video-shaped solver state hold every block; updates are
applied on the ``B + C``-frame window with a frame mask (UniPC's state is elementwise), so every shape is
static.
"""

from __future__ import annotations

import hashlib
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from jaxvdm.models.wan.transformer.model import WanTransformer
from jaxvdm.sharding import dualparal_pipeline
from jaxvdm.sharding import dualparal_schedule as sched_lib
from jaxvdm.models.wan.i2v import FirstFrameCondition, VideoCondition
from jaxvdm.sharding import runtime
from jaxvdm.sharding.experts import as_experts, expert_guidance, primary, step_experts
from jaxvdm.sharding.dualparal_block import (Geometry, coordinated_noise, embed_window, empty_cache, geometry,
                                             stage_layers, update_block, window_head, window_layers)

__all__ = ["Geometry", "geometry", "coordinated_noise", "serial_oracle", "sample", "pipeline_program", "stage_layers",
           "run_geometry", "noise_seed", "forward_tokens"]


# ------------------------------------------------------------------------------------------ serial oracle


def serial_oracle(model: WanTransformer, x0, ctx, guidance, scheduler, geo: Geometry, *, attention=None,
                  progress=None):
    """The block-wise algorithm on one device: one forward after another, caches and context exact.

    ``x0 [1, Cch, total, h, w]`` is the initial latent video (coordinated noise already applied).
    ``model`` is one transformer or an :class:`~jaxvdm.sharding.experts.Experts`: item (k, d) runs on the
    expert of step ``d`` with its guidance. Returns ``(final latent video float32, {"compile_s",
    "denoise_s", "items"})``; the item program (one per used expert) is compiled before the loop, so
    ``denoise_s`` is the loop alone.
    """
    experts = as_experts(model)
    which = step_experts(experts, scheduler)
    guidances = expert_guidance(experts, guidance)
    model = experts.models[0]
    graphdef, state = nnx.split(model)

    def item(state, x, sstate, k, d, ctx, g, ck, cv, read):
        m = nnx.merge(graphdef, state)
        xw = lax.dynamic_slice_in_dim(x, geo.start(k), geo.window, axis=2)
        t = scheduler.timestep(d)
        h = embed_window(m, xw, ctx)
        h, (nk, nv) = window_layers(m, h, t, ctx, geo, (ck, cv), read, attention=attention)
        v = window_head(m, h, t, ctx, g, geo)
        x, sstate = update_block(scheduler, x, sstate, v, k, d, geo)
        return x, sstate, nk, nv

    x = jnp.asarray(x0, jnp.float32)
    ctx = jnp.asarray(ctx)
    sstate = scheduler.init(x)
    ck, cv = empty_cache(model, geo, ctx.shape[0])
    gs = [jnp.float32(g) for g in guidances]
    states = [state] + [nnx.split(m)[1] for m in experts.models[1:]]
    programs = runtime.Programs()
    fs = {e: programs.get(("item", e), "dualparal_oracle_item", lambda: jax.jit(item),
                          (states[e], x, sstate, jnp.int32(0), jnp.int32(0), ctx, gs[e], ck, cv, jnp.asarray(True)))
          for e in dict.fromkeys(which)}
    order = sched_lib.serial_order(geo.num_blocks, scheduler.num_steps)
    t0 = time.perf_counter()
    with runtime.progress_bar(len(order), "dualparal (serial)", progress, unit="block-step") as bar:
        for it in order:
            e = which[it.d]
            x, sstate, ck, cv = fs[e](states[e], x, sstate, jnp.int32(it.k), jnp.int32(it.d), ctx, gs[e], ck, cv,
                                      jnp.asarray(it.has_successor_context))
            bar.done(1, x)
        x.block_until_ready()
    return x, {"compile_s": programs.seconds, "denoise_s": time.perf_counter() - t0, "items": len(order),
               "useful_forwards": [(geo.window_shape, len(order))], "blocks": geo.num_blocks,
               "block_frames": geo.B, "context_frames": geo.C}


def run_geometry(model: WanTransformer, plan, latent_shape, defaults=None) -> Geometry:
    """The block geometry of ``plan`` for a latent ``[1, C, T, H, W]``: ``block_frames`` and
    ``context_frames`` from the plan's options, else from the model's ``defaults``
    (``dualparal_block_frames``, ``dualparal_context_frames``); ``defaults["vae_stride"]`` words the
    error messages in video frames. Raises ValueError naming valid frame counts."""
    b, c = _blocks(plan, defaults)
    stride_t = int(dict(defaults or {}).get("vae_stride", (4, 8, 8))[0])
    return geometry(latent_shape, primary(model).config.patch_size, b, c, vae_stride_t=stride_t)


def noise_seed(noise, geo: Geometry) -> int:
    """A seed drawn from the values of the noise pool (the first ``B + C`` frames of ``noise``), for a run
    given latents instead of a seed: the same noise gives the same seed on every process and mesh."""
    pool = np.asarray(jax.device_get(noise[:, :, :geo.window]))
    return int.from_bytes(hashlib.sha256(np.ascontiguousarray(pool, np.float32).tobytes()).digest()[:8], "little")


def forward_tokens(plan, latent_shape, patch, num_steps: int, defaults=None) -> int:
    """The tokens of one block window, ``(B + C) * h' * w'``: every DualParal forward holds one window."""
    stride_t = int(dict(defaults or {}).get("vae_stride", (4, 8, 8))[0])
    geo = geometry(latent_shape, patch, *_blocks(plan, defaults), vae_stride_t=stride_t)
    return geo.window * geo.tokens_per_frame


def _blocks(plan, defaults) -> tuple[int, int]:
    defaults = dict(defaults or {})
    b, c = plan.option("block_frames"), plan.option("context_frames")
    b = defaults.get("dualparal_block_frames") if b is None else b
    c = defaults.get("dualparal_context_frames") if c is None else c
    if b is None or c is None:
        raise ValueError("dualparal needs block_frames and context_frames (latent frames per block and of context), "
                         "e.g. block_frames=8, context_frames=8")
    return b, c


def sample(model, plan, mesh, noise, context, guidance, scheduler, *, attention=None, progress=None, defaults=None,
           seed=None):
    """Runs DualParal: pipelined over ``mesh``'s ``stage`` axis, or the serial oracle without a mesh.

    The coordinated noise's per-block permutations are drawn from ``seed`` (the user's seed; without
    one, from the noise itself, :func:`noise_seed`), so the same seed gives the same video on every
    mesh and different seeds different permutations. ``model``: one transformer or an
    :class:`~jaxvdm.sharding.experts.Experts` (every block-step on its own step's expert, both resident).
    Returns ``(latents, timings)``; the pipelined run adds ``bubble_ratio`` and ``slots``."""
    if isinstance(context, (VideoCondition, FirstFrameCondition)):
        raise ValueError("dualparal does not run image-to-video yet (its block windows do not carry the image "
                         "conditioning); use single, cfg, ulysses, ring, fsdp, lp or parastep for --image")
    geo = run_geometry(model, plan, noise.shape, defaults)
    x0 = coordinated_noise(jnp.asarray(noise, jnp.float32), geo, noise_seed(noise, geo) if seed is None else seed)
    if mesh is None or plan.size(plan.loop_axis) == 1 and not plan.cfg_axis:
        return serial_oracle(model, x0, context, guidance, scheduler, geo, attention=attention, progress=progress)
    n = plan.size(plan.loop_axis)
    if geo.num_blocks < n + 1:
        ratio = sched_lib.bubble_ratio(sched_lib.pipeline_schedule(geo.num_blocks, scheduler.num_steps, n))
        warnings.warn(f"dualparal: {geo.num_blocks} blocks cannot fill a pipeline of {n} stages (use at least {n + 1} "
                      f"blocks); the bubble ratio of this run is {ratio:.0%}", stacklevel=2)
    return dualparal_pipeline.run(model, plan, mesh, x0, context, guidance, scheduler, geo, attention=attention)


def pipeline_program(model, plan, mesh, latent_shape, text_shape, scheduler, *, attention=None, defaults=None,
                     step=None):
    """The whole pipelined run compiled for ``model`` (abstract or real) and abstract inputs; it runs once
    per video."""
    from jaxvdm.sharding.sampling import Program, abstract_like

    if mesh is None:
        raise ValueError("the pipelined DualParal program needs a mesh with a 'stage' axis")
    model = primary(model)  # both experts of an Experts have one architecture: one cost
    geo = run_geometry(model, plan, latent_shape, defaults)
    f, schedule, arrays, state, specs = dualparal_pipeline.build(model, plan, mesh, geo, scheduler,
                                                                 with_cfg=text_shape[0] == 2, attention=attention)
    args = (abstract_like(state, mesh, specs), *abstract_like(
        (jax.ShapeDtypeStruct(tuple(latent_shape), jnp.float32), jax.ShapeDtypeStruct(tuple(text_shape), jnp.float32),
         jax.ShapeDtypeStruct((), jnp.float32), {k: jnp.asarray(v) for k, v in arrays.items()}), mesh))
    details = {"slots": len(schedule.slots), "bubble_ratio": float(sched_lib.bubble_ratio(schedule))}
    if not plan.cfg_axis:  # each stage's own work, compiled with its index fixed
        details["stage_flops_per_slot"] = dualparal_pipeline.stage_flops(model, plan, geo, scheduler,
                                                                         with_cfg=text_shape[0] == 2,
                                                                         attention=attention)
    return Program(name=f"pipelined run ({geo.num_blocks} blocks, {len(schedule.slots)} slots)",
                   compiled=f.lower(*args).compile(), runs=1, details=details)
