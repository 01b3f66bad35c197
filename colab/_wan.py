"""The Wan notebook: model sizes, memory per device, a recommended layout, a checkpoint loaded and run.

Cells for ``colab/_build.py``.
"""

from _cells import INSTALL, INSTALL_MD, SETUP, SETUP_MD, SHOW, code, md

CELLS = [
    md(r"""
    # Wan2.1 checkpoints

    jaxvdm loads the diffusers-format Wan2.1 text-to-video folders (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`,
    `Wan-AI/Wan2.1-T2V-14B-Diffusers`): the DiT, the causal 3-D VAE, the UMT5-XXL text encoder, the tokenizer
    and the scheduler config. This notebook counts what each part weighs, estimates the memory a device needs
    for the 1.3B and 14B models in bfloat16, recommends a strategy and mesh for common TPU and GPU types,
    then downloads the 1.3B checkpoint and generates a video with the layout recommended for this runtime.

    In fast mode (and on a CPU-only runtime, where the real model would take hours) the download is skipped:
    the notebook writes a tiny Wan2.1 folder with random weights in the same format and runs the same code
    on it.
    """),
    INSTALL_MD,
    INSTALL,
    code(r"""
    # the Wan pipeline also needs the tokenizer libraries and the Hugging Face Hub client (Colab has them)
    missing = [m for m in ("transformers", "sentencepiece", "huggingface_hub") if importlib.util.find_spec(m) is None]
    if missing:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *missing])
    print("tokenizer and hub libraries:", "installed now: " + ", ".join(missing) if missing else "present")
    """),
    SETUP_MD,
    SETUP,
    md(r"""
    ## What the models weigh

    Parameter counts come from the tensor lists jaxvdm checks checkpoints against (the presets' DiT configs,
    the Wan2.1 VAE, and Wan's text encoder, google/umt5-xxl), not from a download. The DiT runs every step;
    the text encoder runs once per prompt; the VAE once per video.
    """),
    code(r"""
    import jax.numpy as jnp
    from flax import nnx

    from jaxvdm.models.wan.transformer import abstract_transformer, count_parameters
    from jaxvdm.models.wan.text_encoder import UMT5EncoderConfig, text_encoder_tensor_shapes
    from jaxvdm.models.wan.vae import WanVAEConfig, diffusers_tensor_shapes as vae_tensor_shapes
    from jaxvdm.models.presets import wan_config

    GiB = 2**30
    BF16 = 2  # bytes per parameter
    UMT5_XXL = UMT5EncoderConfig(vocab_size=256384, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24)
    text_params = sum(math.prod(s) for s in text_encoder_tensor_shapes(UMT5_XXL).values()) + 256384 * 4096  # + embedding
    vae_params = sum(math.prod(s) for s in vae_tensor_shapes(WanVAEConfig()).values())
    MODELS = {}
    for preset in ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b"):
        abstract = abstract_transformer(wan_config(preset), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
        MODELS[preset] = dict(config=abstract.config, params=count_parameters(abstract),
                              state=nnx.state(abstract, nnx.Param))  # shapes only: nothing is allocated
    print(f"{'part':<24}{'parameters':>16}{'bf16':>12}")
    for name, m in MODELS.items():
        print(f"{name + ' DiT':<24}{m['params']:>16,d}{m['params'] * BF16 / GiB:>10.2f} GiB")
    print(f"{'UMT5-XXL text encoder':<24}{text_params:>16,d}{text_params * BF16 / GiB:>10.2f} GiB")
    print(f"{'Wan2.1 VAE':<24}{vae_params:>16,d}{vae_params * BF16 / GiB:>10.2f} GiB")
    """),
    md(r"""
    ## Memory per device: an estimate

    What one device holds during a denoising step, in bfloat16, with classifier-free guidance (a batch of 2
    unless `cfg` splits it), for each model at its default size (1.3B: 81 frames of 480×832, 32,760 tokens;
    14B: 81 frames of 720×1280, 75,600 tokens) and the 14B also at 480×832:

    * **weights**: replicated, or with `fsdp` the block weights split over the axis
      (`jaxvdm.sharding.fsdp.per_device_bytes`, exact) plus one gathered layer;
    * **activations**: the largest live set inside one block, about `batch × tokens × (6·D + 2·F)` values for
      the device's share of the tokens (`sp` and `fsdp` split them), plus the keys and values `fsdp` gathers;
    * **attention scratch**: none with a fused flash kernel (cuDNN on Ampere and newer GPUs, the Pallas splash
      kernel on TPUs, which is what `ATTENTION` picks there). With XLA's chunked attention (older GPUs, or
      `attention="xla_chunked"`) it is the float32 scores of one chunk of 1,024 queries against every key, for
      the device's heads (Ulysses splits the heads): for the 14B at 720p that is 12 GiB per sequence, more than
      a 16 GiB chip can spare.

    These are estimates from shapes, not measurements: allow ±30 % and check a real run with
    `jax.devices()[0].memory_stats()`. The text encoder (and the VAE, for decoding) sits on the first device
    unless it is kept on the host (below).
    """),
    code(r"""
    from jaxvdm.sharding import fsdp as fsdp_lib

    SIZES = {  # label: (preset, frames, height, width)
        "1.3B 480p": ("wan2.1-t2v-1.3b", 81, 480, 832),
        "14B 720p": ("wan2.1-t2v-14b", 81, 720, 1280),
        "14B 480p": ("wan2.1-t2v-14b", 81, 480, 832),
    }
    CHUNK = 1024  # queries per chunk of jaxvdm's XLA attention


    def tokens(frames, height, width):
        return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)  # VAE stride 4x8x8, patch 1x2x2


    def dit_memory(size, axes, flash):
        # (weights, activations + attention scratch) in bytes on one device, for mesh axes {cfg, sp, fsdp}
        preset, frames, height, width = SIZES[size]
        m = MODELS[preset]
        cfg = m["config"]
        cfg_n, sp, fs = axes.get("cfg", 1), axes.get("sp", 1), axes.get("fsdp", 1)
        sharded, replicated = fsdp_lib.per_device_bytes(m["state"], fs)
        weights = sharded + replicated + (sharded * fs / cfg.num_layers if fs > 1 else 0)
        b, s = 2 // cfg_n, tokens(frames, height, width)
        s_local = math.ceil(s / (sp * fs))
        acts = BF16 * b * s_local * (6 * cfg.hidden_size + 2 * cfg.ffn_dim)
        if fs > 1:
            acts += BF16 * 2 * b * s * cfg.hidden_size  # keys and values gathered over fsdp
        if not flash:
            heads = math.ceil(cfg.num_attention_heads / sp)
            acts += 4 * b * heads * min(CHUNK, s_local * sp) * s
        return weights, acts


    def mesh_name(axes):
        return ",".join(f"{k}={v}" for k, v in axes.items()) or "one device"


    print(f"{'model':<11}{'tokens':>8}  {'mesh':<18}{'weights':>9}{'act (flash)':>13}{'act (chunked)':>15}   GiB / device")
    for size, (preset, f, h, w) in SIZES.items():
        for axes in ({}, {"cfg": 2}, {"cfg": 2, "sp": 4}, {"cfg": 2, "fsdp": 4}, {"fsdp": 4, "sp": 2}, {"fsdp": 8}):
            wt, a_flash = dit_memory(size, axes, True)
            _, a_chunk = dit_memory(size, axes, False)
            print(f"{size:<11}{tokens(f, h, w):>8,d}  {mesh_name(axes):<18}{wt / GiB:>9.2f}{a_flash / GiB:>13.2f}{a_chunk / GiB:>15.2f}")
    """),
    md(r"""
    ## Which strategy and mesh

    For each device type, the first exact layout whose estimate fits in 90 % of a device's memory, in order of
    communication: replicated weights before sharded ones (`fsdp` gathers every layer's weights every step),
    and with each, the guidance pair over `cfg` before Ulysses over `sp`. "text on device" says whether the
    UMT5-XXL encoder (10.6 GiB in bfloat16) also fits on the first device; where it does not, keep it on the
    host CPU (the loading cell below does so): it runs once per prompt.

    Beyond the exact layouts: `lp` (Latent Parallelism, composable with `fsdp` and `cfg`) cuts activations and
    communication further, each device holding a window of the video, at the fidelity cost measured in
    `strategies.ipynb`; `parastep` adds step-level parallelism on top. TPU v2-8, v3-8 and v5e-8 show 8 JAX
    devices; a v4-8 shows 4 (the two TensorCores of a chip act as one device).
    """),
    code(r"""
    HARDWARE = [  # name, JAX devices, GiB per device, fused flash attention (splash on TPU, cuDNN on GPU)
        ("TPU v5e-1", 1, 16, True),
        ("TPU v2-8", 8, 8, True),
        ("TPU v3-8", 8, 16, True),
        ("TPU v4-8", 4, 32, True),
        ("TPU v5e-8", 8, 16, True),
        ("GPU T4 16 GB", 1, 14.7, False),  # no bf16 flash kernel before Ampere: attention="xla_chunked"
        ("GPU L4 24 GB", 1, 22.0, True),
        ("GPU A100 40 GB", 1, 39.4, True),
        ("GPU A100/H100 80 GB", 1, 79.1, True),
        ("8 x H100 80 GB", 8, 79.1, True),
    ]
    TEXT_BYTES = (text_params + vae_params) * BF16


    def layouts(n):
        # exact layouts over n devices: least weight sharding first, then cfg before sequence parallelism
        out = []
        for fs in (d for d in range(1, n + 1) if n % d == 0):
            for c in (2, 1):
                if (n // fs) % c == 0:
                    axes = {a: v for a, v in (("cfg", c), ("fsdp", fs), ("sp", n // fs // c)) if v > 1}
                    names = [s for s, a in (("cfg", "cfg"), ("ulysses", "sp"), ("fsdp", "fsdp")) if a in axes]
                    out.append((axes, "+".join(names) or "single"))
        return out


    def recommend(size, n, gib, flash):
        for axes, strategy in layouts(n):
            w, a = dit_memory(size, axes, flash)
            if w + a <= 0.9 * gib * GiB:
                return axes, strategy, (w + a) / GiB
        return None, None, None


    lines = ["| hardware | devices × GiB | model | strategy | mesh | est. GiB / device | text on device |",
             "|---|---|---|---|---|---|---|"]
    for hw, n, gib, flash in HARDWARE:
        for size in SIZES:
            axes, strategy, est = recommend(size, n, gib, flash)
            if axes is None:
                lines.append(f"| {hw} | {n} × {gib:g} | {size} | does not fit | | | |")
                continue
            text_ok = est + TEXT_BYTES / GiB <= 0.9 * gib
            lines.append(f"| {hw} | {n} × {gib:g} | {size} | `{strategy}` | {mesh_name(axes) if axes else '-'} | "
                         f"{est:.1f} | {'yes' if text_ok else 'no: host'} |")
    from IPython.display import Markdown, display

    display(Markdown("\n".join(lines)))
    print("\n".join(lines))
    """),
    md(r"""
    ## Get a checkpoint

    With an accelerator (and outside fast mode) this downloads `Wan-AI/Wan2.1-T2V-1.3B-Diffusers` (about
    17 GB, mostly the text encoder) with `huggingface_hub.snapshot_download`; loading it needs about 25 GB of
    host memory (Colab's high-RAM and TPU runtimes have it). Set `CHECKPOINT` to the 14B repository on a
    machine the table above says fits it. Otherwise the cell writes a tiny folder in exactly the diffusers
    layout (`model_index.json`, `transformer/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`) with random
    weights and a small sentencepiece tokenizer, so the loading and generation below run the same code.
    """),
    code(r"""
    import dataclasses, json

    CHECKPOINT = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    USE_REAL = not FAST and BACKEND != "cpu"


    def write_tiny_wan(root):
        # a random-weight Wan2.1 folder in the diffusers layout, from the tensor lists jaxvdm checks against
        from jaxvdm.models.checkpoint import write_safetensors
        from jaxvdm.models.wan.transformer import WanConfig
        from jaxvdm.models.wan.transformer import diffusers_tensor_shapes as dit_tensor_shapes

        rng = np.random.default_rng(0)

        def random_tensors(shapes):
            out = {}
            for name, shape in shapes.items():
                if "norm" in name or name.endswith("gamma"):
                    out[name] = np.zeros(shape, np.float32) if name.endswith("bias") else np.ones(shape, np.float32)
                elif name.endswith("bias"):
                    out[name] = np.zeros(shape, np.float32)
                else:
                    out[name] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
            return out

        def component(sub, config, tensors, weights):
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / "config.json").write_text(json.dumps(config, indent=1))
            write_safetensors(root / sub / weights, tensors)

        text = dict(model_type="umt5", vocab_size=64, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                    feed_forward_proj="gated-gelu", architectures=["UMT5EncoderModel"])
        shapes = dict(text_encoder_tensor_shapes(UMT5EncoderConfig.from_dict(text)), **{"shared.weight": (64, 32)})
        component("text_encoder", text, random_tensors(shapes), "model.safetensors")
        dit = WanConfig(num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2)
        component("transformer", {"_class_name": "WanTransformer3DModel", **dit.to_dict()},
                  random_tensors(dit_tensor_shapes(dit)), "diffusion_pytorch_model.safetensors")
        vae = WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1)
        vae_json = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(vae).items()}
        component("vae", {"_class_name": "AutoencoderKLWan", **vae_json}, random_tensors(vae_tensor_shapes(vae)),
                  "diffusion_pytorch_model.safetensors")
        (root / "scheduler").mkdir(exist_ok=True)
        (root / "scheduler" / "scheduler_config.json").write_text(
            json.dumps({"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0, "prediction_type": "flow_prediction",
                        "use_flow_sigmas": True}))
        # a T5-style sentencepiece tokenizer (pad 0, </s> 1, <unk> 2) trained on a few sentences
        import sentencepiece as spm
        from transformers import T5Tokenizer

        sentences = ["a cat surfing a wave at sunset", "a red fox running through the snow in the mountains",
                     "bright tones, overexposed, static, blurred details", "a small boat on a calm lake at dawn"]
        with tempfile.TemporaryDirectory(prefix="spm-") as spm_dir:  # removed once the tokenizer is saved
            spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences * 8), model_prefix=f"{spm_dir}/spiece",
                                           vocab_size=48, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
                                           bos_id=-1, character_coverage=1.0, minloglevel=2)
            T5Tokenizer.from_pretrained(spm_dir, local_files_only=True).save_pretrained(root / "tokenizer")
        (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
        return root


    if USE_REAL:
        from huggingface_hub import snapshot_download

        CKPT_DIR = Path(snapshot_download(CHECKPOINT, local_dir=CHECKPOINT.split("/")[-1]))
    else:  # a temporary folder, removed by the last cell (or when the kernel exits)
        import atexit, shutil

        TINY_ROOT = Path(tempfile.mkdtemp(prefix="tiny-wan-"))
        atexit.register(shutil.rmtree, TINY_ROOT, ignore_errors=True)
        CKPT_DIR = write_tiny_wan(TINY_ROOT / "Wan2.1-T2V-tiny-random")
    for sub in sorted(p for p in CKPT_DIR.iterdir() if p.is_dir() and not p.name.startswith(".")):
        mib = sum(f.stat().st_size for f in sub.rglob("*") if f.is_file()) / 2**20
        print(f"{sub.name:<14}{mib:>10.1f} MiB")
    """),
    md(r"""
    ## Load and generate

    `jaxvdm.models.wan.pipeline.load_pipeline(folder, dtype=jnp.bfloat16)` reads every component strictly (a missing, unexpected
    or mis-shaped tensor is an error naming it). The mesh is the one the table recommends for this runtime's
    devices; where the text encoder does not fit next to the DiT, the pipeline is loaded under
    `jax.default_device(<host CPU>)`: the weights stay in host memory, the text encoder runs there, and
    `generate` places the DiT on the mesh (a mesh even for one device, so the weights move to it). The real
    run uses the model's defaults (81 frames at 480×832, 50 steps: minutes on one TPU v5e or A100); reduce
    `num_frames` (4k+1) or `steps` for a quicker look.
    """),
    code(r"""
    from jaxvdm.models.wan.pipeline import load_pipeline

    n = len(DEVICES)
    gib = (DEVICES[0].memory_stats() or {}).get("bytes_limit", 0) / GiB if BACKEND != "cpu" else float("inf")
    model_size = "14B 720p" if "14B" in CHECKPOINT else "1.3B 480p"
    if BACKEND == "cpu":
        AXES, STRATEGY = layouts(n)[0]  # any layout fits in host memory
        TEXT_ON_HOST = False
    else:
        AXES, STRATEGY, est = recommend(model_size, n, gib, flash=ATTENTION in ("splash", "auto"))
        if AXES is None:
            raise ValueError(f"{CHECKPOINT} does not fit on {n} x {gib:.0f} GiB by the estimate above")
        TEXT_ON_HOST = est + TEXT_BYTES / GiB > 0.9 * gib
    mesh = make_mesh(AXES or {"sp": 1}, devices=DEVICES)  # a 1-device mesh places the weights on the accelerator
    print(f"strategy {STRATEGY} on {dict(mesh.shape)}; text encoder on {'the host' if TEXT_ON_HOST else 'the device'}")

    HOST = jax.devices("cpu")[0] if TEXT_ON_HOST else DEVICES[0]
    with jax.default_device(HOST):
        t0 = time.perf_counter()
        pipe = load_pipeline(CKPT_DIR, dtype=jnp.bfloat16 if USE_REAL else jnp.float32)
        print(f"loaded {pipe.name} in {time.perf_counter() - t0:.1f} s; defaults {pipe.defaults | {'negative_prompt': '...'}}")
        quick = {} if USE_REAL else dict(num_frames=5, height=32, width=32, steps=3)  # fast mode: a tiny clip
        video = jaxvdm.generate("a cat surfing a wave at sunset", model=pipe, mesh=mesh, strategy=STRATEGY, seed=0,
                                attention=ATTENTION, **quick)
    t = video.settings["timings"]
    print(f"{video.settings['strategy']}: text {t['text_s']:.1f} s, compile {t['compile_s']:.1f} s, "
          f"denoise {t['denoise_s']:.1f} s, decode {t['decode_s']:.1f} s")
    if BACKEND != "cpu":
        peak = max((d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in DEVICES)
        print(f"peak device memory {peak / GiB:.2f} GiB")
    """),
    md(r"""
    ## The video

    With the real checkpoint this is Wan2.1's output; with the tiny random model it is structured noise (the
    point there is the shapes and the loading path). `video.save("wan.mp4")` writes it to disk.
    """),
    SHOW,
    code(r"""
    show((video.settings["prompt"], video))
    print("saved", video.save("wan.mp4"))
    print("video", video.frames.shape, "latents", video.latents.shape)
    """),
    md(r"""
    ## Clean up

    The tiny random-weight folder was temporary: this removes it (a downloaded checkpoint stays where
    `snapshot_download` put it).
    """),
    code(r"""
    if not USE_REAL:
        shutil.rmtree(TINY_ROOT)
        print("removed the tiny checkpoint folder:", not TINY_ROOT.exists())
    else:
        print("checkpoint kept in", CKPT_DIR.name)
    """),
]
