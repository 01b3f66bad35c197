"""The strategy registry: names, mesh axes, options, and validation of a strategy against a mesh.

Every strategy declares the mesh axis it owns and its options with defaults. Strategies that compose
are joined with ``+`` (``"cfg+ulysses"``, ``"lp+cfg"``, ``"parastep+lp"``); each needs its axis in the
mesh. A *predict transform* changes how one guided prediction is computed (cfg, ulysses, ring, fsdp,
lp); a *loop strategy* changes which predictions are evaluated where and when (parastep, dualparal),
and takes any predict transforms for its inner call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from jax.sharding import Mesh

from jaxvdm.sharding import dualparal, parastep, predict, sampling
from jaxvdm.sharding.mesh import format_mesh, mesh_shape
from jaxvdm.sharding.plan import Plan

__all__ = ["BASELINE", "StrategySpec", "STRATEGIES", "Plan", "resolve", "available_strategies", "split_names", "parse_options",
           "options_for", "sized_axes"]


def _one_step(plan: Plan) -> int:
    return 1


@dataclasses.dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: everything that is particular to it.

    name: what users write.
    axis: the mesh axis it owns (None for "single").
    kind: "predict" (a predict transform) or "loop" (a loop strategy).
    options: option name -> default value (None: the model's default, read by the sampler).
    exact: whether it reproduces the single-device output (to float rounding).
    summary: one line for help texts and the README.
    fixed_size: the axis size it requires, if any.
    sample: ``sample(model, plan, mesh, noise, context, guidance, scheduler, *, attention, progress, defaults)
      -> (latents, timings)``; predict transforms share the one-device loop (:func:`sampling.sample`).
      ``model`` is one transformer or an :class:`~jaxvdm.sharding.experts.Experts` (Wan2.2 A14B: every
      evaluation on the expert of its own step, with that expert's guidance; ``guidance`` is expert 0's).
    program: ``program(model, plan, mesh, latent_shape, text_shape, scheduler, *, attention, defaults, step)
      -> Program``: one compiled unit (step, round or whole run) on abstract inputs, for bench and comm.
    min_steps: the shortest schedule a plan of this strategy runs (ParaStep: warm-up + one round).
    option_help: option name -> one line for ``--help`` (what it is and which values it takes).
    forward_tokens: ``(plan, latent_shape, patch, num_steps, defaults) -> int``, the most tokens one device's
      forward holds (per batch element): what ``generate`` checks against memory before compiling.
    """

    name: str
    axis: str | None
    kind: str
    options: Mapping[str, Any]
    exact: bool
    summary: str
    fixed_size: int | None = None
    sample: Callable = sampling.sample
    program: Callable = sampling.step_program
    min_steps: Callable[[Plan], int] = _one_step
    option_help: Mapping[str, str] = dataclasses.field(default_factory=dict)
    forward_tokens: Callable = predict.forward_tokens


BASELINE = "single"
"""The exact one-device strategy: every other one is measured against it."""

