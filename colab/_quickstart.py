"""The quickstart notebook: generate on one device, then with LP and ParaStep, against the exact clip.

Cells for ``colab/_build.py``.
"""

from _cells import INSTALL, INSTALL_MD, SETUP, SETUP_MD, SHOW, code, md

CELLS = [
    md(r"""
    # jaxvdm quickstart

    jaxvdm runs video diffusion transformers (the Wan2.1 architecture) in JAX, on one device or split over many
    with `jax.sharding` meshes. This notebook generates a clip with the small model that ships inside the
    package (16 frames of 32×32, trained on coloured shapes, no download), then generates the same clip with two
    parallel strategies that trade a little fidelity for less communication: **Latent Parallelism** (each device
    denoises an overlapping window of the video) and **ParaStep** (devices evaluate different denoising steps),
    and measures how far each is from the exact output.

    Runtime: any. On Colab choose *Runtime → Change runtime type → TPU* (v5e-1, v2-8) or a GPU; a CPU runtime
    works too (8 simulated devices).
    """),
    INSTALL_MD,
    INSTALL,
    SETUP_MD,
    SETUP,
    md(r"""
    ### Settings and a helper to show videos

    16 frames, 20 UniPC steps and classifier-free guidance 4 are the shipped model's defaults; fast mode uses
    8 frames and 3 steps.
    The prompt uses the words the shipped model knows (colours, shapes, sizes, motions, backgrounds); an
    unknown word is an error that lists the vocabulary.
    """),
    code(r"""
    STEPS = 3 if FAST else 20
    FRAMES = 8 if FAST else 16
    PROMPT = "a red circle moving left on a dark background"
    """),
    SHOW,
    md(r"""
    ## Generate on one device

    `jaxvdm.generate(prompt)` encodes the prompt, draws the initial noise from `seed` (the same noise on every
    mesh, so runs are comparable), denoises and decodes. It returns a `Video`: uint8 frames `[F, H, W, 3]`, the
    final latents, and the settings with timings. The first call compiles the denoising step (a few seconds);
    compiled programs are cached on disk, so a second run starts faster.
    """),
    code(r"""
    video = jaxvdm.generate(PROMPT, num_frames=FRAMES, steps=STEPS, seed=0, attention=ATTENTION)
    t = video.settings["timings"]
    print(f"{video.settings['strategy']}: frames {video.frames.shape}, compile {t['compile_s']:.1f} s, "
          f"denoise {t['denoise_s']:.2f} s, total {t['total_s']:.1f} s")
    show(("exact, one device", video))
    print("saved", video.save("quickstart.gif"))  # also .mp4 (H.264) and .npz (exact frames and latents)
    """),
    md(r"""
    ## A mesh over all devices

    A strategy runs on a `jax.sharding.Mesh` whose axes are named after the strategies that use them (`cfg`,
    `sp`, `fsdp`, `lp`, `step`, `stage`); `make_mesh(cfg=2, lp=4)` takes the first 8 devices. The layouts below
    adapt to the device count: with an even count of at least 4 the guidance pair (conditional and
    unconditional prediction) is split over a `cfg` axis of 2 and the strategy gets the rest (at most 4, so
    that each device keeps at least 2 patches of the 8×8-patch frame). With a single accelerator the
    comparison runs on the simulated CPU devices, with the exact reference recomputed there.
    """),
    code(r"""
    MESH_DEVICES = DEVICES if len(DEVICES) > 1 else jax.devices("cpu")
    MESH_ATTENTION = attention_for(MESH_DEVICES)
    n = len(MESH_DEVICES)
    if MESH_DEVICES[0] == DEVICES[0]:
        reference = video
    else:  # one accelerator: the exact reference on the devices the strategies use
        with jax.default_device(MESH_DEVICES[0]):
            reference = jaxvdm.generate(PROMPT, num_frames=FRAMES, steps=STEPS, seed=0, attention=MESH_ATTENTION)


    def layout(axis, cap):
        # (mesh axes, strategy) using up to `cap` devices on `axis`, plus a cfg axis of 2 when there are enough
        if n >= 4 and n % 2 == 0:
            return {"cfg": 2, axis: min(n // 2, cap)}, "+cfg"
        return {axis: min(n, cap)}, ""


    from jaxvdm.metrics import fidelity


    def report(label, v):
        f = fidelity(v, reference)
        lat = float(np.max(np.abs(v.latents - reference.latents)))
        print(f"{label}: PSNR {f['psnr']:.2f} dB, SSIM {f['ssim']:.4f}, max pixel error {f['max_abs']:.0f}/255, "
              f"max latent error {lat:.3g}; denoise {v.settings['timings']['denoise_s']:.2f} s")
        return f


    print(f"{n} devices: {[str(d) for d in MESH_DEVICES[:4]]}{' ...' if n > 4 else ''}; attention={MESH_ATTENTION!r}")
    """),
    md(r"""
    ## Latent Parallelism

    With `strategy="lp"` each of the K devices on the `lp` axis runs the whole model on its own window of the
    latent video, extended by `overlap` × its core on each side. The windows move between the time, height
    and width axes from step to step, the overlapping predictions are blended with position-dependent weights,
    and one all-reduce of the blended prediction per step is the only communication. It is an approximation:
    the fidelity numbers say how close it stays to the exact run (PSNR in dB against the exact frames; higher is
    closer, identical frames give infinity).
    """),
    code(r"""
    axes, extra = layout("lp", 4)
    mesh = make_mesh(axes, devices=MESH_DEVICES)
    lp_video = jaxvdm.generate(PROMPT, mesh=mesh, strategy="lp" + extra, num_frames=FRAMES, steps=STEPS, seed=0,
                               overlap=0.5, attention=MESH_ATTENTION)
    print(lp_video.settings["strategy"], lp_video.settings["strategy_options"])
    lp_fid = report("LP", lp_video)
    """),
    md(r"""
    ## ParaStep

    ParaStep keeps the exact model and splits the *steps*: after `warmup` exact steps, the N devices on the
    `step` axis each evaluate a different upcoming step, starting from a latent advanced by reusing the last
    model output, and exchange only their outputs (one all-gather per round of N steps). The sequential chain
    is `warmup + (steps − warmup) / N` model calls instead of `steps`.
    """),
    code(r"""
    WARMUP = 1 if FAST else 5
    axes, extra = layout("step", min(4, STEPS - WARMUP))
    mesh = make_mesh(axes, devices=MESH_DEVICES)
    ps_video = jaxvdm.generate(PROMPT, mesh=mesh, strategy="parastep" + extra, num_frames=FRAMES, steps=STEPS, seed=0,
                               warmup=WARMUP, attention=MESH_ATTENTION)
    t = ps_video.settings["timings"]
    print(ps_video.settings["strategy"], f"- sequential model calls {t['sequential_model_calls']} of {STEPS} steps")
    ps_fid = report("ParaStep", ps_video)
    """),
    md(r"""
    ## Side by side

    The exact clip and the two approximations. On the simulated CPU devices the times above say nothing about
    speed (the "devices" share the same cores); on TPU/GPU, see `strategies.ipynb` and `jaxvdm bench`.
    `video.save("clip.mp4")` writes any of them to disk.
    """),
    code(r"""
    show(("exact", reference), (f"LP ({lp_fid['psnr']:.1f} dB)", lp_video),
         (f"ParaStep ({ps_fid['psnr']:.1f} dB)", ps_video))
    print("video shape", video.frames.shape)
    """),
]
