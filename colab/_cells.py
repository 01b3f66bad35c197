"""What every notebook shares: the cell constructors and the install, set-up, device and video cells.

``md`` / ``code`` dedent a cell's text; ``INSTALL`` is ``colab/_install.py`` under a Colab form field.
"""

import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _src(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def md(text: str):
    return ("markdown", _src(text))


def code(text: str):
    return ("code", _src(text))


# --------------------------------------------------------------------------------------- shared cells

SAVED_OUTPUTS = ("The outputs saved in this notebook are from a CPU run in fast mode (`python colab/_build.py "
                 "--execute`: 8 simulated CPU devices, a few denoising steps, small sizes, no downloads); run it "
                 "on a TPU or GPU runtime for the real settings.")

INSTALL_MD = md(r"""
    ## Install

    This cell finds jaxvdm and installs it, with nothing to edit when it can find it, in this order: an
    importable jaxvdm (a local `pip install -e .`, or a second run of this cell); a wheel `jaxvdm-*.whl` or a
    checkout folder `jaxvdm/` (with its `pyproject.toml`) uploaded to `/content` (the *Files* pane); either of
    them in Google Drive as `MyDrive/jaxvdm*` once Drive is mounted (`from google.colab import drive;
    drive.mount("/content/drive")`); the git URL in the `REPO_URL` field. When none is there it stops with one
    line saying what to upload or set. It installs the package's own extra for the runtime: `jaxvdm[tpu]` on a
    TPU (the TPU build of JAX inside jaxvdm's supported range, `jax>=0.10.2,<0.12`), `jaxvdm[cuda]` on an
    NVIDIA GPU, plain `jaxvdm` on CPU. Run it before anything imports JAX.
    """)


def _install_cell():
    body = (HERE / "_install.py").read_text().split("\n# cell\n", 1)[1].strip("\n")
    head = ('# @title Install jaxvdm { display-mode: "form" }\n'
            'REPO_URL = ""  # @param {type:"string"}\n'
            "# (leave REPO_URL empty when jaxvdm is installed, uploaded or in Drive; the code is colab/_install.py)\n")
    return ("code", head + body + "\n\n\nprint(install_jaxvdm(REPO_URL))")


INSTALL = _install_cell()

SETUP_MD = md(r"""
    ## Set-up

    `FAST` is the test suite's mode (`JAXVDM_NOTEBOOK_FAST=1`): a few denoising steps, small sizes, no downloads.
    In Colab it is off and the notebook uses the real settings. JAX's CPU backend is split into 8 simulated
    devices (`jax_num_cpu_devices`), so on a runtime without an accelerator every strategy runs, slowly, on a
    laptop or a free Colab CPU; on TPU and GPU runtimes the devices are the real chips. `ATTENTION` is the
    attention kernel for the devices the notebook computes on: the Pallas splash kernel on TPU chips, `"auto"`
    on GPUs (cuDNN in half precision, XLA otherwise), XLA on CPU devices.
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


    def attention_for(devices):
        # the attention kernel for these devices: splash on TPU chips, auto on GPUs, XLA on CPU devices
        return {"tpu": "splash", "gpu": "auto"}.get(devices[0].platform, "xla")


    BACKEND = jax.default_backend()  # "tpu", "gpu" or "cpu"
    DEVICES = jax.devices()
    ATTENTION = attention_for(DEVICES)
    print(f"jaxvdm {jaxvdm.__version__}, JAX {jax.__version__}: {len(DEVICES)} {BACKEND.upper()} device(s), "
          f"{DEVICES[0].device_kind}; attention={ATTENTION!r}" + (" (fast mode)" if FAST else ""))
    """)

# One accelerator cannot show a multi-device strategy: use the simulated CPU devices for the comparison.
MESH_DEVICES = code(r"""
    if len(DEVICES) == 1 and BACKEND != "cpu":
        print(f"one {BACKEND.upper()} device: the strategies run on {len(jax.devices('cpu'))} simulated CPU devices "
              "instead")
        DEVICES = jax.devices("cpu")
        jax.config.update("jax_default_device", DEVICES[0])  # the reference runs where the strategies run
        ATTENTION = attention_for(DEVICES)
    N = len(DEVICES)
    print(f"{N} {DEVICES[0].platform.upper()} device(s) for the meshes below, attention={ATTENTION!r}")
    """)

SHOW = code(r"""
    import base64
    from IPython.display import HTML, Markdown, display


    def video_html(video, title="", height=192):
        # small clips as a looping GIF at their own size, shown enlarged (pixelated); large ones as an MP4 player
        scale = max(1, height // video.height)
        width = video.width * scale
        suffix = ".gif" if video.height * video.width <= 128 * 128 else ".mp4"
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "video" + suffix)
            video.save(path)
            data = base64.b64encode(Path(path).read_bytes()).decode()
        media = (f'<img src="data:image/gif;base64,{data}" width="{width}" style="image-rendering:pixelated">'
                 if suffix == ".gif" else
                 f'<video src="data:video/mp4;base64,{data}" width="{width}" controls autoplay loop muted></video>')
        return (f'<figure style="display:inline-block;margin:6px;text-align:center">{media}'
                f'<figcaption style="max-width:{width}px">{title}</figcaption></figure>')


    def show(*items):
        # show(("caption", video), ...): the videos side by side
        display(HTML("".join(video_html(v, t) for t, v in items)))
    """)
