"""The Colab notebooks: committed as built and executed, run top to bottom in fast mode, leave nothing behind,
and their install cell finds jaxvdm in the documented order.

Each notebook in ``colab/`` is executed with nbclient in a fresh ``python3`` kernel of this environment, in the
environment ``colab/_build.py --execute`` uses (``_build.fast_env``: ``JAXVDM_NOTEBOOK_FAST=1``, 8 simulated
CPU devices, no downloads) with a private ``TMPDIR``, so that anything a notebook leaves in its temporary
directory shows there. A cell that raises fails the test; the printed outputs are then checked for the numbers
each notebook exists to show. The kernels share one fresh compilation cache, so programs compiled by one
notebook (e.g. the single-device reference) are loaded by the next.
"""

import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
requirements = pytest.importorskip("packaging.requirements")

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
sys.path.insert(0, str(COLAB))
import _build  # noqa: E402
import _install  # noqa: E402

sys.path.remove(str(COLAB))

BUDGET_S = {"quickstart": 150, "strategies": 300, "profiling": 150, "wan": 150}  # per notebook, whole run
SCHEDULE = (("strategies",), ("quickstart", "profiling", "wan"))  # two kernels at a time
WRITES = {"quickstart": {"quickstart.gif"}, "strategies": set(), "profiling": set(), "wan": {"wan.mp4"}}


def _git_status_colab():
    out = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "colab"], capture_output=True,
                         text=True)
    return out.stdout if out.returncode == 0 else None


@pytest.fixture(scope="module")
def kernel_tmp(tmp_path_factory):
    """A private temporary directory (a kernel's ``TMPDIR``) and the fast-mode environment that uses it."""
    tmp = tmp_path_factory.mktemp("kernel_tmp")
    return tmp, _build.fast_env(tmp)


def run_notebook(name: str, root: Path, cache: Path) -> dict:
    """Executes ``colab/<name>.ipynb`` in ``root/cwd`` with ``TMPDIR=root/tmp``; returns what it printed or
    displayed (``text``) or the exception it raised (``error``), and what it left behind: new entries in its
    temporary directory (``left``), the files in its working folder (``wrote``), whether ``git status`` of
    ``colab/`` changed (``git_changed``)."""
    cwd, tmp = root / "cwd", root / "tmp"
    cwd.mkdir(parents=True)
    env = _build.fast_env(tmp, cache)
    tmp_before, git_before = set(os.listdir(tmp)), _git_status_colab()
    nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
    out = {"text": None, "error": None}
    t0 = time.perf_counter()
    try:
        _build.execute(nb, env, cwd, BUDGET_S[name])
        out["text"] = _build.output_text(nb)
    except Exception as e:  # noqa: BLE001 - raised again by the notebook's test
        out["error"] = e
    print(f"{name}: {time.perf_counter() - t0:.1f} s")
    out.update(left=sorted(set(os.listdir(tmp)) - tmp_before), wrote={p.name for p in cwd.iterdir()},
               git_changed=_git_status_colab() != git_before, cwd=cwd)
    return out


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """The notebooks this session's tests ask for, executed two kernels at a time (the strategies notebook beside
    the other three, which take about as long together), each kernel line with its own compilation cache."""
    wanted = {item.name.removeprefix("test_") for item in request.session.items} & set(BUDGET_S)
    results = {}

    def line(names):
        cache = tmp_path_factory.mktemp("xla_cache")
        for name in names:
            if name in wanted:
                results[name] = run_notebook(name, tmp_path_factory.mktemp(name), cache)

    threads = [threading.Thread(target=line, args=(names,)) for names in SCHEDULE]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def notebook_text(runs, name: str) -> tuple[str, Path]:
    """The text ``name`` printed and its working folder, once it ran without an error and left nothing behind:
    no new entry in its temporary directory, no file in its working folder but those it is meant to write, and
    no change to the working tree under ``colab/``."""
    r = runs[name]
    if r["error"] is not None:
        raise r["error"]  # CellExecutionError carries the failing cell's traceback
    assert not r["left"], f"{name} left {r['left']} in its temporary directory"  # e.g. jaxvdm-profile-*, tiny-wan-*
    assert r["wrote"] == WRITES[name], f"{name} wrote {sorted(r['wrote'])} in its working folder"
    assert not r["git_changed"], f"{name} changed the working tree under colab/"
    return r["text"], r["cwd"]


