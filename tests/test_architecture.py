"""The package's structure, checked from its source: layers, cycles, sizes, and one registry.

* ``jaxvdm.sharding`` (the strategies) imports nothing from the surface package (``jaxvdm.<x>`` other
  than ``models``, ``sharding`` and ``configs``) and never names ``Pipeline``;
* ``jaxvdm.models`` imports nothing from ``jaxvdm.sharding``;
* the import graph (module-level and function-level imports alike) has no cycle;
* no source file under ``jaxvdm/``, ``models/`` or ``sharding/`` is longer than 800 lines;
* outside the registry and the strategies, no code compares against a strategy's name.
"""

import ast
from pathlib import Path

import pytest

from jaxvdm.sharding.registry import STRATEGIES

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"jaxvdm": "jaxvdm", "models": "jaxvdm.models", "sharding": "jaxvdm.sharding", "configs": "jaxvdm.configs"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, prefix in PACKAGES.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = f.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([prefix, *parts])] = f
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every jaxvdm module ``name`` imports, anywhere in the file (lazy imports included). The implicit
    import of a module's parent packages is not an edge (Python runs them first, whatever they import)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:  # a submodule, or a name defined by the package's __init__
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _is_surface(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "jaxvdm" and (len(parts) == 1 or parts[1] not in ("models", "sharding", "configs"))


def test_strategies_never_reach_into_the_surface():
    offenders = {m: sorted(d for d in deps if _is_surface(d)) for m, deps in GRAPH.items()
                 if m.startswith("jaxvdm.sharding")}
    assert not {m: d for m, d in offenders.items() if d}, offenders
    for name, path in MODULES.items():
        if name.startswith("jaxvdm.sharding"):
            names = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}
            names |= {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
            assert "Pipeline" not in names, f"{name} touches a Pipeline"


def test_models_never_import_the_strategies():
    offenders = {m: sorted(d for d in deps if d.startswith("jaxvdm.sharding")) for m, deps in GRAPH.items()
                 if m.startswith("jaxvdm.models")}
    assert not {m: d for m, d in offenders.items() if d}, offenders


def test_no_import_cycles():
    """Tarjan's strongly connected components over the import graph: every component is one module."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_source_file_over_800_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 800}
    assert not long, long


@pytest.mark.parametrize("module", ["jaxvdm.pipeline", "jaxvdm.cli", "jaxvdm.bench.cli", "jaxvdm.bench.units",
                                    "jaxvdm.bench.measure", "jaxvdm.bench.report", "jaxvdm.sharding.comm.command"])
def test_surface_never_picks_a_strategy_by_name(module):
    """The surface resolves a plan and calls what its registry entry holds: no ``== "parastep"`` anywhere."""
    tree = ast.parse(MODULES[module].read_text())
    names = set(STRATEGIES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            literal = {o.value for o in operands if isinstance(o, ast.Constant) and isinstance(o.value, str)}
            assert not literal & names, f"{module}:{node.lineno} compares against strategy {literal & names}"


def test_a_new_strategy_is_one_module_and_one_registry_row(monkeypatch, devices):
    """The toy strategy of ``tests/toy_strategy.py``, registered with one row, runs through
    ``jaxvdm.generate`` (equal to one device), composes with cfg, is planned by ``jaxvdm bench`` and
    measured by ``jaxvdm comm``'s program, with no other file edited."""
    import numpy as np
    import toy_strategy

    import jaxvdm
    from jaxvdm.bench.units import plan_units
    from jaxvdm.sharding import comm
    from jaxvdm.sharding.mesh import make_mesh
    from jaxvdm.pipeline import get_pipeline
    from jaxvdm.models.schedulers import UniPC
    from jaxvdm.sharding.registry import StrategySpec, resolve

    monkeypatch.setitem(STRATEGIES, "twin", StrategySpec("twin", "twin", "loop", {}, True, "toy: every device "
                                                         "predicts, one psum averages", sample=toy_strategy.sample,
                                                         program=toy_strategy.program))
    kw = dict(steps=3, seed=1, decode=False)
    ref = jaxvdm.generate("a red circle moving left", **kw).latents
    out = jaxvdm.generate("a red circle moving left", mesh=make_mesh(twin=2), strategy="twin", **kw).latents
    both = jaxvdm.generate("a red circle moving left", mesh=make_mesh(cfg=2, twin=2), strategy="twin+cfg", **kw)
    np.testing.assert_allclose(out, ref, atol=1e-4)  # float32 rounding of the average, over 3 steps
    np.testing.assert_allclose(both.latents, ref, atol=1e-4)
    units, skipped = plan_units("twin", None, 8)
    assert [(u.name, u.mesh, u.reference) for u in units[1:]] == [
        ("twin on 1 device (e2e)", None, None), ("twin", {"twin": 8}, "twin on 1 device (e2e)")] and not skipped
    plan = resolve("twin", make_mesh(twin=2))
    model = get_pipeline(None).transformer
    prog = plan.program(model, plan, make_mesh(twin=2), ref.shape, (2, 12, 64), UniPC(3))
    rep = comm.report_of_hlo(prog.compiled.as_text())
    assert prog.runs == 3 and rep.per_kind["all-reduce"].count == 1
    assert rep.per_kind["all-reduce"].bytes_per_device == ref.size * 4  # 2 (n-1)/n * latent bytes, n = 2
