"""Flow-matching samplers as pure functions: UniPC (Wan's default) and Euler.

Both samplers integrate the rectified-flow ODE ``dx/dσ = v(x, σ)`` from σ≈1 (noise) to σ=0 (data),
where the transformer predicts the velocity ``v`` and ``x = (1-σ)·x0 + σ·noise``. They reproduce diffusers'
``UniPCMultistepScheduler`` (with ``prediction_type="flow_prediction", use_flow_sigmas=True``) and
``FlowMatchEulerDiscreteScheduler``, with every option of theirs that :mod:`jaxvdm.models.scheduler_config`
accepts from a ``scheduler_config.json``, but with no hidden mutable state:

* every per-step scalar (σ's, solver coefficients, solver order) is computed once on the host, in float64
  from the float32 σ schedule, and stored as a small float32 table indexed by the step;
* ``step(state, model_output, sample, step_index)`` is a pure function: it reads row ``step_index`` of the
  table with a dynamic index, so the index may be a traced int32 (``lax.fori_loop``, ``scan``,
  ``shard_map``), and the per-step order is selected by coefficients (a coefficient of zero switches a
  term off), never by Python control flow on traced values;
* the solver's memory lives in an explicit state pytree of fixed structure and shapes, so it can be a loop
  carry, be replicated or copied per block (DualParal), or replayed from a saved copy (ParaStep, where
  speculative updates must not advance any solver). Every leaf has the sample's shape (updates are
  elementwise, so a window of the sample can be stepped with the same window of the state).

Why the index is explicit: a diffusers scheduler keeps a step counter and history inside the object, so
calling ``step`` once "for a prediction" corrupts the next real step, and two latents cannot share one
scheduler. Here the caller says which step it is, and the history is data it owns.

Flow-matching UniPC-p (``predict_x0=True``; ``solver_order`` K in 1..3, ``solver_type`` bh1 or bh2)
-------------------------------------------------------------------------------------------------
With ``α = 1-σ``, ``λ = log α - log σ`` (half log-SNR), ``x0_j = x_j - σ_j·v_j`` (data prediction) and
``B(h) = expm1(-h)`` (bh2) or ``-h`` (bh1), step ``i`` (σ_i → σ_{i+1}) does:

1. **UniC corrector** (every step but the first, and not after a step listed in ``disable_corrector``):
   recompute the previous update from ``x̃_{i-1}`` now that ``x0_i`` is known, with the order q of the
   previous predictor and ``h = λ_i - λ_{i-1}``:
   ``x̃_i = (σ_i/σ_{i-1})·x̃_{i-1} - α_i·expm1(-h)·x0_{i-1}
   - α_i·B·(Σ_k ρ_k·(x0_{i-1-k} - x0_{i-1})/r_k + ρ_t·(x0_i - x0_{i-1}))``,
   ``r_k = (λ_{i-1-k} - λ_{i-1})/h`` for k < q; ``(ρ_1..ρ_{q-1}, ρ_t)`` solve the q×q Vandermonde system
   ``Σ_k ρ_k r_k^{j} = b_j`` (``r_q = 1``) whose right side ``b_j`` comes from the φ-functions of ``-h``;
   order 1 uses ``ρ_t = 1/2``. (``x_i`` itself enters only through ``x0_i``.) Otherwise ``x̃_i = x_i``.
2. **UniP predictor** of order ``p_i = min(K, i+1)`` (warm-up), also ``≤ N-i`` with ``lower_order_final``:
   ``x_{i+1} = (σ_{i+1}/σ_i)·x̃_i - α_{i+1}·expm1(-h)·x0_i - α_{i+1}·B·Σ_k ρ_k·(x0_{i-k} - x0_i)/r_k``,
   ``h = λ_{i+1} - λ_i``, ``r_k = (λ_{i-k} - λ_i)/h``; ``ρ = 1/2`` at order 2 and the (p-1)×(p-1) system
   at order 3. At a last step to σ_N = 0 (λ = ∞): ``expm1(-h) = B = -1`` and the update returns ``x0_{N-1}``;
   to σ_N = σ_{N-1} (``final_sigmas_type="sigma_min"``) it returns ``x̃_{N-1}``.

State (:class:`UniPCState`, float32 leaves with the sample's shape): ``last_sample = x̃_i`` and
``x0_history = (x0_i, x0_{i-1}, ...)`` (K entries). :meth:`UniPC.init` gives the state for a trajectory
that starts at step 0 (as ``WanPipeline`` does: it calls ``set_begin_index(0)``); the coefficient tables
assume that every earlier step of the schedule was taken.

Flow-matching Euler
-------------------
``x_{i+1} = x_i + (σ_{i+1} - σ_i)·v_i``; its state is empty.

Schedules (``num_train_timesteps = T``, shift ``s``, ``N`` steps; ``shift(σ) = s·σ / (1 + (s-1)·σ)``;
``stretch(σ) = 1 - (1-σ)·(1-σ_term)/(1-σ_{-1})`` with ``shift_terminal = σ_term``):

* UniPC: ``σ = stretch?(shift(linspace(1, 1/T, N+1)[:-1]))`` in float64, ``σ_0 -= 1e-6`` if it is 1,
  ``timesteps = int64(trunc(σ·T))`` (truncation, not rounding: σ_5 = 0.7504 gives 750) and
  ``sigmas = float32([σ, 0 or σ_{N-1}])``. The transformer receives these integers (its sinusoidal
  embedding casts them to float32).
* Euler: σ_max = 1 and σ_min = shift(1/T) come from the training grid in float32, then
  ``σ = stretch?(shift(linspace(σ_max, σ_min, N)))`` in float64 (so the small end is shifted twice, as
  diffusers does), optionally re-spaced between its ends (``karras``: ρ = 7, ``exponential``, ``beta``:
  Beta(0.6, 0.6) quantiles), cast to float32; ``timesteps = float32(σ)·T`` in float32 (non-integer).
  ``invert_sigmas`` then uses ``1 - σ`` for both and ends at 1 instead of 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvdm.models.scheduler_config import options_from_config

__all__ = ["UniPC", "UniPCState", "Euler", "EulerState", "SchedulerSpec", "make_scheduler", "SCHEDULERS",
           "scheduler_from_config", "scheduler_spec_from_config"]

SCHEDULERS = ("unipc", "euler")
SOLVER_ORDERS = (1, 2, 3)
SIGMA_SCHEDULES = ("karras", "exponential", "beta")


class UniPCState(NamedTuple):
    """UniPC solver memory; every leaf float32 with the sample's shape.

    last_sample: the (corrected) sample the previous predictor started from, x̃_{i-1}.
    x0_history:  data predictions of the previous steps, most recent first (x0_{i-1}, x0_{i-2}, ...);
                 ``solver_order`` entries.
    """

    last_sample: jax.Array
    x0_history: tuple[jax.Array, ...]


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


def _check_shift_terminal(value) -> float | None:
    """None, or a float in (0, 1); 0 (falsy, as diffusers treats it) means None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"shift_terminal must be None or a number in (0, 1), got {value!r}")
    if value == 0:
        return None
    if not 0 < float(value) < 1:
        raise ValueError(f"shift_terminal must be in (0, 1) (the schedule's last σ), got {value!r}")
    return float(value)


