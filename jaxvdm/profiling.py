"""Profiling and compilation: traces, optimised-HLO dumps, their summary, and the persistent compilation cache.

* :func:`maybe_trace` records a ``jax.profiler`` trace (``.xplane.pb`` for TensorBoard's profile plugin /
  XProf, and ``.trace.json.gz`` for Perfetto) of the denoising loop (JAX's Python tracer only with
  ``JAXVDM_PROFILE_PYTHON=1``).
* Every step function jaxvdm compiles ahead of time is reported to :func:`record_compiled`; inside
  :func:`dump_hlo_to` its optimised HLO is written as ``<dir>/<name>.hlo.txt``. A profile directory
  always gets them (``<profile_dir>/hlo``), because that is where the named scopes live: the code marks
  each strategy phase with ``jax.named_scope`` (``lp_window``, ``model_forward``, ``cfg_combine``,
  ``lp_combine``, ``scheduler``, ``parastep_*``, ``dualparal_*``), XLA keeps the scope path in each
  instruction's ``op_name``, and :func:`summarize` maps the trace's per-op device times back to them.
* :func:`summarize` (``jaxvdm profile DIR``) prints time per phase and per op category from a trace,
  and the collectives with their bytes from the HLO.
* :func:`enable_compilation_cache` (called by every :func:`jaxvdm.generate`) turns on JAX's persistent
  compilation cache in a user cache folder (``$JAXVDM_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxvdm/xla`` or
  ``~/.cache/jaxvdm/xla``), caching every executable that took at least 0.2 s to compile. A second run
  (a new process) then loads its executables instead of compiling them: the ``compile_s`` timing drops.
  ``JAXVDM_COMPILATION_CACHE=0`` (or ``false``/``off``/``no``) turns it off. See its docstring for how a
  cache configured in JAX itself is respected.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
from collections import defaultdict
from pathlib import Path

import jax

from jaxvdm.sharding.runtime import PHASES, dump_hlo_to, record_compiled

__all__ = ["maybe_trace", "dump_hlo_to", "record_compiled", "summarize", "enable_compilation_cache",
           "PHASES", "cache_dir"]


_cache_state = {"enabled": None}


# ------------------------------------------------------------------------------------------ cache


def cache_dir() -> Path:
    if os.environ.get("JAXVDM_CACHE_DIR"):
        return Path(os.environ["JAXVDM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxvdm" / "xla"


_OFF = ("0", "false", "off", "no")


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turns on JAX's persistent compilation cache (once per process); returns its folder, or None if off.

    * ``JAXVDM_COMPILATION_CACHE=0`` (also ``false``, ``off``, ``no``): jaxvdm leaves the cache off (JAX's
      default) and returns None. A cache configured in JAX itself (``JAX_COMPILATION_CACHE_DIR``) is JAX's
      business and stays as configured.
    * A cache folder already configured in JAX (``JAX_COMPILATION_CACHE_DIR`` or
      ``jax.config.update("jax_compilation_cache_dir", ...)``) is used as is, with JAX's thresholds.
    * Otherwise the folder is ``path``, else ``$JAXVDM_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxvdm/xla`` or
      ``~/.cache/jaxvdm/xla`` (created; a folder that cannot be created leaves the cache off). Executables
      that took at least 0.2 s to compile are cached, of any size; ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``
      and ``JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES``, when set, are respected instead.

    The environment is read on the first call; later calls return the same answer (unless ``path`` is given).
    """
    if _cache_state["enabled"] is not None and path is None:
        return _cache_state["enabled"] or None
    if os.environ.get("JAXVDM_COMPILATION_CACHE", "1").strip().lower() in _OFF:
        _cache_state["enabled"] = False
        return None
    current = jax.config.jax_compilation_cache_dir
    if current and path is None:
        _cache_state["enabled"] = Path(current)
        return Path(current)
    folder = Path(path) if path is not None else cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        _cache_state["enabled"] = False
        return None
    if current and Path(current) != folder:
        _reset_jax_cache()  # JAX opens its cache folder once; make it open the new one
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _cache_state["enabled"] = folder
    return folder


def _reset_jax_cache() -> None:
    try:
        from jax._src import compilation_cache

        compilation_cache.reset_cache()
    except (ImportError, AttributeError):  # private API: without it the first folder stays in use
        pass


# ------------------------------------------------------------------------------------------ traces and HLO


def _profiler_options():
    """JAX's profiler options with the Python tracer off unless ``JAXVDM_PROFILE_PYTHON=1`` (None: JAX's
    defaults, where this JAX has no options object)."""
    try:
        options = jax.profiler.ProfileOptions()
        python = os.environ.get("JAXVDM_PROFILE_PYTHON", "0").strip().lower() not in _OFF
        options.python_tracer_level = 1 if python else 0
    except (AttributeError, TypeError):
        return None
    return options


@contextlib.contextmanager
def maybe_trace(profile_dir: str | os.PathLike | None, dump_hlo: str | os.PathLike | None = None):
    """Records a ``jax.profiler`` trace into ``profile_dir`` (no-op for None) and dumps the HLO of the
    steps compiled meanwhile into ``dump_hlo`` (default ``<profile_dir>/hlo`` when profiling).

    The trace holds the device and XLA host events (what :func:`summarize` reads). JAX's Python tracer
    is off: it records every Python call, tracing and compiling included (half a million events for the
    shapes model, a trace several times larger and slower to write and read); ``JAXVDM_PROFILE_PYTHON=1``
    turns it on."""
    hlo = dump_hlo if dump_hlo is not None else (Path(profile_dir) / "hlo" if profile_dir is not None else None)
    with dump_hlo_to(hlo):
        if profile_dir is None:
            yield
            return
        os.makedirs(profile_dir, exist_ok=True)
        options = _profiler_options()
        try:
            jax.profiler.start_trace(str(profile_dir), create_perfetto_trace=True, profiler_options=options)
        except TypeError:  # a JAX without profiler options
            jax.profiler.start_trace(str(profile_dir), create_perfetto_trace=True)
        try:
            yield
        finally:
            jax.profiler.stop_trace()


