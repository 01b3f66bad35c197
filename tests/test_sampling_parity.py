"""jaxvdm's sampling loop against diffusers' WanPipeline (UniPC, CFG), from the same latents and embeddings."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from helpers import rel_err

import jaxvdm
from jaxvdm.models.wan.transformer import load_transformer
from jaxvdm.pipeline import Pipeline, SizeError


def _unipc(shift):
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                   flow_shift=shift, solver_order=2, solver_type="bh2", predict_x0=True,
                                   lower_order_final=True, final_sigmas_type="zero")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                              out_channels=4, text_dim=24, freq_dim=256, ffn_dim=48, num_layers=2).eval()
    path = tmp_path_factory.mktemp("wan")
    m.save_pretrained(path, safe_serialization=True)
    ours = Pipeline(name="tiny", transformer=load_transformer(path), encode_text=None, decode=None,
                    vae_stride=(4, 8, 8), defaults=dict(num_frames=9, height=48, width=80, steps=6, guidance_scale=5.0,
                                                         flow_shift=3.0, scheduler="unipc", fps=16))
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 3, 6, 10, generator=g)
    cond = torch.randn(1, 9, 24, generator=g)
    uncond = torch.randn(1, 9, 24, generator=g)
    return m, ours, latents, cond, uncond


@pytest.mark.parametrize("scheduler,steps,shift,guidance", [("unipc", 6, 3.0, 5.0), ("unipc", 10, 5.0, 3.5),
                                                             ("euler", 5, 3.0, 5.0), ("unipc", 4, 3.0, 1.0)])
def test_final_latents_match_diffusers(tiny, scheduler, steps, shift, guidance):
    m, ours, latents, cond, uncond = tiny
    sched = _unipc(shift) if scheduler == "unipc" else FlowMatchEulerDiscreteScheduler(shift=shift)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=m, vae=None, scheduler=sched)
    with torch.no_grad():
        ref = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=latents.clone(), num_frames=9,
                   height=48, width=80, num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                   return_dict=False)[0].numpy()
    video = jaxvdm.generate("", model=ours, prompt_embeds=cond.numpy(), negative_prompt_embeds=uncond.numpy(),
                            latents=latents.numpy(), steps=steps, guidance_scale=guidance, scheduler=scheduler,
                            shift=shift, decode=False)
    assert video.latents.shape == ref.shape
    assert rel_err(video.latents, ref) <= 1e-4


def test_size_errors_name_the_nearest_valid_size(tiny):
    _, ours, *_ = tiny
    with pytest.raises(SizeError, match="num_frames=10 .* nearest valid: 9"):
        ours.latent_shape(10, 48, 80)
    with pytest.raises(SizeError, match="height=50 must be a multiple of 16 .* nearest valid: 48"):
        ours.latent_shape(9, 50, 80)
    with pytest.raises(SizeError, match="width=90 must be a multiple of 16 .* nearest valid: 96"):
        ours.latent_shape(9, 48, 90)
    assert ours.latent_shape(81, 480, 832) == (1, 4, 21, 60, 104)
