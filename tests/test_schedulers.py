"""Parity of jaxvdm.models.schedulers with diffusers' UniPCMultistepScheduler (Wan's settings) and
FlowMatchEulerDiscreteScheduler, on CPU.

References:
* Euler: diffusers as shipped, float32 (it computes the update in float32 whatever the input dtype).
* UniPC: diffusers with its float32 ``sigmas`` upcast to float64 and float64 samples/outputs, i.e. the same
  algorithm evaluated exactly. As shipped, diffusers derives its per-step scalars from float32 σ's in float32,
  and the φ-function terms lose ~5 bits to cancellation; its float32 trajectory is itself up to ~1.5e-6 away
  from its float64 one at 50 steps with random outputs. Ours derives those scalars in float64 and steps in
  float32, so it is checked at 1e-6 against the float64 reference, and at a looser bound against the
  float32-as-shipped one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from helpers import rel_err
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxvdm.models.schedulers import Euler, EulerState, UniPC, UniPCState, make_scheduler

NUM_STEPS = (1, 2, 10, 50)
SHIFTS = (1.0, 3.0, 5.0)
CASES = [(n, s) for n in NUM_STEPS for s in SHIFTS]
SHAPE = (1, 4, 3, 4, 6)  # [B, C, T, H, W], a tiny Wan-like latent
TOL = 1e-6
TOL_UNIPC_F32_AS_SHIPPED = 3e-6


def _ref_unipc(num_steps, shift, float64):
    s = UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    s.set_timesteps(num_steps)
    s.set_begin_index(0)  # as WanPipeline does
    if float64:
        s.sigmas = s.sigmas.double()
    return s


def _ref_euler(num_steps, shift):
    s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    s.set_timesteps(num_steps)
    s.set_begin_index(0)
    return s


def _inputs(num_steps, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(SHAPE)
    vs = rng.standard_normal((num_steps, *SHAPE))
    return x, vs


# One compiled function per scheduler instance (the scheduler is a static, hashable argument).
def _step(sched, state, v, x, i):
    return sched.step(state, v, x, i)


_step_jit = jax.jit(_step, static_argnums=0)


def _loop(sched, x, vs):
    """All intermediate samples [N, ...] of a trajectory run inside one lax.fori_loop (traced index)."""

    def body(i, carry):
        x, state, out = carry
        x, state = sched.step(state, vs[i], x, i)
        return x, state, out.at[i].set(x)

    out = jnp.zeros_like(vs, dtype=jnp.float32)  # zeros_like keeps shard_map varying-axis types
    _, _, out = jax.lax.fori_loop(0, sched.num_steps, body, (x.astype(jnp.float32), sched.init(x), out))
    return out


@pytest.mark.parametrize("num_steps,shift", CASES + [(10, 7.3), (50, 12.0)])
def test_schedules_equal_diffusers(num_steps, shift):
    """sigmas and timesteps (values and dtype semantics) are exactly diffusers'."""
    ours, ref = UniPC(num_steps, shift), _ref_unipc(num_steps, shift, float64=False)
    ref_t = ref.timesteps.numpy()
    assert ours.timesteps.dtype == np.int64 and ref_t.dtype == np.int64
    np.testing.assert_array_equal(ours.timesteps, ref_t)
    assert ours.sigmas.dtype == np.float32 and ours.sigmas.shape == (num_steps + 1,) and ours.sigmas[-1] == 0
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())

    ours_e, ref_e = Euler(num_steps, shift), _ref_euler(num_steps, shift)
    assert ours_e.timesteps.dtype == np.float32 and ref_e.timesteps.dtype == torch.float32
    np.testing.assert_array_equal(ours_e.timesteps, ref_e.timesteps.numpy())
    assert ours_e.sigmas.dtype == np.float32 and ours_e.sigmas.shape == (num_steps + 1,)
    np.testing.assert_array_equal(ours_e.sigmas, ref_e.sigmas.numpy())


