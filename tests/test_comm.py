"""Communication accounting from compiled HLO (jaxvdm.sharding.comm).

Small shard_map programs whose communication is known analytically, on 8 simulated CPU devices;
literal HLO snippets for the formats the CPU backend does not print (async pairs, tuple shapes,
iota and mesh-axes replica groups, GPU fusion wrappers). Every expected number below is derived by
hand from the program or the snippet, not read from a run.
"""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvdm.sharding import comm
from jaxvdm.sharding.comm import ArrayShape

F32 = 4  # bytes


@pytest.fixture(scope="module")
def mesh8(devices):
    return jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))


@pytest.fixture(scope="module")
def mesh24(devices):
    return jax.make_mesh((2, 4), ("a", "b"), axis_types=(AxisType.Explicit,) * 2)


def _sm(f, mesh, in_specs, out_specs):
    return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False))


def _sds(shape, mesh, spec, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def _sets(groups):
    return {frozenset(g) for g in groups}


# Partition ids are positions in mesh.devices.flat: in a (2, 4) mesh ("a", "b"), the devices that
# share an "a" index (a group over "b") are the rows of iota(8).reshape(2, 4), a group over "a" a column.
ROWS = _sets(np.arange(8).reshape(2, 4))  # {0,1,2,3}, {4,5,6,7}
COLS = _sets(np.arange(8).reshape(2, 4).T)  # {0,4}, {1,5}, {2,6}, {3,7}


# ----------------------------------------------------------------------------------------------
# programs compiled on the 8 simulated devices
# ----------------------------------------------------------------------------------------------


def test_psum_one_all_reduce(mesh8):
    f = _sm(lambda x: lax.psum(x, "x"), mesh8, (P("x"),), P("x"))
    x = _sds((8 * 1024,), mesh8, P("x"))  # f32[1024] per device
    live = len(jax.live_arrays())
    rep = comm.measure(f, x)
    assert len(jax.live_arrays()) == live  # ShapeDtypeStructs only: nothing allocated

    (c,) = rep.collectives
    assert c.kind == "all-reduce" and c.trip_count == 1 and c.executions == 1
    assert c.operand_shapes == (ArrayShape("f32", (1024,)),) and c.result_bytes == 1024 * F32
    assert _sets(c.groups(8)) == {frozenset(range(8))}
    expected = 2 * 7 / 8 * 4096  # 2(n-1)/n * S
    assert rep.num_devices == 8
    np.testing.assert_allclose(rep.sent, expected)
    np.testing.assert_allclose(rep.recv, expected)
    t = rep.per_kind["all-reduce"]
    assert (t.count, t.bytes_per_device, t.mean_bytes_per_device, t.group_sizes) == (1, 7168, 7168.0, (8,))
    assert rep.bytes_per_device == 7168 and set(rep.per_kind) == {"all-reduce"}
    assert "HloModule" in rep.hlo and "all-reduce" in rep.hlo

    d = json.loads(json.dumps(rep.to_dict()))
    assert d["per_kind"]["all-reduce"]["count"] == 1 and d["per_kind"]["all-reduce"]["bytes_per_device"] == 7168
    table = rep.table()
    assert re.search(r"all-reduce\s+1\s+8\s+7\.00 KiB", table), table

    # a function that is not jitted yet is jitted by measure; same program, same report
    rep2 = comm.measure(jax.shard_map(lambda x: lax.psum(x, "x"), mesh=mesh8, in_specs=(P("x"),),
                                      out_specs=P("x"), check_vma=False), x)
    assert rep2.to_dict()["per_kind"] == d["per_kind"]
    lowered = f.lower(x)
    assert comm.measure(lowered).to_dict()["per_kind"] == d["per_kind"]
    with pytest.raises(ValueError, match="StableHLO"):
        comm.collectives_from_hlo(lowered.as_text())


def test_all_gather_over_axis_of_four(mesh24):
    f = _sm(lambda x: lax.all_gather(x, "b", tiled=True), mesh24, (P(("a", "b")),), P(("a", "b")))
    rep = comm.measure(f, _sds((8 * 128, 16), mesh24, P(("a", "b"))))  # f32[128,16] per device
    (c,) = rep.collectives
    assert c.kind == "all-gather"
    assert c.operand_shapes == (ArrayShape("f32", (128, 16)),)
    assert c.result_shapes == (ArrayShape("f32", (512, 16)),)
    assert _sets(c.replica_groups) == ROWS
    R = 512 * 16 * F32
    np.testing.assert_allclose(rep.sent, 3 / 4 * R)
    assert rep.per_kind["all-gather"].group_sizes == (4,)


def test_all_to_all_and_reduce_scatter(mesh24):
    f = _sm(lambda x: lax.all_to_all(x, "b", 0, 1, tiled=True), mesh24, (P("b"),), P("b"))
    rep = comm.measure(f, _sds((4 * 8, 8), mesh24, P("b")))  # f32[8,8] per device
    assert [c.kind for c in rep.collectives] == ["all-to-all"]  # a multi-operand a2a is one collective
    (c,) = rep.collectives
    assert c.operand_bytes == 8 * 8 * F32 and _sets(c.replica_groups) == ROWS
    np.testing.assert_allclose(rep.sent, 3 / 4 * 8 * 8 * F32)

    f = _sm(lambda x: lax.psum_scatter(x, "b", tiled=True), mesh24, (P(),), P("b"))
    rep = comm.measure(f, _sds((64,), mesh24, P()))  # f32[64] per device, scattered over 4
    (c,) = rep.collectives
    assert c.kind == "reduce-scatter" and c.result_shapes == (ArrayShape("f32", (16,)),)
    np.testing.assert_allclose(rep.sent, 3 / 4 * 64 * F32)


def test_ppermute_ring_and_open_chain(mesh8):
    x = _sds((8 * 64,), mesh8, P("x"))  # f32[64] per device
    ring = [(i, (i + 1) % 8) for i in range(8)]
    rep = comm.measure(_sm(lambda v: lax.ppermute(v, "x", ring), mesh8, (P("x"),), P("x")), x)
    (c,) = rep.collectives
    assert c.kind == "collective-permute" and set(c.source_target_pairs) == set(ring)
    np.testing.assert_allclose(rep.sent, 256)
    np.testing.assert_allclose(rep.recv, 256)

    chain = [(i, i + 1) for i in range(7)]  # device 7 sends nothing, device 0 receives nothing
    rep = comm.measure(_sm(lambda v: lax.ppermute(v, "x", chain), mesh8, (P("x"),), P("x")), x)
    (c,) = rep.collectives
    assert set(c.source_target_pairs) == set(chain)
    np.testing.assert_allclose(rep.sent, [256] * 7 + [0])
    np.testing.assert_allclose(rep.recv, [0] + [256] * 7)
    t = rep.per_kind["collective-permute"]
    assert (t.bytes_per_device, t.mean_bytes_per_device, t.recv_bytes_per_device) == (256, 7 / 8 * 256, 256)


def _strip_trip_annotation(hlo):
    out = re.sub(r'"known_trip_count":\{"n":"\d+"\},?', "", hlo)
    assert "known_trip_count" not in out
    return out


def test_scan_trip_counts(mesh8):
    def scan5(x):
        return lax.scan(lambda c, _: (lax.psum(c, "x") * 0.5, None), x, None, length=5)[0]

    def nested(x):
        def outer(c, _):
            return lax.scan(lambda d, _: (lax.psum(d, "x") * 0.5, None), c, None, length=2)[0] + 1, None

        return lax.scan(outer, x, None, length=3)[0]

    x = _sds((8 * 16,), mesh8, P("x"))  # f32[16] per device: one psum moves 2*7/8*64 = 112 B
    for f, trips, loops in ((scan5, 5, [5]), (nested, 6, [3, 2])):
        rep = comm.measure(_sm(f, mesh8, (P("x"),), P("x")), x)
        (c,) = rep.collectives
        assert c.trip_count == trips and c.executions == trips
        assert [n for _, n in c.loops] == loops  # outermost first
        assert rep.per_kind["all-reduce"].count == trips
        assert rep.per_kind["all-reduce"].bytes_per_device == trips * 112
        # without XLA's annotation the trip count is inferred from the loop's induction variable
        (c2,) = comm.collectives_from_hlo(_strip_trip_annotation(rep.hlo))
        assert c2.trip_count == trips


def test_unknown_trip_count_is_flagged(mesh8):
    def dyn(x, n):
        return lax.fori_loop(0, n[0].astype(jnp.int32), lambda i, c: lax.psum(c, "x") * 0.5, x)

    f = _sm(dyn, mesh8, (P("x"), P()), P("x"))
    rep = comm.measure(f, _sds((8 * 16,), mesh8, P("x")), _sds((1,), mesh8, P()))
    (c,) = rep.collectives
    assert c.trip_count is None and not c.trip_count_known and c.executions == 1
    assert not rep.trip_counts_known and not rep.per_kind["all-reduce"].trip_counts_known
    assert rep.to_dict()["collectives"][0]["trip_count"] is None
    assert "lower bound" in rep.table()


def test_psum_over_two_axes_vs_one(mesh24):
    f = _sm(lambda x, y: (lax.psum(x, ("a", "b")), lax.psum(y, "a")), mesh24,
            (P(("a", "b")), P(("a", "b"))), (P(("a", "b")), P(("a", "b"))))
    rep = comm.measure(f, _sds((8 * 16,), mesh24, P(("a", "b"))), _sds((8 * 32,), mesh24, P(("a", "b"))))
    by_size = {c.operand_bytes: c for c in rep.collectives}
    assert sorted(by_size) == [16 * F32, 32 * F32]
    both, one = by_size[16 * F32], by_size[32 * F32]
    assert _sets(both.groups(8)) == {frozenset(range(8))}
    assert _sets(one.replica_groups) == COLS
    expected = 2 * 7 / 8 * 64 + 2 * 1 / 2 * 128
    np.testing.assert_allclose(rep.sent, expected)
    assert rep.per_kind["all-reduce"].group_sizes == (2, 8) and rep.per_kind["all-reduce"].count == 2


def test_gspmd_collectives_have_mesh_shaped_groups(devices):
    # Auto axes: the partitioner inserts the collectives and prints iota / mesh-axes replica groups.
    mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=(AxisType.Auto,) * 2)
    a = jax.ShapeDtypeStruct((16, 32), jnp.float32, sharding=NamedSharding(mesh, P("a", "b")))
    b = jax.ShapeDtypeStruct((32, 8), jnp.float32, sharding=NamedSharding(mesh, P("b", None)))
    rep = comm.measure(jax.jit(lambda u, v: u @ v, out_shardings=NamedSharding(mesh, P())), a, b)
    assert rep.collectives
    for c in rep.collectives:
        assert _sets(c.groups(8)) in (ROWS, COLS, {frozenset(range(8))}), (c.name, c.replica_groups)
    # the contraction over the sharded "b" needs a reduction within each row of the mesh
    assert any(c.kind in ("all-reduce", "reduce-scatter") and _sets(c.groups(8)) == ROWS for c in rep.collectives)


