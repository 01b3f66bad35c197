"""The PyTorch reference of ``jaxvdm bench --torch``: diffusers' ``WanTransformer3DModel`` timed on the same
step (``benchmarks/diffusers_step.py`` in a subprocess, run before JAX takes the accelerator)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["run_torch"]


def _script(args) -> Path:
    if args.torch_script:
        return Path(args.torch_script)
    return Path(__file__).resolve().parents[2] / "benchmarks" / "diffusers_step.py"


def run_torch(args, spec, shape, timeout: float | None = None) -> dict:
    """Runs the diffusers step script for ``spec`` at latent ``shape``; returns its JSON (or an error)."""
    script = _script(args)
    if not script.exists():
        return {"status": "error", "reason": f"{script} not found (pass --torch-script)"}
    cfg = spec.config
    config = {"patch_size": list(cfg.patch_size), "num_attention_heads": cfg.num_attention_heads,
              "attention_head_dim": cfg.attention_head_dim, "in_channels": cfg.in_channels,
              "out_channels": cfg.out_channels, "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim,
              "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers, "cross_attn_norm": cfg.cross_attn_norm,
              "qk_norm": cfg.qk_norm, "eps": cfg.eps, "rope_max_seq_len": cfg.rope_max_seq_len}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torch.json"
        cmd = [sys.executable, str(script), "--config-json", json.dumps(config),
               "--latent", ",".join(str(v) for v in shape[1:]), "--batch", "2", "--text-len", str(spec.text_len),
               "--dtype", args.dtype, "--compile", args.torch_compile, "--warmup", str(args.warmup),
               "--repeats", str(args.repeats), "--json", str(out)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or args.unit_timeout)
        except subprocess.TimeoutExpired as e:
            res = json.loads(out.read_text()) if out.exists() else {"variants": []}  # variants finished in time
            res.update(status="ok" if any(v.get("status") == "ok" for v in res.get("variants", [])) else "error",
                       reason=f"timed out after {e.timeout:.0f} s (--unit-timeout); later variants missing",
                       command=shlex.join(cmd))
            return res
        if out.exists():
            res = json.loads(out.read_text())
            res.setdefault("status", "ok")
            if p.returncode:
                res["stderr_tail"] = p.stderr[-2000:]
            return res
        return {"status": "error", "reason": f"exit {p.returncode}: {(p.stderr or p.stdout)[-2000:]}",
                "command": shlex.join(cmd)}
