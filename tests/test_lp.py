"""Latent Parallelism on devices against an independent oracle; exact limits; composition; ParaStep x LP.

The oracle below is written from the method (LATENT_PARALLELISM.md §3.1, §3.4, §4.2, §8.2 Option A) and
shares no code with ``jaxvdm.sharding.lp`` / ``lp_partition`` / ``predict``: for every step it slices the
latent on the host with numpy into the windows the rule defines, runs the plain one-device transformer
(``model(...)``, its public forward) on each window with the window's global token offset, blends the
guided predictions with weights computed by numpy from the formula, and steps the scheduler.
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_err

from jaxvdm.models.schedulers import UniPC
from jaxvdm.models.wan import rope as rope_lib
from jaxvdm.models.wan.transformer import WanConfig, init_transformer
from jaxvdm.sharding import lp, lp_partition, parastep
from jaxvdm.sharding.mesh import make_mesh, parse_mesh_spec
from jaxvdm.sharding.registry import resolve
from jaxvdm.sharding.sampling import Denoiser

CFG = WanConfig(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=12,
                freq_dim=16, ffn_dim=32, num_layers=2)
SHAPE = (1, 4, 7, 10, 14)  # token grid 7 x 5 x 7: balanced cores are uneven for K = 2, 3, 4 on every axis
PATCH = {"T": 1, "H": 2, "W": 2}
DIM = {"T": 2, "H": 3, "W": 4}
G = 5.0


@pytest.fixture(scope="module")
def setup():
    model = init_transformer(CFG, seed=0)
    noise = jax.random.normal(jax.random.key(0), SHAPE)
    ctx = jax.random.normal(jax.random.key(1), (2, 5, 12))
    forward = jax.jit(lambda x, t, c, off: model(x, jnp.full((x.shape[0],), t), c, attention="xla", offset=off))
    return model, noise, ctx, forward


# ------------------------------------------------------------------------------------------ the oracle


def oracle_windows(n: int, k: int, r: float):
    """Starts, length and cores (patches) of the run-time windows of an ``n``-patch axis over ``k`` devices:
    balanced cores, overlap ``o = floor(r * ceil(n/k))``, one length = the longest of the paper's clipped
    windows ``[max(0, j*c - o), min(n, (j+1)*c + o))``, each start ``core_start - o`` clamped inside."""
    c = -(-n // k)
    o = math.floor(r * c + 1e-9)
    length = max(min(n, (j + 1) * c + o) - max(0, j * c - o) for j in range(k) if max(0, j * c - o) < n)
    cores = [(j * n // k, (j + 1) * n // k) for j in range(k)]
    starts = [min(max(a - o, 0), n - length) for a, _ in cores]
    return starts, length, cores, o


def oracle_weights(n: int, k: int, r: float, p: int) -> np.ndarray:
    """``[k, n*p]`` normalised blend weights over the axis in latent indices: 1 on a device's core, a linear
    ramp ``1 - d/(A+1)`` over the ``A = p*min(o, neighbouring core)`` indices beside each inner core edge,
    0 elsewhere (every window the whole axis: 1 everywhere), divided by their sum."""
    starts, length, cores, o = oracle_windows(n, k, r)
    w = np.zeros((k, n * p))
    if length == n:
        w[:] = 1.0
    else:
        for j, (a, b) in enumerate(cores):
            w[j, a * p:b * p] = 1.0
            for side, nb in ((-1, j - 1), (1, j + 1)):
                if not 0 <= nb < k:
                    continue
                A = p * min(o, cores[nb][1] - cores[nb][0])
                for d in range(1, A + 1):
                    x = a * p - d if side < 0 else b * p - 1 + d
                    w[j, x] = 1.0 - d / (A + 1.0)
    return w / w.sum(0, keepdims=True)


def oracle_prediction(forward, x, t, ctx, axis: str | None, k: int, r: float):
    """The blended guided prediction of one LP step (``axis=None``: the exact full-latent step)."""
    x = np.asarray(x)
    if axis is None:
        v = np.asarray(forward(jnp.concatenate([x, x]), t, ctx, jnp.zeros(3, jnp.int32)))
        return v[1:2] + G * (v[0:1] - v[1:2])
    d, p = DIM[axis], PATCH[axis]
    n = x.shape[d] // p
    starts, length, _, _ = oracle_windows(n, k, r)
    weights = oracle_weights(n, k, r, p)
    out = np.zeros_like(x)
    for j, s in enumerate(starts):
        sl = [slice(None)] * 5
        sl[d] = slice(s * p, (s + length) * p)
        xw = x[tuple(sl)]
        off = np.zeros(3, np.int32)
        off[d - 2] = s
        v = np.asarray(forward(jnp.asarray(np.concatenate([xw, xw])), t, ctx, jnp.asarray(off)))
        v = v[1:2] + G * (v[0:1] - v[1:2])
        shape = [1] * 5
        shape[d] = length * p
        out[tuple(sl)] += v * weights[j, s * p:(s + length) * p].reshape(shape)
    return out


def oracle_run(forward, noise, ctx, sched, steps):
    """``steps``: per step ``(axis or None, k, r)``."""
    x = jnp.asarray(noise, jnp.float32)
    st = sched.init(x)
    for i, (axis, k, r) in enumerate(steps):
        v = oracle_prediction(forward, x, sched.timestep(i), ctx, axis, k, r)
        x, st = sched.step(st, jnp.asarray(v), x, i)
    return np.asarray(x)


def unite_steps(num_steps: int, k: int, r_max: float, grid: dict):
    """The artifact's schedule (§4.2): step 0 exact; then the base rotation H, W, T, ..., no T from 70 %,
    H/W alternating from 80 %, H only from 92 %; overlap decaying from r_max to r_max / 2."""
    out = [(None, k, 0.0)]
    ok = {a: grid[a] >= k for a in "THW"}
    for i in range(1, num_steps):
        p = i / max(num_steps - 1, 1)
        r = r_max * (1 - p) + 0.5 * r_max * p
        if p >= 0.92:
            axis = "H" if ok["H"] else "W"
        elif p >= 0.80:
            axis = ("H", "W")[i % 2] if ok[("H", "W")[i % 2]] else ("W", "H")[i % 2]
        else:
            axis = "THW"[i % 3]
            if not ok[axis]:
                axis = next((a for a in ("H", "W") if ok[a] and a != axis), "T")
            if p >= 0.70 and axis == "T":
                axis = "H" if ok["H"] else "W"
        out.append((axis, k, min(r, k - 1)))
    return out


def _lp(model, noise, ctx, strategy, mesh, sched, **opts):
    m = make_mesh(parse_mesh_spec(mesh))
    out, _ = Denoiser(model, resolve(strategy, m, opts), m, attention="xla").sample(noise, ctx, G, sched)
    return np.asarray(out)


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("axis", ["T", "H", "W"])
def test_lp_equals_the_independent_oracle(setup, devices, k, axis):
    """Partial overlap on each axis, K = 2, 3, 4, uneven cores: the shard_map run (windows cut at run-time
    offsets, global RoPE positions, one psum) equals the host oracle."""
    model, noise, ctx, forward = setup
    sched = UniPC(2, shift=3.0)
    n = SHAPE[DIM[axis]] // PATCH[axis]
    cores = [b - a for a, b in oracle_windows(n, k, 0.5)[2]]
    assert len(set(cores)) > 1 or n % k, (axis, k)  # uneven cores, on purpose
    out = _lp(model, noise, ctx, "lp", f"lp={k}", sched, overlap=0.5, schedule=axis)
    ref = oracle_run(forward, noise, ctx, sched, [(axis, k, 0.5)] * sched.num_steps)
    assert rel_err(out, ref) <= 1e-5


def test_rotation_and_composition_with_cfg_equal_the_oracle(setup, devices):
    model, noise, ctx, forward = setup
    sched = UniPC(4, shift=3.0)
    ref = oracle_run(forward, noise, ctx, sched, [(a, 4, 0.5) for a in "THWT"])
    assert rel_err(_lp(model, noise, ctx, "lp", "lp=4", sched, overlap=0.5), ref) <= 1e-5
    assert rel_err(_lp(model, noise, ctx, "lp+cfg", "cfg=2,lp=4", sched, overlap=0.5), ref) <= 1e-5


def test_unite_schedule_on_devices_equals_its_oracle(setup, devices):
    """The artifact's schedule: an exact first step computed over the mesh (tokens split over lp, Ulysses
    attention), decaying overlap, the late-phase axis rules."""
    model, noise, ctx, forward = setup
    sched = UniPC(6, shift=3.0)
    grid = {a: SHAPE[DIM[a]] // PATCH[a] for a in "THW"}
    steps = unite_steps(6, 2, 0.4, grid)
    assert [s[0] for s in steps] == [None, "H", "W", "T", "H", "H"]  # p = i/5: T until 0.7, H from 0.8 (even i)
    out = _lp(model, noise, ctx, "lp", "lp=2", sched, schedule="unite", r_max=0.4)
    assert rel_err(out, oracle_run(forward, noise, ctx, sched, steps)) <= 1e-5
    one = UniPC(1, shift=3.0)  # the first step alone is exact: the single-device step
    exact, _ = Denoiser(model, resolve("single", None), None, attention="xla").sample(noise, ctx, G, one)
    assert rel_err(_lp(model, noise, ctx, "lp", "lp=2", one, schedule="unite"), exact) <= 1e-5


@pytest.mark.parametrize("strategy,mesh,overlap", [("lp", "lp=2", 1.0), ("lp", "lp=4", 3.0), ("lp", "lp=1", 0.0),
                                                   ("lp+ulysses", "lp=2,sp=4", 1.0), ("lp+fsdp", "lp=2,fsdp=4", 1.0)])
def test_full_overlap_and_k1_equal_single_device(setup, devices, strategy, mesh, overlap):
    model, noise, ctx, _ = setup
    sched = UniPC(3, shift=3.0)
    ref, _ = Denoiser(model, resolve("single", None), None, attention="xla").sample(noise, ctx, G, sched)
    assert rel_err(_lp(model, noise, ctx, strategy, mesh, sched, overlap=overlap), ref) <= 1e-5


def test_window_length_is_the_papers_longest_window():
    """§8.2 corrected: at K = 2 the windows are c + o long (both are edge windows), not min(n, c + 2o)."""
    expected = {(21, 2): 16, (45, 2): 34, (80, 2): 60, (30, 2): 22, (52, 2): 39,  # Wan 480p T, 720p H/W, 480p H/W
                (21, 4): 12, (30, 4): 16, (52, 4): 25, (21, 8): 5, (30, 8): 8, (52, 8): 13}
    for (n, k), length in expected.items():
        assert lp_partition.uniform_windows(n, k, 0.5).length == length == oracle_windows(n, k, 0.5)[1], (n, k)
    plan = resolve("lp", make_mesh(lp=2), {"overlap": 0.5})
    w = lp.windows_for(plan, (1, 16, 21, 60, 104), (1, 2, 2), 3)
    assert [(w(i).axis, w(i).length) for i in range(3)] == [(2, 16), (3, 44), (4, 78)]  # latent indices


def test_window_tokens_get_global_rotary_phases():
    """Each window's tokens, at the offset LP gives them, rotate exactly as the same global tokens."""
    head_dim, grid = 8, (8, 4, 8)
    full_cos, full_sin = rope_lib.rope_cos_sin(rope_lib.grid_positions(grid), head_dim)
    full_cos = np.asarray(full_cos).reshape(*grid, -1)
    full_sin = np.asarray(full_sin).reshape(*grid, -1)
    for axis in "THW":
        n = dict(zip("THW", grid))[axis]
        part = lp_partition.uniform_windows(n, 4, 0.5)
        offsets = lp_partition.window_token_offsets(part, axis)
        for k in range(4):
            sub = list(grid)
            sub["THW".index(axis)] = int(part.length)
            c, s = rope_lib.rope_cos_sin(rope_lib.grid_positions(tuple(sub), tuple(offsets[k])), head_dim)
            sl = tuple(slice(int(o), int(o) + m) for o, m in zip(offsets[k], sub))
            np.testing.assert_array_equal(np.asarray(c).reshape(*sub, -1), full_cos[sl])
            np.testing.assert_array_equal(np.asarray(s).reshape(*sub, -1), full_sin[sl])


