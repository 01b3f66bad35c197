"""The procedural shapes data (jaxvdm.models.shapes.data) and its evaluator (jaxvdm.models.shapes.evaluate).

The renderer's own geometry is the ground truth: every motion word must move/resize the shape as the word
says, the pixels at the centroid must have the caption's colour, and the evaluator must score ground-truth
clips as adherent (also after noise and blur) and mismatched captions at chance.
"""

import time

import numpy as np
import pytest
from scipy import ndimage

from jaxvdm.models.shapes import data
from jaxvdm.models.shapes import evaluate as ev

N_EVAL = 200


def _specs(n, seed, **kw):
    rng = np.random.default_rng(seed)
    return [data.sample_spec(rng, **kw) for _ in range(n)]


# ------------------------------------------------------------------------------------------ renderer

@pytest.mark.parametrize("height, width", [(32, 32), (48, 48), (64, 64), (48, 32), (24, 40)])
def test_ground_truth_follows_every_motion_word(height, width):
    """In square and non-square frames (specs drawn for the frame's aspect ratio)."""
    frames = 16
    size = np.array([width, height])
    for motion in data.MOTIONS:
        specs = _specs(12, seed=data.MOTIONS.index(motion), motions=(motion,), aspect=height / width)
        _, geo = data.render_batch(specs, frames, height=height, width=width)
        for b, spec in enumerate(specs):
            c = geo["centroid"][b, 0]  # [F, 2] pixels
            r = geo["radius"][b, 0]
            step = np.diff(c, axis=0)
            # the shape's 2R box stays inside the frame (bounces reflect at the walls)
            box = c.copy()
            if spec.shape == "triangle":
                box[:, 1] -= r / 3  # centroid -> box centre
            assert np.all(box - r[:, None] >= -1e-6) and np.all(box + r[:, None] <= size + 1e-6), (motion, spec)
            if motion in data.DIRECTIONS:
                d = np.array(data.DIRECTIONS[motion])
                disp = c[-1] - c[0]
                for ax in (0, 1):
                    if d[ax] == 0:
                        assert np.allclose(step[:, ax], 0), (motion, spec)
                    else:
                        assert np.all(np.sign(step[:, ax]) == d[ax]), (motion, spec)  # monotone, right way
                        need = 1 / 3 if np.abs(d).sum() == 1 else 0.3
                        assert abs(disp[ax]) >= need * size[ax] - 1e-6, (motion, disp, size)
                assert np.allclose(r, r[0])
            elif motion.startswith("bounce"):
                ax = 0 if motion == "bounce-horizontal" else 1
                assert np.allclose(step[:, 1 - ax], 0)
                signs = np.sign(step[:, ax])
                signs = signs[signs != 0]
                assert np.any(signs[1:] != signs[:-1]), f"no reversal: {motion} {spec}"
                # both legs clearly visible: the track overshoots its end points (by >= 0.13 of the frame)
                lo_end, hi_end = sorted((c[0, ax], c[-1, ax]))
                over = max(0, c[:, ax].max() - hi_end) + max(0, lo_end - c[:, ax].min())
                assert over >= 0.12 * size[ax], (motion, over)
                assert np.ptp(c[:, ax]) >= 0.3 * size[ax]
            elif motion in ("grow", "shrink"):
                sign = 1 if motion == "grow" else -1
                assert np.all(sign * np.diff(r) > 0)
                assert max(r[0], r[-1]) / min(r[0], r[-1]) >= 1.6
                if spec.shape != "triangle":  # a triangle's centroid sits R/3 below its box centre
                    assert np.allclose(step, 0)
            else:
                assert motion == "static"
                assert np.allclose(step, 0) and np.allclose(r, r[0])


def test_pixels_at_centroid_have_the_caption_colour_and_area_matches_geometry():
    specs = _specs(60, seed=1)
    size = 32
    clips, geo = data.render_batch(specs, 16, size)
    for b, spec in enumerate(specs):
        want = 2 * np.array(data.COLOURS[data.parse_caption(data.caption(spec)).colour], np.float32) - 1
        ij = np.floor(geo["centroid"][b, 0]).astype(int)  # [F, 2] (x, y)
        px = clips[b, np.arange(16), ij[:, 1], ij[:, 0]]
        np.testing.assert_allclose(px, np.broadcast_to(want, px.shape), atol=1e-6)
        if spec.background != "gradient":  # coverage from pixels: (pixel - background) / (colour - background)
            grey = 2 * data.BACKGROUND_LEVELS[spec.background][0] - 1
            ch = int(np.argmax(np.abs(want - grey)))  # the channel where colour and background differ most
            cov = (clips[b, ..., ch] - grey) / (want[ch] - grey)
            area = cov.sum((1, 2))
            np.testing.assert_allclose(area, geo["area"][b, 0], rtol=0.05)  # antialiasing is approximate at corners
            assert np.all(cov > -1e-5) and np.all(cov < 1 + 1e-5)


