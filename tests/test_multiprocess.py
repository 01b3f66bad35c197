"""Multi-process runs: 2 processes x 4 CPU devices (gloo collectives) equal one process x 8 devices.

The test starts two copies of this file as workers (``python test_multiprocess.py --worker ...``) on
localhost. Each first runs ``jaxvdm generate --coordinator ... --num-processes 2 --process-id i`` (the
CLI joins the run; only process 0 writes and reports), then checks that
:func:`jaxvdm.sharding.initialize_distributed` is idempotent, builds meshes over all 8 devices with
``make_mesh`` and runs :func:`jaxvdm.generate` (the shipped model, tiny sizes) for one composition of
every strategy family, saving the latents per process and a Video that only process 0 may write. The
pytest process runs the same generations on its 8 simulated devices meanwhile and compares. Workers run
in their own process group and are killed (that group only) if one fails or they pass the time limit;
a failure shows their stderr.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# (strategy, mesh axes, strategy options); every mesh uses all 8 devices
CASES = [
    ("cfg+ulysses", {"cfg": 2, "sp": 4}, {}),
    ("ring", {"sp": 8}, {}),
    ("lp+cfg", {"cfg": 2, "lp": 4}, {}),
    ("parastep+lp+cfg", {"step": 2, "cfg": 2, "lp": 2}, {"warmup": 1}),
    ("dualparal+cfg", {"cfg": 2, "stage": 4}, {"block_frames": 1, "context_frames": 1}),
]
GEN = dict(num_frames=4, height=16, width=16, steps=3, seed=0, progress=False)
PROMPT = "a red circle moving left"
TIME_LIMIT_S = 240


def _generate_all(make_mesh, generate):
    """``{strategy: latents}``, ``{strategy: frames}`` (numpy) and ``{strategy: timings}`` for every case."""
    lat, frames, seconds = {}, {}, {}
    for strategy, axes, options in CASES:
        t0 = time.perf_counter()
        video = generate(PROMPT, mesh=make_mesh(**axes), strategy=strategy, **GEN, **options)
        lat[strategy], frames[strategy] = video.latents, video.frames
        seconds[strategy] = dict(wall_s=round(time.perf_counter() - t0, 2),
                                 **{k: round(v, 2) for k, v in video.settings["timings"].items()})
    return lat, frames, seconds


# ------------------------------------------------------------------------------------------ worker


def _worker(port: int, process_id: int, out_dir: str) -> None:
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import numpy as np

    import jaxvdm
    from jaxvdm import cli
    from jaxvdm.sharding import initialize_distributed, is_main_process, make_mesh

    address = f"127.0.0.1:{port}"
    status = cli.main(["generate", PROMPT, "-o", str(Path(out_dir) / "cli.npz"), "--mesh", "sp=8", "--strategy",
                       "ring", "--coordinator", address, "--num-processes", "2", "--process-id", str(process_id),
                       "--no-progress"] + [f"--{k.replace('_', '-')}={v}" for k, v in GEN.items() if k != "progress"])
    assert status == 0, status
    info = initialize_distributed(address, 2, process_id)  # already joined by the CLI: returns the set-up
    assert (info.process_id, info.num_processes, info.local_devices, info.global_devices) == (process_id, 2, 4, 8)
    assert len(jax.devices()) == 8 and jax.process_count() == 2
    mesh = make_mesh(cfg=2, sp=4)
    assert {d.process_index for d in mesh.devices.flat} == {0, 1}

    lat, frames, seconds = _generate_all(make_mesh, jaxvdm.generate)
    # only process 0 writes: both processes call save, each with its own file name
    video = jaxvdm.Video(frames=frames["ring"], fps=8, latents=lat["ring"])
    video.save(Path(out_dir) / f"video_{process_id}.npz")
    np.savez(Path(out_dir) / f"latents_{process_id}.npz", **{k.replace("+", "_"): v for k, v in lat.items()})
    with open(Path(out_dir) / f"info_{process_id}.json", "w") as fh:
        json.dump({"main": is_main_process(), "timings": seconds}, fh)


# ------------------------------------------------------------------------------------------ test


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path):
    """Starts the two workers; returns ``[(process, stdout file, stderr file)]``."""
    port = _free_port()
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join([f for f in env.get("XLA_FLAGS", "").split()
                                 if "xla_force_host_platform_device_count" not in f]
                                + ["--xla_force_host_platform_device_count=4"])
    env.update(JAX_PLATFORMS="cpu", JAXVDM_COMPILATION_CACHE="0", JAXVDM_PROGRESS="0", PYTHONUNBUFFERED="1")
    for var in ("JAXVDM_COORDINATOR", "JAXVDM_NUM_PROCESSES", "JAXVDM_PROCESS_ID"):
        env.pop(var, None)
    procs = []
    for pid in range(2):
        out = open(tmp_path / f"stdout_{pid}.txt", "w")
        err = open(tmp_path / f"stderr_{pid}.txt", "w")
        p = subprocess.Popen([sys.executable, __file__, "--worker", str(port), str(pid), str(tmp_path)],
                             stdout=out, stderr=err, env=env, cwd=str(tmp_path), start_new_session=True)
        procs.append((p, out, err))
    return procs


def _wait(procs, tmp_path: Path, limit: float) -> str | None:
    """Waits for the workers; kills their process groups on time-out or when one fails. Returns a
    failure description (with the workers' stderr) or None."""
    deadline = time.monotonic() + limit
    problem = None
    while any(p.poll() is None for p, _, _ in procs):
        failed = [p for p, _, _ in procs if p.poll() not in (None, 0)]
        if failed:
            problem = f"worker exited with status {failed[0].returncode}"
            break
        if time.monotonic() > deadline:
            problem = f"workers did not finish within {limit:.0f} s"
            break
        time.sleep(0.2)
    for p, _, _ in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the worker's own session: only what this test started
            except ProcessLookupError:
                pass
            p.wait()
    for _, out, err in procs:
        out.close()
        err.close()
    if problem is None and any(p.returncode != 0 for p, _, _ in procs):
        problem = "worker exited with status " + ", ".join(str(p.returncode) for p, _, _ in procs)
    if problem is None:
        return None
    logs = []
    for pid in range(2):
        text = (tmp_path / f"stderr_{pid}.txt").read_text(errors="replace")
        text = "\n".join(line for line in text.splitlines() if not line.startswith("[Gloo]"))
        logs.append(f"--- process {pid} (status {procs[pid][0].returncode}) stderr, last lines:\n{text[-4000:]}")
    return problem + "\n" + "\n".join(logs)


@pytest.mark.filterwarnings("ignore:dualparal.*cannot fill a pipeline")  # 3 blocks on 4 stages: tiny on purpose
def test_two_processes_equal_one(devices, tmp_path):
    import numpy as np

    import jaxvdm
    from jaxvdm.sharding import make_mesh

    procs = _launch(tmp_path)
    try:
        ref_lat, ref_frames, _ = _generate_all(make_mesh, jaxvdm.generate)  # meanwhile, here on 8 devices
    finally:
        problem = _wait(procs, tmp_path, TIME_LIMIT_S)
    assert problem is None, problem

    infos = [json.loads((tmp_path / f"info_{i}.json").read_text()) for i in range(2)]
    assert [i["main"] for i in infos] == [True, False]
    for pid in range(2):
        with np.load(tmp_path / f"latents_{pid}.npz") as z:
            got = {k: z[k] for k in z.files}
        assert sorted(got) == sorted(s.replace("+", "_") for s, _, _ in CASES)
        for strategy, ref in ref_lat.items():
            lat = got[strategy.replace("+", "_")]
            assert lat.shape == ref.shape == (1, 3, 4, 16, 16)
            err = float(np.max(np.abs(lat - ref)))
            assert err <= 1e-5, f"{strategy}: process {pid} differs from one process by {err:.3g}"
    # the videos: written by process 0 only, complete, no temporary file left behind
    files = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".npz" and not p.name.startswith("latents"))
    assert files == ["cli.npz", "video_0.npz"], files
    for name in files:
        saved = jaxvdm.Video.load_npz(tmp_path / name)
        assert np.array_equal(saved.frames, ref_frames["ring"])
        assert float(np.max(np.abs(saved.latents - ref_lat["ring"]))) <= 1e-5
    reports = [(tmp_path / f"stdout_{i}.txt").read_text() for i in range(2)]
    assert "wrote" in reports[0] and "strategy ring on sp=8" in reports[0] and "wrote" not in reports[1], reports


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--worker":
    _worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