# ----------------------------------------------------------------------------------------------
# replica-group forms on literal strings (expected groups worked out by hand)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("{{0,1},{2,3}}", ((0, 1), (2, 3))),
    ("{{0,4,1,5},{2,6,3,7}}", ((0, 4, 1, 5), (2, 6, 3, 7))),
    # iota(8) reshaped to [2,4] row by row
    ("[2,4]<=[8]", ((0, 1, 2, 3), (4, 5, 6, 7))),
    ("[1,8]<=[8]", ((0, 1, 2, 3, 4, 5, 6, 7),)),
    # [[0,1,2,3],[4,5,6,7]] transposed -> [[0,4],[1,5],[2,6],[3,7]]
    ("[4,2]<=[2,4]T(1,0)", ((0, 4), (1, 5), (2, 6), (3, 7))),
    # v[i,j,k] = 4i+2j+k; T(0,2,1) walks (i,k,j): 0,2 | 1,3 | 4,6 | 5,7
    ("[4,2]<=[2,2,2]T(0,2,1)", ((0, 2), (1, 3), (4, 6), (5, 7))),
    # T(2,1,0) walks (k,j,i): 0,4 | 2,6 | 1,5 | 3,7
    ("[4,2]<=[2,2,2]T(2,1,0)", ((0, 4), (2, 6), (1, 5), (3, 7))),
    # mesh axes: device array iota(8) as [2,1,4]; a group varies axis_0, the others fixed
    ("mesh['axis_0'=2,'axis_1'=1,'axis_2'=4] {'axis_0'}", ((0, 4), (1, 5), (2, 6), (3, 7))),
    ("mesh['x'=4] {'x'}", ((0, 1, 2, 3),)),
    ("mesh[a=2,b=4] {b}", ((0, 1, 2, 3), (4, 5, 6, 7))),
    # both axes, b major within the group: group index runs over (b, a)
    ("mesh['a'=2,'b'=4] {'b','a'}", ((0, 4, 1, 5, 2, 6, 3, 7),)),
    # device_ids [2,4]T(1,0) = 0,4,1,5,2,6,3,7 laid out as [4,1,2]: rows (0,4),(1,5),(2,6),(3,7);
    # a group over axis_0 fixes axis_2: 0,1,2,3 | 4,5,6,7
    ("mesh['axis_0'=4,'axis_1'=1,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_0'}", ((0, 1, 2, 3), (4, 5, 6, 7))),
    ("mesh['a'=2,'b'=2], device_ids=(3,2,1,0) {'a'}", ((3, 1), (2, 0))),
    # sub-axis a:(2)2 of a=8 splits it as [2,2,2] (pre, size, rest), v = 4p+2s+r; group over s
    ("mesh['a'=8] {'a':(2)2}", ((0, 2), (1, 3), (4, 6), (5, 7))),
    ("{}", None),
])
def test_parse_replica_groups(text, expected):
    assert comm.parse_replica_groups(text) == expected


