"""Times one denoising step of diffusers' ``WanTransformer3DModel`` (the reference for ``jaxvdm bench --torch``).

    python benchmarks/diffusers_step.py --preset wan2.1-t2v-1.3b --frames 81 --size 480x832 --json out.json
    python benchmarks/diffusers_step.py --config-json '{"num_layers": 2, ...}' --latent 4,5,8,8 --text-len 16

The step is the transformer forward on the classifier-free-guidance batch: ``hidden_states
[batch=2, C, T, H, W]``, ``encoder_hidden_states [2, text_len, text_dim]``, one timestep per row, random
weights in ``--dtype`` (bf16 by default), diffusers' default attention backend (PyTorch
``scaled_dot_product_attention``), under ``torch.inference_mode``. Variants: eager and
``torch.compile`` (``--compile off,on``). Each variant: ``--warmup`` untimed calls (the first one's time
is reported as ``first_call_s``; for torch.compile that is the compile time), then ``--repeats`` timed
calls with a device synchronisation after each; the median is the step time. Peak memory is
``torch.cuda.max_memory_allocated`` per variant (None on CPU).

(jaxvdm's step also applies guidance and the scheduler update: two elementwise passes over the
latent, negligible next to the forward.) Prints one JSON object and writes it to ``--json``.
This script imports only torch and diffusers (no JAX), so it can run before JAX takes the GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import tomllib
from pathlib import Path

CONFIG_KEYS = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
               "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps", "rope_max_seq_len")


def preset(name: str) -> dict:
    path = Path(__file__).resolve().parent.parent / "configs" / f"{name}.toml"
    if not path.exists():
        raise SystemExit(f"no preset {name!r} at {path}")
    return tomllib.loads(path.read_text())


def build_model(config: dict, dtype, device):
    import torch
    from diffusers import WanTransformer3DModel

    kwargs = {k: (tuple(v) if k == "patch_size" else v) for k, v in config.items() if k in CONFIG_KEYS}
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)  # initialise in the target dtype (a 14B model in fp32 would not fit)
        with torch.device(device):
            model = WanTransformer3DModel(**kwargs)
    except Exception:  # some initialisers refuse half types on some devices: initialise in fp32, cast
        torch.set_default_dtype(old)
        with torch.device(device):
            model = WanTransformer3DModel(**kwargs)
    finally:
        torch.set_default_dtype(old)
    return model.to(device=device, dtype=dtype).eval()


def time_variant(name, model, inputs, *, compile_: bool, warmup: int, repeats: int, device) -> dict:
    import torch

    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    fn = model
    if compile_:
        fn = torch.compile(model)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    out = {"name": name, "compile": compile_}
    try:
        with torch.inference_mode():
            sync()
            t0 = time.perf_counter()
            fn(**inputs, return_dict=False)
            sync()
            out["first_call_s"] = time.perf_counter() - t0
            for _ in range(max(0, warmup - 1)):
                fn(**inputs, return_dict=False)
            sync()
            times = []
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                fn(**inputs, return_dict=False)
                sync()
                times.append(time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001  (torch.compile may fail where eager works)
        out.update(status="error", reason=f"{type(e).__name__}: {str(e)[:1500]}")
        return out
    out.update(status="ok", time_s=statistics.median(times), times_s=times,
               compile_s=out["first_call_s"] if compile_ else None,
               peak_memory_bytes=int(torch.cuda.max_memory_allocated()) if cuda else None)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=None, help="a jaxvdm preset name (configs/NAME.toml)")
    p.add_argument("--config-json", default=None, help="WanTransformer3DModel config as JSON (instead of --preset)")
    p.add_argument("--latent", default=None, help="C,T,H,W of the latent (instead of --frames/--size)")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--size", default=None, help="HEIGHTxWIDTH in pixels")
    p.add_argument("--batch", type=int, default=2, help="2 = the CFG pair (default)")
    p.add_argument("--text-len", type=int, default=None, help="default: the preset's (512 for Wan)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    p.add_argument("--compile", default="off,on", help="off, on or off,on (default)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    result: dict = {"status": "error", "framework": "diffusers", "argv": sys.argv}
    try:
        import torch

        import diffusers
    except Exception as e:  # noqa: BLE001
        result["reason"] = f"cannot import torch/diffusers: {type(e).__name__}: {e}"
        return _emit(result, args.json, 1)

    if args.config_json:
        config = json.loads(args.config_json)
        pipe = {}
    elif args.preset:
        pr = preset(args.preset)
        config, pipe = pr["transformer"], pr.get("pipeline", {})
    else:
        p.error("give --preset or --config-json")
    if args.latent:
        c, t, h, w = (int(v) for v in args.latent.split(","))
    else:
        frames = int(args.frames or pipe.get("num_frames", 81))
        if args.size:
            hh, ww = (int(v) for v in args.size.lower().split("x"))
        else:
            hh, ww = int(pipe.get("height", 480)), int(pipe.get("width", 832))
        st, sh, sw = pipe.get("vae_stride", (4, 8, 8))
        c, t, h, w = int(config.get("in_channels", 16)), (frames - 1) // st + 1, hh // sh, ww // sw
    text_len = int(args.text_len or pipe.get("max_text_len", 512))
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    result.update(torch=torch.__version__, diffusers=diffusers.__version__, python=platform.python_version(),
                  device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else
                  platform.processor() or "cpu", config=config, latent=[args.batch, c, t, h, w], text_len=text_len,
                  dtype=args.dtype, attention="diffusers default backend (torch scaled_dot_product_attention)")
    try:
        t0 = time.perf_counter()
        model = build_model(config, dtype, device)
        result["init_s"] = time.perf_counter() - t0
        result["parameters"] = int(sum(p.numel() for p in model.parameters()))
        g = torch.Generator(device="cpu").manual_seed(0)
        inputs = {
            "hidden_states": torch.randn((args.batch, c, t, h, w), generator=g).to(device, dtype),
            "timestep": torch.full((args.batch,), 500, dtype=torch.long, device=device),
            "encoder_hidden_states": torch.randn((args.batch, text_len, int(config["text_dim"])), generator=g).to(
                device, dtype),
        }
        variants = []
        for v in [s.strip() for s in args.compile.split(",") if s.strip()]:
            if v not in ("off", "on"):
                p.error(f"--compile takes off, on or off,on; got {args.compile!r}")
            variants.append(time_variant("torch.compile" if v == "on" else "eager", model, inputs, compile_=v == "on",
                                         warmup=args.warmup, repeats=args.repeats, device=device))
            result["variants"] = variants
            if args.json:  # after every variant: a caller that times out keeps the finished ones
                Path(args.json).write_text(json.dumps(result, indent=1))
        result["variants"] = variants
        result["status"] = "ok" if any(v.get("status") == "ok" for v in variants) else "error"
        if result["status"] != "ok":
            result["reason"] = "; ".join(v.get("reason", "") for v in variants)
    except Exception as e:  # noqa: BLE001
        result["reason"] = f"{type(e).__name__}: {str(e)[:2000]}"
        return _emit(result, args.json, 1)
    return _emit(result, args.json, 0 if result["status"] == "ok" else 1)


def _emit(result: dict, path: str | None, code: int) -> int:
    text = json.dumps(result, indent=1)
    print(text)
    if path:
        Path(path).write_text(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