def _check_choice(name: str, value, choices) -> Any:
    if isinstance(value, bool) and not all(isinstance(c, bool) for c in choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


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


def _shifted(sigmas: np.ndarray, shift: float) -> np.ndarray:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _stretched(sigmas: np.ndarray, terminal: float | None) -> np.ndarray:
    """The schedule stretched so that its last value is ``terminal`` (its first stays where it is at 1)."""
    if terminal is None:
        return sigmas
    one_minus = 1 - sigmas
    return 1 - one_minus / (one_minus[-1] / (1 - terminal))


@dataclasses.dataclass(frozen=True)
class _FlowSchedule:
    """Shared part: static config (compared and hashed) plus read-only numpy schedules (not compared)."""

    num_steps: int
    shift: float = 3.0
    num_train_timesteps: int = 1000
    shift_terminal: float | None = None
    timesteps: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    sigmas: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    def __post_init__(self):
        n, s, t = _check_config(self.num_steps, self.shift, self.num_train_timesteps)
        self._set("num_steps", n)
        self._set("shift", s)
        self._set("num_train_timesteps", t)
        self._set("shift_terminal", _check_shift_terminal(self.shift_terminal))
        if self.shift_terminal is not None and n < 2:
            raise ValueError(f"shift_terminal={self.shift_terminal} needs at least 2 steps: a one-step schedule is "
                             "σ = 1, which diffusers' stretch divides by zero (NaN)")

    def sigma(self, step_index) -> jax.Array:
        """σ at ``step_index`` (0..num_steps; num_steps gives the final σ), float32 scalar; index may be traced."""
        return jnp.asarray(self.sigmas, jnp.float32)[_index(step_index, self.num_steps + 1)]

    def timestep(self, step_index) -> jax.Array:
        """The transformer's ``timestep`` input at ``step_index`` (0..num_steps-1) as a float32 scalar.

        This is ``float32(timesteps[step_index])``: exactly what diffusers' Wan transformer computes its
        sinusoidal embedding from (it casts the timestep to float32 there). Index may be traced.
        """
        return jnp.asarray(self.timesteps.astype(np.float32))[_index(step_index, self.num_steps)]

    def options(self) -> dict:
        """The options beyond (num_steps, shift) as keyword arguments, e.g. for :class:`SchedulerSpec`."""
        skip = {"num_steps", "shift"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init and f.name not in skip}


# Column layout of UniPC's per-step coefficient table [num_steps, _NCOEF] (float32). The corrector's columns
# at step i describe the update i-1 -> i; "rk1/rk2, rho1/rho2" weigh the history entries 1 and 2 (corrector:
# x0_{i-2}, x0_{i-3}; predictor: x0_{i-1}, x0_{i-2}); unused entries have rk = 1, rho = 0.
_SIGMA = 0  # σ_i, for x0_i = x_i - σ_i v_i
_C_USE, _C_RATIO, _C_APHI, _C_AB, _C_RK1, _C_RK2, _C_RHO1, _C_RHO2, _C_RHO_T = range(1, 10)
_P_RATIO, _P_APHI, _P_AB, _P_RK1, _P_RK2, _P_RHO1, _P_RHO2 = range(10, 17)
_NCOEF = 17


def _unipc_schedule(num_steps: int, shift: float, num_train: int, shift_terminal: float | None,
                    final_sigmas_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps int64 [N], sigmas float32 [N+1]) exactly as diffusers' flow UniPC builds them."""
    s = _shifted(np.linspace(1.0, 1.0 / num_train, num_steps + 1)[:-1], shift)
    s = _stretched(s, shift_terminal)
    if abs(s[0] - 1.0) < 1e-6:  # λ would be -inf at σ = 1
        s[0] -= 1e-6
    timesteps = (s * num_train).astype(np.int64)  # truncation toward zero, as torch's .to(int64)
    last = s[-1] if final_sigmas_type == "sigma_min" else 0.0
    sigmas = np.concatenate([s, [last]]).astype(np.float32)
    return timesteps, sigmas


def _unipc_orders(num_steps: int, solver_order: int = 2, lower_order_final: bool = True) -> np.ndarray:
    """Predictor order per step: min(K, warm-up i+1) and, with lower_order_final, min(·, N-i)."""
    i = np.arange(num_steps)
    orders = np.minimum(solver_order, i + 1)
    if lower_order_final:
        orders = np.minimum(orders, num_steps - i)
    return orders.astype(np.int32)


def _unipc_rhos(rks: list[float], hh: float, bh: float, order: int, corrector: bool) -> np.ndarray:
    """UniPC's weights for an update of ``order`` with history ratios ``rks`` (order-1 of them).

    Predictor: weights of the order-1 history differences (1/2 at order 2, the reduced system above).
    Corrector: the same followed by the weight of ``x0_i - x0_{i-1}`` (1/2 at order 1).
    """
    if order == 1:
        return np.array([0.5]) if corrector else np.zeros(0)
    if order == 2 and not corrector:
        return np.array([0.5])
    r = np.array(list(rks) + [1.0])
    h_phi_k = np.expm1(hh) / hh - 1.0
    factorial = 1.0
    rows, b = [], []
    for j in range(1, order + 1):
        rows.append(r ** (j - 1))
        b.append(h_phi_k * factorial / bh)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    R, b = np.stack(rows), np.array(b)
    return np.linalg.solve(R, b) if corrector else np.linalg.solve(R[:-1, :-1], b[:-1])


def _unipc_coefficients(sigmas32: np.ndarray, orders: np.ndarray, solver_type: str = "bh2",
                        disable_corrector: tuple[int, ...] = ()) -> np.ndarray:
    """Per-step scalar table [N, _NCOEF] in float64 (cast to float32 by the caller); see the module doc."""
    n = len(orders)
    sig = sigmas32.astype(np.float64)
    alpha = 1.0 - sig
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sig)  # +inf where σ = 0

    def b_of(hh):
        return np.expm1(hh) if solver_type == "bh2" else hh

    table = np.zeros((n, _NCOEF))
    table[:, [_C_RK1, _C_RK2, _P_RK1, _P_RK2]] = 1.0
    for i in range(n):
        table[i, _SIGMA] = sig[i]
        # UniC: corrects the update i-1 -> i with the order the predictor used at step i-1.
        if i > 0 and (i - 1) not in disable_corrector:
            q = int(orders[i - 1])
            h = lam[i] - lam[i - 1]
            hh, bh = -h, b_of(-h)
            table[i, _C_USE] = 1.0
            table[i, _C_RATIO] = sig[i] / sig[i - 1]
            table[i, _C_APHI] = alpha[i] * np.expm1(hh)
            table[i, _C_AB] = alpha[i] * bh
            rks = [(lam[i - 1 - k] - lam[i - 1]) / h for k in range(1, q)]
            rhos = _unipc_rhos(rks, hh, bh, q, corrector=True)
            table[i, _C_RHO_T] = rhos[-1]
            for k, (rk, rho) in enumerate(zip(rks, rhos[:-1])):
                table[i, _C_RK1 + k], table[i, _C_RHO1 + k] = rk, rho
        # UniP: update i -> i+1 of order orders[i].
        p = int(orders[i])
        if sig[i + 1] == 0.0:  # λ_N = +inf: exp(-h) = 0, the update returns x0_i (order 1 only; see UniPC)
            ratio, phi1, ab = 0.0, -1.0, alpha[i + 1] * -1.0
            rks, rhos = [], np.zeros(0)
        elif sig[i + 1] == sig[i]:  # final σ = σ_min: h = 0, the update returns the sample unchanged
            ratio, phi1, ab = 1.0, 0.0, 0.0
            rks, rhos = [], np.zeros(0)
        else:
            h = lam[i + 1] - lam[i]
            hh, bh = -h, b_of(-h)
            ratio, phi1, ab = sig[i + 1] / sig[i], np.expm1(hh), alpha[i + 1] * bh
            rks = [(lam[i - k] - lam[i]) / h for k in range(1, p)]
            rhos = _unipc_rhos(rks, hh, bh, p, corrector=False)
        table[i, _P_RATIO] = ratio
        table[i, _P_APHI] = alpha[i + 1] * phi1
        table[i, _P_AB] = ab
        for k, (rk, rho) in enumerate(zip(rks, rhos)):
            table[i, _P_RK1 + k], table[i, _P_RHO1 + k] = rk, rho
    if not np.all(np.isfinite(table)):
        raise ValueError("UniPC coefficients are not finite for this schedule; try fewer steps or another shift")
    return table


