"""Wan2.1 image-to-video and first-last-frame: a tiny random diffusers WanImageToVideoPipeline folder gives the
same latents in jaxvdm as in diffusers (<= 1e-4), and strategies equal the single-device run.

The components are diffusers' I2V test dummies (tests/pipelines/wan/test_wan_image_to_video.py: a CLIP
vision tower of width 4 with 1x1 patches over 32x32 pixels, ``CLIPImageProcessor(crop_size=32, size=32)``,
a transformer with ``image_dim=4``) on the tiny text encoder / VAE / scheduler of tests/tiny_wan.py, with
``added_kv_proj_dim`` set to the hidden size as in every published Wan2.1 I2V checkpoint. Nothing is
downloaded. The image is given once at the video size and once at another size (Lanczos resize and the
CLIP processor's own resize and crop both run).
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_err

import jaxvdm
from jaxvdm.models.checkpoint import CheckpointError
from jaxvdm.models.wan.i2v import VideoCondition, frame_mask
from jaxvdm.models.wan.pipeline import load_pipeline
from jaxvdm.sharding.mesh import make_mesh, parse_mesh_spec
from jaxvdm.sharding.registry import resolve
from jaxvdm.sharding.sampling import Denoiser

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

import tiny_wan  # noqa: E402

FRAMES, HEIGHT, WIDTH, STEPS, GUIDANCE = 9, 32, 32, 3, 5.0
CLIP = dict(hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            intermediate_size=16, patch_size=1)
I2V_DIT = dict(in_channels=36, image_dim=4, added_kv_proj_dim=32)


def _folder(root, name, **dit):
    tokenizer, encoder = tiny_wan.text_parts(root)
    torch.manual_seed(5)
    vision = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**CLIP)).eval()
    tiny_wan.randomise(vision, 6, scale=0.1)
    pipe = diffusers.WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=encoder, vae=tiny_wan.vae(), scheduler=tiny_wan.scheduler(5.0),
        image_encoder=vision, image_processor=transformers.CLIPImageProcessor(crop_size=32, size=32),
        transformer=tiny_wan.transformer(1, **dit))
    folder = root / name
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe, folder


@pytest.fixture(scope="module")
def i2v(tmp_path_factory):
    from diffusers.pipelines.wan import pipeline_wan_i2v

    if not hasattr(pipeline_wan_i2v, "ftfy"):  # without ftfy installed its prompt cleaning fails (WanPipeline skips
        pipeline_wan_i2v.ftfy = types.SimpleNamespace(fix_text=lambda t: t)  # it): skip it the same way (ASCII prompt)
    root = tmp_path_factory.mktemp("i2v")
    pipe, folder = _folder(root, "Wan2.1-I2V-tiny", **I2V_DIT)
    flf_pipe, flf_folder = _folder(root, "Wan2.1-FLF2V-tiny", **I2V_DIT, pos_embed_seq_len=2 * (32 * 32 + 1))
    g = np.random.default_rng(0)
    return types.SimpleNamespace(
        pipe=pipe, ours=load_pipeline(folder), flf_pipe=flf_pipe, flf=load_pipeline(flf_folder),
        noise=torch.randn((1, 16, 3, 4, 4), generator=torch.Generator().manual_seed(3)),
        first=g.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8),
        other=g.integers(0, 256, (40, 24, 3), dtype=np.uint8),
        last=g.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def _theirs(pipe, image, last_image=None):
    kw = {} if last_image is None else dict(last_image=Image.fromarray(last_image))
    with torch.no_grad():
        return pipe(image=Image.fromarray(image), prompt=tiny_wan.PROMPT, negative_prompt=tiny_wan.NEGATIVE,
                    height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS,
                    guidance_scale=GUIDANCE, latents=_noise_copy(pipe), output_type="latent", return_dict=False,
                    max_sequence_length=512, **kw)[0].numpy()


_NOISE = {}


def _noise_copy(pipe):
    return _NOISE["noise"].clone()


def _ours(model, image, last_image=None, **kw):
    return jaxvdm.generate(tiny_wan.PROMPT, model=model, image=image, last_image=last_image,
                           negative_prompt=tiny_wan.NEGATIVE, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
                           steps=STEPS, guidance_scale=GUIDANCE, latents=_NOISE["noise"].numpy(), decode=False,
                           **kw).latents


def test_mask_layout_is_diffusers():
    """The frame mask over the VAE's temporal groups, against diffusers' construction written out."""
    for last in (False, True):
        m = torch.ones(1, 1, 9, 2, 2)
        m[:, :, 1:(8 if last else 9)] = 0
        first = torch.repeat_interleave(m[:, :, 0:1], dim=2, repeats=4)
        want = torch.concat([first, m[:, :, 1:]], dim=2).view(1, -1, 4, 2, 2).transpose(1, 2).numpy()
        np.testing.assert_array_equal(frame_mask(9, (3, 2, 2), 4, last=last), want)


@pytest.mark.parametrize("which", ["same_size", "resized"])
def test_i2v_matches_diffusers(i2v, which):
    _NOISE["noise"] = i2v.noise
    image = i2v.first if which == "same_size" else i2v.other
    theirs = _theirs(i2v.pipe, image)
    ours = _ours(i2v.ours, image)
    assert rel_err(ours, theirs) <= 1e-4
    # the image matters: another image gives other latents
    assert rel_err(_ours(i2v.ours, i2v.last), theirs) > 1e-3


def test_flf2v_matches_diffusers(i2v):
    _NOISE["noise"] = i2v.noise
    theirs = _theirs(i2v.flf_pipe, i2v.first, i2v.last)
    assert rel_err(_ours(i2v.flf, i2v.first, i2v.last), theirs) <= 1e-4
    assert rel_err(_ours(i2v.flf, i2v.first, i2v.first), theirs) > 1e-3  # the last image matters
    with pytest.raises(ValueError, match="first-last-frame .FLF2V. model: pass last_image="):
        _ours(i2v.flf, i2v.first)
    with pytest.raises(ValueError, match="last_image= needs a first-last-frame"):
        _ours(i2v.ours, i2v.first, i2v.last)


@pytest.mark.parametrize("strategy,mesh", [("cfg", "cfg=2"), ("ulysses", "sp=4"), ("cfg+ulysses", "cfg=2,sp=2"),
                                           ("ring", "sp=2"), ("fsdp", "fsdp=2")])
def test_exact_strategies_equal_single_device(i2v, devices, strategy, mesh):
    _NOISE["noise"] = i2v.noise
    ref = _ours(i2v.ours, i2v.first)
    out = _ours(i2v.ours, i2v.first, mesh=make_mesh(parse_mesh_spec(mesh)), strategy=strategy)
    assert rel_err(out, ref) <= 1e-5


def test_lp_cuts_the_condition_with_its_window(i2v, devices):
    """One LP prediction (windows on W) equals the windows written out: each device's model input is its window
    of the noise joined to the same window of the condition, at its global positions, blended by its weights."""
    model = i2v.ours.transformer
    mesh = make_mesh(lp=2)
    plan = resolve("lp", mesh, {"overlap": 0.25, "schedule": "W"})
    den = Denoiser(model, plan, mesh)
    x = jnp.asarray(i2v.noise.numpy())
    text = jnp.asarray(np.random.default_rng(1).standard_normal((2, 512, 32)), jnp.float32)
    ctx = i2v.ours.encode_image(text, i2v.first, None, FRAMES, HEIGHT, WIDTH)
    assert isinstance(ctx, VideoCondition)
    latent, clip = ctx.latent, ctx.image
    lp = den.windows(x.shape, STEPS)[0]
    assert lp.axis == 4 and lp.length < x.shape[4]
    got = jax.jit(den.predict_fn(lp))(den.state, x, jnp.float32(900.0), ctx, jnp.float32(GUIDANCE))
    want = np.zeros(x.shape, np.float32)
    for k, start in enumerate(lp.starts):
        cut = (slice(None),) * 4 + (slice(start, start + lp.length),)
        xin = jnp.concatenate([x[cut], latent[cut]], axis=1)
        v = model(jnp.concatenate([xin, xin]), jnp.full((2,), 900.0), text, image=jnp.concatenate([clip, clip]),
                  attention="xla", offset=(0, 0, start // 2))
        v = v[1:2] + GUIDANCE * (v[0:1] - v[1:2])
        want[cut] += np.asarray(v) * np.asarray(lp.weights[k], np.float32)
    assert rel_err(got, want) <= 1e-5
    # the windows do matter: the full-video prediction differs
    full = sampling_single_prediction(model, x, ctx)
    assert rel_err(full, want) > 1e-4


def sampling_single_prediction(model, x, ctx):
    den = Denoiser(model, resolve("single", None), None)
    return den.predict_fn(None)(den.state, x, jnp.float32(900.0), ctx, jnp.float32(GUIDANCE))


def test_refusals(i2v, tmp_path):
    _NOISE["noise"] = i2v.noise
    with pytest.raises(ValueError, match="image-to-video model: pass image="):
        _ours(i2v.ours, None)
    with pytest.raises(ValueError, match="dualparal does not run image-to-video"):
        _ours(i2v.ours, i2v.first, strategy="dualparal", block_frames=1, context_frames=1)
    with pytest.raises(ValueError, match="does not exist"):
        _ours(i2v.ours, str(tmp_path / "missing.png"))
    path = tmp_path / "first.png"
    Image.fromarray(i2v.first).save(path)
    np.testing.assert_array_equal(_ours(i2v.ours, str(path)), _ours(i2v.ours, i2v.first))
    assert isinstance(VideoCondition(jnp.zeros(1), None, jnp.zeros(1)), tuple)
    with pytest.raises(CheckpointError, match="in_channels=16: an image-to-video transformer"):
        bad = tmp_path / "bad"
        pipe = diffusers.WanImageToVideoPipeline(**{k: v for k, v in i2v.pipe.components.items()
                                                    if k != "transformer"},
                                                 transformer=tiny_wan.transformer(1, image_dim=4))
        pipe.save_pretrained(bad)
        load_pipeline(bad)


def test_wan22_i2v_two_experts_match_diffusers(i2v, tmp_path):
    """Wan2.2 I2V-A14B's layout: a WanImageToVideoPipeline with two 36-channel experts, no CLIP branch (the image
    enters through the mask and latent channels alone), the switch at boundary_ratio, a last image allowed."""
    _NOISE["noise"] = i2v.noise
    c = i2v.pipe.components
    parts = {k: c[k] for k in ("tokenizer", "text_encoder", "vae", "scheduler")}
    pipe = diffusers.WanImageToVideoPipeline(**parts, transformer=tiny_wan.transformer(2, in_channels=36),
                                             transformer_2=tiny_wan.transformer(9, in_channels=36), boundary_ratio=0.9)
    pipe.save_pretrained(tmp_path / "Wan2.2-I2V-tiny")
    ours = load_pipeline(tmp_path / "Wan2.2-I2V-tiny")
    assert ours.transformer_2 is not None and ours.defaults["task"] == "i2v"
    for last in (None, i2v.last):
        theirs = _theirs(pipe, i2v.first, last)
        assert rel_err(_ours(ours, i2v.first, last), theirs) <= 1e-4


def test_parastep_carries_the_condition(i2v, devices):
    """ParaStep with an image equals the algorithm re-enacted serially (``parastep.serial_reenactment``) with
    the single-device guided prediction on the same conditioned context; with another image it differs."""
    from jaxvdm import pipeline as surface
    from jaxvdm.models.schedulers import make_scheduler
    from jaxvdm.sharding import parastep

    _NOISE["noise"] = i2v.noise
    pipe = i2v.ours
    out = _ours(pipe, i2v.first, mesh=make_mesh(step=2), strategy="parastep", warmup=1)
    sched = make_scheduler(pipe.defaults.get("scheduler", "unipc"), STEPS, pipe.defaults["flow_shift"])
    den = Denoiser(pipe.transformer, resolve("single", None), None)
    f = jax.jit(den.predict_fn(None))
    text = surface._text_context(pipe, tiny_wan.PROMPT, tiny_wan.NEGATIVE, True, None, None)

    def reenact(image):
        ctx = surface._image_context(pipe, text, image, None, FRAMES, HEIGHT, WIDTH)
        return parastep.serial_reenactment(
            lambda x, i, p: f(den.state, x, sched.timestep(i), ctx, jnp.float32(GUIDANCE)), sched,
            jnp.asarray(i2v.noise.numpy()), warmup=1, n=2)

    assert rel_err(out, reenact(i2v.first)) <= 1e-5
    assert rel_err(out, reenact(i2v.last)) > 1e-3
