"""Profiling: jax.profiler traces of generate with the named phase scopes, their summary
(``jaxvdm profile``), collectives in HLO dumps per strategy, and the persistent compilation cache across
processes (and turning it off)."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from jax.profiler import ProfileData

import jaxvdm
from jaxvdm.cli import main
from jaxvdm.profiling import hlo_scopes, summarize
from jaxvdm.sharding import make_mesh

PROMPT = "a red circle moving left"
SMALL = dict(num_frames=4, height=16, width=16, steps=2, progress=False)
LATENT_BYTES = 3 * 4 * 16 * 16 * 4  # one float32 latent [1, 3, 4, 16, 16]

COLLECTIVES = ("all-to-all", "all-gather", "all-reduce", "collective-permute", "reduce-scatter")


@pytest.fixture(scope="module")
def lp_profile(tmp_path_factory, devices):
    d = tmp_path_factory.mktemp("lp_profile")
    video = jaxvdm.generate(PROMPT, mesh=make_mesh(lp=2), strategy="lp", profile_dir=d, **SMALL)
    return d, video


def test_trace_loads_and_holds_the_phase_scopes(lp_profile):
    d, video = lp_profile
    assert video.settings["strategy"] == "lp on lp=2"
    pbs = sorted(d.glob("plugins/profile/*/*.xplane.pb"))
    assert len(pbs) == 1
    data = ProfileData.from_file(str(pbs[0]))  # the profiler's own reader
    ops = [dict(ev.stats) for plane in data.planes for line in plane.lines for ev in line.events]
    modules = {str(s["hlo_module"]) for s in ops if "hlo_op" in s}
    assert any(m.startswith("jit_step") for m in modules), modules  # the denoising step ran inside the trace
    raw = pbs[0].read_bytes()
    for scope in (b"model_forward", b"lp_window", b"lp_combine"):
        assert scope in raw

    # the steps' optimised HLO is dumped next to the trace; Latent Parallelism rotates over two partitions
    hlo = sorted(p.name for p in (d / "hlo").glob("*.hlo.txt"))
    # the paper's K = 2 window is core + overlap (LATENT_PARALLELISM.md §3.1, §8.2): core n / 2, overlap 0.5 core
    lengths = {axis: n // 2 + (n // 2) // 2 for axis, n in ((2, 4), (3, 16))}  # T: 4 latent frames, H: 16 rows
    assert hlo == [f"step_lp_on_lp_2_lp_axis{a}_len{n}.hlo.txt" for a, n in sorted(lengths.items())]
    for name in hlo:
        phases = set(hlo_scopes((d / "hlo" / name).read_text()).values())
        assert {"lp_window", "model_forward", "lp_combine", "scheduler"} <= phases

    s = summarize(d)
    assert s["trace"] and s["hlo_files"] == 2
    assert s["phases"]["model_forward"] > 0 and s["phases"]["lp_combine"] > 0
    assert s["phases"]["model_forward"] > s["phases"]["lp_combine"]  # the transformer dominates the step
    assert sum(s["categories"].values()) == pytest.approx(sum(s["phases"].values()))


def test_profile_command_prints_phases_and_collectives(lp_profile, capsys):
    d, _ = lp_profile
    assert main(["profile", str(d)]) == 0
    out = capsys.readouterr().out
    assert "time per phase (device ops):" in out and re.search(r"^\s+model_forward\s+\d+\.\d+ ms", out, re.M)
    assert "collectives in 2 compiled step(s):" in out
    # LP sums the blended windows once per step: one all-reduce of the whole latent
    lines = re.findall(r"^\s+all-reduce\s+count\s+(\d+)\s+([\d,]+) B/device$", out, re.M)
    assert [(int(c), int(b.replace(",", ""))) for c, b in lines] == [(1, LATENT_BYTES)] * 2
    assert main(["profile", str(d), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["hlo_files"] == 2 and js["phases"].keys() >= {"model_forward", "lp_combine"}


def _collectives(directory):
    texts = [p.read_text() for p in directory.glob("*.hlo.txt")]
    assert len(texts) == 1
    ops = re.findall(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(", texts[0])
    per_kind = summarize(directory)["collectives"][0]["per_kind"]
    return set(ops), per_kind


def test_hlo_dump_collectives_per_strategy(devices, tmp_path):
    runs = {"single": None, "ulysses": make_mesh(sp=2), "cfg": make_mesh(cfg=2)}
    found = {}
    for strategy, mesh in runs.items():
        d = tmp_path / strategy
        jaxvdm.generate(PROMPT, mesh=mesh, strategy=strategy, dump_hlo=d, **SMALL)
        found[strategy] = _collectives(d)
    assert found["single"] == (set(), {})
    ops, per_kind = found["ulysses"]
    # tokens -> heads before self-attention and back after it, in each of the 8 layers (the loop is counted)
    assert "all-to-all" in ops and per_kind["all-to-all"]["count"] >= 2 * 8
    assert per_kind["all-to-all"]["bytes_per_device"] > 0
    ops, per_kind = found["cfg"]
    assert ops & {"all-gather", "all-reduce", "collective-permute"} and "all-to-all" not in ops
    # the guidance pair exchanges its prediction once per step: one latent's worth of bytes
    assert sum(k["count"] for k in per_kind.values()) == 1
    assert sum(k["bytes_per_device"] for k in per_kind.values()) == LATENT_BYTES


# ------------------------------------------------------------------------------------------ compilation cache

_CACHE_RUN = textwrap.dedent("""
    import json, jax
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
    import jaxvdm
    from jaxvdm.profiling import enable_compilation_cache
    v = jaxvdm.generate("a red circle", num_frames=2, height=8, width=8, steps=1, guidance_scale=1.0,
                        progress=False)
    print(json.dumps({"compile_s": v.settings["timings"]["compile_s"], "hits": len(hits),
                      "cache": str(enable_compilation_cache()), "jax_dir": jax.config.jax_compilation_cache_dir,
                      "latents": v.latents.ravel()[:8].tolist()}))
