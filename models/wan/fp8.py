"""FP8 (e4m3) inference for the Wan DiT on Hopper GPUs: scales, quantisation, FP8 linear layers, and
cuDNN FP8 flash attention.

**Scales.** A scale maps real values to the FP8 grid: ``q = saturate(x / scale)``, ``x ~ q * scale``,
with ``scale = amax / fp8_max`` (``fp8_max`` = 448 for ``float8_e4m3fn``), so the largest magnitude
lands on the format's largest finite value and nothing overflows. e4m3 is a floating-point format
(3 mantissa bits): every value whose scaled magnitude lies in the normal range ``[2^-6, 448]`` is
rounded with relative error at most ``2^-4``, whatever the scale; only values more than ``2^15``
below ``amax`` fall into subnormals (absolute error ``<= 2^-10 * scale``) or to zero. A zero (or
all-zero) tensor gets scale 1, and tiny amaxes are floored at float32's smallest normal, so a scale is
never 0, inf or NaN for finite inputs; a tensor holding inf/NaN gets a NaN scale (its error shows, it is
not clipped away).
``power_of_two=True`` rounds the scale up to a power of two (``amax / scale`` in ``(224, 448]``):
multiplying by it is exact in any float format, so the dequantisation after the FP8 GEMM (below) adds
no rounding of its own. Scales come from the data of the current call for activations (no
delayed-scaling history) and once, at load, for weights.

**FP8 GEMM.** :func:`fp8_matmul` hands the FP8 values themselves to ``dot_general``
(``preferred_element_type`` bf16/f32) and multiplies the product by ``x_scale * w_scale`` afterwards.
That is the form XLA GPU reliably rewrites into one ``__cublas$lt$matmul$f8`` custom call (cuBLASLt
accumulates in float32). Measured on an H200 with jax 0.11.2 (``benchmarks/fp8_check.py``): the
other documented form, ``dot(convert(fp8 -> bf16) * scale, ...)``, compiled to a plain bf16
``__cublas$lt$matmul``, and when the quantisation ran in the same program XLA's precision
simplification (``xla_allow_excess_precision``) removed the ``f32 -> f8 -> bf16`` round trip
altogether, so the activations were never rounded. A dot operand that *is* an FP8 value leaves it
nothing to simplify. The scale multiply is one elementwise op on the output, which XLA fuses with the
bias add (and any elementwise consumer). On CPU the same HLO runs as float32 maths on the FP8 values
(XLA:CPU upcasts FP8 dot operands), exactly the FP8-rounded product, so :class:`Fp8Linear` needs no
emulation switch.

**Granularity.** Weights: one scale per tensor (per layer of a stacked kernel) by default. Since the
scale multiplies the output, a per-output-channel scale (``weight_scaling="channel"``) costs the same,
but with power-of-two scales it changes almost nothing: e4m3 is floating point, so rescaling a channel
by a power of two leaves its rounding unchanged except for values more than ``2^15`` below the tensor's
amax (subnormals). A scalar is also the simpler parameter (``[L]`` for stacked blocks, replicated
under fsdp). Activations: per tensor (one amax pass); :func:`token_scale` gives per-token scales for
experiments. Attention: per tensor, the only form cuDNN's FP8 kernel takes.

**Attention.** :func:`fp8_attention` has the attention contract of :mod:`jaxvdm.models.wan.attention`
and calls cuDNN's FP8 flash attention (inference forward). Its maths (the cuDNN graph):
``S = (Q8 K8^T) * scale * descale_q * descale_k``, ``P = softmax(S)``, ``P8 = P * scale_s``,
``O = (P8 V8) * descale_s * descale_v``, ``O8 = O * scale_o``, returning ``O8`` in FP8 plus
``amax(P)``, ``amax(O)``. The flash kernel rounds the *unnormalised* tiles ``exp(S - running max)``
(each ``<= 1``) to FP8 and normalises at the end, though the ``amax(P)`` it reports is that of the
normalised probabilities (measured on an H200: ``amax_s`` 0.02-0.07 for diffuse scores, while any
``scale_s`` above 448 saturates: 4096 gave 59% error). jaxvdm's scales: q, k, v per tensor from their
amax; ``scale_s = 256`` (the power of two below 448: ``P <= 1`` never saturates and
``scale_s * descale_s == 1`` exactly); ``scale_o = 448 / amax(v)`` (every output row is a convex
combination of value rows, so ``|O| <= amax(v)``: never saturates, and long sequences' small outputs
stay out of the subnormals, where unit scales lose: 8.2% vs 6.0% rms error at 32,768 tokens). The
output is e4m3 (the kernel returns the query's dtype), so it carries up to ``2^-4`` relative rounding
too; on unit-variance inputs the rms error against float32 is about 6% (diffuse scores) to 10% (4x
sharper), what the emulation below predicts. The kernel has no key-padding mask (NO_MASK or CAUSAL
only): a call whose ``kv_len`` may mask keys falls back to bf16 cuDNN attention with key lengths. The
choice is static (trace time, :func:`needs_key_mask`): ``kv_len`` None, or a Python int ``>=`` the key
count, runs FP8; a smaller int or any traced/array value runs bf16.

**Emulation.** :func:`emulated_fp8_attention` is the same maths in float32 with FP8 rounding at the
same points (q, k, v, P, O), for CPU tests of scales and errors. The library never calls it:
:func:`fp8_attention` refuses on anything but a capable GPU (:func:`check_fp8`). (On a GPU, compile it
with ``xla_allow_excess_precision=False``, or XLA removes its ``f32 -> f8 -> f32`` round trips.)

**Parameters and sharding.** :class:`Fp8Linear` keeps ``nnx.Linear``'s ``kernel`` (now
``float8_e4m3fn``) and ``bias`` and adds ``kernel_scale`` (float32, ``[]`` per tensor or ``[out]`` per
channel; stacked blocks carry the leading layer axis on all three). Under fsdp, ``shard_dims`` splits
the fp8 kernel like the bf16 one (half the bytes to gather), leaves a per-tensor scale ``[L]``
replicated and splits a per-channel scale ``[L, out]`` along ``out``; ``gather_hook`` gathers each
leaf whole before use, so kernel and scale need not share a sharded dim. Pipeline stages slice the
layer axis of every leaf alike.

**Measured** (one H200, jax 0.11.2, cuDNN 9.19; ``benchmarks/results/h200x1-2026-12-01-fp8``): attention
at Wan 1.3B 480p (B=2, 12x128) 16.6 ms vs bf16 23.3 ms at 32,760 tokens, 15.0 vs 21.4 at 32,768; the bare
FP8 GEMM 2.42 / 1.68 / 0.67 ms vs bf16 2.64 / 2.53 / 0.64 ms (65,520 x 1,536 x 8,960 / x 8,960 x 1,536 /
x 1,536 x 1,536), but the whole :class:`Fp8Linear`, activation amax and quantisation included, 2.58 /
2.67 / 0.77 ms vs ``nnx.Linear`` 2.71 / 2.67 / 0.74; the FFN 5.0 vs 5.8 ms; two Wan 1.3B blocks 26.8
vs 34.2 ms with everything in FP8 and 34.2 with FP8 linears only. Errors: ``Fp8Linear`` 3.7-4.0% rms
of the bf16 layer's output, attention 6% (diffuse) to 10.6% (4x sharper scores) rms of float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from jaxvdm.models.wan.fp8_support import check_fp8

__all__ = ["E4M3", "fp8_max", "amax", "scale_from_amax", "tensor_scale", "channel_scale", "token_scale",
           "quantize", "dequantize", "fake_quantize", "fp8_matmul", "Fp8Linear", "quantize_kernel",
           "quantize_linear", "quantize_state", "quantize_transformer", "FP8_BLOCK_LINEARS", "AttentionScales",
           "attention_scales", "cudnn_fp8_params", "CUDNN_FP8_PARAM_NAMES", "cudnn_fp8_attention", "fp8_attention",
           "emulated_fp8_attention", "needs_key_mask"]

E4M3 = jnp.float8_e4m3fn
F32 = jnp.float32
_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32: the floor of every scale
WEIGHT_SCALINGS = ("tensor", "channel")

# The ten linear layers of a WanBlock that run in FP8 (paths under ``model.blocks``). Norms, the
# modulation table, the embeddings and the output head stay in their dtype.
FP8_BLOCK_LINEARS = tuple(f"{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out")) + (
    "ffn.proj_in", "ffn.proj_out")


# ----------------------------------------------------------------------------- scales


def fp8_max(dtype=E4M3) -> float:
    """The largest finite value of an FP8 format (448 for e4m3fn, 57344 for e5m2)."""
    return float(jnp.finfo(dtype).max)


def amax(x: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
    """``max |x|`` over ``axis`` (all axes by default) in float32."""
    return jnp.max(jnp.abs(jnp.asarray(x).astype(F32)), axis=axis, keepdims=keepdims)


def scale_from_amax(a: jax.Array, dtype=E4M3, *, power_of_two: bool = False) -> jax.Array:
    """The scale for values of magnitude at most ``a`` (any shape, float32 out).

    ``scale = max(a / fp8_max, tiny)``; ``a == 0`` gives 1; a non-finite ``a`` gives NaN (so a tensor
    holding inf/NaN quantises to NaN instead of being clipped to finite values). With ``power_of_two``
    the scale is rounded up to the next power of two (so ``a / scale`` lies in ``(fp8_max/2, fp8_max]``).
    """
    a = jnp.asarray(a, F32)
    s = jnp.maximum(a / fp8_max(dtype), _TINY)
    if power_of_two:
        m, e = jnp.frexp(s)  # s = m * 2**e, m in [0.5, 1)
        s = jnp.ldexp(jnp.ones_like(s), jnp.where(m == 0.5, e - 1, e))
    s = jnp.where(a > 0, s, jnp.ones_like(s))
    return jnp.where(jnp.isfinite(a), s, jnp.full_like(s, jnp.nan))


def tensor_scale(x: jax.Array, dtype=E4M3, *, power_of_two: bool = False) -> jax.Array:
    """One scale for the whole of ``x`` (a float32 scalar)."""
    return scale_from_amax(amax(x), dtype, power_of_two=power_of_two)


def channel_scale(kernel: jax.Array, dtype=E4M3, *, power_of_two: bool = False) -> jax.Array:
    """Per-output-channel scales of ``kernel [..., in, out]``: ``[..., out]`` (leading axes kept)."""
    return scale_from_amax(amax(kernel, axis=-2), dtype, power_of_two=power_of_two)


def token_scale(x: jax.Array, dtype=E4M3, *, power_of_two: bool = False) -> jax.Array:
    """Per-token scales of activations ``x [..., D]``: ``[..., 1]`` (broadcasts against ``x``)."""
    return scale_from_amax(amax(x, axis=-1, keepdims=True), dtype, power_of_two=power_of_two)


def quantize(x: jax.Array, scale: jax.Array, dtype=E4M3) -> jax.Array:
    """``saturate(x / scale)`` in FP8 ``dtype``; ``scale`` broadcasts against ``x``.

    The division runs in float32 and values beyond the format are clipped to ``+-fp8_max`` first (a
    plain cast turns them into NaN: e4m3fn has no infinity).
    """
    m = fp8_max(dtype)
    y = jnp.asarray(x).astype(F32) / jnp.asarray(scale, F32)
    return jnp.clip(y, -m, m).astype(dtype)


def dequantize(q: jax.Array, scale: jax.Array, dtype=F32) -> jax.Array:
    """``q * scale`` (computed in float32, returned in ``dtype``)."""
    return (q.astype(F32) * jnp.asarray(scale, F32)).astype(dtype)


def fake_quantize(x: jax.Array, scale: jax.Array, dtype=E4M3) -> jax.Array:
    """``x`` rounded to the FP8 grid of ``scale`` and back, in ``x.dtype`` (the emulation's rounding)."""
    return dequantize(quantize(x, scale, dtype), scale, jnp.asarray(x).dtype)


# ----------------------------------------------------------------------------- FP8 GEMM and linear layers


def _is_fp8(dtype) -> bool:
    return jnp.dtype(dtype) in (jnp.dtype(jnp.float8_e4m3fn), jnp.dtype(jnp.float8_e5m2))


def fp8_matmul(xq: jax.Array, x_scale: jax.Array, wq: jax.Array, w_scale: jax.Array, *, out_dtype) -> jax.Array:
    """``(xq * x_scale) @ (wq * w_scale)`` for ``xq [N, K]``, ``wq [K, M]`` in FP8: ``[N, M]`` in ``out_dtype``.

    ``x_scale`` is a scalar, ``w_scale`` a scalar or ``[M]``. The FP8 operands go straight into
    ``dot_general`` (a cuBLASLt FP8 GEMM on Hopper, float32 accumulation, ``out_dtype`` output) and the
    product is multiplied by the scales in float32; with power-of-two scales (as :class:`Fp8Linear`'s)
    that multiply is exact.
    """
    if not (_is_fp8(xq.dtype) and _is_fp8(wq.dtype)):
        raise ValueError(f"fp8_matmul takes FP8 operands, got {xq.dtype} and {wq.dtype}; quantize them first")
    if xq.ndim != 2 or wq.ndim != 2 or xq.shape[1] != wq.shape[0]:
        raise ValueError(f"fp8_matmul needs xq [N, K] and wq [K, M], got {xq.shape} and {wq.shape}")
    if jnp.ndim(x_scale) != 0 or jnp.ndim(w_scale) not in (0, 1):
        raise ValueError(f"fp8_matmul needs a scalar x_scale and a scalar or [M] w_scale, got shapes "
                         f"{jnp.shape(x_scale)} and {jnp.shape(w_scale)}")
    dt = jnp.dtype(out_dtype)
    y = lax.dot_general(xq, wq, (((1,), (0,)), ((), ())), preferred_element_type=dt)
    scale = jnp.asarray(x_scale, F32) * jnp.asarray(w_scale, F32)
    return (y.astype(F32) * scale).astype(dt)


class Fp8Linear(nnx.Module):
    """``nnx.Linear`` with an FP8 kernel: ``y = x @ (kernel * kernel_scale) + bias``, x quantised per call.

    Parameters (the names of ``nnx.Linear`` plus one): ``kernel [in, out]`` float8_e4m3fn,
    ``kernel_scale`` float32 (``[]`` per tensor or ``[out]`` per channel), ``bias [out]`` (or None).
    Build one with :func:`quantize_linear`, or :meth:`empty` for a model definition whose values come
    from a checkpoint. Stacked blocks hold ``[L, in, out]`` / ``[L]`` / ``[L, out]``; a call takes one
    layer's slice (inside the layer scan).

    ``__call__(x [..., in]) -> [..., out]`` in ``dtype`` (None: ``x``'s dtype promoted with the bias's,
    as ``nnx.Linear`` promotes). ``x`` is quantised with one power-of-two scale
    from its own amax, then :func:`fp8_matmul` runs (a cuBLASLt FP8 GEMM on Hopper; the same rounded
    maths on CPU).
    """

    def __init__(self, kernel, kernel_scale, bias=None, *, dtype=F32):
        shape = tuple(kernel.shape)
        if len(shape) < 2 or not _is_fp8(kernel.dtype):
            raise ValueError(f"Fp8Linear needs an FP8 kernel [..., in, out], got {kernel.dtype}{list(shape)}; "
                             "use quantize_linear to convert an nnx.Linear")
        self.in_features, self.out_features = shape[-2], shape[-1]
        self.use_bias = bias is not None
        self.dtype = dtype
        self.kernel = nnx.Param(kernel)
        self.kernel_scale = nnx.Param(kernel_scale)
        self.bias = nnx.Param(bias) if bias is not None else None

    @classmethod
    def empty(cls, in_features: int, out_features: int, *, use_bias: bool = True, dtype=F32, param_dtype=F32,
              weight_scaling: str = "tensor") -> "Fp8Linear":
        """A placeholder layer of the right shapes (zero kernel, unit scale): for model definitions whose
        values are then loaded (see :func:`quantize_state`)."""
        _check_scaling(weight_scaling)
        scale_shape = () if weight_scaling == "tensor" else (out_features,)
        bias = jnp.zeros((out_features,), param_dtype) if use_bias else None
        return cls(jnp.zeros((in_features, out_features), E4M3), jnp.ones(scale_shape, F32), bias, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        if kernel.ndim != 2:
            raise ValueError(f"this Fp8Linear holds stacked kernels {list(kernel.shape)}; call one layer's slice "
                             "(WanTransformer.run_blocks does, inside its layer scan)")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Fp8Linear expects inputs [..., {self.in_features}], got {list(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        bias = None if self.bias is None else self.bias[...]
        dt = self.dtype or (x.dtype if bias is None else jnp.promote_types(x.dtype, bias.dtype))
        sx = tensor_scale(x2, power_of_two=True)
        y = fp8_matmul(quantize(x2, sx), sx, kernel, self.kernel_scale[...], out_dtype=dt)
        if bias is not None:
            y = y + bias.astype(dt)
        return y.reshape(*lead, self.out_features)


def _check_scaling(weight_scaling: str) -> None:
    if weight_scaling not in WEIGHT_SCALINGS:
        raise ValueError(f"weight_scaling must be one of {WEIGHT_SCALINGS}, got {weight_scaling!r}")


@functools.partial(jax.jit, static_argnames=("weight_scaling",))
def _quantize_kernel(kernel, weight_scaling):
    if weight_scaling == "tensor":
        s = scale_from_amax(amax(kernel, axis=(-2, -1)), power_of_two=True)
        return quantize(kernel, s[..., None, None]), s
    s = channel_scale(kernel, power_of_two=True)
    return quantize(kernel, s[..., None, :]), s


def quantize_kernel(kernel, *, weight_scaling: str = "tensor"):
    """``kernel [..., in, out]`` -> ``(fp8 kernel, scale)``, one scale per ``[in, out]`` matrix (``[...]``)
    or per output channel (``[..., out]``); leading (layer) axes are kept, each layer scaled on its own.
    Scales are powers of two. Accepts a ``jax.ShapeDtypeStruct`` (returns the abstract results)."""
    _check_scaling(weight_scaling)
    if len(kernel.shape) < 2:
        raise ValueError(f"a kernel is [..., in, out], got shape {list(kernel.shape)}")
    fn = functools.partial(_quantize_kernel, weight_scaling=weight_scaling)
    if isinstance(kernel, jax.ShapeDtypeStruct):
        return jax.eval_shape(fn, kernel)
    return fn(kernel)


def quantize_linear(linear: nnx.Linear, *, weight_scaling: str = "tensor") -> Fp8Linear:
    """The :class:`Fp8Linear` of an ``nnx.Linear`` (its kernel quantised once; bias and dtype kept).

    Works on a layer of stacked blocks (kernel ``[L, in, out]``: one scale per layer) and on an abstract
    layer (``nnx.eval_shape``), whose result is abstract too.
    """
    if not isinstance(linear, nnx.Linear):
        raise ValueError(f"quantize_linear takes an nnx.Linear, got {type(linear).__name__}")
    kernel = linear.kernel.get_value()
    q, s = quantize_kernel(kernel, weight_scaling=weight_scaling)
    bias = None if linear.bias is None else linear.bias.get_value()
    return Fp8Linear(q, s, bias, dtype=linear.dtype)


def _block_linear_parent(blocks, path: str):
    node = blocks
    *parents, last = path.split(".")
    for name in parents:
        node = getattr(node, name, None)
    layer = getattr(node, last, None) if node is not None else None
    if not isinstance(layer, nnx.Linear):
        raise ValueError(f"blocks.{path} is {type(layer).__name__}, not an nnx.Linear; quantize an unquantised "
                         "WanTransformer, or update FP8_BLOCK_LINEARS to its layer names")
    return node, last, layer


def quantize_transformer(model, *, weight_scaling: str = "tensor", linears=FP8_BLOCK_LINEARS):
    """A copy of a ``WanTransformer`` whose block linear layers ``linears`` are :class:`Fp8Linear`.

    The stacked kernels ``[L, in, out]`` are quantised once (a scale per layer, or per layer and output
    channel); everything else (norms, modulation, embeddings, head) is the same arrays. ``model`` itself
    is unchanged. Works on an abstract model (``abstract_transformer``) for ahead-of-time compiles.
    """
    if not hasattr(model, "blocks"):
        raise ValueError(f"quantize_transformer takes a WanTransformer (with stacked .blocks), "
                         f"got {type(model).__name__}")
    new = nnx.clone(model)
    for path in linears:
        parent, name, layer = _block_linear_parent(new.blocks, path)
        setattr(parent, name, quantize_linear(layer, weight_scaling=weight_scaling))
    return new


def quantize_state(params, *, weight_scaling: str = "tensor", linears=FP8_BLOCK_LINEARS) -> dict:
    """Quantises the block linear kernels of a WanTransformer's parameters (a nested dict laid out as
    ``nnx.to_pure_dict(nnx.state(model))``, or that ``nnx.State``): returns a new nested dict where each
    ``blocks/<linear>`` holds ``kernel`` (FP8, ``[L, in, out]``), ``kernel_scale`` and its ``bias``.

    The result is what the FP8 model definition's state holds: ``model_from_params(abstract_fp8_model,
    quantize_state(params))`` equals :func:`quantize_transformer` of the loaded bf16 model.
    """
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    if not isinstance(params, Mapping) or "blocks" not in params:
        raise ValueError("quantize_state takes a WanTransformer's parameter tree (a nested dict with 'blocks')")
    out = jax.tree.map(lambda a: a, dict(params))  # new containers, same arrays
    for path in linears:
        node = out["blocks"]
        for name in path.split("."):
            if not isinstance(node, Mapping) or name not in node:
                raise ValueError(f"parameters have no blocks/{path.replace('.', '/')}; update FP8_BLOCK_LINEARS")
            node = node[name]
        if "kernel_scale" in node:
            raise ValueError(f"blocks/{path.replace('.', '/')} is already quantised")
        if np.ndim(node["kernel"]) != 3:
            raise ValueError(f"blocks/{path.replace('.', '/')}/kernel must be stacked [L, in, out], "
                             f"got shape {list(np.shape(node['kernel']))}")
        q, scale = quantize_kernel(jnp.asarray(node["kernel"]), weight_scaling=weight_scaling)
        node["kernel"], node["kernel_scale"] = q, scale
    return out


# ----------------------------------------------------------------------------- FP8 attention


class AttentionScales(NamedTuple):
    """Per-tensor scales of one FP8 attention call (float32 scalars, ``x ~ fp8 * scale``).

    q, k, v: from the inputs' amax; s: of the softmax probabilities (``P <= 1``: the smallest power of
    two ``>= 1 / fp8_max``, ``2^-8`` for e4m3, so its inverse is exact too);
    o: of the output (``amax(v) / fp8_max``, as ``|O| <= amax(v)``).
    """

    q: jax.Array
    k: jax.Array
    v: jax.Array
    s: jax.Array
    o: jax.Array


def attention_scales(q: jax.Array, k: jax.Array, v: jax.Array, dtype=E4M3) -> AttentionScales:
    """The scales :func:`fp8_attention` uses for ``q, k, v`` (see :class:`AttentionScales`)."""
    sq, sk, sv = (tensor_scale(a, dtype) for a in (q, k, v))
    s = 2.0 ** -math.floor(math.log2(fp8_max(dtype)))  # 2^-8 for e4m3: P <= 1 maps into [0, 256]
    return AttentionScales(sq, sk, sv, jnp.asarray(s, F32), sv)


# Every key cuDNN's FP8 attention requires in fp8_params (JAX checks all of them, forward or not).
CUDNN_FP8_PARAM_NAMES = ("amax_dQ", "amax_dK", "amax_dV", "amax_dP", "descale_q", "descale_k", "descale_v",
                         "descale_s", "scale_s", "scale_o", "descale_o", "descale_dO", "descale_dP", "scale_dQ",
                         "scale_dK", "scale_dV", "scale_dP")


def cudnn_fp8_params(scales: AttentionScales) -> dict[str, jax.Array]:
    """``fp8_params`` for cuDNN's FP8 attention: each a float32 ``[1, 1, 1, 1]``.

    cuDNN's names: ``descale_x`` multiplies an FP8 tensor back to real values (our scale), ``scale_x``
    multiplies a real tensor before it is rounded to FP8 (its inverse). The backward-only entries are
    1 (amax placeholders 0); the forward reads descale_q/k/v/s, scale_s and scale_o.
    """
    one = lambda x: jnp.reshape(jnp.asarray(x, F32), (1, 1, 1, 1))  # noqa: E731
    params = {name: one(0.0 if name.startswith("amax") else 1.0) for name in CUDNN_FP8_PARAM_NAMES}
    params.update(descale_q=one(scales.q), descale_k=one(scales.k), descale_v=one(scales.v), descale_s=one(scales.s),
                  scale_s=one(1.0 / scales.s), scale_o=one(1.0 / scales.o), descale_o=one(scales.o))
    return params


def needs_key_mask(kv_len, num_keys: int) -> bool:
    """Whether ``kv_len`` may mask some of ``num_keys`` keys, decided at trace time.

    False for None and for a Python/NumPy int ``>= num_keys``; True for a smaller int and for any
    array or traced value (its value is unknown when the kernel is chosen).
    """
    if kv_len is None:
        return False
    if isinstance(kv_len, (int, np.integer)):
        return int(kv_len) < num_keys
    return True


def _check_head_dim(dh: int) -> None:
    if dh > 256 or dh % 16:
        raise ValueError(f"cuDNN FP8 attention needs a head dim <= 256 and a multiple of 16, got {dh}")


def cudnn_fp8_attention(q8: jax.Array, k8: jax.Array, v8: jax.Array, scales: AttentionScales):
    """cuDNN FP8 flash attention (inference forward, no mask) on FP8 ``q8 [B,Sq,H,Dh]``, ``k8, v8
    [B,Sk,H,Dh]`` with their :class:`AttentionScales`. Returns ``(out8 [B,Sq,H,Dh] in FP8, amax_s,
    amax_o)`` (amaxes ``[1,1,1,1]`` float32); real output ``= out8 * scales.o``. Needs a capable GPU."""
    from jax._src.cudnn.fused_attention_stablehlo import MaskType, dot_product_attention

    _check_head_dim(q8.shape[-1])
    return dot_product_attention(q8, k8, v8, fp8_params=cudnn_fp8_params(scales), scale=1.0 / math.sqrt(q8.shape[-1]),
                                 mask_type=MaskType.NO_MASK, qkv_layout="BTNH", use_fp8=True)


def _cudnn_bf16_attention(q, k, v, kv_len):
    """The bf16 fallback: cuDNN flash attention with key lengths (as ``attention.cudnn_attention``;
    written here so that ``attention`` can register this module's backend without an import cycle)."""
    dt = q.dtype if q.dtype in (jnp.bfloat16, jnp.float16) else jnp.dtype(jnp.bfloat16)
    lengths = None if kv_len is None else jnp.full((q.shape[0],), kv_len, jnp.int32)
    out = jax.nn.dot_product_attention(q.astype(dt), k.astype(dt), v.astype(dt), key_value_seq_lengths=lengths,
                                       implementation="cudnn")
    return out.astype(q.dtype)


def fp8_attention(q: jax.Array, k: jax.Array, v: jax.Array, kv_len=None) -> jax.Array:
    """Attention (``q [B,Sq,H,Dh]``, ``k, v [B,Sk,H,Dh]``, keys ``>= kv_len`` masked) through cuDNN's FP8
    flash attention; returns ``[B,Sq,H,Dh]`` in ``q.dtype``.

    q, k, v are quantised to e4m3 with per-tensor scales from their amax (see the module docstring
    for the softmax and output scales). When :func:`needs_key_mask` is true the call runs bf16 cuDNN
    attention with key lengths instead (the FP8 kernel cannot mask keys). Raises ValueError (from
    :func:`check_fp8`) unless the machine has a GPU of compute capability 9.0+ with cuDNN 9.1+.
    """
    check_fp8()
    if needs_key_mask(kv_len, k.shape[1]):
        return _cudnn_bf16_attention(q, k, v, kv_len)
    scales = attention_scales(q, k, v)
    q8, k8, v8 = (quantize(a, s) for a, s in zip((q, k, v), scales[:3]))
    out8, _, _ = cudnn_fp8_attention(q8, k8, v8, scales)
    return dequantize(out8, scales.o, q.dtype)


def _softmax_attention(q, k, v, kv_len):
    """Float32 softmax attention with keys ``>= kv_len`` masked (what the bf16 fallback computes)."""
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(F32), k.astype(F32)) / math.sqrt(q.shape[-1])
    if kv_len is not None:
        s = jnp.where((jnp.arange(k.shape[1]) < kv_len)[None, None, None, :], s, -1e30)
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v.astype(F32)).astype(q.dtype)


def emulated_fp8_attention(q: jax.Array, k: jax.Array, v: jax.Array, kv_len=None) -> jax.Array:
    """CPU tests only: :func:`fp8_attention`'s maths in float32, FP8 rounding at the kernel's points.

    q, k, v are rounded with their scales; the unnormalised probabilities ``exp(S - rowmax)`` (``<= 1``)
    with ``scale_s``; the normalised output with ``scale_o``. The row sums stay float32 (as in the flash
    kernel; its tile-wise running max changes only which tiny values go subnormal). When
    :func:`needs_key_mask` is true it computes the fallback's unquantised masked attention. Same
    contract as :func:`fp8_attention`; materialises the ``[B,H,Sq,Sk]`` scores.
    """
    if needs_key_mask(kv_len, k.shape[1]):
        return _softmax_attention(q, k, v, kv_len)
    scales = attention_scales(q, k, v)
    qd, kd, vd = (fake_quantize(a.astype(F32), s) for a, s in zip((q, k, v), scales[:3]))
    s = jnp.einsum("bqhd,bkhd->bhqk", qd, kd) / math.sqrt(q.shape[-1])
    p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    rowsum = jnp.sum(p, axis=-1)  # [B, H, Sq]
    o = jnp.einsum("bhqk,bkhd->bqhd", fake_quantize(p, scales.s), vd) / jnp.swapaxes(rowsum, 1, 2)[..., None]
    return fake_quantize(o, scales.o).astype(q.dtype)
