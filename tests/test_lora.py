"""LoRA for the Wan DiT: parity of merged models with diffusers' fused LoRA, layouts, round trip, refusals.

The reference is diffusers' own path: ``WanPipeline.lora_state_dict`` (which converts the original Wan
and musubi layouts) and ``WanTransformer3DModel.load_lora_adapter`` + ``fuse_lora(lora_scale=...)``
through PEFT, on diffusers' tiny Wan LoRA test transformer (``tests/lora/test_lora_layers_wan.py``)
with every tensor perturbed. Our model is loaded from the same base weights with
``params_from_diffusers`` and merged with :func:`merge_lora`; one compiled forward serves every model.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import rel_err

from jaxvdm.models.checkpoint import CheckpointError, model_from_params, write_safetensors
from jaxvdm.models.wan.lora import (LoraError, check_lora, load_lora, lora_from_state_dict, merge_lora,
                                    merge_lora_params, unmerge_lora)
from jaxvdm.models.wan.transformer import WanConfig, abstract_transformer, params_from_diffusers

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

CFG = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
           text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
           qk_norm="rms_norm_across_heads", rope_max_seq_len=32)  # diffusers' WanLoRATests.transformer_kwargs
SCALE = 0.7
BLOCK_ORIG = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
              "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"]


def _torch_base() -> "diffusers.WanTransformer3DModel":
    torch.manual_seed(0)
    m = diffusers.WanTransformer3DModel(**CFG).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


@pytest.fixture(scope="module")
def env():
    """Base weights, our base model, a compiled forward, inputs, and a function running diffusers' fused LoRA."""
    base_sd = {k: v.detach().numpy().copy() for k, v in _torch_base().state_dict().items()}
    cfg = WanConfig(**CFG)
    ours = model_from_params(abstract_transformer(cfg), params_from_diffusers(cfg, base_sd))
    graphdef = nnx.graphdef(ours)
    fwd = jax.jit(lambda state, x, t, c: nnx.merge(graphdef, state)(x, t, c))
    g = np.random.default_rng(0)
    # timestep 100: at 600 the base model alone is 1.0e-5 from diffusers (time-embedding rounding, not LoRA)
    inputs = (g.standard_normal((1, 16, 3, 4, 6), dtype=np.float32), np.array([100.0], np.float32),
              g.standard_normal((1, 5, 32), dtype=np.float32))

    def run(model):
        return np.asarray(fwd(nnx.state(model), *map(jnp.asarray, inputs)))

    def reference(path, scale=SCALE):
        """diffusers' output with the LoRA file fused at ``scale``, and its fused weights in our tree."""
        m = _torch_base()
        sd, meta = diffusers.WanPipeline.lora_state_dict(str(path), return_lora_metadata=True)
        m.load_lora_adapter(sd, prefix="transformer", metadata=meta, adapter_name="test")
        m.fuse_lora(lora_scale=scale)
        with torch.no_grad():
            out = m(*map(torch.from_numpy, inputs), return_dict=False)[0].numpy()
        fused = {k.replace(".base_layer", ""): v.detach().numpy()
                 for k, v in m.state_dict().items() if "lora_" not in k}
        return out, params_from_diffusers(cfg, fused)

    return dict(cfg=cfg, sd=base_sd, ours=ours, run=run, reference=reference, base_out=run(ours))


def _leaves(model):
    return [np.array(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model)))]


def _check_against(env, merged, path):
    """Our merged model against diffusers' fused one: every weight to 1e-6 and the forward to 1e-5 (relative).
    diffusers loads LoRAs through PEFT (not a dependency of jaxvdm): without it the comparison is skipped."""
    pytest.importorskip("peft")
    want_out, want_params = env["reference"](path)
    got = nnx.to_pure_dict(nnx.state(merged))
    assert jax.tree.structure(got) == jax.tree.structure(want_params)
    worst = max(rel_err(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want_params)))
    assert worst <= 1e-6
    assert rel_err(env["base_out"], want_out) > 1e-2  # the LoRA changes the output
    assert rel_err(env["run"](merged), want_out) <= 1e-5


