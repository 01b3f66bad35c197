"""Work of one compiled program per device, read from its optimised HLO with loop trips included.

``compiled.cost_analysis()`` counts a ``while`` body once (jaxvdm's transformer blocks are a ``lax.scan``
over layers, so it misses all layers but one) and counts nothing for custom calls (the Pallas splash
kernel is a ``tpu_custom_call``). :func:`hlo_cost` reads the same optimised HLO text as the
communication report and weighs every instruction by how often its computation runs (the trip counts of
:mod:`jaxvdm.sharding.comm.hlo`):

* ``matmul_flops`` -- ``2 * prod(result) * prod(contracted dims)`` of every ``dot`` and ``convolution``
  (inside fusions too), the same definition as the analytic
  :func:`~jaxvdm.models.wan.transformer.flops.dit_flops` (elementwise work is not counted);
* ``kernel_flops`` -- the Pallas splash attention kernels, ``4 * heads * Sq * Sk * Dh`` each (``QK^T`` and
  ``PV``), read from the kernel's operand shapes (padded lengths: the work the kernel does);
* ``hbm_bytes`` -- an estimate of HBM traffic: operands plus results of every top-level instruction
  (fusions, custom calls, copies, collectives, ...; not the instructions inside a fusion, which stay on
  chip), arrays the TPU layout places in on-chip memory (``S(n)`` memory spaces) excluded. A Pallas
  kernel's inner re-reads of K/V blocks are not seen (its operands count once): a lower bound for it.
"""

from __future__ import annotations

import dataclasses
import math
import re

from jaxvdm.sharding.comm.hlo import ArrayShape, _computation_runs, _flatten_shape, _parse_module

__all__ = ["HloCost", "hlo_cost"]

_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call",
               "after-all", "partition-id", "replica-id", "iota", "add-dependency", "opt-barrier"}
_SPLASH = re.compile(r"splash_mh?q?a_fwd")
_ON_CHIP = re.compile(r":[^{}]*S\((\d+)\)")


@dataclasses.dataclass(frozen=True)
class HloCost:
    """Per-device work of one run of a compiled program (see the module docstring).

    matmul_flops: dot/convolution FLOPs, loop trips included. kernel_flops: splash kernel FLOPs.
    hbm_bytes: estimated HBM bytes read and written. kernels: number of splash kernel launches.
    loops_known: False when some loop's trip count could not be read (that loop counted once).
    """

    matmul_flops: float
    kernel_flops: float
    hbm_bytes: float
    kernels: int
    loops_known: bool

    @property
    def flops(self) -> float:
        """matmul + kernel FLOPs."""
        return self.matmul_flops + self.kernel_flops

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"flops": self.flops}


def _shape_of(comp, name):
    ins = comp.instrs.get(name)
    return None if ins is None else ins.shape


def _operands(comp, ins) -> list:
    out = []
    for name, inline in zip(ins.operands, ins.inline_shapes):
        out.append(inline if inline is not None else _shape_of(comp, name))
    return out


def _conv_flops(ins, ops) -> float:
    """``2 * prod(result) * (input features x window taps)`` of a convolution. A window dim counts
    ``min(window, input size)`` taps: XLA TPU writes some batched matmuls as a convolution whose window
    spans a padded input of size 1 (``bf0_0oi->b0f``, ``window={size=12 pad=11_11}``), where each output
    sees one real input, not twelve."""
    labels = ins.attrs.get("dim_labels", "")
    m = re.fullmatch(r"([^_]+)_([^-]+)->(.+)", labels)
    if not m or len(ops) < 2 or not all(isinstance(o, ArrayShape) for o in ops[:2]) \
            or not isinstance(ins.shape, ArrayShape):
        return 0.0
    lhs_labels, rhs_labels = m.group(1), m.group(2)
    lhs, rhs = ops[0], ops[1]
    if len(rhs_labels) != len(rhs.dims) or len(lhs_labels) != len(lhs.dims):
        return 0.0
    lhs_size = dict(zip(lhs_labels, lhs.dims))
    taps = 1
    for lab, d in zip(rhs_labels, rhs.dims):
        if lab == "i":
            taps *= d
        elif lab.isdigit():
            taps *= min(d, lhs_size.get(lab, d))
    return 2.0 * ins.shape.size * taps  # a grouped convolution's kernel "i" dim is already per group


def _dot_flops(ins, ops) -> float:
    if not ops or not isinstance(ops[0], ArrayShape) or not isinstance(ins.shape, ArrayShape):
        return 0.0
    dims = [int(x) for x in re.findall(r"\d+", ins.attrs.get("lhs_contracting_dims", ""))]
    return 2.0 * ins.shape.size * math.prod(ops[0].dims[d] for d in dims)


