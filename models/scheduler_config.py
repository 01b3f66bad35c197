"""What each option of a diffusers ``scheduler_config.json`` means to jaxvdm: honoured, ignored, or refused.

jaxvdm runs two flow-matching samplers (:mod:`jaxvdm.models.schedulers`). A diffusers folder's scheduler
config names one of two classes and up to 30 options. :func:`options_from_config` goes through every
``__init__`` argument of diffusers' (0.42) ``UniPCMultistepScheduler`` and ``FlowMatchEulerDiscreteScheduler``
and sorts it into one of:

* **honoured**: passed on to :class:`~jaxvdm.models.schedulers.UniPC` / ``Euler``, which reproduce it
  (timesteps equal, trajectories to float32 rounding);
* **shift**: ``flow_shift`` (UniPC) / ``shift`` (Euler), returned apart because ``generate(shift=)`` overrides it;
* **ignored**: options diffusers itself does not read on a flow-matching schedule (the DDPM betas, the
  spacing of its discarded integer grid, the dynamic-shift parameters only a pipeline that computes ``mu``
  reads, which ``WanPipeline`` does not): any value diffusers accepts is accepted;
* **refused**: anything else at a value other than its default, with the reason, in one ValueError that
  names every such option. Keys starting with ``_`` (``_class_name``, ``_diffusers_version``...) are
  metadata; a key diffusers 0.42 does not have is refused (jaxvdm cannot know what it does).

A missing key takes diffusers' default, as ``from_config`` does: a config without ``prediction_type`` is an
epsilon-prediction UniPC, and one without ``flow_shift`` has shift 1.0.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

__all__ = ["UNIPC_OPTIONS", "EULER_OPTIONS", "CLASS_NAMES", "options_from_config"]

CLASS_NAMES = {"UniPCMultistepScheduler": "unipc", "FlowMatchEulerDiscreteScheduler": "euler"}

HONOURED, SHIFT, IGNORED, REFUSED = "honoured", "shift", "ignored", "refused"


class Option(NamedTuple):
    """One ``__init__`` argument of a diffusers scheduler: its default there and what jaxvdm does with it.

    ``valid`` (ignored options): the values diffusers accepts, or None for any. ``reason`` (refused
    options): why a non-default value is not run.
    """

    default: Any
    kind: str
    valid: tuple | None = None
    reason: str = ""


_VP_ONLY = "diffusers reads it only for the DDPM (non-flow) noise schedule"
_NO_MU = ("WanPipeline calls set_timesteps without mu, so diffusers raises for it too ('`mu` must be passed'); "
          "jaxvdm has no resolution-dependent shift")
_VP_SIGMAS = ("with use_flow_sigmas diffusers' UniPC builds these σ's from the DDPM schedule and keeps them above 1, "
              "so 1-σ is negative and its trajectory is NaN")

UNIPC_OPTIONS: dict[str, Option] = {
    "num_train_timesteps": Option(1000, HONOURED),
    "beta_start": Option(0.0001, IGNORED, reason=_VP_ONLY),
    "beta_end": Option(0.02, IGNORED, reason=_VP_ONLY),
    "beta_schedule": Option("linear", IGNORED, ("linear", "scaled_linear", "squaredcos_cap_v2")),
    "trained_betas": Option(None, IGNORED),
    "solver_order": Option(2, HONOURED),
    "prediction_type": Option("epsilon", REFUSED, reason="checked first: jaxvdm runs flow prediction"),
    "thresholding": Option(False, REFUSED, reason="dynamic thresholding clips x0 by a quantile over the whole "
                           "latent, which jaxvdm's elementwise samplers (stepped per window by DualParal) do not do"),
    "dynamic_thresholding_ratio": Option(0.995, IGNORED),
    "sample_max_value": Option(1.0, IGNORED),
    "predict_x0": Option(True, REFUSED, reason="diffusers' UniPC cannot run flow prediction in noise-prediction "
                         "form either (it raises at the first step)"),
    "solver_type": Option("bh2", HONOURED),
    "lower_order_final": Option(True, HONOURED),
    "disable_corrector": Option([], HONOURED),
    "solver_p": Option(None, REFUSED, reason="a second scheduler as predictor is not supported"),
    "use_karras_sigmas": Option(False, REFUSED, reason="diffusers' flow UniPC then takes Karras σ's from the DDPM "
                                "betas (ignoring flow_shift); jaxvdm does not implement that schedule"),
    "use_exponential_sigmas": Option(False, REFUSED, reason=_VP_SIGMAS),
    "use_beta_sigmas": Option(False, REFUSED, reason=_VP_SIGMAS),
    "use_flow_sigmas": Option(False, REFUSED, reason="checked first: jaxvdm runs flow-matching σ's"),
    "flow_shift": Option(1.0, SHIFT),
    "timestep_spacing": Option("linspace", IGNORED, ("linspace", "leading", "trailing")),
    "steps_offset": Option(0, IGNORED),
    "final_sigmas_type": Option("zero", HONOURED),
    "rescale_betas_zero_snr": Option(False, IGNORED, reason=_VP_ONLY),
    "use_dynamic_shifting": Option(False, REFUSED, reason=_NO_MU),
    "time_shift_type": Option("exponential", IGNORED),
    "sigma_min": Option(None, IGNORED),
    "sigma_max": Option(None, IGNORED),
    "shift_terminal": Option(None, HONOURED),
}

EULER_OPTIONS: dict[str, Option] = {
    "num_train_timesteps": Option(1000, HONOURED),
    "shift": Option(1.0, SHIFT),
    "use_dynamic_shifting": Option(False, REFUSED, reason=_NO_MU),
    "base_shift": Option(0.5, IGNORED),
    "max_shift": Option(1.15, IGNORED),
    "base_image_seq_len": Option(256, IGNORED),
    "max_image_seq_len": Option(4096, IGNORED),
    "invert_sigmas": Option(False, HONOURED),
    "shift_terminal": Option(None, HONOURED),
    "use_karras_sigmas": Option(False, HONOURED),
    "use_exponential_sigmas": Option(False, HONOURED),
    "use_beta_sigmas": Option(False, HONOURED),
    "time_shift_type": Option("exponential", IGNORED, ("exponential", "linear")),
    "stochastic_sampling": Option(False, REFUSED, reason="it draws fresh noise at every step from a torch "
                                  "generator; jaxvdm's samplers are deterministic ODE steps"),
}

_TABLES = {"unipc": UNIPC_OPTIONS, "euler": EULER_OPTIONS}
# diffusers maps these solver types to bh2 (UniPCMultistepScheduler.__init__)
_BH2_ALIASES = ("midpoint", "heun", "logrho")
_SIGMA_FLAGS = {"use_karras_sigmas": "karras", "use_exponential_sigmas": "exponential", "use_beta_sigmas": "beta"}


def _flow_problem(cfg: dict) -> str | None:
    pred = cfg.get("prediction_type", UNIPC_OPTIONS["prediction_type"].default)
    flow = cfg.get("use_flow_sigmas", UNIPC_OPTIONS["use_flow_sigmas"].default)
    if pred == "flow_prediction" and flow is True:
        return None
    if pred != "flow_prediction":
        kind = f"an {pred}-prediction UniPC" if isinstance(pred, str) else f"a UniPC with prediction_type={pred!r}"
        return (f"jaxvdm runs flow-matching schedulers; this folder's scheduler is {kind} (prediction_type={pred!r}, "
                f"use_flow_sigmas={flow!r}): a Wan model needs prediction_type='flow_prediction' and "
                f"use_flow_sigmas=true")
    return (f"jaxvdm runs flow-matching schedulers; this folder's UniPC predicts flow on the DDPM σ schedule "
            f"(use_flow_sigmas={flow!r}): set use_flow_sigmas=true")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def options_from_config(config: dict, class_name: str | None = None) -> tuple[str, dict, float]:
    """A diffusers scheduler config -> ``(name, options, shift)`` for :class:`~jaxvdm.models.schedulers.SchedulerSpec`.

    Args:
      config: the parsed ``scheduler_config.json``.
      class_name: the class diffusers will build (a folder's ``model_index.json`` names it); default the
        config's ``_class_name``. The two must agree when both are given.
    Returns:
      ``"unipc"`` or ``"euler"``, the honoured options that differ from jaxvdm's defaults as keyword
      arguments of ``UniPC`` / ``Euler``, and the config's shift (diffusers' default 1.0 when absent).
    Raises:
      ValueError naming every option (and value) that jaxvdm would not run as diffusers does, and why.
    """
    if not isinstance(config, dict):
        raise ValueError(f"a scheduler config must be a dict (the parsed scheduler_config.json), "
                         f"got {type(config).__name__}")
    own = config.get("_class_name")
    if class_name is not None and own is not None and own != class_name:
        raise ValueError(f"model_index.json builds the scheduler as {class_name!r} but scheduler_config.json is "
                         f"{own!r}: diffusers would read it as {class_name!r}; make the two agree")
    cls = class_name or own
    if cls is None:
        raise ValueError(f"the scheduler config has no _class_name; jaxvdm runs {' or '.join(CLASS_NAMES)}")
    if cls not in CLASS_NAMES:
        raise ValueError(f"scheduler {cls!r} is not supported: jaxvdm runs {' and '.join(CLASS_NAMES)} (flow matching)")
    name = CLASS_NAMES[cls]
    table = _TABLES[name]
    if name == "unipc" and (problem := _flow_problem(config)) is not None:
        raise ValueError(problem)

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    problems: list[str] = []
    unknown = sorted(set(cfg) - set(table))
    for k in unknown:
        problems.append(f"{k}={cfg[k]!r}: diffusers 0.42's {cls} has no such option, so jaxvdm cannot know what it "
                        f"does (remove it if it is at its default in your diffusers version)")
    values = {k: cfg.get(k, opt.default) for k, opt in table.items()}
    options: dict[str, Any] = {}
    for key, opt in table.items():
        value = values[key]
        if key in ("prediction_type", "use_flow_sigmas"):
            continue  # checked above
        if opt.kind == REFUSED and value != opt.default:
            problems.append(f"{key}={value!r}: {opt.reason}")
        elif opt.kind == IGNORED and opt.valid is not None and value not in opt.valid:
            problems.append(f"{key}={value!r}: diffusers accepts only {', '.join(map(repr, opt.valid))}")
        elif opt.kind == HONOURED and key not in _SIGMA_FLAGS:
            options[key] = value
    if name == "unipc":
        if options.get("solver_type") in _BH2_ALIASES:
            options["solver_type"] = "bh2"  # as diffusers does
        if isinstance(options.get("disable_corrector"), list):
            options["disable_corrector"] = tuple(options["disable_corrector"])
    else:
        chosen = [k for k in _SIGMA_FLAGS if values[k] not in (False, None)]
        if len(chosen) > 1:
            problems.append(f"{', '.join(f'{k}=true' for k in chosen)}: diffusers allows only one of them")
        elif chosen:
            options["sigma_schedule"] = _SIGMA_FLAGS[chosen[0]]
    shift_key = next(k for k, o in table.items() if o.kind == SHIFT)
    shift = values[shift_key]
    if not _number(shift) or not math.isfinite(shift) or shift <= 0:
        problems.append(f"{shift_key}={shift!r}: the shift must be a positive number")
    if problems:
        raise ValueError(f"{cls} options jaxvdm does not run as diffusers does:\n  " + "\n  ".join(problems))
    return name, options, float(shift)
