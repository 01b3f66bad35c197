"""The denoising loop for predict-transform strategies (single, cfg, ulysses, ring, fsdp, lp and their
compositions).

The loop is the single-device one: ``x ← scheduler.step(state, predict(x, i), x, i)`` for every step.
Only ``predict`` changes with the strategy; it runs under ``shard_map`` over the whole mesh and returns
a replicated prediction, so the latent and the solver state stay replicated and global.

One jitted function per distinct static partition does the prediction and the scheduler update
together (one function for exact strategies; at most a few for Latent Parallelism, whose partition
axis rotates). The Python loop only dispatches: there is no host round trip inside it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

from jaxvdm.models.wan.transformer import WanTransformer
from jaxvdm.profiling import record_compiled
from jaxvdm.sharding.mesh import place
from jaxvdm.sharding.predict import LPWindow, _block_dims, guided_prediction, shard_map, state_specs
from jaxvdm.sharding.registry import Plan

__all__ = ["Denoiser", "progress_enabled"]


def progress_enabled(progress: bool | None) -> bool:
    """Progress bars: on for a terminal unless ``JAXVDM_PROGRESS=0``; ``progress`` overrides."""
    if progress is not None:
        return bool(progress)
    if os.environ.get("JAXVDM_PROGRESS", "1") == "0":
        return False
    return sys.stderr.isatty()


class Denoiser:
    """A transformer placed on a mesh for a plan, with compiled denoising steps.

    Args:
      model: the transformer.
      plan: the resolved strategy.
      mesh: the mesh (None for one device).
      attention: attention backend name for the local kernel ("auto", "xla", "cudnn", ...).
    """

    def __init__(self, model: WanTransformer, plan: Plan, mesh: Mesh | None, *, attention: str | None = None):
        self.model = model
        self.plan = plan if mesh is not None else plan.local()
        self.mesh = mesh
        self.attention = attention
        self.graphdef, state = nnx.split(model)
        self.specs = state_specs(state, self.plan)
        self.block_dims = _block_dims(model, self.plan) if self.plan.fsdp_axis else None
        self.state = place(state, mesh, self.specs) if mesh is not None else state
        self._steps: dict = {}

    # -- one prediction ------------------------------------------------------------------------

    def predict_fn(self, lp: LPWindow | None = None) -> Callable:
        """``predict(state, x, t, ctx, guidance) -> guided velocity`` (mesh-wide, replicated output)."""
        graphdef, plan, attention, dims = self.graphdef, self.plan, self.attention, self.block_dims

        def predict(state, x, t, ctx, g):
            model = nnx.merge(graphdef, state)
            return guided_prediction(model, x, t, ctx, g, plan=plan, lp=lp, attention=attention, block_dims=dims)

        if self.mesh is None:
            return predict
        return shard_map(predict, mesh=self.mesh, in_specs=(self.specs, P(), P(), P(), P()), out_specs=P())

    def step_fn(self, scheduler, lp: LPWindow | None = None) -> Callable:
        """Jitted ``(state, x, solver_state, i, ctx, g) -> (x, solver_state)``, cached per partition."""
        key = (scheduler, None if lp is None else lp.key())
        if key not in self._steps:
            predict = self.predict_fn(lp)

            def step(state, x, sstate, i, ctx, g):
                v = predict(state, x, scheduler.timestep(i), ctx, g)
                with jax.named_scope("scheduler"):
                    return scheduler.step(sstate, v, x, i)

            self._steps[key] = jax.jit(step, donate_argnums=(1, 2))
        return self._steps[key]

    def compiled_step(self, scheduler, lp: LPWindow | None, args) -> Callable:
        """The step for ``args`` compiled ahead of time (cached), so compile time is measured apart.

        Every call reports the executable to :func:`~jaxvdm.profiling.record_compiled`, also when it
        comes from this cache, so an HLO dump or profile directory gets the step of every run."""
        key = ("compiled", scheduler, None if lp is None else lp.key(), jax.tree.map(lambda a: (a.shape, a.dtype), args[1:]))
        if key not in self._steps:
            self._steps[key] = self.step_fn(scheduler, lp).lower(*args).compile()
        record_compiled(f"step_{self.plan.describe()}" + ("" if lp is None else f"_lp_axis{lp.axis}_len{lp.length}"),
                        self._steps[key])
        return self._steps[key]

    def place(self, tree):
        """Replicates ``tree`` over the mesh (no-op without a mesh)."""
        return place(tree, self.mesh)

    # -- the loop ------------------------------------------------------------------------------

    def sample(self, noise, context, guidance: float, scheduler, *, windows: Callable[[int], LPWindow | None] | None = None,
               progress: bool | None = None, on_step: Callable[[int], None] | None = None):
        """Denoises ``noise [1, C, T, H, W]`` with ``context`` (``[2, L, ·]`` cond+uncond, or ``[1, L, ·]``).

        ``windows(i)`` gives step ``i``'s Latent Parallelism partition (None otherwise).
        Returns ``(latents [1, C, T, H, W] float32, {"compile_s", "denoise_s"})``: every step variant
        is compiled ahead of the loop, so the loop time is denoising only.
        """
        x = self.place(jnp.array(noise, jnp.float32, copy=True))  # donated below: never the caller's buffer
        ctx = self.place(jnp.asarray(context))
        g = self.place(jnp.float32(guidance))
        # fresh buffers: the state may alias the sample, and both are donated to each step
        sstate = self.place(jax.tree.map(lambda a: jnp.array(a, copy=True), scheduler.init(x)))
        n = scheduler.num_steps
        parts = [windows(i) if windows and self.mesh is not None else None for i in range(n)]
        t0 = time.perf_counter()
        fns = {}
        for lp in parts:
            key = None if lp is None else lp.key()
            if key not in fns:
                fns[key] = self.compiled_step(scheduler, lp, (self.state, x, sstate, jnp.int32(0), ctx, g))
        compile_s = time.perf_counter() - t0
        bar = None
        if progress_enabled(progress):
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc=f"denoise [{self.plan.describe()}]", leave=False)
        t0 = time.perf_counter()
        for i, lp in enumerate(parts):
            x, sstate = fns[None if lp is None else lp.key()](self.state, x, sstate, jnp.int32(i), ctx, g)
            if bar is not None:
                bar.update(1)
            if on_step is not None:
                on_step(i)
        x.block_until_ready()
        total = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        return x, {"compile_s": compile_s, "denoise_s": total}