def test_clip_layout_range_and_backgrounds():
    clips, geo = data.render_batch(_specs(30, seed=2), 8, 48)
    assert clips.shape == (30, 8, 48, 48, 3) and clips.dtype == np.float32
    assert clips.min() >= -1 and clips.max() <= 1
    spec = data.ClipSpec(objects=(), background="gradient", bg_angle=0.0)
    clip, _ = data.render_batch([spec], 2, 32)
    row = clip[0, 0, 5, :, 0]
    assert np.all(np.diff(row) > 0)  # angle 0: dark at the left, light at the right
    lo, hi = data.BACKGROUND_LEVELS["gradient"]
    assert 2 * lo - 1 - 1e-6 <= row.min() and row.max() <= 2 * hi - 1 + 1e-6
    assert np.ptp(row) > 0.9 * 2 * (hi - lo)


def test_two_shapes_differ_and_keep_apart():
    specs = _specs(40, seed=3, two_shapes=True)
    _, geo = data.render_batch(specs, 16, 32)
    for b, s in enumerate(specs):
        a, c = s.objects
        assert a.colour != c.colour and a.shape != c.shape
        assert not data._boxes_meet(a, c)
        parsed = data.parse_caption(data.caption(s))
        said = [(o.colour, o.shape, o.motion) for o in parsed.objects]
        assert said == [(o.colour, o.shape, o.motion) for o in s.objects]
        assert len(data.tokenize(data.caption(s), data.MAX_LEN_TWO_SHAPES)) == data.MAX_LEN_TWO_SHAPES
        assert geo["present"][b].all()


# ------------------------------------------------------------------------------------------ captions

def test_caption_parse_round_trip():
    for s in _specs(300, seed=4) + _specs(100, seed=5, two_shapes=True):
        p = data.parse_caption(data.caption(s))
        assert len(p.objects) == len(s.objects)
        for po, so in zip(p.objects, s.objects):
            assert (po.colour, po.shape, po.motion) == (so.colour, so.shape, so.motion)
            assert po.size_word == (so.size_word if s.say_size else "")
        assert p.background == (s.background if s.say_background else None)
    p = data.parse_caption("A small Red circle moving up-left on a dark background.")
    assert (p.colour, p.shape, p.motion, p.size_word, p.background) == ("red", "circle", "up-left", "small", "dark")
    p = data.parse_caption("a blue square growing")
    assert (p.colour, p.shape, p.motion, p.size_word, p.background) == ("blue", "square", "grow", "", None)


@pytest.mark.parametrize("bad, needle", [
    ("a red dog moving left", "unknown word(s) ['dog']"),
    ("a red circle", "expected a motion"),
    ("a red circle moving sideways", "unknown word(s) ['sideways']"),
    ("red circle moving left", "expected 'a'"),
    ("a big red circle growing", "does not go with"),
    ("a red circle moving left on a dark", "expected 'background'"),
    ("a red circle moving left background", "expected 'and', 'on' or the end"),
])
def test_parse_caption_errors(bad, needle):
    with pytest.raises(ValueError) as e:
        data.parse_caption(bad)
    assert needle in str(e.value)
    if "unknown" in needle:  # lists the valid words
        assert "triangle" in str(e.value) and "gradient" in str(e.value)


def test_tokenizer_round_trip_and_vocabulary_closure():
    words = set()
    for s in _specs(600, seed=6) + _specs(200, seed=7, two_shapes=True):
        cap = data.caption(s)
        max_len = data.MAX_LEN if len(s.objects) == 1 else data.MAX_LEN_TWO_SHAPES
        ids = data.tokenize(cap, max_len)
        assert len(ids) == max_len and data.UNK_ID not in ids
        assert data.detokenize(ids) == cap
        n = len(cap.split())
        assert all(i != data.PAD_ID for i in ids[:n]) and all(i == data.PAD_ID for i in ids[n:])
        words |= set(cap.split())
    assert words == {w for w in data.VOCAB if not w.startswith("<")}  # every word produced, nothing missing
    assert data.VOCAB[data.PAD_ID] == "<pad>" and data.VOCAB[data.UNK_ID] == "<unk>"
    assert len(set(data.VOCAB)) == len(data.VOCAB)
    assert data.tokenize("") == [data.PAD_ID] * data.MAX_LEN
    assert data.tokenize("a purple circle")[:3] == [data.VOCAB.index("a"), data.UNK_ID, data.VOCAB.index("circle")]
    with pytest.raises(ValueError, match="at most 12"):
        data.tokenize("a red circle moving left and a blue square moving up on a dark background")