@pytest.mark.parametrize("rslora", [False, True])
def test_diffusers_layout_fused_matches_diffusers(env, tmp_path, rslora):
    """A PEFT LoRA on every linear (blocks, patch embedding, condition embedder, head) with mixed ranks and
    alphas (diffusers' metadata: rank_pattern, alpha_pattern, lora_alpha != r) and lora_B biases."""
    peft = pytest.importorskip("peft")
    LoraConfig, get_peft_model_state_dict = peft.LoraConfig, peft.utils.get_peft_model_state_dict

    m = _torch_base()
    lcfg = LoraConfig(r=4, lora_alpha=6, init_lora_weights=False, lora_bias=True, use_rslora=rslora,
                      target_modules=["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2", "proj_out",
                                      "patch_embedding", "time_proj", "linear_1", "linear_2"],
                      rank_pattern={"blocks.1.attn1.to_q": 2, "patch_embedding": 3}, alpha_pattern={"proj_out": 3})
    torch.manual_seed(1)
    m.add_adapter(lcfg)
    meta = {k: sorted(v) if isinstance(v, set) else v for k, v in lcfg.to_dict().items()}
    diffusers.WanPipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(m),
                                            transformer_lora_adapter_metadata=meta)
    lora = load_lora(tmp_path)
    assert lora.layout == "diffusers" and len(lora.low_rank) == 2 * 10 + 7 and len(lora.full) == 27  # + biases
    before = _leaves(env["ours"])
    merged = merge_lora(env["ours"], lora, SCALE)
    _check_against(env, merged, tmp_path / "pytorch_lora_weights.safetensors")
    assert all(np.array_equal(a, b) for a, b in zip(before, _leaves(env["ours"])))  # the input model is untouched
    back = unmerge_lora(merged, lora, SCALE)
    for a, b in zip(before, _leaves(back)):
        np.testing.assert_allclose(b, a, rtol=0, atol=4 * np.finfo(np.float32).eps * max(1.0, np.abs(a).max()))


def _low_rank(g, out_dim, in_dim, rank):
    """A random ``(A [rank, in], B [out, rank])``; ``B @ A`` is about a quarter of the base weights."""
    return (0.15 * g.standard_normal((rank, in_dim))).astype(np.float32), \
        (0.15 * g.standard_normal((out_dim, rank))).astype(np.float32)


def test_original_layout_matches_diffusers(env, tmp_path):
    """diffusion_model.* keys: lora_down/lora_up with .alpha, diff_b biases, the condition embedder and the
    head's full delta (head.head.diff + diff_b, which diffusers turns into an identity LoRA)."""
    g = np.random.default_rng(2)
    d, f, t = 24, 32, 32
    sd = {}
    for i in range(2):
        for j, mod in enumerate(BLOCK_ORIG):
            o, n = (f, d) if mod == "ffn.0" else (d, f) if mod == "ffn.2" else (d, d)
            rank = 2 + (i + j) % 3
            a, b = _low_rank(g, o, n, rank)
            sd[f"diffusion_model.blocks.{i}.{mod}.lora_down.weight"] = a
            sd[f"diffusion_model.blocks.{i}.{mod}.lora_up.weight"] = b
            sd[f"diffusion_model.blocks.{i}.{mod}.alpha"] = np.array(rank * (1.5 + j % 2), np.float32)
            if j % 3 == 0:
                sd[f"diffusion_model.blocks.{i}.{mod}.diff_b"] = (0.1 * g.standard_normal(o)).astype(np.float32)
    for mod, (o, n) in {"time_projection.1": (6 * d, d), "text_embedding.0": (d, t), "text_embedding.2": (d, d),
                        "time_embedding.0": (d, 256), "time_embedding.2": (d, d)}.items():
        a, b = _low_rank(g, o, n, 3)
        sd[f"diffusion_model.{mod}.lora_down.weight"], sd[f"diffusion_model.{mod}.lora_up.weight"] = a, b
    sd["diffusion_model.time_projection.1.diff_b"] = (0.1 * g.standard_normal(6 * d)).astype(np.float32)
    sd["diffusion_model.head.head.diff"] = (0.05 * g.standard_normal((64, d))).astype(np.float32)
    sd["diffusion_model.head.head.diff_b"] = (0.1 * g.standard_normal(64)).astype(np.float32)
    path = tmp_path / "original.safetensors"
    write_safetensors(path, sd)
    lora = load_lora(path)
    assert lora.layout == "original"
    _check_against(env, merge_lora(env["ours"], lora, SCALE), path)


