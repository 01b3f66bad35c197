"""The varied-shape training data (jaxvdm.models.shapes.buckets and .truth): the strategies' windows are
trained, every bucket renders alike on both renderers, a window is the crop of its whole clip at the RoPE
offset of its start, and every drawn crop shows what its caption says (the evaluator agrees where it can read
the crop)."""

import collections

import jax
import numpy as np
import pytest

from jaxvdm.models.shapes import buckets as bk
from jaxvdm.models.shapes import data, device_render, truth
from jaxvdm.models.shapes import evaluate as ev

ALL_BUCKETS = {b.name + " @ " + mix: b for mix in ("varied", "smoke") for b in bk.get_mix(mix)}
_render = jax.jit(device_render.render, static_argnames=("num_frames", "height", "width"))  # one compile a size
ALL_BUCKETS.update({b.name + " @ eval": b for b in bk.EVAL_VIEWS})


# ------------------------------------------------------------------------------------- strategy windows

def test_strategy_windows_are_the_samplers_windows_and_every_legible_one_is_trained():
    """The window lengths computed here equal jaxvdm.sharding's (the paper's slicing and the run-time
    partition), DualParal's window is B + C of the preset; every window at least 16 px wide has a bucket of
    its size, RoPE rule and whole clip, and the narrower ones are left out because no caption holds there."""
    from jaxvdm.models.shapes.model import preset
    from jaxvdm.sharding import dualparal_schedule
    from jaxvdm.sharding import lp_partition as lp

    for n in (16, 8, 12):
        for k in (2, 4, 8):
            for r in (0.25, 0.5):
                got = bk.lp_window_lengths(n, k, r)
                assert got["paper"] == int(lp.paper_windows(n, k, r).lengths.max()), (n, k, r)
                if k <= n:
                    assert got["runtime"] == lp.uniform_windows(n, k, r).length, (n, k, r)
    p = preset()["pipeline"]
    for _, whole, b, c in bk.DUALPARAL_SETTINGS:
        assert (b, c) == (p["dualparal_block_frames"], p["dualparal_context_frames"])
        assert dualparal_schedule.block_layout(whole[0], b, c, vae_stride_t=1).window == b + c

    windows = bk.strategy_windows()
    t_lengths = {w.size[0] for w in windows if w.strategy == "lp" and w.size[1:] == (32, 32)}
    assert t_lengths == {2, 4, 6, 8, 10, 12}
    mix = bk.varied_mix()
    for sw, bucket, why in bk.coverage(windows, mix):
        if min(sw.size[1:]) >= bk.MIN_WINDOW_SIDE:
            assert bucket is not None, (sw, why)
            assert tuple(bucket.window) == sw.size and bucket.rope == sw.rope
        else:
            assert bucket is None and "narrower" in why
    for side in (4, 8):  # the left-out windows: the caption of a drawn clip (almost) never holds there
        specs = [data.sample_spec(s, long_travel=True) for s in range(400)]
        held = truth.holds_mask(specs, (16, 32, 32), data.Window((0, 12, 0), (16, side, 32)))
        assert held.mean() < 0.02, (side, held.mean())

    sizes = [b.window for b in mix]
    assert min(f for f, _, _ in sizes) <= 4 and max(f for f, _, _ in sizes) >= 32
    assert min(min(h, w) for _, h, w in sizes) == 16 and max(max(h, w) for _, h, w in sizes) >= 48
    assert any(h != w for _, h, w in sizes) and all(h % 4 == 0 and w % 4 == 0 for _, h, w in sizes)
    assert abs(sum(b.weight for b in mix) - 1) < 1e-9
    assert next(b for b in mix if b.name == "default").weight >= 0.4  # the default clip keeps a large share
    for view in ((8, 32, 32), (32, 32, 32), (16, 48, 32)):  # training evaluates these sizes, trained in the mix
        assert any(tuple(b.window) == view and not b.cropped for b in mix)
        assert any(tuple(v.window) == view and not v.cropped for v in bk.EVAL_VIEWS)


