"""ParaStep: N=1 equals the serial loop; the shard_map run equals a serial re-enactment; calls and HLO."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_err

from jaxvdm.models.wan.transformer import WanConfig, init_transformer
from jaxvdm.models.schedulers import Euler, UniPC
from jaxvdm.sharding import parastep, sampling
from jaxvdm.sharding.mesh import make_mesh
from jaxvdm.sharding.registry import resolve

CFG = WanConfig(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=12,
                freq_dim=16, ffn_dim=32, num_layers=2)


@pytest.fixture(scope="module")
def setup():
    model = init_transformer(CFG, seed=3)
    noise = jax.random.normal(jax.random.key(0), (1, 4, 2, 4, 6))
    ctx = jax.random.normal(jax.random.key(1), (2, 5, 12))
    single = sampling.placed(model, resolve("single", None), None)
    f = jax.jit(single.predict_fn(None))

    def predict(x, i, p, sched):
        return f(single.state, x, sched.timestep(i), ctx, jnp.float32(4.0))

    return model, noise, ctx, single, predict


def _run(model, noise, ctx, sched, n, warmup, cache, extra="", mesh_extra=None):
    mesh = make_mesh(step=n, **(mesh_extra or {}))
    plan = resolve("parastep" + extra, mesh, {"warmup": warmup, "cache": cache})
    x, info = parastep.sample(model, plan, mesh, noise, ctx, 4.0, sched)
    return np.asarray(x), info


@pytest.mark.parametrize("sched", [UniPC(8, shift=3.0), Euler(6, shift=3.0)], ids=["unipc", "euler"])
def test_n1_equals_serial_loop(setup, sched):
    model, noise, ctx, single, _ = setup
    ref, _ = single.sample(noise, ctx, 4.0, sched)
    out, info = _run(model, noise, ctx, sched, 1, 2, "own")
    assert rel_err(out, ref) <= 1e-6
    assert info["sequential_model_calls"] == sched.num_steps


@pytest.mark.parametrize("n,warmup,steps,cache", [(4, 2, 11, "own"), (4, 3, 12, "fresh"), (2, 2, 9, "own"),
                                                  (8, 1, 10, "fresh")])
def test_parallel_equals_serial_reenactment(setup, n, warmup, steps, cache):
    model, noise, ctx, _, predict = setup
    sched = UniPC(steps, shift=3.0)
    out, info = _run(model, noise, ctx, sched, n, warmup, cache)
    ref = parastep.serial_reenactment(lambda x, i, p: predict(x, i, p, sched), sched, noise, warmup=warmup, n=n,
                                      cache=cache)
    assert rel_err(out, ref) <= 1e-5
    seq, total = parastep.model_calls(steps, warmup, n)
    assert (info["sequential_model_calls"], info["total_model_calls"]) == (seq, total)
    assert seq == warmup + -(-(steps - warmup) // n) and total == steps + (n - 1) * warmup


def test_euler_parallel_equals_reenactment_and_differs_from_exact(setup):
    model, noise, ctx, single, predict = setup
    sched = Euler(9, shift=3.0)
    out, _ = _run(model, noise, ctx, sched, 4, 2, "own")
    ref = parastep.serial_reenactment(lambda x, i, p: predict(x, i, p, sched), sched, noise, warmup=2, n=4)
    exact, _ = single.sample(noise, ctx, 4.0, sched)
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(out, exact) > 1e-4  # ParaStep is an approximation: it must not silently be the serial loop


def test_composes_with_cfg(setup):
    model, noise, ctx, _, predict = setup
    sched = UniPC(10, shift=3.0)
    out, _ = _run(model, noise, ctx, sched, 4, 2, "own", extra="+cfg", mesh_extra={"cfg": 2})
    ref = parastep.serial_reenactment(lambda x, i, p: predict(x, i, p, sched), sched, noise, warmup=2, n=4)
    assert rel_err(out, ref) <= 1e-5


def test_one_allgather_per_round_and_nothing_per_layer(setup):
    from jaxvdm.sharding import comm

    model, noise, ctx, _, _ = setup
    mesh = make_mesh(step=4)
    plan = resolve("parastep", mesh, {"warmup": 2})
    program = parastep.round_program(model, plan, mesh, noise.shape, ctx.shape, UniPC(10, shift=3.0))
    report = comm.report_of_hlo(program.compiled.as_text())
    kinds = {c.kind for c in report.collectives}
    assert kinds == {"all-gather"}
    (ag,) = report.collectives
    assert ag.trip_count == 1
    assert ag.result_bytes == 4 * noise.size * 4  # N guided outputs, float32


def test_errors(setup):
    with pytest.raises(ValueError, match="warmup must be an integer >= 1"):
        parastep.validate(10, 0, 2)
    with pytest.raises(ValueError, match="needs at least 8 steps after warm-up, got 5"):
        parastep.validate(10, 5, 8)
    with pytest.raises(ValueError, match="cache must be one of"):
        parastep.validate(10, 2, 2, "newest")
    with pytest.raises(ValueError, match="needs a mesh axis named 'step'"):
        resolve("parastep", make_mesh(sp=2))