def test_musubi_layout_matches_diffusers_and_the_original_layout(env, tmp_path):
    """lora_unet_blocks_N_* keys (diffusers needs every block projection); the same LoRA written in the
    original layout merges to identical weights."""
    g = np.random.default_rng(3)
    musubi, original = {}, {}
    for i in range(2):
        for mod in BLOCK_ORIG:
            o, n = (32, 24) if mod == "ffn.0" else (24, 32) if mod == "ffn.2" else (24, 24)
            a, b = _low_rank(g, o, n, 4)
            alpha = np.array(8.0, np.float32)
            name = f"blocks_{i}_{mod.replace('.', '_')}"
            musubi.update({f"lora_unet_{name}.lora_down.weight": a, f"lora_unet_{name}.lora_up.weight": b,
                           f"lora_unet_{name}.alpha": alpha})
            original.update({f"diffusion_model.blocks.{i}.{mod}.lora_A.weight": a,
                             f"diffusion_model.blocks.{i}.{mod}.lora_B.weight": b,
                             f"diffusion_model.blocks.{i}.{mod}.alpha": alpha})
    path = tmp_path / "musubi.safetensors"
    write_safetensors(path, musubi)
    lora = load_lora(path)
    assert lora.layout == "musubi" and all(lr.factor == 2.0 for lr in lora.low_rank.values())
    merged = merge_lora(env["ours"], lora, SCALE)
    same = merge_lora(env["ours"], lora_from_state_dict(original), SCALE)
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(merged), _leaves(same)))
    _check_against(env, merged, path)


def test_full_deltas_on_every_tensor_equal_converting_the_edited_checkpoint(env):
    """A ``diff`` on every weight, norm and modulation table and a ``diff_b`` on every bias (original names)
    merged into the parameter tree equals converting ``W + scale * diff`` with the checkpoint loader: the
    LoRA targets and layouts agree with ``params_from_diffusers`` on every tensor of the model."""
    g = np.random.default_rng(4)
    sd, cfg = env["sd"], env["cfg"]
    to_orig = {"condition_embedder.text_embedder.linear_1": "text_embedding.0",
               "condition_embedder.text_embedder.linear_2": "text_embedding.2",
               "condition_embedder.time_embedder.linear_1": "time_embedding.0",
               "condition_embedder.time_embedder.linear_2": "time_embedding.2",
               "condition_embedder.time_proj": "time_projection.1", "proj_out": "head.head",
               "patch_embedding": "patch_embedding", "scale_shift_table": "head.modulation"}
    block = {"attn1": "self_attn", "attn2": "cross_attn"}
    blk = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o", "norm_q": "norm_q", "norm_k": "norm_k"}
    lora_sd, edited = {}, {}
    for name, w in sd.items():
        delta = (0.1 * g.standard_normal(w.shape)).astype(np.float32)
        edited[name] = w + np.float32(SCALE) * delta
        module, _, leaf = name.rpartition(".")
        if name.endswith("scale_shift_table"):
            module, leaf = name, "weight"
        if module.startswith("blocks."):
            _, i, rest = module.split(".", 2)
            a, _, p = rest.partition(".")
            orig = {"ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2", "norm2": "norm3",
                    "scale_shift_table": "modulation"}.get(rest, f"{block.get(a)}.{blk.get(p)}")
            module = f"blocks.{i}.{orig}"
        else:
            module = to_orig[module]
        lora_sd[f"diffusion_model.{module}.{'diff_b' if leaf == 'bias' else 'diff'}"] = delta
    lora = lora_from_state_dict(lora_sd)
    assert len(lora.full) == len(sd)
    got = merge_lora_params(cfg, params_from_diffusers(cfg, sd), lora, SCALE)
    want = params_from_diffusers(cfg, edited)
    flat_got, tree = jax.tree.flatten(got)
    flat_want, tree_want = jax.tree.flatten(want)
    assert tree == tree_want and all(isinstance(x, np.ndarray) for x in flat_got)  # numpy in, numpy out
    for a, b in zip(flat_got, flat_want):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- refusals