def _float(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"pattern {pattern!r} not found in the notebook's output:\n{text[-3000:]}"
    return float(m.group(1))


# ------------------------------------------------------------------------------------ committed files


def test_committed_notebooks_are_built_and_executed():
    """The committed notebooks have the cells colab/_build.py builds, and carry the outputs of a complete CPU run
    in fast mode: every code cell executed in order without an error, no temporary or local path, under 1 MB."""
    built = _build.build()
    assert sorted(built) == sorted(BUDGET_S)
    assert _build.main(["--check"]) == 0
    install_body = (COLAB / "_install.py").read_text().split("\n# cell\n", 1)[1].strip("\n")
    for name, nb in built.items():
        path = COLAB / f"{name}.ipynb"
        on_disk = nbformat.read(path, as_version=4)
        nbformat.validate(on_disk)
        assert _build.cell_sources(on_disk) == _build.cell_sources(nb), f"{path.name} is stale"
        assert on_disk.metadata.kernelspec.name == "python3"
        assert on_disk.cells[0].cell_type == "markdown" and _build.SAVED_OUTPUTS in on_disk.cells[0].source
        # the first code cell is the install helper, verbatim, under an empty Colab form field
        first = next(c for c in on_disk.cells if c.cell_type == "code")
        assert 'REPO_URL = ""  # @param {type:"string"}' in first.source and install_body in first.source
        counts = [c.execution_count for c in on_disk.cells if c.cell_type == "code"]
        assert counts == list(range(1, len(counts) + 1)), \
            f"{path.name}: not one complete run ({counts}): run python colab/_build.py --execute"
        outputs = [o for c in on_disk.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], f"{path.name} saved an error"
        text = _build.output_text(on_disk)
        assert "CPU device(s)" in text and "(fast mode)" in text and "attention='xla'" in text, path.name
        raw = json.dumps(outputs)
        for leak in ("/tmp/", str(ROOT), *_build.TEMP_PREFIXES):
            assert leak not in raw, f"{path.name}'s outputs show {leak!r}"
        assert path.stat().st_size < 2**20, f"{path.name} is {path.stat().st_size / 2**20:.2f} MiB"


def test_rebuild_keeps_outputs_of_unchanged_cells_and_check_ignores_outputs():
    """A plain rebuild keeps each unchanged cell's saved outputs and drops a changed cell's; --check's comparison
    sees a changed source and ignores outputs."""
    on_disk = nbformat.read(COLAB / "quickstart.ipynb", as_version=4)
    built = _build.build()["quickstart"]
    assert _build.cell_sources(built) == _build.cell_sources(on_disk)  # outputs differ, sources do not
    kept = _build.keep_outputs(built, on_disk)
    assert [c.get("outputs") for c in kept.cells] == [c.get("outputs") for c in on_disk.cells]
    i = next(i for i, c in enumerate(built.cells) if c.cell_type == "code" and on_disk.cells[i].outputs)
    built.cells[i].source += "\nprint('changed')"
    kept = _build.keep_outputs(built, on_disk)
    assert kept.cells[i].outputs == [] and kept.cells[i].execution_count is None
    others = [j for j, c in enumerate(built.cells) if c.cell_type == "code" and j != i]
    assert all(kept.cells[j].outputs == on_disk.cells[j].outputs for j in others)
    assert _build.cell_sources(built) != _build.cell_sources(on_disk)


# ------------------------------------------------------------------------------------ the install cell


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_find_jaxvdm_order(tmp_path, monkeypatch):
    """installed, then /content wheel, /content/jaxvdm checkout, Drive wheel, Drive checkout, then REPO_URL;
    otherwise one line naming what to upload or set."""
    monkeypatch.delenv("JAXVDM_REPO_URL", raising=False)
    content, drive = tmp_path / "content", tmp_path / "content" / "drive" / "MyDrive"
    drive.mkdir(parents=True)

    def find(url=""):
        return _install.find_jaxvdm(url, str(content), str(drive), installed="")

    with pytest.raises(ValueError) as e:
        find()
    msg = str(e.value)
    assert isinstance(e.value, _install.InstallError) and "\n" not in msg
    for says in ("jaxvdm-*.whl", "jaxvdm/", "pyproject.toml", str(content), str(drive), "REPO_URL"):
        assert says in msg, (says, msg)
    assert e.value._render_traceback_() == [f"InstallError: {msg}"]

    # folders that are not a jaxvdm checkout are passed over
    (content / "jaxvdm").mkdir()
    (drive / "jaxvdm-old").mkdir()
    (drive / "jaxvdm-other").mkdir()
    (drive / "jaxvdm-other" / "pyproject.toml").write_text('[project]\nname = "other"\n')
    with pytest.raises(_install.InstallError):
        find()

    assert find("https://example.org/jaxvdm.git") == ("url", "https://example.org/jaxvdm.git")
    monkeypatch.setenv("JAXVDM_REPO_URL", "https://example.org/env.git")
    assert find() == ("url", "https://example.org/env.git")
    assert find("https://example.org/form.git") == ("url", "https://example.org/form.git")  # the form field wins

    checkout = drive / "jaxvdm-main"
    checkout.mkdir()
    (checkout / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    assert find("https://example.org/jaxvdm.git") == ("checkout", str(checkout))
    drive_wheel = drive / "jaxvdm-0.1.0-py3-none-any.whl"
    drive_wheel.write_bytes(b"")
    assert find() == ("wheel", str(drive_wheel))
    (content / "jaxvdm" / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    assert find() == ("checkout", str(content / "jaxvdm"))
    old, new = content / "jaxvdm-0.0.9-py3-none-any.whl", content / "jaxvdm-0.1.0-py3-none-any.whl"
    old.write_bytes(b"")
    new.write_bytes(b"")
    os.utime(old, (1e9, 1e9))  # the newest upload wins
    assert find() == ("wheel", str(new))
    assert _install.find_jaxvdm("", str(content), str(drive), installed="/site/jaxvdm") == ("installed", "/site/jaxvdm")
    kind, where = _install.find_jaxvdm("", str(content), str(drive))  # this environment has jaxvdm installed
    assert kind == "installed" and (Path(where) / "__init__.py").is_file()


def test_pip_arguments_use_the_packages_own_extras(tmp_path):
    """Every source becomes one `jaxvdm[EXTRA] @ URL` requirement with the runtime's extra of pyproject.toml; an
    installed jaxvdm on a TPU gets its tpu extra's requirement, inside the supported JAX range."""
    extras = _pyproject()["optional-dependencies"]
    expected_extra = {"tpu": {"tpu"}, "gpu": {"cuda"}, "cpu": set()}
    assert {"tpu", "cuda"} <= set(extras)
    wheel = tmp_path / "jaxvdm-0.1.0-py3-none-any.whl"
    for accel, extra in expected_extra.items():
        for kind, where, url in [("wheel", str(wheel), wheel.as_uri()), ("checkout", str(tmp_path), tmp_path.as_uri()),
                                 ("url", "https://example.org/jaxvdm.git", "git+https://example.org/jaxvdm.git"),
                                 ("url", "git+ssh://git@example.org/jaxvdm.git", "git+ssh://git@example.org/jaxvdm.git"),
                                 ("url", "https://example.org/jaxvdm-0.1.0-py3-none-any.whl",
                                  "https://example.org/jaxvdm-0.1.0-py3-none-any.whl")]:
            (arg,) = _install.pip_install_args(kind, where, accel)
            req = requirements.Requirement(arg)
            assert (req.name, req.extras, req.url) == ("jaxvdm", extra, url), (accel, kind, arg)
    # an installed jaxvdm: the extra's requirements from its metadata; nothing to install on CPU
    assert _install.pip_install_args("installed", "", "cpu") == []
    (tpu,) = _install.pip_install_args("installed", "", "tpu")
    (tpu_extra,) = extras["tpu"]
    jax_range = next(requirements.Requirement(d) for d in _pyproject()["dependencies"] if d.startswith("jax>="))
    req = requirements.Requirement(tpu)
    assert req.name == "jax" and req.extras == {"tpu"}
    assert req.specifier == requirements.Requirement(tpu_extra).specifier
    assert req.specifier == jax_range.specifier  # the TPU build inside jaxvdm's supported range
    assert "0.10.2" in req.specifier and "0.11.2" in req.specifier and "0.12.0" not in req.specifier
    assert _install.pip_install_args("installed", "", "gpu", requires=['jax[cuda13]<0.12; extra == "cuda"',
                                                                     'numpy; extra == "test"']) == ["jax[cuda13]<0.12"]
    with pytest.raises(ValueError, match="unknown jaxvdm source kind"):
        _install.pip_install_args("zip", "", "cpu")


def test_runtime_accelerator_and_install_calls(tmp_path, monkeypatch):
    """TPU and GPU runtimes are recognised before JAX is imported; install_jaxvdm runs pip once with what
    pip_install_args says, and a failing pip is one InstallError line."""
    none = lambda pattern: []  # noqa: E731
    assert _install.runtime_accelerator({}, none, lambda _: None) == "cpu"
    assert _install.runtime_accelerator({}, none, lambda _: "/usr/bin/nvidia-smi") == "gpu"
    assert _install.runtime_accelerator({"TPU_ACCELERATOR_TYPE": "v5litepod-8"}, none, lambda _: None) == "tpu"
    vfio = lambda pattern: ["/dev/vfio/0"] if pattern.startswith("/dev/vfio") else []  # noqa: E731
    assert _install.runtime_accelerator({}, vfio, lambda _: "/usr/bin/nvidia-smi") == "tpu"

    calls = []
    monkeypatch.setattr(_install, "runtime_accelerator", lambda: "tpu")
    wheel = tmp_path / "jaxvdm-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    line = _install.install_jaxvdm("", str(tmp_path), str(tmp_path / "drive"), installed="", run=calls.append)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", f"jaxvdm[tpu] @ {wheel.as_uri()}"]]
    assert "\n" not in line and "TPU runtime" in line and wheel.name in line
    calls.clear()
    line = _install.install_jaxvdm("", str(tmp_path), str(tmp_path / "drive"), run=calls.append)  # installed
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", *_install.pip_install_args("installed", "", "tpu")]]
    monkeypatch.setattr(_install, "runtime_accelerator", lambda: "cpu")
    calls.clear()
    assert _install.install_jaxvdm("", str(tmp_path), str(tmp_path / "drive"), run=calls.append) == \
        "jaxvdm already installed (CPU runtime)" and calls == []

    def failing_pip(cmd):
        raise subprocess.CalledProcessError(1, cmd)

    with pytest.raises(_install.InstallError, match=r"pip install jaxvdm @ file://.* failed \(exit 1\)"):
        _install.install_jaxvdm("", str(tmp_path), str(tmp_path / "drive"), installed="", run=failing_pip)


def test_install_cell_stops_with_one_line_in_a_kernel(tmp_path, kernel_tmp):
    """The notebooks' install cell, run in a kernel where nothing can be found, shows one line (no traceback)
    and stops the notebook there."""
    cell = next(c for c in _build.build()["quickstart"].cells if c.cell_type == "code")
    call = "print(install_jaxvdm(REPO_URL))"
    assert cell.source.endswith(call)
    nb = nbformat.v4.new_notebook()
    empty = tmp_path / "content"
    empty.mkdir()
    nb.cells = [nbformat.v4.new_code_cell(cell.source.replace(call, f"print(install_jaxvdm(REPO_URL, {str(empty)!r}, "
                                                                      f"{str(empty / 'drive')!r}, installed=''))")),
                nbformat.v4.new_code_cell("print('the next cell ran')")]
    with pytest.raises(nbclient.exceptions.CellExecutionError):
        _build.execute(nb, dict(kernel_tmp[1], JAXVDM_REPO_URL=""), tmp_path, 60)
    (error,) = nb.cells[0].outputs
    assert error.output_type == "error" and error.ename == "InstallError"
    assert len(error.traceback) == 1 and error.traceback[0].startswith("InstallError: jaxvdm not found: upload")
    assert nb.cells[1].outputs == []


# ------------------------------------------------------------------------------------ the notebooks


def test_quickstart(runs):
    text, cwd = notebook_text(runs, "quickstart")
    assert "video shape (8, 32, 32, 3)" in text  # fast mode: 8 frames of 32x32
    assert (cwd / "quickstart.gif").stat().st_size > 0
    # LP and ParaStep ran on a mesh of all 8 devices and were compared with the exact run: approximations
    assert "lp+cfg on cfg=2,lp=4" in text and "parastep+cfg on cfg=2,step=2" in text
    for label in ("LP", "ParaStep"):
        psnr = _float(rf"\n{label}: PSNR ([\d.]+) dB", "\n" + text)
        latent = _float(rf"\n{label}: .*max latent error ([\d.e+-]+);", "\n" + text)
        assert 5.0 < psnr < 200.0 and latent > 1e-4, (label, psnr, latent)


def test_strategies(runs):
    text, _ = notebook_text(runs, "strategies")
    assert "8 CPU device(s) for the meshes below, attention='xla'" in text
    meshes = dict(re.findall(r"^(\S+) on (\S+)\s+exact=", text, re.M))
    # every mesh is built from all 8 devices where the strategy's axis can take them
    assert meshes == {"cfg": "cfg=2", "ulysses": "sp=8", "ring": "sp=8", "fsdp": "fsdp=8", "cfg+ulysses": "cfg=2,sp=4",
                      "lp": "lp=8", "parastep": "step=2", "dualparal": "stage=2"}, meshes
    rows = dict(re.findall(r"^(\S+)\s+\S+\s+exact=(True|False)\s", text, re.M))
    assert set(rows) == {"single", "cfg", "ulysses", "ring", "fsdp", "cfg+ulysses", "lp", "parastep", "dualparal"}
    assert {s for s, e in rows.items() if e == "True"} == {"single", "cfg", "ulysses", "ring", "fsdp", "cfg+ulysses"}
    worst = _float(r"max latent error vs single = ([\d.e+-]+)", text)
    assert worst < 1e-4
    comm = {s: float(b) for s, b in re.findall(r"^(\S+)\s.*comm_per_step=(\d+)", text, re.M)}
    assert comm["single"] == 0 and all(comm[s] > 0 for s in comm if s != "single")
    # LP moves only the blended latent prediction; Ulysses moves activations inside every layer
    assert comm["lp"] < comm["ulysses"]
    err = {s: float(e) for s, e in re.findall(r"^(\S+)\s.*max_latent_error=([\d.e+-]+)", text, re.M)}
    assert all(err[s] > 1e-3 for s in ("lp", "parastep", "dualparal"))


def test_profiling(runs):
    text, _ = notebook_text(runs, "profiling")  # also: its temporary folder was removed
    assert "trace recorded: True" in text
    phases = re.search(r"phases: \[(.*)\]", text).group(1)
    assert "'model_forward'" in phases and "'cfg_combine'" in phases
    assert re.search(r"collective kinds \(cfg\+ulysses\): \[.*'all-to-all'.*\]", text)
    assert re.search(r"collective kinds \(lp\): \['all-reduce'\]", text)
    assert "time per phase" in text and "perfetto_trace.json.gz" in text
    assert "removed the temporary folder: True" in text


def test_wan(runs):
    text, cwd = notebook_text(runs, "wan")  # also: the tiny checkpoint folder was removed
    # parameter counts computed from the presets' tensor lists
    assert re.search(r"wan2\.1-t2v-1\.3b DiT\s+1,418,996,800", text)
    assert re.search(r"wan2\.1-t2v-14b DiT\s+14,288,491,584", text)
    # the recommendation table: every device type x model size, and every recommended layout's estimate
    # within 90 % of the device's memory; 14B weights (26.6 GiB in bf16) never on one 16 GiB device
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and " × " in line and not line.startswith("| hardware")]
    assert len(rows) == 10 * 3 and {r[2] for r in rows} == {"1.3B 480p", "14B 720p", "14B 480p"}
    for hw, devices, size, strategy, _mesh, est, _text_on_device in rows:
        n, gib = (float(x) for x in devices.split(" × "))
        if strategy != "does not fit":
            assert float(est) <= 0.9 * gib, (hw, size, est)
        if size.startswith("14B") and n == 1 and gib <= 16:
            assert strategy == "does not fit", (hw, size)
    # the tiny diffusers-format folder was loaded and generated with on the recommended mesh, through the VAE
    assert "strategy cfg+ulysses on {'cfg': 2, 'sp': 4}" in text
    assert "video (5, 32, 32, 3) latents (1, 16, 2, 4, 4)" in text
    assert (cwd / "wan.mp4").stat().st_size > 0
    assert not math.isnan(_float(r"denoise ([\d.]+) s", text))
    assert "removed the tiny checkpoint folder: True" in text
