"""``jaxvdm bench`` / ``jaxvdm comm`` on the tiny model over simulated CPU devices.

One bench run (module fixture) over per-step strategies, ParaStep and DualParal; its JSON must carry
every field, speedups must be finite and positive, and the communication must be what each strategy does
(nothing for one device, > 0 for cfg/ulysses/lp). A loop strategy's reference is the same strategy on
one device (DualParal's pipelined run must equal it); ``jaxvdm comm`` (abstract weights) must report the
same bytes as the bench's compiled programs; a row that fails says why and makes the command fail.
"""

import argparse
import json
import math

import jax
import numpy as np
import pytest
from jaxvdm import bench

STEP_FIELDS = ("name", "kind", "strategy", "mesh", "devices", "status", "time_s", "times_s", "speedup", "reference",
               "compile_cold_s", "compile_warm_s", "warm_cache_hit", "peak_memory_bytes", "peak_scope",
               "compiled_memory_bytes", "flops", "tflops", "tflops_per_device", "hlo_cost_flops",
               "comm_bytes_per_device", "comm", "finite")
E2E_FIELDS = ("name", "kind", "status", "time_s", "times_s", "speedup", "reference", "compile_cold_s", "steps",
              "flops", "tflops", "comm_bytes_per_device", "rel_err_vs_reference")


