"""The ``jaxvdm`` command line: generate (files, timings, meshes, HLO dumps), user errors as one line with
exit status 2 before any compute, help, and the installed entry points.

Runs ``jaxvdm.cli.main`` in-process (JAX and its 8 simulated devices are already up) with the small setting
of test_generate, so the compiled steps are shared; two subprocesses check the entry points.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import rel_err

import jaxvdm
from jaxvdm.cli import main
from jaxvdm.video import Video

PROMPT = "a red circle moving left"
SMALL_ARGS = ["--steps", "2", "--num-frames", "4", "--height", "16", "--width", "16", "--no-progress"]
SMALL = dict(num_frames=4, height=16, width=16, steps=2, progress=False)


def _cli(*args):
    return main(["generate", PROMPT, *SMALL_ARGS, *args])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxvdm: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_generate_writes_the_video_and_prints_timings(tmp_path, capsys):
    out = tmp_path / "x.mp4"
    assert _cli("--out", str(out)) == 0
    assert out.is_file() and out.stat().st_size > 0
    assert sorted(os.listdir(tmp_path)) == ["x.mp4"]  # nothing else (no temporary file)
    stdout = capsys.readouterr().out
    assert f"wrote {out} (4 frames, 16x16, 8 fps)" in stdout
    assert "model shapes, strategy single, steps 2, guidance 4.0" in stdout and "seed 0" in stdout
    m = re.search(r"time: compile (\d+\.\d\d)s, denoise (\d+\.\d\d)s, decode (\d+\.\d\d)s, total (\d+\.\d\d)s", stdout)
    assert m, stdout
    compile_s, denoise_s, decode_s, total_s = map(float, m.groups())
    assert denoise_s > 0 and total_s >= compile_s + denoise_s + decode_s - 0.02


def test_generate_matches_the_api_and_overwrite(tmp_path, capsys):
    out = tmp_path / "v.npz"
    assert _cli("--seed", "3", "-o", str(out)) == 0
    api = jaxvdm.generate(PROMPT, seed=3, **SMALL)
    saved = Video.load_npz(out)
    assert np.array_equal(saved.frames, api.frames) and np.array_equal(saved.latents, api.latents)
    assert saved.settings["seed"] == 3 and saved.settings["steps"] == 2
    capsys.readouterr()

    assert _cli("--seed", "4", "-o", str(out)) == 2  # exists, no --overwrite: refused, file kept
    assert "exists; pass --overwrite to replace it" in _one_line_error(capsys)
    assert np.array_equal(Video.load_npz(out).latents, api.latents)

    assert _cli("--seed", "4", "-o", str(out), "--overwrite") == 0
    assert np.array_equal(Video.load_npz(out).latents, jaxvdm.generate(PROMPT, seed=4, **SMALL).latents)
    assert os.listdir(tmp_path) == ["v.npz"]


def test_generate_on_a_cfg_mesh(devices, tmp_path, capsys):
    out = tmp_path / "cfg.npz"
    assert _cli("--mesh", "cfg=2", "--strategy", "cfg", "--cpu-devices", "8", "--out", str(out)) == 0
    assert "strategy cfg on cfg=2" in capsys.readouterr().out
    single = jaxvdm.generate(PROMPT, seed=0, **SMALL)
    assert rel_err(Video.load_npz(out).latents, single.latents) < 2e-5


def test_dump_hlo(tmp_path, capsys):
    hlo = tmp_path / "hlo"
    assert _cli("--dump-hlo", str(hlo), "--out", str(tmp_path / "x.npz")) == 0
    files = sorted(hlo.glob("*.hlo.txt"))
    assert [f.name for f in files] == ["step_single.hlo.txt"]
    text = files[0].read_text()
    assert text.startswith("HloModule") and "model_forward" in text and "scheduler" in text
    capsys.readouterr()
    assert main(["profile", str(hlo)]) == 0
    assert "collectives in 1 compiled step(s):" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--height", "30"], r"height=30 must be a multiple of 4 .*nearest valid: 28"),
    (["--num-frames", "0"], r"num_frames must be a positive integer, got 0"),
    (["--steps", "0"], r"--steps must be at least 1, got 0"),
    (["--strategy", "nope"], r"unknown strategy 'nope'; available: single, cfg"),
    (["--mesh", "cfg=2", "--strategy", "ulysses"], r"strategy 'ulysses' needs a mesh axis named 'sp'"),
    (["--mesh", "cfg=16", "--strategy", "cfg"], r"mesh cfg=16 needs 16 devices but only 8 are available"),
    (["--mesh", "cfg=x"], r"bad mesh axis 'cfg=x'"),
    (["--overlap", "0.3"], r"unknown option\(s\) \['overlap'\] for strategy 'single'"),
    (["--cpu-devices", "16"], r"--cpu-devices 16 cannot take effect: JAX already started with 8 cpu device"),
    (["--out", "/nonexistent/dir/x.mp4"], r"directory '/nonexistent/dir' does not exist; create it first"),
    (["--out", "x.avi"], r"unsupported suffix '\.avi'; use one of \.mp4, \.gif, \.npz"),
    (["--out", "/proc/jaxvdm-test.mp4"], r"cannot write in directory '/proc'"),
])
def test_user_errors_are_one_line_before_compute(devices, args, message, capsys, monkeypatch, tmp_path):
    if "/proc/jaxvdm-test.mp4" in args and not os.path.isdir("/proc"):
        pytest.skip("needs Linux /proc (a directory nobody can create files in)")
    monkeypatch.chdir(tmp_path)

    def no_compute(*a, **k):
        raise AssertionError("generate ran although the arguments are invalid")

    monkeypatch.setattr(jaxvdm, "generate", no_compute)
    if "--out" not in args:
        args = [*args, "--out", "x.mp4"]
    assert _cli(*args) == 2
    assert re.search(message, _one_line_error(capsys))
    assert os.listdir(tmp_path) == []


def test_two_shape_captions_are_one_line_and_not_among_the_words(tmp_path, capsys, monkeypatch):
    """A two-shape caption exits 2 with one line naming the reason and the model that takes it, writing
    nothing; --list-words, like the unknown-word error, does not offer 'and'."""
    monkeypatch.chdir(tmp_path)
    two = "a red circle moving left and a blue square moving right"
    assert main(["generate", two, *SMALL_ARGS, "--out", "x.mp4"]) == 2
    line = _one_line_error(capsys)
    assert "the shipped shapes model draws one shape per caption" in line and "--two-shapes" in line
    assert os.listdir(tmp_path) == []
    assert main(["generate", "--list-words"]) == 0
    words = re.findall(r"[a-z-]+", capsys.readouterr().out.split("\n", 2)[2])
    assert "circle" in words and "and" not in words
    assert main(["generate", "a purple circle moving left", *SMALL_ARGS, "--out", "x.mp4"]) == 2
    known = _one_line_error(capsys).split("its words are: ")[1].split(", ")
    assert "circle" in known and "and" not in known


def test_existing_output_is_refused_before_compute(tmp_path, capsys, monkeypatch):
    out = tmp_path / "x.mp4"
    out.write_bytes(b"old")
    monkeypatch.setattr(jaxvdm, "generate", lambda *a, **k: pytest.fail("generate ran"))
    assert _cli("--out", str(out)) == 2
    assert f"output {str(out)!r} exists; pass --overwrite to replace it" in _one_line_error(capsys)
    assert out.read_bytes() == b"old"


def test_profile_of_a_missing_directory(tmp_path, capsys):
    assert main(["profile", str(tmp_path / "nothing")]) == 2
    assert "no such profile or HLO directory" in _one_line_error(capsys)


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", PROMPT, "--steps", "two"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --steps: invalid int value: 'two'" in err and "Traceback" not in err


def test_help_lists_subcommands_and_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for sub in ("generate", "convert", "profile"):
        assert re.search(rf"^\s+{sub}\s", out, re.M), out
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    for flag in ("--mesh", "--strategy", "--cpu-devices", "--dump-hlo", "--profile-dir", "--overwrite", "--overlap",
                 "--warmup"):
        assert flag in out


def test_entry_points_in_fresh_processes(tmp_path):
    """The console script answers --help; ``python -m jaxvdm.cli`` with --cpu-devices gets that many devices
    although the parser imports JAX first (the mesh check passes; generate then refuses cfg without
    guidance, a user error raised before any compute)."""
    script = Path(sys.executable).parent / "jaxvdm"
    assert script.is_file(), f"console script not installed at {script}"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    help_proc = subprocess.Popen([str(script), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                 text=True, close_fds=False)
    gen_proc = subprocess.Popen(
        [sys.executable, "-m", "jaxvdm.cli", "generate", PROMPT, *SMALL_ARGS, "--out", str(tmp_path / "x.npz"),
         "--mesh", "cfg=2", "--strategy", "cfg", "--cpu-devices", "2", "--guidance-scale", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, close_fds=False)
    out, err = help_proc.communicate(timeout=120)
    assert help_proc.returncode == 0, err
    assert out.startswith("usage: jaxvdm")
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and not line.startswith("     ")]
    assert listed == ["generate", "convert", "profile", "bench", "comm"], out
    out, err = gen_proc.communicate(timeout=120)
    assert gen_proc.returncode == 2, err
    assert err.strip().splitlines() == [
        "jaxvdm: error: strategy 'cfg' splits the guidance pair, but guidance_scale <= 1 disables guidance; "
        "use guidance_scale > 1 or drop 'cfg'"]
    assert os.listdir(tmp_path) == []


def test_comm_and_bench_subcommands(devices, tmp_path, capsys):
    """``jaxvdm comm`` and ``jaxvdm bench`` run through the main CLI: Ulysses' step has its 4 all-to-alls
    per layer, CFG's one all-gather outside the model, and bench writes a complete JSON."""
    out = tmp_path / "comm.json"
    assert main(["comm", "--model", "tiny", "--dtype", "f32", "--attention", "xla", "--mesh", "sp=2,cfg=2",
                 "--strategy", "ulysses,cfg", "--json", str(out)]) == 0
    res = {r["strategy"]: r for r in json.loads(out.read_text())["results"]}
    from jaxvdm import bench

    layers = bench.model_spec("tiny").config.num_layers
    assert res["ulysses"]["per_kind"]["all-to-all"]["count"] == 4 * layers
    assert set(res["cfg"]["phases"]) == {"cfg_combine"}
    js = tmp_path / "bench.json"
    assert main(["bench", "--model", "tiny", "--strategies", "single,cfg", "--dtype", "f32", "--attention", "xla",
                 "--warmup", "1", "--repeats", "1", "--no-warm-compile", "--json", str(js)]) == 0
    rows = {r["name"]: r for r in json.loads(js.read_text())["rows"]}
    assert rows["single"]["status"] == rows["cfg"]["status"] == "ok" and rows["cfg"]["speedup"] > 0
    capsys.readouterr()
    assert main(["comm", "--model", "tiny", "--strategy", "nope"]) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err
