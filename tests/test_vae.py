"""Wan VAE: parity with diffusers' AutoencoderKLWan (float32), split decoding over a mesh, strict loading.

One small random-weight reference model (norm gammas and biases randomised too) is saved once and
loaded with ``load_vae``; compiled functions are reused across tests to keep compile counts low.
"""

import json
import shutil

import jax
import numpy as np
import pytest
from helpers import rel_err
from jax.sharding import AxisType, PartitionSpec as P

from jaxvdm.models.checkpoint import CheckpointError, read_safetensors, write_safetensors
from jaxvdm.models.wan.vae import WanVAEConfig, denormalize_latents, load_vae, normalize_latents
from jaxvdm.models.wan.vae.sharded import decode_sharded

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

WEIGHTS = "diffusion_pytorch_model.safetensors"
Z_SHAPE = (1, 16, 3, 4, 12)  # T=3 latent frames -> 9 frames of 32x96; width 12 does not divide 8 devices
X_SHAPE = (1, 3, 9, 24, 40)  # 1 + 4*2 frames: the first frame and two 4-frame chunks; latent 3x5


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """(reference model, folder it is saved in)."""
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True],
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    path = tmp_path_factory.mktemp("wan_vae")
    ref.save_pretrained(path, safe_serialization=True)
    return ref, path


@pytest.fixture(scope="module")
def vae(ckpt):
    return load_vae(ckpt[1])


@pytest.fixture(scope="module")
def latents():
    return np.random.default_rng(0).standard_normal(Z_SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def single_decode(vae, latents):
    return np.asarray(vae.decode(latents))


def test_decode_matches_diffusers(ckpt, single_decode, latents):
    ref, _ = ckpt
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(latents)).sample.numpy()
    assert single_decode.shape == want.shape == (1, 3, 9, 32, 96)
    # most pixels are inside (-1, 1), so the clamp does not hide differences
    assert np.mean(np.abs(want) < 0.999) > 0.5
    assert rel_err(single_decode, want) <= 1e-4


def test_encode_matches_diffusers(ckpt, vae):
    ref, _ = ckpt
    x = np.random.default_rng(1).uniform(-1, 1, X_SHAPE).astype(np.float32)
    with torch.no_grad():
        post = ref.encode(torch.from_numpy(x)).latent_dist
    mean, logvar = vae.encode(x)
    assert mean.shape == post.mean.shape == (1, 16, 3, 3, 5)
    assert rel_err(mean, post.mean.numpy()) <= 1e-4
    assert rel_err(mean, post.mode().numpy()) <= 1e-4
    assert rel_err(logvar, post.logvar.numpy()) <= 1e-4


def test_decode_sharded_explicit_mesh_padded_width(vae, latents, single_decode, devices):
    """8 devices over a width of 12 latent columns (padded to 16, masked); two latent frames per scan step."""
    mesh = jax.make_mesh((8,), ("vae",), axis_types=(AxisType.Explicit,))
    out = decode_sharded(vae, latents, mesh, "vae", split="width", chunk=2)
    assert out.shape == single_decode.shape
    assert rel_err(out, single_decode) <= 1e-5


def test_decode_sharded_auto_mesh_height(vae, latents, single_decode, devices):
    """A 2x4 Auto mesh split over its 'vae' axis along the height (4 latent rows: one per device)."""
    mesh = jax.make_mesh((2, 4), ("x", "vae"), axis_types=(AxisType.Auto, AxisType.Auto))
    z = jax.device_put(latents, jax.sharding.NamedSharding(mesh, P()))
    out = decode_sharded(vae, z, mesh, "vae", split="height")
    assert out.sharding.spec[3] == "vae"  # evenly split: the video stays sharded along H
    assert rel_err(out, single_decode) <= 1e-5
    with pytest.raises(ValueError, match="lack"):
        decode_sharded(vae, latents, mesh, "sp")


