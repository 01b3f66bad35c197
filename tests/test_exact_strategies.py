"""Exact strategies (cfg, ulysses, ring, fsdp and compositions) equal the single-device run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import rel_err
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxvdm.models.wan.transformer import WanConfig, abstract_transformer, init_transformer
from jaxvdm.models.presets import wan_config
from jaxvdm.sharding.sampling import Denoiser
from jaxvdm.models.schedulers import UniPC
from jaxvdm.sharding import fsdp
from jaxvdm.sharding.mesh import make_mesh, parse_mesh_spec
from jaxvdm.sharding.predict import block_dims, guided_prediction, shard_map, state_specs
from jaxvdm.sharding.registry import resolve

# 3 heads (divides none of 2, 4, 8) and a 3x6x10 latent with patch 1x2x2: 45 tokens (divides none of 2, 4, 8).
CFG = WanConfig(num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=12,
                freq_dim=16, ffn_dim=32, num_layers=2)
SCHED = UniPC(3, shift=3.0)


@pytest.fixture(scope="module")
def setup():
    model = init_transformer(CFG, seed=0)
    noise = jax.random.normal(jax.random.key(0), (1, 4, 3, 6, 10))
    ctx = jax.random.normal(jax.random.key(1), (2, 5, 12))
    ref, _ = Denoiser(model, resolve("single", None), None).sample(noise, ctx, 5.0, SCHED)
    ref1, _ = Denoiser(model, resolve("single", None), None).sample(noise, ctx[:1], 1.0, SCHED)
    return model, noise, ctx, np.asarray(ref), np.asarray(ref1)


@pytest.mark.parametrize(
    "strategy,mesh",
    [
        ("cfg", "cfg=2"),
        ("ulysses", "sp=4"),
        ("ulysses", "sp=8"),
        ("ring", "sp=4"),
        ("ring", "sp=8"),
        ("fsdp", "fsdp=8"),
        ("cfg+ulysses", "cfg=2,sp=4"),
        ("cfg+ring", "cfg=2,sp=4"),
        ("ulysses+fsdp", "fsdp=2,sp=4"),
        ("cfg+ulysses+fsdp", "cfg=2,fsdp=2,sp=2"),
    ],
)
def test_equals_single_device(setup, devices, strategy, mesh):
    model, noise, ctx, ref, _ = setup
    m = make_mesh(parse_mesh_spec(mesh))
    out, _ = Denoiser(model, resolve(strategy, m), m).sample(noise, ctx, 5.0, SCHED)
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("strategy,mesh", [("ulysses", "sp=8"), ("ring", "sp=2"), ("fsdp", "fsdp=4")])
def test_without_guidance_equals_single_device(setup, strategy, mesh):
    model, noise, ctx, _, ref1 = setup
    m = make_mesh(parse_mesh_spec(mesh))
    out, _ = Denoiser(model, resolve(strategy, m), m).sample(noise, ctx[:1], 1.0, SCHED)
    assert rel_err(out, ref1) <= 1e-5


def test_fsdp_per_device_parameter_bytes_on_the_real_model(devices):
    """Wan 1.3B in bf16 on fsdp=4: the compiled step's argument bytes per device are the sharded
    block weights / 4 plus the small replicated parts (measured from the compiled memory analysis)."""
    model = abstract_transformer(wan_config("wan2.1-t2v-1.3b"), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    mesh = make_mesh(fsdp=4)
    plan = resolve("fsdp", mesh)
    graphdef, state = nnx.split(model)
    specs = state_specs(state, plan)
    dims = block_dims(model, plan)

    def predict(st, x, t, ctx, g):
        return guided_prediction(nnx.merge(graphdef, st), x, t, ctx, g, plan=plan, dims=dims)

    f = jax.jit(shard_map(predict, mesh=mesh, in_specs=(specs, P(), P(), P(), P()), out_specs=P()))
    rep = NamedSharding(mesh, P())
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, s)), state, specs)
    x = jax.ShapeDtypeStruct((1, 16, 1, 8, 8), jnp.float32, sharding=rep)
    t = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
    ctx = jax.ShapeDtypeStruct((2, 8, 4096), jnp.float32, sharding=rep)
    stats = f.lower(abstract, x, t, ctx, t).compile().memory_analysis()
    total = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(state))
    block = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(nnx.state(model.blocks)))
    sharded, replicated = fsdp.per_device_bytes(state, 4)
    assert sharded == block // 4  # every block tensor of the 1.3B model divides 4
    assert replicated == total - block
    inputs = 4 * (16 * 8 * 8 + 1 + 2 * 8 * 4096)
    assert stats.argument_size_in_bytes <= sharded + replicated + inputs + 1024
    assert stats.argument_size_in_bytes < 0.3 * total  # vs 1.0 * total replicated


def test_errors(setup, devices):
    with pytest.raises(ValueError, match="needs a mesh axis named 'sp'"):
        resolve("ulysses", make_mesh(cfg=2))
    with pytest.raises(ValueError, match="needs mesh axis 'cfg' of size 2, got 4"):
        resolve("cfg", make_mesh(cfg=4))
    with pytest.raises(ValueError, match="needs 16 devices but only 8 are available"):
        make_mesh(sp=16)
    with pytest.raises(ValueError, match="unknown strategy 'uly'"):
        resolve("uly", make_mesh(sp=2))
    with pytest.raises(ValueError, match="unknown option"):
        resolve("ulysses", make_mesh(sp=2), {"overlap": 0.5})
    with pytest.raises(ValueError, match="mesh axis 'lp' has size 2 but strategy 'ulysses' does not use it"):
        resolve("ulysses", make_mesh(sp=2, lp=2))
    with pytest.raises(ValueError, match="both need mesh axis 'sp'"):
        resolve("ulysses+ring", make_mesh(sp=2))
    with pytest.raises(ValueError, match="ring\\+fsdp is not supported"):
        resolve("ring+fsdp", make_mesh(sp=2, fsdp=2))
    with pytest.raises(ValueError, match="bad mesh axis"):
        parse_mesh_spec("cfg=two")
    m = make_mesh(sp=2)
    assert [d.id for d in m.devices.flat] == [0, 1]  # a smaller mesh takes the first devices
