"""The strategies notebook: every strategy on one mesh of all devices, fidelity, communication, time.

Cells for ``colab/_build.py``.
"""

from _cells import INSTALL, INSTALL_MD, MESH_DEVICES, SETUP, SETUP_MD, SHOW, code, md

CELLS = [
    md(r"""
    # Every strategy, side by side

    jaxvdm has exact strategies, which reproduce the single-device output up to float rounding (`cfg`,
    `ulysses`, `ring`, `fsdp` and their compositions), and approximate ones, which change the algorithm to
    communicate less (`lp`, `parastep`, `dualparal`). This notebook runs each on the shipped model from the same
    seed and measures three things: **fidelity** to the exact single-device output (largest latent difference,
    PSNR and SSIM of the frames), **communication** (bytes each device sends per denoising step, read from the
    compiled programs' HLO), and **wall time**.
    """),
    INSTALL_MD,
    INSTALL,
    SETUP_MD,
    SETUP,
    md(r"""
    ### Devices and settings

    With one accelerator there is no mesh to compare, so the strategies run on the simulated CPU devices.
    Matrix products run at full float32 precision here (`jax_default_matmul_precision="highest"`; TPUs
    otherwise use bfloat16 passes), so that the exact strategies differ from the single-device run by float
    rounding only.
    """),
    MESH_DEVICES,
    code(r"""
    jax.config.update("jax_default_matmul_precision", "highest")
    STEPS = 3 if FAST else 20
    FRAMES = 8 if FAST else 16
    WARMUP = 1 if FAST else 5  # ParaStep's exact warm-up steps
    PROMPT = "a blue square moving right on a light background"
    """),
    SHOW,
    md(r"""
    ## The configurations

    Each row is a strategy and the mesh it runs on, built from all `N` devices of this runtime (a TPU v5e-8 or
    v2-8: 8 chips; a v4-8: 4; a CPU runtime or a single chip: the 8 simulated CPU devices): Ulysses, Ring,
    FSDP and LP put every device on their axis (`sp=N`, `fsdp=N`, `lp=N`), `cfg+ulysses` splits them into the
    guidance pair and a sequence axis (`cfg=2 × sp=N/2`), and ParaStep takes as many as there are steps after
    its warm-up (at most `N`). Ulysses pads the model's 3 heads to a multiple of `sp`. LP's overlap is half a
    window core, or one patch where a core is one patch of the 8 × 8-patch frame (`lp=8`). DualParal splits the
    clip into a context and blocks of frames (4 + 3 × 4 by default, 2 + 3 × 2 in fast mode) and runs them
    through a pipeline of 2 stages: a pipeline of n stages needs at least n + 1 blocks to fill. `exact` is what
    the strategy registry declares: whether a strategy must match the single-device run.
    """),
    code(r"""
    from jaxvdm.sharding.registry import resolve

    CONFIGS = [  # (strategy, mesh axes, options)
        ("single", {}, {}),
        ("cfg", {"cfg": 2}, {}),
        ("ulysses", {"sp": N}, {}),
        ("ring", {"sp": N}, {}),
        ("fsdp", {"fsdp": N}, {}),
        ("cfg+ulysses", {"cfg": 2, "sp": N // 2}, {}),
        ("lp", {"lp": N}, {"overlap": max(0.5, N / 8)}),  # at least one patch of the 8-patch height and width
        ("parastep", {"step": min(N, STEPS - WARMUP)}, {"warmup": WARMUP}),
        ("dualparal", {"stage": 2}, {"block_frames": 2, "context_frames": 2} if FAST else {}),
    ]
    # drop what this device count cannot run (a mesh larger than N, an axis of size 1, cfg+ulysses on odd N)
    CONFIGS = [(s, a, o) for s, a, o in CONFIGS
               if math.prod(a.values()) <= N and all(v > 1 for v in a.values()) and not (s == "cfg+ulysses" and N % 2)]
    for s, a, o in CONFIGS:
        plan = resolve(s, make_mesh(a, devices=DEVICES) if a else None, o)
        print(f"{plan.describe():<32} exact={plan.exact}")
    """),
    md(r"""
    ## Run them

    Each run dumps the optimised HLO of the programs it compiles (`dump_hlo=`), and `jaxvdm.sharding.comm`
    reads every collective from it (kind, bytes, replica groups, loop trip counts). Bytes per step are bytes
    sent per device over the whole run divided by the step count: a per-step program (exact strategies, LP)
    runs once per step; ParaStep runs its warm-up program `warmup` times and one program per round of N steps;
    DualParal compiles the whole pipelined schedule as one program.
    """),
    code(r"""
    import re

    from jaxvdm.metrics import fidelity
    from jaxvdm.sharding import comm, parastep


    def program_reports(hlo_dir):
        out = {}
        for f in sorted(Path(hlo_dir).glob("*.hlo.txt")):
            text = f.read_text()
            out[f.name[: -len(".hlo.txt")]] = comm.comm_report(comm.collectives_from_hlo(text),
                                                                comm.num_devices_from_hlo(text))
        return out


    def bytes_per_step(reports, strategy, axes, options):
        sent = {name: r.bytes_per_device for name, r in reports.items()}
        if "parastep" in strategy:
            warm = max((b for name, b in sent.items() if name.startswith("parastep_warmup")), default=0)
            per_round = {int(re.match(r"parastep_round(\d+)_", name).group(1)): b
                         for name, b in sent.items() if name.startswith("parastep_round")}
            total = options["warmup"] * warm + sum(per_round[p] for _, p in parastep.rounds(STEPS, options["warmup"], axes["step"]))
        elif "dualparal" in strategy:
            total = sum(sent.values())  # one program for the whole schedule
        else:
            total = STEPS * max(sent.values(), default=0)
        return total / STEPS


    rows, videos = [], {}
    for strategy, axes, options in CONFIGS:
        mesh = make_mesh(axes, devices=DEVICES) if axes else None
        with tempfile.TemporaryDirectory() as hlo_dir:
            v = jaxvdm.generate(PROMPT, mesh=mesh, strategy=strategy, num_frames=FRAMES, steps=STEPS, seed=0,
                                dump_hlo=hlo_dir, attention=ATTENTION, **options)
            reports = program_reports(hlo_dir)
        if strategy == "single":
            ref = v
        f = fidelity(v, ref)
        t = v.settings["timings"]
        rows.append(dict(strategy=strategy, mesh=",".join(f"{a}={s}" for a, s in axes.items()) or "-",
                         exact=resolve(strategy, mesh, options).exact,
                         max_latent_error=float(np.max(np.abs(v.latents - ref.latents))),
                         psnr=f["psnr"], ssim=f["ssim"], comm_bytes_per_step=bytes_per_step(reports, strategy, axes, options),
                         kinds=sorted({k for r in reports.values() for k in r.per_kind}),
                         compile_s=t["compile_s"], denoise_s=t["denoise_s"]))
        videos[strategy] = v
        print(f"{strategy:<12} done in {t['total_s']:.1f} s")
    """),
    md(r"""
    ## Results

    The exact strategies should show latent differences around 1e-5 or below (float rounding; Ulysses is
    often bit-identical); the approximate ones show what their approximation costs on this model. Communication
    is per device per denoising step. Times are wall-clock seconds of this run; on simulated CPU devices they
    measure the CPU, not the strategy (all "devices" share the same cores).
    """),
    code(r"""
    header = "| strategy | mesh | exact | max latent error | PSNR (dB) | SSIM | sent / device / step | collectives | compile (s) | denoise (s) |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['mesh']} | {'yes' if r['exact'] else 'no'} | {r['max_latent_error']:.2e} | "
                     f"{r['psnr']:.1f} | {r['ssim']:.4f} | {comm.format_bytes(r['comm_bytes_per_step'])} | "
                     f"{', '.join(r['kinds']) or '-'} | {r['compile_s']:.1f} | {r['denoise_s']:.2f} |")
    display(Markdown("\n".join(lines)))
    for r in rows:  # the same as plain text (for logs)
        print(f"{r['strategy']:<12} {r['mesh']:<12} exact={r['exact']!s:<5} max_latent_error={r['max_latent_error']:.3e} "
              f"psnr={r['psnr']:.2f} comm_per_step={r['comm_bytes_per_step']:.0f} compile_s={r['compile_s']:.1f} "
              f"denoise_s={r['denoise_s']:.2f}")
    """),
    md(r"""
    ### Plots

    PSNR is capped at 100 dB for the plot (bit-identical outputs have infinite PSNR).
    """),
    code(r"""
    import matplotlib.pyplot as plt

    names = [r["strategy"] for r in rows]
    colours = ["tab:blue" if r["exact"] else "tab:orange" for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].bar(names, [min(r["psnr"], 100.0) for r in rows], color=colours)
    ax[0].set_ylabel("PSNR vs single (dB)")
    ax[0].set_title("fidelity (blue: exact, orange: approximate)")
    ax[1].bar(names, [r["comm_bytes_per_step"] / 1024 for r in rows], color=colours)
    ax[1].set_ylabel("KiB sent per device per step")
    ax[1].set_title("communication")
    ax[2].bar(names, [r["compile_s"] for r in rows], label="compile", color="lightgrey")
    ax[2].bar(names, [r["denoise_s"] for r in rows], bottom=[r["compile_s"] for r in rows], label="denoise", color=colours)
    ax[2].set_ylabel("seconds")
    ax[2].set_title("wall time")
    ax[2].legend()
    for a in ax:
        a.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    plt.show()
    """),
    md(r"""
    ### The clips

    Every strategy's output, the exact ones first.
    """),
    code(r"""
    show(*[(f"{r['strategy']} ({r['psnr']:.0f} dB)" if math.isfinite(r["psnr"]) else r["strategy"], videos[r["strategy"]])
           for r in sorted(rows, key=lambda r: not r["exact"])])
    """),
    md(r"""
    ## Check

    The exact strategies against the single-device run: float rounding only. The bound is 1e-4 where attention
    is XLA's; the splash kernel on TPU chips rounds its float32 tiles in its own order, and Ring merges its
    chunks from the kernel's log-sum-exp, so there the bound is 1e-3 (not yet measured on a TPU).
    """),
    code(r"""
    exact = [r for r in rows if r["exact"] and r["strategy"] != "single"]
    worst = max((r["max_latent_error"] for r in exact), default=0.0)
    bound = 1e-3 if ATTENTION == "splash" else 1e-4
    print(f"exact strategies ({', '.join(r['strategy'] for r in exact)}): max latent error vs single = {worst:.3e}"
          f" (bound {bound:g})")
    assert worst < bound, "an exact strategy differs from the single-device run by more than float rounding"
    """),
]
