"""Reading optimised HLO text: shapes, replica groups, computations, and how often each computation runs.

Devices
-------
Device ids are the ids in the HLO's ``replica_groups`` / ``source_target_pairs``: SPMD partition ids,
i.e. positions in the compiled program's device assignment (for a jit over a ``Mesh``, the index in
``mesh.devices.flat``), not ``jax.Device.id``. ``num_devices`` is ``num_partitions * replica_count``.
An empty ``replica_groups={}`` means one group of all ``num_devices`` devices.

Loops and async pairs
---------------------
An asynchronous pair (``all-gather-start`` / ``all-gather-done``, ``collective-permute-start`` / ...,
including the ``async-start`` wrapper) is one collective, read from its ``-start``; its result shape
comes from the matching ``-done``. A collective inside a ``while`` body runs once per trip: its
``trip_count`` is the product of the trip counts of the enclosing loops (nested loops multiply), taken
from XLA's ``known_trip_count`` annotation or else inferred from the loop's induction variable
(constant start, constant step, compare against a constant in the condition). When a trip count
cannot be determined it is reported as unknown (``trip_count is None``) -- never guessed -- and
the totals count that loop once (a lower bound, flagged by ``trip_counts_known=False``). Collectives
inside a ``conditional`` branch are counted as if the branch ran (``in_conditional=True``).

What the compilers print (seen, not assumed)
--------------------------------------------
- XLA CPU (jax 0.10.2): synchronous collectives only; shard_map collectives carry explicit groups
  ``{{0,1,2,3},{4,5,6,7}}``, partitioner-inserted ones iota ``[4,2]<=[2,4]T(1,0)`` or mesh-axes
  ``mesh['axis_0'=2,...] {'axis_0'}`` groups; a psum of several arrays becomes one tuple-shaped
  all-reduce; all_to_all becomes the tuple form (one operand per peer); a bf16 all-reduce is done
  in f32 (converted around it), and that is what is counted.
- XLA GPU (jax 0.11.2): mesh-axes groups also for shard_map; async ``collective-permute-start`` /
  ``reduce-scatter-start`` with start shape ``((operands), result)``; all-reduce placed in a
  computation run by a ``fusion-start`` / ``fusion-done`` pair; array all_to_all with
  ``dimensions={d}``; while loops carry ``known_trip_count``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections import defaultdict
from typing import Any

import numpy as np

__all__ = ["ArrayShape", "parse_replica_groups", "num_devices_from_hlo"]

# ----------------------------------------------------------------------------------------------
# shapes
# ----------------------------------------------------------------------------------------------

_DTYPE_BITS = {
    "pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16,
    "s32": 32, "u32": 32, "s64": 64, "u64": 64, "f16": 16, "bf16": 16, "f32": 32, "f64": 64,
    "c64": 64, "c128": 128, "token": 0,
}


def _dtype_bits(dtype: str) -> int:
    if dtype in _DTYPE_BITS:
        return _DTYPE_BITS[dtype]
    m = re.match(r"f(\d+)e", dtype)  # f8e4m3fn, f8e5m2, f6e2m3fn, f4e2m1fn, f8e8m0fnu, ...
    if m:
        return int(m.group(1))
    raise ValueError(f"unknown HLO element type {dtype!r}: add its width to jaxvdm.sharding.comm._DTYPE_BITS")


@dataclasses.dataclass(frozen=True)
class ArrayShape:
    """One HLO array shape: element type (``"f32"``, ``"bf16"``, ...) and dimensions."""

    dtype: str
    dims: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.dims)

    @property
    def nbytes(self) -> int:
        """Bytes of the array (sub-byte element types packed, rounded up)."""
        return (self.size * _dtype_bits(self.dtype) + 7) // 8

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.dims))}]"


def _skip_balanced(text: str, i: int, open_ch: str, close_ch: str) -> int:
    """Index just past the bracket opened at ``text[i] == open_ch``."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c == open_ch:
            depth += 1
        elif c == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced {open_ch}{close_ch} in HLO text: {text[:200]!r}")


_ARRAY_RE = re.compile(r"([a-z][a-z0-9]*)\[([^\]]*)\]")