def test_degenerate_partitions_are_never_silent(devices):
    """Every window the whole axis although overlap < K-1, or an overlap that rounds to 0 patches although
    overlap > 0: one warning line naming what gives what was asked; every axis whole: refused."""
    plan = resolve("lp", make_mesh(lp=8), {"overlap": 0.25})
    with pytest.warns(UserWarning, match=r"overlap=0.25 rounds to 0 patches on the T axis .* 1 patch there is 0.333"):
        lp.windows_for(plan, (1, 16, 21, 60, 104), (1, 2, 2), 3)  # Wan 480p x 81 on 8 devices: T has cores of 3
    plan = resolve("lp", make_mesh(lp=2), {"overlap": 0.5})
    with pytest.warns(UserWarning, match=r"makes every window the whole T axis \(3 patches\).* below 0.5"):
        lp.windows_for(plan, (1, 4, 3, 16, 16), (1, 2, 2), 3)
    with pytest.raises(ValueError, match="every window of every step the whole axis.*every device would compute"):
        lp.windows_for(resolve("lp", make_mesh(lp=2), {"overlap": 0.5}), (1, 4, 3, 6, 6), (1, 2, 2), 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for explicitly: no warning
        lp.windows_for(resolve("lp", make_mesh(lp=2), {"overlap": 0.0}), SHAPE, (1, 2, 2), 3)
        lp.windows_for(resolve("lp", make_mesh(lp=2), {"overlap": 1.0}), SHAPE, (1, 2, 2), 3)


def test_an_lp_plan_without_windows_is_an_error(setup, devices):
    from jaxvdm.sharding.predict import guided_prediction

    model, noise, ctx, _ = setup
    plan = resolve("lp", make_mesh(lp=2))
    with pytest.raises(ValueError, match="without its step's partition"):
        guided_prediction(model, noise, 0.5, ctx, 5.0, plan=plan, lp=None)


def test_parastep_with_lp_keeps_rotating(setup, devices, monkeypatch):
    """Each evaluation of a ParaStep round uses its own step's partition: recorded at run time, and the
    parallel run equals the serial re-enactment whose every call uses its step's LP oracle."""
    model, noise, ctx, forward = setup
    sched = UniPC(9, shift=3.0)
    mesh = make_mesh(step=3, lp=2)
    plan = resolve("parastep+lp", mesh, {"warmup": 2, "overlap": 0.5})
    windows = lp.windows_for(plan, SHAPE, CFG.patch_size, 9)
    assert [windows(i).axis for i in range(9)] == [2, 3, 4] * 3
    assert [w.axis for w in parastep.round_windows([windows(i) for i in range(9)], 5, 3)] == [4, 2, 3]
    seen = []
    real = parastep.guided_prediction

    def recording(model, x, t, ctx, g, *, plan, lp, attention, dims):
        jax.debug.callback(lambda t_, a=lp.axis: seen.append((float(t_), a)), t)
        return real(model, x, t, ctx, g, plan=plan, lp=lp, attention=attention, dims=dims)

    monkeypatch.setattr(parastep, "guided_prediction", recording)
    out, _ = parastep.sample(model, plan, mesh, noise, ctx, G, sched, attention="xla")
    step_of = {float(sched.timestep(i)): i for i in range(9)}
    used = {(step_of[t], a) for t, a in seen}
    assert {i for i, _ in used} == set(range(2, 9))  # every round step was evaluated
    assert all(a == windows(i).axis for i, a in used), sorted(used)
    ref = parastep.serial_reenactment(lambda x, i, p: jnp.asarray(
        oracle_prediction(forward, x, sched.timestep(i), ctx, "THW"[windows(p).axis - 2], 2, 0.5)),
        sched, noise, warmup=2, n=3)
    assert rel_err(out, ref) <= 1e-5


def test_errors():
    plan8 = resolve("lp", make_mesh(lp=8), {"overlap": 0.5})
    with pytest.raises(ValueError, match="no axis"):
        lp.windows_for(plan8, (1, 4, 2, 4, 4), CFG.patch_size, 3)  # 2 x 2 x 2 patches < 8 devices
    with pytest.raises(ValueError, match="overlap"):
        lp.windows_for(resolve("lp", make_mesh(lp=4), {"overlap": 3.5}), SHAPE, CFG.patch_size, 3)
    with pytest.raises(ValueError, match="overlap"):
        lp.windows_for(resolve("lp", make_mesh(lp=4), {"overlap": -0.1}), SHAPE, CFG.patch_size, 3)
    with pytest.raises(ValueError, match="multiple of"):
        lp.windows_for(resolve("lp", make_mesh(lp=2), {}), (1, 4, 8, 7, 16), CFG.patch_size, 3)
    with pytest.raises(ValueError, match="schedule must be one of"):
        lp.windows_for(resolve("lp", make_mesh(lp=2), {"schedule": "spiral"}), SHAPE, CFG.patch_size, 3)