def test_replica_groups_read_from_attributes():
    hlo = """HloModule m, num_partitions=8
ENTRY %main (p: f32[8]) -> (f32[8], f32[8], f32[8]) {
  %p = f32[8]{0} parameter(0)
  %ar.0 = f32[8]{0} all-reduce(%p), channel_id=1, replica_groups=[4,2]<=[2,4]T(1,0), use_global_device_ids=true, to_apply=%add
  %ar.1 = f32[8]{0} all-reduce(%p), channel_id=2, replica_groups=mesh['a'=4,'b'=1,'c'=2], device_ids=([2,4]T(1,0)) {'a'}, use_global_device_ids=true, to_apply=%add
  %ar.2 = f32[8]{0} all-reduce(%p), channel_id=3, replica_groups={}, to_apply=%add
  ROOT %t = (f32[8]{0}, f32[8]{0}, f32[8]{0}) tuple(%ar.0, %ar.1, %ar.2)
}
"""
    cs = comm.collectives_from_hlo(hlo)
    assert [c.replica_groups for c in cs] == [((0, 4), (1, 5), (2, 6), (3, 7)), ((0, 1, 2, 3), (4, 5, 6, 7)), None]
    assert [c.channel_id for c in cs] == [1, 2, 3]
    assert comm.num_devices_from_hlo(hlo) == 8
    rep = comm.comm_report(cs, 8)
    # 32 B each: groups of 2 -> 32, groups of 4 -> 48, all 8 -> 56
    np.testing.assert_allclose(rep.sent, 32 + 48 + 56)