def _args(argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    bench.add_parser(sub)
    bench.add_comm_parser(sub)
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def result(tmp_path_factory, devices):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    args = _args(["bench", "--model", "tiny", "--dtype", "f32", "--attention", "xla", "--devices", "4",
                  "--mesh", "cfg=2,lp=2", "--strategies", "single,cfg,ulysses,lp,parastep,dualparal",
                  "--warmup", "1", "--repeats", "2", "--e2e-runs", "1", "--e2e-steps", "4", "--opt", "warmup=1",
                  "--steps", "4", "--json", str(out)])
    assert bench.run(args) == 0
    return json.loads(out.read_text())


def test_json_has_every_field(result):
    for key in ("schema", "command", "args", "hardware", "software", "model", "shape", "flops", "timing", "rows"):
        assert key in result, key
    assert result["complete"] is True and result["schema"] == bench.SCHEMA
    hw, sw = result["hardware"], result["software"]
    assert hw["platform"] == "cpu" and hw["device_count"] == 8 and hw["device_kind"]
    assert sw["jax"] == jax.__version__ and sw["jaxlib"]
    assert result["shape"]["latent"] == [1, 4, 5, 8, 8] and result["shape"]["tokens"] == 5 * 4 * 4
    assert result["flops"]["per_step"] == bench.dit_flops(bench.model_spec("tiny").config, (5, 8, 8), 16, batch=2)
    rows = {r["name"]: r for r in result["rows"]}
    # ulysses/parastep/dualparal take the 4 devices (the tiny model has 4 layers: 4 stages), lp its --mesh size
    assert set(rows) == {"single", "cfg", "ulysses", "lp", "parastep", "dualparal", "parastep on 1 device (e2e)",
                         "dualparal on 1 device (e2e)"}
    assert rows["ulysses"]["mesh"] == "sp=4" and rows["lp"]["mesh"] == "lp=2"
    assert rows["parastep"]["mesh"] == "step=4" and rows["dualparal"]["mesh"] == "stage=4"
    for r in result["rows"]:
        assert r["status"] == "ok", (r["name"], r.get("reason"))
        fields = STEP_FIELDS if r["kind"] == "step" else E2E_FIELDS
        if r["reference"] is None:
            fields = [f for f in fields if f != "rel_err_vs_reference"]
        missing = [f for f in fields if f not in r]
        assert not missing, (r["name"], missing)
        assert r["time_s"] > 0 and r["compile_cold_s"] > 0
    for r in result["rows"]:
        if r["kind"] == "step":
            assert len(r["times_s"]) == 2 and r["finite"]
            assert r["flops"] == result["flops"]["per_step"]
            assert r["compiled_memory_bytes"] > 0
            assert r["peak_memory_bytes"] is None  # CPU has no memory stats
            assert r["compile_warm_s"] > 0


def test_speedups_finite_positive_and_against_the_right_reference(result):
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["single"]["speedup"] is None and rows["single"]["reference"] is None
    for name in ("cfg", "ulysses", "lp"):
        r = rows[name]
        assert r["reference"] == "single"
        assert math.isfinite(r["speedup"]) and r["speedup"] > 0
        np.testing.assert_allclose(r["speedup"], rows["single"]["time_s"] / r["time_s"])
        np.testing.assert_allclose(r["tflops"], r["flops"] / r["time_s"] / 1e12)
    p, d = rows["parastep"], rows["dualparal"]
    assert p["reference"] == "parastep on 1 device (e2e)"
    assert d["reference"] == "dualparal on 1 device (e2e)"
    for r in (p, d):
        assert math.isfinite(r["speedup"]) and r["speedup"] > 0
    # one schedule for parastep and its reference, raised to warm-up + devices (1 + 4 > 4)
    assert p["steps"] == rows["parastep on 1 device (e2e)"]["steps"] == 5
    # the one-device reference is the serial algorithm: ParaStep N=1 makes one model call per step
    assert rows["parastep on 1 device (e2e)"]["sequential_model_calls"] == 5
    assert p["sequential_model_calls"] == 1 + 1 and p["rounds"] == 1
    # the pipelined DualParal run equals its serial oracle; ParaStep is an approximation, but close
    assert d["rel_err_vs_reference"] <= 1e-5
    assert 0 < p["rel_err_vs_reference"] < 1


def test_communication_is_what_each_strategy_does(result):
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["single"]["comm_bytes_per_device"] == 0 and rows["single"]["comm"]["count"] == 0
    assert rows["parastep on 1 device (e2e)"]["comm_bytes_per_device"] == 0
    for name in ("cfg", "ulysses", "lp", "parastep", "dualparal"):
        assert rows[name]["comm_bytes_per_device"] > 0, name
    latent = 1 * 4 * 5 * 8 * 8 * 4  # f32 bytes of the latent
    # cfg: one all-gather of the prediction pair over 2 devices: (n-1)/n * (2 * latent)
    assert rows["cfg"]["comm"]["per_kind"] == {"all-gather": {"count": 1, "bytes_per_device": latent,
                                                              "group_sizes": [2]}}
    # lp: one all-reduce of the latent over 2 devices: 2 (n-1)/n * latent
    assert rows["lp"]["comm"]["per_kind"] == {"all-reduce": {"count": 1, "bytes_per_device": latent,
                                                             "group_sizes": [2]}}
    # ulysses: 4 all-to-alls per layer (4 layers) + the token all-gather after the head
    assert rows["ulysses"]["comm"]["per_kind"]["all-to-all"]["count"] == 4 * 4
    assert rows["ulysses"]["comm"]["per_kind"]["all-gather"]["count"] == 1
    # parastep: one all-gather of the 4 guided outputs per round: (n-1)/n * (4 * latent)
    assert rows["parastep"]["comm_bytes_per_run"] == 3 * latent and rows["parastep"]["comm_unit"].startswith("round")
    assert rows["parastep"]["comm_bytes_per_device"] == rows["parastep"]["rounds"] * 3 * latent


def test_lp_row_times_a_step_of_every_axis(result):
    """The rotating partition compiles a program per axis: the row times one step of each (T, H, W) and
    reports their mean."""
    lp = {r["name"]: r for r in result["rows"]}["lp"]
    variants = lp["step_variants"]
    assert [v["lp_axis"] for v in variants] == ["T", "H", "W"] and [v["step"] for v in variants] == [0, 1, 2]
    np.testing.assert_allclose(lp["time_s"], np.mean([v["time_s"] for v in variants]))
    assert all(v["time_s"] > 0 and len(v["times_s"]) == 2 for v in variants)


def test_a_failing_row_says_why_and_fails_the_command(devices, tmp_path, capsys):
    out = tmp_path / "bad.json"
    args = _args(["bench", "--model", "tiny", "--dtype", "f32", "--attention", "xla", "--strategies", "lp",
                  "--mesh", "lp=2", "--opt", "overlap=5", "--no-baseline", "--repeats", "1", "--no-warm-compile",
                  "--json", str(out)])
    assert bench.run(args) == 1
    printed = capsys.readouterr()
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "error" and "overlap" in row["reason"] and "[0, K-1]" in row["reason"]
    assert row["reason"] in printed.out  # the whole reason, not cut
    assert "1 row(s) failed: lp" in printed.err


def test_table_and_progressive_json(result, capsys):
    table = bench.format_table(result)
    for name in ("| single |", "| cfg |", "| parastep |", "| dualparal |"):
        assert name in table
    assert "e2e 5 steps" in table and "rel err" in table


def test_comm_command_matches_the_compiled_step(result, tmp_path, capsys):
    """The abstract-weight program of ``jaxvdm comm`` is the one bench measured: same collectives, same bytes
    (for a step, and for a ParaStep round)."""
    out = tmp_path / "comm.json"
    args = _args(["comm", "--model", "tiny", "--dtype", "f32", "--attention", "xla", "--mesh", "sp=4,cfg=2",
                  "--strategy", "ulysses,cfg", "--json", str(out)])
    assert bench.run_comm(args) == 0
    printed = capsys.readouterr().out
    assert "ulysses on sp=4" in printed and "all-to-all" in printed and "by phase" in printed
    res = {r["strategy"]: r for r in json.loads(out.read_text())["results"]}
    rows = {r["name"]: r for r in result["rows"]}
    for s in ("ulysses", "cfg"):
        assert res[s]["bytes_per_device"] == rows[s]["comm_bytes_per_device"], s
        assert {k: v["count"] for k, v in res[s]["per_kind"].items()} == \
            {k: v["count"] for k, v in rows[s]["comm"]["per_kind"].items()}
    assert set(res["cfg"]["phases"]) == {"cfg_combine"}  # nothing inside the model
    out = tmp_path / "comm_parastep.json"
    assert bench.run_comm(_args(["comm", "--model", "tiny", "--dtype", "f32", "--attention", "xla", "--mesh",
                                 "step=4", "--strategy", "parastep", "--steps", "5", "--opt", "warmup=1",
                                 "--json", str(out)])) == 0
    (r,) = json.loads(out.read_text())["results"]
    assert r["unit"].startswith("round") and r["bytes_per_device"] == rows["parastep"]["comm_bytes_per_run"]


def test_mesh_planning_and_flops():
    assert bench.mesh_for("cfg+ulysses", {}, 8) == ({"cfg": 2, "sp": 4}, None)
    assert bench.mesh_for("ulysses", {"sp": 2}, 8) == ({"sp": 2}, None)
    assert bench.mesh_for("single", {}, 1) == ({}, None)
    axes, why = bench.mesh_for("cfg+ulysses", {}, 2)
    assert axes is None and "needs at least 4 devices" in why
    axes, why = bench.mesh_for("ulysses+fsdp", {}, 8)
    assert axes is None and "--mesh" in why
    assert bench.mesh_for("ulysses+fsdp", {"fsdp": 2}, 8) == ({"fsdp": 2, "sp": 4}, None)
    # analytic FLOPs, by hand for Wan 1.3B at 480x832x81 (S = 21*30*52, D = 1536, F = 8960, L = 512)
    from jaxvdm.models.presets import wan_config

    S, D, F, L = 21 * 30 * 52, 1536, 8960, 512
    layer = 8 * S * D * D + 4 * S * S * D + 4 * S * D * D + 4 * L * D * D + 4 * S * L * D + 4 * S * D * F
    embed = 2 * S * 64 * D + 2 * L * (4096 * D + D * D) + 2 * (256 * D + D * D) + 12 * D * D
    assert bench.dit_flops(wan_config("wan2.1-t2v-1.3b"), (21, 60, 104), 512, batch=2) == \
        2 * (30 * layer + embed + 2 * S * D * 64)
    with pytest.raises(ValueError, match="unknown model"):
        bench.model_spec("nope")
    from jaxvdm.models.pipeline import parse_size

    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_size("480")

