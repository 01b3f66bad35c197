"""The collectives of a compiled program and the bytes each moves per device.

Byte conventions (one execution, per device, ring / pairwise algorithms)
------------------------------------------------------------------------
``n`` is the size of the device's replica group; a device in a group of one moves nothing.

==================  ===============================  ==========================================
kind                size used                         bytes sent (= bytes received) per device
==================  ===============================  ==========================================
all-reduce          S = operand bytes (= result)      2 (n-1)/n * S   (reduce-scatter + all-gather)
all-gather          R = result bytes (gathered)       (n-1)/n * R
reduce-scatter      O = operand bytes (unscattered)   (n-1)/n * O
all-to-all          S = operand bytes on one device   (n-1)/n * S     (its own block stays)
collective-permute  S = operand bytes                 S sent by each source, S received by each
                                                      target; self pairs (i, i) move nothing
==================  ===============================  ==========================================

Sizes are sums over all operands / results of a multi-operand (tuple-shaped) collective, e.g. a
combined all-reduce of several arrays or the tuple form of all-to-all. Byte sizes use the element
width of the dtype (``bf16`` 2, ``f32`` 4, sub-byte types packed); dynamic dimensions ``<=N`` count
at their bound ``N``.

"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from jaxvdm.sharding.comm.hlo import (ArrayShape, _Computation, _computation_runs, _flatten_shape, _Instr, _ints,
                                      _parse_module, _parse_pairs, _Runs, parse_replica_groups)

__all__ = ["KINDS", "Collective", "collectives_from_hlo"]

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# Communicating opcodes this module does not account for: listed in ``Report.unaccounted``.
_OTHER_COMM = ("send", "recv", "collective-broadcast", "ragged-all-to-all")

# ----------------------------------------------------------------------------------------------
# collectives
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of a compiled program (an async start/done pair is one collective).

    ``operand_shapes`` / ``result_shapes`` are per device (tuple-shaped collectives flattened).
    ``replica_groups`` is ``None`` when the HLO gives ``{}`` (all devices in one group).
    ``trip_count`` is how many times it runs per execution of the program (product of the trip
    counts of the enclosing ``while`` loops; 1 outside loops), ``None`` if a loop's trip count is
    unknown; ``executions`` is then a lower bound that counts unknown loops once.
    """

    kind: str
    name: str
    opcode: str
    computation: str
    operand_shapes: tuple[ArrayShape, ...]
    result_shapes: tuple[ArrayShape, ...]
    replica_groups: tuple[tuple[int, ...], ...] | None
    source_target_pairs: tuple[tuple[int, int], ...] | None
    channel_id: int | None
    dimensions: tuple[int, ...] | None
    trip_count: int | None
    executions: int
    loops: tuple[tuple[str, int | None], ...] = ()
    in_conditional: bool = False
    op_name: str = ""

    @property
    def is_async(self) -> bool:
        """True when read from a ``-start`` opcode (its ``-done`` is not counted again)."""
        return self.opcode != self.kind

    @property
    def trip_count_known(self) -> bool:
        return self.trip_count is not None

    @property
    def operand_bytes(self) -> int:
        return sum(s.nbytes for s in self.operand_shapes)

    @property
    def result_bytes(self) -> int:
        return sum(s.nbytes for s in self.result_shapes)

    def groups(self, num_devices: int) -> tuple[tuple[int, ...], ...]:
        """The replica groups with ``{}`` expanded to one group of all ``num_devices`` devices."""
        if self.kind == "collective-permute":
            return ()
        return self.replica_groups if self.replica_groups is not None else (tuple(range(num_devices)),)

    def group_sizes(self, num_devices: int) -> tuple[int, ...]:
        """Distinct replica-group sizes, ascending (``()`` for collective-permute)."""
        return tuple(sorted({len(g) for g in self.groups(num_devices)}))

    def traffic(self, num_devices: int) -> tuple[np.ndarray, np.ndarray]:
        """Bytes (sent, received) by each device in ONE execution, float64 arrays of shape
        ``(num_devices,)``, by the conventions of this module's docstring."""
        sent = np.zeros(num_devices)
        recv = np.zeros(num_devices)

        def check(d):
            if not 0 <= d < num_devices:
                raise ValueError(f"{self.name}: device id {d} out of range for num_devices={num_devices}; "
                                 "pass the program's device count (num_partitions * replica_count)")

        if self.kind == "collective-permute":
            s = self.operand_bytes
            for a, b in self.source_target_pairs or ():
                check(a), check(b)
                if a != b:
                    sent[a] += s
                    recv[b] += s
            return sent, recv
        base = {"all-reduce": 2 * self.operand_bytes, "all-gather": self.result_bytes,
                "reduce-scatter": self.operand_bytes, "all-to-all": self.operand_bytes}[self.kind]
        for g in self.groups(num_devices):
            n = len(g)
            for d in g:
                check(d)
                sent[d] += base * (n - 1) / n
        recv[:] = sent
        return sent, recv

    def to_dict(self) -> dict:
        return {
            "kind": self.kind, "name": self.name, "opcode": self.opcode, "computation": self.computation,
            "operand_shapes": [str(s) for s in self.operand_shapes],
            "result_shapes": [str(s) for s in self.result_shapes],
            "operand_bytes": self.operand_bytes, "result_bytes": self.result_bytes,
            "replica_groups": None if self.replica_groups is None else [list(g) for g in self.replica_groups],
            "source_target_pairs": None if self.source_target_pairs is None
            else [list(p) for p in self.source_target_pairs],
            "channel_id": self.channel_id, "trip_count": self.trip_count, "executions": self.executions,
            "loops": [list(lp) for lp in self.loops], "in_conditional": self.in_conditional,
            "op_name": self.op_name,
        }