# ----------------------------------------------------------------------------------------------
# formats the CPU backend does not print
# ----------------------------------------------------------------------------------------------

# Trimmed from a jax 0.11.2 GPU compile (4 devices) of a 5-step scan doing all_gather, psum_scatter
# and ppermute: async -start/-done pairs whose start shape is ((operands), result), mesh-axes groups,
# and NO known_trip_count annotation (removed), so the trip count must be inferred from the
# fused compare and the fused increment.
GPU_SCAN = """HloModule jit_sc, is_scheduled=true, entry_computation_layout={(f32[1024]{0})->f32[1024]{0}}, num_partitions=4
FileNames
1 "x.py"
StackFrames
1 {file_location_id=1 parent_frame_id=1}

%fused_multiply (param_0: f32[4096]) -> f32[4096] {
  %param_0 = f32[4096]{0} parameter(0)
  %constant_1_clone_2 = f32[] constant(2)
  %broadcast.2.1 = f32[4096]{0} broadcast(%constant_1_clone_2), dimensions={}
  ROOT %mul.2.1 = f32[4096]{0} multiply(%param_0, %broadcast.2.1)
}

%fused_add (param_0.1: s32[]) -> s32[] {
  %param_0.1 = s32[] parameter(0)
  %constant_0_clone_2 = s32[] constant(1)
  ROOT %add.6.1 = s32[] add(%param_0.1, %constant_0_clone_2)
}

%region_1.0 (reduce_scatter.0: f32[], reduce_scatter.1: f32[]) -> f32[] {
  %reduce_scatter.1 = f32[] parameter(1)
  %reduce_scatter.0 = f32[] parameter(0)
  ROOT %add.2.0 = f32[] add(%reduce_scatter.0, %reduce_scatter.1)
}

%wrapped_add_computation (param_0.6: f32[1024], param_1.4: f32[1024]) -> f32[1024] {
  %param_0.6 = f32[1024]{0} parameter(0)
  %param_1.4 = f32[1024]{0} parameter(1)
  ROOT %add.7.1 = f32[1024]{0} add(%param_0.6, %param_1.4)
}

%region_0.0_spmd (param: (s32[], f32[1024])) -> (s32[], f32[1024]) {
  %param = (s32[], f32[1024]{0}) parameter(0)
  %get-tuple-element.19 = f32[1024]{0} get-tuple-element(%param), index=1
  %all_gather.2.2 = f32[4096]{0} all-gather(%get-tuple-element.19), channel_id=1, replica_groups=mesh['x'=4] {'x'}, dimensions={0}, use_global_device_ids=true, metadata={op_name="jit(sc)/shard_map/while/body/all_gather" scheduling_name="all-gather-start" stack_frame_id=15}, backend_config={"collective_backend_config":{"is_sync":true}}
  %collective-permute-start = ((f32[1024]{0}), f32[1024]{0}) collective-permute-start(%get-tuple-element.19), channel_id=1, source_target_pairs={{0,1},{1,2},{2,3},{3,0}}
  %loop_multiply_fusion = f32[4096]{0} fusion(%all_gather.2.2), kind=kLoop, calls=%fused_multiply
  %collective-permute-done = f32[1024]{0} collective-permute-done(%collective-permute-start)
  %reduce-scatter-start = ((f32[4096]{0}), f32[1024]{0}) reduce-scatter-start(%loop_multiply_fusion), channel_id=1, replica_groups=mesh['x'=4] {'x'}, use_global_device_ids=true, dimensions={0}, to_apply=%region_1.0
  %get-tuple-element.18 = s32[] get-tuple-element(%param), index=0
  %loop_add_fusion = s32[] fusion(%get-tuple-element.18), kind=kLoop, calls=%fused_add
  %reduce-scatter-done = f32[1024]{0} reduce-scatter-done(%reduce-scatter-start)
  %wrapped_add = f32[1024]{0} fusion(%reduce-scatter-done, %collective-permute-done), kind=kLoop, calls=%wrapped_add_computation
  ROOT %tuple.10 = (s32[], f32[1024]{0}) tuple(%loop_add_fusion, %wrapped_add)
}

%fused_compare (param_0.2: s32[]) -> pred[] {
  %param_0.2 = s32[] parameter(0)
  %constant_2_clone_2 = s32[] constant(5)
  ROOT %lt.2.1 = pred[] compare(%param_0.2, %constant_2_clone_2), direction=LT
}

%region_2.0_spmd (param.1: (s32[], f32[1024])) -> pred[] {
  %param.1 = (s32[], f32[1024]{0}) parameter(0)
  %get-tuple-element.13.0 = s32[] get-tuple-element(%param.1), index=0
  ROOT %loop_compare_fusion = pred[] fusion(%get-tuple-element.13.0), kind=kLoop, calls=%fused_compare
}

ENTRY %main.0_spmd (param.3: f32[1024]) -> f32[1024] {
  %constant_5_clone_1_0 = s32[] constant(0)
  %copy.11 = s32[] copy(%constant_5_clone_1_0)
  %param.3 = f32[1024]{0} parameter(0), sharding={mesh['x'=4], [{'x'}]}
  %copy.10 = f32[1024]{0} copy(%param.3)
  %tuple.8 = (s32[], f32[1024]{0}) tuple(%copy.11, %copy.10)
  %while.9 = (s32[], f32[1024]{0}) while(%tuple.8), condition=%region_2.0_spmd, body=%region_0.0_spmd
  ROOT %get-tuple-element.15.0 = f32[1024]{0} get-tuple-element(%while.9), index=1
}
"""