def _unipc_reference(num_steps, shift, x_np, vs_np):
    """diffusers' UniPC trajectory in float64 (with its state and orders) and as shipped in float32."""
    ref64 = _ref_unipc(num_steps, shift, float64=True)
    ref32 = _ref_unipc(num_steps, shift, float64=False)
    x64, x32 = torch.tensor(x_np), torch.tensor(x_np, dtype=torch.float32)
    out = {"x64": [], "x32": [], "last_sample": [], "x0_history": [], "orders": []}
    for i in range(num_steps):
        x64 = ref64.step(torch.tensor(vs_np[i]), ref64.timesteps[i], x64).prev_sample
        x32 = ref32.step(torch.tensor(vs_np[i], dtype=torch.float32), ref32.timesteps[i], x32).prev_sample
        out["x64"].append(x64.numpy())
        out["x32"].append(x32.numpy())
        out["orders"].append(ref64.this_order)
        # What diffusers keeps between steps: the corrected sample and the last two data predictions.
        out["last_sample"].append(ref64.last_sample.numpy())
        out["x0_history"].append([None if m is None else m.numpy() for m in ref64.model_outputs[::-1]])
    return out


def _euler_reference(num_steps, shift, x_np, vs_np):
    ref = _ref_euler(num_steps, shift)
    xr = torch.tensor(x_np, dtype=torch.float32)
    traj = []
    for i in range(num_steps):
        xr = ref.step(torch.tensor(vs_np[i], dtype=torch.float32), ref.timesteps[i], xr).prev_sample
        traj.append(xr.numpy())
    return traj


# All (shift, scheduler) fori_loops of one num_steps in one compiled program (keeps compile count low).
_loops_jit = jax.jit(lambda scheds, x, vs: tuple(_loop(s, x, vs) for s in scheds), static_argnums=0)


@pytest.mark.parametrize("num_steps", NUM_STEPS)
def test_trajectories_match_diffusers(num_steps):
    """For every shift, UniPC and Euler: every intermediate sample, step by step (eager, Python-int index)
    and inside one jitted fori_loop (traced index), against diffusers; for UniPC also the solver state and
    the order used at each step."""
    x_np, vs_np = _inputs(num_steps)
    x_in = jnp.asarray(x_np, jnp.float32)
    vs = jnp.asarray(vs_np, jnp.float32)
    scheds, refs, report = [], [], {}
    for shift in SHIFTS:
        # UniPC, eager per step.
        sched = UniPC(num_steps, shift)
        ref = _unipc_reference(num_steps, shift, x_np, vs_np)
        np.testing.assert_array_equal(sched.orders, ref["orders"])
        x, state = x_in, sched.init(x_in)
        e64, e32, est = [], [], []
        for i in range(num_steps):
            x, state = sched.step(state, vs[i], x, i)
            assert x.dtype == jnp.float32 and x.shape == SHAPE
            e64.append(rel_err(x, ref["x64"][i]))
            e32.append(rel_err(x, ref["x32"][i]))
            est.append(rel_err(state.last_sample, ref["last_sample"][i]))
            assert len(state.x0_history) == 2
            for ours_m, ref_m in zip(state.x0_history, ref["x0_history"][i]):
                if ref_m is not None:  # diffusers' list is None until the warm-up has filled it
                    est.append(rel_err(ours_m, ref_m))
        report[f"unipc shift={shift} eager vs f64"] = (max(e64), TOL)
        report[f"unipc shift={shift} state vs f64"] = (max(est), TOL)
        report[f"unipc shift={shift} eager vs f32 as shipped"] = (max(e32), TOL_UNIPC_F32_AS_SHIPPED)
        scheds.append(sched)
        refs.append(ref["x64"])

        # Euler, eager per step.
        sched = Euler(num_steps, shift)
        ref = _euler_reference(num_steps, shift, x_np, vs_np)
        x, state = x_in, sched.init(x_in)
        assert jax.tree_util.tree_leaves(state) == []
        errs = []
        for i in range(num_steps):
            x, state = sched.step(state, vs[i], x, i)
            assert x.dtype == jnp.float32 and x.shape == SHAPE
            errs.append(rel_err(x, ref[i]))
        report[f"euler shift={shift} eager"] = (max(errs), TOL)
        scheds.append(sched)
        refs.append(ref)

    for sched, ref, looped in zip(scheds, refs, _loops_jit(tuple(scheds), x_in, vs)):
        looped = np.asarray(looped)
        err = max(rel_err(looped[i], ref[i]) for i in range(num_steps))
        report[f"{type(sched).__name__.lower()} shift={sched.shift} fori_loop"] = (err, TOL)

    failed = {k: f"{e:.2e} > {t:.0e}" for k, (e, t) in report.items() if not e <= t}
    assert not failed, failed