def _check_unipc_runs(s: "UniPC") -> None:
    """Refuses the option combinations whose diffusers trajectory is not finite (so there is nothing to match)."""
    if s.solver_type == "bh1" and s.final_sigmas_type == "zero":
        raise ValueError("solver_type='bh1' with final_sigmas_type='zero' is refused: diffusers' flow UniPC computes "
                         "B(h) = -h = -inf at the last step (σ = 0) and returns NaN; use solver_type='bh2' or "
                         "final_sigmas_type='sigma_min'")
    last = int(s.orders[-1])
    if s.final_sigmas_type == "zero" and last > 1:
        raise ValueError(f"lower_order_final=False with final_sigmas_type='zero' and {s.num_steps} steps is refused: "
                         f"the last step (to σ = 0) would be of order {last}, for which diffusers' flow UniPC divides "
                         "by an infinite step and returns inf/NaN (or fails to solve); use lower_order_final=True")
    if s.final_sigmas_type == "sigma_min" and last > 2:
        raise ValueError(f"lower_order_final=False with final_sigmas_type='sigma_min' and "
                         f"solver_order={s.solver_order} is refused: the last step has h = 0, where diffusers' order-3 predictor returns NaN; use "
                         "lower_order_final=True or solver_order <= 2")


@dataclasses.dataclass(frozen=True)
class UniPC(_FlowSchedule):
    """Flow-matching UniPC (data prediction) with diffusers' schedule; pure and jit-safe.

    ``UniPC(num_steps, shift=3.0, num_train_timesteps=1000, shift_terminal=None, solver_order=2,
    solver_type="bh2", lower_order_final=True, final_sigmas_type="zero", disable_corrector=())`` — the
    diffusers options of the same names (the defaults are Wan's). Attributes (read-only numpy):
    ``timesteps`` int64 [num_steps] (the transformer's timestep inputs, equal to diffusers'),
    ``sigmas`` float32 [num_steps+1], ``orders`` int32 [num_steps] (predictor order per step).
    Hashable and compared by its options, so it can be closed over in jit or passed as a static argument.
    Raises ValueError for an option value, or a combination, it does not run (see ``_check_unipc_runs``).
    """

    solver_order: int = 2
    solver_type: str = "bh2"
    lower_order_final: bool = True
    final_sigmas_type: str = "zero"
    disable_corrector: tuple[int, ...] = ()
    orders: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    _coef: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.solver_order, bool) or self.solver_order not in SOLVER_ORDERS:
            raise ValueError(f"solver_order must be 1, 2 or 3 (jaxvdm's UniPC orders), got {self.solver_order!r}")
        self._set("solver_order", int(self.solver_order))
        _check_choice("solver_type", self.solver_type, ("bh1", "bh2"))
        self._set("lower_order_final", _check_bool("lower_order_final", self.lower_order_final))
        _check_choice("final_sigmas_type", self.final_sigmas_type, ("zero", "sigma_min"))
        dc = self.disable_corrector
        if isinstance(dc, (str, bytes)) or not hasattr(dc, "__iter__") or not all(
                isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in dc):
            raise ValueError(f"disable_corrector must be a list of step indices (ints), got {dc!r}")
        self._set("disable_corrector", tuple(sorted({int(k) for k in dc})))
        timesteps, sigmas = _unipc_schedule(self.num_steps, self.shift, self.num_train_timesteps,
                                            self.shift_terminal, self.final_sigmas_type)
        orders = _unipc_orders(self.num_steps, self.solver_order, self.lower_order_final)
        self._set("orders", _readonly(orders))
        _check_unipc_runs(self)
        coef = _unipc_coefficients(sigmas, orders, self.solver_type, self.disable_corrector).astype(np.float32)
        self._set("timesteps", _readonly(timesteps))
        self._set("sigmas", _readonly(sigmas))
        self._set("_coef", _readonly(coef))

    def init(self, sample: jax.Array) -> UniPCState:
        """Zero state for a trajectory starting at step 0; leaves float32 with ``sample``'s shape."""
        z = jnp.zeros_like(sample, dtype=jnp.float32)
        return UniPCState(last_sample=z, x0_history=(z,) * self.solver_order)

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
        if len(state.x0_history) != self.solver_order:
            raise ValueError(f"state holds {len(state.x0_history)} data predictions, this solver of order "
                             f"{self.solver_order} needs {self.solver_order}: build it with this scheduler's init")
        i = _index(step_index, self.num_steps)
        return _unipc_update(jnp.asarray(self._coef), state, model_output, sample, i)


