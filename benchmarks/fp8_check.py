"""FP8 on a Hopper GPU in one run: capability, speed, fidelity, and the HLO proof of the FP8 kernels.

    python benchmarks/fp8_check.py --json out.json [--reps 20] [--skip-model]

(On the GPU machines, where jaxvdm is not installed: ``. benchmarks/assemble_package.sh && assemble_jaxvdm
$PWD && R=$PWD && cd /tmp && PYTHONPATH=/tmp/jvsrc python3 $R/benchmarks/fp8_check.py --json $OUT/fp8.json``.)

1. ``check_fp8()`` (refuses in one line, exit status 2, where FP8 cannot run — e.g. on CPU).
2. Attention at Wan 1.3B 480p shapes (B=2, 12 heads of 128; 32,760 and 32,768 tokens): cuDNN bf16
   (``jax.nn.dot_product_attention(implementation="cudnn")``) vs ``fp8.fp8_attention`` (amax, quantise
   and the cuDNN FP8 kernel) vs the bare FP8 kernel on pre-quantised inputs; TFLOP/s
   (``4*B*H*S^2*D / t``), the kernel's amax outputs, the custom-call targets, and the per-call error of
   FP8 against bf16.
3. Attention fidelity at 4,096 tokens against a float32 reference, for diffuse and sharp scores: bf16
   cuDNN, FP8 with jaxvdm's scales, FP8 with unit scales, and the float32 emulation (compiled without
   XLA's excess-precision simplification, which would remove its FP8 round trips), and how closely the
   emulation matches the kernel.
4. GEMMs at Wan's shapes (65,520 x 1,536 x 8,960; 65,520 x 8,960 x 1,536; 65,520 x 1,536 x 1,536): bf16
   vs the bare FP8 GEMM (per-tensor and per-channel weight scales) vs the whole ``Fp8Linear`` (activation
   amax and quantisation included) vs ``nnx.Linear`` in bf16; TFLOP/s (``2*M*K*N / t``); the compiled
   custom-call targets (``__cublas$lt$matmul$f8`` means cuBLASLt FP8); ``Fp8Linear``'s error against
   the bf16 layer and both against float32.
5. The FFN (proj_in -> GELU -> proj_out) and a 2-layer Wan 1.3B-size model at 32,760 tokens (random
   weights): bf16 vs FP8 time and output error.

Errors: ``rel_max = max|a-b| / max|b|``, ``rel_rms = ||a-b|| / ||b||``, ``cosine``. Activations are
"Wan-like" random: unit-variance tokens with per-channel gains and a few 8x outlier channels; q/k
RMS-normalised. Writes everything to ``--json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import re
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvdm.models.wan import fp8
from jaxvdm.models.wan.fp8_support import check_fp8, format_cudnn_version

BF16, F32 = jnp.bfloat16, jnp.float32
ATTN_SHAPES = ((2, 32760, 12, 128), (2, 32768, 12, 128))
GEMM_SHAPES = ((65520, 1536, 8960), (65520, 8960, 1536), (65520, 1536, 1536))
FIDELITY_SHAPE = (2, 4096, 12, 128)
FFN_TOKENS = 32760
MODEL_LATENT = (1, 16, 21, 60, 104)  # 480p, 81 frames: 21 x 30 x 52 = 32,760 tokens
CUBLAS_FP8 = "__cublas$lt$matmul$f8"
CUDNN_FP8 = "__cudnn$fmhaSoftmaxF8"


def timed(fn, *args, reps: int):
    """(median seconds over ``reps`` calls after a warm-up call, output of the warm-up)."""
    out = jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def hlo_report(jitted, *args) -> dict:
    """Custom-call targets (with counts) of the compiled program, and its Triton GEMM fusions."""
    text = jitted.lower(*args).compile().as_text()
    targets = collections.Counter(re.findall(r'custom_call_target="([^"]+)"', text))
    return {"custom_calls": dict(targets), "triton_gemm_fusions": len(re.findall(r"__triton_gemm", text))}


@jax.jit
def _errors(out, ref):
    o, r = out.astype(F32), ref.astype(F32)
    d = o - r
    return (jnp.max(jnp.abs(d)) / jnp.max(jnp.abs(r)), jnp.linalg.norm(d) / jnp.linalg.norm(r),
            jnp.sum(o * r) / (jnp.linalg.norm(o) * jnp.linalg.norm(r)))


def errors(out, ref) -> dict:
    rel_max, rel_rms, cos = (float(e) for e in _errors(out, ref))
    return {"rel_max": rel_max, "rel_rms": rel_rms, "cosine": cos}


def wan_activations(key, shape, *, outliers: int = 8) -> jax.Array:
    """Unit-variance tokens ``[..., D]`` with log-normal per-channel gains and ``outliers`` 8x channels."""
    k1, k2, k3 = jax.random.split(key, 3)
    d = shape[-1]
    gain = jnp.exp(0.3 * jax.random.normal(k2, (d,)))
    gain = gain.at[jax.random.choice(k3, d, (outliers,), replace=False)].multiply(8.0)
    return jax.random.normal(k1, shape, F32) * gain


def wan_qkv(key, b, s, h, dh, *, sharpness: float):
    """q, k RMS-normalised across the hidden size (as Wan's norm_q/norm_k) with per-channel gains, q scaled
    by ``sharpness`` (score std ~ sharpness); v Wan-like activations. All bf16, ``[B, S, H, Dh]``."""
    kq, kk, kv = jax.random.split(key, 3)

    def normed(k):
        x = wan_activations(k, (b, s, h * dh), outliers=0)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + 1e-6)
        return x.reshape(b, s, h, dh)

    q = normed(kq) * sharpness
    v = wan_activations(kv, (b, s, h * dh)).reshape(b, s, h, dh)
    return tuple(a.astype(BF16) for a in (q, normed(kk), v))


def f32_attention(q, k, v):
    """Float32 softmax attention (materialises the scores: for the 4,096-token fidelity study)."""
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(F32), k.astype(F32), precision="highest") / math.sqrt(q.shape[-1])
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v.astype(F32), precision="highest")


def bench_attention(reps: int) -> list[dict]:
    cudnn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))
    fp8_e2e = jax.jit(fp8.fp8_attention)
    kernel = jax.jit(fp8.cudnn_fp8_attention)

    @jax.jit
    def quantise(q, k, v):
        scales = fp8.attention_scales(q, k, v)
        return (scales, *(fp8.quantize(a, s) for a, s in zip((q, k, v), scales[:3])))

    rows = []
    for b, s, h, d in ATTN_SHAPES:
        q, k, v = wan_qkv(jax.random.key(s), b, s, h, d, sharpness=1.0)
        flops = 4 * b * h * s * s * d
        t_bf16, ref = timed(cudnn, q, k, v, reps=reps)
        t_fp8, out = timed(fp8_e2e, q, k, v, reps=reps)
        scales, q8, k8, v8 = quantise(q, k, v)
        t_kernel, (_, amax_s, amax_o) = timed(kernel, q8, k8, v8, scales, reps=reps)
        row = {"shape": [b, s, h, d], "tflop": flops / 1e12,
               "bf16_ms": t_bf16 * 1e3, "bf16_tflops": flops / t_bf16 / 1e12,
               "fp8_ms": t_fp8 * 1e3, "fp8_tflops": flops / t_fp8 / 1e12,
               "fp8_kernel_ms": t_kernel * 1e3, "fp8_kernel_tflops": flops / t_kernel / 1e12,
               "amax_s": float(amax_s.reshape(())), "amax_o": float(amax_o.reshape(())),
               "amax_v": float(jnp.max(jnp.abs(v.astype(F32)))),
               "fp8_vs_bf16": errors(out, ref), "hlo_fp8": hlo_report(fp8_e2e, q, k, v)}
        row["cudnn_fp8_used"] = CUDNN_FP8 in row["hlo_fp8"]["custom_calls"]
        rows.append(row)
        print(f"attention B={b} S={s} H={h} D={d}: bf16 {row['bf16_ms']:.2f} ms ({row['bf16_tflops']:.0f} TFLOP/s) | "
              f"fp8 {row['fp8_ms']:.2f} ms ({row['fp8_tflops']:.0f}) | fp8 kernel only {row['fp8_kernel_ms']:.2f} ms "
              f"({row['fp8_kernel_tflops']:.0f}) | amax_s {row['amax_s']:.4g} amax_o {row['amax_o']:.4g} "
              f"(amax_v {row['amax_v']:.4g}) | fp8 vs bf16 {row['fp8_vs_bf16']} | {row['hlo_fp8']['custom_calls']}")
    return rows


def attention_fidelity() -> list[dict]:
    kernel = jax.jit(fp8.cudnn_fp8_attention)
    fp8_e2e = jax.jit(fp8.fp8_attention)
    cudnn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))
    # XLA GPU's default precision simplification would drop the emulation's f32 -> f8 -> f32 round trips
    exact = {"xla_allow_excess_precision": False}
    emulated = lambda q, k, v: jax.jit(fp8.emulated_fp8_attention).lower(q, k, v).compile(exact)(q, k, v)  # noqa: E731
    ref_fn = jax.jit(f32_attention)
    one = jnp.float32(1.0)
    rows = []
    for sharpness in (1.0, 4.0):
        q, k, v = wan_qkv(jax.random.key(7), *FIDELITY_SHAPE, sharpness=sharpness)
        ref = ref_fn(q, k, v)
        ours = fp8_e2e(q, k, v)
        unit = fp8.AttentionScales(one, one, one, one, one)
        out_unit, _, _ = kernel(*(fp8.quantize(a, one) for a in (q, k, v)), unit)
        emu = emulated(q, k, v)
        row = {"shape": list(FIDELITY_SHAPE), "sharpness": sharpness,
               "bf16_vs_f32": errors(cudnn(q, k, v), ref), "fp8_vs_f32": errors(ours, ref),
               "fp8_unit_scales_vs_f32": errors(out_unit.astype(F32), ref), "emulated_vs_f32": errors(emu, ref),
               "fp8_vs_emulated": errors(ours, emu)}
        rows.append(row)
        print(f"attention fidelity {FIDELITY_SHAPE} sharpness {sharpness}: " + json.dumps({k_: v_ for k_, v_ in row.items()
                                                                                 if isinstance(v_, dict)}))
    return rows


def bench_gemms(reps: int) -> list[dict]:
    dims = (((1,), (0,)), ((), ()))
    bf16_mm = jax.jit(lambda x, w: jax.lax.dot_general(x, w, dims, preferred_element_type=BF16))
    f32_mm = jax.jit(lambda x, w: jax.lax.dot_general(x.astype(F32), w.astype(F32), dims, precision="highest"))
    fp8_mm = jax.jit(lambda xq, sx, wq, sw: fp8.fp8_matmul(xq, sx, wq, sw, out_dtype=BF16))
    rows = []
    for m, kdim, n in GEMM_SHAPES:
        kx, kw = jax.random.split(jax.random.key(m + kdim + n))
        x = wan_activations(kx, (m, kdim)).astype(BF16)
        lin = nnx.Linear(kdim, n, dtype=BF16, param_dtype=BF16, rngs=nnx.Rngs(n))
        lin.bias[...] = (0.02 * jax.random.normal(kw, (n,))).astype(BF16)
        w = lin.kernel[...]
        flops = 2 * m * kdim * n
        row = {"shape": [m, kdim, n], "tflop": flops / 1e12}
        t, y_bf16 = timed(bf16_mm, x, w, reps=reps)
        row.update(bf16_ms=t * 1e3, bf16_tflops=flops / t / 1e12, hlo_bf16=hlo_report(bf16_mm, x, w))
        sx = fp8.tensor_scale(x, power_of_two=True)
        xq = fp8.quantize(x, sx)
        for scaling in ("tensor", "channel"):
            wq, sw = fp8.quantize_kernel(w, weight_scaling=scaling)
            t, _ = timed(fp8_mm, xq, sx, wq, sw, reps=reps)
            row[f"fp8_{scaling}_ms"], row[f"fp8_{scaling}_tflops"] = t * 1e3, flops / t / 1e12
            row[f"hlo_fp8_{scaling}"] = hlo_report(fp8_mm, xq, sx, wq, sw)
        gd, st = nnx.split(lin)
        gd8, st8 = nnx.split(fp8.quantize_linear(lin))
        run_lin = jax.jit(lambda st, x: nnx.merge(gd, st)(x))
        run_fp8 = jax.jit(lambda st, x: nnx.merge(gd8, st)(x))
        t, y_lin = timed(run_lin, st, x, reps=reps)
        row.update(linear_bf16_ms=t * 1e3, linear_bf16_tflops=flops / t / 1e12)
        t, y_fp8 = timed(run_fp8, st8, x, reps=reps)
        row.update(fp8_linear_ms=t * 1e3, fp8_linear_tflops=flops / t / 1e12, hlo_fp8_linear=hlo_report(run_fp8, st8, x))
        ref = f32_mm(x, w) + lin.bias[...].astype(F32)
        row.update(fp8_linear_vs_bf16=errors(y_fp8, y_lin), fp8_linear_vs_f32=errors(y_fp8, ref),
                   bf16_linear_vs_f32=errors(y_lin, ref))
        row["cublas_fp8_used"] = {k_: CUBLAS_FP8 in row[k_]["custom_calls"]
                                  for k_ in ("hlo_fp8_tensor", "hlo_fp8_channel", "hlo_fp8_linear")}
        del y_bf16
        rows.append(row)
        print(f"GEMM {m}x{kdim}x{n}: bf16 {row['bf16_ms']:.3f} ms ({row['bf16_tflops']:.0f} TFLOP/s) | fp8 per-tensor "
              f"{row['fp8_tensor_ms']:.3f} ms ({row['fp8_tensor_tflops']:.0f}) | fp8 per-channel {row['fp8_channel_ms']:.3f} "
              f"ms ({row['fp8_channel_tflops']:.0f}) | nnx.Linear bf16 {row['linear_bf16_ms']:.3f} ms | Fp8Linear "
              f"{row['fp8_linear_ms']:.3f} ms | Fp8Linear vs bf16 {row['fp8_linear_vs_bf16']} | vs f32 "
              f"{row['fp8_linear_vs_f32']} (bf16 vs f32 {row['bf16_linear_vs_f32']})")
        print(f"  custom calls: fp8 per-tensor {row['hlo_fp8_tensor']} | per-channel {row['hlo_fp8_channel']} | "
              f"Fp8Linear {row['hlo_fp8_linear']} | bf16 {row['hlo_bf16']}")
    return rows


def bench_ffn(reps: int) -> dict:
    from jaxvdm.models.wan.transformer import WanConfig
    from jaxvdm.models.wan.transformer.model import FeedForward

    cfg = WanConfig()
    ffn = FeedForward(cfg, BF16, BF16, nnx.Rngs(0))
    ffn8 = nnx.clone(ffn)
    ffn8.proj_in, ffn8.proj_out = fp8.quantize_linear(ffn.proj_in), fp8.quantize_linear(ffn.proj_out)
    x = wan_activations(jax.random.key(3), (2, FFN_TOKENS, cfg.hidden_size)).astype(BF16)
    out = {}
    for name, module in (("bf16", ffn), ("fp8", ffn8)):
        gd, st = nnx.split(module)
        fn = jax.jit(lambda st, x, gd=gd: nnx.merge(gd, st)(x))
        t, y = timed(fn, st, x, reps=reps)
        out[f"{name}_ms"], out[name] = t * 1e3, y
    out["fp8_vs_bf16"] = errors(out.pop("fp8"), out.pop("bf16"))
    print(f"FFN [2, {FFN_TOKENS}, 1536] -> 8960 -> 1536: bf16 {out['bf16_ms']:.3f} ms | fp8 {out['fp8_ms']:.3f} ms | "
          f"fp8 vs bf16 {out['fp8_vs_bf16']}")
    return out


def bench_model(reps: int) -> dict:
    """Two Wan 1.3B-size blocks at 480p (21 x 60 x 104 latent: 32,760 tokens), random weights, one sample."""
    from jaxvdm.models.wan.transformer import WanConfig, init_transformer

    cfg = WanConfig(num_layers=2)
    model = init_transformer(cfg, seed=0, dtype=BF16, param_dtype=BF16)
    model8 = fp8.quantize_transformer(model)
    lat = jax.random.normal(jax.random.key(1), MODEL_LATENT)
    t = jnp.array([700.0])
    ctx = jax.random.normal(jax.random.key(2), (1, 512, cfg.text_dim))

    def forward(m, self_attention):
        grid = m.config.token_grid(lat.shape[2:])
        x, temb, cond = m.embed(lat, t, ctx)
        x = m.run_blocks(x, cond, self_attention=self_attention, cross_attention="cudnn")
        return m.head(x, temb, grid)

    grid = cfg.token_grid(MODEL_LATENT[2:])
    out = {"layers": 2, "tokens": int(np.prod(grid))}
    for name, m, attn in (("bf16", model, "cudnn"), ("fp8", model8, fp8.fp8_attention),
                          ("fp8_linears_only", model8, "cudnn")):
        gd, st = nnx.split(m)
        fn = jax.jit(lambda st, gd=gd, attn=attn: forward(nnx.merge(gd, st), attn))
        t_, y = timed(fn, st, reps=reps)
        out[f"{name}_ms"], out[f"_{name}"] = t_ * 1e3, y
    ref = out.pop("_bf16")
    out["fp8_vs_bf16"] = errors(out.pop("_fp8"), ref)
    out["fp8_linears_only_vs_bf16"] = errors(out.pop("_fp8_linears_only"), ref)
    print(f"2-layer Wan 1.3B at {out['tokens']} tokens: bf16 {out['bf16_ms']:.2f} ms | fp8 {out['fp8_ms']:.2f} ms | fp8 linears "
          f"only {out['fp8_linears_only_ms']:.2f} ms | fp8 vs bf16 {out['fp8_vs_bf16']} | linears only "
          f"{out['fp8_linears_only_vs_bf16']}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--skip-model", action="store_true", help="skip the FFN and 2-layer model sections")
    a = p.parse_args()
    try:
        support = check_fp8()
    except ValueError as e:
        print(e)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"refused": str(e), "jax": jax.__version__, "backend": jax.default_backend()}, f, indent=1)
        return 2
    results = {"jax": jax.__version__, "device": support.device_kind,
               "compute_capability": list(support.compute_capability),
               "cudnn": format_cudnn_version(support.cudnn_version),
               "cudnn_build": format_cudnn_version(support.cudnn_build_version)}
    print(json.dumps(results))
    sections = [("attention", bench_attention, (a.reps,)), ("attention_fidelity", attention_fidelity, ()),
                ("gemm", bench_gemms, (a.reps,))]
    if not a.skip_model:
        sections += [("ffn", bench_ffn, (a.reps,)), ("model", bench_model, (max(a.reps // 4, 3),))]
    for name, fn, args in sections:
        t0 = time.perf_counter()
        try:
            results[name] = fn(*args)
        except Exception as e:  # noqa: BLE001 - record and go on: one failing section must not hide the others
            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", flush=True)
        if a.json:  # after every section, so a run cut short keeps what it measured
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
    if a.json:
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
