"""The image branch (Wan2.1 I2V / FLF2V) and per-token timesteps (Wan2.2 TI2V) of the Flax Wan DiT,
against diffusers' WanTransformer3DModel with random weights, plus their checkpoint layouts and the
recipe a sequence-parallel caller follows for per-token modulation.

The configurations are diffusers' own test dummies (tests/pipelines/wan/test_wan_image_to_video.py:
the I2V and FLF2V transformers; test_wan_22.py: the TI2V-5B transformer), with ``added_kv_proj_dim``
set to the hidden size as in every published Wan2.1 I2V checkpoint (diffusers' I2V dummy leaves it
unset, which puts the image tokens into the ordinary cross-attention; that variant is tested too).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from helpers import WAN_IMAGE_NAMES, rel_err, to_original_wan_layout

from jaxvdm.models.checkpoint import CheckpointError, write_safetensors
from jaxvdm.models.wan.attention import get_attention
from jaxvdm.models.wan.transformer.keys import infer_config
from jaxvdm.models.wan.transformer import (Conditioning, CrossContext, WanConfig, load_transformer, save_converted,
                                           token_timesteps, unpatchify)
from jaxvdm.models.wan import rope as rope_lib
from jaxvdm.sharding import sequence

_BASE = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, text_dim=32, freq_dim=256, ffn_dim=32,
             num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
# diffusers splits an I2V context as "image = everything before the last 512 tokens", so a model with
# image keys/values is compared at the text length Wan always uses, 512.
CONFIGS = {
    "i2v": dict(cfg=dict(_BASE, in_channels=36, out_channels=16, image_dim=4, added_kv_proj_dim=24),
                latent=(3, 4, 6), text_len=512, image_len=5),
    "flf2v": dict(cfg=dict(_BASE, in_channels=36, out_channels=16, image_dim=4, added_kv_proj_dim=24,
                           pos_embed_seq_len=2 * (4 * 4 + 1)),
                  latent=(2, 4, 4), text_len=512, image_len=2 * (4 * 4 + 1)),
    "i2v_no_added_kv": dict(cfg=dict(_BASE, in_channels=36, out_channels=16, image_dim=4),
                            latent=(2, 2, 4), text_len=16, image_len=5),
}
TI2V = dict(cfg=dict(_BASE, in_channels=48, out_channels=48), latent=(3, 4, 6), text_len=16)


def _torch_model(cfg: dict, seed: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    m = WanTransformer3DModel(**cfg).eval()
    with torch.no_grad():  # perturb every tensor (the FLF2V position embedding starts at zero)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def _inputs(spec, batch=2, seed=1):
    g = np.random.default_rng(seed)
    cfg = spec["cfg"]
    x = g.standard_normal((batch, cfg["in_channels"], *spec["latent"]), dtype=np.float32)
    ts = np.array([999.0, 417.0][:batch], np.float32)
    ctx = g.standard_normal((batch, spec["text_len"], cfg["text_dim"]), dtype=np.float32)
    img = None
    if "image_len" in spec:
        img = g.standard_normal((batch, spec["image_len"], cfg["image_dim"]), dtype=np.float32)
    return x, ts, ctx, img


def _reference(m, x, ts, ctx, img=None, flf=False) -> np.ndarray:
    kw = {}
    if img is not None:
        # diffusers' FLF2V pipeline hands the transformer [2B, P/2, C] (two images per sample)
        kw["encoder_hidden_states_image"] = torch.from_numpy(img.reshape(-1, img.shape[1] // 2, img.shape[2]) if flf
                                                             else img)
    with torch.no_grad():
        return m(torch.from_numpy(x), torch.from_numpy(ts), torch.from_numpy(ctx), return_dict=False, **kw)[0].numpy()


def _ours(model, x, ts, ctx, img=None) -> np.ndarray:
    f = jax.jit(lambda x, t, c, i: model(x, t, c, image=i))
    return np.asarray(f(jnp.asarray(x), jnp.asarray(ts), jnp.asarray(ctx), None if img is None else jnp.asarray(img)))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def saved(request, tmp_path_factory):
    spec = CONFIGS[request.param]
    m = _torch_model(spec["cfg"], seed=len(request.param))
    path = tmp_path_factory.mktemp(f"wan_{request.param}")
    m.save_pretrained(path, safe_serialization=True)
    x, ts, ctx, img = _inputs(spec)
    ref = _reference(m, x, ts, ctx, img, flf=request.param == "flf2v")
    return dict(name=request.param, spec=spec, torch=m, path=path, inputs=(x, ts, ctx, img), ref=ref)


def test_image_branch_parity_float32(saved):
    model = load_transformer(saved["path"])
    assert model.config.in_channels == 36 and model.config.image_dim == 4
    out = _ours(model, *saved["inputs"])
    assert out.shape == saved["ref"].shape == (2, 16, *saved["spec"]["latent"])
    assert rel_err(out, saved["ref"]) <= 1e-5
    # the image matters: other image states give another velocity (the branch is not dead code)
    x, ts, ctx, img = saved["inputs"]
    assert rel_err(_ours(model, x, ts, ctx, img[::-1].copy()), out) > 1e-3


def test_image_branch_orbax_roundtrip_identical(saved, tmp_path):
    model = load_transformer(saved["path"])
    save_converted(model, tmp_path / "converted")
    again = load_transformer(tmp_path / "converted")
    assert again.config == model.config
    np.testing.assert_array_equal(_ours(again, *saved["inputs"]), _ours(model, *saved["inputs"]))


def test_image_branch_bfloat16_close_to_float32(saved):
    f32 = _ours(load_transformer(saved["path"]), *saved["inputs"])
    bf16 = _ours(load_transformer(saved["path"], dtype=jnp.bfloat16), *saved["inputs"])
    assert bf16.dtype == np.float32 and rel_err(bf16, f32) <= 3e-2


def _original_config(cfg: dict, model_type: str) -> dict:
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return {"_class_name": "WanModel", "model_type": model_type, "dim": d, "num_heads": cfg["num_attention_heads"],
            "ffn_dim": cfg["ffn_dim"], "freq_dim": cfg["freq_dim"], "in_dim": cfg["in_channels"],
            "out_dim": cfg["out_channels"], "num_layers": cfg["num_layers"], "text_dim": cfg["text_dim"],
            "patch_size": list(cfg["patch_size"]), "cross_attn_norm": True, "eps": 1e-6}


@pytest.mark.parametrize("name", ["i2v", "flf2v"])
def test_original_layout_equals_diffusers(name, tmp_path):
    spec = CONFIGS[name]
    m = _torch_model(spec["cfg"], seed=7)
    m.save_pretrained(tmp_path / "diffusers", safe_serialization=True)
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    orig = to_original_wan_layout(sd, WAN_IMAGE_NAMES)
    assert any(k.endswith("cross_attn.k_img.weight") for k in orig) and "img_emb.proj.1.weight" in orig
    # the test-side mapping agrees with diffusers' converter (which leaves FLF2V's img_emb.emb_pos unmapped)
    back = convert_wan_transformer_to_diffusers({k: torch.from_numpy(v) for k, v in orig.items()})
    expected = set(sd) - {"condition_embedder.image_embedder.pos_embed"}
    expected |= {"img_emb.emb_pos"} if name == "flf2v" else set()
    assert set(back) == expected
    (tmp_path / "orig").mkdir()
    write_safetensors(tmp_path / "orig" / "wan.safetensors", orig)
    (tmp_path / "orig" / "config.json").write_text(json.dumps(_original_config(spec["cfg"], name)))
    reference = load_transformer(tmp_path / "diffusers")
    model = load_transformer(tmp_path / "orig")
    assert model.config == dataclasses.replace(reference.config, rope_max_seq_len=1024)
    inputs = _inputs(spec, batch=1)
    np.testing.assert_array_equal(_ours(model, *inputs), _ours(reference, *inputs))
    # a bare file (no config.json) infers the same architecture, image branch included
    assert infer_config(orig, head_dim=spec["cfg"]["attention_head_dim"]) == model.config
    # a config.json whose model_type contradicts the tensors is refused, naming both
    for wrong in ("t2v", "i2v" if name == "flf2v" else "flf2v"):
        (tmp_path / "orig" / "config.json").write_text(json.dumps(_original_config(spec["cfg"], wrong)))
        with pytest.raises(CheckpointError, match=f"says model_type '{wrong}' but the checkpoint"):
            load_transformer(tmp_path / "orig")


# ------------------------------------------------------------------------------ per-token timesteps


def _first_frame_mask(latent):
    mask = np.ones(latent, np.float32)
    mask[0] = 0.0  # the conditioning frame (Wan2.2 TI2V image-to-video)
    return mask


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory):
    m = _torch_model(TI2V["cfg"], seed=11)
    path = tmp_path_factory.mktemp("wan_ti2v")
    m.save_pretrained(path, safe_serialization=True)
    return dict(torch=m, model=load_transformer(path))


def test_per_token_timesteps_parity(ti2v):
    x, _, ctx, _ = _inputs(TI2V)
    mask = _first_frame_mask(TI2V["latent"])
    t = 731.0
    ts = np.asarray(token_timesteps(mask, t, TI2V["cfg"]["patch_size"]))
    # diffusers' pipeline builds the same per-token timesteps: (mask[:, ::2, ::2] * t).flatten()
    np.testing.assert_array_equal(ts, (mask[:, ::2, ::2] * np.float32(t)).reshape(-1))
    assert (ts == 0).sum() == 2 * 3 and (ts == t).sum() == ts.size - 6
    ts_b = np.stack([ts, ts * 0.5])  # two samples with different per-token timesteps
    ref = _reference(ti2v["torch"], x, ts_b, ctx)
    out = _ours(ti2v["model"], x, ts_b, ctx)
    assert out.shape == ref.shape == (2, 48, *TI2V["latent"])
    assert rel_err(out, ref) <= 1e-5
    # equal per-token timesteps are the per-sample path
    flat = np.full_like(ts_b, 417.0)
    per_sample = _ours(ti2v["model"], x, np.full(2, 417.0, np.float32), ctx)
    assert rel_err(_ours(ti2v["model"], x, flat, ctx), per_sample) <= 2e-6


def _sequence_parallel_forward(model, x, t, ctx, img, mesh):
    """The recipe for a sequence-parallel caller: tokens, rotary positions *and per-token timesteps*
    split the same way (shard_tokens), embed_condition on the local timesteps, Ulysses attention."""
    cfg = model.config
    grid = cfg.token_grid(x.shape[2:])

    def per_device(x, t, ctx, img):
        tokens = model.embed_tokens(x)
        s = tokens.shape[1]
        axes = ("sp",)
        if t.ndim == 2:
            t = sequence.shard_tokens(t, axes, axis=1)
        temb, tproj, context = model.embed_condition(t, ctx, img)
        tokens = sequence.shard_tokens(tokens, axes)
        cos, sin = model.rope(sequence.shard_tokens(rope_lib.grid_positions(grid), axes, axis=0))
        attn = sequence.ulysses("sp", get_attention("xla"))
        h = model.run_blocks(tokens, Conditioning(tproj, context, cos, sin), self_attention=attn,
                             cross_attention="xla", kv_len=s)
        out = sequence.gather_tokens(model.head_tokens(h, temb), axes, s)
        return unpatchify(out, grid, cfg.patch_size, cfg.out_channels)

    P = jax.sharding.PartitionSpec
    f = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(), P()), out_specs=P(), check_vma=False)
    return np.asarray(jax.jit(f)(x, t, ctx, img))


def test_sequence_parallel_splits_per_token_modulation_like_tokens(ti2v, devices):
    mesh = jax.sharding.Mesh(np.array(devices[:4]), ("sp",))
    # 3*2*3 = 18 tokens on 4 devices (padded to 20), per-token timesteps with a t = 0 first frame
    x, _, ctx, _ = _inputs(TI2V, batch=1)
    ts = token_timesteps(_first_frame_mask(TI2V["latent"]), 655.0, TI2V["cfg"]["patch_size"])[None]
    single = _ours(ti2v["model"], x, ts, ctx)
    split = _sequence_parallel_forward(ti2v["model"], jnp.asarray(x), ts, jnp.asarray(ctx), None, mesh)
    assert rel_err(split, single) <= 2e-6


def test_sequence_parallel_carries_the_image_context(devices, tmp_path):
    """FLF2V (image keys/values and position embedding): the CrossContext travels inside
    Conditioning.context through the sharded path unchanged."""
    spec = CONFIGS["flf2v"]
    _torch_model(spec["cfg"], seed=3).save_pretrained(tmp_path, safe_serialization=True)
    model = load_transformer(tmp_path)
    x, ts, ctx, img = _inputs(dict(spec, text_len=8), batch=1)
    mesh = jax.sharding.Mesh(np.array(devices[:4]), ("sp",))
    split = _sequence_parallel_forward(model, jnp.asarray(x), jnp.asarray(ts), jnp.asarray(ctx), jnp.asarray(img), mesh)
    assert rel_err(split, _ours(model, x, ts, ctx, img)) <= 2e-6


# ----------------------------------------------------------------------------------------- errors


def test_errors(saved, ti2v):
    model = load_transformer(saved["path"])
    x, ts, ctx, img = saved["inputs"]
    with pytest.raises(ValueError, match="image-conditioned .*pass image="):
        model(x, ts, ctx)
    if saved["name"] == "flf2v":
        with pytest.raises(ValueError, match=r"reshape\(B, P, C\)"):
            model(x, ts, ctx, image=img.reshape(-1, img.shape[1] // 2, img.shape[2]))
    with pytest.raises(ValueError, match="no image branch"):
        ti2v["model"](np.zeros((1, 48, 1, 2, 2), np.float32), np.ones(1, np.float32), ctx[:1, :4], image=img[:1])
    with pytest.raises(ValueError, match="per-token timestep has 5 entries, the latent has 1 tokens"):
        ti2v["model"](np.zeros((1, 48, 1, 2, 2), np.float32), np.ones((1, 5), np.float32), ctx[:1, :4])
    assert isinstance(model.embed_condition(ts, ctx, img)[2], CrossContext)
    with pytest.raises(ValueError, match="added_kv_proj_dim=8 must equal the hidden size 24"):
        WanConfig(**dict(CONFIGS["i2v"]["cfg"], added_kv_proj_dim=8))
