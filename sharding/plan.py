"""A strategy resolved against a mesh: :class:`Plan`, plain static data (hashable, so it keys caches).

:func:`jaxvdm.sharding.registry.resolve` builds plans; strategies read them. A plan says which mesh axis
plays which role (``cfg_axis``, ``sp_axis`` with ``sp_kind``, ``fsdp_axis``, ``lp_axis``, ``loop_axis``),
holds the options with their defaults filled in, and carries the functions of its strategy:
``sample`` (the denoising run) and ``program`` (one compiled unit on abstract inputs, for ``bench`` and
``comm``). A predict-transform plan carries the one-device loop's; a loop-strategy plan its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jaxvdm.sharding.mesh import format_mesh

__all__ = ["Plan"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """A resolved strategy. Fields:

    names: the strategy names, as written (``("cfg", "ulysses")``).
    mesh_axes: ``((axis, size), ...)`` of the mesh (empty without a mesh).
    cfg_axis, sp_axis, fsdp_axis, lp_axis, loop_axis: the mesh axis of each role (None: not used).
    sp_kind: ``"ulysses"`` or ``"ring"`` (with ``sp_axis``).
    loop: the loop strategy's name (None for predict transforms alone).
    options: ``((name, value), ...)`` sorted, every option of the named strategies.
    exact: whether every named strategy reproduces the single-device output (to float rounding).
    sample, program, forward_tokens: the strategy's sampler, abstract-program and per-device token count
      functions (see :class:`~jaxvdm.sharding.registry.StrategySpec`).
    """

    names: tuple[str, ...]
    mesh_axes: tuple[tuple[str, int], ...]
    cfg_axis: str | None = None
    sp_axis: str | None = None
    sp_kind: str | None = None
    fsdp_axis: str | None = None
    lp_axis: str | None = None
    loop: str | None = None
    loop_axis: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    exact: bool = True
    sample: Callable | None = dataclasses.field(default=None, compare=False, repr=False)
    program: Callable | None = dataclasses.field(default=None, compare=False, repr=False)
    forward_tokens: Callable | None = dataclasses.field(default=None, compare=False, repr=False)

    def option(self, name: str):
        """The value of option ``name`` (KeyError if no named strategy has it)."""
        return dict(self.options)[name]

    def size(self, axis: str | None) -> int:
        """The size of mesh ``axis`` (1 for None or an axis the mesh lacks)."""
        return dict(self.mesh_axes).get(axis, 1) if axis else 1

    def local(self) -> Plan:
        """The same plan with every mesh axis removed: its algorithm on one device."""
        return dataclasses.replace(self, mesh_axes=(), cfg_axis=None, sp_axis=None, sp_kind=None, fsdp_axis=None,
                                   lp_axis=None, loop_axis=None)

    def describe(self) -> str:
        """``"cfg+ulysses on cfg=2,sp=4"`` (the names alone without a mesh)."""
        return "+".join(self.names) + (f" on {format_mesh(dict(self.mesh_axes))}" if self.mesh_axes else "")
