"""Builds the Colab notebooks in this folder from their cell sources, and runs them.

    python colab/_build.py            # writes the notebooks; a cell whose source is unchanged keeps its outputs
    python colab/_build.py --execute  # writes them and runs them on CPU in fast mode, saving the outputs
    python colab/_build.py --execute wan  # runs only the named notebooks (the others keep their outputs)
    python colab/_build.py --check    # exits 1 if a committed notebook's cell sources differ from these

Edit the cells (``_quickstart.py``, ``_strategies.py``, ``_profiling.py``, ``_wan.py``; ``_cells.py`` and
``_install.py`` for what they share), never the .ipynb files. The committed notebooks carry the outputs of a
CPU run in fast mode (``--execute``: 8 simulated CPU devices, a few denoising steps, no downloads), so a reader
sees what each produces; ``--check`` compares cell sources only, so a rerun's different timings never make CI
red. Cell ids are ``<notebook>-<index>``, stable across builds. The first code cell of every notebook is
``colab/_install.py`` under a Colab form field (``REPO_URL``). ``tests/test_notebooks.py`` executes every
notebook the same way (:func:`execute`) and checks what each prints.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbformat import v4

import _cells
import _profiling
import _quickstart
import _strategies
import _wan

HERE = _cells.HERE
SAVED_OUTPUTS = _cells.SAVED_OUTPUTS
TEMP_PREFIXES = ("jaxvdm-profile-", "tiny-wan-", "spm-")  # the notebooks' temporary folders (random names)
NOTEBOOKS = {"quickstart": _quickstart.CELLS, "strategies": _strategies.CELLS, "profiling": _profiling.CELLS,
             "wan": _wan.CELLS}


def build() -> dict[str, nbformat.NotebookNode]:
    """The notebooks from the cell sources, without outputs, with cell ids ``<notebook>-<index>``.

    The first markdown cell of each gets :data:`SAVED_OUTPUTS`, the line saying how its saved outputs were made."""
    out = {}
    for name, cells in NOTEBOOKS.items():
        nb = v4.new_notebook()
        nb.metadata = {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
            "colab": {"provenance": [], "toc_visible": True},
        }
        for i, (kind, source) in enumerate(cells):
            if i == 0 and kind == "markdown":
                source = f"{source}\n\n*{SAVED_OUTPUTS}*"
            cell = v4.new_markdown_cell(source) if kind == "markdown" else v4.new_code_cell(source)
            cell.id = f"{name}-{i:02d}"
            nb.cells.append(cell)
        nbformat.validate(nb)
        out[name] = nb
    return out


def cell_sources(nb) -> list[tuple[str, str, str]]:
    """``[(id, cell_type, source)]``: what ``--check`` compares (outputs and metadata are not compared)."""
    return [(c.get("id", ""), c.cell_type, c.source) for c in nb.cells]


def keep_outputs(new, old):
    """``new`` with the outputs of ``old``'s cells whose id and source are unchanged (a copy)."""
    new = copy.deepcopy(new)
    before = {c.get("id"): c for c in old.cells if c.cell_type == "code"}
    for cell in new.cells:
        prev = before.get(cell.get("id"))
        if cell.cell_type == "code" and prev is not None and prev.source == cell.source:
            cell.outputs, cell.execution_count = prev.outputs, prev.execution_count
    return new


def fast_env(tmp: Path, cache: Path | None = None) -> dict[str, str]:
    """The environment a notebook runs in on CPU in fast mode: 8 simulated devices, no downloads, no progress
    bars, ``tmp`` as its temporary directory (``TMPDIR``, so that what a notebook leaves behind shows there and
    nowhere else) and ``cache`` (default ``tmp/xla_cache``) as its compilation cache."""
    env = dict(os.environ)
    cache = tmp / "xla_cache" if cache is None else cache
    cache.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    env.update(
        JAXVDM_NOTEBOOK_FAST="1",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAXVDM_PROGRESS="0",
        JAXVDM_CACHE_DIR=str(cache),
        TMPDIR=str(tmp),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        JUPYTER_PLATFORM_DIRS="1",
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    return env


def execute(nb, env: dict, cwd: Path, timeout_s: float = 600):
    """Runs ``nb`` top to bottom in a fresh ``python3`` kernel in ``cwd``, in place (outputs, execution counts);
    returns it. Raises ``nbclient.exceptions.CellExecutionError`` (with the traceback) if a cell fails, or
    ``CellTimeoutError`` once the whole run passes ``timeout_s``."""
    import time

    import nbclient

    deadline = time.monotonic() + timeout_s
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}, startup_timeout=120,
        record_timing=False, timeout_func=lambda cell: max(1, int(deadline - time.monotonic())))
    client.execute(env=env)
    return nb


def output_text(nb) -> str:
    """Everything the executed ``nb`` printed or displayed as text (streams, ``text/plain``, errors), joined."""
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                texts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                texts.append(out.data.get("text/plain", ""))
            elif out.output_type == "error":
                texts.append(f"{out.ename}: {out.evalue}")
    return "\n".join(texts)


def _leak(nb, paths) -> str | None:
    """The first output line of ``nb`` that shows one of ``paths`` (temporary or local folders), or None."""
    for line in output_text(nb).splitlines():
        if any(p in line for p in paths):
            return line
    return None


def _execute_all(built: dict) -> dict:
    """``built`` executed on CPU in fast mode, each in a fresh kernel and working folder, sharing one cache.

    Raises SystemExit naming the notebook and line if an output shows the run's temporary folder, a notebook's
    temporary folder name or the repository's path (outputs are committed: they must not depend on where or
    when they were made)."""
    done = {}
    with tempfile.TemporaryDirectory(prefix="nb-execute-") as tmp:
        env = fast_env(Path(tmp))
        for name, nb in built.items():
            cwd = Path(tmp) / name
            cwd.mkdir()
            nb = execute(copy.deepcopy(nb), env, cwd)
            leak = _leak(nb, (tmp, str(HERE.parent), "/tmp/", *TEMP_PREFIXES))
            if leak:
                raise SystemExit(f"{name}: an output shows a temporary or local path; print paths relative to "
                                 f"their folder: {leak}")
            done[name] = nb
            print(f"executed {name}")
    return done


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags = [a for a in argv if a.startswith("--")]
    names = [a for a in argv if not a.startswith("--")]
    if len(flags) > 1 or set(flags) - {"--check", "--execute"} or (names and flags != ["--execute"]) \
            or set(names) - set(NOTEBOOKS):
        print(__doc__)
        return 2
    built = build()
    if "--check" in flags:
        stale = [f"{name}.ipynb" for name, nb in built.items() if not (HERE / f"{name}.ipynb").exists()
                 or cell_sources(nbformat.read(HERE / f"{name}.ipynb", as_version=4)) != cell_sources(nb)]
        if stale:
            print("cell sources out of date (run python colab/_build.py --execute):", ", ".join(stale))
            return 1
        return 0
    run = [n for n in built if not names or n in names] if "--execute" in flags else []
    executed = _execute_all({n: built[n] for n in run})
    for name, nb in built.items():
        path = HERE / f"{name}.ipynb"
        if name in executed:
            nb = executed[name]
        elif path.exists():
            nb = keep_outputs(nb, nbformat.read(path, as_version=4))
        path.write_text(nbformat.writes(nb) + "\n")
        print("wrote", path.relative_to(HERE.parent), f"({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