def _parse_shape(text: str, i: int = 0):
    """Parse one shape at ``text[i:]``: an :class:`ArrayShape` or a (nested) tuple of them.

    Layouts (``{1,0}``, ``{1,0:T(8,128)}``, ``{:S(2)}``) are skipped. Returns ``(shape, end_index)``.
    """
    while i < len(text) and text[i] == " ":
        i += 1
    if text.startswith("(", i):
        i += 1
        elems = []
        while True:
            while i < len(text) and text[i] == " ":
                i += 1
            if text.startswith(")", i):
                return tuple(elems), i + 1
            el, i = _parse_shape(text, i)
            elems.append(el)
            while i < len(text) and text[i] == " ":
                i += 1
            if text.startswith(",", i):
                i += 1
            elif not text.startswith(")", i):
                raise ValueError(f"cannot read tuple shape at {text[i:i + 80]!r}")
    m = _ARRAY_RE.match(text, i)
    if not m:
        raise ValueError(f"cannot read shape at {text[i:i + 80]!r}")
    dims = tuple(int(d.strip().lstrip("<=")) for d in m.group(2).split(",") if d.strip())
    i = m.end()
    if text.startswith("{", i):
        i = _skip_balanced(text, i, "{", "}")
    return ArrayShape(m.group(1), dims), i


def _flatten_shape(shape) -> list[ArrayShape]:
    if isinstance(shape, ArrayShape):
        return [] if shape.dtype == "token" else [shape]
    out: list[ArrayShape] = []
    for s in shape:
        out.extend(_flatten_shape(s))
    return out


# ----------------------------------------------------------------------------------------------
# replica groups
# ----------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(t) for t in re.findall(r"-?\d+", text)]


def _iota_array(dims: list[int], reshape: list[int] | None, perm: list[int] | None) -> np.ndarray:
    """``iota(prod(reshape)).reshape(reshape).transpose(perm).reshape(dims)``."""
    reshape = reshape if reshape else [math.prod(dims)]
    a = np.arange(math.prod(reshape)).reshape(reshape)
    if perm:
        a = a.transpose(perm)
    return a.reshape(dims)


def _parse_iota_list(text: str) -> np.ndarray:
    """``[2,4]<=[8]`` / ``[4,2]<=[2,4]T(1,0)`` / ``[2,4]T(1,0)`` -> the device array."""
    m = re.fullmatch(r"\s*\[([\d,\s]*)\]\s*(?:<=\s*\[([\d,\s]*)\])?\s*(?:T\(([\d,\s]*)\))?\s*", text)
    if not m:
        raise ValueError(f"cannot read iota device list {text!r}")
    dims, reshape, perm = (_ints(g) if g is not None else None for g in m.groups())
    if m.group(2) is None and perm:  # "[2,4]T(1,0)": reshape to dims, transpose, flatten
        return np.arange(math.prod(dims)).reshape(dims).transpose(perm).reshape(-1)
    return _iota_array(dims, reshape, perm)


