"""Wan's CLIP image encoder against transformers' CLIPVisionModel (random weights), its checkpoint
layouts and strict loading, and the CLIP preprocessing against transformers' CLIPImageProcessor.

transformers here has no torchvision, so ``CLIPImageProcessor`` is its PIL backend
(``CLIPImageProcessorPil``); the reference below is that class, named explicitly.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import rel_err
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

from jaxvdm.models.checkpoint import CheckpointError, read_safetensors, write_safetensors
from jaxvdm.models.wan.image_encoder import (ClipVisionConfig, ImageProcessorConfig, encode_image, load_image_encoder,
                                             load_image_processor, preprocess_images, resize_uint8)

# Two tiny towers: exact GELU (Wan's ViT-H/14) and quick GELU (OpenAI CLIP), odd widths, 17 / 10 tokens.
CONFIGS = {
    "gelu": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4, image_size=16,
                 patch_size=4, projection_dim=12, hidden_act="gelu", layer_norm_eps=1e-5),
    "quick_gelu": dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=9,
                       patch_size=3, projection_dim=8, hidden_act="quick_gelu", layer_norm_eps=1e-6),
}


def _torch_model(cls, cfg: dict, seed: int):
    torch.manual_seed(seed)
    m = cls(CLIPVisionConfig(**cfg)).eval()
    with torch.no_grad():  # perturb every tensor so norms and biases are not trivially 1/0
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def _hidden_states(m, pixels: np.ndarray):
    with torch.no_grad():
        out = m(pixel_values=torch.from_numpy(pixels), output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def saved(request, tmp_path_factory):
    """One tower saved three ways: CLIPVisionModel (transformers 5: unprefixed names), the same with
    transformers 4's ``vision_model.`` prefix, and CLIPVisionModelWithProjection (prefix + projection,
    the layout of the diffusers Wan I2V conversion)."""
    cfg = CONFIGS[request.param]
    root = tmp_path_factory.mktemp(f"clip_{request.param}")
    plain = _torch_model(CLIPVisionModel, cfg, seed=1)
    plain.save_pretrained(root / "plain")
    prefixed = root / "prefixed"
    shutil.copytree(root / "plain", prefixed)
    sd = read_safetensors(prefixed / "model.safetensors")
    write_safetensors(prefixed / "model.safetensors", {f"vision_model.{k}": np.array(v) for k, v in sd.items()})
    proj = _torch_model(CLIPVisionModelWithProjection, cfg, seed=2)
    proj.save_pretrained(root / "projection")
    g = np.random.default_rng(0)
    pixels = g.standard_normal((2, 3, cfg["image_size"], cfg["image_size"]), dtype=np.float32)
    return dict(name=request.param, cfg=cfg, root=root, pixels=pixels,
                ref={"plain": _hidden_states(plain, pixels), "prefixed": _hidden_states(plain, pixels),
                     "projection": _hidden_states(proj, pixels)})


@pytest.mark.parametrize("layout", ["plain", "prefixed", "projection"])
def test_penultimate_states_match_transformers(saved, layout):
    enc = load_image_encoder(saved["root"] / layout)
    ref = saved["ref"][layout]
    assert len(ref) == saved["cfg"]["num_hidden_layers"] + 1
    out = np.asarray(encode_image(enc, saved["pixels"]))
    n_tokens = (saved["cfg"]["image_size"] // saved["cfg"]["patch_size"]) ** 2 + 1
    assert out.shape == ref[-2].shape == (2, n_tokens, saved["cfg"]["hidden_size"])
    assert rel_err(out, ref[-2]) <= 1e-5  # diffusers' encode_image takes hidden_states[-2]
    # all layers give the last hidden state (and it differs: the default really stops one early)
    full = np.asarray(encode_image(load_image_encoder(saved["root"] / layout, num_layers=enc.num_layers + 1),
                                   saved["pixels"]))
    assert rel_err(full, ref[-1]) <= 1e-5 and rel_err(full, out) > 1e-2


def test_bfloat16_close_to_float32(saved):
    f32 = np.asarray(encode_image(load_image_encoder(saved["root"] / "plain"), saved["pixels"]))
    bf16 = encode_image(load_image_encoder(saved["root"] / "plain", dtype=jnp.bfloat16), saved["pixels"])
    assert bf16.dtype == jnp.bfloat16 and rel_err(np.asarray(bf16, np.float32), f32) <= 3e-2


def test_vit_h14_is_wans_encoder():
    """The default config is OpenCLIP ViT-H/14: 257 tokens of 1280, and 32 layers of which 31 run.
    Parameter count of those 31 (abstract, nothing allocated) against the known 632M of the tower."""
    from flax import nnx

    from jaxvdm.models.wan.image_encoder import ClipVisionEncoder, image_encoder_tensor_shapes

    cfg = ClipVisionConfig()
    assert cfg.num_positions == 257
    enc = nnx.eval_shape(lambda: ClipVisionEncoder(cfg, rngs=nnx.Rngs(0)))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(enc, nnx.Param)))
    shapes = image_encoder_tensor_shapes(cfg, with_projection=True)
    per_layer = sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("encoder.layers.31."))
    full = sum(int(np.prod(s)) for s in shapes.values())
    # what runs: everything but the last layer, post_layernorm and the projection
    assert ours == full - per_layer - 2 * 1280 - 1024 * 1280
    assert abs(full / 632e6 - 1) < 0.005, full  # OpenCLIP's published 632M for the ViT-H/14 image tower


# --------------------------------------------------------------------------------------- loading


def _variant(saved, tmp_path, edit):
    d = tmp_path / "ckpt"
    shutil.copytree(saved["root"] / "projection", d)
    f = d / "model.safetensors"
    sd = {k: np.array(v) for k, v in read_safetensors(f).items()}
    edit(sd)
    write_safetensors(f, sd)
    return d


def test_loading_is_strict(saved, tmp_path):
    last = saved["cfg"]["num_hidden_layers"] - 1  # the layer Wan does not run is still checked
    d = _variant(saved, tmp_path, lambda sd: sd.pop(f"vision_model.encoder.layers.{last}.mlp.fc2.bias"))
    with pytest.raises(CheckpointError, match=rf"missing 1 tensor\(s\): encoder\.layers\.{last}\.mlp\.fc2\.bias"):
        load_image_encoder(d)
    shutil.rmtree(d)

    def edit(sd):
        sd["vision_model.extra.weight"] = np.zeros(3, np.float32)
        sd["visual_projection.weight"] = np.zeros((5, saved["cfg"]["hidden_size"]), np.float32)

    d = _variant(saved, tmp_path, edit)
    with pytest.raises(CheckpointError) as e:
        load_image_encoder(d)
    assert "unexpected 1 tensor(s): extra.weight" in str(e.value)
    assert f"visual_projection.weight: checkpoint (5, {saved['cfg']['hidden_size']})" in str(e.value)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, model_type="clip")))
    with pytest.raises(CheckpointError, match="clip_vision_model"):
        load_image_encoder(d)


# ---------------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("hw", [(480, 832), (333, 250), (224, 224), (60, 41)])
def test_preprocessing_equals_clip_image_processor(hw):
    """Random uint8 images of several aspect ratios (downscale, upscale, none): bit-identical."""
    img = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    ref = CLIPImageProcessorPil()(images=[Image.fromarray(img)], return_tensors="np")["pixel_values"]
    ours = preprocess_images([img])
    assert ours.shape == ref.shape == (1, 3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)
    # a PIL image and a greyscale array go the same way as in transformers
    np.testing.assert_array_equal(preprocess_images([Image.fromarray(img)]), ref)
    grey = img[..., 0]
    ref_grey = CLIPImageProcessorPil()(images=[Image.fromarray(grey)], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(preprocess_images([grey]), ref_grey)


def test_resize_is_pillows():
    """Bit-identical to Pillow, also when both axes change (where Pillow picks its own pass order)."""
    g = np.random.default_rng(1)
    img = g.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    sizes = [(11, 7), (80, 120), (37, 20), (5, 53), (32, 48), (48, 52)]
    sizes += [tuple(int(v) for v in g.integers(4, 70, 2)) for _ in range(20)]
    for size in sizes:
        for resample in (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC):
            want = np.asarray(Image.fromarray(img).resize(size[::-1], resample=resample))
            np.testing.assert_array_equal(resize_uint8(img, size, int(resample)), want)
    grey = img[..., :1]
    np.testing.assert_array_equal(resize_uint8(grey, (20, 30))[..., 0],
                                  np.asarray(Image.fromarray(grey[..., 0]).resize((30, 20), Image.Resampling.BICUBIC)))


def test_processor_config_round_trip(tmp_path):
    """diffusers' I2V test processor (``CLIPImageProcessor(crop_size=32, size=32)``), saved and read back."""
    proc = CLIPImageProcessorPil(crop_size=32, size=32)
    proc.save_pretrained(tmp_path)
    cfg = load_image_processor(tmp_path)
    assert cfg == ImageProcessorConfig(shortest_edge=32, crop_size=(32, 32))
    img = np.random.default_rng(2).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    ref = proc(images=[img], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(preprocess_images([img], cfg), ref)
    assert ImageProcessorConfig.from_dict(json.loads((tmp_path / "preprocessor_config.json").read_text())) == cfg
    with pytest.raises(ValueError, match="resample=1 is not supported"):
        ImageProcessorConfig.from_dict({"resample": 1})
    with pytest.raises(ValueError, match="alpha channel"):
        preprocess_images([Image.new("RGBA", (4, 4))])
    with pytest.raises(ValueError, match="uint8 RGB"):
        preprocess_images([np.zeros((4, 4, 3), np.float32)])