# Trimmed from a jax 0.11.2 GPU compile of a psum: the all-reduce sits in a computation that a
# fusion-start / fusion-done pair runs once.
GPU_FUSED_PSUM = """HloModule jit__lambda, is_scheduled=true, entry_computation_layout={(f32[1024]{0})->f32[1024]{0}}, num_partitions=4
%region_0.0 (psum.0: f32[], psum.1: f32[]) -> f32[] {
  %psum.1 = f32[] parameter(1)
  %psum.0 = f32[] parameter(0)
  ROOT %add.0.0 = f32[] add(%psum.0, %psum.1)
}
%fused_psum.7.0.clone (param_0.1: f32[1024]) -> f32[1024] {
  %param_0.1 = f32[1024]{0} parameter(0)
  ROOT %psum.7.2 = f32[1024]{0} all-reduce(%param_0.1), channel_id=1, replica_groups=mesh['x'=4] {'x'}, use_global_device_ids=true, to_apply=%region_0.0
}
ENTRY %main.0_spmd (param.1: f32[1024]) -> f32[1024] {
  %param.1 = f32[1024]{0} parameter(0), sharding={mesh['x'=4], [{'x'}]}
  %fusion-start = ((f32[1024]{0}), f32[1024]{0}) fusion-start(%param.1), kind=kCustom, calls=%fused_psum.7.0.clone
  ROOT %fusion-done = f32[1024]{0} fusion-done(%fusion-start)
}
"""