def _pair(module, out_dim=24, in_dim=24, rank=4, prefix="transformer.", names=("lora_A", "lora_B")):
    a, b = _low_rank(np.random.default_rng(5), out_dim, in_dim, rank)
    return {f"{prefix}{module}.{names[0]}.weight": a, f"{prefix}{module}.{names[1]}.weight": b}


REFUSED_AT_READ = {
    "dora": ({**_pair("blocks.0.attn1.to_q"), "transformer.blocks.0.attn1.to_q.lora_magnitude_vector": np.ones(24)},
             r"DoRA"),
    "dora_kohya": ({"lora_unet_blocks_0_self_attn_q.dora_scale": np.ones((1, 24))}, r"DoRA"),
    "loha": ({"lora_unet_blocks_0_self_attn_q.hada_w1_a": np.ones((4, 24))}, r"LoHa"),
    "lokr": ({"diffusion_model.blocks.0.self_attn.q.lokr_w1": np.ones((4, 4))}, r"LoKr"),
    "text_encoder": ({**_pair("blocks.0.attn1.to_q"), **_pair("encoder.block.0.layer.0.SelfAttention.q",
                                                              prefix="text_encoder.")}, r"text-encoder LoRA"),
    "mixed": ({**_pair("blocks.0.attn1.to_q"), **_pair("blocks.0.self_attn.q", prefix="diffusion_model.")},
              r"several LoRA layouts in one file: original .*; diffusers"),
    "unknown_layout": ({"lora_transformer_single_blocks_0_attn.lora_down.weight": np.ones((4, 24))},
                       r"unrecognised LoRA layout"),
    "not_lora_tensor": ({"transformer.blocks.0.attn1.to_q.lora_A.default.weight": np.ones((4, 24))},
                        r"'transformer\.blocks\.0\.attn1\.to_q\.lora_A\.default\.weight' is not a LoRA tensor"),
    "musubi_unknown_module": ({"lora_unet_blocks_0_self_attn_qkv.lora_down.weight": np.ones((4, 24))},
                              r"'lora_unet_blocks_0_self_attn_qkv\.lora_down\.weight' names no Wan transformer module"),
    "original_unknown_module": ({"diffusion_model.blocks.0.norm2.diff": np.ones(24)},
                                r"'diffusion_model\.blocks\.0\.norm2\.diff' names no Wan transformer module"),
    "missing_B": ({"transformer.blocks.0.attn1.to_q.lora_A.weight": np.ones((4, 24))},
                  r"'transformer\.blocks\.0\.attn1\.to_q\.lora_A\.weight' has no matching lora_B"),
    "rank_mismatch": ({"transformer.blocks.0.attn1.to_q.lora_A.weight": np.ones((4, 24)),
                       "transformer.blocks.0.attn1.to_q.lora_B.weight": np.ones((24, 3))},
                      r"rank mismatch: 'transformer\.blocks\.0\.attn1\.to_q\.lora_A\.weight' is \(4, 24\)"),
    "alpha_alone": ({"diffusion_model.blocks.0.self_attn.q.alpha": np.array(4.0)},
                    r"'diffusion_model\.blocks\.0\.self_attn\.q\.alpha' has no lora_A/lora_B pair"),
    "nan": ({**_pair("blocks.0.attn1.to_q"), "transformer.blocks.0.attn1.to_q.lora_A.weight": np.full((4, 24), np.nan)},
            r"'transformer\.blocks\.0\.attn1\.to_q\.lora_A\.weight' holds NaN"),
    "empty": ({}, r"no tensors"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_AT_READ))
def test_refused_when_read(case):
    sd, match = REFUSED_AT_READ[case]
    with pytest.raises(LoraError, match=match):
        lora_from_state_dict({k: np.asarray(v, np.float32) for k, v in sd.items()})


