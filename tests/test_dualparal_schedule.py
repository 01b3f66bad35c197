"""DualParal's host schedule: layout, queue, pipeline slots, cache flags, noise pool (pure Python/numpy).

Independent checks: the queue is compared with a literal FIFO re-enactment of §2.2 (enqueue, dequeue,
tail-to-head sweep); the pipeline is re-played slot by slot from its own tables (ticks, arrivals,
stage-0 latent step counters, a per-stage cache that only writers touch); bubble counts are compared
with the design document's independent slot simulation (§2.12).
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxvdm.sharding import dualparal_schedule as ds


# ------------------------------------------------------------------------------------------ layout


@given(Nb=st.integers(1, 9), B=st.integers(1, 9), c_frac=st.floats(0, 1))
@settings(max_examples=60, deadline=None)
def test_layout_partitions_video_and_windows(Nb, B, c_frac):
    C = int(round(c_frac * B))
    lay = ds.block_layout(C + Nb * B, B, C)
    assert lay.num_blocks == Nb and lay.window == B + C
    covered = []
    for k in range(Nb):
        a, b = lay.owned(k)
        covered.extend(range(a, b))
        w = lay.window_start(k)
        # window = [C frames of block k-1 | own B] (block 0: its own B + C), always B + C frames
        assert w + B + C == b
        if k == 0:
            assert (a, b) == (0, B + C) and w == 0
        else:
            assert b - a == B and w == a - C
            pa, pb = lay.owned(k - 1)
            assert pb == a and pb - C >= pa  # the context is the predecessor's last C frames
    assert covered == list(range(C + Nb * B))


def test_frames_for_matches_spec_example():
    # §2.1: B = 8, C = 8, Lat = 40 -> 48 latents -> 189 video frames.
    assert ds.frames_for(5, 8, 8) == 189
    assert ds.block_layout(48, 8, 8).num_blocks == 5
    # 1,025 frames = 257 latents, e.g. B=8/C=1 (32 blocks).
    assert ds.frames_for(32, 8, 1) == 1025
    assert ds.frames_for(2, 4, 2, vae_stride_t=1) == 10


def test_layout_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"use 24 or 32 latent frames"):
        ds.block_layout(30, 8, 8)
    with pytest.raises(ValueError, match=r"use 16 latent frames"):
        ds.block_layout(10, 8, 8)  # fewer frames than one block
    with pytest.raises(ValueError, match=r"C <= block_frames B"):
        ds.block_layout(26, 8, 10)
    with pytest.raises(ValueError, match=r"C must be >= 0"):
        ds.block_layout(16, 8, -1)
    with pytest.raises(ValueError, match=r"B must be >= 1"):
        ds.block_layout(16, 0, 0)
    with pytest.raises(ValueError, match=r"at least one block"):
        ds.frames_for(0, 8, 8)
    with pytest.raises(ValueError, match=r"integer"):
        ds.block_layout(24.0, 8, 8)


# ------------------------------------------------------------------------------------------ queue


def fifo_reenactment(Nb, T):
    """§2.2 literally: per iteration enqueue, dequeue finished head, sweep tail -> head. Runs T + Nb
    iterations (the reference's count, including the drain-only one)."""
    q, per_iter = [], []
    for i in range(T + Nb):
        if i < Nb:
            q.append([i, 0])
        while q and q[0][1] == T:
            q.pop(0)
        done = []
        for blk in reversed(q):
            done.append((blk[0], blk[1]))
            blk[1] += 1
        per_iter.append(done)
    return per_iter


@given(Nb=st.integers(1, 12), T=st.integers(1, 40))
@settings(max_examples=80, deadline=None)
def test_queue_matches_fifo_reenactment(Nb, T):
    ref = fifo_reenactment(Nb, T)
    assert ref[-1] == []  # the last reference iteration only drains
    assert ds.num_iterations(Nb, T) == T + Nb - 1 == len(ref) - 1
    serial = []
    for i, want in enumerate(ref):
        got = ds.queue(i, Nb, T)
        assert [(it.k, it.d) for it in got] == want
        assert ds.queue_length(i, Nb, T) == len(want) == max(0, min(i, Nb - 1) - max(0, i - T + 1) + 1)
        for p, it in enumerate(got):
            assert it.d == i - it.k and it.iteration == i
            assert it.has_successor_context == (p > 0)
            assert it.is_block0 == (it.k == 0)
            assert it.prev_ctx_step == (None if it.k == 0 else it.d + 1)
            assert it.prev_finished == (it.k > 0 and it.d == T - 1)
            if it.k == Nb - 1:
                assert not it.has_successor_context  # the last block is always the tail
        serial.extend(got)
    order = ds.serial_order(Nb, T)
    assert order == serial
    assert [it.index for it in order] == list(range(Nb * T))
    assert sorted((it.k, it.d) for it in order) == [(k, d) for k in range(Nb) for d in range(T)]


def test_queue_worked_example():
    # §2.2: T = 50, Nb = 5.
    q = [ds.queue_length(i, 5, 50) for i in range(55)]
    assert q == [1, 2, 3, 4] + [5] * 46 + [4, 3, 2, 1] + [0]
    assert len(ds.serial_order(5, 50)) == 250


# ------------------------------------------------------------------------------------------ pipeline


def deps_of(k, d, deterministic):
    out = [(k, d - 1)] if d > 0 else []
    if deterministic and k > 0:
        out.append((k - 1, d))
    return out


def check_schedule(sc):
    """Re-plays a schedule from its own tables and asserts every rule of the pipeline."""
    Nb, T, N = sc.Nb, sc.T, sc.N
    items = ds.serial_order(Nb, T)
    assert list(sc.items) == items
    S = sc.num_slots
    # (1) pipeline ticks: stage s in slot τ does what stage s-1 did in slot τ-1.
    for s in range(1, N):
        assert sc.slots[0].items[s] is None
        for tau in range(1, S):
            assert sc.slots[tau].items[s] == sc.slots[tau - 1].items[s - 1]
    # (2) every stage processes every item exactly once, in serial order; no idle tail or head.
    for s in range(N):
        assert [sl.items[s] for sl in sc.slots if sl.items[s] is not None] == items
    assert sc.slots[0].items[0] == items[0] and sc.slots[-1].items[N - 1] == items[-1]
    entry = {}
    last = {}
    for tau, sl in enumerate(sc.slots):
        if sl.items[0] is not None:
            entry[(sl.items[0].k, sl.items[0].d)] = tau
        if sl.items[N - 1] is not None:
            last[(sl.items[N - 1].k, sl.items[N - 1].d)] = tau
    assert [entry[(it.k, it.d)] for it in items] == list(sc.entry_slot)
    # (3) arrivals: what the last stage finished in the previous slot.
    assert sc.slots[0].arrivals == ()
    for tau in range(1, S):
        prev = sc.slots[tau - 1].items[N - 1]
        assert sc.slots[tau].arrivals == (() if prev is None else (prev,))
    assert sc.final_arrivals == ((items[-1],),)
    # (4) dependencies: results back at stage 0 before entry (last-stage slot <= entry - 1).
    for it in items:
        for dep in deps_of(it.k, it.d, sc.deterministic_context):
            assert last[dep] <= entry[(it.k, it.d)] - 1
    # (5) greedy: every bubble before an item is forced by one of its dependencies.
    for j in range(1, len(items)):
        e, pe = sc.entry_slot[j], sc.entry_slot[j - 1]
        if e > pe + 1:
            assert any(last[dep] == e - 1 for dep in deps_of(items[j].k, items[j].d, sc.deterministic_context))
    # (6) stage-0 re-enactment: apply arrivals, then check the entering item's latent and context.
    steps = [0] * Nb
    for tau, sl in enumerate(sc.slots):
        for a in sl.arrivals:
            assert steps[a.k] == a.d  # each block's results come back in step order
            steps[a.k] += 1
        it = sl.items[0]
        if it is None:
            continue
        assert steps[it.k] == it.d  # never forwarded on a stale (or too new) latent
        ctx = sc.ctx_steps[it.index]
        if it.k == 0:
            assert ctx is None
        else:
            assert ctx == steps[it.k - 1]
            assert ctx in (it.d, it.d + 1)
            if sc.deterministic_context:
                assert ctx == it.d + 1 == it.prev_ctx_step
    for a in sc.final_arrivals[0]:
        steps[a.k] += 1
    assert steps == [T] * Nb
    # (7) cache: a per-stage cache that only writers change; reads see the successor one step noisier.
    first_of_iter = {(q[0].k, q[0].d) for i in range(ds.num_iterations(Nb, T)) for q in [ds.queue(i, Nb, T)]}
    for s in range(N):
        cache = None
        prev = None
        for sl in sc.slots:
            it, r, w = sl.items[s], sl.read[s], sl.write[s]
            if it is None:
                assert not r and not w
                continue
            assert w
            same_iter = prev is not None and prev.iteration == it.iteration
            assert r == same_iter == ((it.k, it.d) not in first_of_iter)
            if same_iter:
                assert (prev.k, prev.d) == (it.k + 1, it.d - 1)
            if r:
                assert cache == (it.k + 1, it.d - 1, it.iteration)
            if w:
                cache = (it.k, it.d, it.iteration)
            prev = it
    # (8) accounting.
    idle = sum(sl.items[s] is None for sl in sc.slots for s in range(N))
    assert idle == N * S - N * Nb * T
    assert ds.bubble_ratio(sc) == pytest.approx(idle / (N * S))
    assert ds.num_slots(sc) == S == len(sc.entries) + N - 1


@given(Nb=st.integers(1, 7), T=st.integers(1, 7), N=st.integers(1, 5), det=st.booleans())
@settings(max_examples=120, deadline=None)
def test_pipeline_schedule_properties(Nb, T, N, det):
    check_schedule(ds.pipeline_schedule(Nb, T, N, deterministic_context=det))


@pytest.mark.parametrize("Nb,T,N", [(9, 12, 4), (3, 10, 8), (16, 6, 3)])
def test_pipeline_schedule_properties_larger(Nb, T, N):
    check_schedule(ds.pipeline_schedule(Nb, T, N))


def test_single_stage_has_no_bubbles():
    for Nb, T in [(1, 1), (1, 7), (5, 3), (7, 50)]:
        sc = ds.pipeline_schedule(Nb, T, 1)
        assert sc.num_slots == Nb * T and ds.bubble_ratio(sc) == 0.0
        assert all(sl.items[0] is not None for sl in sc.slots)


def test_bubbles_match_design_simulation():
    T = 50
    # §2.12 table (independent slot simulation, no deterministic-context dependency):
    # (N-1)^2 idle slots with zero return latency, N^2 - 1 with one extra return slot, for Nb >= 2N.
    for N in (2, 3, 4, 8):
        for Nb in (2 * N, 3 * N + 1):
            plain = ds.pipeline_schedule(Nb, T, N, deterministic_context=False)
            late = ds.pipeline_schedule(Nb, T, N, deterministic_context=False, return_delay=1)
            assert plain.num_slots - Nb * T == (N - 1) ** 2
            assert late.num_slots - Nb * T == N * N - 1
            det = ds.pipeline_schedule(Nb, T, N)
            assert det.num_slots >= plain.num_slots  # the extra dependency can only add bubbles
    # §2.12 examples: N=8, T=50, Nb=32 -> 1649 slots (~3%), ~3.8% with the deterministic rule;
    # N=8, Nb=5 -> ~41%; N=8, Nb=1 -> 87.5%.
    assert ds.pipeline_schedule(32, T, 8, deterministic_context=False).num_slots == 1649
    assert ds.bubble_ratio(ds.pipeline_schedule(32, T, 8)) == pytest.approx(0.038, abs=0.001)
    assert ds.bubble_ratio(ds.pipeline_schedule(5, T, 8, deterministic_context=False)) == pytest.approx(0.41, abs=0.005)
    assert ds.bubble_ratio(ds.pipeline_schedule(1, T, 8)) == pytest.approx(0.875)
    # Practical regime: N = 4, Nb >= 2N stays under 10% at T = 50.
    for Nb in (8, 9, 12, 16, 32):
        assert ds.bubble_ratio(ds.pipeline_schedule(Nb, T, 4)) < 0.10


def test_deterministic_rule_changes_context_when_queue_is_short():
    loose = ds.pipeline_schedule(2, 5, 4, deterministic_context=False)
    stale = [it for it, c in zip(loose.items, loose.ctx_steps) if c is not None and c == it.d]
    assert stale  # without the rule some items see a predecessor at their own noise level
    strict = ds.pipeline_schedule(2, 5, 4)
    assert all(c == it.d + 1 for it, c in zip(strict.items, strict.ctx_steps) if it.k > 0)
    assert strict.num_slots > loose.num_slots


def test_as_arrays_matches_slots():
    sc = ds.pipeline_schedule(6, 5, 3)
    a = ds.as_arrays(sc)
    S, N = sc.num_slots, 3
    assert a["item_k"].shape == (S + 1, N) and a["arrival_k"].shape == (S + 1,)
    assert a["item_k"].dtype == np.int32 and a["item_read"].dtype == bool
    for t, sl in enumerate(sc.slots):
        for s in range(N):
            it = sl.items[s]
            assert a["item_valid"][t, s] == (it is not None) == a["item_write"][t, s]
            assert a["item_read"][t, s] == sl.read[s]
            if it is not None:
                assert (a["item_k"][t, s], a["item_d"][t, s]) == (it.k, it.d)
        assert a["arrival_valid"][t] == bool(sl.arrivals)
        if sl.arrivals:
            assert (a["arrival_k"][t], a["arrival_d"][t]) == (sl.arrivals[0].k, sl.arrivals[0].d)
    # drain row: no work, the last item's prediction arrives
    assert not a["item_valid"][S].any() and a["arrival_valid"][S]
    assert (a["arrival_k"][S], a["arrival_d"][S]) == (sc.items[-1].k, sc.items[-1].d)
    assert a["arrival_valid"].sum() == 6 * 5 and (a["item_valid"].sum(axis=0) == 6 * 5).all()
    assert ds.as_arrays(sc, drain=False)["item_k"].shape == (S, N)
    with pytest.raises(ValueError, match="return_delay=0"):
        ds.as_arrays(ds.pipeline_schedule(6, 5, 3, return_delay=1))


def test_schedule_argument_errors():
    with pytest.raises(ValueError, match="at least one pipeline stage"):
        ds.pipeline_schedule(4, 5, 0)
    with pytest.raises(ValueError, match="at least one block"):
        ds.pipeline_schedule(0, 5, 2)
    with pytest.raises(ValueError, match="at least one sampling step"):
        ds.queue(0, 3, 0)


# ------------------------------------------------------------------------------------------ noise


@given(Nb=st.integers(1, 6), B=st.integers(1, 8), c_frac=st.floats(0, 1), seed=st.integers(0, 2**31))
@settings(max_examples=80, deadline=None)
def test_noise_pool_order_properties(Nb, B, c_frac, seed):
    C = int(round(c_frac * B))
    order = ds.noise_pool_order(Nb, B, C, seed)
    pool = set(range(B + C))
    assert len(order) == Nb
    assert sum(len(o) for o in order) == ds.block_layout(C + Nb * B, B, C).total
    # block 0: the whole pool; its first C frames are the initial template's last C, then 0..B-1 shuffled
    assert sorted(order[0].tolist()) == sorted(pool)
    assert order[0][:C].tolist() == list(range(B, B + C))
    assert sorted(order[0][C:].tolist()) == list(range(B))
    for k in range(1, Nb):
        blk, prev_tail = order[k], order[k - 1][len(order[k - 1]) - C:]
        assert len(blk) == B and len(set(blk.tolist())) == B
        # §2.9 item 4: the block's frames are the pool minus the C frames at the predecessor's tail
        assert set(blk.tolist()).isdisjoint(prev_tail.tolist())
        assert set(blk.tolist()) | set(prev_tail.tolist()) == pool
        if C == B and k >= 2:  # the two halves of the pool alternate
            assert set(blk.tolist()) == pool - set(order[k - 1].tolist())
    # deterministic in the seed
    again = ds.noise_pool_order(Nb, B, C, seed)
    assert all(np.array_equal(x, y) for x, y in zip(order, again))


def test_noise_pool_order_uses_the_seed():
    a = ds.noise_pool_order(4, 8, 4, 0)
    b = ds.noise_pool_order(4, 8, 4, 1)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))
    firsts = {tuple(ds.noise_pool_order(2, 6, 3, s)[1].tolist()) for s in range(10)}
    assert len(firsts) > 1  # the order really is random across seeds
