"""Flow-matching samplers as pure functions: UniPC (Wan's default) and Euler.

Both samplers integrate the rectified-flow ODE ``dx/dσ = v(x, σ)`` from σ≈1 (noise) to σ=0 (data),
where the transformer predicts the velocity ``v`` and ``x = (1-σ)·x0 + σ·noise``. They reproduce diffusers'
``UniPCMultistepScheduler`` (as Wan configures it) and ``FlowMatchEulerDiscreteScheduler``, but with no
hidden mutable state:

* every per-step scalar (σ's, solver coefficients, solver order) is computed once on the host, in float64
  from the float32 σ schedule, and stored as a small float32 table indexed by the step;
* ``step(state, model_output, sample, step_index)`` is a pure function: it reads row ``step_index`` of the
  table with a dynamic index, so the index may be a traced int32 (``lax.fori_loop``, ``scan``,
  ``shard_map``), and the order-1 / order-2 variants are selected by coefficients (a coefficient of zero
  switches a term off), never by Python control flow on traced values;
* the solver's memory lives in an explicit state pytree of fixed structure and shapes, so it can be a loop
  carry, be replicated or copied per block (DualParal), or replayed from a saved copy (ParaStep, where
  speculative updates must not advance any solver).

Why the index is explicit: a diffusers scheduler keeps a step counter and history inside the object, so
calling ``step`` once "for a prediction" corrupts the next real step, and two latents cannot share one
scheduler. Here the caller says which step it is, and the history is data it owns.

Flow-matching UniPC (``solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True``)
-------------------------------------------------------------------------------------------------
With ``α = 1-σ`` and ``λ = log α - log σ`` (half log-SNR), step ``i`` (σ_i → σ_{i+1}) does:

1. data prediction ``x0_i = x_i - σ_i·v_i`` (``x_i`` is the sample handed in, i.e. the previous predictor
   output);
2. **UniC corrector** (every step but the first): recompute the previous update from
   ``last_sample = x̃_{i-1}`` now that ``x0_i`` is known, using the order of the previous predictor:
   ``x̃_i = (σ_i/σ_{i-1})·x̃_{i-1} - α_i·φ·x0_{i-1} - α_i·B·(ρ_d·D1 + ρ_t·(x0_i - x0_{i-1}))``,
   with ``h = λ_i - λ_{i-1}``, ``φ = B = expm1(-h)`` (bh2), ``D1 = (x0_{i-2} - x0_{i-1})/r``,
   ``r = (λ_{i-2} - λ_{i-1})/h``; order 1: ``ρ_d = 0, ρ_t = 1/2``; order 2: ``(ρ_d, ρ_t)`` solve
   ``[[1, 1], [r, 1]]·ρ = b`` with ``b`` from the φ-functions of ``-h``. (``x_i`` itself does not enter
   the corrected sample; it only enters through ``x0_i``.) At step 0, ``x̃_0 = x_0``.
3. **UniP predictor** of order ``p_i = min(2, i+1, N-i)`` (order 1 at the first step for warm-up and at
   the last step because of ``lower_order_final``):
   ``x_{i+1} = (σ_{i+1}/σ_i)·x̃_i - α_{i+1}·φ·x0_i - α_{i+1}·B·ρ_p·D1``, ``h = λ_{i+1} - λ_i``,
   ``D1 = (x0_{i-1} - x0_i)/r``, ``r = (λ_{i-1} - λ_i)/h``, ``ρ_p = 1/2`` at order 2, ``0`` at order 1.
   At the last step σ_N = 0 (λ = ∞): ``φ = B = -1`` and the update returns ``x0_{N-1}``.

State (:class:`UniPCState`, all float32 with the sample's shape): ``last_sample = x̃_i``, ``x0_prev = x0_i``,
``x0_prev2 = x0_{i-1}``. The state from :meth:`UniPC.init` is for a trajectory that starts at step 0 (as
``WanPipeline`` does: it calls ``set_begin_index(0)``); the coefficient tables assume that every earlier step
of the schedule was taken.

Flow-matching Euler
-------------------
``x_{i+1} = x_i + (σ_{i+1} - σ_i)·v_i``; its state is empty.

Schedules (``num_train_timesteps = T``, shift ``s``, ``N`` steps; ``shift(σ) = s·σ / (1 + (s-1)·σ)``):

* UniPC: ``σ = shift(linspace(1, 1/T, N+1)[:-1])`` in float64, ``σ_0 -= 1e-6`` (it is 1), then
  ``timesteps = int64(trunc(σ·T))`` (truncation, not rounding: σ_5 = 0.7504 gives 750) and
  ``sigmas = float32([σ, 0])``. The transformer receives these integers (its sinusoidal embedding casts
  them to float32).
* Euler: σ_max = 1 and σ_min = shift(1/T) come from the training grid in float32, then
  ``σ = shift(linspace(σ_max, σ_min, N))`` in float64 (so the small end is shifted twice, as diffusers does),
  cast to float32; ``timesteps = float32(σ)·T`` in float32 (non-integer).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["UniPC", "UniPCState", "Euler", "EulerState", "make_scheduler", "SCHEDULERS"]

SCHEDULERS = ("unipc", "euler")


class UniPCState(NamedTuple):
    """UniPC solver memory; every leaf float32 with the sample's shape.

    last_sample: the (corrected) sample the previous predictor started from, x̃_{i-1}.
    x0_prev:     data prediction of the previous step, x0_{i-1}.
    x0_prev2:    data prediction of the step before that, x0_{i-2}.
    """

    last_sample: jax.Array
    x0_prev: jax.Array
    x0_prev2: jax.Array


class EulerState(NamedTuple):
    """Euler keeps no memory: an empty pytree (no leaves), kept for a uniform interface."""


def _check_config(num_steps, shift, num_train_timesteps) -> tuple[int, float, int]:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}: ask for at least one sampling step")
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, (int, np.integer)):
        raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    try:
        shift_f = float(shift)
    except (TypeError, ValueError):
        raise ValueError(f"shift must be a positive finite number, got {shift!r}") from None
    if not math.isfinite(shift_f) or shift_f <= 0:
        raise ValueError(f"shift must be a positive finite number (Wan uses 3.0 at 480p, 5.0 at 720p), got {shift!r}")
    return int(num_steps), shift_f, int(num_train_timesteps)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _index(step_index, stop: int) -> jax.Array:
    """The step index as an int32 scalar (a Python int, numpy int or traced int all work).

    A concrete index outside [0, stop) is a ValueError; a traced one cannot be checked and is clamped
    by JAX's indexing rules, so callers must keep it in range.
    """
    if isinstance(step_index, (bool, np.bool_)):
        raise ValueError(f"step_index must be an integer, got {step_index!r}")
    if isinstance(step_index, (int, np.integer)) and not 0 <= step_index < stop:
        raise ValueError(f"step_index {step_index} is outside [0, {stop})")
    i = jnp.asarray(step_index)
    if i.ndim != 0 or not jnp.issubdtype(i.dtype, jnp.integer):
        raise ValueError(f"step_index must be an integer scalar, got shape {i.shape} dtype {i.dtype}")
    return i.astype(jnp.int32)


def _check_shapes(model_output, sample) -> None:
    if jnp.shape(model_output) != jnp.shape(sample):
        raise ValueError(
            f"model_output shape {jnp.shape(model_output)} must equal sample shape {jnp.shape(sample)}"
        )


@dataclasses.dataclass(frozen=True)
class _FlowSchedule:
    """Shared part: static config (compared and hashed) plus read-only numpy schedules (not compared)."""

    num_steps: int
    shift: float = 3.0
    num_train_timesteps: int = 1000
    timesteps: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    sigmas: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    def __post_init__(self):
        n, s, t = _check_config(self.num_steps, self.shift, self.num_train_timesteps)
        self._set("num_steps", n)
        self._set("shift", s)
        self._set("num_train_timesteps", t)

    def sigma(self, step_index) -> jax.Array:
        """σ at ``step_index`` (0..num_steps; num_steps gives the final 0), float32 scalar; index may be traced."""
        return jnp.asarray(self.sigmas, jnp.float32)[_index(step_index, self.num_steps + 1)]

    def timestep(self, step_index) -> jax.Array:
        """The transformer's ``timestep`` input at ``step_index`` (0..num_steps-1) as a float32 scalar.

        This is ``float32(timesteps[step_index])``: exactly what diffusers' Wan transformer computes its
        sinusoidal embedding from (it casts the timestep to float32 there). Index may be traced.
        """
        return jnp.asarray(self.timesteps.astype(np.float32))[_index(step_index, self.num_steps)]


# Column layout of UniPC's per-step coefficient table [num_steps, _NCOEF] (float32).
_SIGMA = 0  # σ_i, for x0_i = x_i - σ_i v_i
_C_RATIO, _C_APHI, _C_AB, _C_RK, _C_RHO_D, _C_RHO_T = 1, 2, 3, 4, 5, 6  # corrector (unused at step 0)
_P_RATIO, _P_APHI, _P_AB, _P_RK, _P_RHO = 7, 8, 9, 10, 11  # predictor
_NCOEF = 12


def _unipc_schedule(num_steps: int, shift: float, num_train: int) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps int64 [N], sigmas float32 [N+1]) exactly as diffusers builds them for Wan's settings."""
    s = np.linspace(1.0, 1.0 / num_train, num_steps + 1)[:-1]
    s = shift * s / (1 + (shift - 1) * s)
    if abs(s[0] - 1.0) < 1e-6:  # λ would be -inf at σ = 1
        s[0] -= 1e-6
    timesteps = (s * num_train).astype(np.int64)  # truncation toward zero, as torch's .to(int64)
    sigmas = np.concatenate([s, [0.0]]).astype(np.float32)
    return timesteps, sigmas