@pytest.mark.parametrize("name", ["unipc", "euler"])
def test_jitted_step_traced_index_and_bf16_output(name):
    """One jitted step function with a traced index reproduces the eager trajectory (checked against
    diffusers above); the σ and timestep helpers read the schedule under a traced index; a bf16 model
    output is cast to float32 (result and state stay float32)."""
    sched = make_scheduler(name, 10, 3.0)
    x_np, vs_np = _inputs(10, seed=2)
    vs = jnp.asarray(vs_np, jnp.float32)
    x = xe = jnp.asarray(x_np, jnp.float32)
    state = state_e = sched.init(x)
    history = []  # (state, sample) handed to each eager step, and its result
    for i in range(10):
        x, state = _step_jit(sched, state, vs[i], x, jnp.int32(i))
        history.append((state_e, xe))
        xe, state_e = sched.step(state_e, vs[i], xe, i)
        history[-1] += (xe,)
        assert rel_err(x, xe) <= TOL

    # vmap over latents at different steps (DualParal keeps one state per block): steps 0, 3 and 9 at once.
    idx = [0, 3, 9]
    stack = lambda *t: jnp.stack(t)  # noqa: E731
    states = jax.tree_util.tree_map(stack, *[history[k][0] for k in idx])
    outs, _ = jax.jit(jax.vmap(sched.step))(
        states, vs[jnp.array(idx)], jnp.stack([history[k][1] for k in idx]), jnp.array(idx, jnp.int32)
    )
    for row, k in enumerate(idx):
        assert rel_err(outs[row], history[k][2]) <= TOL
    for leaf in jax.tree_util.tree_leaves(state):
        assert leaf.dtype == jnp.float32 and leaf.shape == SHAPE

    helpers = jax.jit(jax.vmap(lambda i: (sched.timestep(i), sched.sigma(i))))
    ts, sig = helpers(jnp.arange(10))
    np.testing.assert_array_equal(np.asarray(ts), sched.timesteps.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(sig), sched.sigmas[:10])
    assert float(sched.sigma(10)) == 0.0

    x = jnp.asarray(x_np, jnp.bfloat16)
    v16 = vs[0].astype(jnp.bfloat16)
    out16, st16 = sched.step(sched.init(x), v16, x, 0)
    out32, st32 = sched.step(sched.init(x), v16.astype(jnp.float32), x.astype(jnp.float32), 0)
    assert out16.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out16), np.asarray(out32))
    for a, b in zip(jax.tree_util.tree_leaves(st16), jax.tree_util.tree_leaves(st32)):
        assert a.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unipc_inside_shard_map(devices):
    """A full UniPC trajectory inside shard_map over 8 devices (sample split on its batch axis, traced step
    index in a fori_loop) equals the single-device eager run."""
    sched = UniPC(10, 3.0)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((8, 4, 2, 3)), jnp.float32)
    vs = jnp.asarray(rng.standard_normal((10, 8, 4, 2, 3)), jnp.float32)
    mesh = Mesh(np.array(devices), ("d",))

    def run(x, vs):
        return _loop(sched, x, vs)

    sharded = jax.jit(
        jax.shard_map(run, mesh=mesh, in_specs=(P("d"), P(None, "d")), out_specs=P(None, "d"))
    )(jax.device_put(x, NamedSharding(mesh, P("d"))), jax.device_put(vs, NamedSharding(mesh, P(None, "d"))))
    xe, state = x, sched.init(x)
    for i in range(10):
        xe, state = sched.step(state, vs[i], xe, i)
        assert rel_err(sharded[i], xe) <= TOL


