"""Every exact strategy's denoising step communicates exactly what its algorithm says.

The step is the sampler's own (``Denoiser.step_fn``: guided prediction over the mesh + scheduler
update), compiled for a tiny Wan config on simulated CPU devices; its collectives are read from the
optimised HLO by ``jaxvdm.sharding.comm`` and compared with counts and bytes derived by hand.

Layers run under ``lax.scan``: a collective of the layer body appears ONCE in the HLO, inside a
``while`` loop whose trip count is the layer count; ``comm`` multiplies by it (``executions``). The
tests check both: the number of distinct collective instructions in the body and their trip count.

Byte conventions (``jaxvdm.sharding.comm``; per device, one execution, group of ``n``):
all-to-all ``(n-1)/n * S`` (S = the device's operand bytes), all-gather ``(n-1)/n * R`` (R = gathered
result bytes), all-reduce ``2 (n-1)/n * S``, collective-permute ``S`` per source.

Model: L = 3 layers, H = 3 heads of Dh = 8, latent [1, 4, 3, 6, 10] with patch (1, 2, 2): a 3x3x5 grid of
S = 45 tokens (divisible by none of 2 and 4: Ulysses/Ring pad to ``ceil(S/n)*n``, Ulysses pads heads
to ``ceil(H/n)*n``); guidance on, so the model batch is B = 2 (the cond/uncond pair) unless ``cfg``
splits it. Everything float32 (4 bytes).
"""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxvdm.models.wan.transformer import WanConfig, init_transformer
from jaxvdm.profiling import PHASES
from jaxvdm.sharding.sampling import Denoiser
from jaxvdm.models.schedulers import UniPC
from jaxvdm.sharding import comm
from jaxvdm.sharding.mesh import make_mesh, parse_mesh_spec
from jaxvdm.sharding.registry import resolve

L, H, DH = 3, 3, 8
CFG = WanConfig(num_attention_heads=H, attention_head_dim=DH, in_channels=4, out_channels=4, text_dim=12, freq_dim=16,
                ffn_dim=32, num_layers=L)
SHAPE = (1, 4, 3, 6, 10)
S = 3 * 3 * 5  # tokens
PV_COUT = 1 * 2 * 2 * 4  # head output channels per token (patch volume x out channels)
F32 = 4
LATENT = math.prod(SHAPE) * F32  # bytes of one latent / one guided prediction
SCHED = UniPC(4, shift=3.0)


@pytest.fixture(scope="module")
def model(devices):
    return init_transformer(CFG, seed=0)


def step_report(model, strategy, mesh_spec, *, guidance=True):
    mesh = make_mesh(parse_mesh_spec(mesh_spec)) if mesh_spec else None
    plan = resolve(strategy, mesh)
    den = Denoiser(model, plan, mesh, attention="xla")
    window = den.windows(SHAPE, SCHED.num_steps)[0]
    x = den.place(jnp.zeros(SHAPE, jnp.float32))
    ctx = den.place(jnp.zeros((2 if guidance else 1, 5, 12), jnp.float32))
    args = (den.state, x, den.place(SCHED.init(x)), jnp.int32(0), ctx, den.place(jnp.float32(5.0)))
    text = den.step_fn(SCHED, window).lower(*args).compile().as_text()
    rep = comm.comm_report(comm.collectives_from_hlo(text), comm.num_devices_from_hlo(text), hlo=text)
    assert rep.trip_counts_known and not rep.unaccounted
    return rep, mesh


def phase(c) -> str:
    return next((p for p in reversed(c.op_name.split("/")) if p in PHASES), "other")


def of_kind(rep, kind):
    return [c for c in rep.collectives if c.kind == kind]


def in_layers(c) -> bool:
    """Inside the layer scan: one enclosing loop whose trip count is the layer count."""
    return len(c.loops) == 1 and c.trip_count == L and c.executions == L


def groups(c, n_devices):
    return {frozenset(g) for g in c.groups(n_devices)}


def test_single_device_step_has_no_collective(model):
    rep, _ = step_report(model, "single", None)
    assert rep.collectives == () and rep.bytes_per_device == 0


def test_cfg_one_exchange_of_the_guided_output_nothing_in_the_model(model):
    rep, _ = step_report(model, "cfg", "cfg=2")
    (c,) = rep.collectives  # exactly one collective in the whole step
    assert c.kind == "all-gather" and c.executions == 1 and not c.loops
    assert phase(c) == "cfg_combine"
    # each device contributes its half of the pair: [1, C, T, H, W] -> [2, C, T, H, W]
    assert c.operand_shapes == (comm.ArrayShape("f32", SHAPE),)
    assert c.result_bytes == 2 * LATENT
    assert groups(c, 2) == {frozenset({0, 1})}
    assert rep.bytes_per_device == (2 - 1) / 2 * 2 * LATENT == LATENT


