"""The profiling notebook: a jax.profiler trace of a generation, its phases and collectives.

Cells for ``colab/_build.py``.
"""

from _cells import INSTALL, INSTALL_MD, MESH_DEVICES, SETUP, SETUP_MD, code, md

CELLS = [
    md(r"""
    # Profiling a generation

    `jaxvdm.generate(..., profile_dir=DIR)` records a `jax.profiler` trace of the denoising loop and writes the
    optimised HLO of every compiled step under `DIR/hlo`; `dump_hlo=DIR` writes only the HLO. jaxvdm marks
    each phase of a step with `jax.named_scope` (`model_forward`, `cfg_combine`, `lp_window`, `lp_combine`,
    `scheduler`, `parastep_*`, `dualparal_*`); XLA keeps those names in each instruction's metadata, so
    `jaxvdm.profiling.summarize` can attribute the trace's device time to phases and list the collectives
    with their bytes. This notebook captures a trace, summarises it, looks at the collectives, and shows how
    to open the trace in TensorBoard / XProf and Perfetto.
    """),
    INSTALL_MD,
    INSTALL,
    SETUP_MD,
    SETUP,
    md(r"""
    ### Devices and settings

    With one accelerator the trace is taken on the simulated CPU devices, which still shows every collective.
    """),
    MESH_DEVICES,
    code(r"""
    STEPS = 3 if FAST else 20
    FRAMES = 8 if FAST else 16
    PROMPT = "a green triangle moving up on a gradient background"
    import atexit, shutil

    WORK = Path(tempfile.mkdtemp(prefix="jaxvdm-profile-"))  # the trace and HLO; the last cell removes it
    atexit.register(shutil.rmtree, WORK, ignore_errors=True)  # and so does the kernel's exit, if a cell fails
    if N >= 4 and N % 2 == 0:
        AXES, STRATEGY = {"cfg": 2, "sp": min(4, N // 2)}, "cfg+ulysses"
    elif N >= 2:
        AXES, STRATEGY = {"sp": min(4, N)}, "ulysses"
    else:
        AXES, STRATEGY = {}, "single"
    print(STRATEGY, AXES, "-> a temporary folder WORK")
    """),
    md(r"""
    ## Capture a trace

    The trace covers the denoising loop (after compilation). Here it is an exact composition with
    communication inside every layer: the guidance pair split over `cfg`, and Ulysses sequence parallelism
    over `sp` (all-to-alls that trade a token split for a head split around self-attention).
    """),
    code(r"""
    PROFILE_DIR = WORK / "trace"
    mesh = make_mesh(AXES, devices=DEVICES) if AXES else None
    video = jaxvdm.generate(PROMPT, mesh=mesh, strategy=STRATEGY, num_frames=FRAMES, steps=STEPS, seed=0,
                            profile_dir=PROFILE_DIR, attention=ATTENTION)
    print(video.settings["strategy"], {k: round(v, 2) for k, v in video.settings["timings"].items()})
    for path in sorted(PROFILE_DIR.rglob("*")):
        if path.is_file():
            print(f"{path.stat().st_size:>12,d}  {path.relative_to(PROFILE_DIR)}")
    """),
    md(r"""
    ## Summarise it

    `summarize(DIR)` reads the newest `*.xplane.pb` and every `*.hlo.txt` under `DIR`. Times are device-op
    time summed over all devices of the mesh (so they exceed the wall time), grouped by jaxvdm phase and by op
    category; the same summary is `jaxvdm profile DIR` on the command line (`--json` for a machine-readable
    copy).
    """),
    code(r"""
    from jaxvdm.profiling import format_summary, summarize

    summary = summarize(PROFILE_DIR)
    print(format_summary(summary))
    """),
    code(r"""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 3.5))
    for a, key in zip(ax, ("phases", "categories")):
        items = sorted(summary[key].items(), key=lambda kv: -kv[1])
        a.barh([k for k, _ in items][::-1], [v * 1e3 for _, v in items][::-1])
        a.set_xlabel("device time (ms, all devices)")
        a.set_title(f"time per {key[:-1] if key == 'phases' else 'op category'}")
    fig.tight_layout()
    plt.show()
    """),
    md(r"""
    ## The collectives

    Every collective of a compiled step, read from its optimised HLO by `jaxvdm.sharding.comm`: the kind, the
    shape each device contributes, the replica-group size, how many times it runs per step (collectives inside
    the layer scan run once per layer), and the jaxvdm phase it belongs to. Bytes are per device, by the ring
    algorithms' conventions (see the `comm` module's docstring).
    """),
    code(r"""
    from jaxvdm.profiling import hlo_scopes
    from jaxvdm.sharding import comm

    kinds = set()
    for f in sorted((PROFILE_DIR / "hlo").glob("*.hlo.txt")):
        text = f.read_text()
        report = comm.comm_report(comm.collectives_from_hlo(text), comm.num_devices_from_hlo(text))
        kinds |= set(report.per_kind)
        print(f.name)
        print(report.table())
        phase = hlo_scopes(text)
        for c in report.collectives[:8]:
            shapes = ", ".join(map(str, c.operand_shapes[:2])) + (" ..." if len(c.operand_shapes) > 2 else "")
            print(f"  {c.kind:<18} {shapes:<40} groups of {c.group_sizes(report.num_devices)}  x{c.executions:<4} "
                  f"{phase.get(c.name, '-')}")
        if len(report.collectives) > 8:
            print(f"  ... {len(report.collectives) - 8} more")
    """),
    md(r"""
    ## An HLO dump without a trace

    `dump_hlo=DIR` skips the profiler and only writes the compiled programs, which is enough to compare
    strategies' communication. Latent Parallelism compiles one program per window layout (its windows rotate
    over the time, height and width axes); each has a single all-reduce: the blended prediction, once per step.
    """),
    code(r"""
    HLO_DIR = WORK / "hlo-lp"
    lp_axes = {"lp": min(4, N)} if N >= 2 else {}
    lp_video = jaxvdm.generate(PROMPT, mesh=make_mesh(lp_axes, devices=DEVICES) if lp_axes else None, strategy="lp",
                               num_frames=FRAMES, steps=STEPS, seed=0, dump_hlo=HLO_DIR, attention=ATTENTION)
    lp_summary = summarize(HLO_DIR)
    print(format_summary(lp_summary))
    lp_kinds = sorted({k for c in lp_summary["collectives"] for k in c.get("per_kind", {})})
    """),
    md(r"""
    ## Open the trace

    * **TensorBoard / XProf**: the `.xplane.pb` under `DIR/plugins/profile/<run>/` is TensorBoard's profile
      format. In Colab run the next cell (it installs the profile plugin and opens TensorBoard inline), then
      pick the *Profile* tab: *trace_viewer* shows every device's ops on a timeline with their HLO names and
      scopes, *hlo_op_profile* the time per op. Locally: `pip install xprof` then
      `xprof --logdir DIR --port 8791`, or `pip install tensorboard tensorboard-plugin-profile` then
      `tensorboard --logdir DIR`.
    * **Perfetto**: download `perfetto_trace.json.gz` from the same folder and open it at
      https://ui.perfetto.dev (*Open trace file*); no installation needed.
    * **HLO**: the `*.hlo.txt` files are plain text; search for `all-to-all`, `all-reduce`, `all-gather` or
      `collective-permute`, and for `op_name="..."` to find which jaxvdm phase an instruction belongs to.
    """),
    code(r"""
    if IN_COLAB and not FAST:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "tensorboard-plugin-profile"], check=False)
        get_ipython().run_line_magic("load_ext", "tensorboard")
        get_ipython().run_line_magic("tensorboard", f"--logdir {PROFILE_DIR}")
        from google.colab import files
        files.download(str(next(PROFILE_DIR.rglob("perfetto_trace.json.gz"))))
    else:
        print("trace: WORK /", next(PROFILE_DIR.rglob("*.xplane.pb")).relative_to(WORK))
        print("perfetto: WORK /", next(PROFILE_DIR.rglob("perfetto_trace.json.gz")).relative_to(WORK))
    """),
    code(r"""
    print(f"trace recorded: {summary['trace']}; phases: {sorted(summary['phases'])}")
    print(f"collective kinds ({STRATEGY}): {sorted(kinds)}")
    print(f"collective kinds (lp): {lp_kinds}")
    """),
    md(r"""
    ## Clean up

    The trace and the HLO dumps lived in a temporary folder; this removes it (download
    `perfetto_trace.json.gz`, or look at TensorBoard, first).
    """),
    code(r"""
    shutil.rmtree(WORK)
    print("removed the temporary folder:", not WORK.exists())
    """),
]
