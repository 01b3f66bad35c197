"""Mixture-of-experts denoising (Wan2.2 A14B): which transformer, and which guidance scale, each step uses.

Wan2.2 A14B has two transformers of one architecture: a *high-noise* expert for the early steps and a
*low-noise* expert for the late ones. The switch is at a timestep ``boundary``: a step whose timestep
``t`` satisfies ``t >= boundary`` runs expert 0 (with the sampler's ``guidance``), every other step
expert 1 (with ``guidance_2``). This is diffusers' ``WanPipeline`` rule, with ``boundary =
boundary_ratio * num_train_timesteps``.

Every strategy's ``sample(model, ...)`` accepts either one transformer (today's case, unchanged) or an
:class:`Experts` value; :func:`as_experts` turns either into an :class:`Experts`. The choice per step is
host data (:func:`step_experts`): predict transforms and ParaStep pick the expert's compiled program per
step or per round position; DualParal, whose pipeline holds blocks at different steps at once, indexes
that table inside its program.

Memory: every expert's weights are resident on the devices for the whole run (placed as the plan places
one transformer: replicated, fsdp-sharded, or split into DualParal's stages), so two experts need twice
the weight memory of one (a 14B expert in bfloat16 is 28 GB: 56 GB for the pair on one device).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Experts", "as_experts", "step_experts", "expert_guidance", "primary"]


@dataclasses.dataclass(frozen=True, eq=False)
class Experts:
    """The transformers of one denoising run and the rule that picks one per step.

    models: one transformer, or (high-noise, low-noise) of one config.
    boundary: the timestep of the switch (``t >= boundary``: ``models[0]``; else ``models[1]``); None with one.
    guidance_2: the guidance scale of ``models[1]`` (None: the sampler's ``guidance`` for both).
    """

    models: tuple
    boundary: float | None = None
    guidance_2: float | None = None

    def __post_init__(self):
        models = tuple(self.models)
        object.__setattr__(self, "models", models)
        if len(models) not in (1, 2):
            raise ValueError(f"Experts takes one transformer or two (high-noise, low-noise), got {len(models)}")
        if len(models) == 2:
            if self.boundary is None:
                raise ValueError("two experts need the boundary timestep of their switch (boundary_ratio * "
                                 "num_train_timesteps); got boundary=None")
            if models[0].config != models[1].config:
                raise ValueError("the two experts must share one transformer config (Wan2.2 A14B's do); got "
                                 f"{models[0].config} and {models[1].config}")
        elif self.boundary is not None or self.guidance_2 is not None:
            raise ValueError("boundary and guidance_2 need a second expert (transformer_2); give two models or "
                             "leave them None")

    @property
    def config(self):
        """The shared transformer config."""
        return self.models[0].config

    @property
    def dtype(self):
        """The first expert's computation dtype."""
        return self.models[0].dtype


def as_experts(model) -> Experts:
    """``model`` (a transformer or an :class:`Experts`) as an :class:`Experts` (one transformer: one expert)."""
    return model if isinstance(model, Experts) else Experts((model,))


def primary(model):
    """The first (high-noise) transformer of ``model`` (a transformer or an :class:`Experts`): what a program
    compiled for measurement uses (both experts have one architecture, so one cost)."""
    return as_experts(model).models[0]


def step_experts(experts: Experts, scheduler) -> tuple[int, ...]:
    """The expert index of every step of ``scheduler`` (all 0 with one expert): ``0`` where the step's
    timestep ``t >= boundary``, else ``1``. Integer timesteps (UniPC) are compared exactly, float ones
    (Euler) in float32, as diffusers compares its timestep tensor with the boundary."""
    n = scheduler.num_steps
    if len(experts.models) == 1:
        return (0,) * n
    ts = np.asarray(scheduler.timesteps)[:n]
    if np.issubdtype(ts.dtype, np.integer):
        high = [int(t) >= experts.boundary for t in ts]
    else:
        high = [np.float32(t) >= np.float32(experts.boundary) for t in ts]
    return tuple(0 if h else 1 for h in high)


def expert_guidance(experts: Experts, guidance: float) -> tuple[float, ...]:
    """Each expert's guidance scale: ``guidance`` for expert 0, ``guidance_2`` (default ``guidance``) for 1."""
    if len(experts.models) == 1:
        return (float(guidance),)
    return (float(guidance), float(guidance if experts.guidance_2 is None else experts.guidance_2))
