"""Times the GPU attention kernels jaxvdm can use at Wan's shapes, and checks them against each other.

    python benchmarks/attention_kernels.py [--tokens 32760] [--heads 12] [--batch 2]

Kernels: cuDNN flash attention (``jax.nn.dot_product_attention(implementation="cudnn")``) and JAX's
Pallas Mosaic GPU (Hopper) attention with several tiles. The Mosaic kernel neither masks keys nor
scales scores, so the sequence is padded to a tile multiple with zero keys and values, ``q`` is
pre-scaled (inputs go in as float16, which its buffers are), and the padded keys' share of the softmax is removed exactly with the kernel's log-sum-exp:
``out = out_padded / (1 - n_pad * exp(-lse))`` (a zero key scores exactly 0).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp


def _time(fn, *args, reps=10):
    out = fn(*args)
    jax.block_until_ready(out)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def mosaic_attention(q, k, v, config, tile=128):
    from jax.experimental.pallas.ops.gpu import attention_mgpu as mg

    b, s, h, d = q.shape
    s_pad = -(-s // (2 * tile)) * (2 * tile)
    n_pad = s_pad - s
    f16 = jnp.float16  # the kernel's shared-memory buffers are float16
    qs = (q.astype(jnp.float32) / math.sqrt(d)).astype(f16)
    pad = ((0, 0), (0, n_pad), (0, 0), (0, 0))
    qs, kp, vp = (jnp.pad(a, pad) for a in (qs, k.astype(f16), v.astype(f16)))
    out, (lse2,) = mg.attention(qs, kp, vp, config, save_residuals=True)
    out = out[:, :s].astype(jnp.float32)
    if n_pad:
        lse = jnp.swapaxes(lse2[:, :, :s], 1, 2)[..., None] * math.log(2.0)  # [B, S, H, 1], natural log
        out = out / (1.0 - n_pad * jnp.exp(-lse))
    return out.astype(q.dtype)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=32760)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    a = p.parse_args()
    b, s, h, d = a.batch, a.tokens, a.heads, a.head_dim
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(kk, (b, s, h, d), jnp.float32).astype(jnp.bfloat16) for kk in ks)
    flops = 4 * b * h * s * s * d
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}; attention B={b} S={s} H={h} D={d}, "
          f"{flops / 1e12:.1f} TFLOP per call")
    cudnn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))
    t, ref = _time(cudnn, q, k, v)
    print(f"| cudnn | {t * 1e3:.2f} ms | {flops / t / 1e12:.0f} TFLOP/s | - |")
    from jax.experimental.pallas.ops.gpu import attention_mgpu as mg

    for bq, bkv, steps in ((64, 64, 2), (64, 128, 2), (128, 64, 2), (128, 128, 2), (64, 128, 4), (128, 128, 4)):
        try:
            cfg = mg.TuningConfig(block_q=bq, block_kv=bkv, max_concurrent_steps=steps)
            fn = jax.jit(lambda q, k, v, cfg=cfg, bq=bq: mosaic_attention(q, k, v, cfg, tile=max(bq, bkv)))
            t, out = _time(fn, q, k, v)
            err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32))))
            print(f"| mosaic bq={bq} bkv={bkv} steps={steps} | {t * 1e3:.2f} ms | {flops / t / 1e12:.0f} TFLOP/s "
                  f"| max diff vs cudnn {err:.3g} |")
        except Exception as e:  # noqa: BLE001
            print(f"| mosaic bq={bq} bkv={bkv} steps={steps} | failed: {type(e).__name__}: {str(e)[:300]} |")


if __name__ == "__main__":
    main()
