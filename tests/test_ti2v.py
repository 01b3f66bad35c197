"""Wan2.2 TI2V-5B: a tiny random diffusers folder (Wan2.2 VAE, 48-channel transformer, ``expand_timesteps``)
gives diffusers' latents in jaxvdm, text-to-video (WanPipeline) and image-to-video (WanImageToVideoPipeline:
the image latent is the first latent frame at timestep 0, re-injected every step and at the end); sequence
parallelism splits the per-token timesteps like the tokens (equal to one device).

Components: diffusers' Wan2.2 test dummies (test_wan_22.py: the VAE with ``base_dim=3, z_dim=48,
is_residual=True, patch_size=2``; a 48-in / 48-out transformer) on the tiny text encoder and scheduler of
tests/tiny_wan.py. Nothing is downloaded.
"""

import types

import numpy as np
import pytest
from helpers import rel_err

import jaxvdm
from jaxvdm.models.presets import wan_config
from jaxvdm.models.wan.i2v import FirstFrameCondition
from jaxvdm.models.wan.pipeline import _defaults_for, load_pipeline
from jaxvdm.sharding.mesh import make_mesh, parse_mesh_spec

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
Image = pytest.importorskip("PIL.Image")

import tiny_wan  # noqa: E402

FRAMES, HEIGHT, WIDTH, STEPS, G = 9, 64, 64, 3, 5.0
VAE22 = dict(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
             latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
             scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True])


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory):
    from diffusers.pipelines.wan import pipeline_wan_i2v

    if not hasattr(pipeline_wan_i2v, "ftfy"):  # as in test_wan_i2v_pipeline.py: ftfy is not installed
        pipeline_wan_i2v.ftfy = types.SimpleNamespace(fix_text=lambda t: t)
    root = tmp_path_factory.mktemp("ti2v")
    tokenizer, encoder = tiny_wan.text_parts(root)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(**VAE22).eval()
    tiny_wan.randomise(vae, 2, gamma_names=("gamma",), scale=0.1)
    parts = dict(tokenizer=tokenizer, text_encoder=encoder, vae=vae, scheduler=tiny_wan.scheduler(5.0),
                 transformer=tiny_wan.transformer(1, in_channels=48, out_channels=48))
    t2v = diffusers.WanPipeline(**parts, expand_timesteps=True)
    i2v = diffusers.WanImageToVideoPipeline(**parts, expand_timesteps=True)
    t2v.save_pretrained(root / "t2v")
    i2v.save_pretrained(root / "i2v")
    return types.SimpleNamespace(
        t2v=t2v, i2v=i2v, ours_t2v=load_pipeline(root / "t2v"), ours_i2v=load_pipeline(root / "i2v"),
        noise=torch.randn((1, 48, 3, 4, 4), generator=torch.Generator().manual_seed(3)),
        image=np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8))


def _theirs(pipe, **kw):
    with torch.no_grad():
        return pipe(prompt=tiny_wan.PROMPT, negative_prompt=tiny_wan.NEGATIVE, height=HEIGHT, width=WIDTH,
                    num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=G, latents=kw.pop("noise").clone(),
                    output_type="latent", return_dict=False, max_sequence_length=512, **kw)[0].numpy()


def _ours(model, noise, **kw):
    return jaxvdm.generate(tiny_wan.PROMPT, model=model, negative_prompt=tiny_wan.NEGATIVE, num_frames=FRAMES,
                           height=HEIGHT, width=WIDTH, steps=STEPS, guidance_scale=G, latents=noise.numpy(),
                           decode=False, **kw).latents


def test_defaults_are_ti2v_5b():
    d = _defaults_for(wan_config("wan2.2-ti2v-5b"))
    assert (d["num_frames"], d["fps"]) == (121, 24)


def test_text_to_video_matches_diffusers(ti2v):
    assert ti2v.ours_t2v.vae_stride == (4, 16, 16) and ti2v.ours_t2v.defaults["task"] == "ti2v"
    theirs = _theirs(ti2v.t2v, noise=ti2v.noise)
    assert rel_err(_ours(ti2v.ours_t2v, ti2v.noise), theirs) <= 1e-4


def test_image_to_video_matches_diffusers(ti2v):
    theirs = _theirs(ti2v.i2v, noise=ti2v.noise, image=Image.fromarray(ti2v.image))
    ours = _ours(ti2v.ours_i2v, ti2v.noise, image=ti2v.image)
    assert rel_err(ours, theirs) <= 1e-4
    # the published TI2V folder is a WanPipeline: given an image it runs diffusers' WanImageToVideoPipeline
    assert rel_err(_ours(ti2v.ours_t2v, ti2v.noise, image=ti2v.image), theirs) <= 1e-4
    # the first frame is the image's latent, the rest was denoised under it
    ctx = ti2v.ours_i2v.encode_image(np.zeros((1, 4, 32), np.float32), ti2v.image, None, FRAMES, HEIGHT, WIDTH)
    assert isinstance(ctx, FirstFrameCondition)
    np.testing.assert_allclose(ours[:, :, :1], np.asarray(ctx.latent), rtol=0, atol=1e-6)
    t2v_like = _theirs(ti2v.t2v, noise=ti2v.noise)
    assert rel_err(ours[:, :, 1:], t2v_like[:, :, 1:]) > 1e-3  # the image conditions the other frames
    with pytest.raises(ValueError, match="first frame only; last_image= is not taken"):
        _ours(ti2v.ours_i2v, ti2v.noise, image=ti2v.image, last_image=ti2v.image)
    with pytest.raises(ValueError, match="TI2V image-to-video folder: pass image="):
        _ours(ti2v.ours_i2v, ti2v.noise)


@pytest.mark.parametrize("strategy,mesh", [("ulysses", "sp=4"), ("cfg+ring", "cfg=2,sp=4")])
def test_sequence_axes_split_the_per_token_timesteps(ti2v, devices, strategy, mesh):
    ref = _ours(ti2v.ours_i2v, ti2v.noise, image=ti2v.image)
    out = _ours(ti2v.ours_i2v, ti2v.noise, image=ti2v.image, mesh=make_mesh(parse_mesh_spec(mesh)), strategy=strategy)
    assert rel_err(out, ref) <= 1e-5