def _unipc_orders(num_steps: int) -> np.ndarray:
    """Predictor order per step: min(2, warm-up i+1, lower_order_final N-i)."""
    i = np.arange(num_steps)
    return np.minimum(np.minimum(2, i + 1), num_steps - i).astype(np.int32)


def _unipc_coefficients(sigmas32: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Per-step scalar table [N, _NCOEF] in float64 (cast to float32 by the caller); see the module doc."""
    n = len(orders)
    sig = sigmas32.astype(np.float64)
    alpha = 1.0 - sig
    lam = np.full(n + 1, np.inf)
    lam[:n] = np.log(alpha[:n]) - np.log(sig[:n])  # σ_i > 0 for i < N
    table = np.zeros((n, _NCOEF))
    for i in range(n):
        table[i, _SIGMA] = sig[i]
        # UniC: corrects the update i-1 → i with the order the predictor used at step i-1.
        if i > 0:
            q = orders[i - 1]
            h = lam[i] - lam[i - 1]
            hh = -h
            phi1 = np.expm1(hh)
            bh = phi1  # bh2: B(h) = expm1(-h)
            table[i, _C_RATIO] = sig[i] / sig[i - 1]
            table[i, _C_APHI] = alpha[i] * phi1
            table[i, _C_AB] = alpha[i] * bh
            if q == 1:
                table[i, _C_RK], table[i, _C_RHO_D], table[i, _C_RHO_T] = 1.0, 0.0, 0.5
            else:
                rk = (lam[i - 2] - lam[i - 1]) / h
                phik1 = phi1 / hh - 1.0
                phik2 = phik1 / hh - 0.5
                b = np.array([phik1 / bh, 2.0 * phik2 / bh])
                rho = np.linalg.solve(np.array([[1.0, 1.0], [rk, 1.0]]), b)
                table[i, _C_RK], table[i, _C_RHO_D], table[i, _C_RHO_T] = rk, rho[0], rho[1]
        # UniP: update i → i+1 of order orders[i].
        p = orders[i]
        if sig[i + 1] == 0.0:  # λ_{N} = +inf: exp(-h) = 0, the update returns x0_i
            ratio, phi1, h = 0.0, -1.0, np.inf
        else:
            h = lam[i + 1] - lam[i]
            ratio, phi1 = sig[i + 1] / sig[i], np.expm1(-h)
        table[i, _P_RATIO] = ratio
        table[i, _P_APHI] = alpha[i + 1] * phi1
        table[i, _P_AB] = alpha[i + 1] * phi1  # bh2
        if p == 2:
            table[i, _P_RK] = (lam[i - 1] - lam[i]) / h
            table[i, _P_RHO] = 0.5
        else:
            table[i, _P_RK], table[i, _P_RHO] = 1.0, 0.0
    if not np.all(np.isfinite(table)):
        raise ValueError("UniPC coefficients are not finite for this schedule; try fewer steps or another shift")
    return table


@dataclasses.dataclass(frozen=True)
class UniPC(_FlowSchedule):
    """Flow-matching UniPC-2 (bh2, data prediction) with diffusers' Wan schedule; pure and jit-safe.

    ``UniPC(num_steps, shift=3.0, num_train_timesteps=1000)``. Attributes (read-only numpy):
    ``timesteps`` int64 [num_steps] (the transformer's timestep inputs, equal to diffusers'),
    ``sigmas`` float32 [num_steps+1] (last is 0), ``orders`` int32 [num_steps] (predictor order per step).
    Hashable and compared by (num_steps, shift, num_train_timesteps), so it can be closed over in jit.
    """

    orders: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    _coef: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        timesteps, sigmas = _unipc_schedule(self.num_steps, self.shift, self.num_train_timesteps)
        orders = _unipc_orders(self.num_steps)
        coef = _unipc_coefficients(sigmas, orders).astype(np.float32)
        self._set("timesteps", _readonly(timesteps))
        self._set("sigmas", _readonly(sigmas))
        self._set("orders", _readonly(orders))
        self._set("_coef", _readonly(coef))

    def init(self, sample: jax.Array) -> UniPCState:
        """Zero state for a trajectory starting at step 0; leaves float32 with ``sample``'s shape."""
        z = jnp.zeros_like(sample, dtype=jnp.float32)
        return UniPCState(last_sample=z, x0_prev=z, x0_prev2=z)

    def step(
        self, state: UniPCState, model_output: jax.Array, sample: jax.Array, step_index
    ) -> tuple[jax.Array, UniPCState]:
        """One UniPC step σ_i → σ_{i+1}: corrector on the previous update, then the predictor.

        Args:
          state: the state returned by the previous ``step`` (or ``init`` at step 0).
          model_output: predicted velocity v_i at (sample, timesteps[i]); any float dtype, any shape
            equal to ``sample``'s. Cast to float32.
          sample: x_i, the latent the model was evaluated at; cast to float32.
          step_index: i in [0, num_steps); a Python int or a traced int32 scalar.
        Returns:
          (x_{i+1} float32 with sample's shape, new state).
        """
        _check_shapes(model_output, sample)
        if jnp.shape(state.last_sample) != jnp.shape(sample):
            raise ValueError(f"state shape {jnp.shape(state.last_sample)} does not match sample {jnp.shape(sample)}")
        i = _index(step_index, self.num_steps)
        return _unipc_update(jnp.asarray(self._coef), state, model_output, sample, i)


@jax.jit
def _unipc_update(coef, state, model_output, sample, i):
    """The UniPC update with the coefficient table as data (one compiled kernel per shape, not per schedule)."""
    c = coef[i]
    x = sample.astype(jnp.float32)
    v = model_output.astype(jnp.float32)
    m_prev, m_prev2 = state.x0_prev, state.x0_prev2

    x0 = x - c[_SIGMA] * v

    # UniC (skipped at step 0, where the table row is a placeholder).
    xc_base = c[_C_RATIO] * state.last_sample - c[_C_APHI] * m_prev
    d1 = (m_prev2 - m_prev) / c[_C_RK]
    xc = xc_base - c[_C_AB] * (c[_C_RHO_D] * d1 + c[_C_RHO_T] * (x0 - m_prev))
    xc = jnp.where(i > 0, xc, x)

    # UniP (order via coefficients: _P_RHO = 0 turns the second-order term off).
    xp_base = c[_P_RATIO] * xc - c[_P_APHI] * x0
    d1p = (m_prev - x0) / c[_P_RK]
    x_next = xp_base - c[_P_AB] * (c[_P_RHO] * d1p)

    return x_next, UniPCState(last_sample=xc, x0_prev=x0, x0_prev2=m_prev)


def _euler_schedule(num_steps: int, shift: float, num_train: int) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps float32 [N], sigmas float32 [N+1]) as diffusers' FlowMatchEulerDiscreteScheduler builds them."""
    f32 = np.float32
    # Training grid in float32: σ = shift(t / T) for t = T..1; only its ends are used.
    grid = np.array([num_train, 1], dtype=f32) / f32(num_train)
    grid = (f32(shift) * grid) / (f32(1) + f32(shift - 1) * grid)
    sigma_max, sigma_min = float(grid[0]), float(grid[1])
    t = np.linspace(sigma_max * num_train, sigma_min * num_train, num_steps)
    s = t / num_train
    s = shift * s / (1 + (shift - 1) * s)
    s32 = s.astype(f32)
    timesteps = s32 * f32(num_train)
    sigmas = np.concatenate([s32, np.zeros(1, f32)])
    return timesteps.astype(f32), sigmas


