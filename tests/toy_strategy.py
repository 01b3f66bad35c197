"""A toy loop strategy, written the way docs/DEVELOPING.md says a new strategy is added: this one module
and one registry row (``test_architecture.py`` registers it). ``twin`` runs the one-device denoising loop
with every guided prediction computed on each device of its mesh axis and averaged with one ``psum``:
exact, and useless except as proof that a strategy needs nothing outside its module and its row."""

import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxvdm.sharding import runtime, sampling
from jaxvdm.sharding.predict import guided_prediction, shard_map


def _step_fn(den, scheduler):
    plan, n = den.plan, den.plan.size(den.plan.loop_axis)

    def predict(state, x, t, ctx, g):
        v = guided_prediction(nnx.merge(den.graphdef, state), x, t, ctx, g, plan=plan, attention=den.attention)
        return lax.psum(v, plan.loop_axis) / n

    predict = shard_map(predict, mesh=den.mesh, in_specs=(den.specs, P(), P(), P(), P()), out_specs=P())

    def step(state, x, sstate, i, ctx, g):
        return scheduler.step(sstate, predict(state, x, scheduler.timestep(i), ctx, g), x, i)

    return jax.jit(step)


def sample(model, plan, mesh, noise, context, guidance, scheduler, *, attention=None, progress=None, defaults=None,
           seed=None):
    if mesh is None:  # one device: the ordinary loop
        return sampling.sample(model, plan, None, noise, context, guidance, scheduler, attention=attention)
    den = sampling.placed(model, plan, mesh, attention)
    x, ctx, g, sstate = runtime.place_inputs(mesh, noise, context, guidance, scheduler)
    programs = runtime.Programs(mesh)
    step = programs.get("twin", "twin_step", lambda: _step_fn(den, scheduler),
                        (den.state, x, sstate, jnp.int32(0), ctx, g))
    t0 = time.perf_counter()
    with runtime.progress_bar(scheduler.num_steps, "twin", progress) as bar:
        for i in range(scheduler.num_steps):
            x, sstate = step(den.state, x, sstate, jnp.int32(i), ctx, g)
            bar.done(1, x)
    x.block_until_ready()
    return x, {"compile_s": programs.seconds, "denoise_s": time.perf_counter() - t0,
               "useful_forwards": [(tuple(noise.shape[2:]), scheduler.num_steps)]}


def program(model, plan, mesh, latent_shape, text_shape, scheduler, *, attention=None, defaults=None, step=None):
    den = sampling.placed(model, plan, mesh, attention)
    x = jax.ShapeDtypeStruct(tuple(latent_shape), jnp.float32)
    args = sampling.abstract_like((x, jax.eval_shape(scheduler.init, x), jax.ShapeDtypeStruct((), jnp.int32),
                                   jax.ShapeDtypeStruct(tuple(text_shape), jnp.float32),
                                   jax.ShapeDtypeStruct((), jnp.float32)), mesh)
    compiled = _step_fn(den, scheduler).lower(den.state, *args).compile()
    return sampling.Program(name="twin step", compiled=compiled, runs=scheduler.num_steps)
