"""Per-kind totals of a program's collectives (:class:`Report`), measuring a jitted function, formatting bytes."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from jaxvdm.sharding.comm.collectives import KINDS, Collective, _unaccounted, collectives_from_hlo
from jaxvdm.sharding.comm.hlo import num_devices_from_hlo

__all__ = ["KindTotals", "Report", "comm_report", "report_of_hlo", "measure", "format_bytes"]

# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KindTotals:
    """Totals of one collective kind over a whole program (loop trips included).

    ``bytes_per_device`` is the max over devices of the bytes a device sends, ``mean_bytes_per_device``
    the mean over all devices, ``recv_bytes_per_device`` the max received; ``count`` is the number of
    executions (a lower bound when ``trip_counts_known`` is False).
    """

    kind: str
    count: int
    bytes_per_device: int
    mean_bytes_per_device: float
    recv_bytes_per_device: int
    group_sizes: tuple[int, ...]
    trip_counts_known: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"group_sizes": list(self.group_sizes)}


@dataclasses.dataclass(frozen=True)
class Report:
    """Communication of one compiled program, per device. ``sent`` / ``recv``: bytes per device,
    float arrays of shape ``(num_devices,)``, all collectives and loop trips included."""

    collectives: tuple[Collective, ...]
    num_devices: int
    per_kind: dict[str, KindTotals]
    sent: np.ndarray
    recv: np.ndarray
    hlo: str | None = None
    unaccounted: tuple[str, ...] = ()

    @property
    def bytes_per_device(self) -> int:
        """Max over devices of the total bytes sent."""
        return int(round(float(self.sent.max()))) if self.sent.size else 0

    @property
    def mean_bytes_per_device(self) -> float:
        return float(self.sent.mean()) if self.sent.size else 0.0

    @property
    def recv_bytes_per_device(self) -> int:
        return int(round(float(self.recv.max()))) if self.recv.size else 0

    @property
    def count(self) -> int:
        return sum(t.count for t in self.per_kind.values())

    @property
    def trip_counts_known(self) -> bool:
        return all(c.trip_count_known for c in self.collectives)

    def table(self) -> str:
        """A text table: kind, count, group size(s), bytes sent per device (max, mean), received."""
        head = f"{'kind':<20}{'count':>8}  {'group':<8}{'sent/device':>14}{'mean':>14}{'recv/device':>14}"
        lines = [f"communication per device ({self.num_devices} devices)", head, "-" * len(head)]
        for kind in KINDS:
            t = self.per_kind.get(kind)
            if t is None:
                continue
            groups = "p2p" if kind == "collective-permute" else ",".join(map(str, t.group_sizes))
            star = "" if t.trip_counts_known else "*"
            lines.append(f"{kind:<20}{str(t.count) + star:>8}  {groups:<8}{format_bytes(t.bytes_per_device):>14}"
                         f"{format_bytes(t.mean_bytes_per_device):>14}{format_bytes(t.recv_bytes_per_device):>14}")
        if not self.per_kind:
            lines.append("(no collectives)")
        lines.append("-" * len(head))
        lines.append(f"{'total':<20}{self.count:>8}  {'':<8}{format_bytes(self.bytes_per_device):>14}"
                     f"{format_bytes(self.mean_bytes_per_device):>14}{format_bytes(self.recv_bytes_per_device):>14}")
        if not self.trip_counts_known:
            lines.append("* a loop's trip count is unknown: counted once (lower bound)")
        if self.unaccounted:
            lines.append("not accounted: " + ", ".join(self.unaccounted))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready summary (``json.dumps(report.to_dict())`` works); no HLO text."""
        return {
            "num_devices": self.num_devices,
            "count": self.count,
            "bytes_per_device": self.bytes_per_device,
            "mean_bytes_per_device": self.mean_bytes_per_device,
            "recv_bytes_per_device": self.recv_bytes_per_device,
            "trip_counts_known": self.trip_counts_known,
            "per_kind": {k: t.to_dict() for k, t in self.per_kind.items()},
            "collectives": [c.to_dict() for c in self.collectives],
            "unaccounted": list(self.unaccounted),
        }

    def __str__(self) -> str:
        return self.table()