def test_sample_batch_deterministic_consistent_and_fast():
    import jax

    c1, t1, i1 = data.sample_batch(123, 16)
    c2, t2, i2 = data.sample_batch(123, 16)
    c3, t3, _ = data.sample_batch(124, 16)
    assert np.array_equal(c1, c2) and t1 == t2 and np.array_equal(i1, i2)
    assert t1 != t3 and not np.array_equal(c1, c3)
    k1 = data.sample_batch(jax.random.key(5), 4)
    k2 = data.sample_batch(jax.random.key(5), 4)
    k3 = data.sample_batch(jax.random.key(6), 4)
    assert k1[1] == k2[1] and np.array_equal(k1[0], k2[0]) and k1[1] != k3[1]
    assert c1.shape == (16, 16, 32, 32, 3) and c1.dtype == np.float32
    assert i1.shape == (16, data.MAX_LEN) and i1.dtype == np.int32
    assert np.array_equal(i1, np.array([data.tokenize(t) for t in t1]))
    # the clips are the captions' specs rendered: the evaluator agrees with every caption
    assert ev.score_batch(c1, t1)["adherent"] == 1.0
    best = min(_timed(lambda: data.sample_batch(7, 64)) for _ in range(3))
    assert best < 0.25, f"a batch of 64 clips took {best:.3f}s"


@pytest.mark.parametrize("frames,size,height", [(16, 32, 32), (5, 24, 24), (6, 40, 24)])
def test_device_renderer_draws_what_the_numpy_renderer_draws(frames, size, height):
    """Training renders on the accelerator from spec arrays: every motion, shape, colour, background, one or
    two shapes, long travel or not, square or not, must give the numpy renderer's pixels to float32 rounding
    (1.2e-5 at most on 16x32x32 clips; windows: tests/test_shapes_buckets.py)."""
    import jax

    from jaxvdm.models.shapes import device_render

    rng = np.random.default_rng(3)
    specs = [data.sample_spec(rng, two_shapes=i % 3 == 0, long_travel=i % 2 == 0, aspect=height / size)
             for i in range(120)]
    ref, _ = data.render_batch(specs, frames, size, height=height)
    render = jax.jit(device_render.render, static_argnames=("num_frames", "size", "height"))
    got = np.asarray(render(device_render.spec_arrays(specs), num_frames=frames, size=size, height=height))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=2e-5)
    one = [s for s in specs if len(s.objects) == 1][:7]  # a one-shape batch padded to two shapes: the same
    padded = np.asarray(render(device_render.spec_arrays(one, max_objects=2), num_frames=frames, size=size,
                               height=height))
    np.testing.assert_allclose(padded, data.render_batch(one, frames, size, height=height)[0], atol=2e-5)
    with pytest.raises(ValueError, match="max_objects"):
        device_render.spec_arrays([next(s for s in specs if len(s.objects) == 2)], max_objects=1)


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ------------------------------------------------------------------------------------------ evaluator

@pytest.fixture(scope="module")
def eval_set():
    specs = _specs(N_EVAL, seed=11)
    clips, _ = data.render_batch(specs, 16, 32)
    return specs, clips, [data.caption(s) for s in specs]


def _variants(clips):
    rng = np.random.default_rng(0)
    blur = ndimage.gaussian_filter(clips, sigma=(0, 0, 1.0, 1.0, 0))
    yield "clean", clips
    yield "noise", np.clip(clips + rng.normal(0, 0.1, clips.shape), -1, 1).astype(np.float32)
    yield "blur", blur
    # a generated-looking clip: blurred, washed out, tinted, noisy
    tint = rng.normal(0, 0.08, (clips.shape[0], 1, 1, 1, 3))
    yield "degraded", np.clip(0.8 * blur + tint + rng.normal(0, 0.06, clips.shape), -1, 1).astype(np.float32)
    yield "uint8", np.rint((clips + 1) * 127.5).astype(np.uint8)


def test_evaluator_scores_ground_truth_as_adherent(eval_set):
    specs, clips, caps = eval_set
    for name, variant in _variants(clips):
        r = ev.score_batch(variant, caps)
        assert r["n"] == N_EVAL
        assert r["adherent"] >= 0.97, (name, r)
        assert r["consistency"] >= 0.97, (name, r)
        assert r["found_fraction"] >= 0.99, (name, r)


