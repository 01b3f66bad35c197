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
    out = {"x64": [], "x32": [], "last_sample": [], "x0_prev": [], "x0_prev2": [], "orders": []}
    for i in range(num_steps):
        x64 = ref64.step(torch.tensor(vs_np[i]), ref64.timesteps[i], x64).prev_sample
        x32 = ref32.step(torch.tensor(vs_np[i], dtype=torch.float32), ref32.timesteps[i], x32).prev_sample
        out["x64"].append(x64.numpy())
        out["x32"].append(x32.numpy())
        out["orders"].append(ref64.this_order)
        # What diffusers keeps between steps: the corrected sample and the last two data predictions.
        out["last_sample"].append(ref64.last_sample.numpy())
        out["x0_prev"].append(ref64.model_outputs[-1].numpy())
        out["x0_prev2"].append(None if i == 0 else ref64.model_outputs[-2].numpy())
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
            est.append(rel_err(state.x0_prev, ref["x0_prev"][i]))
            if i >= 1:
                est.append(rel_err(state.x0_prev2, ref["x0_prev2"][i]))
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
