"""Wan2.2 A14B's two experts: the expert of every step, in every strategy, and against diffusers.

* The step rule equals diffusers' (``t >= boundary_ratio * num_train_timesteps``: the high-noise
  ``transformer``, else ``transformer_2``), on diffusers' own schedulers' timesteps.
* Two *different* random experts, the switch mid-run: the one-device run equals an independent loop that
  calls the right expert's forward per step; every exact strategy equals it (<= 1e-5); LP equals its
  windows evaluated with the right expert per step; ParaStep (a round straddling the switch) equals its
  serial re-enactment with each position on its own step's expert; DualParal (blocks at different steps in
  one queue) equals an independent block oracle with each block-step on its own step's expert. Each
  reference computed with one expert throughout differs by far more than the tolerance, so a strategy
  that ignored the switch would fail.
* A tiny random diffusers Wan2.2 folder (``transformer/``, ``transformer_2/``, ``boundary_ratio``) through
  ``load_pipeline`` + ``generate`` matches diffusers' ``WanPipeline`` latents (<= 1e-4).
"""

import dataclasses
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_err

from jaxvdm.models.schedulers import Euler, UniPC
from jaxvdm.models.wan import rope as rope_lib
from jaxvdm.models.wan.transformer import WanConfig, init_transformer
from jaxvdm.models.wan.transformer.model import ExtraKV
from jaxvdm.sharding import dualparal as dp
from jaxvdm.sharding import parastep, sampling
from jaxvdm.sharding.experts import Experts, step_experts
from jaxvdm.sharding.mesh import make_mesh, parse_mesh_spec
from jaxvdm.sharding.registry import resolve

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# 3 heads and 45 tokens (3x6x10 latent, patch 1x2x2): divide none of 2, 4, 8
CFG = WanConfig(num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=12,
                freq_dim=16, ffn_dim=32, num_layers=2)
G1, G2 = 5.0, 2.5
SCHED = UniPC(6, shift=3.0)  # timesteps 999 937 857 | 750 600 376
BOUNDARY = 800.0


@pytest.fixture(scope="module")
def setup():
    high, low = init_transformer(CFG, seed=0), init_transformer(CFG, seed=11)
    noise = jax.random.normal(jax.random.key(0), (1, 4, 3, 6, 10))
    ctx = jax.random.normal(jax.random.key(1), (2, 5, 12))
    return types.SimpleNamespace(high=high, low=low, noise=noise, ctx=ctx,
                                 experts=Experts((high, low), boundary=BOUNDARY, guidance_2=G2))


def _forward(model):
    """The guided velocity of ``model`` written out: both halves batched, guidance after."""
    @jax.jit
    def f(x, t, ctx, g):
        v = model(jnp.concatenate([x, x]), jnp.full((2,), t, jnp.float32), ctx, attention="xla")
        return v[1:2] + g * (v[0:1] - v[1:2])
    return f


def _loop(models_per_step, guidance_per_step, noise, ctx, sched):
    """The serial loop with the given model and guidance at each step."""
    x, st = jnp.asarray(noise), sched.init(noise)
    for i in range(sched.num_steps):
        v = models_per_step[i](x, sched.timestep(i), ctx, jnp.float32(guidance_per_step[i]))
        x, st = sched.step(st, v, x, i)
    return np.asarray(x)


def _rule(sched, boundary):
    return [0 if float(t) >= boundary else 1 for t in np.asarray(sched.timesteps)]


@pytest.fixture(scope="module")
def reference(setup):
    """The two-expert loop (right expert per step) and the high-expert-only loop."""
    fh, fl = _forward(setup.high), _forward(setup.low)
    which = _rule(SCHED, BOUNDARY)
    assert 0 < sum(which) < SCHED.num_steps  # the switch is mid-run
    ref = _loop([(fh, fl)[e] for e in which], [(G1, G2)[e] for e in which], setup.noise, setup.ctx, SCHED)
    one = _loop([fh] * SCHED.num_steps, [G1] * SCHED.num_steps, setup.noise, setup.ctx, SCHED)
    assert rel_err(one, ref) > 1e-2  # using one expert throughout is far off
    return ref


# ------------------------------------------------------------------------------------------ the rule