def test_evaluator_agrees_with_truth_on_shuffled_captions(eval_set):
    specs, clips, caps = eval_set
    perm = np.random.default_rng(1).permutation(N_EVAL)
    scores = [ev.score_clip(clips[i], caps[j]) for i, j in zip(range(N_EVAL), perm)]
    agree = {"colour_right": [], "shape_right": [], "direction_right": []}
    for i, j, s in zip(range(N_EVAL), perm, scores):
        agree["colour_right"].append(s["colour_right"] == (specs[i].colour == specs[j].colour))
        agree["shape_right"].append(s["shape_right"] == (specs[i].shape == specs[j].shape))
        agree["direction_right"].append(s["direction_right"] == (specs[i].motion == specs[j].motion))
    for key, vals in agree.items():
        assert np.mean(vals) >= 0.97, key  # the evaluator says "right" exactly when the caption is
    chance = {"colour_right": 1 / len(data.COLOURS), "shape_right": 1 / len(data.SHAPES),
              "direction_right": 1 / len(data.MOTIONS)}
    for key, c in chance.items():
        assert abs(np.mean([s[key] for s in scores]) - c) < 0.1, (key, c)
    assert np.mean([s["adherent"] for s in scores]) <= 0.05


def test_evaluator_other_sizes_and_two_shapes():
    for size, n in ((48, 40), (64, 24)):
        specs = _specs(n, seed=size)
        clips, _ = data.render_batch(specs, 16, size)
        assert ev.score_batch(clips, [data.caption(s) for s in specs])["adherent"] >= 0.95, size
    specs = _specs(40, seed=9, two_shapes=True)
    clips, _ = data.render_batch(specs, 16, 32)
    caps = [data.caption(s) for s in specs]
    assert ev.score_batch(clips, caps)["adherent"] >= 0.95
    # swapping the two shapes' motions breaks direction whenever they differ
    s = next(s for s in specs if s.objects[0].motion != s.objects[1].motion)
    a, b = s.objects
    swapped = data.caption(data.ClipSpec(objects=(
        data.ObjectSpec(a.shape, a.colour, b.motion, a.size_word if b.motion not in ("grow", "shrink") else "",
                        a.start, a.velocity, a.radius, a.radius_end),
        data.ObjectSpec(b.shape, b.colour, a.motion, b.size_word if a.motion not in ("grow", "shrink") else "",
                        b.start, b.velocity, b.radius, b.radius_end)), background=s.background, say_size=False))
    clip, _ = data.render(s, 16, 32)
    r = ev.score_clip(clip, swapped)
    assert r["colour_right"] and r["shape_right"] and not r["direction_right"]


def test_evaluator_temporal_consistency_and_missing_shape():
    specs = _specs(60, seed=12, motions=("left", "right", "up", "down"))
    clips, _ = data.render_batch(specs, 16, 32)
    caps = [data.caption(s) for s in specs]
    rng = np.random.default_rng(0)
    shuffled = np.stack([c[rng.permutation(16)] for c in clips])  # same frames, scrambled in time
    assert ev.score_batch(clips, caps)["consistency"] == 1.0
    assert ev.score_batch(shuffled, caps)["consistency"] < 0.5
    # the shape vanishes from every other frame: found in half, no consecutive pair holds it
    spec = specs[0]
    clip = clips[0].copy()
    background_only = data.ClipSpec(objects=(), background=spec.background, bg_angle=spec.bg_angle)
    empty = data.render_batch([background_only], 16, 32)[0][0]
    clip[1::2] = empty[1::2]
    r = ev.score_clip(clip, caps[0])
    assert r["found_fraction"] == 0.5 and r["consistency"] == 0.0
    # nothing there at all
    r = ev.score_clip(empty, caps[0])
    assert not r["adherent"] and r["found_fraction"] == 0.0 and r["colour"] is None


def test_evaluator_detects_wrong_attributes_on_a_known_clip():
    square = data.ObjectSpec("square", "yellow", "right", "big", (0.3, 0.5), (0.4, 0.0), 0.18, 0.18)
    spec = data.ClipSpec(objects=(square,), background="light")
    clip, _ = data.render(spec, 16, 32)
    assert ev.score_clip(clip, "a big yellow square moving right on a light background")["adherent"]
    r = ev.score_clip(clip, "a small cyan circle moving left on a dark background")
    assert not any(r[k] for k in ("colour_right", "shape_right", "direction_right", "size_right", "background_right"))
    assert (r["colour"], r["shape"], r["motion"]) == ("yellow", "square", "right")
    # the same clip reversed in time moves left
    assert ev.score_clip(clip[::-1], "a yellow square moving left")["adherent"]
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        ev.score_clip(np.moveaxis(clip, -1, 0), "a yellow square moving right")
    with pytest.raises(ValueError, match="unknown word"):
        ev.score_clip(clip, "a yellow hexagon moving right")