STRATEGIES: dict[str, StrategySpec] = {
    s.name: s
    for s in [
        StrategySpec(BASELINE, None, "predict", {}, True, "one device (or the reference on any mesh)"),
        StrategySpec("cfg", "cfg", "predict", {}, True,
                     "classifier-free guidance pair split over 2 devices; one exchange of the prediction per step",
                     fixed_size=2),
        StrategySpec("ulysses", "sp", "predict", {}, True,
                     "tokens split over devices; all-to-all to heads around self-attention (any token/head count)"),
        StrategySpec("ring", "sp", "predict", {}, True,
                     "tokens split over devices; K/V passed around a ring with online-softmax merging"),
        StrategySpec("fsdp", "fsdp", "predict", {}, True,
                     "block weights sharded over devices and gathered per layer; tokens split, K/V all-gathered"),
        StrategySpec("lp", "lp", "predict",
                     {"overlap": 0.5, "schedule": "rotate", "ramp": "linear", "r_max": 0.4}, False,
                     "Latent Parallelism: overlapping latent windows on a rotating axis, blended; only latents move",
                     option_help={
                         "overlap": "overlap ratio r in [0, K-1]: windows extend their core by floor(r * core) "
                                    "patches per side (the paper: 0.5; K-1 makes every window the whole axis)",
                         "schedule": "partition axis per step: rotate (T, H, W, ...: the paper), T, H, W, or unite "
                                     "(the NSDI artifact: exact first step, decaying overlap, late H/W only)",
                         "ramp": "blend weights beside the cores: linear (the paper) or cosine (the artifact)",
                         "r_max": "unite schedule: the first overlap, decaying to r_max/2 (the artifact: 0.4)"}),
        StrategySpec("parastep", "step", "loop", {"warmup": 5, "cache": "own"}, False,
                     "ParaStep: devices evaluate different steps by reuse-then-predict; only outputs move",
                     sample=parastep.sample, program=parastep.round_program, min_steps=parastep.min_steps,
                     option_help={
                         "warmup": "serial steps before the parallel rounds (at least 1; N must be at most "
                                   "steps - warmup)",
                         "cache": "what each device reuses next round: own (its own output, the paper's code) or "
                                  "fresh (the round's newest output)"}),
        StrategySpec("dualparal", "stage", "loop",
                     {"block_frames": None, "context_frames": None}, False,
                     "DualParal: frame blocks at staggered noise levels through a pipeline of layer stages",
                     sample=dualparal.sample, program=dualparal.pipeline_program,
                     forward_tokens=dualparal.forward_tokens,
                     option_help={
                         "block_frames": "latent frames per block, B",
                         "context_frames": "latent frames of context from each neighbour, C <= B; the video has "
                                           "C + blocks * B latent frames"}),
    ]
}


def sized_axes(strategy: str, pool: Mapping[str, int]) -> tuple[dict[str, int], list[str]]:
    """The mesh axes of ``strategy`` that have a size, and those that do not: ``(sizes, free)``. An axis takes
    its size from ``pool`` (``--mesh``), else its fixed size (``cfg`` = 2); the rest are ``free``, in the
    order of the composition. Callers give the one free axis the devices left."""
    sizes, free = {}, []
    for n in split_names(strategy):
        s = STRATEGIES[n]
        if s.axis is None:
            continue
        if s.axis in pool:
            sizes[s.axis] = int(pool[s.axis])
        elif s.fixed_size is not None:
            sizes[s.axis] = s.fixed_size
        else:
            free.append(s.axis)
    return sizes, free


def split_names(strategy: str) -> tuple[str, ...]:
    """The names of a composition (``"cfg+ulysses"`` -> ``("cfg", "ulysses")``); raises ValueError naming an
    empty or unknown name and listing the registered ones."""
    if not isinstance(strategy, str) or not strategy.strip():
        raise ValueError(f"strategy must be a name such as 'single' or 'cfg+ulysses', got {strategy!r}")
    names = tuple(n.strip() for n in strategy.split("+"))
    for n in names:
        if not n:
            raise ValueError(f"strategy {strategy!r} has an empty name; join names with one '+', e.g. 'cfg+ulysses'")
        if n not in STRATEGIES:
            raise ValueError(f"unknown strategy {n!r}; available: {', '.join(STRATEGIES)} (join with '+')")
    return names


def available_strategies() -> list[str]:
    """The registered strategy names (compose them with ``+``)."""
    return list(STRATEGIES)


def _freeze(v):
    if isinstance(v, list):
        return tuple(v)
    return v