def test_gpu_async_pairs_and_inferred_trip_count():
    cs = {c.kind: c for c in comm.collectives_from_hlo(GPU_SCAN)}
    assert set(cs) == {"all-gather", "collective-permute", "reduce-scatter"}  # each pair counted once
    for c in cs.values():
        assert c.trip_count == 5 and c.computation == "region_0.0_spmd"
    perm, rs, ag = cs["collective-permute"], cs["reduce-scatter"], cs["all-gather"]
    assert perm.is_async and rs.is_async and not ag.is_async
    assert perm.operand_shapes == perm.result_shapes == (ArrayShape("f32", (1024,)),)
    assert rs.operand_shapes == (ArrayShape("f32", (4096,)),) and rs.result_shapes == (ArrayShape("f32", (1024,)),)
    assert perm.source_target_pairs == ((0, 1), (1, 2), (2, 3), (3, 0))
    assert rs.replica_groups == ag.replica_groups == ((0, 1, 2, 3),)
    assert ag.op_name == "jit(sc)/shard_map/while/body/all_gather"

    rep = comm.comm_report(list(cs.values()), comm.num_devices_from_hlo(GPU_SCAN))
    assert rep.num_devices == 4
    per = {k: (t.count, t.bytes_per_device) for k, t in rep.per_kind.items()}
    assert per == {
        "all-gather": (5, 5 * 3 * 4096),  # 3/4 of the gathered 16 KiB, 5 trips
        "reduce-scatter": (5, 5 * 3 * 4096),  # 3/4 of the 16 KiB operand
        "collective-permute": (5, 5 * 4096),  # the 4 KiB operand
    }

    (c,) = comm.collectives_from_hlo(GPU_FUSED_PSUM)
    assert c.kind == "all-reduce" and c.trip_count == 1 and c.computation == "fused_psum.7.0.clone"
    np.testing.assert_allclose(comm.comm_report([c], 4).sent, 2 * 3 / 4 * 4096)