def _splash_flops(ins, ops) -> float:
    """``4 * H * Sq * Sk * Dh`` from the kernel's q and k operands: the first two floating-point operands of
    rank >= 3 whose last dim is the output's head dim (the block-mask tables and segment ids are integers)."""
    outs = [s for s in _flatten_shape(ins.shape) if len(s.dims) >= 3]
    if not outs:
        return 0.0
    out = outs[-1]  # (m, l, o scratch of rank 2, then o [..., H, Sq, Dh], then lse when saved)
    out = next((s for s in outs if s.dims[-1] == out.dims[-1] and len(s.dims) >= 3), out)
    arrays = [s for s in (ops or []) if isinstance(s, ArrayShape) and len(s.dims) >= 3 and "f" in s.dtype]
    qk = [s for s in arrays if s.dims[-1] == out.dims[-1]][:2]
    if len(qk) < 2:
        return 0.0
    q, k = qk
    return 4.0 * math.prod(q.dims[:-1]) * k.dims[-2] * q.dims[-1]


def _hbm_bytes(shape) -> int:
    return sum(s.nbytes for s in _flatten_shape(shape)) if shape is not None else 0


def _on_chip(text: str) -> bool:
    m = _ON_CHIP.search(text)
    return bool(m) and m.group(1) != "0"


def hlo_cost(hlo_text: str) -> HloCost:
    """The :class:`HloCost` of an optimised HLO module (``compiled.as_text()``), per device."""
    comps = _parse_module(hlo_text)
    runs = _computation_runs(comps)
    fused = set()
    for comp in comps.values():
        for ins in comp.instrs.values():
            if ins.opcode == "fusion":
                fused.update(re.findall(r"%?([\w.\-]+)", ins.attrs.get("calls", "")))
    on_chip = _vmem_names(hlo_text)
    matmul = kernel = traffic = 0.0
    kernels, known = 0, True
    for comp in comps.values():
        run = runs.get(comp.name)
        if run is None or run.count == 0:
            continue
        known = known and run.known
        for ins in comp.instrs.values():
            ops = _operands(comp, ins)
            if ins.opcode == "convolution":
                matmul += run.count * _conv_flops(ins, ops)
            elif ins.opcode == "dot":
                matmul += run.count * _dot_flops(ins, ops)
            elif ins.opcode == "custom-call" and _SPLASH.search(ins.name):
                kernel += run.count * _splash_flops(ins, ops)
                kernels += run.count
            if comp.name in fused or ins.opcode in _NO_TRAFFIC or ins.opcode.endswith("-done"):
                continue
            moved = 0 if (comp.name, ins.name) in on_chip else _hbm_bytes(ins.shape)
            sliced = _sliced_params(comps, ins) if ins.opcode == "fusion" else {}
            for i, (name, shape) in enumerate(zip(ins.operands, ops)):
                if (comp.name, name) not in on_chip:
                    moved += sliced.get(i, _hbm_bytes(shape))
            traffic += run.count * moved
    return HloCost(matmul, kernel, traffic, kernels, known)


def _sliced_params(comps, fusion, depth: int = 0) -> dict[int, int]:
    """Operand index -> bytes actually read, for fusion operands that the fused computation only slices
    (a layer's weights cut out of the stacked ``[L, ...]`` array inside the scan: one layer is read),
    directly or through a nested fusion."""
    names = re.findall(r"%?([\w.\-]+)", fusion.attrs.get("calls", ""))
    body = comps.get(names[0]) if names else None
    if body is None or depth > 4:
        return {}
    params = {ins.name: int(ins.operands[0]) for ins in body.instrs.values()
              if ins.opcode == "parameter" and ins.operands and ins.operands[0].isdigit()}
    users: dict[str, list] = {}
    for ins in body.instrs.values():
        for pos, name in enumerate(ins.operands):
            if name in params:
                users.setdefault(name, []).append((ins, pos))
    out = {}
    for name, index in params.items():
        read = 0
        for u, pos in users.get(name, []):
            if u.opcode in ("dynamic-slice", "slice") and pos == 0:
                read += _hbm_bytes(u.shape)
            elif u.opcode == "fusion" and pos in (inner := _sliced_params(comps, u, depth + 1)):
                read += inner[pos]
            else:
                read = None
                break
        if read:
            out[index] = read
    return out


def _vmem_names(hlo_text: str) -> set:
    """``(computation, instruction)`` pairs whose result layout sits in an on-chip memory space."""
    out, comp = set(), None
    head = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
    instr = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)")
    for line in hlo_text.splitlines():
        if not line.startswith(" ") and line.rstrip().endswith("{") and not line.startswith("HloModule"):
            m = head.match(line)
            comp = m.group(1) if m else None
            continue
        m = instr.match(line)
        if m and comp is not None and _on_chip(m.group(2)):
            out.add((comp, m.group(1)))
    return out