def test_latent_normalisation_and_shape_errors(vae):
    cfg = vae.config
    z = np.random.default_rng(2).standard_normal((1, 16, 2, 3, 3)).astype(np.float32)
    mean = np.asarray(cfg.latents_mean, np.float32).reshape(1, 16, 1, 1, 1)
    std = np.asarray(cfg.latents_std, np.float32).reshape(1, 16, 1, 1, 1)
    assert cfg.latents_mean[0] == pytest.approx(-0.7571) and cfg.latents_std[-1] == pytest.approx(1.916)
    np.testing.assert_allclose(denormalize_latents(z, cfg), z * std + mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vae.normalize_latents(vae.denormalize_latents(z)), z, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="latents_mean"):
        normalize_latents(z[:, :4], cfg)
    with pytest.raises(ValueError, match=r"4\*k\+1"):
        vae.encode(np.zeros((1, 3, 8, 16, 16), np.float32))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(np.zeros((1, 3, 5, 12, 16), np.float32))
    with pytest.raises(ValueError, match="chunk"):
        vae.decode(np.zeros((1, 16, 3, 2, 2), np.float32), chunk=3)
    with pytest.raises(ValueError, match=r"\[B, 16, T, h, w\]"):
        vae.decode(np.zeros((1, 4, 3, 2, 2), np.float32))


# ----------------------------------------------------------------------------- strict loading


def _copy_with(src, dst, edit):
    """A copy of checkpoint folder ``src`` at ``dst`` whose tensors are ``edit(dict)``."""
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    sd = {k: np.array(v) for k, v in read_safetensors(src / WEIGHTS).items()}
    write_safetensors(dst / WEIGHTS, edit(sd))
    return dst


def test_loader_names_missing_unexpected_misshaped(ckpt, tmp_path):
    src = ckpt[1]

    def edit(sd):
        del sd["decoder.up_blocks.1.resnets.0.conv1.weight"]
        sd["decoder.extra.weight"] = np.zeros((2,), np.float32)
        sd["encoder.norm_out.gamma"] = np.ones((5, 1, 1, 1), np.float32)
        return sd

    with pytest.raises(CheckpointError) as e:
        load_vae(_copy_with(src, tmp_path / "bad", edit))
    msg = str(e.value)
    assert "missing 1" in msg and "decoder.up_blocks.1.resnets.0.conv1.weight" in msg
    assert "unexpected 1" in msg and "decoder.extra.weight" in msg
    assert "mis-shaped 1" in msg and "encoder.norm_out.gamma" in msg


def test_loader_config_mismatch_names_tensor(ckpt, tmp_path):
    dst = _copy_with(ckpt[1], tmp_path / "cfg", lambda sd: sd)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["z_dim"] = 8  # the weights were saved with z_dim 16
    (dst / "config.json").write_text(json.dumps(cfg))
    want = r"post_quant_conv\.weight: checkpoint \(16, 16, 1, 1, 1\) vs model \(8, 8, 1, 1, 1\)"
    with pytest.raises(CheckpointError, match=want):
        load_vae(dst)


def test_loader_truncated_file_and_missing_config(ckpt, tmp_path):
    src = ckpt[1]
    dst = tmp_path / "trunc"
    shutil.copytree(src, dst)
    data = (dst / WEIGHTS).read_bytes()
    (dst / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc/diffusion_pytorch_model\.safetensors.*truncated"):
        load_vae(dst)
    noconf = tmp_path / "noconf"
    shutil.copytree(src, noconf)
    (noconf / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_vae(noconf)
    resid = tmp_path / "resid"
    shutil.copytree(src, resid)
    cfg = json.loads((resid / "config.json").read_text())
    cfg["is_residual"] = True
    (resid / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="Wan2.2"):
        load_vae(resid)


def test_config_from_dict_reads_checkpoint_values(ckpt):
    cfg = WanVAEConfig.from_dict(json.loads((ckpt[1] / "config.json").read_text()))
    assert (cfg.base_dim, cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks) == (8, 16, (1, 2, 2, 2), 1)
    assert (cfg.spatial_factor, cfg.temporal_factor, cfg.decoder_dim) == (8, 4, 8)