# Hand-written in the formats of XLA's printer for async collectives with older conventions:
# dedicated all-gather-start (operand, result) / collective-permute-start with u32 contexts,
# a combined all-reduce-start of two arrays, a generic async-start/async-done wrapper (both naming the
# wrapped computation), inline operand shapes, /*index=N*/ comments, a loop with a trip-count
# annotation, one without (i = 2, 5, 8 while 11 > i: 3 trips), and a conditional branch.
ASYNC = """HloModule m, num_partitions=8

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(f32[] %a, f32[] %b)
}

%body (p: (s32[], f32[8,4])) -> (s32[], f32[8,4]) {
  %p = (s32[], f32[8,4]{1,0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[8,4]{1,0}) %p), index=0
  %v = f32[8,4]{1,0} get-tuple-element((s32[], f32[8,4]{1,0}) %p), index=1
  %s0 = f32[1,4]{1,0} slice(f32[8,4]{1,0} %v), slice={[0:1], [0:4]}
  %a2a = (f32[1,4]{1,0}, f32[1,4]{1,0}, f32[1,4]{1,0}, f32[1,4]{1,0}, f32[1,4]{1,0}, /*index=5*/f32[1,4]{1,0}, f32[1,4]{1,0}, f32[1,4]{1,0}) all-to-all(f32[1,4]{1,0} %s0, f32[1,4]{1,0} %s0, f32[1,4]{1,0} %s0, f32[1,4]{1,0} %s0, f32[1,4]{1,0} %s0, /*index=5*/f32[1,4]{1,0} %s0, f32[1,4]{1,0} %s0, f32[1,4]{1,0} %s0), channel_id=7, replica_groups={{0,1,2,3,4,5,6,7}}
  ROOT %t = (s32[], f32[8,4]{1,0}) tuple(s32[] %i, f32[8,4]{1,0} %v)
}

%cond (p: (s32[], f32[8,4])) -> pred[] {
  %p = (s32[], f32[8,4]{1,0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[8,4]{1,0}) %p), index=0
  %n = s32[] constant(30)
  ROOT %lt = pred[] compare(s32[] %i, s32[] %n), direction=LT
}

%body2 (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[4]{0}) %p), index=0
  %v = f32[4]{0} get-tuple-element((s32[], f32[4]{0}) %p), index=1
  %three = s32[] constant(3)
  %next = s32[] add(s32[] %i, s32[] %three)
  %r = f32[4]{0} all-reduce(f32[4]{0} %v), channel_id=11, replica_groups={}, to_apply=%add
  ROOT %t = (s32[], f32[4]{0}) tuple(s32[] %next, f32[4]{0} %r)
}

%cond2 (p: (s32[], f32[4])) -> pred[] {
  %p = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[4]{0}) %p), index=0
  %lim = s32[] constant(11)
  ROOT %gt = pred[] compare(s32[] %lim, s32[] %i), direction=GT
}

%wrapped_rs (a: f32[32]) -> f32[4] {
  %a = f32[32]{0} parameter(0)
  ROOT %rs = f32[4]{0} reduce-scatter(f32[32]{0} %a), channel_id=10, replica_groups={}, dimensions={0}, to_apply=%add
}

%branch_true (x: f32[64]) -> f32[64] {
  %x = f32[64]{0} parameter(0)
  ROOT %cp = f32[64]{0} collective-permute(f32[64]{0} %x), channel_id=9, source_target_pairs={{0,1},{1,0}}
}

%branch_false (x: f32[64]) -> f32[64] {
  ROOT %x = f32[64]{0} parameter(0)
}

ENTRY %main (x: f32[128,16], y: f32[16], z: bf16[32], w: f32[64], q: pred[]) -> f32[512,16] {
  %x = f32[128,16]{1,0} parameter(0)
  %y = f32[16]{0} parameter(1)
  %z = bf16[32]{0} parameter(2)
  %w = f32[64]{0} parameter(3)
  %q = pred[] parameter(4)
  %ags = (f32[128,16]{1,0}, f32[512,16]{1,0}) all-gather-start(f32[128,16]{1,0} %x), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}, use_global_device_ids=true
  %ars = (f32[16]{0}, bf16[32]{0}) all-reduce-start(f32[16]{0} %y, bf16[32]{0} %z), channel_id=2, replica_groups={{0,1},{2,3},{4,5},{6,7}}, use_global_device_ids=true, to_apply=%add
  %cps = (f32[64]{0}, f32[64]{0}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(f32[64]{0} %w), channel_id=3, source_target_pairs={{0,4},{4,0},{1,1}}
  %ard = (f32[16]{0}, bf16[32]{0}) all-reduce-done((f32[16]{0}, bf16[32]{0}) %ars)
  %cpd = f32[64]{0} collective-permute-done((f32[64]{0}, f32[64]{0}, u32[]{:S(2)}, u32[]{:S(2)}) %cps)
  %zero = s32[] constant(0)
  %fzero = f32[] constant(0)
  %m = f32[8,4]{1,0} broadcast(f32[] %fzero), dimensions={}
  %init = (s32[], f32[8,4]{1,0}) tuple(s32[] %zero, f32[8,4]{1,0} %m)
  %loop = (s32[], f32[8,4]{1,0}) while((s32[], f32[8,4]{1,0}) %init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"30"}}
  %two = s32[] constant(2)
  %f4 = f32[4]{0} slice(f32[16]{0} %y), slice={[0:4]}
  %init2 = (s32[], f32[4]{0}) tuple(s32[] %two, f32[4]{0} %f4)
  %loop2 = (s32[], f32[4]{0}) while((s32[], f32[4]{0}) %init2), condition=%cond2, body=%body2
  %y32 = f32[32]{0} concatenate(f32[16]{0} %y, f32[16]{0} %y), dimensions={0}
  %as = ((f32[32]{0}), f32[4]{0}, s32[]) async-start(f32[32]{0} %y32), calls=%wrapped_rs
  %ad = f32[4]{0} async-done(((f32[32]{0}), f32[4]{0}, s32[]) %as), calls=%wrapped_rs
  %c = f32[64]{0} conditional(pred[] %q, f32[64]{0} %cpd, f32[64]{0} %cpd), true_computation=%branch_true, false_computation=%branch_false
  ROOT %agd = f32[512,16]{1,0} all-gather-done((f32[128,16]{1,0}, f32[512,16]{1,0}) %ags)
}
"""


