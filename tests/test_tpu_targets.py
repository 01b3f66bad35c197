"""TPU targets without a TPU: the catalog, deviceless compiles of real Wan steps for TPU slices (memory per
chip, collectives and FLOPs read from the TPU HLO), and the HLO cost reader on literal TPU HLO.

The compiles need libtpu (the TPU compiler; ``pip install 'jax[tpu]'``) and are skipped without it. They
use XLA's fastest compile setting (optimization level O0, as ``jaxvdm comm --target`` does by default).
"""

import json
import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxvdm.models.presets import model_spec
from jaxvdm.models.wan.transformer.flops import dit_flops
from jaxvdm.models.wan.transformer.model import abstract_transformer, is_block_path
from jaxvdm.sharding import topologies
from jaxvdm.sharding.comm.command import add_comm_parser, run_comm, target_axes
from jaxvdm.sharding.comm.hlo_cost import hlo_cost
from jaxvdm.sharding.topologies import GIB, TARGETS, get_target, memory_fit_from_error, roofline

needs_libtpu = pytest.mark.skipif(not topologies.libtpu_available(),
                                  reason="deviceless TPU compiles need libtpu: pip install 'jax[tpu]'")


def _comm(tmp_path, name, argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_comm_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / f"{name}.json"
    assert run_comm(parser.parse_args(["comm", *argv, "--json", str(out)])) == 0
    return {r["strategy"]: r for r in json.loads(out.read_text())["results"]}


# ----------------------------------------------------------------------------------------------
# the catalog (no libtpu needed)
# ----------------------------------------------------------------------------------------------


def test_catalog_lookups_and_errors():
    for name in ("v4-8", "v5e-4", "v5e-8", "v5p-8", "v6e-4", "v6e-8", "v6e-16"):
        t = get_target(name)
        dims = [int(x) for x in t.topology.split(":")[1].split("x")]
        assert t.chips == math.prod(dims), name  # one JAX device per chip
    assert get_target("v4-8").chips == get_target("v5p-8").chips == 4  # v4/v5p names count TensorCores
    assert get_target("v5e-8").chips == get_target("v6e-8").chips == 8  # v5e/v6e names count chips
    assert get_target("v5e-8").hbm_bytes == 16 * GIB and get_target("v6e-8").hbm_bytes == 32 * GIB
    with pytest.raises(ValueError, match="unknown TPU target 'v5e-9'; choose one of v4-8, v5e-4, v5e-8"):
        get_target("v5e-9")
    with pytest.raises(ValueError, match="unknown TPU target"):
        topologies.target_devices("tpu")


def test_roofline_and_compiler_refusals():
    v5e = get_target("v5e-8")
    assert roofline(197e12, 0, v5e) == pytest.approx(1.0)           # compute-bound: 1 s at peak
    assert roofline(1e12, 2 * 819e9, "v5e-8") == pytest.approx(2.0)  # bandwidth-bound: 2 s of HBM
    with pytest.raises(ValueError, match="non-negative"):
        roofline(-1, 0, v5e)
    err = RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                       "temporaries (28.38G) exceeds available HBM (15.75G).")
    fit = memory_fit_from_error(err, v5e)
    assert not fit.fits and fit.bytes_per_chip == int(28.38 * GIB) and fit.parts["compiler_limit"] == int(15.75 * GIB)
    assert fit.message.startswith("does not fit: needs 28.38 GiB per chip, a v5e chip has 16 GiB")
    assert memory_fit_from_error(RuntimeError("INVALID_ARGUMENT: something else"), v5e) is None


def test_target_axes_fill_the_slice():
    assert target_axes("cfg+ulysses", {}, 8) == {"cfg": 2, "sp": 4}
    assert target_axes("lp", {}, 8) == {"lp": 8}
    assert target_axes("single", {}, 8) == {"sp": 1}
    assert target_axes("ulysses+fsdp", {"fsdp": 4}, 8) == {"fsdp": 4, "sp": 2}
    with pytest.raises(ValueError, match="give all but one with --mesh"):
        target_axes("ulysses+fsdp", {}, 8)
    with pytest.raises(ValueError, match="needs 16 chips, the target has 8"):
        target_axes("ulysses", {"sp": 16}, 8)