def test_step_rule_is_diffusers(setup):
    e = Experts((setup.high, setup.low), boundary=875.0)
    theirs = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                               flow_shift=3.0, num_train_timesteps=1000)
    theirs.set_timesteps(9)
    assert step_experts(e, UniPC(9, shift=3.0)) == tuple(0 if t >= 875.0 else 1 for t in theirs.timesteps)
    euler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, num_train_timesteps=1000)
    euler.set_timesteps(6)
    ts = euler.timesteps
    at = float(ts[2])  # a boundary exactly on a float timestep: that step is still the high-noise expert's
    e = Experts((setup.high, setup.low), boundary=at)
    assert step_experts(e, Euler(6, shift=3.0)) == tuple(0 if t >= at else 1 for t in ts) == (0, 0, 0, 1, 1, 1)


def test_experts_are_validated(setup):
    with pytest.raises(ValueError, match="boundary"):
        Experts((setup.high, setup.low))
    with pytest.raises(ValueError, match="second expert"):
        Experts((setup.high,), boundary=500.0)
    other = init_transformer(WanConfig(num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=4,
                                       text_dim=12, freq_dim=16, ffn_dim=32, num_layers=3), seed=0)
    with pytest.raises(ValueError, match="one transformer config"):
        Experts((setup.high, other), boundary=500.0)


# ------------------------------------------------------------------------------------------ predict strategies


def test_single_device_switches_experts(setup, reference):
    out, _ = sampling.sample(setup.experts, resolve("single", None), None, setup.noise, setup.ctx, G1, SCHED)
    assert rel_err(out, reference) <= 1e-5
    # one expert given as an Experts is today's run, bit for bit
    a, _ = sampling.sample(Experts((setup.high,)), resolve("single", None), None, setup.noise, setup.ctx, G1, SCHED)
    b, _ = sampling.sample(setup.high, resolve("single", None), None, setup.noise, setup.ctx, G1, SCHED)
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("strategy,mesh", [("cfg", "cfg=2"), ("ulysses", "sp=4"), ("ring", "sp=4"),
                                           ("fsdp", "fsdp=4"), ("cfg+ulysses", "cfg=2,sp=2")])
def test_exact_strategies_switch_experts(setup, reference, devices, strategy, mesh):
    m = make_mesh(parse_mesh_spec(mesh))
    out, _ = sampling.sample(setup.experts, resolve(strategy, m), m, setup.noise, setup.ctx, G1, SCHED)
    assert rel_err(out, reference) <= 1e-5


def test_lp_switches_experts(setup, devices):
    """LP's windows evaluated step by step with the right expert's LP prediction (and not with one expert)."""
    m = make_mesh(lp=2)
    plan = resolve("lp", m, {"overlap": 0.25})
    out, _ = sampling.sample(setup.experts, plan, m, setup.noise, setup.ctx, G1, SCHED)
    dens = [sampling.Denoiser(mod, plan, m) for mod in (setup.high, setup.low)]
    windows = dens[0].windows(setup.noise.shape, SCHED.num_steps)
    which = _rule(SCHED, BOUNDARY)

    def run(choice):
        x, st = jnp.asarray(setup.noise), SCHED.init(setup.noise)
        for i in range(SCHED.num_steps):
            den, g = dens[choice[i]], (G1, G2)[choice[i]]
            v = jax.jit(den.predict_fn(windows[i]))(den.state, x, SCHED.timestep(i), setup.ctx, jnp.float32(g))
            x, st = SCHED.step(st, v, x, i)
        return np.asarray(x)

    ref = run(which)
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(run([0] * SCHED.num_steps), ref) > 1e-2


# ------------------------------------------------------------------------------------------ ParaStep