def test_hashable_static_config_and_interfaces():
    """Schedulers compare and hash by config (safe to close over / pass as static args); arrays read-only."""
    a, b = UniPC(10, 3), UniPC(10, 3.0)
    assert a == b and hash(a) == hash(b) and a != UniPC(10, 5.0) and a != Euler(10, 3.0)
    assert isinstance(make_scheduler("UniPC", 4, 3.0), UniPC) and isinstance(make_scheduler("euler", 4, 3.0), Euler)
    for sched in (a, Euler(10, 3.0)):
        with pytest.raises(ValueError):
            sched.sigmas[0] = 0.5
    assert isinstance(a.init(jnp.zeros(SHAPE)), UniPCState)
    assert isinstance(Euler(3).init(jnp.zeros(SHAPE)), EulerState)
    # Orders: warm-up order 1, lower_order_final order 1, order 2 between.
    np.testing.assert_array_equal(UniPC(1).orders, [1])
    np.testing.assert_array_equal(UniPC(4).orders, [1, 2, 2, 1])


def test_errors():
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("dpm++", 10, 3.0)
    for bad in (0, -1):
        for cls in (UniPC, Euler):
            with pytest.raises(ValueError, match="num_steps"):
                cls(bad, 3.0)
    with pytest.raises(ValueError, match="num_steps"):
        make_scheduler("unipc", 0, 3.0)
    with pytest.raises(ValueError, match="num_steps"):
        UniPC(2.5)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="shift"):
            make_scheduler("euler", 10, bad)
    sched = UniPC(3)
    x = jnp.zeros(SHAPE)
    with pytest.raises(ValueError, match="outside"):
        sched.step(sched.init(x), x, x, 3)
    with pytest.raises(ValueError, match="integer"):
        sched.step(sched.init(x), x, x, 1.0)
    with pytest.raises(ValueError, match="shape"):
        sched.step(sched.init(x), x[..., :2], x, 0)


# ----------------------------------------------------------------------------- scheduler_config.json options

import inspect  # noqa: E402
import json  # noqa: E402

from jaxvdm.models.scheduler_config import EULER_OPTIONS, UNIPC_OPTIONS  # noqa: E402
from jaxvdm.models.schedulers import SchedulerSpec, scheduler_from_config, scheduler_spec_from_config  # noqa: E402

OPTION_SHIFT = 5.0
UNIPC_BASE = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=OPTION_SHIFT)
# Every honoured UniPC option away from Wan's value, alone and combined (bh1 needs a non-zero final σ: see the
# refusals). solver_type "midpoint" is one diffusers renames to bh2.
UNIPC_CASES = [
    dict(num_train_timesteps=500),
    dict(solver_order=1),
    dict(solver_order=3),
    dict(final_sigmas_type="sigma_min"),
    dict(final_sigmas_type="sigma_min", lower_order_final=False),
    dict(solver_type="bh1", final_sigmas_type="sigma_min"),
    dict(solver_type="midpoint"),
    dict(disable_corrector=[0, 3, 7]),
    dict(shift_terminal=0.1),
    dict(solver_order=3, final_sigmas_type="sigma_min", shift_terminal=0.2, disable_corrector=[2],
         num_train_timesteps=800, solver_type="bh1"),
]
EULER_CASES = [
    dict(num_train_timesteps=500),
    dict(shift_terminal=0.1),
    dict(invert_sigmas=True),
    dict(use_karras_sigmas=True),
    dict(use_exponential_sigmas=True),
    dict(use_beta_sigmas=True),
    dict(shift_terminal=0.05, use_karras_sigmas=True, num_train_timesteps=700),
]
OPTION_CASES = [(UniPCMultistepScheduler, kw) for kw in UNIPC_CASES] + [(FlowMatchEulerDiscreteScheduler, kw)
                                                                        for kw in EULER_CASES]