@jax.jit
def _unipc_update(coef, state, model_output, sample, i):
    """The UniPC update with the coefficient table as data (one compiled kernel per shape and order)."""
    c = coef[i]
    x = sample.astype(jnp.float32)
    v = model_output.astype(jnp.float32)
    hist = state.x0_history
    k = len(hist)
    m0 = hist[0]

    x0 = x - c[_SIGMA] * v

    # UniC (skipped where _C_USE = 0: step 0 and disable_corrector); differences with history 1, 2 if kept.
    xc_base = c[_C_RATIO] * state.last_sample - c[_C_APHI] * m0
    corr = None
    for j in range(1, k):
        term = c[_C_RHO1 + j - 1] * ((hist[j] - m0) / c[_C_RK1 + j - 1])
        corr = term if corr is None else corr + term
    d_t = c[_C_RHO_T] * (x0 - m0)
    xc = xc_base - c[_C_AB] * (d_t if corr is None else corr + d_t)
    xc = jnp.where(c[_C_USE] > 0, xc, x)

    # UniP (order via coefficients: rho = 0 turns a history term off).
    x_next = c[_P_RATIO] * xc - c[_P_APHI] * x0
    pred = None
    for j in range(1, k):
        term = c[_P_RHO1 + j - 1] * ((hist[j - 1] - x0) / c[_P_RK1 + j - 1])
        pred = term if pred is None else pred + term
    if pred is not None:
        x_next = x_next - c[_P_AB] * pred

    return x_next, UniPCState(last_sample=xc, x0_history=(x0,) + tuple(hist[:-1]))