@pytest.mark.parametrize("n", [2, 4])
def test_ulysses_four_all_to_alls_per_layer(model, n):
    rep, _ = step_report(model, "ulysses", f"sp={n}")
    a2a = of_kind(rep, "all-to-all")
    # q, k, v to heads and the output back: 4 instructions in the layer body, each run L times
    assert len(a2a) == 4 and all(in_layers(c) for c in a2a)
    assert rep.per_kind["all-to-all"].count == 4 * L
    assert all(phase(c) == "model_forward" for c in rep.collectives)
    s_loc = -(-S // n)  # tokens per device (padded)
    h_pad = -(-H // n) * n  # heads padded to a multiple of n
    per_a2a = 2 * s_loc * h_pad * DH * F32  # the device's [B, S/n, H_pad, Dh] tensor
    for c in a2a:
        assert c.operand_bytes == per_a2a
        assert groups(c, n) == {frozenset(range(n))}
    # the only other collective: tokens gathered back once after the head, outside the layers
    (g,) = of_kind(rep, "all-gather")
    assert not g.loops and g.result_bytes == 2 * s_loc * n * PV_COUT * F32
    assert set(rep.per_kind) == {"all-to-all", "all-gather"}
    a2a_bytes = 4 * L * (n - 1) / n * per_a2a
    gather_bytes = (n - 1) / n * 2 * s_loc * n * PV_COUT * F32
    assert rep.per_kind["all-to-all"].bytes_per_device == a2a_bytes
    assert rep.bytes_per_device == a2a_bytes + gather_bytes


@pytest.mark.parametrize("n", [2, 4])
def test_ring_passes_kv_n_minus_1_times_per_layer(model, n):
    rep, _ = step_report(model, "ring", f"sp={n}")
    perms = of_kind(rep, "collective-permute")
    assert perms and all(in_layers(c) for c in perms)
    # k and v chunks [B, S/n, H, Dh] each go n-1 hops round the ring in every layer
    chunk = 2 * (-(-S // n)) * H * DH * F32
    arrays = sum(len(c.operand_shapes) for c in perms)
    assert arrays == 2 * (n - 1)
    assert all(s.nbytes == chunk for c in perms for s in c.operand_shapes)
    ring = {(i, (i + 1) % n) for i in range(n)}
    assert all(set(c.source_target_pairs) == ring for c in perms)
    assert rep.per_kind["collective-permute"].bytes_per_device == 2 * (n - 1) * L * chunk
    assert set(rep.per_kind) == {"collective-permute", "all-gather"}
    assert rep.per_kind["all-gather"].count == 1


def test_lp_one_all_reduce_per_step_nothing_in_the_model(model):
    rep, _ = step_report(model, "lp", "lp=2")
    (c,) = rep.collectives
    assert c.kind == "all-reduce" and c.executions == 1 and not c.loops
    assert phase(c) == "lp_combine"
    assert c.operand_shapes == (comm.ArrayShape("f32", SHAPE),)  # the blended full-latent prediction
    assert rep.bytes_per_device == 2 * (2 - 1) / 2 * LATENT


def test_cfg_plus_ulysses_groups_split_the_mesh(model):
    """cfg=2, sp=2 (devices [[0, 1], [2, 3]]): all-to-alls within a cfg half (batch 1), the guided
    exchange across the halves."""
    rep, mesh = step_report(model, "cfg+ulysses", "cfg=2,sp=2")
    sp_groups = {frozenset({0, 1}), frozenset({2, 3})}
    cfg_groups = {frozenset({0, 2}), frozenset({1, 3})}
    a2a = of_kind(rep, "all-to-all")
    assert len(a2a) == 4 and all(in_layers(c) and groups(c, 4) == sp_groups for c in a2a)
    s_loc, h_pad = -(-S // 2), 4
    assert all(c.operand_bytes == 1 * s_loc * h_pad * DH * F32 for c in a2a)
    gathers = {phase(c): c for c in of_kind(rep, "all-gather")}
    assert set(gathers) == {"model_forward", "cfg_combine"}
    assert groups(gathers["model_forward"], 4) == sp_groups
    assert groups(gathers["cfg_combine"], 4) == cfg_groups
    assert gathers["cfg_combine"].result_bytes == 2 * LATENT
    expected = 4 * L * 0.5 * s_loc * h_pad * DH * F32 + 0.5 * 2 * s_loc * PV_COUT * F32 + 0.5 * 2 * LATENT
    np.testing.assert_allclose(rep.sent, expected)


def test_without_guidance_cfg_free_strategies_send_half(model):
    """Without guidance the batch is 1: Ulysses' all-to-alls carry half the bytes of the guided step."""
    guided, _ = step_report(model, "ulysses", "sp=4")
    plain, _ = step_report(model, "ulysses", "sp=4", guidance=False)
    assert plain.per_kind["all-to-all"].count == guided.per_kind["all-to-all"].count == 4 * L
    assert 2 * plain.bytes_per_device == guided.bytes_per_device



def test_comm_prints_dualparal_stage_flops(devices, tmp_path, capsys):
    """``jaxvdm comm`` shows what DualParal's program measures about itself: each stage's FLOPs per slot
    (from each stage's own compiled work), which the paper's even split of layers keeps balanced."""
    from jaxvdm.cli import main

    out = tmp_path / "comm.json"
    assert main(["comm", "--model", "tiny", "--dtype", "f32", "--attention", "xla", "--mesh", "stage=2",
                 "--strategy", "dualparal", "--json", str(out)]) == 0
    details = json.loads(out.read_text())["results"][0]["details"]
    flops = details["stage_flops_per_slot"]
    assert len(flops) == 2 and min(flops) > 0 and max(flops) / min(flops) < 1.1
    assert 0 < details["bubble_ratio"] < 1
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("details: ")]
    assert len(printed) == 1 and "FLOPs per slot by stage" in printed[0]