def test_buckets_are_drawn_by_weight_and_bad_buckets_are_refused():
    mix = bk.varied_mix()
    rng = np.random.default_rng(0)
    counts = collections.Counter(bk.choose_bucket(rng, mix).name for _ in range(20000))
    for b in mix:
        assert abs(counts[b.name] / 20000 - b.weight) < 4 * np.sqrt(b.weight / 20000) + 1e-3, b.name
    with pytest.raises(ValueError, match="multiples of the patch"):
        bk.Bucket("odd", (16, 30, 32), (8, 30, 32))
    with pytest.raises(ValueError, match="does not fit"):
        bk.Bucket("big", (8, 32, 32), (16, 32, 32))
    with pytest.raises(ValueError, match="rope must be one of"):
        bk.Bucket("r", (8, 32, 32), (8, 32, 32), rope="relative")
    with pytest.raises(ValueError, match="too small for the shapes"):
        bk.draw_batch(0, bk.Bucket("thin", (16, 32, 32), (16, 4, 32)), 4, max_tries=20)
    with pytest.raises(ValueError, match="unknown mix"):
        bk.get_mix("nope")


def test_default_mix_draws_the_shipped_models_data_stream():
    """The one-bucket default mix gives exactly the specs the shipped model's training drew (run 6)."""
    mix = bk.default_mix()
    for step in (0, 7):
        got = bk.batch_for_step(3, step, mix, 16, long_travel=True)
        rng = data.to_rng(3 * 1_000_003 + step)
        assert got.specs == [data.sample_spec(rng, long_travel=True) for _ in range(16)]
        assert got.window == data.Window((0, 0, 0), (16, 32, 32)) and got.offset == (0, 0, 0)


# ------------------------------------------------------------------------------------------ rendering

