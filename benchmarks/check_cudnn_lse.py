"""Checks cuDNN attention with log-sum-exp (Ring attention's GPU kernel) against the float32 reference.

    python benchmarks/check_cudnn_lse.py      # on a GPU; exits 1 if an error is above its bound

Cases: bf16 inputs, with and without key padding, one chunk of padding only (kv_len = 0, which Ring must
ignore), and a ring merge of two chunks against attention over both. Prints the max errors.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

from jaxvdm.models.wan.attention import attention_with_lse, cudnn_attention_with_lse


def main() -> int:
    ok = True
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    b, s, h, d = 2, 1024, 12, 128
    q, k, v = (jax.random.normal(kk, (b, s, h, d), jnp.float32).astype(jnp.bfloat16) for kk in keys)
    for kv_len in (None, 700):
        o, lse = jax.jit(cudnn_attention_with_lse)(q, k, v, kv_len)
        o_ref, lse_ref = attention_with_lse(*(a.astype(jnp.float32) for a in (q, k, v)), kv_len)
        e_o = float(jnp.max(jnp.abs(o - o_ref)))
        e_l = float(jnp.max(jnp.abs(lse - lse_ref)))
        good = e_o < 2e-2 and e_l < 1e-3
        ok &= good
        print(f"kv_len={kv_len}: max |out - ref| {e_o:.3g}, max |lse - ref| {e_l:.3g} {'ok' if good else 'FAIL'}")
    # the merge Ring does, over two halves of the keys, against one attention over all of them
    half = s // 2
    parts = [jax.jit(cudnn_attention_with_lse)(q, k[:, i:i + half], v[:, i:i + half]) for i in (0, half)]
    (o1, l1), (o2, l2) = parts
    m = jnp.maximum(l1, l2)
    w1, w2 = jnp.exp(l1 - m), jnp.exp(l2 - m)
    t = lambda w: jnp.swapaxes(w / (w1 + w2), 1, 2)[..., None]  # noqa: E731
    merged = o1 * t(w1) + o2 * t(w2)
    full, _ = attention_with_lse(*(a.astype(jnp.float32) for a in (q, k, v)))
    e_m = float(jnp.max(jnp.abs(merged - full)))
    ok &= e_m < 2e-2
    print(f"two-chunk merge vs one attention: max error {e_m:.3g} {'ok' if e_m < 2e-2 else 'FAIL'}")
    print("cuDNN attention with LSE:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