OPTION_IDS = [f"{'unipc' if c is UniPCMultistepScheduler else 'euler'}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"
              for c, kw in OPTION_CASES]


def _diffusers(cls, kwargs, num_steps, float64=False):
    """diffusers' scheduler with ``kwargs`` on the flow base, timesteps set, started at step 0."""
    base = UNIPC_BASE if cls is UniPCMultistepScheduler else dict(shift=OPTION_SHIFT)
    s = cls(**{**base, **kwargs})
    s.set_timesteps(num_steps)
    s.set_begin_index(0)
    if float64:
        s.sigmas = s.sigmas.double()
    return s


def _saved_config(s) -> dict:
    """The scheduler_config.json diffusers writes for ``s``."""
    return json.loads(s.to_json_string())


def _diffusers_trajectory(s, x_np, vs_np, dtype):
    x = torch.tensor(x_np, dtype=dtype)
    out, orders = [], []
    for i, t in enumerate(s.timesteps):
        x = s.step(torch.tensor(vs_np[i], dtype=dtype), t, x).prev_sample
        out.append(x.numpy())
        orders.append(getattr(s, "this_order", 1))
    return out, orders


@pytest.mark.parametrize("num_steps", [2, 10, 50])
@pytest.mark.parametrize("cls,kwargs", OPTION_CASES, ids=OPTION_IDS)
def test_option_schedules_equal_diffusers(cls, kwargs, num_steps):
    """A config with the option, read by scheduler_from_config, gives diffusers' timesteps and σ's exactly."""
    ref = _diffusers(cls, kwargs, num_steps)
    ours = scheduler_from_config(_saved_config(ref), num_steps)
    assert ours.shift == OPTION_SHIFT
    ref_t = ref.timesteps.numpy()
    assert ours.timesteps.dtype == ref_t.dtype
    np.testing.assert_array_equal(ours.timesteps, ref_t)
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())


# One fori_loop per scheduler, all in one program per step count (a traced index over every option's table).
_option_loops = jax.jit(lambda scheds, x, vs: tuple(_loop(s, x, vs) for s in scheds), static_argnums=0)


@pytest.mark.parametrize("num_steps", [10, 50])
def test_option_trajectories_match_diffusers(num_steps):
    """For every honoured option: each intermediate sample of a trajectory with fixed model outputs, eager and
    in a jitted fori_loop, against diffusers with that option; UniPC also its per-step order.

    UniPC: within 1e-6 of diffusers evaluated exactly (float64), and no further from diffusers as shipped
    (float32) than diffusers' own float32 run is from its float64 one, plus 1e-6 (at order 3 diffusers'
    float32 solve of the 3x3 system is ~1e-5 off). Euler: within 1e-6 of diffusers (float32 in both)."""
    x_np, vs_np = _inputs(num_steps, seed=7)
    x_in, vs = jnp.asarray(x_np, jnp.float32), jnp.asarray(vs_np, jnp.float32)
    report, scheds, refs = {}, [], []
    for (cls, kwargs), name in zip(OPTION_CASES, OPTION_IDS):
        ours = scheduler_from_config(_saved_config(_diffusers(cls, kwargs, num_steps)), num_steps)
        unipc = cls is UniPCMultistepScheduler
        r32, orders = _diffusers_trajectory(_diffusers(cls, kwargs, num_steps), x_np, vs_np, torch.float32)
        r64 = _diffusers_trajectory(_diffusers(cls, kwargs, num_steps, float64=True), x_np, vs_np, torch.float64)[0] \
            if unipc else r32
        if unipc:
            np.testing.assert_array_equal(ours.orders, orders)
        x, state = x_in, ours.init(x_in)
        e64, e32 = [], []
        for i in range(num_steps):
            x, state = ours.step(state, vs[i], x, i)
            e64.append(rel_err(x, r64[i]))
            e32.append(rel_err(x, r32[i]))
        own_gap = max(rel_err(a, b) for a, b in zip(r32, r64))
        report[f"{name} vs exact"] = (max(e64), TOL)
        report[f"{name} vs float32 as shipped"] = (max(e32), own_gap + TOL)
        assert rel_err(r64[-1], x_np) > 0.1  # the option's trajectory went somewhere
        scheds.append(ours)
        refs.append(r64)
    for sched, ref, looped, name in zip(scheds, refs, _option_loops(tuple(scheds), x_in, vs), OPTION_IDS):
        looped = np.asarray(looped)
        report[f"{name} fori_loop"] = (max(rel_err(looped[i], ref[i]) for i in range(num_steps)), TOL)
    failed = {k: f"{e:.2e} > {t:.1e}" for k, (e, t) in report.items() if not e <= t}
    assert not failed, failed