@pytest.mark.parametrize("name", sorted(ALL_BUCKETS))
def test_every_bucket_renders_alike_and_a_window_is_the_crop_of_its_whole(name):
    """Numpy and device renderers agree on every bucket (one or two shapes); a window rendered directly
    equals the same window cut out of the whole render (both renderers); its RoPE offset is its start in
    tokens (0 for window-local positions); every window is token-aligned and inside its whole clip."""
    bucket = ALL_BUCKETS[name]
    b = bk.draw_batch(np.random.default_rng(len(name)), bucket, 5, two_shapes=0.5)
    (t, y, x), (f, h, w) = b.window.start, b.window.size
    n_t, n_h, n_w = bucket.whole
    assert (f, h, w) == tuple(bucket.window) and t + f <= n_t and y + h <= n_h and x + w <= n_w
    assert y % 4 == 0 and x % 4 == 0
    assert b.offset == ((t, y // 4, x // 4) if bucket.rope == "global" else (0, 0, 0))
    assert all(s.aspect == n_h / n_w for s in b.specs)

    ref, _ = data.render_batch(b.specs, n_t, height=n_h, width=n_w, window=b.window)
    arrays = device_render.spec_arrays(b.specs, max_objects=2)
    got = np.asarray(_render(arrays, num_frames=f, height=h, width=w, whole=np.asarray(bucket.whole, np.float32),
                             start=np.asarray(b.window.start, np.float32)))
    assert got.shape == ref.shape == (5, f, h, w, 3)
    np.testing.assert_allclose(got, ref, atol=2e-5)  # float32 rounding (1.2e-5 at most, as before windows)
    if bucket.cropped:
        whole, _ = data.render_batch(b.specs, n_t, height=n_h, width=n_w)
        np.testing.assert_allclose(whole[:, t:t + f, y:y + h, x:x + w], ref, atol=1e-5)
        dev_whole = np.asarray(_render(arrays, num_frames=n_t, height=n_h, width=n_w))
        np.testing.assert_allclose(dev_whole[:, t:t + f, y:y + h, x:x + w], got, atol=1e-5)
        assert not np.allclose(whole[:, :f, :h, :w], ref, atol=1e-3) or b.window.start == (0, 0, 0)


def test_windows_refuse_what_they_cannot_render():
    spec = data.sample_spec(0, aspect=1.5)
    with pytest.raises(ValueError, match="drawn for frames of height/width 1.5"):
        data.render_batch([spec], 8, 32)
    with pytest.raises(ValueError, match="does not fit the whole clip"):
        data.render_batch([spec], 8, height=48, width=32, window=data.Window((4, 0, 0), (8, 48, 32)))
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        data.Window((0, 2, 0), (4, 16, 16)).token_offset((1, 4, 4))


# ----------------------------------------------------------------------------------------- ground truth

def _motion_piece_holds(motion: str, box: np.ndarray, radius: np.ndarray, side: tuple[int, int]) -> bool:
    """The caption's motion, read off a window's geometry (not truth.py's code): translations step the
    caption's way on their axes and not on the others, sizes change the caption's way, a bounce reverses."""
    step = np.diff(box, axis=0)
    if motion in data.DIRECTIONS:
        d = data.DIRECTIONS[motion]
        return all(np.all(np.sign(step[:, ax]) == d[ax]) if d[ax] else np.allclose(step[:, ax], 0) for ax in (0, 1)) \
            and np.allclose(radius, radius[0])
    if motion.startswith("bounce"):
        ax = 0 if motion == "bounce-horizontal" else 1
        signs = np.sign(step[:, ax])
        signs = signs[signs != 0]
        v = box[:, ax] / side[ax]
        over = max(0, v.max() - max(v[0], v[-1])) + max(0, min(v[0], v[-1]) - v.min())
        return bool(np.any(signs[1:] != signs[:-1])) and over >= 0.1 and np.allclose(step[:, 1 - ax], 0)
    if motion in ("grow", "shrink"):
        return bool(np.all((1 if motion == "grow" else -1) * np.diff(radius) > 0))
    return np.allclose(step, 0) and np.allclose(radius, radius[0])


def test_every_drawn_clip_shows_its_caption_and_the_evaluator_agrees_where_it_can_read_it():
    """In every bucket of the varied mix: each named shape is wholly in view in every frame of its window and
    moves there as its caption says (checked on the rendered window's geometry); the evaluator scores the
    clips it can read (truth.caption_evident) adherent; and windows rejected for a bounce they cannot show
    are indeed read as another motion."""
    adherent, per_bucket = [], {}
    for i, bucket in enumerate(bk.varied_mix()):
        b = bk.draw_batch(np.random.default_rng(100 + i), bucket, 10, two_shapes=0.25)
        n_t, n_h, n_w = bucket.whole
        f, h, w = b.window.size
        clips, geo = data.render_batch(b.specs, n_t, height=n_h, width=n_w, window=b.window)
        for j, spec in enumerate(b.specs):
            assert data.parse_caption(b.captions[j]).objects == tuple(
                data.CaptionObject(o.shape, o.colour, o.motion, o.size_word if spec.say_size else "")
                for o in spec.objects)
            for k, o in enumerate(spec.objects):
                box, r = geo["box_centre"][j, k], geo["radius"][j, k]
                assert np.all(box - r[:, None] >= -1e-6) and np.all(box + r[:, None] <= np.array([w, h]) + 1e-6), \
                    (bucket.name, b.window, spec)
                assert _motion_piece_holds(o.motion, box, r, (w, h)), (bucket.name, b.window, o)
                tracks = truth.window_tracks(spec, bucket.whole, b.window)
                np.testing.assert_allclose(tracks[k]["centroid"], geo["centroid"][j, k], atol=1e-9)
        readable = [j for j, s in enumerate(b.specs) if truth.caption_evident(s, bucket.whole, b.window)]
        scores = [ev.score_clip(clips[j], b.captions[j])["adherent"] for j in readable]
        per_bucket[bucket.name] = (len(readable), float(np.mean(scores)) if scores else None)
        adherent += scores
    assert len(adherent) >= 150 and np.mean(adherent) >= 0.97, per_bucket
    assert all(m is None or n < 4 or m >= 0.75 for n, m in per_bucket.values()), per_bucket
    assert per_bucket["default"][0] >= 9  # whole default clips are nearly always readable

    # bounces in 6-frame windows mostly show one leg: those windows are not drawn, and the evaluator reads
    # them as another motion
    rng = np.random.default_rng(5)
    rejected = []
    while len(rejected) < 20:
        s = data.sample_spec(rng, motions=("bounce-horizontal", "bounce-vertical"), long_travel=True)
        win = data.Window((int(rng.integers(0, 11)), 0, 0), (6, 32, 32))
        if not truth.caption_holds(s, (16, 32, 32), win):
            rejected.append((s, win))
    read = [ev.score_clip(data.render(s, 16, window=win)[0], data.caption(s))["direction_right"] for s, win in rejected]
    assert np.mean(read) <= 0.25, read


def test_holds_mask_and_reasons_agree():
    rng = np.random.default_rng(2)
    specs = [data.sample_spec(rng, two_shapes=i % 3 == 0, long_travel=i % 2 == 0) for i in range(120)]
    for win in (data.Window((0, 8, 0), (16, 16, 32)), data.Window((5, 0, 0), (6, 32, 32)),
                data.Window((3, 0, 0), (2, 32, 32)), None):
        mask = truth.holds_mask(specs, (16, 32, 32), win)
        assert list(mask) == [truth.why_not_holds(s, (16, 32, 32), win) is None for s in specs]
        if win is None:
            assert mask.all()  # whole default clips always hold: the default bucket rejects nothing
        else:
            assert 0 < mask.mean() < 1


def test_evaluation_prompts_are_readable_in_their_windows():
    from jaxvdm.models.shapes.eval_views import view_prompts

    for view in bk.EVAL_VIEWS:
        groups = view_prompts(view, 9, seed=1)
        assert sum(len(g.captions) for g in groups) == 9 and len(groups) == (4 if view.cropped else 1)
        assert len({g.window.start for g in groups}) >= (2 if view.cropped else 1)
        for g in groups:
            assert g.offset == view.rope_offset(g.window)
            if view.cropped:
                assert all(truth.caption_evident(s, view.whole, g.window) for s in g.specs)
        again = view_prompts(view, 9, seed=1)
        assert [g.captions for g in again] == [g.captions for g in groups]


def test_two_shape_batches_for_training():
    from jaxvdm.models.shapes import train

    arrays, ids, view, window = train._batch_worker((0, 3, 12, "varied", 16, 32, True, 0.5))
    b = bk.batch_for_step(0, 3, bk.varied_mix(), 12, long_travel=True, two_shapes=0.5)
    assert arrays["present"].shape == (12, 2) and 0 < arrays["present"][:, 1].sum() < 12
    assert ids.shape == (12, data.MAX_LEN_TWO_SHAPES) and window == tuple(b.bucket.window)
    assert np.array_equal(view["offset"], b.offset) and np.array_equal(view["start"], b.window.start)
    assert [data.detokenize(r) for r in ids] == b.captions
    assert all((" and " in c) == (len(s.objects) == 2) for c, s in zip(b.captions, b.specs))


def test_a_crops_rope_positions_are_its_place_in_the_whole():
    """The RoPE offset training gives the model for a crop (``train.pack_batch``'s view, which the training
    step passes to the transformer) puts the crop's rotary tables at its place in the whole clip: they equal
    the whole clip's tables sliced at the crop's tokens (window-local buckets: the whole's first tokens), for
    every cropped bucket; a crop away from the origin gets other positions than one at it. (That the crop's
    pixels are the whole's sliced is test_every_bucket_renders_alike_and_a_window_is_the_crop_of_its_whole.)"""
    from jaxvdm.models.shapes import train
    from jaxvdm.models.wan import rope as rope_lib
    from jaxvdm.models.wan.transformer import WanConfig, init_transformer

    model = init_transformer(WanConfig(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=12,
                                       in_channels=3, out_channels=3, text_dim=8, freq_dim=16, ffn_dim=16,
                                       num_layers=1), seed=0)
    crops = [b for b in bk.varied_mix() + bk.get_mix("smoke") if b.cropped]
    moved = 0
    for i, bucket in enumerate(crops):
        b = bk.draw_batch(np.random.default_rng(200 + i), bucket, 1)
        _, _, view, (f, h, w) = train.pack_batch(b)
        (t, y, x) = b.window.start
        n_t, n_h, n_w = bucket.whole
        gw, gc = (n_t, n_h // 4, n_w // 4), (f, h // 4, w // 4)
        at = (t, y // 4, x // 4) if bucket.rope == "global" else (0, 0, 0)
        ours = model.rope(rope_lib.grid_positions(gc, tuple(int(o) for o in view["offset"])))
        whole = model.rope(rope_lib.grid_positions(gw))
        for a, ref in zip(ours, whole):
            ref = np.asarray(ref).reshape(gw + np.shape(ref)[-1:])
            np.testing.assert_array_equal(
                np.asarray(a).reshape(gc + np.shape(a)[-1:]),
                ref[at[0]:at[0] + gc[0], at[1]:at[1] + gc[1], at[2]:at[2] + gc[2]], err_msg=bucket.name)
            if at != (0, 0, 0):
                assert not np.allclose(np.asarray(a).reshape(gc + np.shape(a)[-1:]),
                                       ref[:gc[0], :gc[1], :gc[2]]), bucket.name
        moved += at != (0, 0, 0)
    assert moved >= len(crops) // 2  # most drawn crops start away from the origin
