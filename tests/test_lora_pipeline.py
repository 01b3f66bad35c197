"""LoRA at load time: ``load_pipeline(folder, lora=[(file, scale), ...])`` equals diffusers' ``load_lora_weights``
at the same scale, on a tiny random folder (<= 1e-4 on the final latents).

The LoRA files are PEFT adapters on every block projection of the tiny transformer, saved with diffusers'
``WanPipeline.save_lora_weights`` (the layout diffusers writes); a Wan2.2 two-expert folder takes one LoRA
in its high-noise ``transformer`` and another in ``transformer_2`` (diffusers' ``load_into_transformer_2``).
"""

import types

import pytest
from helpers import rel_err

import jaxvdm
from jaxvdm.models.checkpoint import CheckpointError
from jaxvdm.models.wan.pipeline import load_pipeline

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

import tiny_wan  # noqa: E402

FRAMES, HEIGHT, WIDTH, STEPS, G = 9, 32, 32, 4, 5.0
S1, S2 = 0.7, 0.5


def _lora_file(folder, seed):
    """A PEFT LoRA on every block projection of the tiny transformer, saved as diffusers saves one."""
    m = tiny_wan.transformer(0)
    torch.manual_seed(seed)
    m.add_adapter(peft.LoraConfig(r=4, lora_alpha=6, init_lora_weights=False,
                                  target_modules=["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2"]))
    folder.mkdir()
    diffusers.WanPipeline.save_lora_weights(folder, transformer_lora_layers=peft.utils.get_peft_model_state_dict(m))
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_pipe")
    tokenizer, encoder = tiny_wan.text_parts(root)
    parts = dict(tokenizer=tokenizer, text_encoder=encoder, vae=tiny_wan.vae(), scheduler=tiny_wan.scheduler(5.0))
    t2v = root / "t2v"
    diffusers.WanPipeline(transformer=tiny_wan.transformer(1), **parts).save_pretrained(t2v)
    a14b = root / "a14b"
    diffusers.WanPipeline(transformer=tiny_wan.transformer(1), transformer_2=tiny_wan.transformer(7),
                          boundary_ratio=0.9, **parts).save_pretrained(a14b)
    return types.SimpleNamespace(t2v=t2v, a14b=a14b, lora1=_lora_file(root / "l1", 11), lora2=_lora_file(root / "l2", 12),
                                 noise=torch.randn((1, 16, 3, 4, 4), generator=torch.Generator().manual_seed(3)))


def _theirs(folder, loras):
    pipe = (diffusers.WanPipeline.from_pretrained(folder))
    names, scales = [], []
    for i, (path, scale, *into) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"l{i}", load_into_transformer_2=bool(into))
        names.append(f"l{i}")
        scales.append(scale)
    if names:
        pipe.set_adapters(names, scales)
    with torch.no_grad():
        return pipe(prompt=tiny_wan.PROMPT, negative_prompt=tiny_wan.NEGATIVE, num_frames=FRAMES, height=HEIGHT,
                    width=WIDTH, num_inference_steps=STEPS, guidance_scale=G, latents=_NOISE[0].clone(),
                    output_type="latent", return_dict=False, max_sequence_length=512)[0].numpy()


_NOISE = []


def _ours(pipe):
    return jaxvdm.generate(tiny_wan.PROMPT, model=pipe, negative_prompt=tiny_wan.NEGATIVE, num_frames=FRAMES,
                           height=HEIGHT, width=WIDTH, steps=STEPS, guidance_scale=G, latents=_NOISE[0].numpy(),
                           decode=False).latents


def test_lora_at_load_matches_diffusers(env):
    _NOISE[:] = [env.noise]
    theirs = _theirs(env.t2v, [(env.lora1, S1)])
    ours = _ours(load_pipeline(env.t2v, lora=[(env.lora1, S1)]))
    assert rel_err(ours, theirs) <= 1e-4
    plain = _ours(load_pipeline(env.t2v))
    assert rel_err(plain, theirs) > 1e-3  # the LoRA changes the video
    # two LoRAs in one transformer add up, each at its scale
    both = _theirs(env.t2v, [(env.lora1, S1), (env.lora2, S2)])
    assert rel_err(_ours(load_pipeline(env.t2v, lora=[(env.lora1, S1), (str(env.lora2), S2)])), both) <= 1e-4


def test_lora_into_each_expert_matches_diffusers(env):
    _NOISE[:] = [env.noise]
    theirs = _theirs(env.a14b, [(env.lora1, S1), (env.lora2, S2, "transformer_2")])
    ours = _ours(load_pipeline(env.a14b, lora=[(env.lora1, S1), (env.lora2, S2, "transformer_2")]))
    assert rel_err(ours, theirs) <= 1e-4
    only_first = _theirs(env.a14b, [(env.lora1, S1)])
    assert rel_err(only_first, theirs) > 1e-3  # the second expert's LoRA matters


def test_lora_refusals(env, tmp_path):
    with pytest.raises(ValueError, match="transformer_2.*one transformer"):
        load_pipeline(env.t2v, lora=[(env.lora1, S1, "transformer_2")])
    with pytest.raises(ValueError, match="lora entries are"):
        load_pipeline(env.t2v, lora=[env.lora1])
    with pytest.raises(ValueError, match="scale"):
        load_pipeline(env.t2v, lora=[(env.lora1, "big")])
    with pytest.raises(CheckpointError):
        load_pipeline(env.t2v, lora=[(tmp_path / "missing.safetensors", 1.0)])


def test_cli_lora_flag(env, tmp_path, capsys):
    """``jaxvdm generate --model FOLDER --lora FILE:SCALE`` runs the folder with that LoRA merged."""
    from jaxvdm.cli import main
    from jaxvdm.video import Video

    out = tmp_path / "v.npz"
    size = ["--num-frames", str(FRAMES), "--height", str(HEIGHT), "--width", str(WIDTH), "--steps", "2"]
    assert main(["generate", tiny_wan.PROMPT, "--model", str(env.t2v), "--lora", f"{env.lora1}:{S1}", *size,
                 "-o", str(out)]) == 0
    want = jaxvdm.generate(tiny_wan.PROMPT, model=load_pipeline(env.t2v, lora=[(env.lora1, S1)]), num_frames=FRAMES,
                           height=HEIGHT, width=WIDTH, steps=2, decode=False)
    assert rel_err(Video.load_npz(out).latents, want.latents) <= 1e-6
    plain = jaxvdm.generate(tiny_wan.PROMPT, model=load_pipeline(env.t2v), num_frames=FRAMES, height=HEIGHT,
                            width=WIDTH, steps=2, decode=False)
    assert rel_err(plain.latents, want.latents) > 1e-3
    assert main(["generate", tiny_wan.PROMPT, "--model", str(env.t2v), "--lora-2", str(env.lora1), *size,
                 "-o", str(tmp_path / "w.npz")]) == 2
    assert "target transformer_2 needs a Wan2.2 two-expert folder" in capsys.readouterr().err
    assert main(["generate", tiny_wan.PROMPT, "--model", str(env.t2v), "--lora", "missing.safetensors:0.5", *size,
                 "-o", str(tmp_path / "x.npz")]) == 2
    assert "no such file 'missing.safetensors'" in capsys.readouterr().err