# ------------------------------------------------------------------------------------------ summary

_OPNAME = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{[^}]*op_name="([^"]*)"')


def hlo_scopes(hlo_text: str) -> dict[str, str]:
    """Instruction name -> jaxvdm phase (the innermost known named scope in its ``op_name``)."""
    out = {}
    for line in hlo_text.splitlines():
        m = _OPNAME.match(line)
        if not m:
            continue
        name, op_name = m.groups()
        parts = op_name.split("/")
        phase = next((p for p in reversed(parts) if p in PHASES), None)
        if phase is not None:
            out[name] = phase
    return out


def _category(op: str) -> str:
    op = op.lower()
    for key, cat in (("all-reduce", "collective"), ("all-gather", "collective"), ("all-to-all", "collective"),
                     ("collective-permute", "collective"), ("reduce-scatter", "collective"),
                     ("convolution", "matmul/conv"), ("dot", "matmul/conv"), ("gemm", "matmul/conv"),
                     ("cudnn", "attention (cuDNN)"), ("fusion", "fusion"), ("copy", "copy/layout"),
                     ("transpose", "copy/layout"), ("while", "control"), ("conditional", "control")):
        if key in op:
            return cat
    return "other"


def _trace_events(directory: Path):
    """``(hlo_op, hlo_module, duration_ps)`` of device/XLA op events in the newest trace under ``directory``."""
    from jax.profiler import ProfileData

    pbs = sorted(directory.glob("**/*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not pbs:
        return None
    data = ProfileData.from_file(str(pbs[-1]))
    events = []
    for plane in data.planes:
        for line in plane.lines:
            if line.name == "python":  # the Python tracer's calls (JAXVDM_PROFILE_PYTHON=1): never an XLA op
                continue
            for ev in line.events:
                stats = dict(ev.stats)
                op = stats.get("hlo_op")
                if op:
                    events.append((str(op), str(stats.get("hlo_module", "")), float(ev.duration_ns) * 1e3))
    return events


def summarize(directory: str | os.PathLike) -> dict:
    """Summary of a profile directory (trace and/or HLO dump).

    Returns ``{"phases": {phase: seconds}, "categories": {category: seconds}, "collectives": [...],
    "hlo_files": n, "trace": bool}``; phases come from the named scopes, collectives (kind, count,
    bytes per device) from the HLO of every dumped step.
    """
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: no such profile or HLO directory")
    hlo_files = sorted(directory.glob("**/*.hlo.txt"))
    scopes: dict[str, str] = {}
    collectives = []
    for f in hlo_files:
        text = f.read_text()
        scopes.update(hlo_scopes(text))
        try:
            from jaxvdm.sharding import comm

            report = comm.comm_report(comm.collectives_from_hlo(text), _num_devices(text))
            collectives.append({"file": f.name, **report.to_dict()})
        except Exception as e:  # an HLO the parser cannot read should not hide the rest of the summary
            collectives.append({"file": f.name, "error": str(e)})
    events = _trace_events(directory)
    phases: dict[str, float] = defaultdict(float)
    cats: dict[str, float] = defaultdict(float)
    if events:
        for op, _module, ps in events:
            seconds = ps * 1e-12
            phases[scopes.get(op, "other")] += seconds
            cats[_category(op)] += seconds
    if not hlo_files and events is None:
        raise FileNotFoundError(f"{directory}: no trace (*.xplane.pb) and no HLO dump (*.hlo.txt) found")
    return {"phases": dict(phases), "categories": dict(cats), "collectives": collectives,
            "hlo_files": len(hlo_files), "trace": events is not None}


def _num_devices(hlo_text: str) -> int:
    m = re.search(r"num_partitions=(\d+)", hlo_text)
    r = re.search(r"replica_count=(\d+)", hlo_text)
    return max(int(m.group(1)) if m else 1, int(r.group(1)) if r else 1)


def format_summary(s: dict) -> str:
    lines = []
    if s["trace"]:
        total = sum(s["phases"].values()) or 1.0
        lines.append("time per phase (device ops):")
        for k, v in sorted(s["phases"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {k:<20} {v * 1e3:10.3f} ms  {100 * v / total:5.1f}%")
        lines.append("time per op category:")
        for k, v in sorted(s["categories"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {k:<20} {v * 1e3:10.3f} ms  {100 * v / total:5.1f}%")
    lines.append(f"collectives in {s['hlo_files']} compiled step(s):")
    for c in s["collectives"]:
        if "error" in c:
            lines.append(f"  {c['file']}: could not parse ({c['error']})")
            continue
        lines.append(f"  {c['file']}:")
        for kind, info in sorted(c.get("per_kind", {}).items()):
            lines.append(f"    {kind:<20} count {info['count']:5d}   {info['bytes_per_device']:>14,d} B/device")
    return "\n".join(lines)


def load_perfetto(directory: str | os.PathLike) -> dict:
    """The Perfetto JSON trace written next to the xplane (for tests and quick looks)."""
    files = sorted(Path(directory).glob("**/*.trace.json.gz"))
    if not files:
        raise FileNotFoundError(f"{directory}: no .trace.json.gz")
    with gzip.open(files[-1], "rt") as f:
        return json.load(f)
