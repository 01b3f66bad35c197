"""ParaStep's last, partial round: the model calls that run are the ones reported, every step after the
warm-up is evaluated exactly once (no device evaluates a step that does not exist), no reuse chain steps the
scheduler past the last step, and the result still equals the serial re-enactment."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_err

from jaxvdm.models.schedulers import UniPC
from jaxvdm.models.wan.transformer import WanConfig, init_transformer
from jaxvdm.sharding import parastep, predict, sampling
from jaxvdm.sharding.mesh import make_mesh
from jaxvdm.sharding.registry import resolve

CFG = WanConfig(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=12,
                freq_dim=16, ffn_dim=32, num_layers=1)


class _Recorded:
    """A scheduler that records (with ``jax.debug.callback``) every step index it is asked to update,
    from every device; otherwise the wrapped scheduler."""

    def __init__(self, inner, seen: list):
        self._inner, self._seen = inner, seen

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def step(self, state, model_output, sample, step_index):
        jax.debug.callback(lambda i: self._seen.append(int(i)), step_index)
        return self._inner.step(state, model_output, sample, step_index)


def _count_calls(monkeypatch) -> list:
    """Wraps the guided prediction of the warm-up (``sampling``) and of the rounds (``parastep``) so that every
    model call any device makes appends its timestep to the returned list."""
    calls: list = []
    real = predict.guided_prediction

    def counting(model, x, t, ctx, g, **kw):
        jax.debug.callback(lambda t_: calls.append(float(t_)), t)
        return real(model, x, t, ctx, g, **kw)

    monkeypatch.setattr(sampling, "guided_prediction", counting)
    monkeypatch.setattr(parastep, "guided_prediction", counting)
    return calls


@pytest.fixture(scope="module")
def tiny():
    model = init_transformer(CFG, seed=5)
    noise = jax.random.normal(jax.random.key(2), (1, 4, 2, 4, 4))
    ctx = jax.random.normal(jax.random.key(3), (2, 5, 12))
    return model, noise, ctx


@pytest.mark.parametrize("steps,warmup,n", [(50, 5, 4), (20, 5, 3), (22, 5, 3)])
def test_reported_calls_are_the_calls_that_run(tiny, monkeypatch, steps, warmup, n):
    """A recording guided prediction counts the model calls every device makes: their number is the reported
    ``total_model_calls`` (65 for T = 50, W = 5, N = 4), each warm-up step runs on all N devices, every later
    step exactly once; the scheduler is never stepped past the last step; the output is the serial
    re-enactment's."""
    model, noise, ctx = tiny
    calls = _count_calls(monkeypatch)
    sampling.clear_placements()
    sched = UniPC(steps, shift=3.0)
    seen: list = []
    mesh = make_mesh(step=n)
    plan = resolve("parastep", mesh, {"warmup": warmup, "cache": "own"})
    x, info = parastep.sample(model, plan, mesh, noise, ctx, 4.0, _Recorded(sched, seen))
    x = np.asarray(x)
    jax.effects_barrier()

    seq, total = parastep.model_calls(steps, warmup, n)
    assert (info["sequential_model_calls"], info["total_model_calls"]) == (seq, total)
    assert len(calls) == total, (len(calls), total)
    if (steps, warmup, n) == (50, 5, 4):
        assert total == 65 and seq == 17
    index = {float(t): i for i, t in enumerate(np.asarray(sched.timesteps, np.float32))}
    assert len(index) == steps  # distinct timesteps: a call's step is its timestep's index
    per_step = collections.Counter(index[t] for t in calls)
    assert per_step == {i: (n if i < warmup else 1) for i in range(steps)}
    assert seen and max(seen) <= steps - 1 and min(seen) >= 0

    sampling.clear_placements()
    single = sampling.placed(model, resolve("single", None), None)
    f = jax.jit(single.predict_fn(None))
    ref = parastep.serial_reenactment(lambda x, i, p: f(single.state, x, sched.timestep(i), ctx, jnp.float32(4.0)),
                                      sched, noise, warmup=warmup, n=n)
    assert rel_err(x, ref) <= 1e-5


def test_short_last_round_composes_with_cfg(tiny, monkeypatch):
    """parastep+cfg with a short last round (T = 11, W = 2, N = 4: its last round has one position): the
    spare devices' skipped call sits around the cfg exchange, every later step is evaluated by one cfg pair
    only, and the result equals the serial re-enactment."""
    model, noise, ctx = tiny
    calls = _count_calls(monkeypatch)
    sampling.clear_placements()
    sched = UniPC(11, shift=3.0)
    mesh = make_mesh(step=4, cfg=2)
    x, info = parastep.sample(model, resolve("parastep+cfg", mesh, {"warmup": 2}), mesh, noise, ctx, 4.0, sched)
    x = np.asarray(x)
    jax.effects_barrier()
    index = {float(t): i for i, t in enumerate(np.asarray(sched.timesteps, np.float32))}
    assert collections.Counter(index[t] for t in calls) == {i: 2 * (4 if i < 2 else 1) for i in range(11)}
    assert info["total_model_calls"] == len(calls) // 2 == 11 + 3 * 2  # one call = one cfg pair

    sampling.clear_placements()
    single = sampling.placed(model, resolve("single", None), None)
    f = jax.jit(single.predict_fn(None))
    ref = parastep.serial_reenactment(lambda x, i, p: f(single.state, x, sched.timestep(i), ctx, jnp.float32(4.0)),
                                      sched, noise, warmup=2, n=4)
    assert rel_err(x, ref) <= 1e-5