def comm_report(collectives, num_devices: int, *, hlo: str | None = None) -> Report:
    """Per-kind totals per device of ``collectives`` (from :func:`collectives_from_hlo`) over a
    program of ``num_devices`` devices (:func:`num_devices_from_hlo`); each collective weighs its
    ``executions`` (loop trips). ``hlo``, when given, is kept as ``report.hlo`` and scanned for
    communicating ops this module does not account for (``report.unaccounted``: send/recv, ...)."""
    num_devices = int(num_devices)
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    collectives = tuple(collectives)
    sent_all, recv_all = np.zeros(num_devices), np.zeros(num_devices)
    acc: dict[str, dict] = {}
    for c in collectives:
        s, r = c.traffic(num_devices)
        s, r = s * c.executions, r * c.executions
        a = acc.setdefault(c.kind, {"count": 0, "sent": np.zeros(num_devices), "recv": np.zeros(num_devices),
                                    "groups": set(), "known": True})
        a["count"] += c.executions
        a["sent"] += s
        a["recv"] += r
        a["groups"].update(c.group_sizes(num_devices))
        a["known"] = a["known"] and c.trip_count_known
        sent_all += s
        recv_all += r
    per_kind = {
        k: KindTotals(k, a["count"], int(round(float(a["sent"].max()))), float(a["sent"].mean()),
                      int(round(float(a["recv"].max()))), tuple(sorted(a["groups"])), a["known"])
        for k, a in sorted(acc.items(), key=lambda kv: KINDS.index(kv[0]))
    }
    unacc = tuple(_unaccounted(hlo)) if hlo else ()
    return Report(collectives, num_devices, per_kind, sent_all, recv_all, hlo, unacc)


def measure(fn: Callable, *args, **kwargs) -> Report:
    """Lower and compile ``fn`` for ``args`` / ``kwargs`` and report its communication.

    ``fn`` is a jitted function (anything with ``.lower``), a plain function (wrapped in
    ``jax.jit``), or an already lowered / compiled stage (``jax.stages.Lowered`` / ``Compiled``,
    given without arguments). Arguments may be ``jax.ShapeDtypeStruct(shape, dtype,
    sharding=NamedSharding(...))`` pytrees: nothing is allocated or run. ``report.hlo`` holds the
    optimised HLO text; ``report.num_devices`` is read from its header.
    """
    import jax

    if isinstance(fn, (jax.stages.Lowered, jax.stages.Compiled)):
        if args or kwargs:
            raise ValueError("measure(lowered_or_compiled) takes no arguments: they were fixed when it was lowered")
        compiled = fn.compile() if isinstance(fn, jax.stages.Lowered) else fn
    else:
        jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
        compiled = jitted.lower(*args, **kwargs).compile()
    text = compiled.as_text()
    if not isinstance(text, str) or not text:
        raise ValueError("the compiled program gave no HLO text (compiled.as_text() returned nothing)")
    return comm_report(collectives_from_hlo(text), num_devices_from_hlo(text), hlo=text)


def format_bytes(n: float) -> str:
    """``512 B``, ``1.50 KiB``, ``3.00 MiB``, ``5.00 GiB``, ``2.00 TiB`` (binary units)."""
    n = float(n)
    units = ("KiB", "MiB", "GiB", "TiB")
    if abs(n) < 1024:
        return f"{n:.0f} B" if n == int(n) else f"{n:.1f} B"
    for i, unit in enumerate(units):
        scaled = n / 1024 ** (i + 1)
        if abs(scaled) < 1024 or unit == units[-1]:
            return f"{scaled:.2f} {unit}"
    raise AssertionError("unreachable")


def report_of_hlo(text: str) -> Report:
    """The :class:`Report` of an optimised HLO module's text (device count read from its header)."""
    return comm_report(collectives_from_hlo(text), num_devices_from_hlo(text), hlo=text)