def test_parastep_round_straddling_the_switch(setup, devices):
    sched = UniPC(9, shift=3.0)  # 999 960 913 857 | 789 ...: with warmup 1 and N = 4, round 1 is steps 1-4
    which = _rule(sched, BOUNDARY)
    assert which[1:5] == [0, 0, 0, 1]
    m = make_mesh(step=4)
    plan = resolve("parastep", m, {"warmup": 1, "cache": "own"})
    out, _ = parastep.sample(setup.experts, plan, m, setup.noise, setup.ctx, G1, sched)
    fs, gs = (_forward(setup.high), _forward(setup.low)), (G1, G2)

    def predict(choice):
        return lambda x, i, p: fs[choice[i]](x, sched.timestep(i), setup.ctx, jnp.float32(gs[choice[i]]))

    ref = parastep.serial_reenactment(predict(which), sched, setup.noise, warmup=1, n=4)
    assert rel_err(out, ref) <= 1e-5
    one = parastep.serial_reenactment(predict([0] * 9), sched, setup.noise, warmup=1, n=4)
    assert rel_err(one, ref) > 1e-2


# ------------------------------------------------------------------------------------------ DualParal

DCFG = WanConfig(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=12,
                 freq_dim=16, ffn_dim=32, num_layers=4)
B, C, NB = 2, 1, 4
DSCHED = UniPC(3, shift=3.0)  # 999 857 | 600
DBOUND, SEED = 700.0, 5


def _block_oracle(models, guidances, noise, ctx, sched, which):
    """DualParal's block algorithm written out (DUALPARAL.md §2; as tests/test_dualparal.py's oracle), with
    block-step (k, d) on ``models[which[d]]`` and guidance ``guidances[which[d]]``."""
    pool = np.asarray(noise)[:, :, :B + C]
    rng = np.random.default_rng(SEED)
    template, blocks = list(range(B + C)), []
    for k in range(NB):
        template = template[B:] + [template[:B][i] for i in rng.permutation(B)]
        blocks.append(pool[:, :, template if k == 0 else template[C:]])
    lat = {k: jnp.asarray(v) for k, v in enumerate(blocks)}
    state = {k: sched.init(v) for k, v in lat.items()}
    h, w = noise.shape[3] // 2, noise.shape[4] // 2
    hw = h * w
    for i in range(sched.num_steps + NB - 1):
        cache = None
        for k in range(min(i, NB - 1), max(0, i - sched.num_steps + 1) - 1, -1):
            d = i - k
            model, g = models[which[d]], guidances[which[d]]
            window = lat[0] if k == 0 else jnp.concatenate([lat[k - 1][:, :, -C:], lat[k]], axis=2)
            t = jnp.full((2,), sched.timestep(d), jnp.float32)
            tokens, temb, cond = model.embed(jnp.concatenate([window, window]), t, ctx)
            cos, sin = model.rope(rope_lib.grid_positions((C, h, w), (B + C, 0, 0)))
            zeros = jnp.zeros((DCFG.num_layers, 2, C * hw, DCFG.hidden_size))
            extra = ExtraKV(cache[0] if cache else zeros, cache[1] if cache else zeros, cos, sin,
                            jnp.asarray(cache is not None))
            hid, cache = model.run_blocks(tokens, cond, self_attention="xla", cross_attention="xla", extra=extra,
                                          capture=(C * hw, 2 * C * hw))
            v = model.head(hid, temb, (B + C, h, w))
            v = v[1:2] + g * (v[0:1] - v[1:2])
            lat[k], state[k] = sched.step(state[k], v if k == 0 else v[:, :, C:], lat[k], d)
    return np.concatenate([np.asarray(lat[k]) for k in range(NB)], axis=2)


@pytest.fixture(scope="module")
def dual():
    high, low = init_transformer(DCFG, seed=2), init_transformer(DCFG, seed=13)
    noise = jax.random.normal(jax.random.key(3), (1, 4, C + NB * B, 4, 4))
    ctx = jax.random.normal(jax.random.key(4), (2, 5, 12))
    which = _rule(DSCHED, DBOUND)
    assert which == [0, 0, 1]
    ref = _block_oracle((high, low), (G1, G2), noise, ctx, DSCHED, which)
    one = _block_oracle((high, low), (G1, G2), noise, ctx, DSCHED, [0, 0, 0])
    assert rel_err(one, ref) > 1e-2
    return types.SimpleNamespace(experts=Experts((high, low), boundary=DBOUND, guidance_2=G2), noise=noise, ctx=ctx,
                                 ref=ref)


