"""Builds the Colab notebooks in this folder from the cell sources below.

    python colab/_build.py            # writes quickstart.ipynb, strategies.ipynb, profiling.ipynb, wan.ipynb
    python colab/_build.py --check    # exits 1 if a committed notebook differs from what this script builds

Edit the cells here, never the .ipynb files: they are outputs (committed without cell outputs, with stable
cell ids, so a rebuild changes only what the sources change). ``tests/test_notebooks.py`` executes every
notebook in fast mode (``JAXVDM_NOTEBOOK_FAST=1``) and checks that the committed files are up to date.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat import v4

HERE = Path(__file__).resolve().parent

# Where `pip install "jaxvdm @ git+URL"` installs from in Colab; JAXVDM_REPO_URL overrides it at run time.
REPO_URL = "https://github.com/<org>/jaxvdm"


def _src(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def md(text: str):
    return ("markdown", _src(text))


def code(text: str):
    return ("code", _src(text).replace("@REPO_URL@", REPO_URL))


# --------------------------------------------------------------------------------------- shared cells

INSTALL_MD = md(r"""
    ## Install

    In Colab this installs jaxvdm from its repository, with the TPU build of JAX on a TPU runtime and the CUDA
    build on a GPU runtime; it is the same as `!pip install "jaxvdm[tpu] @ git+<repository URL>"`. Where jaxvdm
    is already importable (a local checkout installed with `pip install -e .`, or a second run of this cell)
    nothing is installed. Run this cell before anything imports JAX.
    """)

INSTALL = code(r"""
    import glob, importlib.util, os, shutil, subprocess, sys

    REPO_URL = os.environ.get("JAXVDM_REPO_URL", "@REPO_URL@")  # the repository that hosts jaxvdm
    if importlib.util.find_spec("jaxvdm") is None:
        if "<org>" in REPO_URL:
            raise ValueError("set REPO_URL (or the JAXVDM_REPO_URL environment variable) to the git URL of jaxvdm")
        on_tpu = bool(os.environ.get("TPU_ACCELERATOR_TYPE") or os.environ.get("COLAB_TPU_ADDR")
                      or glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))
        on_gpu = shutil.which("nvidia-smi") is not None
        extra = "[tpu]" if on_tpu else "[cuda]" if on_gpu else ""
        print(f"pip install jaxvdm{extra} from {REPO_URL}")
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"jaxvdm{extra} @ git+{REPO_URL}"])
    else:
        print("jaxvdm is already installed:", os.path.dirname(importlib.util.find_spec("jaxvdm").origin))
    """)

SETUP_MD = md(r"""
    ## Set-up

    `FAST` is the test suite's mode (`JAXVDM_NOTEBOOK_FAST=1`): a few denoising steps, small sizes, no downloads.
    In Colab it is off and the notebook uses the real settings. JAX's CPU backend is split into 8 simulated
    devices (`jax_num_cpu_devices`), so on a runtime without an accelerator every strategy runs, slowly, on a
    laptop or a free Colab CPU; on TPU and GPU runtimes the devices are the real chips.
    """)

SETUP = code(r"""
    import math, os, sys, tempfile, time
    from pathlib import Path

    FAST = os.environ.get("JAXVDM_NOTEBOOK_FAST") == "1"
    IN_COLAB = "google.colab" in sys.modules

    import jax
    import numpy as np

    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        jax.config.update("jax_num_cpu_devices", 8)  # the CPU backend only; before JAX starts a backend

    import jaxvdm
    from jaxvdm.sharding import make_mesh

    BACKEND = jax.default_backend()  # "tpu", "gpu" or "cpu"
    DEVICES = jax.devices()
    print(f"jaxvdm {jaxvdm.__version__}, JAX {jax.__version__}: {len(DEVICES)} {BACKEND.upper()} device(s), "
          f"{DEVICES[0].device_kind}" + (" (fast mode)" if FAST else ""))
    """)

# One accelerator cannot show a multi-device strategy: use the simulated CPU devices for the comparison.
MESH_DEVICES = code(r"""
    if len(DEVICES) == 1 and BACKEND != "cpu":
        print(f"one {BACKEND.upper()} device: the strategies run on {len(jax.devices('cpu'))} simulated CPU devices instead")
        DEVICES = jax.devices("cpu")
        jax.config.update("jax_default_device", DEVICES[0])  # the reference runs where the strategies run
    N = len(DEVICES)
    print(f"{N} device(s) for the meshes below")
    """)

SHOW = code(r"""
    import base64
    from IPython.display import HTML, Markdown, display


    def video_html(video, title="", height=192):
        # small clips as a looping GIF (nearest-neighbour upscaled), large ones as an MP4 player
        scale = max(1, height // video.height)
        big = jaxvdm.Video(frames=video.frames.repeat(scale, axis=1).repeat(scale, axis=2), fps=video.fps)
        suffix = ".gif" if video.height * video.width <= 128 * 128 else ".mp4"
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "video" + suffix)
            big.save(path)
            data = base64.b64encode(Path(path).read_bytes()).decode()
        media = (f'<img src="data:image/gif;base64,{data}">' if suffix == ".gif" else
                 f'<video src="data:video/mp4;base64,{data}" controls autoplay loop muted></video>')
        return (f'<figure style="display:inline-block;margin:6px;text-align:center">{media}'
                f'<figcaption style="max-width:{big.width}px">{title}</figcaption></figure>')


    def show(*items):
        # show(("caption", video), ...): the videos side by side
        display(HTML("".join(video_html(v, t) for t, v in items)))
    """)


# --------------------------------------------------------------------------------------- quickstart

QUICKSTART = [
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
    video = jaxvdm.generate(PROMPT, num_frames=FRAMES, steps=STEPS, seed=0)
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
    n = len(MESH_DEVICES)
    if MESH_DEVICES[0] == DEVICES[0]:
        reference = video
    else:  # one accelerator: the exact reference on the devices the strategies use
        with jax.default_device(MESH_DEVICES[0]):
            reference = jaxvdm.generate(PROMPT, num_frames=FRAMES, steps=STEPS, seed=0)


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


    print(f"{n} devices: {[str(d) for d in MESH_DEVICES[:4]]}{' ...' if n > 4 else ''}")
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
                               overlap=0.5)
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
                               warmup=WARMUP)
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


# --------------------------------------------------------------------------------------- strategies

STRATEGIES = [
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

    Each row is a strategy and the mesh it runs on. `k` is the size of the sequence / weight / window axis: up to
    4 devices, which splits the shipped model's tokens (16 frames of 8 × 8 patches; 8 frames in fast mode)
    evenly. DualParal splits the clip into a context and blocks of frames (4 + 3 × 4 by default, 2 + 3 × 2 in
    fast mode). `exact` is what the strategy registry declares: whether a strategy must match the
    single-device run.
    """),
    code(r"""
    from jaxvdm.sharding.registry import resolve

    k = min(4, N)
    CONFIGS = [  # (strategy, mesh axes, options)
        ("single", {}, {}),
        ("cfg", {"cfg": 2}, {}),
        ("ulysses", {"sp": k}, {}),
        ("ring", {"sp": k}, {}),
        ("fsdp", {"fsdp": k}, {}),
        ("cfg+ulysses", {"cfg": 2, "sp": min(k, N // 2)}, {}),
        ("lp", {"lp": k}, {"overlap": 0.5}),
        ("parastep", {"step": min(k, STEPS - WARMUP)}, {"warmup": WARMUP}),
        ("dualparal", {"stage": 2}, {"block_frames": 2, "context_frames": 2} if FAST else {}),
    ]
    # drop what this device count cannot run (a mesh larger than N, or an axis of size 1)
    CONFIGS = [(s, a, o) for s, a, o in CONFIGS if math.prod(a.values()) <= N and all(v > 1 for v in a.values())]
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
                                dump_hlo=hlo_dir, **options)
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

    The exact strategies against the single-device run: float rounding only.
    """),
    code(r"""
    exact = [r for r in rows if r["exact"] and r["strategy"] != "single"]
    worst = max((r["max_latent_error"] for r in exact), default=0.0)
    print(f"exact strategies ({', '.join(r['strategy'] for r in exact)}): max latent error vs single = {worst:.3e}")
    assert worst < 1e-4, "an exact strategy differs from the single-device run by more than float rounding"
    """),
]


