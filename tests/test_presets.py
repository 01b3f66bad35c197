"""The shipped Wan presets: each transformer built abstractly (nothing allocated) against diffusers' own
model of the same config and the published sizes, and the pipeline defaults checked for consistency."""

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from jaxvdm.models.pipeline import latent_shape
from jaxvdm.models.presets import list_presets, load_preset, wan_config
from jaxvdm.models.wan.image_encoder import ClipVisionConfig
from jaxvdm.models.wan.transformer import abstract_transformer, count_parameters, diffusers_tensor_shapes

WAN = [n for n in list_presets() if load_preset(n)["family"] == "wan"]

# Published sizes (per transformer) and the tolerance of the comparison. The model names round
# ("1.3B", "14B", "5B"); for the Wan2.1 I2V/FLF2V DiT the model pages give 16.4B (the 14B backbone plus
# a dim x dim image key/value pair in each of the 40 cross-attentions, 2.1B); Wan2.2's A14B is "27B
# total, 14B active": two experts, each the 14B backbone.
PUBLISHED = {
    "wan2.1-t2v-1.3b": (1.3e9, 0.10),
    "wan2.1-t2v-14b": (14e9, 0.05),
    "wan2.1-i2v-14b-480p": (16.4e9, 0.005),
    "wan2.1-i2v-14b-720p": (16.4e9, 0.005),
    "wan2.1-flf2v-14b-720p": (16.4e9, 0.005),
    "wan2.2-t2v-a14b": (27e9 / 2, 0.07),
    "wan2.2-i2v-a14b": (27e9 / 2, 0.07),
    "wan2.2-ti2v-5b": (5e9, 0.01),
}


def test_every_wan_preset_is_listed_here():
    assert sorted(PUBLISHED) == sorted(WAN)


def _diffusers_count(cfg) -> int:
    with torch.device("meta"):  # structure only, nothing allocated
        model = WanTransformer3DModel(**cfg.to_dict())
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_equal_diffusers_and_published_sizes():
    counts, reference = {}, {}
    for name in WAN:
        cfg = wan_config(name)
        counts[name] = count_parameters(abstract_transformer(cfg))
        if cfg not in reference:  # presets sharing a transformer (480p/720p, 2.1/2.2 T2V) are built once
            reference[cfg] = _diffusers_count(cfg)
        assert counts[name] == reference[cfg], name
        assert counts[name] == sum(int(np.prod(s)) for s in diffusers_tensor_shapes(cfg).values()), name
        size, tol = PUBLISHED[name]
        assert abs(counts[name] / size - 1) <= tol, (name, counts[name])
    # the image branch of Wan2.1 I2V: 40 x (2 x (5120^2 + 5120) + 5120) image keys/values, the 1280 -> 5120
    # image embedder, 20 more patch-embedding input channels; FLF2V adds its 514 x 1280 position table
    image_kv = 40 * (2 * (5120 * 5120 + 5120) + 5120)
    embedder = (1280 * 1280 + 1280) + (1280 * 5120 + 5120) + 2 * 1280 + 2 * 5120
    assert counts["wan2.1-i2v-14b-480p"] - counts["wan2.1-t2v-14b"] == image_kv + embedder + 20 * 4 * 5120
    assert counts["wan2.1-flf2v-14b-720p"] - counts["wan2.1-i2v-14b-480p"] == 514 * 1280
    assert counts["wan2.2-i2v-a14b"] - counts["wan2.2-t2v-a14b"] == 20 * 4 * 5120


@pytest.mark.parametrize("name", WAN)
def test_pipeline_defaults_fit_the_model(name):
    p = load_preset(name)
    cfg = wan_config(name)
    pipe = p["pipeline"]
    shape = latent_shape(pipe["num_frames"], pipe["height"], pipe["width"], vae_stride=tuple(pipe["vae_stride"]),
                         patch=cfg.patch_size, channels=pipe["latent_channels"], name=name)
    assert shape[1] == cfg.out_channels  # the sampler denoises what the transformer predicts
    task = p.get("task", "t2v")  # the Wan2.1 T2V presets predate the key
    if task == "t2v" or task == "ti2v":
        assert cfg.in_channels == pipe["latent_channels"]
    else:  # image-to-video: noise + 4 mask channels + the encoded condition
        assert cfg.in_channels == 2 * pipe["latent_channels"] + 4
    assert cfg.has_image_branch == ("image_encoder" in p) == (name.startswith("wan2.1") and task != "t2v")
    if "image_encoder" in p:
        clip = ClipVisionConfig.from_dict(dict(p["image_encoder"], model_type="clip_vision_model"))
        assert clip == ClipVisionConfig()  # ViT-H/14
        tokens = clip.num_positions * (2 if task == "flf2v" else 1)
        assert (cfg.pos_embed_seq_len or tokens) == tokens
    two_experts = name.startswith("wan2.2") and "a14b" in name
    assert ("boundary_ratio" in pipe) == ("guidance_scale_2" in pipe) == two_experts
    if two_experts:
        assert 0 < pipe["boundary_ratio"] < 1
    assert pipe.get("expand_timesteps", False) == (task == "ti2v")


def test_wan22_ti2v_5b_shapes():
    pipe = load_preset("wan2.2-ti2v-5b")["pipeline"]
    cfg = wan_config("wan2.2-ti2v-5b")
    shape = latent_shape(pipe["num_frames"], pipe["height"], pipe["width"], vae_stride=tuple(pipe["vae_stride"]),
                         patch=cfg.patch_size, channels=48)
    assert (pipe["num_frames"], pipe["fps"], tuple(pipe["vae_stride"])) == (121, 24, (4, 16, 16))
    assert shape == (1, 48, 31, 44, 80) and cfg.token_grid(shape[2:]) == (31, 22, 40)


def test_existing_presets_keep_their_meaning():
    """A Wan2.1 T2V 14B checkpoint still gets the wan2.1-t2v-14b defaults although wan2.2-t2v-a14b shares
    its transformer config (the loader takes the first preset in name order)."""
    from jaxvdm.models.wan.pipeline import _defaults_for

    assert wan_config("wan2.2-t2v-a14b") == wan_config("wan2.1-t2v-14b")
    for name in ("wan2.1-t2v-14b", "wan2.1-t2v-1.3b"):
        d = _defaults_for(wan_config(name))
        want = load_preset(name)["pipeline"]
        assert {k: d[k] for k in ("steps", "guidance_scale", "flow_shift", "height", "width")} == \
            {k: want[k] for k in ("steps", "guidance_scale", "flow_shift", "height", "width")}
        assert load_preset(name).get("task") is None and not wan_config(name).has_image_branch
