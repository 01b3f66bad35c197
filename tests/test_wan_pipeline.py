"""End to end: a tiny random-weight diffusers Wan2.1 T2V folder gives the same video in jaxvdm as in diffusers.

One tiny ``WanPipeline`` (UMT5 encoder, sentencepiece tokenizer trained here, DiT, VAE, Wan's UniPC
scheduler) is built with random weights and saved with ``save_pretrained``; nothing is downloaded.
``jaxvdm.models.wan.pipeline.load_pipeline`` loads that folder and ``jaxvdm.generate`` runs it from the
same initial noise as diffusers' ``WanPipeline.__call__`` (float32, CPU). The prompt embeddings, the
final latents and the decoded uint8 frames are compared. The loader's errors for a broken folder are
checked on copies of the same folder.
"""

import json
import shutil
import types

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_err

import jaxvdm
from jaxvdm.models.checkpoint import CheckpointError, read_safetensors, write_safetensors
from jaxvdm.models.pipeline import SizeError
from jaxvdm.models.schedulers import SchedulerSpec
from jaxvdm.models.wan.pipeline import load_pipeline

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

import tiny_wan  # noqa: E402
from tiny_wan import DIT, NEGATIVE, PROMPT, UMT5  # noqa: E402

FLOW_SHIFT = 5.0  # not the 3.0 default: the loader must read it from scheduler/
FRAMES, HEIGHT, WIDTH, STEPS, GUIDANCE = 9, 32, 32, 4, 5.0
LATENT = (1, 16, 3, 4, 4)  # 9 frames -> 1 + 8/4 latent frames; 32 px / 8
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The tiny diffusers WanPipeline, its folder, and the initial noise."""
    root = tmp_path_factory.mktemp("wan_t2v")
    tokenizer, text_encoder = tiny_wan.text_parts(root)
    transformer, vae, scheduler = tiny_wan.transformer(1), tiny_wan.vae(2), tiny_wan.scheduler(FLOW_SHIFT)
    pipe = diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                                 scheduler=scheduler)
    folder = root / "Wan2.1-T2V-tiny-Diffusers"
    pipe.save_pretrained(folder, safe_serialization=True)

    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(3))
    return types.SimpleNamespace(pipe=pipe, folder=folder, noise=noise)


@pytest.fixture(scope="module")
def ours(ref):
    return load_pipeline(ref.folder, dtype=jnp.float32)


@pytest.fixture(scope="module")
def theirs(ref, ours):
    """diffusers' video (float [F, H, W, 3] in [0, 1]) and final latents, at jaxvdm's text length."""
    captured = {}

    def keep_last(pipe, i, t, kw):
        if i == STEPS - 1:
            captured["latents"] = kw["latents"].clone()
        return {}

    with torch.no_grad():
        frames = ref.pipe(
            prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
            num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=ref.noise.clone(), output_type="np",
            max_sequence_length=ours.defaults["max_text_len"], callback_on_step_end=keep_last,
            callback_on_step_end_tensor_inputs=["latents"], return_dict=False,
        )[0]
    return types.SimpleNamespace(frames=np.asarray(frames)[0], latents=captured["latents"].numpy())


def test_prompt_embeddings_match_diffusers(ref, ours):
    max_len = ours.defaults["max_text_len"]
    assert max_len == 512  # WanPipeline's default max_sequence_length
    with torch.no_grad():
        cond, uncond = ref.pipe.encode_prompt(PROMPT, NEGATIVE, do_classifier_free_guidance=True,
                                              max_sequence_length=max_len, device=torch.device("cpu"))
    want = torch.cat([cond, uncond]).numpy()
    got = np.asarray(ours.encode_text([PROMPT, NEGATIVE]))
    assert got.shape == want.shape == (2, max_len, UMT5["d_model"])
    assert rel_err(got, want) <= 1e-5
    # both prompts are real text (not padding only) and differ: a swapped or dropped prompt would fail
    assert rel_err(got[0], got[1]) > 0.1
    n = int(np.sum(np.any(want[0] != 0, axis=-1)))
    assert 1 < n < max_len and np.all(got[0, n:] == 0)


def test_generate_matches_wan_pipeline(ref, ours, theirs):
    video = jaxvdm.generate(PROMPT, model=ours, num_frames=FRAMES, height=HEIGHT, width=WIDTH, steps=STEPS,
                            guidance_scale=GUIDANCE, negative_prompt=NEGATIVE, latents=ref.noise.numpy())
    assert ours.defaults["scheduler"] == "unipc" and ours.defaults["flow_shift"] == FLOW_SHIFT
    assert video.settings["scheduler"] == "unipc" and video.settings["shift"] == FLOW_SHIFT

    # final latents (before denormalisation and decoding)
    assert video.latents.shape == theirs.latents.shape == LATENT
    err = rel_err(video.latents, theirs.latents)
    assert err <= 1e-4, err  # measured ~2e-5 (float32, 8 DiT calls with guidance 5)
    assert rel_err(theirs.latents, ref.noise.numpy()) > 0.1  # the sampler moved away from the noise

    # decoded frames: diffusers gives float [0, 1]; both sides are quantised as round(255 * x)
    assert theirs.frames.shape == video.frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
    want = np.clip(np.rint(theirs.frames.astype(np.float64) * 255.0), 0, 255).astype(np.int16)
    got = video.frames.astype(np.int16)
    assert video.frames.dtype == np.uint8
    # a frame that is mostly clipped to black/white would hide differences
    assert np.mean((want > 0) & (want < 255)) > 0.5
    assert np.std(want) > 10
    diff = np.abs(got - want)
    # float32 differences of ~1e-5 can move a value across a rounding boundary: one level, and rarely
    assert diff.max() <= 1, diff.max()
    assert np.mean(diff == 0) >= 0.99, np.mean(diff == 0)


# ----------------------------------------------------------------------------- loader errors


def _copy(ref, dst, skip=()):
    shutil.copytree(ref.folder, dst, ignore=lambda d, names: [n for n in names if n in skip])
    return dst


def test_missing_component_folder(ref, tmp_path):
    folder = _copy(ref, tmp_path / "no_vae", skip=("vae",))
    with pytest.raises(CheckpointError) as err:
        load_pipeline(folder)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert str(folder) in msg and "['vae']" in msg  # what is missing, where
    assert "copy or download the missing folder" in msg  # what to do


def test_misshaped_transformer_tensor(ref, tmp_path):
    folder = _copy(ref, tmp_path / "misshaped")
    path = folder / "transformer" / WEIGHTS
    sd = {k: np.array(v) for k, v in read_safetensors(path).items()}
    name = "blocks.1.ffn.net.0.proj.weight"
    assert sd[name].shape == (DIT["ffn_dim"], DIT["num_attention_heads"] * DIT["attention_head_dim"]) == (48, 32)
    sd[name] = np.ascontiguousarray(sd[name].T)
    write_safetensors(path, sd)
    with pytest.raises(CheckpointError) as err:
        load_pipeline(folder)
    msg = str(err.value)
    assert str(folder / "transformer") in msg and "'transformer' component" in msg
    assert f"{name}: checkpoint (32, 48) vs model (48, 32)" in msg and "mis-shaped 1 tensor(s)" in msg
    assert "missing" not in msg and "unexpected" not in msg  # only the one tensor is reported
    assert "do not fit transformer/config.json" in msg and "same checkpoint" in msg


@pytest.mark.parametrize("component,file", [("transformer", WEIGHTS), ("vae", WEIGHTS),
                                            ("text_encoder", "model.safetensors")])
def test_truncated_safetensors(ref, tmp_path, component, file):
    folder = _copy(ref, tmp_path / "truncated")
    path = folder / component / file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_pipeline(folder)
    msg = str(err.value)
    assert str(path) in msg and "truncated file" in msg  # which file
    assert f"{component!r} component" in msg and f"download or copy {component}/ again" in msg  # what to do


# ----------------------------------------------------------------------------- a folder's scheduler options

@pytest.mark.parametrize("scheduler", [
    diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT, solver_order=3,
        final_sigmas_type="sigma_min", num_train_timesteps=500, disable_corrector=[1]),
    diffusers.FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT, shift_terminal=0.2, use_karras_sigmas=True),
], ids=["unipc-options", "euler-options"])
def test_folder_scheduler_options_travel_with_the_pipeline(ref, tmp_path, scheduler):
    """A folder whose scheduler_config.json sets options beyond Wan's: the Pipeline holds them (a SchedulerSpec
    in its defaults) and generate runs them, giving diffusers' WanPipeline's latents with that scheduler."""
    folder = _copy(ref, tmp_path / "options")
    scheduler.save_config(folder / "scheduler")
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))
    pipe = load_pipeline(folder)
    spec = pipe.defaults["scheduler"]
    assert isinstance(spec, SchedulerSpec) and spec.options and pipe.defaults["flow_shift"] == FLOW_SHIFT
    video = jaxvdm.generate(PROMPT, model=pipe, num_frames=FRAMES, height=HEIGHT, width=WIDTH, steps=STEPS,
                            guidance_scale=GUIDANCE, negative_prompt=NEGATIVE, latents=ref.noise.numpy(), decode=False)
    assert str(video.settings["scheduler"]) == str(spec) != spec.name

    c = ref.pipe.components
    theirs = diffusers.WanPipeline(tokenizer=c["tokenizer"], text_encoder=c["text_encoder"], vae=c["vae"],
                                   transformer=c["transformer"], scheduler=scheduler)
    captured = {}

    def keep_last(p, i, t, kw):
        if i == STEPS - 1:
            captured["latents"] = kw["latents"].clone()
        return {}

    with torch.no_grad():
        theirs(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
               num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=ref.noise.clone(), output_type="latent",
               max_sequence_length=512, callback_on_step_end=keep_last,
               callback_on_step_end_tensor_inputs=["latents"], return_dict=False)
    want = captured["latents"].numpy()
    assert rel_err(video.latents, want) <= 1e-4
    # the options mattered: the default scheduler ends elsewhere
    plain = jaxvdm.generate(PROMPT, model=pipe, num_frames=FRAMES, height=HEIGHT, width=WIDTH, steps=STEPS,
                            guidance_scale=GUIDANCE, negative_prompt=NEGATIVE, latents=ref.noise.numpy(), decode=False,
                            scheduler=spec.name)
    assert rel_err(plain.latents, want) > 1e-2


# ----------------------------------------------------------------------------- diffusers' folders jaxvdm refuses

def test_wan22_ti2v_flag_without_an_image_is_text_to_video(ref, ours, tmp_path):
    """A WanPipeline folder with expand_timesteps (Wan2.2 TI2V's flag) loads as text-image-to-video; without an
    image its per-token timesteps are all t, so it equals the same weights' text-to-video run. (Wan2.2 A14B and
    TI2V parity with diffusers: tests/test_wan22_experts.py, tests/test_ti2v.py.)"""
    c = ref.pipe.components
    base = dict(tokenizer=c["tokenizer"], text_encoder=c["text_encoder"], vae=c["vae"], transformer=c["transformer"],
                scheduler=c["scheduler"])
    ti2v = tmp_path / "Wan2.2-TI2V-tiny"
    diffusers.WanPipeline(**base, expand_timesteps=True).save_pretrained(ti2v)
    pipe = load_pipeline(ti2v)
    assert pipe.defaults["task"] == "ti2v"
    kw = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, steps=2, guidance_scale=GUIDANCE, negative_prompt=NEGATIVE,
              latents=ref.noise.numpy(), decode=False)
    assert rel_err(jaxvdm.generate(PROMPT, model=pipe, **kw).latents,
                   jaxvdm.generate(PROMPT, model=ours, **kw).latents) <= 1e-6


def test_image_to_video_folder_is_refused(ref, tmp_path):
    """A WanImageToVideoPipeline folder whose transformer does not take the I2V input (16 channels, not noise,
    mask and image latent): refused, naming it. (I2V folders that fit run: tests/test_wan_i2v_pipeline.py.)"""
    c = ref.pipe.components
    vision = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8))
    transformer = diffusers.WanTransformer3DModel(**DIT, image_dim=8, added_kv_proj_dim=32)
    folder = tmp_path / "Wan2.1-I2V-tiny"
    diffusers.WanImageToVideoPipeline(
        tokenizer=c["tokenizer"], text_encoder=c["text_encoder"], vae=c["vae"], scheduler=c["scheduler"],
        image_processor=transformers.CLIPImageProcessor(), image_encoder=vision, transformer=transformer,
    ).save_pretrained(folder)
    with pytest.raises(CheckpointError) as err:
        load_pipeline(folder)
    msg = str(err.value)
    assert "transformer/config.json has in_channels=16: an image-to-video transformer takes noise, mask" in msg


# ----------------------------------------------------------------------------- rotary table limit

def test_video_larger_than_the_rotary_table_is_refused(ref, ours):
    """The tiny DiT's table has 64 positions: 64 token rows (1024 px with VAE stride 8 and patch 2) run, 65
    (1040 px) are refused before anything is traced, naming the axis, the largest position and the limit."""
    assert ours.transformer.config.rope_max_seq_len == 64
    assert ours.latent_shape(FRAMES, 1024, WIDTH) == (1, 16, 3, 128, 4)
    with pytest.raises(SizeError) as err:
        jaxvdm.generate(PROMPT, model=ours, num_frames=FRAMES, height=1040, width=WIDTH, steps=1, decode=False)
    msg = str(err.value)
    assert "height (h) axis reach 64" in msg and "table of 64 positions" in msg
    assert "largest it covers is 253 frames of 1024x1024" in msg
    video = jaxvdm.generate(PROMPT, model=ours, num_frames=FRAMES, height=1024, width=WIDTH, steps=1, decode=False,
                            guidance_scale=1.0)
    assert np.all(np.isfinite(video.latents))