# ----------------------------------------------------------------------------------------------
# the HLO cost reader, on literal TPU HLO (shapes as the TPU compiler prints them)
# ----------------------------------------------------------------------------------------------

_TPU_HLO = """HloModule jit_step, num_partitions=1

%fused_slice (p0: bf16[30,64,32], p1: s32[]) -> bf16[64,32] {
  %p0 = bf16[30,64,32]{2,1,0:T(8,128)(2,1)} parameter(0)
  %p1 = s32[] parameter(1)
  %c = s32[] constant(0)
  %ds = bf16[1,64,32]{2,1,0:T(8,128)(2,1)} dynamic-slice(%p0, %p1, %c, %c), dynamic_slice_sizes={1,64,32}
  ROOT %b = bf16[64,32]{1,0:T(8,128)(2,1)} bitcast(%ds)
}

%fused_mm (q0: bf16[16,64], q1: bf16[30,64,32], q2: s32[]) -> bf16[16,32] {
  %q0 = bf16[16,64]{1,0:T(8,128)(2,1)} parameter(0)
  %q1 = bf16[30,64,32]{2,1,0:T(8,128)(2,1)} parameter(1)
  %q2 = s32[] parameter(2)
  %w = bf16[64,32]{1,0:T(8,128)(2,1)} fusion(%q1, %q2), kind=kLoop, calls=%fused_slice
  ROOT %conv = bf16[16,32]{1,0:T(8,128)(2,1)} convolution(%q0, %w), dim_labels=bf_io->bf
}

%fused_heads (r0: bf16[16,64,1], r1: bf16[4,8,64]) -> bf16[16,4,8] {
  %r0 = bf16[16,64,1]{1,0,2} parameter(0)
  %r1 = bf16[4,8,64]{2,1,0} parameter(1)
  ROOT %hc = bf16[16,4,8]{2,0,1} convolution(%r0, %r1), window={size=4 pad=3_3 rhs_reversal=1}, dim_labels=bf0_0oi->b0f
}

%body (t: (s32[], bf16[16,64], bf16[30,64,32])) -> (s32[], bf16[16,64], bf16[30,64,32]) {
  %t = (s32[], bf16[16,64], bf16[30,64,32]) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = bf16[16,64]{1,0} get-tuple-element(%t), index=1
  %ws = bf16[30,64,32]{2,1,0} get-tuple-element(%t), index=2
  %y = bf16[16,32]{1,0} fusion(%x, %ws, %i), kind=kOutput, calls=%fused_mm
  %m0 = s8[1,2,2]{2,1,0} constant({...})
  %q = bf16[4,256,128]{2,1,0} constant({...})
  %k = bf16[4,512,128]{2,1,0} constant({...})
  %splash_mha_fwd_no_residuals.1 = (f32[256,128]{1,0}, f32[256,128]{1,0}, f32[256,128]{1,0}, bf16[4,256,128]{2,1,0}) custom-call(%m0, %m0, %q, %k, %k), custom_call_target="tpu_custom_call"
  %one = s32[] constant(1)
  %i1 = s32[] add(%i, %one)
  ROOT %r = (s32[], bf16[16,64], bf16[30,64,32]) tuple(%i1, %x, %ws)
}

%cond (c: (s32[], bf16[16,64], bf16[30,64,32])) -> pred[] {
  %c = (s32[], bf16[16,64], bf16[30,64,32]) parameter(0)
  %ci = s32[] get-tuple-element(%c), index=0
  %n = s32[] constant(30)
  ROOT %lt = pred[] compare(%ci, %n), direction=LT
}

ENTRY %main (a: bf16[16,64], w: bf16[30,64,32], h: bf16[16,64,1], hw: bf16[4,8,64]) -> bf16[16,4,8] {
  %a = bf16[16,64]{1,0} parameter(0)
  %w = bf16[30,64,32]{2,1,0} parameter(1)
  %h = bf16[16,64,1]{1,0,2} parameter(2)
  %hw = bf16[4,8,64]{2,1,0} parameter(3)
  %z = s32[] constant(0)
  %init = (s32[], bf16[16,64], bf16[30,64,32]) tuple(%z, %a, %w)
  %loop = (s32[], bf16[16,64], bf16[30,64,32]) while(%init), condition=%cond, body=%body
  ROOT %heads = bf16[16,4,8]{2,0,1} fusion(%h, %hw), kind=kOutput, calls=%fused_heads
}
"""


