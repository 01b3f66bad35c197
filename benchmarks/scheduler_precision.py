"""How close jaxvdm's schedulers are to diffusers', measured (CPU, a few seconds per row).

    python benchmarks/scheduler_precision.py [--steps 50 1000] [--shifts 3 5] [--seeds 3]

For each scheduler (Wan's flow UniPC-2 and flow-matching Euler), step count, shift and seed, one trajectory
is run from the same noise with the same model outputs in jaxvdm (float32) and in diffusers: as shipped
(float32) and evaluated exactly (UniPC: its float32 σ's upcast to float64 with float64 samples; Euler: the
same recurrence over diffusers' float32 σ's in float64). Two kinds of model output:

* ``random``: an independent standard-normal velocity at every step (as the unit tests use);
* ``flow``: the exact velocity ``noise - x0`` towards one fixed data sample, as a perfect denoiser gives.

Reported: ``rel_err = max|a - b| / max|b|`` over the latent, the maximum over all intermediate samples, for
jaxvdm vs exact, jaxvdm vs diffusers float32, and diffusers float32 vs exact (diffusers' own rounding).
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from jaxvdm.models.schedulers import Euler, UniPC

SHAPE = (1, 16, 4, 16, 16)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _diffusers(kind: str, steps: int, shift: float, float64: bool):
    if kind == "unipc":
        s = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                    solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
                                    final_sigmas_type="zero")
    else:
        s = FlowMatchEulerDiscreteScheduler(shift=shift)
    s.set_timesteps(steps)
    s.set_begin_index(0)
    if float64 and kind == "unipc":
        s.sigmas = s.sigmas.double()
    return s


def trajectory_errors(kind: str, steps: int, shift: float, seed: int, mode: str) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(SHAPE)
    x0 = rng.standard_normal(SHAPE)
    vs = rng.standard_normal((steps, *SHAPE)) if mode == "random" else None

    def v(i):
        return vs[i] if mode == "random" else noise - x0

    ours = (UniPC if kind == "unipc" else Euler)(steps, shift)
    ref32 = _diffusers(kind, steps, shift, float64=False)
    ref64 = _diffusers(kind, steps, shift, float64=True)
    x = jnp.asarray(noise, jnp.float32)
    state = ours.init(x)
    x32 = torch.tensor(noise, dtype=torch.float32)
    x64 = torch.tensor(noise, dtype=torch.float64)
    sig = ref32.sigmas.numpy().astype(np.float64)
    e = {"ours_vs_exact": 0.0, "ours_vs_f32": 0.0, "f32_vs_exact": 0.0}
    for i in range(steps):
        x, state = ours.step(state, jnp.asarray(v(i), jnp.float32), x, i)
        x32 = ref32.step(torch.tensor(v(i), dtype=torch.float32), ref32.timesteps[i], x32).prev_sample
        if kind == "unipc":
            x64 = ref64.step(torch.tensor(v(i), dtype=torch.float64), ref64.timesteps[i], x64).prev_sample
        else:  # diffusers' Euler computes in float32 whatever the input: the exact recurrence over its σ's
            x64 = x64 + (sig[i + 1] - sig[i]) * torch.tensor(v(i), dtype=torch.float64)
        e["ours_vs_exact"] = max(e["ours_vs_exact"], rel_err(x, x64.numpy()))
        e["ours_vs_f32"] = max(e["ours_vs_f32"], rel_err(x, x32.numpy()))
        e["f32_vs_exact"] = max(e["f32_vs_exact"], rel_err(x32.numpy(), x64.numpy()))
    return e


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[50, 1000])
    p.add_argument("--shifts", type=float, nargs="+", default=[3.0, 5.0])
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args(argv)
    print(f"latent {SHAPE}; max over intermediate samples, shifts and {args.seeds} seeds; rel_err = max|a-b|/max|b|")
    print(f"{'scheduler':<8} {'steps':>5} {'outputs':<7} {'jaxvdm vs exact':>16} {'jaxvdm vs f32':>14} "
          f"{'diffusers f32 vs exact':>23}")
    for kind in ("unipc", "euler"):
        for steps in args.steps:
            for mode in ("random", "flow"):
                worst = {"ours_vs_exact": 0.0, "ours_vs_f32": 0.0, "f32_vs_exact": 0.0}
                for shift in args.shifts:
                    for seed in range(args.seeds):
                        for k, val in trajectory_errors(kind, steps, shift, seed, mode).items():
                            worst[k] = max(worst[k], val)
                print(f"{kind:<8} {steps:>5} {mode:<7} {worst['ours_vs_exact']:>16.2e} {worst['ours_vs_f32']:>14.2e} "
                      f"{worst['f32_vs_exact']:>23.2e}", flush=True)


if __name__ == "__main__":
    main()