def _respaced(sigmas: np.ndarray, kind: str | None) -> np.ndarray:
    """``sigmas`` re-spaced between its two ends (float64): Karras (ρ = 7), log-uniform, or Beta(0.6, 0.6)."""
    if kind is None:
        return sigmas
    n, hi, lo = len(sigmas), float(sigmas[0]), float(sigmas[-1])
    if kind == "karras":
        rho = 7.0
        a, b = hi ** (1 / rho), lo ** (1 / rho)
        return (a + np.linspace(0, 1, n) * (b - a)) ** rho
    if kind == "exponential":
        return np.exp(np.linspace(math.log(hi), math.log(lo), n))
    import scipy.stats  # a dependency of jax

    return np.array([lo + q * (hi - lo) for q in scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6)])


def _euler_schedule(num_steps: int, shift: float, num_train: int, shift_terminal: float | None = None,
                    sigma_schedule: str | None = None, invert_sigmas: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps float32 [N], sigmas float32 [N+1]) as diffusers' FlowMatchEulerDiscreteScheduler builds them."""
    f32 = np.float32
    # Training grid in float32: σ = shift(t / T) for t = T..1; only its ends are used.
    grid = np.array([num_train, 1], dtype=f32) / f32(num_train)
    grid = (f32(shift) * grid) / (f32(1) + f32(shift - 1) * grid)
    sigma_max, sigma_min = float(grid[0]), float(grid[1])
    t = np.linspace(sigma_max * num_train, sigma_min * num_train, num_steps)
    s = _respaced(_stretched(_shifted(t / num_train, shift), shift_terminal), sigma_schedule)
    s32 = s.astype(f32)
    end = f32(0)
    if invert_sigmas:
        s32, end = f32(1) - s32, f32(1)
    timesteps = s32 * f32(num_train)
    sigmas = np.concatenate([s32, np.full(1, end, f32)])
    return timesteps.astype(f32), sigmas