def test_options_change_the_trajectory():
    """Each honoured option changes diffusers' schedule or trajectory (so the parity tests above would catch
    jaxvdm dropping it), and jaxvdm's scheduler for it differs from the default one."""
    x_np, vs_np = _inputs(10, seed=7)
    for cls, kwargs in OPTION_CASES:
        if kwargs == dict(solver_type="midpoint"):
            continue  # diffusers' alias of bh2: the same as the default by design
        default = _diffusers(cls, {}, 10)
        with_option = _diffusers(cls, kwargs, 10)
        a = _diffusers_trajectory(default, x_np, vs_np, torch.float32)[0][-1]
        b = _diffusers_trajectory(with_option, x_np, vs_np, torch.float32)[0][-1]
        assert rel_err(a, b) > 1e-4, kwargs
        ours = scheduler_from_config(_saved_config(_diffusers(cls, kwargs, 10)), 10)
        assert ours != scheduler_from_config(_saved_config(_diffusers(cls, {}, 10)), 10), kwargs


IGNORED_VALUES = {
    UniPCMultistepScheduler: dict(beta_start=0.001, beta_end=0.05, beta_schedule="scaled_linear", trained_betas=None,
                                  dynamic_thresholding_ratio=0.9, sample_max_value=2.0, timestep_spacing="trailing",
                                  steps_offset=1, rescale_betas_zero_snr=True, time_shift_type="linear",
                                  sigma_min=0.01, sigma_max=10.0),
    FlowMatchEulerDiscreteScheduler: dict(base_shift=0.7, max_shift=2.0, base_image_seq_len=128,
                                          max_image_seq_len=8192, time_shift_type="linear"),
}


@pytest.mark.parametrize("cls", [UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler])
def test_options_diffusers_ignores_are_accepted(cls):
    """Options diffusers does not read for a flow schedule: any valid value gives the default schedule, in
    diffusers and in jaxvdm alike."""
    kwargs = IGNORED_VALUES[cls]
    assert all((UNIPC_OPTIONS if cls is UniPCMultistepScheduler else EULER_OPTIONS)[k].kind == "ignored"
               for k in kwargs)
    ref = _diffusers(cls, kwargs, 10)
    np.testing.assert_array_equal(ref.sigmas.numpy(), _diffusers(cls, {}, 10).sigmas.numpy())
    ours = scheduler_from_config(_saved_config(ref), 10)
    assert ours == scheduler_from_config(_saved_config(_diffusers(cls, {}, 10)), 10)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())


@pytest.mark.parametrize("cls,table", [(UniPCMultistepScheduler, UNIPC_OPTIONS),
                                       (FlowMatchEulerDiscreteScheduler, EULER_OPTIONS)])
def test_option_tables_cover_every_diffusers_argument(cls, table):
    """jaxvdm's table lists exactly the installed diffusers' __init__ arguments, with diffusers' defaults (a
    diffusers upgrade that adds or changes one fails here)."""
    params = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    assert set(table) == set(params)
    for k, opt in table.items():
        assert opt.default == params[k], k


