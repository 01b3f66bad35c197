"""The plan of a ``jaxvdm bench`` run: which rows (units) to measure on which mesh, and which are skipped.

A predict-transform strategy gives a per-step row (``kind="step"``) against the one-device exact step
(``single``). A loop strategy gives an end-to-end row (``kind="e2e"``) against the same strategy on one
device, which runs its algorithm serially (ParaStep with N = 1 is the serial loop, DualParal on one
device its serial oracle), measured in the same invocation.
"""

from __future__ import annotations

import dataclasses
import math

from jaxvdm.sharding.mesh import format_mesh, mesh_order, parse_mesh_spec
from jaxvdm.sharding.registry import BASELINE, STRATEGIES, sized_axes, split_names

__all__ = ["Unit", "mesh_for", "plan_units", "reference_name"]


@dataclasses.dataclass
class Unit:
    """One row: ``kind`` "step" (one denoising step) or "e2e" (the whole schedule)."""

    name: str
    kind: str
    strategy: str
    mesh: dict | None
    reference: str | None = None
    precision: str = "bf16"


def reference_name(loop: str) -> str:
    """The row name of a loop strategy's one-device reference."""
    return f"{loop} on 1 device (e2e)"


def mesh_for(strategy: str, pool: dict[str, int], n_devices: int) -> tuple[dict[str, int] | None, str | None]:
    """The mesh axes of ``strategy``: sizes from ``pool`` (``--mesh``), a fixed-size axis at its size
    (``cfg`` = 2), and the one axis left unsized gets the remaining devices. Returns ``(axes, None)`` or
    ``(None, reason to skip)``."""
    sizes, free = sized_axes(strategy, pool)
    known = math.prod(sizes.values()) if sizes else 1
    if len(free) > 1:
        return None, f"give the sizes of axes {free} with --mesh (e.g. --mesh {free[0]}=2)"
    if free:
        rest = n_devices // known
        if rest < 2:
            return None, (f"axis {free[0]!r} would have size {rest}: needs at least {2 * known} devices, "
                          f"have {n_devices}")
        sizes[free[0]] = rest
    total = math.prod(sizes.values()) if sizes else 1
    if total > n_devices:
        return None, f"mesh {format_mesh(sizes)} needs {total} devices, have {n_devices}"
    return mesh_order(sizes), None


def plan_units(strategies: str, mesh: str | None, n_devices: int, *, baseline: bool = True,
               baseline_given: bool = False, precisions: tuple[str, ...] = ("bf16",)) -> tuple[list[Unit], list[dict]]:
    """The rows to measure for a comma-separated ``strategies`` list on ``n_devices`` devices, and the rows
    skipped (with their reasons). Each per-step strategy (``single`` included) gets a row per precision
    after the first, named ``"<strategy> (<precision>)"`` and measured against the bf16 ``single`` step."""
    pool = parse_mesh_spec(mesh) if mesh else {}
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    if not names:
        raise ValueError("--strategies is empty; e.g. --strategies single,cfg,ulysses")
    units: list[Unit] = []
    skipped: list[dict] = []
    if baseline and not baseline_given:
        units.append(Unit(BASELINE, "step", BASELINE, None))
        units.extend(Unit(f"{BASELINE} ({p})", "step", BASELINE, None, BASELINE, p) for p in precisions if p != "bf16")
    step_ref = BASELINE if (baseline or baseline_given) else None
    references = set()
    for s in names:
        parts = split_names(s)
        if parts == (BASELINE,):
            continue
        loop = next((p for p in parts if STRATEGIES[p].kind == "loop"), None)
        axes, why = mesh_for(s, pool, n_devices)
        if axes is None:
            skipped.append({"name": s, "strategy": s, "kind": "e2e" if loop else "step", "status": "skipped",
                            "reason": why})
            continue
        if loop is None:
            units.append(Unit(s, "step", s, axes, step_ref))
            units.extend(Unit(f"{s} ({p})", "step", s, axes, step_ref, p) for p in precisions if p != "bf16")
            continue
        ref = reference_name(loop)
        if ref not in references:
            units.append(Unit(ref, "e2e", loop, None))
            references.add(ref)
        units.append(Unit(s, "e2e", s, axes, ref))
    return units, skipped
