"""Rotary positions past the table are never clipped: they raise where they are known, and are NaN where traced.

diffusers' Wan transformer slices its table with the token grid, so a grid longer than ``rope_max_seq_len``
fails there (a RuntimeError from ``view``); jaxvdm raises a ValueError naming the axis, the largest position
and the limit. A grid at the limit runs and equals diffusers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_err

from jaxvdm.models.checkpoint import model_from_params
from jaxvdm.models.wan import rope as rope_lib
from jaxvdm.models.wan.transformer import WanConfig, init_transformer
from jaxvdm.models.wan.transformer.keys import params_from_diffusers
from jaxvdm.models.wan.transformer.model import abstract_transformer

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

HEAD_DIM = 12
LIMIT = 8


def test_check_grid_at_and_past_the_limit():
    rope_lib.check_grid((LIMIT, LIMIT, LIMIT), LIMIT)  # positions 0..7 on every axis: fine
    rope_lib.check_grid((2, 3, 4), LIMIT, offset=(LIMIT - 2, LIMIT - 3, LIMIT - 4))
    for axis, grid, offset in [(0, (LIMIT + 1, 1, 1), (0, 0, 0)), (1, (1, LIMIT, 1), (0, 1, 0)),
                               (2, (1, 1, 3), (0, 0, LIMIT - 2))]:
        with pytest.raises(ValueError) as err:
            rope_lib.check_grid(grid, LIMIT, offset)
        msg = str(err.value)
        assert f"on the {rope_lib.AXES[axis]} axis reach {LIMIT}" in msg  # the axis and the largest position
        assert f"table of {LIMIT} positions" in msg and "rope_max_seq_len" in msg  # the limit
    with pytest.raises(ValueError, match=r"on the height \(h\) axis start at -1"):
        rope_lib.check_grid((1, 2, 1), LIMIT, offset=(0, -1, 0))


def test_concrete_positions_past_the_table_raise_and_traced_ones_are_nan():
    inside = rope_lib.grid_positions((2, 3, LIMIT))  # width positions 0..7
    cos, sin = rope_lib.rope_cos_sin(inside, HEAD_DIM, LIMIT)
    assert np.all(np.isfinite(cos)) and np.all(np.isfinite(sin))
    past = rope_lib.grid_positions((2, 3, 2), (0, 0, LIMIT - 1))  # width positions 7, 8
    with pytest.raises(ValueError, match=rf"width \(w\) axis reach {LIMIT} .* table of {LIMIT} positions"):
        rope_lib.rope_cos_sin(past, HEAD_DIM, LIMIT)
    with pytest.raises(ValueError, match="start at -2"):
        rope_lib.rope_cos_sin(rope_lib.grid_positions((1, 1, 1), (-2, 0, 0)), HEAD_DIM, LIMIT)

    # Traced offsets cannot be checked: the rows outside the table are NaN, never a clipped rotation.
    traced = jax.jit(lambda o: rope_lib.rope_cos_sin(rope_lib.grid_positions((2, 3, 2), o), HEAD_DIM, LIMIT))
    c, s = (np.asarray(a) for a in traced(jnp.array([0, 0, LIMIT - 1])))
    w = np.asarray(past)[:, 2]
    assert np.all(np.isnan(c[w == LIMIT])) and np.all(np.isnan(s[w == LIMIT]))
    ref_c, ref_s = rope_lib.rope_cos_sin(past[w < LIMIT], HEAD_DIM, LIMIT)
    np.testing.assert_array_equal(c[w < LIMIT], ref_c)
    np.testing.assert_array_equal(s[w < LIMIT], ref_s)
    c_neg, _ = traced(jnp.array([-1, 0, 0]))
    assert np.all(np.isnan(np.asarray(c_neg)[:6]))  # frame -1: out of the table too (not wrapped to the end)
    assert np.all(np.isfinite(np.asarray(c_neg)[6:]))


CFG = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=HEAD_DIM, in_channels=4, out_channels=4,
           text_dim=8, freq_dim=16, ffn_dim=16, num_layers=1, rope_max_seq_len=LIMIT)


def test_transformer_at_the_limit_runs_and_past_it_raises():
    """A latent whose token grid is the table (8 token columns) equals diffusers; one more column raises here
    and in diffusers."""
    torch.manual_seed(0)
    m = diffusers.WanTransformer3DModel(**CFG).eval()
    cfg = WanConfig(**CFG)
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    ours = model_from_params(abstract_transformer(cfg, dtype=jnp.float32, param_dtype=jnp.float32),
                             params_from_diffusers(cfg, sd))
    rng = np.random.default_rng(0)
    ctx = rng.standard_normal((1, 3, 8), dtype=np.float32)
    ts = np.array([300.0], np.float32)
    at = rng.standard_normal((1, 4, 2, 4, 2 * LIMIT), dtype=np.float32)  # token grid (2, 2, 8)
    with torch.no_grad():
        want = m(torch.from_numpy(at), torch.from_numpy(ts), torch.from_numpy(ctx), return_dict=False)[0].numpy()
    got = np.asarray(ours(jnp.asarray(at), jnp.asarray(ts), jnp.asarray(ctx)))
    assert rel_err(got, want) <= 1e-5

    past = rng.standard_normal((1, 4, 2, 4, 2 * LIMIT + 2), dtype=np.float32)  # token grid (2, 2, 9)
    with torch.no_grad(), pytest.raises(RuntimeError):
        m(torch.from_numpy(past), torch.from_numpy(ts), torch.from_numpy(ctx), return_dict=False)
    with pytest.raises(ValueError, match=rf"width \(w\) axis reach {LIMIT} .* table of {LIMIT} positions"):
        ours(jnp.asarray(past), jnp.asarray(ts), jnp.asarray(ctx))
    # Inside jit the positions are traced: the video is NaN, not silently wrong.
    out = np.asarray(jax.jit(lambda x, t, c: ours(x, t, c))(jnp.asarray(past), jnp.asarray(ts), jnp.asarray(ctx)))
    assert np.all(np.isnan(out))


def test_model_rope_takes_its_limit_from_the_config():
    model = init_transformer(WanConfig(**CFG), seed=0)
    with pytest.raises(ValueError, match=rf"frame \(t\) axis reach {LIMIT}"):
        model.rope(rope_lib.grid_positions((LIMIT + 1, 1, 1)))
