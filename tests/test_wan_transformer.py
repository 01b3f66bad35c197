"""The Flax Wan DiT against diffusers' WanTransformer3DModel, checkpoint loading, and its parts."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from helpers import rel_err, to_original_wan_layout

from jaxvdm.models.checkpoint import CheckpointError, read_safetensors, write_safetensors
from jaxvdm.models.wan import rope as rope_lib
from jaxvdm.models.wan.transformer import (
    WanConfig,
    abstract_transformer,
    count_parameters,
    load_transformer,
    save_converted,
)
from jaxvdm.models.presets import wan_config

# Three small configurations that differ in heads, head dim, FFN width, text length/dim, patch,
# latent sizes (odd ones included) and the cross-attention norm.
CONFIGS = {
    "a": dict(cfg=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                       out_channels=4, text_dim=24, freq_dim=32, ffn_dim=40, num_layers=3, rope_max_seq_len=64),
              latent=(3, 6, 10), text_len=7),
    "b": dict(cfg=dict(patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=12, in_channels=3,
                       out_channels=5, text_dim=16, freq_dim=16, ffn_dim=64, num_layers=2, cross_attn_norm=False,
                       rope_max_seq_len=32),
              latent=(5, 2, 4), text_len=5),
    "c": dict(cfg=dict(patch_size=(2, 2, 1), num_attention_heads=4, attention_head_dim=8, in_channels=2,
                       out_channels=2, text_dim=32, freq_dim=256, ffn_dim=24, num_layers=4, rope_max_seq_len=128),
              latent=(4, 6, 3), text_len=11),
}


def _torch_model(cfg: dict, seed: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    m = WanTransformer3DModel(**cfg).eval()
    with torch.no_grad():  # perturb every tensor so norms, biases and tables are not trivially 0/1
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def _inputs(spec: dict, cfg: dict, batch: int = 2, seed: int = 1):
    g = np.random.default_rng(seed)
    t, h, w = spec["latent"]
    x = g.standard_normal((batch, cfg["in_channels"], t, h, w), dtype=np.float32)
    ts = np.array([999.0, 417.0, 3.0][:batch], np.float32)
    ctx = g.standard_normal((batch, spec["text_len"], cfg["text_dim"]), dtype=np.float32)
    return x, ts, ctx


def _reference(m: WanTransformer3DModel, x, ts, ctx) -> np.ndarray:
    with torch.no_grad():
        return m(torch.from_numpy(x), torch.from_numpy(ts), torch.from_numpy(ctx), return_dict=False)[0].numpy()


def _ours(model, x, ts, ctx) -> np.ndarray:
    return np.asarray(jax.jit(lambda x, t, c: model(x, t, c))(jnp.asarray(x), jnp.asarray(ts), jnp.asarray(ctx)))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def saved(request, tmp_path_factory):
    """A random diffusers model of one configuration, saved (config 'a' sharded), with reference outputs."""
    spec = CONFIGS[request.param]
    m = _torch_model(spec["cfg"], seed=ord(request.param))
    path = tmp_path_factory.mktemp(f"wan_{request.param}")
    shard = "30KB" if request.param == "a" else "10GB"
    m.save_pretrained(path, safe_serialization=True, max_shard_size=shard)
    x, ts, ctx = _inputs(spec, spec["cfg"])
    return dict(name=request.param, spec=spec, torch=m, path=path, inputs=(x, ts, ctx), ref=_reference(m, x, ts, ctx))


def test_parity_float32(saved):
    if saved["name"] == "a":
        assert any(p.name.endswith(".index.json") for p in saved["path"].iterdir()), "config a must be a sharded save"
    model = load_transformer(saved["path"])
    out = _ours(model, *saved["inputs"])
    assert out.shape == saved["ref"].shape
    assert rel_err(out, saved["ref"]) <= 1e-5


def test_bfloat16_close_to_float32(saved):
    f32 = _ours(load_transformer(saved["path"]), *saved["inputs"])
    bf16 = _ours(load_transformer(saved["path"], dtype=jnp.bfloat16), *saved["inputs"])
    assert bf16.dtype == np.float32  # the velocity comes back in float32
    assert rel_err(bf16, f32) <= 2e-2


def test_original_layout_equals_diffusers(saved, tmp_path):
    sd = {k: v.detach().numpy() for k, v in saved["torch"].state_dict().items()}
    orig = to_original_wan_layout(sd)
    # our test-side mapping is validated against diffusers' own converter
    back = convert_wan_transformer_to_diffusers({k: torch.from_numpy(v) for k, v in orig.items()})
    assert set(back) == set(sd)
    cfg = saved["spec"]["cfg"]
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    original_config = {"_class_name": "WanModel", "model_type": "t2v", "dim": d, "num_heads": cfg["num_attention_heads"],
                       "ffn_dim": cfg["ffn_dim"], "freq_dim": cfg["freq_dim"], "in_dim": cfg["in_channels"],
                       "out_dim": cfg["out_channels"], "num_layers": cfg["num_layers"], "text_dim": cfg["text_dim"],
                       "patch_size": list(cfg["patch_size"]), "cross_attn_norm": cfg.get("cross_attn_norm", True),
                       "eps": 1e-6}
    write_safetensors(tmp_path / "wan_original.safetensors", orig)
    (tmp_path / "config.json").write_text(json.dumps(original_config))
    model = load_transformer(tmp_path)
    cfg_obj = WanConfig.from_dict(json.loads((saved["path"] / "config.json").read_text()))
    # original Wan fixes the rotary table at 1024 positions; everything else must round-trip
    assert model.config == dataclasses.replace(cfg_obj, rope_max_seq_len=1024)
    out = _ours(model, *saved["inputs"])
    ref_ours = _ours(load_transformer(saved["path"]), *saved["inputs"])
    np.testing.assert_array_equal(out, ref_ours)


def test_orbax_roundtrip_identical(saved, tmp_path):
    model = load_transformer(saved["path"])
    save_converted(model, tmp_path / "converted")
    again = load_transformer(tmp_path / "converted")
    assert again.config == model.config
    np.testing.assert_array_equal(_ours(again, *saved["inputs"]), _ours(model, *saved["inputs"]))
    with pytest.raises(FileExistsError):
        save_converted(model, tmp_path / "converted")


# ------------------------------------------------------------------------------------------ parts


def test_rope_matches_reference_and_offsets():
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    head_dim, grid = 16, (3, 6, 10)
    ref = WanRotaryPosEmbed(head_dim, (1, 1, 1), 64)
    cos_ref, sin_ref = (a.numpy()[0, :, 0] for a in ref(torch.zeros(1, 1, *grid)))
    cos, sin = rope_lib.rope_cos_sin(rope_lib.grid_positions(grid), head_dim, 64)
    # the reference repeats each pair's value twice
    np.testing.assert_allclose(np.asarray(cos), cos_ref[:, 0::2], atol=1e-7)
    np.testing.assert_allclose(np.asarray(sin), sin_ref[:, 1::2], atol=1e-7)
    # a window's tables with its offset equal the full grid's rows of the same coordinates
    full = np.asarray(cos).reshape(*grid, -1), np.asarray(sin).reshape(*grid, -1)
    for off, sub in [((1, 0, 0), (2, 6, 10)), ((0, 2, 0), (3, 3, 10)), ((0, 0, 4), (3, 6, 5)), ((1, 3, 7), (1, 2, 3))]:
        c, s = rope_lib.rope_cos_sin(rope_lib.grid_positions(sub, off), head_dim, 64)
        sl = tuple(slice(o, o + n) for o, n in zip(off, sub))
        np.testing.assert_array_equal(np.asarray(c).reshape(*sub, -1), full[0][sl])
        np.testing.assert_array_equal(np.asarray(s).reshape(*sub, -1), full[1][sl])
    # traced offsets give the same tables
    c_jit = jax.jit(lambda o: rope_lib.rope_cos_sin(rope_lib.grid_positions((1, 2, 3), o), head_dim, 64)[0])
    c, _ = rope_lib.rope_cos_sin(rope_lib.grid_positions((1, 2, 3), (1, 3, 7)), head_dim, 64)
    np.testing.assert_array_equal(np.asarray(c_jit(jnp.array([1, 3, 7]))), np.asarray(c))


def test_global_offset_is_translation_invariant():
    """RoPE encodes relative positions: the same grid at any global offset gives the same output.

    A bug that applies the offset to queries but not keys, or to the wrong axis table, breaks this.
    """
    spec = CONFIGS["a"]
    model = load_transformer_from_torch(spec)
    x, ts, ctx = (jnp.asarray(a) for a in _inputs(spec, spec["cfg"]))
    base = np.asarray(model(x, ts, ctx))
    for off in [(2, 0, 0), (0, 5, 0), (1, 3, 7)]:
        assert rel_err(np.asarray(model(x, ts, ctx, offset=off)), base) <= 2e-6


_CACHE = {}


def load_transformer_from_torch(spec):
    key = id(spec)
    if key not in _CACHE:
        import tempfile

        d = tempfile.mkdtemp()
        _torch_model(spec["cfg"], seed=5).save_pretrained(d, safe_serialization=True)
        _CACHE[key] = load_transformer(d)
        shutil.rmtree(d)
    return _CACHE[key]


def test_blocks_in_two_ranges_equal_all_layers():
    spec = CONFIGS["c"]
    model = load_transformer_from_torch(spec)
    x, ts, ctx = (jnp.asarray(a) for a in _inputs(spec, spec["cfg"]))
    tokens, temb, cond = model.embed(x, ts, ctx)
    n = model.config.num_layers
    full = model.run_blocks(tokens, cond)
    for k in range(1, n):
        split = model.run_blocks(model.run_blocks(tokens, cond, layers=(0, k)), cond, layers=(k, n))
        np.testing.assert_allclose(np.asarray(split), np.asarray(full), rtol=0, atol=1e-6)
    skipped = model.run_blocks(tokens, cond, layer_valid=jnp.array([True, False, True, True]))
    manual = model.run_blocks(model.run_blocks(tokens, cond, layers=(0, 1)), cond, layers=(2, 4))
    np.testing.assert_allclose(np.asarray(skipped), np.asarray(manual), rtol=0, atol=1e-6)


def test_preset_parameter_counts_without_allocating():
    assert count_parameters(abstract_transformer(wan_config("wan2.1-t2v-1.3b"))) == 1_418_996_800
    assert count_parameters(abstract_transformer(wan_config("wan2.1-t2v-14b"))) == 14_288_491_584


# ------------------------------------------------------------------------------------------ errors


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    _torch_model(CONFIGS["b"]["cfg"], seed=3).save_pretrained(d, safe_serialization=True)
    return d


def _variant(good_dir, tmp_path, edit):
    d = tmp_path / "ckpt"
    shutil.copytree(good_dir, d)
    f = d / "diffusion_pytorch_model.safetensors"
    sd = {k: np.array(v) for k, v in read_safetensors(f).items()}
    edit(sd)
    write_safetensors(f, sd)
    return d


def test_error_missing_tensor(good_dir, tmp_path):
    d = _variant(good_dir, tmp_path, lambda sd: sd.pop("blocks.1.attn2.to_k.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): blocks\.1\.attn2\.to_k\.weight"):
        load_transformer(d)


def test_error_unexpected_tensor(good_dir, tmp_path):
    d = _variant(good_dir, tmp_path, lambda sd: sd.update({"blocks.0.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected 1 tensor\(s\): blocks\.0\.extra\.weight"):
        load_transformer(d)


def test_error_misshaped_tensor_and_reports_all(good_dir, tmp_path):
    def edit(sd):
        sd["proj_out.weight"] = np.zeros((7, 36), np.float32)
        sd.pop("blocks.0.ffn.net.2.bias")

    d = _variant(good_dir, tmp_path, edit)
    with pytest.raises(CheckpointError) as e:
        load_transformer(d)
    msg = str(e.value)
    assert "proj_out.weight: checkpoint (7, 36) vs model (20, 36)" in msg
    assert "blocks.0.ffn.net.2.bias" in msg


def test_error_config_mismatch_names_tensors(good_dir, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(good_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_layers"] = 3
    cfg["ffn_dim"] = 32
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        load_transformer(d)
    assert "blocks.2.attn1.to_q.weight" in str(e.value)
    assert "blocks.0.ffn.net.0.proj.weight: checkpoint (64, 36) vs model (32, 36)" in str(e.value)


def test_error_truncated_file(good_dir, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(good_dir, d)
    f = d / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors: truncated file"):
        load_transformer(d)


def test_error_corrupt_header(good_dir, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(good_dir, d)
    f = d / "diffusion_pytorch_model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[10:20] = b"\x00garbage\xff\xfe"
    f.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors: corrupt"):
        load_transformer(d)


def test_error_missing_shard(tmp_path):
    m = _torch_model(CONFIGS["a"]["cfg"], seed=9)
    m.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="30KB")
    shard = sorted(tmp_path.glob("*-of-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name + ": weights file not found"):
        load_transformer(tmp_path)


def test_error_no_config_and_no_weights(good_dir, tmp_path):
    d = tmp_path / "noconfig"
    shutil.copytree(good_dir, d)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json \(expected config\.json beside the safetensors"):
        load_transformer(d)
    e = tmp_path / "noweights"
    e.mkdir()
    shutil.copy(good_dir / "config.json", e / "config.json")
    (e / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match=r"no weights: expected diffusion_pytorch_model\.safetensors.*only reads safetensors"):
        load_transformer(e)


def test_config_validates_image_branch_and_unknown_keys():
    # the image branch is accepted (tests/test_wan_i2v_transformer.py runs it), but only whole
    assert WanConfig.from_dict({"image_dim": 1280, "num_layers": 2}).image_dim == 1280
    with pytest.raises(ValueError, match="belong to the image branch: they need image_dim"):
        WanConfig.from_dict({"added_kv_proj_dim": 1536, "num_layers": 2})
    with pytest.raises(ValueError, match="added_kv_proj_dim=1280 must equal the hidden size 1536"):
        WanConfig.from_dict({"image_dim": 1280, "added_kv_proj_dim": 1280, "num_layers": 2})
    with pytest.raises(ValueError, match="unknown Wan transformer config keys"):
        WanConfig.from_dict({"num_layers": 2, "foo": 1})