""")


def _start(cache_dir, **env):
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "JAXVDM_COMPILATION_CACHE"))}
    base.update(XLA_FLAGS="", JAX_PLATFORMS="cpu", JAXVDM_CACHE_DIR=str(cache_dir), **env)
    return subprocess.Popen([sys.executable, "-c", _CACHE_RUN], env=base, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, close_fds=False)


def _result(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _entries(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_compilation_cache_across_processes(tmp_path):
    cache, off = tmp_path / "cache", tmp_path / "off"
    first = _result(_start(cache))  # a fresh process fills the cache
    entries = _entries(cache)
    assert first["cache"] == str(cache) and first["jax_dir"] == str(cache)
    assert first["hits"] == 0 and any(e.startswith("jit_step") for e in entries), entries
    shutil.copytree(cache, off, copy_function=shutil.copy2)
    stamps = {e: (off / e).stat().st_mtime_ns for e in entries}

    # side by side (same load): a second run with the cache, and one with it turned off on a copy of it
    second_proc, off_proc = _start(cache), _start(off, JAXVDM_COMPILATION_CACHE="0")
    second, no_cache = _result(second_proc), _result(off_proc)
    assert second["hits"] >= 1  # the step (and the small jits around it) are loaded, not compiled
    assert second["compile_s"] < first["compile_s"] and second["compile_s"] < no_cache["compile_s"]
    assert no_cache["cache"] == "None" and no_cache["jax_dir"] is None
    assert no_cache["hits"] == 0  # off: the filled folder is not read ...
    assert {e: (off / e).stat().st_mtime_ns for e in _entries(off)} == stamps  # ... nor written
    np.testing.assert_array_equal(second["latents"], first["latents"])  # the cached executable computes the same
    np.testing.assert_array_equal(no_cache["latents"], first["latents"])