def _mesh_groups(text: str) -> list[list[int]]:
    """Groups of the mesh-axes form ``mesh['a'=2,'b'=4][, device_ids=(...)] {'a'[,'b':(1)2]}``.

    The mesh's device array (iota, or ``device_ids``) is reshaped to the axis sizes, each named
    sub-axis ``x:(pre)size`` splits axis ``x`` into ``[pre, size, rest]``; the axes not named are
    kept major, the named axes (in the order given) become the minor, grouped dimensions.
    """
    m = re.fullmatch(r"\s*mesh\[([^\]]*)\]\s*(?:,\s*device_ids\s*=\s*\((.*)\))?\s*\{(.*)\}\s*", text, re.S)
    if not m:
        raise ValueError(f"cannot read mesh-axes replica groups {text!r}")
    names, sizes = [], []
    for part in m.group(1).split(","):
        name, size = part.rsplit("=", 1)
        names.append(name.strip().strip("'\""))
        sizes.append(int(size))
    total = math.prod(sizes)
    if m.group(2) is None:
        devices = np.arange(total)
    elif "[" in m.group(2):
        devices = _parse_iota_list(m.group(2)).reshape(-1)
    else:
        devices = np.asarray(_ints(m.group(2)))
    if devices.size != total:
        raise ValueError(f"mesh replica groups {text!r}: {devices.size} device ids for {total} devices")
    refs = []  # (axis index, pre or None, size or None)
    for ref in re.findall(r"['\"]?([^'\",:{}]+)['\"]?\s*(?::\s*\((\d+)\)\s*(\d+))?", m.group(3)):
        name = ref[0].strip()
        if not name:
            continue
        if name not in names:
            raise ValueError(f"mesh replica groups {text!r}: axis {name!r} is not in the mesh")
        refs.append((names.index(name), int(ref[1]) if ref[1] else None, int(ref[2]) if ref[2] else None))
    # expand every mesh axis into the sub-dimensions its references need
    expanded: list[int] = []
    ref_dim: dict[int, int] = {}  # index into refs -> expanded dimension
    for ax, full in enumerate(sizes):
        mine = sorted((r for r in range(len(refs)) if refs[r][0] == ax),
                      key=lambda r: refs[r][1] or 1)
        if not mine:
            expanded.append(full)
            continue
        if len(mine) == 1 and refs[mine[0]][1] is None:
            ref_dim[mine[0]] = len(expanded)
            expanded.append(full)
            continue
        prefix = 1
        for r in mine:
            pre, size = refs[r][1], refs[r][2]
            if pre is None:
                raise ValueError(f"mesh replica groups {text!r}: a full axis and a sub-axis of one axis")
            if pre != prefix:
                expanded.append(pre // prefix)
                prefix = pre
            ref_dim[r] = len(expanded)
            expanded.append(size)
            prefix *= size
        if prefix != full:
            expanded.append(full // prefix)
    grouped = [ref_dim[r] for r in range(len(refs))]
    kept = [d for d in range(len(expanded)) if d not in grouped]
    group_size = math.prod(expanded[d] for d in grouped) if grouped else 1
    arr = devices.reshape(expanded).transpose(kept + grouped).reshape(-1, group_size)
    return arr.tolist()


def parse_replica_groups(text: str) -> tuple[tuple[int, ...], ...] | None:
    """Explicit replica groups from the value of an HLO ``replica_groups=`` attribute.

    Accepts the explicit form ``{{0,1},{2,3}}``, the iota form ``[G,S]<=[d0,d1,...]T(p...)``
    (``iota(prod d).reshape(d).transpose(p).reshape(G, S)``; ``T(...)`` optional) and the mesh-axes
    form ``mesh['a'=2,'b'=4] {'a'}`` (optionally with ``, device_ids=(...)`` and sub-axes
    ``'a':(pre)size``). Returns a tuple of groups (tuples of device ids), or ``None`` for the empty
    form ``{}``, which means one group of all devices.
    """
    s = text.strip()
    if s.startswith("mesh"):
        groups = _mesh_groups(s)
    elif s.startswith("["):
        arr = _parse_iota_list(s)
        if arr.ndim != 2:
            raise ValueError(f"iota replica groups {text!r} must be [num_groups, group_size]")
        groups = arr.tolist()
    elif s.startswith("{"):
        inner = s[1:-1].strip() if s.endswith("}") else None
        if inner is None:
            raise ValueError(f"cannot read replica groups {text!r}")
        groups = [_ints(g) for g in re.findall(r"\{([^{}]*)\}", inner)]
        if not inner.strip():
            groups = []
    else:
        raise ValueError(f"cannot read replica groups {text!r}")
    groups = [g for g in groups if g]
    if not groups:
        return None
    return tuple(tuple(int(d) for d in g) for g in groups)


def _parse_pairs(text: str) -> tuple[tuple[int, int], ...]:
    pairs = [tuple(_ints(p)) for p in re.findall(r"\{([^{}]*)\}", text.strip()[1:-1])]
    for p in pairs:
        if len(p) != 2:
            raise ValueError(f"cannot read source_target_pairs {text!r}")
    return tuple((int(a), int(b)) for a, b in pairs)


# ----------------------------------------------------------------------------------------------
# HLO text -> computations / instructions
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Instr:
    name: str
    shape: Any
    opcode: str
    operands: list[str]  # operand names ("%" stripped) or raw literal text (constants)
    inline_shapes: list[Any]  # shape printed in front of an operand (older XLA), or None
    attrs: dict[str, str]
    is_root: bool


@dataclasses.dataclass
class _Computation:
    name: str
    is_entry: bool
    instrs: dict[str, _Instr]
    root: str | None


_INSTR_HEAD = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_OPCODE_RE = re.compile(r"\s*([a-z][a-z0-9\-_]*)\(")
_COMMENT_RE = re.compile(r"/\*.*?\*/")


_SPECIAL = re.compile(r"[{}\[\]()\"',\\]")


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets and quotes."""
    parts, depth, quote, start, skip = [], 0, None, 0, -1
    for m in _SPECIAL.finditer(text):
        i, c = m.start(), m.group()
        if i == skip:
            continue
        if quote:
            if c == "\\":
                skip = i + 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in "{[(":
            depth += 1
        elif c in "}])":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _parse_attrs(text: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    last = None
    for piece in _split_top(text):
        key, eq, value = piece.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[\w.\-]+", key):
            continue
        if key == "device_ids" and last == "replica_groups" and attrs[last].lstrip().startswith("mesh"):
            attrs[last] += ", " + piece  # mesh-axes replica groups: "mesh[...], device_ids=(...) {...}"
            continue
        attrs[key] = value.strip()
        last = key
    return attrs


def _parse_instruction(line: str) -> _Instr | None:
    m = _INSTR_HEAD.match(line)
    if not m:
        return None
    try:
        shape, i = _parse_shape(line, m.end())
    except ValueError:
        return None
    om = _OPCODE_RE.match(line, i)
    if not om:
        return None
    opcode = om.group(1)
    start = om.end() - 1
    end = _skip_balanced(line, start, "(", ")")
    operands, inline = [], []
    for op in _split_top(line[start + 1:end - 1]):
        head, _, last = op.rpartition(" ")
        if head.strip():
            try:
                inline.append(_parse_shape(head.strip())[0])
            except ValueError:
                inline.append(None)
        else:
            inline.append(None)
        operands.append(last.strip().lstrip("%"))
    rest = line[end:]
    if opcode != "while":  # only a loop's backend_config is read; it is printed after the attributes used here
        cut = rest.find(", backend_config=")
        rest = rest if cut < 0 else rest[:cut]
    return _Instr(m.group(2), shape, opcode, operands, inline, _parse_attrs(rest), bool(m.group(1)))


@functools.lru_cache(maxsize=4)
def _parse_module(text: str) -> dict[str, _Computation]:
    comps: dict[str, _Computation] = {}
    current: _Computation | None = None
    for raw in text.splitlines():
        line = _COMMENT_RE.sub("", raw).rstrip()
        if not line.strip():
            continue
        if current is None:
            if line[0].isspace() or not line.endswith("{") or line.startswith("HloModule"):
                continue
            hm = re.match(r"(ENTRY\s+)?%?([\w.\-]+)", line)
            if hm:
                current = _Computation(hm.group(2), bool(hm.group(1)), {}, None)
            continue
        if line.strip() == "}":
            comps[current.name] = current
            current = None
            continue
        ins = _parse_instruction(line)
        if ins is not None:
            current.instrs[ins.name] = ins
            if ins.is_root:
                current.root = ins.name
    if current is not None:
        comps[current.name] = current
    for c in comps.values():
        if c.root is None and c.instrs:
            c.root = next(reversed(c.instrs))
    return comps


def num_devices_from_hlo(hlo_text: str) -> int:
    """``num_partitions * replica_count`` from the ``HloModule`` header (each 1 when absent)."""
    head = next((line for line in hlo_text.splitlines() if line.startswith("HloModule")), "")
    p = re.search(r"num_partitions=(\d+)", head)
    r = re.search(r"replica_count=(\d+)", head)
    return (int(p.group(1)) if p else 1) * (int(r.group(1)) if r else 1)


# ----------------------------------------------------------------------------------------------
# while-loop trip counts
# ----------------------------------------------------------------------------------------------

_FLIP = {"LT": "GT", "LE": "GE", "GT": "LT", "GE": "LE", "EQ": "EQ", "NE": "NE"}


def _scalar_source(comps, comp: _Computation, name: str, bind, depth: int = 0):
    """Where a scalar comes from: ``("const", v)``, ``("gte", k)`` (element k of the parameter
    tuple) or ``None``. ``bind(i)`` resolves ``parameter(i)`` of a fused computation."""
    ins = comp.instrs.get(name)
    if ins is None or depth > 16:
        return None
    if ins.opcode == "constant":
        vals = _ints(ins.operands[0]) if ins.operands else []
        return ("const", vals[0]) if len(vals) == 1 and re.fullmatch(r"\s*-?\d+\s*", ins.operands[0]) else None
    if ins.opcode in ("copy", "bitcast", "reshape", "convert") and ins.operands:
        return _scalar_source(comps, comp, ins.operands[0], bind, depth + 1)
    if ins.opcode == "parameter" and bind is not None:
        return bind(_ints(ins.operands[0])[0])
    if ins.opcode == "get-tuple-element" and ins.operands:
        src = comp.instrs.get(ins.operands[0])
        if src is not None and src.opcode == "parameter" and bind is None:
            return ("gte", int(ins.attrs.get("index", "-1")))
    return None


def _fused(comps, comp: _Computation, ins: _Instr):
    """For a fusion/call instruction: (callee computation, callee root, bind function)."""
    callee = comps.get(ins.attrs.get("calls", ins.attrs.get("to_apply", "")).lstrip("%"))
    if callee is None or callee.root is None:
        return None

    def bind(i, _comp=comp, _ins=ins):
        return _scalar_source(comps, _comp, _ins.operands[i], None) if i < len(_ins.operands) else None

    return callee, callee.instrs[callee.root], bind


def _compare_of(comps, cond: _Computation):
    """(direction, source_lhs, source_rhs) of the condition's root compare, or None."""
    root = cond.instrs.get(cond.root or "")
    if root is None:
        return None
    comp, ins, bind = cond, root, None
    if root.opcode in ("fusion", "call"):
        f = _fused(comps, cond, root)
        if f is None:
            return None
        comp, ins, bind = f
    if ins.opcode != "compare" or len(ins.operands) != 2:
        return None
    a = _scalar_source(comps, comp, ins.operands[0], bind)
    b = _scalar_source(comps, comp, ins.operands[1], bind)
    return ins.attrs.get("direction", ""), a, b


def _step_of(comps, body: _Computation, name: str, k: int, bind=None, depth: int = 0):
    """The constant step ``s`` when ``name`` computes ``i + s`` (or ``i - s``) from element k."""
    ins = body.instrs.get(name)
    if ins is None or depth > 8:
        return None
    if ins.opcode in ("fusion", "call") and bind is None:
        f = _fused(comps, body, ins)
        if f is None:
            return None
        callee, root, fbind = f
        return _step_of(comps, callee, root.name, k, fbind, depth + 1)
    if ins.opcode in ("copy", "bitcast") and ins.operands:
        return _step_of(comps, body, ins.operands[0], k, bind, depth + 1)
    if ins.opcode in ("add", "subtract") and len(ins.operands) == 2:
        a = _scalar_source(comps, body, ins.operands[0], bind)
        b = _scalar_source(comps, body, ins.operands[1], bind)
        if a == ("gte", k) and b and b[0] == "const":
            return b[1] if ins.opcode == "add" else -b[1]
        if ins.opcode == "add" and b == ("gte", k) and a and a[0] == "const":
            return a[1]
    return None


def _trip_count(comps, caller: _Computation, w: _Instr) -> int | None:
    """Trip count of while instruction ``w``: XLA's annotation, else inferred, else None."""
    m = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)', w.attrs.get("backend_config", ""))
    if m:
        return int(m.group(1))
    cond = comps.get(w.attrs.get("condition", "").lstrip("%"))
    body = comps.get(w.attrs.get("body", "").lstrip("%"))
    if cond is None or body is None or not w.operands:
        return None
    cmp = _compare_of(comps, cond)
    if cmp is None:
        return None
    direction, a, b = cmp
    if a and a[0] == "const" and b and b[0] == "gte":
        a, b, direction = b, a, _FLIP.get(direction, "")
    if not (a and a[0] == "gte" and b and b[0] == "const"):
        return None
    k, bound = a[1], b[1]
    init = caller.instrs.get(w.operands[0])
    if init is None or init.opcode != "tuple" or k >= len(init.operands):
        return None
    start = _scalar_source(comps, caller, init.operands[k], None)
    if not (start and start[0] == "const"):
        return None
    i0 = start[1]
    broot = body.instrs.get(body.root or "")
    if broot is None or broot.opcode != "tuple" or k >= len(broot.operands):
        return None
    s = _step_of(comps, body, broot.operands[k], k)
    if not s:
        return None
    if direction == "LT" and s > 0:
        return max(0, -(-(bound - i0) // s))
    if direction == "LE" and s > 0:
        return max(0, (bound - i0) // s + 1)
    if direction == "GT" and s < 0:
        return max(0, -(-(i0 - bound) // -s))
    if direction == "GE" and s < 0:
        return max(0, (i0 - bound) // -s + 1)
    if direction == "NE" and (bound - i0) % s == 0 and (bound - i0) // s >= 0:
        return (bound - i0) // s
    return None


# ----------------------------------------------------------------------------------------------
# call graph: how often each computation runs
# ----------------------------------------------------------------------------------------------

_CALL_KEYS = ("calls", "to_apply", "body", "condition", "branch_computations", "true_computation",
              "false_computation", "called_computations", "select", "scatter", "comparator")


@dataclasses.dataclass
class _Runs:
    count: int = 0  # executions per run of the entry (unknown loops counted once: a lower bound)
    known: bool = True
    conditional: bool = False
    loops: tuple = ()  # ((while name, trip count or None), ...) along the first path found


def _computation_runs(comps: dict[str, _Computation]) -> dict[str, _Runs]:
    edges: dict[str, list[tuple[str, int | None, bool, tuple | None]]] = defaultdict(list)
    for comp in comps.values():
        for ins in comp.instrs.values():
            if ins.opcode.endswith("-done") or ins.opcode == "async-update":
                continue  # the computation runs once, under its -start
            trip = _trip_count(comps, comp, ins) if ins.opcode == "while" else None
            for key in _CALL_KEYS:
                if key not in ins.attrs:
                    continue
                for callee in re.findall(r"%?([\w.\-]+)", ins.attrs[key].strip("{}")):
                    if callee not in comps:
                        continue
                    if ins.opcode == "while" and key == "body":
                        edges[comp.name].append((callee, trip, False, (ins.name, trip)))
                    elif ins.opcode == "while" and key == "condition":
                        edges[comp.name].append((callee, None if trip is None else trip + 1, False, None))
                    else:
                        cond = ins.opcode == "conditional"
                        edges[comp.name].append((callee, 1, cond, None))
    callees = {c for es in edges.values() for c, *_ in es}
    roots = [c.name for c in comps.values() if c.is_entry] or [n for n in comps if n not in callees]
    # topological order over the reachable part of the (acyclic) call graph
    order, seen = [], set()

    def visit(n):
        stack = [(n, iter(edges.get(n, ())))]
        seen.add(n)
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                order.append(node)
            elif nxt[0] not in seen:
                seen.add(nxt[0])
                stack.append((nxt[0], iter(edges.get(nxt[0], ()))))

    for r in roots:
        if r not in seen:
            visit(r)
    runs = {n: _Runs() for n in seen}
    for r in roots:
        runs[r].count = 1
    for n in reversed(order):
        src = runs[n]
        for callee, factor, cond, loop in edges.get(n, ()):
            dst = runs[callee]
            first = dst.count == 0 and not dst.loops
            dst.count += src.count * (1 if factor is None else factor)
            dst.known = dst.known and src.known and factor is not None
            dst.conditional = dst.conditional or src.conditional or cond
            if first:
                dst.loops = src.loops + ((loop,) if loop else ())
    return runs


