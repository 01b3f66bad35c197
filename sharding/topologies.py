"""TPU targets by name, for compiling jaxvdm's programs for TPUs on a host without one.

``jax.experimental.topologies.get_topology_desc`` (libtpu installed, no TPU needed) gives compile-only
``TpuDevice`` s of a TPU slice; a mesh over them compiles real TPU programs (the Pallas splash kernel
included), whose memory analysis, cost analysis and HLO are those of the TPU compiler. This module names
the slices (:data:`TARGETS`), gives their devices (:func:`target_devices`), and judges a compiled program
against a chip: :func:`memory_fit` (per-chip bytes against HBM) and :func:`roofline` (an estimated step
time from FLOPs and HBM bytes).

Names follow Cloud TPU's accelerator types. v5e and v6e count chips (``v5e-8`` = 8 chips, topology
``2x4``); v4 and v5p count TensorCores, two per chip (``v4-8`` and ``v5p-8`` = 4 chips, topology
``2x2x1``). JAX runs a v4 or v5p chip as one device (megacore), so v4 is asked for with chip config
``megacore`` (without it libtpu gives one device per TensorCore, 8 for ``v4:2x2x1``); v5p gives one
device per chip by default.

Chip figures are the published ones of the Cloud TPU system-architecture pages
(cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e), per chip:

========  ===========  ====================  ==========================================================
chip      bf16 TFLOP/s HBM GiB, GB/s         notes
========  ===========  ====================  ==========================================================
v4        275          32, 1200              docs: "32 GiB, 1200 GBps"
v5e       197          16, 819               docs: "16 GB, 819 GBps" (one page version says 800 GBps);
                                             the TPU compiler here reports 15.75 GiB usable
v5p       459          95, 2765              docs: "95 GiB" (an older page: "95GB"), "2765 GBps"
v6e       918          32, 1640              docs: "32 GB, 1640 GBps" (one page version says 1600 GBps)
========  ===========  ====================  ==========================================================

Where the docs write "GB" for HBM capacity it is read as GiB (the chips carry 16/32/95 GiB; XLA's usable
limit is a little lower, e.g. 15.75 GiB on v5e). Bandwidths are decimal (1 GB/s = 1e9 B/s).

Loading libtpu for compile-only use: on a host with no TPU chip, :func:`target_devices` sets
``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` (without it a second process loading libtpu at the same time fails with
"Internal error when accessing libtpu multi-process lockfile"; only compiling happens here, no chip is
opened), ``TPU_WORKER_HOSTNAMES=localhost`` and ``TPU_ACCELERATOR_TYPE`` (which silence libtpu's five
start-up lines about a missing TPU VM metadata server), each only where the variable is unset, before
libtpu is first loaded in the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re

__all__ = ["TpuTarget", "TARGETS", "get_target", "target_devices", "libtpu_available", "MemoryFit", "memory_fit",
           "memory_fit_from_error", "roofline", "optimization_level", "LEVELS", "GIB"]

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class TpuTarget:
    """One TPU slice: its name, the topology string libtpu takes, and per-chip figures.

    name: Cloud TPU accelerator type (``"v5e-8"``). topology: ``get_topology_desc`` name (``"v5e:2x4"``).
    chip_config: libtpu chip config (``"megacore"`` for v4), or None. chips: chips (= JAX devices).
    chip: the chip (``"v5e"``). hbm_gib: HBM per chip (GiB). bf16_tflops: peak bf16 TFLOP/s per chip.
    hbm_gbps: HBM bandwidth per chip (GB/s, 1e9 bytes).
    """

    name: str
    topology: str
    chip_config: str | None
    chips: int
    chip: str
    hbm_gib: float
    bf16_tflops: float
    hbm_gbps: float

    @property
    def hbm_bytes(self) -> int:
        return int(self.hbm_gib * GIB)


# per chip: (bf16 TFLOP/s, HBM GiB, HBM GB/s), from the Cloud TPU docs (module docstring)
_CHIPS = {"v4": (275.0, 32.0, 1200.0), "v5e": (197.0, 16.0, 819.0), "v5p": (459.0, 95.0, 2765.0),
          "v6e": (918.0, 32.0, 1640.0)}


def _target(name: str, topology: str, chips: int, chip_config: str | None = None) -> TpuTarget:
    chip = name.split("-")[0]
    tflops, hbm, bw = _CHIPS[chip]
    return TpuTarget(name, topology, chip_config, chips, chip, hbm, tflops, bw)


TARGETS: dict[str, TpuTarget] = {t.name: t for t in [
    _target("v4-8", "v4:2x2x1", 4, "megacore"),
    _target("v5e-4", "v5e:2x2", 4),
    _target("v5e-8", "v5e:2x4", 8),
    _target("v5p-8", "v5p:2x2x1", 4),
    _target("v5p-16", "v5p:2x2x2", 8),
    _target("v6e-4", "v6e:2x2", 4),
    _target("v6e-8", "v6e:2x4", 8),
    _target("v6e-16", "v6e:4x4", 16),
]}


def get_target(name) -> TpuTarget:
    """The target called ``name`` (or ``name`` itself if it is a :class:`TpuTarget`); ValueError listing the
    names for an unknown one."""
    if isinstance(name, TpuTarget):
        return name
    if name not in TARGETS:
        raise ValueError(f"unknown TPU target {name!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def libtpu_available() -> bool:
    """Whether libtpu is installed (it provides the TPU compiler that deviceless compiles need)."""
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


def _quiet_libtpu_env(target: TpuTarget) -> None:
    """On a host without TPU chips (compile-only use), lets several processes load libtpu at once and
    answers the TPU VM settings libtpu otherwise complains about; sets only unset variables, and nothing
    on a TPU host."""
    try:
        from jax._src import hardware_utils

        chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    except Exception:  # pragma: no cover - private API moved: assume a TPU host, set nothing more
        return
    if chips == 0:
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8" if target.chip == "v5e" else target.name)


@functools.lru_cache(maxsize=None)
def _devices(name: str) -> tuple:
    target = TARGETS[name]
    _quiet_libtpu_env(target)
    from jax.experimental import topologies

    kwargs = {"chip_config_name": target.chip_config} if target.chip_config else {}
    devices = tuple(topologies.get_topology_desc(topology_name=target.topology, platform="tpu", **kwargs).devices)
    if len(devices) != target.chips:
        raise RuntimeError(f"libtpu gave {len(devices)} devices for {target.name} ({target.topology}); "
                           f"expected {target.chips}")
    return devices


def target_devices(name) -> list:
    """The compile-only TPU devices of target ``name`` (one per chip), e.g. for
    ``make_mesh(axes, devices=target_devices("v5e-8"))``. Works on a CPU-only host with libtpu installed;
    raises ValueError for an unknown name or when libtpu is missing."""
    target = get_target(name)
    if not libtpu_available():
        raise ValueError(f"compiling for TPU target {target.name} needs libtpu: pip install 'jax[tpu]' "
                         "(the TPU compiler; no TPU is needed)")
    return list(_devices(target.name))


LEVELS = ("O0", "O1", "O2", "O3")


@contextlib.contextmanager
def optimization_level(level: str | None):
    """Sets JAX's ``jax_optimization_level`` (XLA's effort to optimise execution time: ``"O0"`` least, fastest
    compile ... ``"O3"``) for the compiles inside the block; None leaves it as it is (XLA's default). On
    the TPU compiler ``"O0"`` cuts a Wan 1.3B step's compile from minutes to about 20 s of CPU time; the
    collectives and per-chip memory of the cases measured were unchanged or within a few percent (see
    ``jaxvdm comm --target``)."""
    if level is None:
        yield
        return
    import jax

    if level not in LEVELS:
        raise ValueError(f"optimization level must be one of {', '.join(LEVELS)}, got {level!r}")
    old = jax.config.jax_optimization_level
    jax.config.update("jax_optimization_level", level)
    try:
        yield
    finally:
        jax.config.update("jax_optimization_level", old)


@dataclasses.dataclass(frozen=True)
class MemoryFit:
    """Per-chip memory of a compiled program against a target chip's HBM.

    bytes_per_chip: arguments + outputs + temporaries - aliased (``compiled.memory_analysis()``), or the
    compiler's figure when it refused the program (``source == "compiler"``). hbm_bytes: the chip's HBM.
    fits: bytes_per_chip <= hbm_bytes. parts: the components (bytes). message: one line for people.
    """

    target: str
    bytes_per_chip: int
    hbm_bytes: int
    fits: bool
    parts: dict
    message: str
    source: str = "memory_analysis"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"gib_per_chip": self.bytes_per_chip / GIB, "hbm_gib": self.hbm_bytes / GIB}


def _message(need: int, target: TpuTarget, fits: bool, limit_note: str = "") -> str:
    chip = f"a {target.chip} chip has {target.hbm_gib:g} GiB"
    if fits:
        return f"fits: needs {need / GIB:.2f} GiB per chip, {chip} ({need / target.hbm_bytes:.0%}){limit_note}"
    return f"does not fit: needs {need / GIB:.2f} GiB per chip, {chip}{limit_note}"


def memory_fit(compiled, target) -> MemoryFit:
    """Per-chip bytes of ``compiled`` (a ``jax.stages.Compiled`` for the target's devices) against the
    chip's HBM: ``argument + output + temp - alias`` of ``compiled.memory_analysis()`` (per device for
    an SPMD program; generated code is not counted)."""
    target = get_target(target)
    m = compiled.memory_analysis()
    if m is None:
        raise ValueError("the compiled program has no memory analysis (compile it for the target's devices)")
    parts = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
             "temporaries": int(m.temp_size_in_bytes), "aliased": int(m.alias_size_in_bytes),
             "code": int(m.generated_code_size_in_bytes)}
    need = parts["arguments"] + parts["outputs"] + parts["temporaries"] - parts["aliased"]
    fits = need <= target.hbm_bytes
    return MemoryFit(target.name, need, target.hbm_bytes, fits, parts, _message(need, target, fits))


_OOM = re.compile(r"(?:required|used)[^()]*\(([\d.]+)\s*([KMGT])i?B?\)[^()]*available HBM \(([\d.]+)\s*([KMGT])i?B?\)",
                  re.IGNORECASE)
_UNIT = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def memory_fit_from_error(error: BaseException, target) -> MemoryFit | None:
    """The :class:`MemoryFit` of a program the TPU compiler refused for lack of HBM (its
    ``RESOURCE_EXHAUSTED: Ran out of memory ... required ... (X G) exceeds available HBM (Y G)``), or None
    when ``error`` is not such a refusal."""
    target = get_target(target)
    text = str(error)
    m = _OOM.search(text)
    if "RESOURCE_EXHAUSTED" not in text or not m:
        return None
    need = int(float(m.group(1)) * _UNIT[m.group(2).upper()])
    limit = int(float(m.group(3)) * _UNIT[m.group(4).upper()])
    note = f" (the TPU compiler refused it: {limit / GIB:.2f} GiB usable)"
    return MemoryFit(target.name, need, target.hbm_bytes, False, {"compiler_limit": limit},
                     _message(need, target, False, note), source="compiler")


def roofline(flops_per_chip: float, bytes_per_chip: float, target) -> float:
    """Estimated seconds of a program on one chip: ``max(flops / peak bf16 FLOP/s, bytes / HBM bandwidth)``.

    An estimate (a lower bound under perfect overlap and peak throughput): it ignores communication,
    kernel launch and pipeline bubbles, and non-matmul work beyond what ``bytes_per_chip`` captures.
    """
    target = get_target(target)
    if flops_per_chip < 0 or bytes_per_chip < 0:
        raise ValueError(f"flops and bytes must be non-negative, got {flops_per_chip}, {bytes_per_chip}")
    return max(flops_per_chip / (target.bf16_tflops * 1e12), bytes_per_chip / (target.hbm_gbps * 1e9))
