"""The denoising loop of the predict-transform strategies (single, cfg, ulysses, ring, fsdp, lp and their
compositions), and their compiled step on abstract inputs.

The loop is the single-device one: ``x <- scheduler.step(state, predict(x, i), x, i)`` for every step.
Only ``predict`` changes with the strategy (:func:`jaxvdm.sharding.predict.guided_prediction`); it runs
under ``shard_map`` over the whole mesh and returns a replicated prediction, so the latent and the
solver state stay replicated and global.

One jitted function per distinct static partition does the prediction and the scheduler update
together (one for exact strategies; a few for Latent Parallelism, whose partition axis rotates), all
compiled before the loop. The Python loop only dispatches. With two experts (Wan2.2 A14B,
:class:`~jaxvdm.sharding.experts.Experts`) each expert has its own placed weights and compiled steps, and
each step dispatches its own expert's (chosen on the host from its timestep).

* :func:`sample` -- the strategy contract: ``(latents, timings)`` for a plan on a mesh.
* :func:`denoise` -- the loop over one or more experts' :class:`Denoiser` s.
* :func:`step_program` -- one denoising step compiled for abstract weights and inputs (``bench``, ``comm``).
* :class:`Denoiser` -- a transformer placed for ``(plan, mesh)`` with its compiled steps; :func:`placed`
  returns a cached one (weights are placed once), :func:`clear_placements` drops the cache.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxvdm.models.wan.transformer.model import WanTransformer
from jaxvdm.sharding import runtime
from jaxvdm.sharding.experts import Experts, as_experts, expert_guidance, primary, step_experts
from jaxvdm.sharding.mesh import place
from jaxvdm.sharding.plan import Plan
from jaxvdm.sharding.predict import LPWindow, block_dims, guided_prediction, shard_map, state_specs, step_windows

__all__ = ["Denoiser", "Program", "denoise", "sample", "step_program", "placed", "clear_placements", "abstract_like"]


@dataclasses.dataclass(frozen=True)
class Program:
    """One compiled unit of a strategy, for measurement (``jaxvdm bench``, ``jaxvdm comm``).

    name: what it is (``"step lp axis T"``, ``"round of 4"``, ``"pipelined run"``).
    compiled: the ``jax.stages.Compiled`` program (its HLO, memory and cost analyses).
    runs: how many times one video's denoising runs it (steps, rounds, or 1).
    details: anything else the strategy measures about it (e.g. DualParal's per-stage FLOPs).
    """

    name: str
    compiled: object
    runs: int
    details: dict = dataclasses.field(default_factory=dict)


def _is_abstract(state) -> bool:
    return any(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree.leaves(state))


def abstract_like(tree, mesh: Mesh | None, specs=None):
    """``jax.ShapeDtypeStruct`` leaves of ``tree`` (arrays or structs) with their sharding on ``mesh``
    (replicated, or ``specs``): arguments to lower a program without allocating anything."""
    def sds(a, spec=P()):
        sharding = NamedSharding(mesh, spec) if mesh is not None else None
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)

    if specs is None:
        return jax.tree.map(sds, tree)
    return jax.tree.map(sds, tree, specs)


class Denoiser:
    """A transformer placed on a mesh for a plan, with its compiled denoising steps.

    Args:
      model: the transformer (an abstract one from ``abstract_transformer`` is only lowered, never run).
      plan: the resolved strategy (a predict-transform plan; a loop strategy uses this for its inner call).
      mesh: the mesh (None for one device: the plan's algorithm runs locally).
      attention: attention backend name for the local kernel ("auto", "xla", "cudnn", ...).
    """

    def __init__(self, model: WanTransformer, plan: Plan, mesh: Mesh | None, *, attention: str | None = None):
        self.model = model
        self.plan = plan if mesh is not None else plan.local()
        self.mesh = mesh
        self.attention = attention
        self.graphdef, state = nnx.split(model)
        self.specs = state_specs(state, self.plan)
        self.dims = block_dims(model, self.plan)
        if _is_abstract(state):
            self.state = abstract_like(state, mesh, self.specs)
        else:
            self.state = place(state, mesh, self.specs) if mesh is not None else state
        self.programs = runtime.Programs(mesh)
        self._steps: dict = {}

    def place(self, tree):
        """``tree`` replicated over the mesh (plain arrays without one)."""
        return place(tree, self.mesh)

    def predict_fn(self, lp: LPWindow | None = None) -> Callable:
        """``predict(state, x, t, ctx, guidance) -> guided velocity`` (mesh-wide, replicated output)."""
        graphdef, plan, attention, dims = self.graphdef, self.plan, self.attention, self.dims

        def predict(state, x, t, ctx, g):
            model = nnx.merge(graphdef, state)
            return guided_prediction(model, x, t, ctx, g, plan=plan, lp=lp, attention=attention, dims=dims)

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
        """The step for ``args`` compiled ahead of time (cached; compile time in ``self.programs.seconds``)."""
        key = (scheduler, None if lp is None else lp.key(), jax.tree.map(lambda a: (a.shape, a.dtype), args[1:]))
        name = f"step_{self.plan.describe()}" + ("" if lp is None or lp.axis is None else
                                                 f"_lp_axis{lp.axis}_len{lp.length}")
        return self.programs.get(key, name, lambda: self.step_fn(scheduler, lp), args)

    def windows(self, latent_shape, num_steps: int) -> tuple[LPWindow | None, ...]:
        """Each step's LP partition for a latent of ``latent_shape`` (None everywhere without LP)."""
        return step_windows(self.plan, latent_shape, self.model.config.patch_size, num_steps)

    def sample(self, noise, context, guidance: float, scheduler, *, progress: bool | None = None):
        """Denoises ``noise [1, C, T, H, W]`` with ``context`` (``[2, L, .]`` cond+uncond, or ``[1, L, .]``).

        Returns ``(latents [1, C, T, H, W] float32, {"compile_s", "denoise_s", "useful_forwards"})``: every
        step variant is compiled before the loop, so the loop time is denoising only; ``useful_forwards``
        lists ``((T, H, W), count)`` of the one-device algorithm's model forwards (for FLOP counts).
        """
        return denoise((self,), (0,) * scheduler.num_steps, noise, context, (guidance,), scheduler,
                       progress=progress)


def denoise(dens, which, noise, context, guidances, scheduler, *, progress: bool | None = None):
    """The one-device loop over experts: step ``i`` runs ``dens[which[i]]``'s compiled step with guidance
    ``guidances[which[i]]``. ``dens`` are :class:`Denoiser` s of one plan and mesh (one per expert).

    Returns what :meth:`Denoiser.sample` returns. Every step variant of every used expert is compiled
    before the loop; with one expert this is exactly :meth:`Denoiser.sample`.
    """
    n = scheduler.num_steps
    lead = dens[which[0]]
    parts = lead.windows(noise.shape, n)  # validated before anything is placed or compiled
    x, ctx, g0, sstate = runtime.place_inputs(lead.mesh, noise, context, guidances[0], scheduler)
    gs = [g0] + [lead.place(jnp.float32(g)) for g in guidances[1:]]
    compile_s = 0.0
    variants = {}
    for e in dict.fromkeys(which):
        den = dens[e]
        before = den.programs.seconds
        for lp in parts:
            key = (e, None if lp is None else lp.key())
            if key not in variants:
                variants[key] = den.compiled_step(scheduler, lp, (den.state, x, sstate, jnp.int32(0), ctx, gs[e]))
        compile_s += den.programs.seconds - before
    fns = [variants[(e, None if lp is None else lp.key())] for e, lp in zip(which, parts)]
    t0 = time.perf_counter()
    with runtime.progress_bar(n, f"denoise [{lead.plan.describe()}]", progress) as bar:
        for i, (e, fn) in enumerate(zip(which, fns)):
            x, sstate = fn(dens[e].state, x, sstate, jnp.int32(i), ctx, gs[e])
            bar.done(1, x)
        x.block_until_ready()
    return x, {"compile_s": compile_s, "denoise_s": time.perf_counter() - t0,
               "useful_forwards": [(tuple(noise.shape[2:]), n)]}


_PLACEMENTS: collections.OrderedDict = collections.OrderedDict()
_MAX_PLACEMENTS = 2  # weights placed for at most two (plan, mesh) pairs at a time


def _mesh_key(mesh: Mesh | None):
    return None if mesh is None else (tuple(mesh.axis_names), tuple(d.id for d in mesh.devices.flat))


def placed(model: WanTransformer, plan: Plan, mesh: Mesh | None, attention: str | None = None) -> Denoiser:
    """A :class:`Denoiser` for ``(model, plan, mesh, attention)``, cached so that repeated runs place the
    weights and compile their steps once (at most two placements are kept; :func:`clear_placements`)."""
    key = (id(model), plan, _mesh_key(mesh), attention)
    den = _PLACEMENTS.get(key)
    if den is None or den.model is not model:
        while len(_PLACEMENTS) >= _MAX_PLACEMENTS:
            _PLACEMENTS.popitem(last=False)
        den = Denoiser(model, plan, mesh, attention=attention)
        _PLACEMENTS[key] = den
    _PLACEMENTS.move_to_end(key)
    return den


def clear_placements() -> None:
    """Forgets every cached placement (their device buffers are freed once nothing else holds them)."""
    _PLACEMENTS.clear()


def sample(model: WanTransformer | Experts, plan: Plan, mesh: Mesh | None, noise, context, guidance: float,
           scheduler, *, attention: str | None = None, progress: bool | None = None, defaults=None,
           seed: int | None = None):
    """The strategy contract for predict transforms: denoise ``noise`` with ``plan`` on ``mesh``.

    ``model`` is one transformer or an :class:`~jaxvdm.sharding.experts.Experts` (Wan2.2 A14B): each step
    runs the compiled step of its own expert (chosen on the host by its timestep), with that expert's
    guidance; both experts' weights stay placed for the whole run. Returns
    ``(latents [1, C, T, H, W] float32, timings)``. ``defaults`` (the model's settings) and ``seed`` (the
    user's seed, for strategies that draw random numbers of their own) are not needed by predict
    transforms and are accepted for the common signature.
    """
    experts = as_experts(model)
    which = step_experts(experts, scheduler)
    dens = tuple(placed(m, plan, mesh, attention) for m in experts.models)
    return denoise(dens, which, noise, context, expert_guidance(experts, guidance), scheduler, progress=progress)


def step_program(model: WanTransformer | Experts, plan: Plan, mesh: Mesh | None, latent_shape, text_shape, scheduler, *,
                 attention: str | None = None, defaults=None, step: int = 0) -> Program:
    """Step ``step`` of the schedule compiled for ``model`` (abstract or real) and abstract inputs:
    ``x [latent_shape]``, context ``[text_shape]`` (batch 2 with guidance), nothing allocated. For
    :class:`~jaxvdm.sharding.experts.Experts`, the first expert's step (every expert's costs the same)."""
    den = placed(primary(model), plan, mesh, attention)
    lp = den.windows(latent_shape, scheduler.num_steps)[step]
    x = jax.ShapeDtypeStruct(tuple(latent_shape), jnp.float32)
    args = abstract_like((x, jax.eval_shape(scheduler.init, x), jax.ShapeDtypeStruct((), jnp.int32),
                          jax.ShapeDtypeStruct(tuple(text_shape), jnp.float32), jax.ShapeDtypeStruct((), jnp.float32)),
                         mesh)
    compiled = den.step_fn(scheduler, lp).lower(den.state, *args).compile()
    axis = "" if lp is None or lp.axis is None else f" lp axis {'THW'[lp.axis - 2]}"
    return Program(name=f"step {step}{axis}", compiled=compiled, runs=scheduler.num_steps)