def test_hlo_cost_counts_loop_trips_kernels_and_sliced_weights():
    c = hlo_cost(_TPU_HLO)
    assert c.loops_known
    # the layer matmul [16,64]x[64,32] runs 30 times; the head "convolution" over a padded size-1 input
    # is a [16,64]x[64,32] matmul (4 x 8 outputs per row), one tap per output, not four
    assert c.matmul_flops == 30 * 2 * 16 * 32 * 64 + 2 * 16 * 4 * 8 * 64
    # 30 splash launches of 4 heads x 256 queries x 512 keys x 128
    assert c.kernels == 30 and c.kernel_flops == 30 * 4 * 4 * 256 * 512 * 128
    # operands + results of each top-level op; the fusion in the loop reads one layer's weights (64x32, cut
    # out inside a nested fusion), not the stacked 30 layers; the kernel's operands and results count once
    fusion_bytes = 2 * (16 * 64 + 64 * 32 + 16 * 32) + 4               # x, one layer of w, y; the s32 index
    kernel_bytes = 2 * (1 * 2 * 2) + 2 * (4 * 256 * 128 + 2 * 4 * 512 * 128) + 3 * 4 * 256 * 128 \
        + 2 * 4 * 256 * 128                                            # mask tables, q k v, f32 scratch, out
    counter_bytes = 3 * 4                                              # the loop counter's add
    cond_bytes = 31 * (4 + 4 + 1)                                      # 31 compares (30 trips + the exit)
    head_bytes = 2 * (16 * 64 + 4 * 8 * 64 + 16 * 4 * 8)
    assert c.hbm_bytes == 30 * (fusion_bytes + kernel_bytes + counter_bytes) + cond_bytes + head_bytes


# ----------------------------------------------------------------------------------------------
# deviceless compiles (libtpu)
# ----------------------------------------------------------------------------------------------


@needs_libtpu
def test_target_devices_are_tpu_chips():
    kinds = {"v4": "TPU v4", "v5e": "TPU v5 lite", "v5p": "TPU v5", "v6e": "TPU v6 lite"}
    for name in ("v4-8", "v5e-8", "v5p-8", "v6e-16"):
        devs = topologies.target_devices(name)
        assert len(devs) == TARGETS[name].chips and {d.platform for d in devs} == {"tpu"}
        assert {d.device_kind for d in devs} == {kinds[TARGETS[name].chip]}, name


def _weight_bytes(name, fsdp=1):
    """bf16 weight bytes per chip: every parameter, block parameters split ``fsdp`` ways."""
    state = nnx.state(abstract_transformer(model_spec(name).config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16))
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        total += leaf.size * 2 // (fsdp if is_block_path(path) else 1)
    return total


@pytest.fixture(scope="module")
def wan13_v5e8(tmp_path_factory):
    if not topologies.libtpu_available():
        pytest.skip("deviceless TPU compiles need libtpu: pip install 'jax[tpu]'")
    return _comm(tmp_path_factory.mktemp("comm"), "wan13", ["--model", "wan2.1-t2v-1.3b", "--frames", "81",
                                                            "--size", "480x832", "--target", "v5e-8",
                                                            "--strategy", "cfg+ulysses,lp,fsdp"])


@needs_libtpu
def test_wan13_480p_fits_a_v5e_chip_with_cfg_ulysses_lp_and_fsdp(wan13_v5e8):
    weights = _weight_bytes("wan2.1-t2v-1.3b")
    floors = {"cfg+ulysses": weights, "lp": weights, "fsdp": _weight_bytes("wan2.1-t2v-1.3b", fsdp=8)}
    for strategy, floor in floors.items():
        mem = wan13_v5e8[strategy]["tpu"]["memory"]
        assert mem["fits"] and floor < mem["bytes_per_chip"] < 16 * GIB, (strategy, mem)
        assert mem["message"].startswith("fits: needs ") and "a v5e chip has 16 GiB" in mem["message"]
        est = wan13_v5e8[strategy]["tpu"]["estimate"]
        assert est["video_s"] == pytest.approx(50 * est["unit_s"]) and est["unit_s"] > 0
    assert wan13_v5e8["fsdp"]["tpu"]["memory"]["bytes_per_chip"] < wan13_v5e8["lp"]["tpu"]["memory"]["bytes_per_chip"]


