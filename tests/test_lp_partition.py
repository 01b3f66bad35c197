"""Latent Parallelism host-side partition maths (jaxvdm.sharding.lp_partition): pure numpy, no devices.

Expected values come from the LP paper (its communication table, arXiv 2512.07350, via the spec
/work/shared/design/LATENT_PARALLELISM.md §3.1 and §3.5), from the spec's rules (schedules), or are
derived by hand in the comments (blend weights). Everything else is a property that a wrong
implementation breaks.
"""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvdm.sharding import lp_partition as lp

OVERLAP_GRID = (0.0, 0.25, 0.5, 1.0)


@st.composite
def partitions(draw, max_n=64, max_k=8):
    """(n, K, r) with K <= n and r from the grid (incl. K-1), valid for uniform_windows."""
    k = draw(st.integers(1, max_k))
    n = draw(st.integers(k, max_n))
    r = draw(st.sampled_from(sorted({x for x in OVERLAP_GRID + (float(k - 1),) if x <= k - 1})))
    return n, k, r


def _expected_o(n, k, r):
    c = -(-n // k)
    return int(Fraction(r) * c), c  # grid values are exact binary fractions, so this is exact


# --------------------------------------------------------------------------------------------------
# uniform (run-time) windows


@settings(max_examples=300, deadline=None)
@given(partitions(), st.sampled_from([1, 2]))
def test_uniform_windows_properties(case, p):
    n, k, r = case
    part = lp.uniform_windows(n, k, r)
    o, c = _expected_o(n, k, r)
    assert (part.n, part.k, part.o) == (n, k, o)
    # the window is as long as the longest of the paper's clipped windows (c + o at K = 2, c + 2o with an
    # interior window), never the whole axis unless that window is
    assert part.length == lp.paper_windows(n, k, r).lengths.max()
    cs, ce, ws, we = part.core_start, part.core_end, part.win_start, part.win_end
    for a in (cs, ce, ws, we):
        assert a.shape == (k,)
    # cores tile [0, n) in order, balanced (sizes differ by <= 1, none empty)
    assert cs[0] == 0 and ce[-1] == n and np.all(cs[1:] == ce[:-1])
    sizes = ce - cs
    assert sizes.min() >= 1 and sizes.max() - sizes.min() <= 1 and sizes.max() == c
    # one window length, inside the axis, containing its core and the core's +-o neighbourhood
    assert np.all(we - ws == part.length)
    assert np.all(ws >= 0) and np.all(we <= n)
    assert np.all(ws <= cs) and np.all(we >= ce)
    assert np.all(ws <= np.maximum(cs - o, 0)) and np.all(we >= np.minimum(ce + o, n))
    # every latent index: exactly one core, at least one window
    x = np.arange(n * p)[None, :]
    lat = part.in_latent(p)
    in_core = (x >= lat.core_start[:, None]) & (x < lat.core_end[:, None])
    in_win = (x >= lat.win_start[:, None]) & (x < lat.win_end[:, None])
    assert np.all(in_core.sum(0) == 1) and np.all(in_win.sum(0) >= 1)
    assert lat.length == part.length * p and lat.n == n * p and np.all(lat.win_start % p == 0)
    # full overlap: every window is the whole axis
    if r == k - 1:
        assert part.full and np.all(ws == 0) and np.all(we == n)


def test_uniform_windows_balances_where_paper_idles():
    # spec §3.1 quirks: K=8 over T=21 leaves a device idle in the paper's slicing (r=0), and T=13 over K=4
    # gives the paper a 1-frame last core; the run-time partition uses every device with balanced cores
    assert len(lp.paper_windows(21, 8, 0.0).lengths) == 7
    u = lp.uniform_windows(21, 8, 0.0)
    assert sorted(set(u.core_len.tolist())) == [2, 3] and u.length == 3
    assert list(lp.paper_windows(13, 4, 0.0).lengths) == [4, 4, 4, 1]
    assert sorted(lp.uniform_windows(13, 4, 0.0).core_len.tolist()) == [3, 3, 3, 4]


@pytest.mark.parametrize(
    "args, match",
    [((8, 0, 0.0), "K"), ((3, 4, 0.0), "3 patches"), ((8, 4, -0.1), "overlap"), ((8, 4, 3.5), r"\[0, 3\]"),
     ((8, 1, 0.5), "overlap"), ((8, 4, float("nan")), "overlap"), ((0, 1, 0.0), "n_patches")],
)
def test_uniform_windows_errors(args, match):
    with pytest.raises(ValueError, match=match):
        lp.uniform_windows(*args)


# --------------------------------------------------------------------------------------------------
# blend weights


def _placed(part, w, p):
    """[K, n*p] weights placed at their window offsets (0 outside the window)."""
    out = np.zeros((part.k, part.n * p), np.float64)
    for j in range(part.k):
        s = int(part.win_start[j]) * p
        out[j, s:s + part.length * p] = w[j]
    return out


@settings(max_examples=300, deadline=None)
@given(partitions(), st.sampled_from([1, 2]), st.sampled_from(lp.RAMPS))
def test_blend_weights_partition_of_unity(case, p, ramp):
    n, k, r = case
    part = lp.uniform_windows(n, k, r)
    w = lp.blend_weights(part, p, ramp)
    assert w.shape == (k, part.length * p) and w.dtype == np.float32
    assert np.all(w >= 0)
    placed = _placed(part, w, p)
    np.testing.assert_allclose(placed.sum(0), 1.0, rtol=0, atol=1e-6)
    lat = part.in_latent(p)
    x = np.arange(n * p)
    own = np.array([placed[j, x[(x >= lat.core_start[j]) & (x < lat.core_end[j])]].min() for j in range(k)])
    if part.full:  # every window is the whole axis: plain average of K identical predictions
        assert np.all(w == np.float32(1.0 / k))
    else:
        assert own.min() >= 0.5 - 1e-6
    if k == 1:
        assert np.all(w == 1.0)
    # float64 weights over the whole axis agree and sum to 1 to float64 rounding
    full = lp.axis_weights(part, p, ramp)
    np.testing.assert_allclose(full.sum(0), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(placed, full, rtol=0, atol=1e-7)  # zero outside each window
    # unnormalised: 1 on the core, strictly inside (0, 1) on a ramp, never increasing away from the core
    raw = lp.blend_weights(part, p, ramp, normalise=False, dtype=np.float64)
    rawp = _placed(part, raw, p)
    if part.full:
        assert np.all(raw == 1.0)
        return
    for j in range(k):
        s, e = int(lat.core_start[j]), int(lat.core_end[j])
        assert np.all(rawp[j, s:e] == 1.0)
        right, left = rawp[j, e:], rawp[j, :s][::-1]
        for side in (right, left):
            assert np.all(np.diff(side) <= 0) and np.all(side < 1.0)
        if part.o > 0 and j + 1 < k:  # a ramp exists next to an inner core edge
            assert 0 < rawp[j, e] < 1


def test_blend_weights_hand_example():
    # n=12 patches, K=3, r=0.5, p=1: cores [0,4) [4,8) [8,12), o=floor(0.5*4)=2, L=4+2*2=8 (the interior window),
    # windows [0,8) [2,10) [4,12). Ramps of A=2 indices: distance d=1,2 -> rho(2/3), rho(1/3).
    # linear raw:  w0 = 1 1 1 1 2/3 1/3 0 ...;  w1 = 0 0 1/3 2/3 1 1 1 1 2/3 1/3 0 0;  w2 mirrors w0.
    # sums: 1 1 4/3 5/3 5/3 4/3 4/3 5/3 5/3 4/3 1 1.
    part = lp.uniform_windows(12, 3, 0.5)
    assert list(part.win_start) == [0, 2, 4] and part.length == 8
    f = Fraction
    w0 = [1, 1, f(3, 4), f(3, 5), f(2, 5), f(1, 4), 0, 0]
    w1 = [f(1, 4), f(2, 5), f(3, 5), f(3, 4), f(3, 4), f(3, 5), f(2, 5), f(1, 4)]
    expected = np.array([w0, w1, w0[::-1]], np.float64)
    np.testing.assert_allclose(lp.blend_weights(part, 1, "linear"), expected, rtol=0, atol=1e-7)
    # cosine: rho(2/3) = 3/4, rho(1/3) = 1/4; sums 1 1 5/4 7/4 7/4 5/4 5/4 7/4 7/4 5/4 1 1
    c0 = [1, 1, f(4, 5), f(4, 7), f(3, 7), f(1, 5), 0, 0]
    c1 = [f(1, 5), f(3, 7), f(4, 7), f(4, 5), f(4, 5), f(4, 7), f(3, 7), f(1, 5)]
    expected = np.array([c0, c1, c0[::-1]], np.float64)
    np.testing.assert_allclose(lp.blend_weights(part, 1, "cosine"), expected, rtol=0, atol=1e-7)
    # the same latent geometry in 2-wide patches (n=6 patches, cores of 2 patches, o=1 patch): same weights
    part2 = lp.uniform_windows(6, 3, 0.5)
    assert list(part2.in_latent(2).win_start) == [0, 2, 4] and part2.in_latent(2).length == 8
    np.testing.assert_allclose(lp.blend_weights(part2, 2, "cosine"), expected, rtol=0, atol=1e-7)


def test_blend_weights_full_overlap_and_errors():
    for n, k in ((21, 4), (30, 4), (52, 3), (7, 7)):
        part = lp.uniform_windows(n, k, k - 1)
        for ramp in lp.RAMPS:
            assert np.all(lp.blend_weights(part, 2, ramp, dtype=np.float64) == 1.0 / k)
    part = lp.uniform_windows(10, 2, 0.5)
    with pytest.raises(ValueError, match="ramp"):
        lp.blend_weights(part, 2, "gaussian")
    with pytest.raises(ValueError, match="patch-unit"):
        lp.blend_weights(part.in_latent(2), 2)


def test_window_token_offsets_give_global_positions():
    for axis, p in (("T", 1), ("H", 2), ("W", 2)):
        part = lp.uniform_windows(13, 4, 0.5)
        off = lp.window_token_offsets(part, axis)
        assert off.shape == (4, 3)
        a = lp.AXES.index(axis)
        assert np.all(np.delete(off, a, axis=1) == 0)
        global_token = np.arange(13 * p) // p  # token index of every latent index along the axis
        for j in range(4):
            s = int(part.win_start[j]) * p
            window = global_token[s:s + part.length * p]
            np.testing.assert_array_equal(window, off[j, a] + np.arange(part.length * p) // p)
    with pytest.raises(ValueError, match="axis"):
        lp.window_token_offsets(part, "C")


def test_patch_grid():
    assert lp.patch_grid((1, 16, 21, 60, 104), (1, 2, 2)) == {"T": 21, "H": 30, "W": 52}
    with pytest.raises(ValueError, match="H size 61"):
        lp.patch_grid((1, 16, 21, 61, 104), (1, 2, 2))


# --------------------------------------------------------------------------------------------------
# the paper's slicing and communication count


def test_paper_worked_example():
    # spec §3.1: 480p/81 f (latent 21 x 60 x 104, patches 21 x 30 x 52), K=4, r=0.5
    for n, c, o, lengths in ((21, 6, 3, [9, 12, 12, 6]), (30, 8, 4, [12, 16, 16, 10]), (52, 13, 6, [19, 25, 25, 19])):
        win = lp.paper_windows(n, 4, 0.5)
        assert (win.c, win.o) == (c, o)
        assert list(win.lengths) == lengths


@pytest.mark.parametrize("frames, r, mib", [(49, 0.5, 1354.34), (49, 1.0, 1811.88), (81, 0.5, 2191.29),
                                            (81, 1.0, 2912.81)])
def test_paper_comm_totals(frames, r, mib):
    # the paper's LP communication table (Wan2.1-1.3B, 480p, 4 GPUs, 60 steps)
    assert abs(lp.paper_comm_mib(frames, K=4, overlap=r) - mib) <= 0.005 + 1e-9


def test_paper_comm_r_ablation_and_errors():
    # r = 0.1 at 49 f: ~900 MB in the paper's ablation, 914 MiB by the spec's exact fit
    assert abs(lp.paper_comm_mib(49, overlap=0.1) - 914) < 0.5
    # more overlap never moves fewer bytes
    vals = [lp.paper_comm_mib(49, overlap=r) for r in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)]
    assert all(a <= b for a, b in zip(vals, vals[1:]))
    with pytest.raises(ValueError, match="frames"):
        lp.paper_comm_mib(50)


def test_lp_psum_bytes():
    # spec §4.3: one ring all-reduce of the fp32 latent, 12 MiB per device at 480p/81 f on 4 devices
    z = (1, 16, 21, 60, 104)
    assert abs(lp.lp_psum_bytes_per_device(z, 4) / 2**20 - 12.0) < 0.01
    assert lp.lp_psum_bytes_per_device(z, 1) == 0
    assert lp.lp_psum_bytes_per_device(z, 2) == 16 * 21 * 60 * 104 * 4  # 2(K-1)/K = 1
    assert lp.lp_psum_bytes_per_device(z, 4, dtype_bytes=2) == lp.lp_psum_bytes_per_device(z, 4) / 2


# --------------------------------------------------------------------------------------------------
# schedules


def test_rotate_schedule_and_fallback():
    assert lp.axis_schedule(7, (21, 30, 52), 4) == ["T", "H", "W", "T", "H", "W", "T"]
    assert lp.axis_schedule(4, {"T": 21, "H": 30, "W": 52}, 8) == ["T", "H", "W", "T"]
    # T = 2 latent frames (2 patches) with K=4: T turns become H (the next axis after T)
    assert lp.axis_schedule(6, (2, 30, 52), 4) == ["H", "H", "W", "H", "H", "W"]
    # T and H too short: W everywhere; W too short: its turns wrap to T
    assert lp.axis_schedule(3, (2, 3, 52), 4) == ["W", "W", "W"]
    assert lp.axis_schedule(3, (8, 8, 2), 4) == ["T", "H", "T"]
    assert lp.axis_schedule(2, (21, 30, 52), 4, mode="H") == ["H", "H"]


@pytest.mark.parametrize(
    "args, match",
    [((5, (3, 3, 2), 4, "rotate"), "T=3, H=3, W=2"), ((5, (3, 3, 2), 4, "unite"), "T=3, H=3, W=2"),
     ((5, (2, 30, 52), 4, "T"), "axis T"), ((5, (21, 30, 52), 4, "spiral"), "mode"),
     ((0, (21, 30, 52), 4, "rotate"), "num_steps"), ((5, (21, 30, 52), 0, "rotate"), "K")],
)
def test_schedule_errors(args, match):
    with pytest.raises(ValueError, match=match):
        lp.axis_schedule(*args)


def test_unite_schedule_s50():
    # spec §4.2 for S = 50 (p = i/49): step 0 full; 1-34 base rotation i%3 (1 -> H, 2 -> W, 3 -> T);
    # 35-39 (p >= 0.70) base with T -> H; 40-45 (p >= 0.80) H on even, W on odd; 46-49 (p >= 0.92) H.
    base = {0: "T", 1: "H", 2: "W"}
    expected = ["full"] + [base[i % 3] for i in range(1, 35)]
    expected += ["W", "H", "H", "W", "H"]  # 35 % 3 = 2 -> W, 36 -> T -> H, 37 -> H, 38 -> W, 39 -> T -> H
    expected += ["H", "W", "H", "W", "H", "W"] + ["H"] * 4
    got = lp.axis_schedule(50, (21, 30, 52), 4, mode="unite")
    assert got == expected
    assert "T" not in got[35:] and set(got[35:40]) == {"H", "W"}
    # T too short (2 latent frames, K=4): its turns fall back to H; H too short: the late steps use W
    got = lp.axis_schedule(50, (2, 30, 52), 4, mode="unite")
    assert got == [("H" if a == "T" else a) for a in expected]
    got = lp.axis_schedule(50, (21, 3, 52), 4, mode="unite")
    assert got[1] == "W" and got[3] == "T" and got[35:] == ["W"] * 15


def test_unite_overlap():
    assert lp.unite_overlap(0, 50, 0.4) == pytest.approx(0.4)
    assert lp.unite_overlap(49, 50, 0.4) == pytest.approx(0.2)
    assert lp.unite_overlap(25, 51, 0.4) == pytest.approx(0.3)
    assert lp.unite_overlap(0, 1, 0.4) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="step"):
        lp.unite_overlap(50, 50, 0.4)