META = {"transformer.r": 4, "transformer.lora_alpha": 8}
REFUSED_METADATA = {
    "rank": ({**META, "transformer.rank_pattern": {"attn1.to_q": 2}}, r"has rank 4 but the file's metadata says r=2"),
    "dora": ({**META, "transformer.use_dora": True}, r"use_dora=true \(DoRA"),
    "not_lora": ({**META, "transformer.peft_type": "LOHA"}, r"PEFT adapter type 'LOHA'"),
    "no_r": ({"transformer.lora_alpha": 8}, r"lacks a valid 'r'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_METADATA))
def test_refused_metadata(case):
    meta, match = REFUSED_METADATA[case]
    with pytest.raises(LoraError, match=match):
        lora_from_state_dict(_pair("blocks.0.attn1.to_q"), metadata=meta)


def test_metadata_conflicts_and_alpha_factors():
    with pytest.raises(LoraError, match=r"metadata beside original-layout keys is ambiguous"):
        lora_from_state_dict(_pair("blocks.0.self_attn.q", prefix="diffusion_model."), metadata=META)
    with pytest.raises(LoraError, match=r"and the file's lora_alpha metadata both set alpha"):
        lora_from_state_dict({**_pair("blocks.0.attn1.to_q"), "transformer.blocks.0.attn1.to_q.alpha": np.ones(())},
                             metadata=META)
    # alpha / rank: kohya-style per-module alpha in the diffusers layout, metadata, none (alpha = rank)
    alpha = {"transformer.blocks.0.attn1.to_q.alpha": np.array(2.0)}
    kohya = lora_from_state_dict({**_pair("blocks.0.attn1.to_q"), **alpha})
    meta = lora_from_state_dict(_pair("blocks.0.attn1.to_q"), metadata=META)
    plain = lora_from_state_dict(_pair("blocks.0.attn1.to_q"))
    assert [x.low_rank["blocks.0.attn1.to_q"].factor for x in (kohya, meta, plain)] == [0.5, 2.0, 1.0]


CHECK_REFUSED = {
    "layer_out_of_range": (_pair("blocks.5.attn1.to_q"), r"transformer\.blocks\.5\.attn1\.to_q\.lora_A\.weight: "
                                                         r"blocks\.5\.attn1\.to_q matches no layer"),
    "image_to_video_key": (_pair("blocks.0.cross_attn.k_img", prefix="diffusion_model."),
                           r"blocks\.0\.attn2\.add_k_proj matches no layer"),
    "shape": (_pair("blocks.0.ffn.net.0.proj", out_dim=32, in_dim=25),
              r"ffn\.net\.0\.proj\.lora_A\.weight: A \(4, 25\) / B \(32, 4\) "
              r"do not fit blocks\.0\.ffn\.net\.0\.proj\.weight"),
    "diff_shape": ({"diffusion_model.blocks.1.norm3.diff": np.ones(23)},
                   r"blocks\.1\.norm3\.diff: shape \(23,\) does not fit blocks\.1\.norm2\.weight \(24,\)"),
}


@pytest.mark.parametrize("case", sorted(CHECK_REFUSED))
def test_refused_against_the_model(env, case):
    sd, match = CHECK_REFUSED[case]
    lora = lora_from_state_dict({k: np.asarray(v, np.float32) for k, v in sd.items()})
    with pytest.raises(LoraError, match=match):
        check_lora(env["cfg"], lora)
    with pytest.raises(LoraError, match=match):  # merging checks first
        merge_lora(env["ours"], lora)


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "lora.safetensors"
    write_safetensors(path, _pair("blocks.0.attn1.to_q"), metadata={"lora_adapter_metadata": "{not json"})
    with pytest.raises(LoraError, match=r"lora\.safetensors: corrupt lora_adapter_metadata"):
        load_lora(path)
    write_safetensors(path, _pair("blocks.0.attn1.to_q"), metadata={"lora_adapter_metadata": json.dumps(META)})
    assert load_lora(path).low_rank["blocks.0.attn1.to_q"].factor == 2.0
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(CheckpointError, match=r"lora\.safetensors: truncated"):
        load_lora(path)
