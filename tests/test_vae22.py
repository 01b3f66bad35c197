"""The Wan2.2 VAE (residual blocks, 2x2 pixel patch, z_dim 48): parity with diffusers' AutoencoderKLWan.

Two random-weight reference models (norm gammas and biases randomised too), saved and loaded with
``load_vae``:

* ``dummy``: diffusers' own Wan2.2 test VAE (``tests/pipelines/wan/test_wan_22.py``,
  ``Wan225BPipelineFastTests``): base_dim 3, z_dim 48, dim_mult [1, 1, 1, 1], one residual block;
* ``shaped``: the TI2V-5B VAE's structure (dim_mult [1, 2, 4, 4], two residual blocks, a decoder base
  width different from the encoder's) at tiny widths, so the shortcuts regroup channels
  (average/duplicate groups other than the spatial factor) as in the released model.
"""

import json

import jax
import numpy as np
import pytest
from helpers import rel_err
from jax.sharding import AxisType

from jaxvdm.models.wan.vae import (WanVAEConfig, denormalize_latents, diffusers_tensor_shapes, load_vae,
                                   normalize_latents)
from jaxvdm.models.wan.vae.sharded import decode_sharded

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

CONFIGS = {
    "dummy": dict(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
                  latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                  scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True]),
    "shaped": dict(base_dim=4, decoder_base_dim=6, z_dim=8, in_channels=12, out_channels=12, is_residual=True,
                   patch_size=2, latents_mean=[0.1] * 8, latents_std=[0.5] * 8, dim_mult=[1, 2, 4, 4],
                   num_res_blocks=2, scale_factor_spatial=16, temperal_downsample=[False, True, True]),
}
X_SHAPE = (1, 3, 9, 32, 48)  # frame 0 and two 4-frame chunks; latent 2x3 at 16x compression


def _reference(kw: dict):
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(**kw).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return ref


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``get(name) -> (reference model, our loaded model)``, each built once. The saved config.json also
    carries the published Wan2.2 config's ``clip_output: false``, which diffusers ignores (it clamps
    anyway), and so do we."""
    cache = {}

    def get(name):
        if name not in cache:
            ref = _reference(CONFIGS[name])
            path = tmp_path_factory.mktemp(f"wan22_vae_{name}")
            ref.save_pretrained(path, safe_serialization=True)
            cfg = json.loads((path / "config.json").read_text())
            cfg["clip_output"] = False
            (path / "config.json").write_text(json.dumps(cfg))
            cache[name] = ref, load_vae(path)
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_wan22_decode_and_encode_match_diffusers(models, name):
    ref, vae = models(name)
    z_dim = CONFIGS[name]["z_dim"]
    assert (vae.config.spatial_factor, vae.config.temporal_factor, vae.config.video_channels) == (16, 4, 3)
    z = np.random.default_rng(0).standard_normal((1, z_dim, 3, 2, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z)).sample.numpy()
    got = np.asarray(vae.decode(z))
    assert got.shape == want.shape == X_SHAPE
    assert np.mean(np.abs(want) < 0.999) > 0.5  # the clamp does not hide differences
    # measured: dummy 1.7e-5 (its 3-channel layers are ill-conditioned: diffusers' own float32 decode is
    # 2.0e-5 from its float64 one, ours 1.1e-5), shaped 1.7e-6; encode means/logvars <= 1e-6
    assert rel_err(got, want) <= 1e-4

    x = np.random.default_rng(1).uniform(-1, 1, X_SHAPE).astype(np.float32)
    with torch.no_grad():
        post = ref.encode(torch.from_numpy(x)).latent_dist
    mean, logvar = vae.encode(x)
    assert mean.shape == post.mean.shape == (1, z_dim, 3, 2, 3)
    assert rel_err(mean, post.mean.numpy()) <= 1e-4
    assert rel_err(logvar, post.logvar.numpy()) <= 1e-4


def test_wan22_decode_sharded_matches_one_device(models, devices):
    """4 devices over a latent width of 3 (padded to 4, one slab all padding), two latent frames a step."""
    _, vae = models("dummy")
    z = np.random.default_rng(2).standard_normal((1, 48, 3, 2, 3)).astype(np.float32)
    mesh = jax.make_mesh((4,), ("vae",), axis_types=(AxisType.Explicit,), devices=devices[:4])
    out = decode_sharded(vae, z, mesh, "vae", split="width", chunk=2)
    assert out.shape == (1, 3, 9, 32, 48)
    assert rel_err(out, vae.decode(z)) <= 1e-5


def test_wan22_published_config_and_tensor_names():
    """``WanVAEConfig.wan22()`` is the published TI2V-5B config and names exactly diffusers' tensors."""
    published = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                     attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0, in_channels=12,
                     out_channels=12, is_residual=True, patch_size=2, scale_factor_spatial=16,
                     scale_factor_temporal=4, latents_mean=list(WanVAEConfig.wan22().latents_mean),
                     latents_std=list(WanVAEConfig.wan22().latents_std))
    cfg = WanVAEConfig.from_dict({**published, "clip_output": False, "_class_name": "AutoencoderKLWan"})
    assert cfg == WanVAEConfig.wan22()
    assert (cfg.spatial_factor, cfg.temporal_factor, len(cfg.latents_mean), len(cfg.latents_std)) == (16, 4, 48, 48)
    assert cfg.latents_mean[0] == pytest.approx(-0.2289) and cfg.latents_std[-1] == pytest.approx(0.7744)
    with torch.device("meta"):
        ref = diffusers.AutoencoderKLWan(**published)
    assert diffusers_tensor_shapes(cfg) == {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def test_wan22_latent_statistics_and_input_checks(models):
    _, vae = models("shaped")
    cfg = vae.config
    z = np.random.default_rng(3).standard_normal((1, 8, 2, 1, 1)).astype(np.float32)
    np.testing.assert_allclose(denormalize_latents(z, cfg), z * 0.5 + 0.1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(normalize_latents(denormalize_latents(z, cfg), cfg), z, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 16"):
        vae.encode(np.zeros((1, 3, 5, 24, 32), np.float32))  # 24 is a multiple of 8, not of 16
    with pytest.raises(ValueError, match=r"\[B, 3, F, H, W\]"):
        vae.encode(np.zeros((1, 12, 5, 32, 32), np.float32))  # patchified channels are internal
    with pytest.raises(ValueError, match=r"\[B, 8, T, h, w\]"):
        vae.decode(np.zeros((1, 48, 2, 1, 1), np.float32))


@pytest.mark.parametrize("change, match", [
    (dict(patch_size=0), "patch_size"),
    (dict(in_channels=10), "multiple of patch_size"),
    (dict(base_dim=3, dim_mult=(1, 2, 5, 5)), "encoder level 2"),  # 6 channels * 8 into 15
    (dict(dim_mult=(1, 1, 8, 8)), "decoder level 2"),  # 32 channels duplicated into 4 * 4
])
def test_wan22_config_refusals(change, match):
    with pytest.raises(ValueError, match=match):
        WanVAEConfig(**{**dict(base_dim=4, z_dim=8, in_channels=12, out_channels=12, is_residual=True, patch_size=2),
                        **change})