# --------------------------------------------------------------------------------------- profiling

PROFILING = [
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
    WORK = Path(tempfile.mkdtemp(prefix="jaxvdm-profile-"))
    if N >= 4 and N % 2 == 0:
        AXES, STRATEGY = {"cfg": 2, "sp": min(4, N // 2)}, "cfg+ulysses"
    elif N >= 2:
        AXES, STRATEGY = {"sp": min(4, N)}, "ulysses"
    else:
        AXES, STRATEGY = {}, "single"
    print(STRATEGY, AXES, "->", WORK)
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
                            profile_dir=PROFILE_DIR)
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
                               num_frames=FRAMES, steps=STEPS, seed=0, dump_hlo=HLO_DIR)
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
        print("trace:", next(PROFILE_DIR.rglob("*.xplane.pb")))
        print("perfetto:", next(PROFILE_DIR.rglob("perfetto_trace.json.gz")))
    """),
    code(r"""
    print(f"trace recorded: {summary['trace']}; phases: {sorted(summary['phases'])}")
    print(f"collective kinds ({STRATEGY}): {sorted(kinds)}")
    print(f"collective kinds (lp): {lp_kinds}")
    """),
]


# --------------------------------------------------------------------------------------- wan

WAN = [
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
    * **attention scratch**: none with a fused flash kernel (cuDNN, on Ampere and newer GPUs). With XLA's
      chunked attention (TPU, older GPUs) it is the float32 scores of one chunk of 1,024 queries against every
      key, for the device's heads (Ulysses splits the heads): for the 14B at 720p that is 12 GiB per sequence,
      which is what keeps it off 16 and 32 GiB TPUs.

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
    HARDWARE = [  # name, JAX devices, GiB per device, fused flash attention
        ("TPU v5e-1", 1, 16, False),
        ("TPU v2-8", 8, 8, False),
        ("TPU v3-8", 8, 16, False),
        ("TPU v4-8", 4, 32, False),
        ("TPU v5e-8", 8, 16, False),
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
        spm_dir = Path(tempfile.mkdtemp(prefix="spm-"))
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences * 8), model_prefix=str(spm_dir / "spiece"),
                                       vocab_size=48, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                       character_coverage=1.0, minloglevel=2)
        T5Tokenizer.from_pretrained(str(spm_dir), local_files_only=True).save_pretrained(root / "tokenizer")
        (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
        return root


    if USE_REAL:
        from huggingface_hub import snapshot_download

        CKPT_DIR = Path(snapshot_download(CHECKPOINT, local_dir=CHECKPOINT.split("/")[-1]))
    else:
        CKPT_DIR = write_tiny_wan(Path(tempfile.mkdtemp(prefix="tiny-wan-")))
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
        AXES, STRATEGY, est = recommend(model_size, n, gib, flash=BACKEND == "gpu")
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
        video = jaxvdm.generate("a cat surfing a wave at sunset", model=pipe, mesh=mesh, strategy=STRATEGY, seed=0, **quick)
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
]

NOTEBOOKS = {"quickstart": QUICKSTART, "strategies": STRATEGIES, "profiling": PROFILING, "wan": WAN}


def build() -> dict[str, nbformat.NotebookNode]:
    """The notebooks, without outputs, with cell ids ``<notebook>-<index>`` (stable across builds)."""
    out = {}
    for name, cells in NOTEBOOKS.items():
        nb = v4.new_notebook()
        nb.metadata = {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
            "colab": {"provenance": [], "toc_visible": True},
        }
        for i, (kind, source) in enumerate(cells):
            cell = v4.new_markdown_cell(source) if kind == "markdown" else v4.new_code_cell(source)
            cell.id = f"{name}-{i:02d}"
            nb.cells.append(cell)
        nbformat.validate(nb)
        out[name] = nb
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    stale = []
    for name, nb in build().items():
        path = HERE / f"{name}.ipynb"
        text = nbformat.writes(nb) + "\n"
        if check:
            if not path.exists() or json.loads(path.read_text()) != json.loads(text):
                stale.append(path.name)
        else:
            path.write_text(text)
            print("wrote", path)
    if stale:
        print("out of date (run python colab/_build.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