def test_missing_keys_take_diffusers_defaults():
    """A key absent from the config means diffusers' default, as from_config reads it: no flow_shift is shift
    1.0, no prediction_type is epsilon (refused)."""
    cfg = {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction", "use_flow_sigmas": True}
    ref = UniPCMultistepScheduler.from_config(cfg)
    ref.set_timesteps(10)
    ours = scheduler_from_config(cfg, 10)
    assert ours.shift == 1.0 == ref.config.flow_shift
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    euler = scheduler_from_config({"_class_name": "FlowMatchEulerDiscreteScheduler"}, 10)
    assert isinstance(euler, Euler) and euler.shift == 1.0
    with pytest.raises(ValueError, match="epsilon-prediction UniPC"):
        scheduler_from_config({"_class_name": "UniPCMultistepScheduler"}, 10)
    # a shift passed in overrides the config's
    assert scheduler_from_config(cfg, 10, shift=3.0) == UniPC(10, 3.0)


WAN_UNIPC = _saved_config(UniPCMultistepScheduler(**{**UNIPC_BASE, "flow_shift": 3.0}))
WAN_EULER = _saved_config(FlowMatchEulerDiscreteScheduler(shift=3.0))

# (config edits, what the message must say): every refused option away from its default, and the combinations
# whose diffusers trajectory is not finite.
REFUSALS = [
    (WAN_UNIPC, dict(prediction_type="epsilon", use_flow_sigmas=False),
     "jaxvdm runs flow-matching schedulers; this folder's scheduler is an epsilon-prediction UniPC"),
    (WAN_UNIPC, dict(prediction_type="v_prediction"), "v_prediction-prediction UniPC"),
    (WAN_UNIPC, dict(use_flow_sigmas=False), "use_flow_sigmas=False"),
    (WAN_UNIPC, dict(thresholding=True), "thresholding=True: dynamic thresholding"),
    (WAN_UNIPC, dict(predict_x0=False), "predict_x0=False"),
    (WAN_UNIPC, dict(solver_p="DPMSolverMultistepScheduler"), "solver_p='DPMSolverMultistepScheduler'"),
    (WAN_UNIPC, dict(use_karras_sigmas=True), "use_karras_sigmas=True: diffusers' flow UniPC then takes Karras"),
    (WAN_UNIPC, dict(use_exponential_sigmas=True), "use_exponential_sigmas=True: with use_flow_sigmas"),
    (WAN_UNIPC, dict(use_beta_sigmas=True), "use_beta_sigmas=True"),
    (WAN_UNIPC, dict(use_dynamic_shifting=True), "use_dynamic_shifting=True: WanPipeline calls set_timesteps"),
    (WAN_UNIPC, dict(solver_order=4), "solver_order must be 1, 2 or 3"),
    (WAN_UNIPC, dict(solver_type="bh3"), "solver_type must be one of 'bh1', 'bh2', got 'bh3'"),
    (WAN_UNIPC, dict(final_sigmas_type="sigma_max"), "final_sigmas_type must be one of 'zero', 'sigma_min'"),
    (WAN_UNIPC, dict(solver_type="bh1"), "solver_type='bh1' with final_sigmas_type='zero' is refused"),
    (WAN_UNIPC, dict(lower_order_final=False), "lower_order_final=False with final_sigmas_type='zero'"),
    (WAN_UNIPC, dict(lower_order_final=False, final_sigmas_type="sigma_min", solver_order=3),
     "diffusers' order-3 predictor returns NaN"),
    (WAN_UNIPC, dict(shift_terminal=1.5), "shift_terminal must be in (0, 1)"),
    (WAN_UNIPC, dict(beta_schedule="cosine"), "beta_schedule='cosine': diffusers accepts only"),
    (WAN_UNIPC, dict(timestep_spacing="uniform"), "timestep_spacing='uniform'"),
    (WAN_UNIPC, dict(flow_shift=None), "flow_shift=None: the shift must be a positive number"),
    (WAN_UNIPC, dict(clip_sample=True), "clip_sample=True: diffusers 0.42's UniPCMultistepScheduler has no such"),
    (WAN_UNIPC, dict(_class_name="DDIMScheduler"), "scheduler 'DDIMScheduler' is not supported"),
    (WAN_EULER, dict(use_dynamic_shifting=True), "use_dynamic_shifting=True: WanPipeline calls set_timesteps"),
    (WAN_EULER, dict(stochastic_sampling=True), "stochastic_sampling=True: it draws fresh noise"),
    (WAN_EULER, dict(use_karras_sigmas=True, use_beta_sigmas=True), "diffusers allows only one of them"),
    (WAN_EULER, dict(time_shift_type="cubic"), "time_shift_type='cubic'"),
    (WAN_EULER, dict(flow_shift=3.0), "flow_shift=3.0: diffusers 0.42's FlowMatchEulerDiscreteScheduler has no such"),
]


@pytest.mark.parametrize("base,edits,message", REFUSALS, ids=[str(e) for _, e, _ in REFUSALS])
def test_refused_options_name_option_and_value(base, edits, message):
    with pytest.raises(ValueError) as err:
        scheduler_from_config({**base, **edits}, 10)
    assert message in str(err.value)


def test_refusals_are_reported_together_and_class_names_must_agree():
    with pytest.raises(ValueError) as err:
        scheduler_from_config({**WAN_UNIPC, "thresholding": True, "use_karras_sigmas": True, "foo": 1}, 10)
    msg = str(err.value)
    assert "thresholding=True" in msg and "use_karras_sigmas=True" in msg and "foo=1" in msg
    with pytest.raises(ValueError, match="model_index.json builds the scheduler as 'FlowMatchEulerDiscreteScheduler'"):
        scheduler_spec_from_config(WAN_UNIPC, "FlowMatchEulerDiscreteScheduler")
    with pytest.raises(ValueError, match="no _class_name"):
        scheduler_from_config({k: v for k, v in WAN_UNIPC.items() if k != "_class_name"}, 10)
    with pytest.raises(ValueError, match="shift_terminal=0.1 needs at least 2 steps"):
        scheduler_from_config({**WAN_UNIPC, "shift_terminal": 0.1}, 1)


def test_spec_is_static_data_and_builds_the_scheduler():
    """A SchedulerSpec holds the options (hashable, equal by value, printable) and make_scheduler builds the
    same scheduler from it as the class would; a Wan config gives the plain default spec."""
    spec, shift = scheduler_spec_from_config(WAN_UNIPC)
    assert spec == SchedulerSpec("unipc") and str(spec) == "unipc" and shift == 3.0
    spec3, _ = scheduler_spec_from_config({**WAN_UNIPC, "solver_order": 3, "disable_corrector": [4, 1]})
    assert spec3 == SchedulerSpec("UniPC", solver_order=3, disable_corrector=(1, 4))
    assert hash(spec3) == hash(SchedulerSpec("unipc", (("disable_corrector", [1, 4]), ("solver_order", 3))))
    assert str(spec3) == "unipc(disable_corrector=(1, 4), solver_order=3)"
    sched = make_scheduler(spec3, 10, 5.0)
    assert sched == UniPC(10, 5.0, solver_order=3, disable_corrector=(1, 4)) and hash(sched) == hash(
        UniPC(10, 5.0, solver_order=3, disable_corrector=[4, 1]))
    assert sched != UniPC(10, 5.0) and len(sched.init(jnp.zeros(SHAPE)).x0_history) == 3
    assert make_scheduler(spec3, 10, 5.0, num_train_timesteps=500).num_train_timesteps == 500
    assert SchedulerSpec("unipc", solver_order=2) == SchedulerSpec("unipc")  # defaults are dropped
    with pytest.raises(ValueError, match="euler has no option"):
        SchedulerSpec("euler", solver_order=3)
    with pytest.raises(ValueError, match="unknown scheduler"):
        SchedulerSpec("ddim")