@dataclasses.dataclass(frozen=True)
class Euler(_FlowSchedule):
    """Flow-matching Euler with diffusers' FlowMatchEulerDiscreteScheduler schedule; pure and jit-safe.

    ``Euler(num_steps, shift=3.0, num_train_timesteps=1000, shift_terminal=None, sigma_schedule=None,
    invert_sigmas=False)``; ``sigma_schedule`` is diffusers' ``use_karras_sigmas`` / ``use_exponential_sigmas``
    / ``use_beta_sigmas`` as "karras" / "exponential" / "beta". ``timesteps`` float32 [num_steps] (equal to
    diffusers'), ``sigmas`` float32 [num_steps+1]. Hashable like :class:`UniPC`.
    """

    sigma_schedule: str | None = None
    invert_sigmas: bool = False
    _dt: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        if self.sigma_schedule is not None:
            _check_choice("sigma_schedule", self.sigma_schedule, SIGMA_SCHEDULES)
        self._set("invert_sigmas", _check_bool("invert_sigmas", self.invert_sigmas))
        timesteps, sigmas = _euler_schedule(self.num_steps, self.shift, self.num_train_timesteps, self.shift_terminal,
                                            self.sigma_schedule, self.invert_sigmas)
        if not np.all(np.isfinite(sigmas)):
            raise ValueError(f"the Euler schedule is not finite for {self!r}")
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


_CLASSES = {"unipc": UniPC, "euler": Euler}