def resolve(strategy: str, mesh: Mesh | None, options: Mapping[str, Any] | None = None) -> Plan:
    """Validates ``strategy`` (e.g. ``"cfg+ulysses"``) against ``mesh`` and ``options``.

    With ``mesh=None`` a strategy runs its algorithm on one device (every axis of size 1): ParaStep with
    N = 1 is the serial loop, DualParal on one device is its serial oracle. Raises ValueError naming the
    problem: an unknown strategy or option, a strategy repeated, two strategies that need the same axis,
    a missing mesh axis, an axis of the wrong size, a mesh axis no strategy uses, or more than one loop
    strategy.
    """
    options = dict(options or {})
    names = split_names(strategy)
    if mesh is not None and not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (e.g. jaxvdm.sharding.make_mesh(sp=2)) or None, "
                        f"got {type(mesh).__name__}")
    if len(set(names)) != len(names):
        raise ValueError(f"strategy {strategy!r} names a strategy twice")
    if BASELINE in names and len(names) > 1:
        raise ValueError(f"{BASELINE!r} cannot be combined with other strategies")
    specs = [STRATEGIES[n] for n in names]
    loops = [s.name for s in specs if s.kind == "loop"]
    if len(loops) > 1:
        raise ValueError(f"at most one loop strategy can run at a time, got {loops}")
    owners: dict[str, str] = {}
    for s in specs:
        if s.axis in owners:
            raise ValueError(f"{owners[s.axis]!r} and {s.name!r} both need mesh axis {s.axis!r}; pick one")
        if s.axis:
            owners[s.axis] = s.name
    if "ring" in names and "fsdp" in names:
        raise ValueError("ring+fsdp is not supported; use ulysses+fsdp (or ring without fsdp)")

    shape = mesh_shape(mesh)
    for s in specs:
        if s.axis is None:
            continue
        if mesh is None and s.fixed_size is None:
            continue  # without a mesh every strategy runs its algorithm on one device (axis size 1)
        if s.axis not in shape:
            have = f"the mesh has {format_mesh(shape)}" if shape else "no mesh was given"
            raise ValueError(
                f"strategy {s.name!r} needs a mesh axis named {s.axis!r}, but {have}; e.g. --mesh "
                f"{s.axis}={s.fixed_size or 2} on the command line, make_mesh({s.axis}={s.fixed_size or 2}) in Python"
            )
        if s.fixed_size is not None and shape[s.axis] != s.fixed_size:
            raise ValueError(f"strategy {s.name!r} needs mesh axis {s.axis!r} of size {s.fixed_size}, got {shape[s.axis]}")
    for axis, n in shape.items():
        if axis not in owners and n > 1:
            raise ValueError(
                f"mesh axis {axis!r} has size {n} but strategy {strategy!r} does not use it; "
                f"add the strategy that owns it or make the axis size 1"
            )

    known = {k: v for s in specs for k, v in s.options.items()}
    unknown = sorted(set(options) - set(known))
    if unknown:
        hint = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "none"
        raise ValueError(f"unknown option(s) {unknown} for strategy {strategy!r}; its options: {hint}")
    merged = {k: _freeze(options.get(k, v)) for k, v in known.items()}

    loop = loops[0] if loops else None
    sp = next((n for n in names if STRATEGIES[n].axis == "sp"), None)
    runner = STRATEGIES[loop] if loop else STRATEGIES[BASELINE]
    return Plan(
        names=names,
        mesh_axes=tuple(shape.items()),
        cfg_axis="cfg" if "cfg" in names else None,
        sp_axis="sp" if sp else None,
        sp_kind=sp,
        fsdp_axis="fsdp" if "fsdp" in names else None,
        lp_axis="lp" if "lp" in names else None,
        loop=loop,
        loop_axis=STRATEGIES[loop].axis if loop else None,
        options=tuple(sorted(merged.items())),
        exact=all(s.exact for s in specs),
        sample=runner.sample,
        program=runner.program,
        forward_tokens=runner.forward_tokens,
    )


def parse_options(items) -> dict[str, Any]:
    """``["overlap=0.25", "warmup=3"]`` (``--opt`` values) -> ``{"overlap": 0.25, "warmup": 3}``: ints, then
    floats, else the text. Raises ValueError naming an item that is not ``NAME=VALUE``."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--opt {item!r}: write NAME=VALUE, e.g. --opt overlap=0.25 --opt warmup=3")
        v: Any = value.strip()
        for conv in (int, float):
            try:
                v = conv(v)
                break
            except ValueError:
                continue
        out[key.strip()] = v
    return out


def options_for(strategy: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` that the strategies of ``strategy`` know (the rest belong to others)."""
    known = {k for n in split_names(strategy) for k in STRATEGIES[n].options}
    return {k: v for k, v in options.items() if k in known}
