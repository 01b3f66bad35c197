"""Communication accounting read from compiled (optimised) HLO text.

Communication is measured, not estimated: a jitted program is lowered and compiled for its
arguments (``jax.ShapeDtypeStruct`` with ``sharding=`` is enough, no arrays are allocated), every
collective is read from ``compiled.as_text()``, and its bytes are counted per device.

Public API
----------
- :func:`collectives_from_hlo` -- ``list[Collective]`` from an optimised HLO module's text.
- :func:`comm_report` -- per-kind totals (:class:`Report`) for a list of collectives;
  :func:`report_of_hlo` -- the same straight from HLO text.
- :func:`measure` -- lower + compile + parse + report in one call; ``report.hlo`` keeps the text.
- :func:`parse_replica_groups`, :func:`num_devices_from_hlo`, :func:`format_bytes`.

Modules: :mod:`.hlo` (the HLO text parser: shapes, replica groups, trip counts, and what the compilers
print), :mod:`.collectives` (the collectives and their byte conventions), :mod:`.report` (totals and
formatting), :mod:`.command` (``jaxvdm comm``).
"""

from jaxvdm.sharding.comm.collectives import KINDS, Collective, collectives_from_hlo
from jaxvdm.sharding.comm.hlo import ArrayShape, num_devices_from_hlo, parse_replica_groups
from jaxvdm.sharding.comm.report import KindTotals, Report, comm_report, format_bytes, measure, report_of_hlo

__all__ = ["KINDS", "ArrayShape", "Collective", "KindTotals", "Report", "collectives_from_hlo", "comm_report",
           "report_of_hlo", "measure", "parse_replica_groups", "num_devices_from_hlo", "format_bytes"]