@dataclasses.dataclass(frozen=True)
class Euler(_FlowSchedule):
    """Flow-matching Euler with diffusers' FlowMatchEulerDiscreteScheduler(shift) schedule; pure and jit-safe.

    ``Euler(num_steps, shift=3.0, num_train_timesteps=1000)``. ``timesteps`` float32 [num_steps] (equal to
    diffusers'), ``sigmas`` float32 [num_steps+1] (last is 0). Hashable like :class:`UniPC`.
    """

    _dt: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        timesteps, sigmas = _euler_schedule(self.num_steps, self.shift, self.num_train_timesteps)
        self._set("timesteps", _readonly(timesteps))
        self._set("sigmas", _readonly(sigmas))
        self._set("_dt", _readonly((sigmas[1:] - sigmas[:-1]).astype(np.float32)))  # float32 difference

    def init(self, sample: jax.Array) -> EulerState:
        """The (empty) state; ``sample`` is accepted for a uniform interface."""
        del sample
        return EulerState()

    def step(
        self, state: EulerState, model_output: jax.Array, sample: jax.Array, step_index
    ) -> tuple[jax.Array, EulerState]:
        """x_{i+1} = x_i + (σ_{i+1} - σ_i)·v_i in float32; returns (x_{i+1} float32, state). Index may be traced."""
        _check_shapes(model_output, sample)
        i = _index(step_index, self.num_steps)
        return _euler_update(jnp.asarray(self._dt), model_output, sample, i), state


@jax.jit
def _euler_update(dt, model_output, sample, i):
    return sample.astype(jnp.float32) + dt[i] * model_output.astype(jnp.float32)


def make_scheduler(name: str, num_steps: int, shift: float, num_train_timesteps: int = 1000) -> UniPC | Euler:
    """Build a sampler by name: "unipc" (Wan's default) or "euler" (case-insensitive)."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "unipc":
        return UniPC(num_steps, shift, num_train_timesteps)
    if key == "euler":
        return Euler(num_steps, shift, num_train_timesteps)
    raise ValueError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