@pytest.mark.parametrize("mesh", [None, "stage=2", "cfg=2,stage=2", "stage=4"])
def test_dualparal_blocks_use_their_own_steps_expert(dual, devices, mesh):
    m = None if mesh is None else make_mesh(parse_mesh_spec(mesh))
    strategy = "dualparal+cfg" if mesh and "cfg" in mesh else "dualparal"
    plan = resolve(strategy, m, dict(block_frames=B, context_frames=C))
    out, _ = dp.sample(dual.experts, plan, m, dual.noise, dual.ctx, G1, DSCHED, seed=SEED)
    assert rel_err(out, dual.ref) <= 1e-5


# ------------------------------------------------------------------------------------------ against diffusers

FRAMES, HEIGHT, WIDTH, STEPS = 9, 32, 32, 4
RATIO = 0.9  # 4 UniPC steps at shift 5: 999 937 | 833 625


@pytest.fixture(scope="module")
def wan22(tmp_path_factory):
    import tiny_wan

    root = tmp_path_factory.mktemp("wan22")
    tokenizer, encoder = tiny_wan.text_parts(root)
    pipe = diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=encoder, transformer=tiny_wan.transformer(1),
                                 vae=tiny_wan.vae(), scheduler=tiny_wan.scheduler(5.0),
                                 transformer_2=tiny_wan.transformer(7), boundary_ratio=RATIO)
    folder = root / "Wan2.2-T2V-tiny-Diffusers"
    pipe.save_pretrained(folder, safe_serialization=True)
    noise = torch.randn((1, 16, 3, 4, 4), generator=torch.Generator().manual_seed(3))
    return types.SimpleNamespace(pipe=pipe, folder=folder, noise=noise, prompt=tiny_wan.PROMPT,
                                 negative=tiny_wan.NEGATIVE)


def test_two_expert_folder_matches_diffusers(wan22):
    import jaxvdm
    from jaxvdm.models.wan.pipeline import load_pipeline

    index = json.loads((wan22.folder / "model_index.json").read_text())
    assert index["boundary_ratio"] == RATIO and index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
    ours = load_pipeline(wan22.folder, dtype=jnp.float32)
    assert ours.transformer_2 is not None and ours.defaults["boundary_ratio"] == RATIO
    assert step_experts(Experts((ours.transformer, ours.transformer_2), boundary=RATIO * 1000),
                        UniPC(STEPS, shift=5.0)) == (0, 0, 1, 1)
    common = dict(prompt=wan22.prompt, negative_prompt=wan22.negative, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
                  num_inference_steps=STEPS, guidance_scale=G1, output_type="latent", return_dict=False,
                  max_sequence_length=ours.defaults["max_text_len"])
    with torch.no_grad():
        theirs = wan22.pipe(latents=wan22.noise.clone(), guidance_scale_2=G2, **common)[0].numpy()
        theirs_same = wan22.pipe(latents=wan22.noise.clone(), **common)[0].numpy()  # guidance_scale_2 = guidance
    kw = dict(model=ours, num_frames=FRAMES, height=HEIGHT, width=WIDTH, steps=STEPS, latents=wan22.noise.numpy(),
              negative_prompt=wan22.negative, decode=False)
    video = jaxvdm.generate(wan22.prompt, guidance_scale=G1, guidance_scale_2=G2, **kw)
    assert rel_err(video.latents, theirs) <= 1e-4
    assert video.settings["guidance_scale_2"] == G2 and video.settings["boundary_ratio"] == RATIO
    same = jaxvdm.generate(wan22.prompt, guidance_scale=G1, **kw)
    assert rel_err(same.latents, theirs_same) <= 1e-4
    assert rel_err(theirs_same, theirs) > 1e-3  # the second scale matters, so the comparison above can fail
    # the high-noise expert alone (what a loader ignoring transformer_2 would run) is far off
    alone = dataclasses.replace(ours, transformer_2=None,
                                defaults={k: v for k, v in ours.defaults.items()
                                          if k not in ("boundary_ratio", "guidance_scale_2")})
    assert rel_err(jaxvdm.generate(wan22.prompt, guidance_scale=G1, **{**kw, "model": alone}).latents, theirs) > 1e-2
    with pytest.raises(ValueError, match="guidance_scale_2 is the guidance of a second expert"):
        jaxvdm.generate(wan22.prompt, guidance_scale=G1, guidance_scale_2=G2, **{**kw, "model": alone})
