"""Latent Parallelism on devices: exact limits, global positions, composition, errors."""

import jax
import numpy as np
import pytest
from helpers import rel_err

from jaxvdm.models.wan import rope as rope_lib
from jaxvdm.models.wan.transformer import WanConfig, init_transformer
from jaxvdm.sharding.sampling import Denoiser
from jaxvdm.models.schedulers import UniPC
from jaxvdm.sharding import lp, lp_partition
from jaxvdm.sharding.mesh import make_mesh, parse_mesh_spec
from jaxvdm.sharding.registry import resolve

CFG = WanConfig(num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=12,
                freq_dim=16, ffn_dim=32, num_layers=2)
SHAPE = (1, 4, 8, 8, 16)  # token grid 8 x 4 x 8: every axis has >= 4 patches
SCHED = UniPC(4, shift=3.0)  # 4 steps: the rotation visits T, H, W, T


@pytest.fixture(scope="module")
def setup():
    model = init_transformer(CFG, seed=0)
    noise = jax.random.normal(jax.random.key(0), SHAPE)
    ctx = jax.random.normal(jax.random.key(1), (2, 5, 12))
    ref, _ = Denoiser(model, resolve("single", None), None).sample(noise, ctx, 5.0, SCHED)
    return model, noise, ctx, np.asarray(ref)


def _lp(model, noise, ctx, strategy, mesh, **opts):
    m = make_mesh(parse_mesh_spec(mesh))
    plan = resolve(strategy, m, opts)
    out, _ = Denoiser(model, plan, m).sample(noise, ctx, 5.0, SCHED)
    return np.asarray(out)


@pytest.mark.parametrize("strategy,mesh,overlap", [("lp", "lp=4", 3.0), ("lp", "lp=8", 7.0), ("lp", "lp=1", 0.0),
                                                   ("lp+cfg", "cfg=2,lp=4", 3.0), ("lp+ulysses", "lp=2,sp=4", 1.0),
                                                   ("lp+fsdp", "lp=2,fsdp=4", 1.0)])
def test_full_overlap_and_k1_equal_single_device(setup, devices, strategy, mesh, overlap):
    model, noise, ctx, ref = setup
    out = _lp(model, noise, ctx, strategy, mesh, overlap=overlap)
    assert rel_err(out, ref) <= 1e-5


def test_partial_overlap_is_an_approximation_and_deterministic(setup):
    model, noise, ctx, ref = setup
    a = _lp(model, noise, ctx, "lp", "lp=4", overlap=0.5)
    b = _lp(model, noise, ctx, "lp", "lp=4", overlap=0.5, ramp="cosine")
    assert 1e-4 < rel_err(a, ref) < 0.5
    assert rel_err(a, b) > 1e-6  # the ramp matters
    np.testing.assert_array_equal(a, _lp(model, noise, ctx, "lp", "lp=4", overlap=0.5))


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


def test_windows_rotate_and_fall_back():
    plan = resolve("lp", make_mesh(lp=4), {"overlap": 0.5})
    w = lp.windows_for(plan, SHAPE, CFG.patch_size, 7)
    assert [w(i).axis for i in range(7)] == [2, 3, 4, 2, 3, 4, 2]
    # T has 2 patches < K=4: the rotation falls back to H, then W
    w = lp.windows_for(plan, (1, 4, 2, 8, 16), CFG.patch_size, 3)
    assert [w(i).axis for i in range(3)] == [3, 3, 4]
    for i in range(3):  # one window length, starts inside the axis, weights a partition of unity
        win = w(i)
        n = (1, 4, 2, 8, 16)[win.axis]
        assert np.all(win.starts >= 0) and np.all(win.starts + win.length <= n)
        total = np.zeros(n)
        for k in range(4):
            total[win.starts[k]:win.starts[k] + win.length] += win.weights[k]
        np.testing.assert_allclose(total, 1.0, atol=1e-6)


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