def _kind_of(opcode: str) -> str | None:
    if opcode in KINDS:
        return opcode
    if opcode.endswith("-start") and opcode[: -len("-start")] in KINDS:
        return opcode[: -len("-start")]
    return None


def _operand_shapes(comp: _Computation, ins: _Instr) -> list[ArrayShape] | None:
    out: list[ArrayShape] = []
    for name, inline in zip(ins.operands, ins.inline_shapes):
        if inline is not None:
            out.extend(_flatten_shape(inline))
        elif name in comp.instrs:
            out.extend(_flatten_shape(comp.instrs[name].shape))
        else:
            return None
    return out


def collectives_from_hlo(hlo_text: str) -> list[Collective]:
    """Every collective of an optimised HLO module (``jitted.lower(*args).compile().as_text()``).

    Reads ``all-reduce``, ``all-gather``, ``reduce-scatter``, ``all-to-all`` and
    ``collective-permute``, synchronous or as async ``-start``/``-done`` pairs (counted once, at the
    start), in any computation reachable from ``ENTRY`` (while bodies, async wrappers, calls,
    conditional branches), each with its ``trip_count`` (see the module docstring). Order: as in
    the text. Raises ``ValueError`` on text it cannot read as HLO.
    """
    if not isinstance(hlo_text, str):
        raise ValueError(f"expected HLO module text (str), got {type(hlo_text).__name__}")
    if "stablehlo." in hlo_text or "func.func" in hlo_text:
        raise ValueError("this is StableHLO (lowered.as_text()); pass the optimised HLO module text from "
                         "jitted.lower(*args).compile().as_text()")
    comps = _parse_module(hlo_text)
    if not comps and any(k in hlo_text for k in KINDS):
        raise ValueError("no HLO computations found in the text; pass the module text from compiled.as_text()")
    runs = _computation_runs(comps)
    found: list[Collective] = []
    for comp in comps.values():
        run = runs.get(comp.name, _Runs(count=1))
        # result shapes of async starts, from their matching -done
        done_shape = {}
        for ins in comp.instrs.values():
            if ins.opcode.endswith("-done") and ins.operands:
                done_shape[ins.operands[0]] = ins.shape
        for ins in comp.instrs.values():
            kind = _kind_of(ins.opcode)
            if kind is None:
                continue
            is_async = ins.opcode != kind
            ops = _operand_shapes(comp, ins)
            if is_async and kind != "all-reduce":
                if ins.name in done_shape:
                    result = _flatten_shape(done_shape[ins.name])
                elif isinstance(ins.shape, tuple) and len(ins.shape) >= 2:
                    result = _flatten_shape(ins.shape[1])
                else:
                    result = _flatten_shape(ins.shape)
                if ops is None and isinstance(ins.shape, tuple) and ins.shape:
                    ops = _flatten_shape(ins.shape[0])
            else:
                result = _flatten_shape(done_shape.get(ins.name, ins.shape))
            if ops is None:
                ops = list(result) if kind in ("all-reduce", "collective-permute") else []
                if not ops:
                    raise ValueError(f"{ins.name}: cannot find the shapes of operands {ins.operands}")
            rg = ins.attrs.get("replica_groups")
            stp = ins.attrs.get("source_target_pairs")
            dims = ins.attrs.get("dimensions")
            ch = ins.attrs.get("channel_id")
            meta = re.search(r'op_name="((?:[^"\\]|\\.)*)"', ins.attrs.get("metadata", ""))
            found.append(Collective(
                kind=kind, name=ins.name, opcode=ins.opcode, computation=comp.name,
                operand_shapes=tuple(ops), result_shapes=tuple(result),
                replica_groups=parse_replica_groups(rg) if rg is not None else None,
                source_target_pairs=_parse_pairs(stp) if stp is not None else None,
                channel_id=int(ch) if ch is not None and ch.strip().isdigit() else None,
                dimensions=tuple(_ints(dims)) if dims is not None else None,
                trip_count=run.count if run.known else None, executions=run.count,
                loops=run.loops, in_conditional=run.conditional, op_name=meta.group(1) if meta else "",
            ))
    return found


def _unaccounted(hlo_text: str) -> list[str]:
    ops = []
    for comp in _parse_module(hlo_text).values():
        for ins in comp.instrs.values():
            base = ins.opcode.removesuffix("-start").removesuffix("-done")
            if base in _OTHER_COMM and not ins.opcode.endswith("-done"):
                ops.append(f"{ins.opcode} {ins.name}")
    return ops


