"""FP8 building blocks (``jaxvdm.models.wan.fp8``), on CPU.

What a CPU can prove: the scale rule and its edge cases, e4m3 rounding bounds and saturation, that
XLA:CPU runs float8 ``dot_general`` (by upcasting to float32, so the "real" FP8 dot and the emulated
one agree exactly here), that :class:`Fp8Linear` computes exactly the FP8-rounded product and stays
within a bound of the float32 layer, that its dot takes the FP8 values themselves (the form XLA GPU
rewrote into ``__cublas$lt$matmul$f8`` on an H200), the conversion of a WanTransformer (stacked
blocks, load path, fsdp sharding of the FP8 leaves), the FP8 attention's scales and cuDNN parameters,
its float32 emulation's error and its static fallback, and that nothing FP8 runs on CPU without saying
so. The GPU kernels themselves are checked by ``benchmarks/fp8_check.py`` on an H200 (results in
``benchmarks/results/h200x1-2026-12-01-fp8``: the kernel's attention error matches this emulation's,
6.0% vs 6.0% rms of float32 at 4,096 tokens).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import rel_err
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvdm.models.checkpoint import model_from_params
from jaxvdm.models.wan import fp8
from jaxvdm.models.wan.attention import xla_attention
from jaxvdm.models.wan.fp8_support import check_fp8, format_cudnn_version
from jaxvdm.models.wan.transformer import WanConfig, abstract_transformer, init_transformer
from jaxvdm.models.wan.transformer.model import is_block_path
from jaxvdm.sharding import fsdp

E4M3 = jnp.float8_e4m3fn
F32 = jnp.float32
CPU_REFUSAL = ("precision='fp8' needs an NVIDIA GPU of compute capability 9.0 or newer (H100/H200); "
               "this machine runs jax on cpu")
# 2 heads of 16 (D = 32), FFN 64, 2 layers: every FP8 linear has dims divisible by 8 (fsdp over 8 devices).
CFG = WanConfig(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_dim=12,
                freq_dim=16, ffn_dim=64, num_layers=2)


def cosine(a, b) -> float:
    a = np.asarray(a).astype(np.float64).ravel()
    b = np.asarray(b).astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def f32(a) -> np.ndarray:
    return np.asarray(jnp.asarray(a).astype(F32))


# ----------------------------------------------------------------------------- scales and rounding


def test_roundtrip_error_bounds():
    """Within e4m3's normal range every value comes back with relative error <= 2^-4; below it (subnormal)
    the absolute error is <= 2^-10 * scale; values on the FP8 grid come back exactly."""
    rng = np.random.default_rng(0)
    scale = 0.37  # deliberately not a power of two
    normal = 2.0 ** rng.uniform(-6, np.log2(448), 20000) * rng.choice([-1, 1], 20000) * scale
    y = f32(fp8.fake_quantize(jnp.asarray(normal, F32), scale))
    assert np.max(np.abs(y - normal) / np.abs(normal)) <= 2.0**-4
    sub = 2.0 ** rng.uniform(-12, -6, 5000) * scale
    ys = f32(fp8.fake_quantize(jnp.asarray(sub, F32), scale))
    assert np.max(np.abs(ys - sub)) <= 2.0**-10 * scale * (1 + 1e-6)

    codes = lax.bitcast_convert_type(jnp.arange(256, dtype=jnp.uint8), E4M3).astype(F32)
    grid = np.asarray(codes)[np.isfinite(np.asarray(codes))] * 0.25  # every finite e4m3 value, scaled by 2^-2
    np.testing.assert_array_equal(f32(fp8.fake_quantize(jnp.asarray(grid), 0.25)), grid)


def test_saturation_zeros_tiny_and_nonfinite():
    """Out-of-range values saturate to +-448*scale (a plain cast gives NaN); all-zero tensors get scale 1
    and quantise to exact zeros; tiny amaxes give finite positive scales; a tensor with inf gets a NaN
    scale (the error shows)."""
    assert np.isnan(f32(jnp.asarray([470.0], F32).astype(E4M3)))[0]  # why quantize clips first
    x = jnp.asarray([460.0, 1000.0, -1e9, 448.0, 1e30, -449.0], F32) * 0.5
    np.testing.assert_array_equal(f32(fp8.fake_quantize(x, 0.5)), np.array([224, 224, -224, 224, 224, -224], np.float32))

    zeros = jnp.zeros((4, 6), F32)
    for p2 in (False, True):
        assert float(fp8.tensor_scale(zeros, power_of_two=p2)) == 1.0
    np.testing.assert_array_equal(f32(fp8.channel_scale(zeros)), np.ones(6))
    np.testing.assert_array_equal(f32(fp8.token_scale(zeros)), np.ones((4, 1)))
    np.testing.assert_array_equal(f32(fp8.quantize(zeros, fp8.tensor_scale(zeros))), np.zeros((4, 6)))
    mixed = jnp.asarray([[0.0, 1.5, 0.0, -3.0]], F32)
    out = f32(fp8.fake_quantize(mixed, fp8.tensor_scale(mixed)))
    assert out[0, 0] == 0.0 and out[0, 2] == 0.0

    for tiny in (1e-30, 1e-37):
        t = jnp.asarray([tiny, -tiny / 3, 0.0], F32)
        for p2 in (False, True):
            s = float(fp8.tensor_scale(t, power_of_two=p2))
            assert np.isfinite(s) and s > 0
            y = f32(fp8.fake_quantize(t, s))
            assert np.all(np.isfinite(y)) and y[2] == 0.0
    assert np.isnan(float(fp8.tensor_scale(jnp.asarray([1.0, jnp.inf], F32))))
    assert np.isnan(float(fp8.tensor_scale(jnp.asarray([1.0, jnp.inf], F32), power_of_two=True)))


def test_outlier_per_tensor_and_per_token():
    """A 1e6 outlier: per tensor it is reproduced and the rest stay finite (mostly flushed to 0); per token
    only its own row is affected — the other rows quantise exactly as they would alone."""
    x = np.array(jax.random.normal(jax.random.key(0), (16, 32)), np.float32)
    x[3, 5] = 1e6
    xj = jnp.asarray(x)
    y = f32(fp8.fake_quantize(xj, fp8.tensor_scale(xj)))
    assert np.all(np.isfinite(y))
    assert abs(y[3, 5] - 1e6) <= 2.0**-4 * 1e6
    yt = f32(fp8.fake_quantize(xj, fp8.token_scale(xj)))
    others = np.delete(np.arange(16), 3)
    alone = f32(fp8.fake_quantize(xj[others], fp8.token_scale(xj[others])))
    np.testing.assert_array_equal(yt[others], alone)
    normal = np.abs(x[others]) >= 2.0**-6 * f32(fp8.token_scale(xj))[others]
    assert np.max((np.abs(yt[others] - x[others]) / np.abs(x[others]))[normal]) <= 2.0**-4


def test_scale_granularity_and_power_of_two():
    """Per tensor / channel / token scales are amax/448 over the right axes; power-of-two scales are the
    next power of two at or above it; stacked kernels get one scale per layer."""
    rng = np.random.default_rng(1)
    k = rng.normal(size=(3, 16, 8)).astype(np.float32) * np.array([1.0, 10.0, 0.01], np.float32)[:, None, None]
    # (XLA may divide by 448 as a multiply by its reciprocal: equal to one float32 ulp)
    np.testing.assert_allclose(float(fp8.tensor_scale(jnp.asarray(k))), np.abs(k).max() / 448, rtol=1e-6)
    np.testing.assert_allclose(f32(fp8.channel_scale(jnp.asarray(k))), np.abs(k).max(axis=1) / 448, rtol=1e-6)
    x = rng.normal(size=(2, 5, 16)).astype(np.float32)
    ts = f32(fp8.token_scale(jnp.asarray(x)))
    assert ts.shape == (2, 5, 1)
    np.testing.assert_allclose(ts, np.abs(x).max(axis=-1, keepdims=True) / 448, rtol=1e-6)

    a = np.concatenate([10.0 ** rng.uniform(-20, 20, 500), 448.0 * 2.0 ** np.arange(-10, 10)]).astype(np.float32)
    s = f32(fp8.scale_from_amax(jnp.asarray(a), power_of_two=True))
    assert np.all(np.log2(s) == np.round(np.log2(s)))
    assert np.all(s >= a / np.float32(448)) and np.all(s < 2 * a / np.float32(448))
    np.testing.assert_array_equal(s[-20:], 2.0 ** np.arange(-10, 10))

    q, st = fp8.quantize_kernel(jnp.asarray(k), weight_scaling="tensor")
    assert q.dtype == E4M3 and st.shape == (3,)
    for i in range(3):
        assert float(st[i]) == float(fp8.tensor_scale(jnp.asarray(k[i]), power_of_two=True))
    qc, sc = fp8.quantize_kernel(jnp.asarray(k), weight_scaling="channel")
    assert qc.shape == k.shape and sc.shape == (3, 8)
    with pytest.raises(ValueError, match="weight_scaling"):
        fp8.quantize_kernel(jnp.asarray(k), weight_scaling="row")


# ----------------------------------------------------------------------------- FP8 matmul and Fp8Linear


def test_fp8_dot_general_runs_on_xla_cpu():
    """XLA:CPU (jax 0.10.2) accepts float8 operands in ``dot_general``: it converts them to float32, so
    the real FP8 dot equals the float32 dot of the upcast operands, and :func:`fp8.fp8_matmul` (the
    convert-and-scale form) agrees with both."""
    kx, kw = jax.random.split(jax.random.key(2))
    x8 = (jax.random.normal(kx, (24, 64)) * 4).astype(E4M3)
    w8 = (jax.random.normal(kw, (64, 40)) * 4).astype(E4M3)
    dims = (((1,), (0,)), ((), ()))
    real = jax.jit(lambda a, b: lax.dot_general(a, b, dims, preferred_element_type=F32))(x8, w8)
    ref = jnp.dot(x8.astype(F32), w8.astype(F32), precision=lax.Precision.HIGHEST)
    np.testing.assert_allclose(f32(real), f32(ref), rtol=1e-6, atol=1e-5)
    ours = fp8.fp8_matmul(x8, jnp.float32(0.5), w8, jnp.float32(4.0), out_dtype=F32)
    np.testing.assert_allclose(f32(ours), 2.0 * f32(ref), rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="FP8 operands"):
        fp8.fp8_matmul(x8.astype(F32), 1.0, w8, 1.0, out_dtype=F32)


def _dots(text: str) -> list[str]:
    return [line for line in text.splitlines() if "stablehlo.dot_general" in line]


def test_fp8_matmul_feeds_fp8_values_to_the_dot():
    """The dot's operands are the FP8 values themselves and the scales multiply its product: the form
    XLA GPU rewrites into a cuBLASLt FP8 GEMM (measured on an H200: a ``convert(fp8) * scale`` operand
    was not rewritten, and an in-program quantise-then-convert was simplified away). Also inside
    :class:`Fp8Linear`, where the activation is quantised in the same program."""
    x8, w8 = jnp.ones((32, 64), E4M3), jnp.ones((64, 48), E4M3)
    for w_scale in (jnp.float32(2.0), jnp.ones((48,), F32)):
        text = jax.jit(lambda a, sa, b, sb: fp8.fp8_matmul(a, sa, b, sb, out_dtype=jnp.bfloat16)).lower(
            x8, jnp.float32(0.5), w8, w_scale).as_text()
        (dot,) = _dots(text)
        assert re.search(r"\(tensor<32x64xf8E4M3FN>, tensor<64x48xf8E4M3FN>\) -> tensor<32x48xbf16>", dot), dot
        result = re.match(r"\s*(%\w+) = ", dot).group(1)
        assert re.search(rf"stablehlo\.convert {result} ", text) and "stablehlo.multiply" in text.split(dot)[1]
    layer = fp8.quantize_linear(nnx.Linear(64, 48, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    gd, st = nnx.split(layer)
    text = jax.jit(lambda st, x: nnx.merge(gd, st)(x)).lower(st, jnp.ones((4, 64), jnp.bfloat16)).as_text()
    (dot,) = _dots(text)
    assert re.search(r"\(tensor<4x64xf8E4M3FN>, tensor<64x48xf8E4M3FN>\)", dot), dot


def test_fp8_linear_matches_float_linear():
    """``quantize_linear``: nnx.Linear's names (kernel, bias) plus kernel_scale, kernel in e4m3, bias
    unchanged; the forward is exactly the FP8-rounded product, and within cosine >= 0.999 and
    max-relative error <= 6% of the float32 layer on Wan-like activations (unit-variance, a few 8x
    outlier channels; measured: cosine 0.9993, 4.1%)."""
    lin = nnx.Linear(64, 48, rngs=nnx.Rngs(0))
    lin.bias[...] = jax.random.normal(jax.random.key(3), (48,)) * 0.1
    x = jax.random.normal(jax.random.key(4), (2, 9, 64))
    x = x.at[..., :3].multiply(8.0)
    ref = lin(x)
    for scaling, scale_shape in (("tensor", ()), ("channel", (48,))):
        f = fp8.quantize_linear(lin, weight_scaling=scaling)
        params = nnx.to_pure_dict(nnx.state(f))
        assert set(params) == {"kernel", "bias", "kernel_scale"}
        assert f.kernel.dtype == E4M3 and f.kernel_scale.shape == scale_shape
        np.testing.assert_array_equal(f32(f.bias[...]), f32(lin.bias[...]))
        w = f32(fp8.dequantize(f.kernel[...], f.kernel_scale[...]))
        k = f32(lin.kernel[...])
        normal = np.abs(k) >= 2.0**-6 * np.broadcast_to(f32(f.kernel_scale[...]), k.shape)
        assert np.max(np.abs(w - k)[normal] / np.abs(k)[normal]) <= 2.0**-4
        y = f(x)
        assert y.shape == (2, 9, 48) and y.dtype == F32
        x2 = x.reshape(-1, 64)
        sx = fp8.tensor_scale(x2, power_of_two=True)
        exact = jnp.dot(fp8.fake_quantize(x2, sx), jnp.asarray(w), precision=lax.Precision.HIGHEST) + lin.bias[...]
        np.testing.assert_allclose(f32(y).reshape(-1, 48), f32(exact), rtol=1e-5, atol=1e-5)
        assert cosine(y, ref) >= 0.999
        assert rel_err(y, ref) <= 0.06


# ----------------------------------------------------------------------------- the Wan transformer


@pytest.fixture(scope="module")
def wan():
    """A tiny float32 WanTransformer, its FP8 copy (per-tensor weight scales) and model inputs."""
    model = init_transformer(CFG, seed=0)
    lat = jax.random.normal(jax.random.key(5), (1, 4, 3, 8, 8))
    t = jnp.array([700.0])
    ctx = jax.random.normal(jax.random.key(6), (1, 7, 12))
    return model, fp8.quantize_transformer(model), (lat, t, ctx)


def _is_fp8_linear_path(path) -> bool:
    keys = [getattr(k, "key", k) for k in path]
    return keys[0] == "blocks" and ".".join(map(str, keys[1:3])) in fp8.FP8_BLOCK_LINEARS


def test_quantize_transformer_state_and_load_path(wan):
    """``quantize_transformer`` swaps exactly the ten block linears (stacked ``[L, in, out]`` kernels, a
    scale per layer), keeps every other array, leaves the source model alone; ``quantize_state`` of the
    parameter dict is the same state, and loading it into the abstract FP8 model gives the same model."""
    model, m8, _ = wan
    for path in fp8.FP8_BLOCK_LINEARS:
        parent_name, name = path.split(".")
        layer = getattr(getattr(m8.blocks, parent_name), name)
        src = getattr(getattr(model.blocks, parent_name), name)
        assert isinstance(layer, fp8.Fp8Linear) and isinstance(src, nnx.Linear)
        assert layer.kernel.shape == src.kernel.shape and layer.kernel.dtype == E4M3
        assert layer.kernel_scale.shape == (CFG.num_layers,)
    before = dict(jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model))))
    after = dict(jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(m8))))
    kept = [p for p in before if not _is_fp8_linear_path(p)]
    assert len(kept) > 10 and all(np.array_equal(f32(before[p]), f32(after[p])) for p in kept)
    assert all(np.array_equal(f32(before[p]), f32(after[p])) for p in before if p[-1].key == "bias")

    state = fp8.quantize_state(nnx.state(model))
    leaves = dict(jax.tree_util.tree_leaves_with_path(state))
    assert set(leaves) == set(after)
    for p, a in after.items():
        assert leaves[p].dtype == a.dtype and np.array_equal(f32(leaves[p]), f32(a)), p

    loaded = model_from_params(fp8.quantize_transformer(abstract_transformer(CFG)), state)
    assert loaded.blocks.attn2.to_v.kernel.dtype == E4M3
    with pytest.raises(ValueError, match="not an nnx.Linear"):
        fp8.quantize_transformer(m8)
    with pytest.raises(ValueError, match="already quantised"):
        fp8.quantize_state(state)


def test_fp8_transformer_forward_vs_float(wan):
    """The FP8 model (block linears in FP8; attention float32, then the FP8 attention's emulation) stays
    close to the float32 model: cosine >= 0.999 / 0.998 and max-relative error <= 6% / 7% of the
    velocity (measured: 0.9996 / 0.9994 and 3.3% / 3.6%)."""
    model, m8, (lat, t, ctx) = wan
    forward = nnx.jit(lambda m, attention: m(lat, t, ctx, attention=attention), static_argnums=1)
    ref = forward(model, "xla")
    lin_only = forward(m8, "xla")
    full = forward(m8, fp8.emulated_fp8_attention)
    assert cosine(lin_only, ref) >= 0.999 and rel_err(lin_only, ref) <= 0.06
    assert cosine(full, ref) >= 0.998 and rel_err(full, ref) <= 0.07
    assert rel_err(full, lin_only) > 1e-4  # the emulated attention did round


def test_fsdp_shards_and_gathers_fp8_blocks(devices, wan):
    """Under fsdp over 8 devices the FP8 kernels shard like the float ones, a per-tensor scale ``[L]``
    stays replicated, a per-channel scale ``[L, out]`` shards along ``out``, and the per-layer gather
    (``fsdp.gather_hook`` inside shard_map) returns every FP8 leaf bit-exactly. Kernel bytes are a
    quarter of float32's (half of bf16's: half the bytes to gather)."""
    model, m8_tensor, _ = wan
    n = len(devices)
    m8 = fp8.quantize_transformer(model, weight_scaling="channel")
    state = nnx.state(m8)
    specs = fsdp.param_specs(state, "fsdp", n)

    def spec_of(specs, *names):
        leaves = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda s: isinstance(s, P))
        return next(s for p, s in leaves if [k.key for k in p if hasattr(k, "key")] == list(names))

    assert spec_of(specs, "blocks", "attn1", "to_q", "kernel") != P()
    assert spec_of(specs, "blocks", "ffn", "proj_in", "kernel_scale") == P(None, "fsdp")
    assert spec_of(fsdp.param_specs(nnx.state(m8_tensor), "fsdp", n), "blocks", "ffn", "proj_in", "kernel_scale") == P()

    with_path = jax.tree_util.tree_leaves_with_path(state)
    dims = [d for (p, _), d in zip(with_path, fsdp.shard_dims(state, n)) if is_block_path(p)]
    hook = fsdp.gather_hook(dims, "fsdp")
    mesh = Mesh(np.array(devices), ("fsdp",))
    blocks, block_specs = state["blocks"], specs["blocks"]
    placed = jax.device_put(blocks, jax.tree.map(lambda s: NamedSharding(mesh, s), block_specs))
    first = jax.shard_map(lambda st: hook(jax.tree.map(lambda a: a[0], st)), mesh=mesh, in_specs=(block_specs,),
                          out_specs=P(), check_vma=False)
    got = jax.tree.leaves(first(placed))
    want = jax.tree.leaves(jax.tree.map(lambda a: a[0], blocks))
    assert len(got) == len(want) and any(w.dtype == E4M3 for w in want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and np.array_equal(f32(g), f32(w))

    def kernel_bytes(m):
        leaves = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(m)))
        return sum(a.nbytes for p, a in leaves if _is_fp8_linear_path(p) and p[-1].key == "kernel")

    assert kernel_bytes(m8_tensor) * 4 == kernel_bytes(model)


# ----------------------------------------------------------------------------- FP8 attention


def test_attention_scales_and_cudnn_params():
    """Scales from amax (softmax 2^-8, output amax(v)/448), mapped onto every key cuDNN's FP8 attention
    requires (the private module's own list) as float32 ``[1,1,1,1]``: descales are our scales, scales
    their inverses. Zero inputs give finite parameters."""
    from jax._src.cudnn.fused_attention_stablehlo import fp8_params_keys

    kq, kk, kv = jax.random.split(jax.random.key(7), 3)
    q, k, v = (jax.random.normal(kq, (1, 8, 2, 16)) * 3, jax.random.normal(kk, (1, 8, 2, 16)),
               jax.random.normal(kv, (1, 8, 2, 16)) * 0.2)
    sc = fp8.attention_scales(q, k, v)
    for s, a in ((sc.q, q), (sc.k, k), (sc.v, v), (sc.o, v)):
        np.testing.assert_allclose(float(s), float(jnp.max(jnp.abs(a))) / 448, rtol=1e-6)
    assert float(sc.o) == float(sc.v)
    assert float(sc.s) == 2.0**-8  # P <= 1 maps into [0, 256]
    params = fp8.cudnn_fp8_params(sc)
    assert set(params) == set(fp8_params_keys) == set(fp8.CUDNN_FP8_PARAM_NAMES)
    assert all(p.shape == (1, 1, 1, 1) and p.dtype == F32 for p in params.values())
    assert float(params["descale_q"][0, 0, 0, 0]) == float(sc.q) and float(params["descale_v"][0, 0, 0, 0]) == float(sc.v)
    assert float(params["scale_s"][0, 0, 0, 0]) == 256.0 and float(params["descale_s"][0, 0, 0, 0]) == 2.0**-8
    np.testing.assert_allclose(float(params["scale_o"][0, 0, 0, 0]), 448 / float(jnp.max(jnp.abs(v))), rtol=1e-6)
    assert float(params["descale_o"][0, 0, 0, 0]) == float(sc.o)
    zero = jnp.zeros((1, 8, 2, 16))
    assert all(np.all(np.isfinite(f32(p))) for p in fp8.cudnn_fp8_params(fp8.attention_scales(zero, zero, zero)).values())


def test_needs_key_mask_is_static():
    """FP8 runs for kv_len None or a Python/NumPy int covering every key; anything else falls back."""
    assert not fp8.needs_key_mask(None, 48)
    assert not fp8.needs_key_mask(48, 48) and not fp8.needs_key_mask(np.int64(60), 48)
    assert fp8.needs_key_mask(47, 48) and fp8.needs_key_mask(np.int32(40), 48)
    assert fp8.needs_key_mask(jnp.int32(48), 48)  # an array: its value is not a trace-time fact
    seen = []
    jax.jit(lambda n: seen.append(fp8.needs_key_mask(n, 48)) or n)(48)
    assert seen == [True]


def test_emulated_fp8_attention_vs_float():
    """The emulation (FP8 rounding of q, k, v, P, O in float32) stays within cosine >= 0.995 and
    max-relative error <= 12% of float32 attention, for diffuse and 2x sharper scores (measured: cosine
    0.998 / 0.997, 7-10%); with keys to mask it computes the unquantised fallback (equal to
    ``xla_attention`` with ``kv_len``), for a static int and for a traced value alike."""
    kq, kk, kv = jax.random.split(jax.random.key(8), 3)
    q, k, v = (jax.random.normal(key, (2, 48, 3, 32)) for key in (kq, kk, kv))
    for sharp in (1.0, 2.0):
        out = fp8.emulated_fp8_attention(q * sharp, k, v)
        ref = xla_attention(q * sharp, k, v)
        assert out.shape == q.shape and out.dtype == q.dtype
        assert cosine(out, ref) >= 0.995 and 1e-3 < rel_err(out, ref) <= 0.12
    np.testing.assert_array_equal(f32(fp8.emulated_fp8_attention(q, k, v, 48)), f32(fp8.emulated_fp8_attention(q, k, v)))
    masked_ref = xla_attention(q, k, v, 40)
    assert rel_err(fp8.emulated_fp8_attention(q, k, v, 40), masked_ref) < 1e-5
    traced = jax.jit(fp8.emulated_fp8_attention)(q, k, v, jnp.int32(40))
    assert rel_err(traced, masked_ref) < 1e-5


# ----------------------------------------------------------------------------- refusing on CPU


def test_check_fp8_refuses_on_cpu():
    """On CPU ``check_fp8`` raises one line naming what is needed, and ``fp8_attention`` raises the same
    (it never emulates or falls back silently), with or without keys to mask."""
    with pytest.raises(ValueError) as e:
        check_fp8()
    assert str(e.value) == CPU_REFUSAL
    q = jnp.zeros((1, 16, 2, 16), jnp.bfloat16)
    for kv_len in (None, 8):
        with pytest.raises(ValueError) as e:
            fp8.fp8_attention(q, q, q, kv_len)
        assert str(e.value) == CPU_REFUSAL
    assert format_cudnn_version(91002) == "9.10.2" and format_cudnn_version(8906) == "8.9.6"