@needs_libtpu
def test_wan13_ulysses_collectives_and_flops_on_tpu_match_the_analytic_counts(wan13_v5e8):
    """cfg+ulysses on v5e-8 (cfg=2, sp=4): each device holds one of the CFG pair (batch 1) and 8,190 of the
    32,760 tokens; per layer 4 all-to-alls of (n-1)/n of [1, 8190, 12 heads, 128] bf16. The FLOPs read
    from the TPU HLO (30 layers, 60 splash kernels) are the analytic step's FLOPs / 8 chips."""
    r = wan13_v5e8["cfg+ulysses"]
    n, layers, tokens, heads = 4, 30, 32760 // 4, 12
    a2a = r["per_kind"]["all-to-all"]
    assert a2a["count"] == 4 * layers
    assert a2a["bytes_per_device"] == 4 * layers * (n - 1) * (1 * tokens * heads * 128 * 2) // n
    per_chip = r["tpu"]["per_chip"]
    assert per_chip["kernels"] == 2 * layers  # self- and cross-attention of every layer
    spec = model_spec("wan2.1-t2v-1.3b")
    analytic = dit_flops(spec.config, (21, 60, 104), spec.text_len, batch=2) / 8
    assert per_chip["flops"] == pytest.approx(analytic, rel=0.01)  # padding to blocks: 32,760 -> 32,768
    assert r["tpu"]["xla_cost_analysis"]["flops"] < analytic / 10  # what the scan/kernel correction fixes


@needs_libtpu
def test_wan14_720p_fits_v5e8_with_fsdp_ulysses_and_is_refused_replicated(tmp_path):
    res = _comm(tmp_path, "wan14", ["--model", "wan2.1-t2v-14b", "--frames", "81", "--size", "720x1280",
                                    "--target", "v5e-8", "--mesh", "fsdp=4", "--strategy", "fsdp+ulysses,ulysses"])
    fit = res["fsdp+ulysses"]["tpu"]["memory"]
    assert res["fsdp+ulysses"]["mesh"] == "fsdp=4,sp=2"
    assert fit["fits"] and _weight_bytes("wan2.1-t2v-14b", fsdp=4) < fit["bytes_per_chip"] < 16 * GIB
    refused = res["ulysses"]
    assert refused["compiled"] is False and refused["mesh"] == "sp=8"
    msg = refused["tpu"]["memory"]["message"]
    assert msg.startswith("does not fit: needs ") and "a v5e chip has 16 GiB" in msg
    assert refused["tpu"]["memory"]["bytes_per_chip"] > _weight_bytes("wan2.1-t2v-14b") > 16 * GIB


@needs_libtpu
def test_bench_abstract_target_reports_per_chip_memory_and_an_estimate(tmp_path, capsys):
    """``jaxvdm bench --abstract --target`` compiles each strategy's step for the TPU slice (nothing runs):
    per-chip memory against the chip's HBM, and the roofline estimate, as ``jaxvdm comm --target`` does."""
    from jaxvdm.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--abstract", "--target", "v5e-4", "--model", "tiny", "--strategies", "ulysses",
                 "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    tpu = row["tpu"]
    assert tpu["target"] == "v5e-4" and tpu["memory"]["fits"] and tpu["memory"]["hbm_gib"] == 16
    assert tpu["estimate"]["unit_s"] > 0 and row["mesh"] == "sp=4"
    assert "ESTIMATE" in capsys.readouterr().out
    assert main(["bench", "--target", "v5e-4", "--model", "tiny"]) == 2  # --target needs --abstract
    assert "add --abstract" in capsys.readouterr().err
