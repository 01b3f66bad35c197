"""A newcomer's first hour: oversized requests are refused before any compute in one line (and the advice
they give is true), the progress bar counts finished units, very long runs are warned about, and FP8 on a
machine that cannot run it is refused in one line naming what was asked."""

import re
import warnings

import numpy as np
import pytest

import jaxvdm
from jaxvdm.cli import main
from jaxvdm.sharding import runtime
from jaxvdm.sharding.runtime import MemoryBudgetError, check_fits, progress_bar

PROMPT = "a red circle moving left"
GIB = 2**30


def _refuse_compiles(monkeypatch):
    def compiled(*args, **kwargs):
        raise AssertionError("a program was compiled before the request was refused")

    monkeypatch.setattr(runtime.Programs, "get", compiled)


def _free_memory(monkeypatch, *values):
    """Make ``available_bytes`` report ``values`` in turn (the last one from then on)."""
    calls = []

    def free(device):
        calls.append(device)
        return values[min(len(calls), len(values)) - 1]

    monkeypatch.setattr(runtime, "available_bytes", free)
    return calls


@pytest.mark.parametrize("size", [dict(num_frames=100_000), dict(height=4096, width=4096)])
def test_oversized_request_is_refused_before_any_compile(monkeypatch, size):
    _free_memory(monkeypatch, 2 * GIB)
    _refuse_compiles(monkeypatch)
    with pytest.raises(MemoryError) as e:
        jaxvdm.generate(PROMPT, progress=False, **size)
    msg = str(e.value)
    assert "\n" not in msg and "does not fit" in msg and "2.0 GiB free" in msg
    # on simulated CPU devices (one host's memory) splitting the video over more devices is no advice
    assert "--mesh" not in msg


def test_the_advised_frame_count_passes_the_check(monkeypatch):
    """The frame count the refusal names is one the same check lets through (it then compiles)."""
    _free_memory(monkeypatch, 2 * GIB)
    _refuse_compiles(monkeypatch)
    with pytest.raises(MemoryError) as e:
        jaxvdm.generate(PROMPT, progress=False, num_frames=100_000)
    frames = int(re.search(r"about (\d+) frames fit", str(e.value)).group(1))
    assert 1 < frames < 100_000
    with pytest.raises(AssertionError, match="compiled before"):  # past the memory check, at the first compile
        jaxvdm.generate(PROMPT, progress=False, num_frames=frames, steps=1)


def test_compiled_program_that_does_not_fit_is_refused_before_it_runs(monkeypatch):
    """The lower bound passes (plenty free), the compiled step's own memory analysis does not (1 byte free):
    one line, raised by the compiled check, before any step runs."""
    calls = _free_memory(monkeypatch, 1024 * GIB, 1)
    ran = []
    real_done = runtime._Bar.done
    monkeypatch.setattr(runtime._Bar, "done", lambda self, *a, **k: (ran.append(1), real_done(self, *a, **k)))
    with pytest.raises(MemoryError) as e:
        jaxvdm.generate(PROMPT, progress=False, num_frames=4, height=16, width=16, steps=2)
    assert "\n" not in str(e.value) and "does not fit" in str(e.value) and "0.0 GiB free" in str(e.value)
    assert len(calls) >= 2 and ran == []


def test_check_fits_reads_the_memory_analysis():
    class Analysis:
        temp_size_in_bytes, output_size_in_bytes, alias_size_in_bytes = 3 * GIB, GIB, GIB

    class Compiled:
        def memory_analysis(self):
            return Analysis()

    class Device:
        platform, device_kind = "gpu", "NVIDIA H200"

        def memory_stats(self):
            return {"bytes_limit": 4 * GIB, "bytes_in_use": 2 * GIB}

    with pytest.raises(MemoryBudgetError) as e:  # needs 3 GiB, 2 GiB free
        check_fits(Compiled(), [Device()])
    assert (e.value.needed, e.value.available) == (3 * GIB, 2 * GIB) and "each NVIDIA H200" in str(e.value)
    Analysis.temp_size_in_bytes = 2 * GIB  # needs exactly what is free: fits
    check_fits(Compiled(), [Device()])


