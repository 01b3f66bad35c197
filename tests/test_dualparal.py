"""DualParal on devices: the pipelined run equals the serial oracle; memory per stage; errors."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import rel_err
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxvdm.models.wan.transformer import WanConfig, abstract_transformer, init_transformer
from jaxvdm.models.presets import wan_config
from jaxvdm.sharding import sampling
from jaxvdm.models.schedulers import UniPC
from jaxvdm.sharding import dualparal as dp
from jaxvdm.sharding import dualparal_pipeline
from jaxvdm.sharding.mesh import make_mesh
from jaxvdm.sharding.registry import resolve

# 9 layers: divisible by none of 2, 4, 8 stages
CFG = WanConfig(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=12,
                freq_dim=16, ffn_dim=32, num_layers=9)
B, C, NB = 2, 1, 9
SHAPE = (1, 4, C + NB * B, 4, 4)
SCHED = UniPC(3, shift=3.0)


@pytest.fixture(scope="module")
def setup():
    model = init_transformer(CFG, seed=0)
    noise = jax.random.normal(jax.random.key(0), SHAPE)
    ctx = jax.random.normal(jax.random.key(1), (2, 5, 12))
    plan = resolve("dualparal", None, dict(block_frames=B, context_frames=C))
    ref, _ = dp.sample(model, plan, None, noise, ctx, 5.0, SCHED)
    return model, noise, ctx, np.asarray(ref)


@pytest.mark.parametrize("mesh", [dict(stage=2), dict(stage=4), dict(stage=8), dict(cfg=2, stage=4)])
def test_pipeline_equals_serial_oracle(setup, devices, mesh):
    model, noise, ctx, ref = setup
    m = make_mesh(**mesh)
    strategy = "dualparal+cfg" if "cfg" in mesh else "dualparal"
    plan = resolve(strategy, m, dict(block_frames=B, context_frames=C))
    out, info = dp.sample(model, plan, m, noise, ctx, 5.0, SCHED)
    assert rel_err(out, ref) <= 1e-5
    assert 0.0 < info["bubble_ratio"] < 1.0


def test_one_block_is_the_ordinary_loop(setup):
    model, noise, ctx, _ = setup
    geo = dp.geometry((1, 4, B + C, 4, 4), CFG.patch_size, B, C)
    x0 = dp.coordinated_noise(noise[:, :, : B + C], geo)
    out, _ = dp.serial_oracle(model, x0, ctx, 5.0, SCHED, geo)
    ref, _ = sampling.sample(model, resolve("single", None), None, x0, ctx, 5.0, SCHED)
    assert rel_err(out, ref) <= 1e-5


def test_context_and_cache_reach_the_model(setup):
    """Neighbouring blocks influence each other: with context, block 1 differs from denoising it alone."""
    model, noise, ctx, ref = setup
    geo = dp.geometry((1, 4, B + C, 4, 4), CFG.patch_size, B, C)
    x0 = dp.coordinated_noise(noise, dp.geometry(SHAPE, CFG.patch_size, B, C))
    alone, _ = dp.serial_oracle(model, x0[:, :, B:B + B + C], ctx, 5.0, SCHED, geo)
    assert rel_err(ref[:, :, C + B:C + 2 * B], np.asarray(alone)[:, :, C:]) > 1e-3


def test_stage_parameter_bytes_are_a_share_of_the_blocks(devices):
    """Wan 1.3B (30 layers) on 4 stages: each device holds 8 padded layers of block weights + the rest."""
    model = abstract_transformer(wan_config("wan2.1-t2v-1.3b"), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    mesh = make_mesh(stage=4)
    plan = resolve("dualparal", mesh, dict(block_frames=2, context_frames=1))
    geo = dp.geometry((1, 16, 1 + 5 * 2, 4, 4), (1, 2, 2), 2, 1)
    f, _, arrays, state, specs = dualparal_pipeline.build(model, plan, mesh, geo, UniPC(2), with_cfg=True)
    rep = NamedSharding(mesh, P())
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, s)),
                            state, specs)
    args = (abstract, jax.ShapeDtypeStruct((1, 16, 11, 4, 4), jnp.float32, sharding=rep),
            jax.ShapeDtypeStruct((2, 8, 4096), jnp.float32, sharding=rep),
            jax.ShapeDtypeStruct((), jnp.float32, sharding=rep),
            {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=rep) for k, v in arrays.items()})
    stats = f.lower(*args).compile().memory_analysis()
    block = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(nnx.state(model.blocks)))
    total = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(nnx.state(model)))
    per_layer = block // 30
    expected = 8 * per_layer + (total - block)  # ceil(30/4) = 8 layers per stage
    assert stats.argument_size_in_bytes >= expected
    assert stats.argument_size_in_bytes <= expected + 2_000_000
    assert stats.argument_size_in_bytes < 0.35 * total


def test_errors(setup):
    model, noise, ctx, _ = setup
    with pytest.raises(ValueError, match="C > B|context"):
        dp.geometry(SHAPE, CFG.patch_size, 2, 3)
    with pytest.raises(ValueError, match="latent frames"):
        dp.geometry((1, 4, 20, 4, 4), CFG.patch_size, 2, 1)
    with pytest.raises(ValueError, match="more stages \\(8\\) than transformer layers \\(2\\)"):
        dp.stage_layers(2, 8)
    m = make_mesh(stage=4)
    plan = resolve("dualparal", m, dict(block_frames=2, context_frames=1))
    with pytest.warns(UserWarning, match="3 blocks cannot fill a pipeline of 4 stages .* bubble ratio"):
        dp.sample(model, plan, m, noise[:, :, :7], ctx, 5.0, SCHED)
