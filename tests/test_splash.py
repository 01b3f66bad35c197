"""Splash attention (the Pallas TPU kernel, run here in interpret mode on CPU) against XLA attention,
alone and inside Ulysses, Ring and a whole sharded denoising step. Shapes are tiny: interpret mode is slow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_err
from jax.sharding import PartitionSpec as P

from jaxvdm.models.schedulers import UniPC
from jaxvdm.models.wan import attention as attn_lib
from jaxvdm.models.wan.attention import attention_with_lse, get_attention, get_attention_with_lse, xla_attention
from jaxvdm.models.wan.splash import SplashConfig, block_plan
from jaxvdm.models.wan.transformer import WanConfig, init_transformer
from jaxvdm.sharding import sequence
from jaxvdm.sharding.mesh import make_mesh
from jaxvdm.sharding.predict import shard_map
from jaxvdm.sharding.registry import resolve
from jaxvdm.sharding.sampling import Denoiser

# blocks of 128 so that the small cases below span several query and key blocks (online softmax across
# blocks, a partial last block); the default blocks (1024) would hold each case in one
SMALL = dict(block_q=128, block_kv=128, block_kv_compute=128)


def _qkv(seed, b, sq, sk, h, d):
    r = np.random.default_rng(seed)
    return tuple(jnp.asarray(r.standard_normal(s), jnp.float32) for s in ((b, sq, h, d), (b, sk, h, d), (b, sk, h, d)))


@pytest.mark.parametrize("b,sq,sk,h,d,kv_len", [
    (2, 300, 200, 3, 16, 170),   # batch 2, Sq != Sk, neither a block multiple, keys masked past 170
    (1, 37, 53, 5, 32, None),    # shorter than one block: padded keys masked although kv_len is None
])
def test_splash_equals_xla_attention_and_its_lse(b, sq, sk, h, d, kv_len):
    q, k, v = _qkv(0, b, sq, sk, h, d)
    splash = get_attention("splash", **SMALL)
    splash_lse = get_attention_with_lse("splash", **SMALL)

    @jax.jit
    def both(q, k, v, n):
        n = None if kv_len is None else n  # traced int32 scalar, as Ulysses and Ring pass it
        return splash(q, k, v, n), splash_lse(q, k, v, n)

    out, (out2, lse) = both(q, k, v, jnp.int32(kv_len or 0))
    ref = xla_attention(q, k, v, kv_len)
    ref2, ref_lse = attention_with_lse(q, k, v, kv_len)
    assert out.shape == ref.shape and out.dtype == q.dtype
    assert rel_err(out, ref) <= 1e-5
    assert out2.dtype == jnp.float32 and lse.dtype == jnp.float32 and lse.shape == (b, h, sq)
    assert rel_err(out2, ref2) <= 1e-5
    assert np.max(np.abs(np.asarray(lse) - np.asarray(ref_lse))) <= 1e-5 * np.max(np.abs(np.asarray(ref_lse)))
    if kv_len is not None:  # the masked keys really are ignored: changing them changes nothing
        k2 = k.at[:, kv_len:].set(100.0)
        assert rel_err(both(q, k2, v, jnp.int32(kv_len))[0], out) <= 1e-6


def test_block_plan_pads_to_whole_blocks_and_shrinks_blocks_for_short_sequences():
    assert block_plan(32760, 512) == (1024, 512, 512, 32768, 512)  # Wan 1.3B 480p self/cross attention
    assert block_plan(75348, 75348, SplashConfig(3328 // 128 * 128, 2048, 512))[3] % 3328 == 0
    assert block_plan(37, 53) == (128, 128, 128, 128, 128)
    assert block_plan(300, 200, SplashConfig(**SMALL)) == (128, 128, 128, 384, 256)


def test_backend_names_options_and_errors():
    assert get_attention("splash") is attn_lib.splash_attention
    f = get_attention("splash:block_q=256,block_kv=512")
    assert f is get_attention("splash", block_kv=512, block_q=256)
    assert f.keywords["config"] == SplashConfig(block_q=256, block_kv=512, block_kv_compute=512)
    with pytest.raises(ValueError, match="block_q must be a positive multiple of 128"):
        get_attention("splash", block_q=100)
    with pytest.raises(ValueError, match="block_kv=512 must be a multiple of block_kv_compute=384"):
        get_attention("splash:block_kv=512,block_kv_compute=384")
    with pytest.raises(ValueError, match="'xla' has no option"):
        get_attention("xla:block_q=128")
    with pytest.raises(ValueError, match="has no option.*'block'"):
        get_attention("splash", block=128)
    with pytest.raises(ValueError, match="write KEY=INT"):
        get_attention("splash:block_q")


def test_auto_picks_splash_on_tpu_only(monkeypatch):
    q, k, v = _qkv(0, 1, 16, 16, 2, 8)

    def traced(get):  # a fresh function each time: jax caches traces per function
        return str(jax.make_jaxpr(lambda *a: get("auto")(*a))(q, k, v))

    assert "pallas_call" not in traced(get_attention) and "pallas_call" not in traced(get_attention_with_lse)
    monkeypatch.setattr(attn_lib, "_on_tpu", lambda: True)
    assert "pallas_call" in traced(get_attention) and "pallas_call" in traced(get_attention_with_lse)


@pytest.mark.parametrize("kind,n,s", [("ulysses", 8, 45), ("ring", 8, 13)])
def test_splash_inside_ulysses_and_ring_equals_one_device(devices, kind, n, s):
    """``s`` tokens (padded to a multiple of n, padding masked with a traced kv_len) and 3 heads (Ulysses pads
    them to 8) over n simulated devices: the sharded result equals XLA attention on one device. Ring's 13
    tokens in 8 chunks of 2 leave one chunk of padding only (every key masked) and one half-masked."""
    h, d = 3, 16
    q, k, v = _qkv(1, 2, s, s, h, d)
    mesh = make_mesh(sp=n)
    if kind == "ulysses":
        attend = sequence.ulysses("sp", get_attention("splash"))
    else:
        attend = sequence.ring("sp", get_attention_with_lse("splash"))

    def local(q, k, v):
        sh = lambda x: sequence.shard_tokens(x, ("sp",))  # noqa: E731
        o = attend(sh(q), sh(k), sh(v), jnp.int32(s))
        return sequence.gather_tokens(o, ("sp",), s)

    out = jax.jit(shard_map(local, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P()))(q, k, v)
    assert rel_err(out, xla_attention(q, k, v)) <= 1e-5


def test_sharded_denoising_step_with_splash_equals_single_device(devices):
    """A whole cfg+ulysses step (cfg=2, sp=4) of a tiny Wan with attention="splash" (self- and cross-attention)
    equals the single-device step with XLA attention."""
    cfg = WanConfig(num_attention_heads=3, attention_head_dim=16, in_channels=4, out_channels=4, text_dim=12,
                    freq_dim=16, ffn_dim=32, num_layers=2)
    model = init_transformer(cfg, seed=0)
    noise = jax.random.normal(jax.random.key(0), (1, 4, 3, 6, 10))  # 45 tokens with patch 1x2x2
    ctx = jax.random.normal(jax.random.key(1), (2, 5, 12))
    sched = UniPC(1, shift=3.0)
    ref, _ = Denoiser(model, resolve("single", None), None, attention="xla").sample(noise, ctx, 5.0, sched)
    mesh = make_mesh(cfg=2, sp=4)
    out, _ = Denoiser(model, resolve("cfg+ulysses", mesh), mesh, attention="splash").sample(noise, ctx, 5.0, sched)
    assert rel_err(out, ref) <= 1e-5