@dataclasses.dataclass(frozen=True)
class SchedulerSpec:
    """A sampler by name with its options but no step count or shift: what a Pipeline's defaults hold.

    ``SchedulerSpec("unipc", solver_order=3)`` or ``SchedulerSpec("euler", (("invert_sigmas", True),))``;
    ``options`` are keyword arguments of :class:`UniPC` / :class:`Euler` (all but num_steps and shift),
    kept as sorted ``(name, value)`` pairs so the spec is hashable. ``str(spec)`` is ``"unipc"`` for the
    defaults and ``"unipc(solver_order=3)"`` otherwise. Raises ValueError for an unknown name or option,
    or a bad value (checked by building a one-step scheduler).
    """

    name: str = "unipc"
    options: tuple[tuple[str, Any], ...] = ()

    def __init__(self, name: str = "unipc", options=(), **kwargs):
        key = name.strip().lower() if isinstance(name, str) else name
        if key not in _CLASSES:
            raise ValueError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
        opts = {**dict(options), **kwargs}
        cls = _CLASSES[key]
        allowed = {f.name for f in dataclasses.fields(cls) if f.init} - {"num_steps", "shift"}
        unknown = sorted(set(opts) - allowed)
        if unknown:
            raise ValueError(f"{key} has no option(s) {unknown}; its options: {sorted(allowed)}")
        # Validates the values (and the combinations refused at every step count above 2); keeps the
        # normalised values that differ from the defaults.
        sample = cls(3, 3.0, **opts)
        normal = {k: v for k, v in sample.options().items() if k in opts}
        defaults = cls(3, 3.0).options()
        object.__setattr__(self, "name", key)
        object.__setattr__(self, "options", tuple(sorted((k, v) for k, v in normal.items() if v != defaults[k])))

    def build(self, num_steps: int, shift: float) -> UniPC | Euler:
        """The scheduler of ``num_steps`` steps at ``shift`` with these options."""
        return _CLASSES[self.name](num_steps, shift, **dict(self.options))

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.options)})"


def make_scheduler(name, num_steps: int, shift: float, num_train_timesteps: int | None = None) -> UniPC | Euler:
    """Build a sampler: ``name`` is "unipc" (Wan's default) or "euler" (case-insensitive), giving jaxvdm's
    standard variant, or a :class:`SchedulerSpec` (e.g. a folder's, from ``pipeline.defaults["scheduler"]``),
    giving its options. ``num_train_timesteps`` (default 1000, or the spec's) overrides the spec's."""
    spec = name if isinstance(name, SchedulerSpec) else SchedulerSpec(name)
    if num_train_timesteps is not None:
        spec = SchedulerSpec(spec.name, spec.options, num_train_timesteps=num_train_timesteps)
    return spec.build(num_steps, shift)


def scheduler_spec_from_config(config: dict, class_name: str | None = None) -> tuple[SchedulerSpec, float]:
    """A diffusers ``scheduler_config.json`` (as a dict) -> ``(SchedulerSpec, shift)``.

    ``class_name``: the class diffusers builds (a folder's ``model_index.json`` names it; default the
    config's ``_class_name``). Every ``__init__`` option of diffusers' UniPC and flow-matching Euler is
    honoured identically or refused (see :mod:`jaxvdm.models.scheduler_config`); ``shift`` is the config's
    (diffusers' default 1.0 when absent). Raises ValueError naming each refused option, its value and why.
    """
    name, options, shift = options_from_config(config, class_name)
    cls = class_name or config.get("_class_name")
    try:
        spec = SchedulerSpec(name, options)
    except ValueError as e:
        raise ValueError(f"{cls} options jaxvdm does not run as diffusers does:\n  {e}") from None
    return spec, shift


def scheduler_from_config(config: dict, num_steps: int, shift: float | None = None) -> UniPC | Euler:
    """The sampler a diffusers ``scheduler_config.json`` (as a dict) describes, for ``num_steps`` steps.

    ``shift`` (default: the config's ``flow_shift`` / ``shift``, diffusers' default 1.0 when absent)
    overrides the config's. Raises ValueError naming any option jaxvdm does not honour identically.
    """
    spec, config_shift = scheduler_spec_from_config(config)
    return spec.build(num_steps, config_shift if shift is None else shift)