def test_cli_oversized_request_is_one_line_and_writes_nothing(monkeypatch, tmp_path, capsys):
    _free_memory(monkeypatch, 2 * GIB)
    _refuse_compiles(monkeypatch)
    out = tmp_path / "e.mp4"
    assert main(["generate", PROMPT, "--num-frames", "100000", "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxvdm: error: 100000x32x32 does not fit")
    assert list(tmp_path.iterdir()) == []


class _FakeTqdm:
    """Records, for every ``update``, how many results had been waited for at that moment."""

    def __init__(self, log, total, **kwargs):
        self.log, self.total, self.n = log, total, 0

    def update(self, n):
        self.n += n
        self.log.append(("update", self.n))

    def close(self):
        self.log.append(("close", self.n))


def _instrument(monkeypatch):
    log = []
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", lambda total, **kw: _FakeTqdm(log, total, **kw))
    real_block = runtime.jax.block_until_ready

    def block(x):
        out = real_block(x)
        log.append(("finished", None))
        return out

    monkeypatch.setattr(runtime.jax, "block_until_ready", block)
    return log


def test_progress_bar_advances_only_after_each_result_is_ready(monkeypatch):
    log = _instrument(monkeypatch)
    with progress_bar(3, "denoise", True) as bar:
        for i in range(3):
            bar.done(1, np.float32(i))
    assert log == [("finished", None), ("update", 1), ("finished", None), ("update", 2),
                   ("finished", None), ("update", 3), ("close", 3)]


@pytest.mark.parametrize("strategy,mesh,steps,updates", [
    ("single", {}, 3, 3),  # one update per step
    ("parastep", {"step": 2}, 5, 3),  # warm-up 1 step, then 2 rounds of 2 steps: one update per round
])
def test_generate_counts_finished_steps(devices, monkeypatch, strategy, mesh, steps, updates):
    from jaxvdm.sharding import make_mesh

    log = _instrument(monkeypatch)
    kw = dict(num_frames=4, height=16, width=16, steps=steps, progress=True)
    if mesh:
        kw.update(mesh=make_mesh(**mesh), strategy=strategy, warmup=1)
    jaxvdm.generate(PROMPT, **kw)
    at = [i for i, (kind, _) in enumerate(log) if kind == "update"]
    assert len(at) == updates and log[-1] == ("close", steps)  # the bar ends at the number of steps run
    for i in at:  # each update follows a wait for that unit's result
        assert log[i - 1][0] == "finished"


def test_very_long_run_is_warned_about_with_its_estimate(monkeypatch):
    clock = iter([0.0, 10.0])  # the first of 1,000 units takes 10 s: about 2.8 hours in all
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: next(clock))
    with pytest.warns(UserWarning, match=r"1000 units at about 10 s each will take about 2\.8 hours"):
        with progress_bar(1000, "denoise", False) as bar:
            bar.done(1, np.float32(0))
    clock = iter([0.0, 1.0])  # 1,000 units of 1 s: under an hour, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with progress_bar(1000, "denoise", False) as bar:
            bar.done(1, np.float32(0))


@pytest.mark.parametrize("precision", ["fp8", "fp8_attention"])
def test_fp8_on_cpu_is_refused_in_one_line(monkeypatch, tmp_path, capsys, precision):
    _refuse_compiles(monkeypatch)
    with pytest.raises(ValueError) as e:
        jaxvdm.generate(PROMPT, progress=False, precision=precision)
    assert str(e.value) == (f"precision={precision!r} needs an NVIDIA GPU of compute capability 9.0 or newer "
                            "(H100/H200); this machine runs jax on cpu")
    assert main(["generate", PROMPT, "--precision", precision, "-o", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jaxvdm: error: {e.value}"] and list(tmp_path.iterdir()) == []