def test_async_tuple_loop_and_conditional_forms():
    cs = comm.collectives_from_hlo(ASYNC)
    by = {c.name: c for c in cs}
    assert set(by) == {"ags", "ars", "cps", "a2a", "cp", "r", "rs"}

    ag = by["ags"]
    assert ag.kind == "all-gather" and ag.is_async and ag.trip_count == 1
    assert ag.operand_shapes == (ArrayShape("f32", (128, 16)),) and ag.result_shapes == (ArrayShape("f32", (512, 16)),)
    assert ag.replica_groups == ((0, 1, 2, 3), (4, 5, 6, 7))

    ar = by["ars"]
    assert ar.kind == "all-reduce" and ar.operand_bytes == 16 * 4 + 32 * 2 == 128

    cp = by["cps"]
    assert cp.kind == "collective-permute" and cp.operand_bytes == 256
    assert cp.result_shapes == (ArrayShape("f32", (64,)),)  # from the -done, not the 4-tuple start shape

    a2a = by["a2a"]
    assert a2a.kind == "all-to-all" and a2a.trip_count == 30 and a2a.computation == "body"
    assert len(a2a.operand_shapes) == 8 and a2a.operand_bytes == 8 * 16
    assert a2a.loops == (("loop", 30),)

    assert by["r"].trip_count == 3 and by["r"].loops == (("loop2", 3),)
    rs = by["rs"]
    assert rs.kind == "reduce-scatter" and not rs.is_async and rs.trip_count == 1  # once, not per start and done
    assert rs.computation == "wrapped_rs" and rs.result_shapes == (ArrayShape("f32", (4,)),)

    br = by["cp"]
    assert br.in_conditional and br.trip_count == 1 and not ag.in_conditional

    rep = comm.comm_report(cs, 8)
    sent = np.zeros(8)
    sent += 3 / 4 * 512 * 16 * 4  # all-gather, groups of 4
    sent += 2 * 1 / 2 * 128  # combined all-reduce, groups of 2
    sent[[0, 4]] += 256  # permute 0<->4; the self pair (1,1) moves nothing
    sent += 30 * 7 / 8 * 128  # all-to-all in the 30-trip loop
    sent[[0, 1]] += 256  # permute in the conditional branch
    sent += 3 * 2 * 7 / 8 * 16  # all-reduce of f32[4] over all 8, 3 trips
    sent += 7 / 8 * 128  # reduce-scatter of f32[32] over all 8, inside the async wrapper
    np.testing.assert_allclose(rep.sent, sent)
    np.testing.assert_allclose(rep.recv, sent)  # every pair here is symmetric
    assert rep.per_kind["all-to-all"].count == 30 and rep.per_kind["collective-permute"].count == 2
    assert rep.bytes_per_device == round(sent.max())


def test_start_without_done_reads_the_start_shape():
    # a fragment holding only the start: its result is element 1 of the start's tuple shape
    hlo = """ENTRY %e (x: f32[4,2]) -> (f32[4,2], f32[16,2]) {
  %x = f32[4,2]{1,0} parameter(0)
  ROOT %ags = (f32[4,2]{1,0}, f32[16,2]{1,0}) all-gather-start(%x), channel_id=1, replica_groups=[1,4]<=[4], dimensions={0}
}
"""
    (c,) = comm.collectives_from_hlo(hlo)
    assert c.result_shapes == (ArrayShape("f32", (16, 2)),) and c.operand_shapes == (ArrayShape("f32", (4, 2)),)
    np.testing.assert_allclose(comm.comm_report([c], 4).sent, 3 / 4 * 16 * 2 * 4)


def test_format_bytes():
    assert comm.format_bytes(0) == "0 B"
    assert comm.format_bytes(512) == "512 B"
    assert comm.format_bytes(1536) == "1.50 KiB"
    assert comm.format_bytes(3 * 2**20) == "3.00 MiB"
    assert comm.format_bytes(5 * 2**30) == "5.00 GiB"


def test_errors():
    (c,) = comm.collectives_from_hlo(GPU_FUSED_PSUM)
    with pytest.raises(ValueError, match="num_devices"):
        comm.comm_report([c], 2)  # the group names devices 0..3
    with pytest.raises(ValueError, match="num_devices must be >= 1"):
        comm.comm_report([], 0)
    with pytest.raises(ValueError, match="expected HLO module text"):
        comm.collectives_from_hlo(None)
    with pytest.raises(ValueError, match="unknown HLO element type"):
        ArrayShape("q7", (2,)).nbytes
    with pytest.raises(ValueError, match="not in the mesh"):
        comm.parse_replica_groups("mesh['a'=2] {'b'}")
