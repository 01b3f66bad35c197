"""Finds jaxvdm on a Colab runtime and installs it: the body of every notebook's first cell.

``colab/_build.py`` pastes everything below the ``# cell`` marker into the install cell, under a Colab
form field ``REPO_URL``; ``tests/test_notebooks.py`` imports this file to check each branch against
temporary folders. It uses the standard library only: it runs before anything is installed, and before
anything imports JAX (so a ``pip install`` of another JAX build takes effect in the same kernel).

Where jaxvdm comes from, first found wins:

1. an importable ``jaxvdm`` (a local ``pip install -e .``, or a second run of the cell);
2. a wheel or checkout uploaded to ``/content``: ``/content/jaxvdm*.whl`` (the newest), or
   ``/content/jaxvdm/`` holding jaxvdm's ``pyproject.toml``;
3. the same in Google Drive, once mounted: ``/content/drive/MyDrive/jaxvdm*.whl`` or
   ``/content/drive/MyDrive/jaxvdm*/`` with the ``pyproject.toml``;
4. ``REPO_URL``, a git URL (or the URL of a wheel), from the form field or ``JAXVDM_REPO_URL``;

otherwise the cell stops with one line saying what to upload or set. The pip requirement carries the
package's own extra for the runtime (``jaxvdm[tpu]`` on a TPU, ``jaxvdm[cuda]`` on an NVIDIA GPU, none on
CPU), so JAX comes in jaxvdm's supported range; for an already installed jaxvdm the extra's requirements
are read from its metadata and installed only when missing.
"""

# cell
import glob, importlib.metadata, importlib.util, os, shutil, subprocess, sys  # noqa: E401


class InstallError(ValueError):
    """Why jaxvdm cannot be installed; IPython shows it as its one line, without a traceback."""

    def _render_traceback_(self):
        return [f"InstallError: {self}"]


def runtime_accelerator(env=None, paths=glob.glob, which=shutil.which) -> str:
    """``"tpu"``, ``"gpu"`` or ``"cpu"``: what this runtime has, read without importing JAX.

    A TPU shows as ``TPU_ACCELERATOR_TYPE`` / ``COLAB_TPU_ADDR`` or as its device files (``/dev/accel*`` on
    v2-v4 and v5p, ``/dev/vfio/<n>`` on v5e and v6e); an NVIDIA GPU as ``nvidia-smi`` on the PATH."""
    env = os.environ if env is None else env
    if env.get("TPU_ACCELERATOR_TYPE") or env.get("COLAB_TPU_ADDR"):
        return "tpu"
    if paths("/dev/accel*") or paths("/dev/vfio/[0-9]*"):
        return "tpu"
    return "gpu" if which("nvidia-smi") else "cpu"


def _is_jaxvdm_checkout(folder) -> bool:
    toml = os.path.join(folder, "pyproject.toml")
    if not os.path.isfile(toml):
        return False
    with open(toml, encoding="utf-8") as f:
        return any(line.replace(" ", "").startswith('name="jaxvdm"') for line in f)


def _newest(paths):
    return max(paths, key=os.path.getmtime) if paths else None


def find_jaxvdm(repo_url="", content="/content", drive="/content/drive/MyDrive", installed=None):
    """``(kind, where)`` of the first jaxvdm found; kind is ``installed``, ``wheel``, ``checkout`` or ``url``.

    ``installed`` is the folder of an importable jaxvdm (default: found with ``importlib``; pass ``""`` for
    none). Raises InstallError, one line, naming what to upload or set when nothing is found."""
    if installed is None:
        spec = importlib.util.find_spec("jaxvdm")
        installed = os.path.dirname(spec.origin) if spec and spec.origin else ""
    if installed:
        return "installed", installed
    for root in (content, drive):
        wheel = _newest(glob.glob(os.path.join(root, "jaxvdm*.whl")))
        if wheel:
            return "wheel", wheel
        pattern = "jaxvdm" if root == content else "jaxvdm*"  # an upload is jaxvdm/; Drive may hold jaxvdm-main/
        folders = sorted(glob.glob(os.path.join(root, pattern)))
        for folder in folders:
            if _is_jaxvdm_checkout(folder):
                return "checkout", folder
    url = (repo_url or os.environ.get("JAXVDM_REPO_URL", "")).strip()
    if url:
        return "url", url
    raise InstallError(
        f"jaxvdm not found: upload a wheel (jaxvdm-*.whl) or a jaxvdm/ checkout with its pyproject.toml to "
        f"{content}, or put either in {drive} and mount Drive, or set REPO_URL in this cell's form to its git URL; "
        f"then run this cell again")


def _extra_requirements(extra, requires=None):
    """The requirements of jaxvdm's ``extra`` from the installed package's metadata (``[]`` for none)."""
    if not extra:
        return []
    requires = importlib.metadata.requires("jaxvdm") if requires is None else requires
    out = []
    for line in requires or []:
        req, _, marker = line.partition(";")
        if marker.replace(" ", "").replace("'", '"') == f'extra=="{extra}"':
            out.append(req.strip())
    return out


def pip_install_args(kind, where, accelerator, requires=None):
    """The ``pip install`` arguments for a source from :func:`find_jaxvdm` on ``accelerator``.

    Wheels, checkouts and URLs become one PEP 508 requirement ``jaxvdm[EXTRA] @ URL`` (``EXTRA`` is the
    package's own ``tpu`` / ``cuda`` extra, none on CPU); an installed jaxvdm gets its extra's requirements
    (``requires``: its metadata lines, default read from the installed package), ``[]`` when there are none."""
    extra = {"tpu": "tpu", "gpu": "cuda", "cpu": ""}[accelerator]
    if kind == "installed":
        return _extra_requirements(extra, requires)
    if kind in ("wheel", "checkout"):
        url = "file://" + os.path.abspath(where)
    elif kind == "url":
        is_archive = where.endswith((".whl", ".zip", ".tar.gz"))
        url = where if where.startswith("git+") or is_archive else "git+" + where
    else:
        raise ValueError(f"unknown jaxvdm source kind {kind!r}")
    return [f"jaxvdm{f'[{extra}]' if extra else ''} @ {url}"]


def install_jaxvdm(repo_url="", content="/content", drive="/content/drive/MyDrive", installed=None,
                   run=subprocess.check_call):
    """Finds jaxvdm (:func:`find_jaxvdm`, same arguments) and pip-installs it with the runtime's extra through
    ``run``; returns one line saying what it did. Raises InstallError (one line) if nothing is found or pip fails."""
    kind, where = find_jaxvdm(repo_url, content, drive, installed)
    accelerator = runtime_accelerator()
    args = pip_install_args(kind, where, accelerator)
    if args:
        try:
            run([sys.executable, "-m", "pip", "install", "-q", *args])
        except subprocess.CalledProcessError as e:
            raise InstallError(f"pip install {' '.join(args)} failed (exit {e.returncode}); see pip's output "
                               "above") from None
        importlib.invalidate_caches()
    if importlib.util.find_spec("jaxvdm") is None:
        raise InstallError(f"installed jaxvdm from {where} but cannot import it; restart the runtime (Runtime -> "
                           "Restart session) and run this cell again")
    if kind == "installed":
        what = "already installed"
    else:
        what = f"installed from {kind} {where if kind == 'url' else os.path.basename(where)}"
    pip = f"; pip install {' '.join(args)}" if args else ""
    return f"jaxvdm {what} ({accelerator.upper()} runtime{pip})"
