"""Fidelity metrics (jaxvdm.metrics) and the Video type with its writers (jaxvdm.video)."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest

from jaxvdm import metrics
from jaxvdm import video as video_mod
from jaxvdm.video import Video


def _smooth_video(rng, f=3, h=24, w=28, c=3):
    """A structured uint8 video (smooth gradients and a few blocks), so SSIM has structure to compare."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(np.sin(x / 4 + k) + np.cos(y / 5 - k)) for k in range(f * c)]).reshape(f, c, h, w)
    base = np.moveaxis(base, 1, -1)
    base[:, 5:12, 6:15] += 1.5
    return np.clip(np.rint((base + 3) * 40 + rng.normal(0, 3, base.shape)), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ metrics

def test_psnr_hand_computed():
    rng = np.random.default_rng(0)
    a = rng.integers(10, 240, (4, 16, 16, 3)).astype(np.uint8)
    b = a + np.uint8(5)
    assert metrics.psnr(a, b) == pytest.approx(20 * math.log10(255 / 5), abs=1e-9)
    assert metrics.psnr(b, a) == pytest.approx(20 * math.log10(255 / 5), abs=1e-9)
    fa = rng.uniform(-0.9, 0.9, (2, 12, 12, 3)).astype(np.float32)
    fb = fa - np.float32(0.1)
    assert metrics.psnr(fa, fb) == pytest.approx(20 * math.log10(2 / 0.1), abs=1e-4)  # floats: range 2
    assert metrics.psnr(fa, fb, data_range=1.0) == pytest.approx(20 * math.log10(1 / 0.1), abs=1e-4)
    # half the pixels off by 10: MSE 50
    c = a.copy()
    c[:2] = c[:2] + np.uint8(10)
    assert metrics.psnr(a, c) == pytest.approx(10 * math.log10(255 ** 2 / 50), abs=1e-9)
    assert metrics.psnr(a, a) == math.inf


def test_max_and_mean_abs_error_do_not_wrap():
    a = np.zeros((1, 2, 2, 3), np.uint8)
    b = np.full((1, 2, 2, 3), 255, np.uint8)
    b[0, 0, 0, 0] = 0
    assert metrics.max_abs_error(a, b) == 255.0
    assert metrics.mean_abs_error(a, b) == pytest.approx(255 * 11 / 12)
    assert metrics.max_abs_error(b, a) == 255.0


def test_ssim_identical_symmetric_and_decreasing_with_noise():
    rng = np.random.default_rng(1)
    a = _smooth_video(rng)
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    values = []
    for sigma in (2, 6, 18, 50):
        b = np.clip(np.rint(a + rng.normal(0, sigma, a.shape)), 0, 255).astype(np.uint8)
        s = metrics.ssim(a, b)
        assert s == pytest.approx(metrics.ssim(b, a), abs=1e-12)
        values.append(s)
    assert all(x > y for x, y in zip(values, values[1:])), values
    assert values[0] > 0.9 and values[-1] < 0.5


def _ssim_reference(a, b, data_range):
    """Direct SSIM: an explicit loop over every 11x11 window position, frame and channel."""
    n, sigma = 11, 1.5
    k = np.array([[math.exp(-((i - 5) ** 2 + (j - 5) ** 2) / (2 * sigma ** 2)) for j in range(n)] for i in range(n)])
    k /= k.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)
    vals = []
    for f in range(a.shape[0]):
        for ch in range(a.shape[3]):
            for i in range(a.shape[1] - n + 1):
                for j in range(a.shape[2] - n + 1):
                    x, y = a[f, i:i + n, j:j + n, ch], b[f, i:i + n, j:j + n, ch]
                    mx, my = (k * x).sum(), (k * y).sum()
                    vx, vy = (k * (x - mx) ** 2).sum(), (k * (y - my) ** 2).sum()
                    cxy = (k * (x - mx) * (y - my)).sum()
                    vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_a_direct_implementation():
    rng = np.random.default_rng(2)
    a = _smooth_video(rng, f=2, h=15, w=17, c=2)
    b = np.clip(np.rint(a + rng.normal(0, 12, a.shape)), 0, 255).astype(np.uint8)
    assert metrics.ssim(a, b) == pytest.approx(_ssim_reference(a, b, 255.0), abs=1e-10)
    fa = a.astype(np.float32) / 127.5 - 1
    fb = b.astype(np.float32) / 127.5 - 1
    assert metrics.ssim(fa, fb) == pytest.approx(_ssim_reference(fa, fb, 2.0), abs=1e-6)
    # a single frame [H, W, C] and a grey frame [H, W] are the same computation
    assert metrics.ssim(a[0], b[0]) == pytest.approx(_ssim_reference(a[:1], b[:1], 255.0), abs=1e-10)
    grey = _ssim_reference(a[:1, ..., :1], b[:1, ..., :1], 255.0)
    assert metrics.ssim(a[0, ..., 0], b[0, ..., 0]) == pytest.approx(grey, abs=1e-10)


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="scikit-image is not installed")
def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(3)
    a = _smooth_video(rng, f=1, h=32, w=32)[0]
    b = np.clip(np.rint(a + rng.normal(0, 10, a.shape)), 0, 255).astype(np.uint8)
    ref = structural_similarity(a, b, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert metrics.ssim(a, b) == pytest.approx(ref, abs=1e-6)


def test_fidelity_and_input_checks():
    rng = np.random.default_rng(4)
    a = _smooth_video(rng, f=2, h=16, w=16)
    b = a.copy()
    b[0, 3, 4, 1] ^= 0x10  # one value off by 16
    fid = metrics.fidelity(Video(frames=a, fps=8), Video(frames=b, fps=8))
    assert fid["max_abs"] == 16.0
    assert fid["mean_abs"] == pytest.approx(16 / a.size)
    assert fid["psnr"] == pytest.approx(10 * math.log10(255 ** 2 / (256 / a.size)))
    assert 0.99 < fid["ssim"] < 1.0
    same = metrics.fidelity(a, a)
    assert same == dict(psnr=math.inf, ssim=1.0, max_abs=0.0, mean_abs=0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.fidelity(a, a[:1])
    with pytest.raises(ValueError, match="uint8"):
        metrics.psnr(a, a.astype(np.float32))
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(a[:, :8, :8], a[:, :8, :8])
    with pytest.raises(ValueError, match="positive"):
        metrics.psnr(a, b, data_range=0)


# ------------------------------------------------------------------------------------------ Video

def _shapes_video(fps=8, size=32):
    """A real clip of the shipped data: coloured shape on a background, distinct frames."""
    from jaxvdm.models.shapes import data

    spec = data.sample_spec(3, motions=("right",))
    clip, _ = data.render(spec, 16, size)
    return Video.from_float(clip, fps=fps, latents=np.arange(12, dtype=np.float32).reshape(1, 3, 1, 2, 2),
                            settings={"prompt": data.caption(spec), "steps": 20, "shape": (1, 2), "x": np.float32(0.5)})


def _read_mp4(path):
    """Decodes an mp4 to uint8 [F, H, W, 3] with the same ffmpeg binary (spawned, not forked: JAX is loaded)."""
    import re
    import subprocess

    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.run(cmd, capture_output=True, close_fds=False, check=True)
    w, h = map(int, re.search(rb"Video: .*?, (\d+)x(\d+)", proc.stderr).groups())
    return np.frombuffer(proc.stdout, np.uint8).reshape(-1, h, w, 3)


def test_from_float_rounds_and_clips_in_both_layouts():
    x = np.array([-1, -0.5, 0, 0.5, 1, 1.5, -3], np.float32)
    frames = np.broadcast_to(x[None, None, :, None], (2, 3, 7, 3))
    v = Video.from_float(frames, fps=4)
    assert v.frames.dtype == np.uint8 and v.frames.shape == (2, 3, 7, 3)
    assert v.frames[0, 0, :, 0].tolist() == [0, 64, 128, 191, 255, 255, 0]  # rint((x + 1) * 127.5), clipped
    w = Video.from_float(np.moveaxis(frames, -1, 0), fps=4)  # [3, F, H, W]
    assert np.array_equal(v.frames, w.frames)
    assert np.array_equal(Video.from_float(np.moveaxis(frames, -1, 0), fps=4, layout="CFHW").frames, v.frames)
    with pytest.raises(ValueError, match="NaN"):
        Video.from_float(np.full((1, 2, 2, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="uint8"):
        Video(frames=np.zeros((1, 2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="fps"):
        Video(frames=np.zeros((1, 2, 2, 3), np.uint8), fps=0)


def test_repr_is_short_and_informative():
    r = repr(_shapes_video())
    assert r.startswith("Video(16 frames, 32x32, 8 fps, latents 1x3x1x2x2") and "prompt=" in r and len(r) < 160


def test_save_round_trips(tmp_path):
    v = _shapes_video()
    v.save(tmp_path / "a.npz")
    w = Video.load_npz(tmp_path / "a.npz")
    assert np.array_equal(w.frames, v.frames) and w.fps == 8 and np.array_equal(w.latents, v.latents)
    assert w.settings == json.loads(json.dumps({**v.settings, "shape": [1, 2], "x": 0.5}))

    v.save(tmp_path / "a.mp4")
    m = _read_mp4(tmp_path / "a.mp4")
    assert m.shape == v.frames.shape
    assert np.abs(m.astype(int) - v.frames).mean() < 6

    v.save(tmp_path / "a.gif")
    import imageio.v3 as iio
    from PIL import Image

    g = iio.imread(tmp_path / "a.gif", index=None)[..., :3]
    assert g.shape == v.frames.shape
    assert np.abs(g.astype(int) - v.frames).max() <= 8  # palette quantisation at most
    with Image.open(tmp_path / "a.gif") as im:
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
    assert sum(durations) == 16 * 1000 // 8 and set(durations) <= {120, 130}  # 8 fps: 125 ms on average
    assert sorted(os.listdir(tmp_path)) == ["a.gif", "a.mp4", "a.npz"]  # no temporary files left
    assert oct(os.stat(tmp_path / "a.mp4").st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_mp4_odd_size_is_padded_not_scaled(tmp_path):
    v = _shapes_video(size=32)
    odd = Video(frames=np.ascontiguousarray(v.frames[:, :31, :29]), fps=8)
    odd.save(tmp_path / "odd.mp4")
    m = _read_mp4(tmp_path / "odd.mp4")
    assert m.shape == (16, 32, 30, 3)
    assert np.abs(m[:, :31, :29].astype(int) - odd.frames).mean() < 6
    assert np.abs(m[:, 31, :29].astype(int) - odd.frames[:, 30]).mean() < 6  # the repeated last row


@pytest.mark.parametrize("exc", [RuntimeError("encoder exploded"), KeyboardInterrupt()])
def test_failed_save_leaves_nothing(tmp_path, monkeypatch, exc):
    v = _shapes_video()
    (tmp_path / "keep.mp4").write_bytes(b"old")

    def failing_writer(self, tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"partial")
        raise exc

    monkeypatch.setattr(Video, "_write_mp4", failing_writer)
    with pytest.raises(type(exc)):
        v.save(tmp_path / "new.mp4")
    with pytest.raises(type(exc)):
        v.save(tmp_path / "keep.mp4")
    assert sorted(os.listdir(tmp_path)) == ["keep.mp4"]
    assert (tmp_path / "keep.mp4").read_bytes() == b"old"  # an existing file is replaced only by a complete one


def test_real_encoder_error_raises_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(video_mod, "MP4_CRF", "not-a-number")  # ffmpeg rejects the option
    with pytest.raises(RuntimeError, match="ffmpeg failed"):
        _shapes_video().save(tmp_path / "x.mp4")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only directories")
def test_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            _shapes_video().save(ro / "x.npz")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def test_save_argument_errors(tmp_path):
    v = _shapes_video()
    with pytest.raises(ValueError, match=r"unknown suffix '\.avi'.*\.mp4, \.gif, \.npz"):
        v.save(tmp_path / "x.avi")
    with pytest.raises(ValueError, match="unknown suffix"):
        v.save(tmp_path / "noext")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        v.save(tmp_path / "missing" / "x.mp4")
    (tmp_path / "d.mp4").mkdir()
    with pytest.raises(IsADirectoryError):
        v.save(tmp_path / "d.mp4")
    latent_only = Video(frames=np.zeros((0, 32, 32, 3), np.uint8), fps=8, latents=v.latents, settings={"a": 1})
    with pytest.raises(ValueError, match="no frames"):
        latent_only.save(tmp_path / "y.gif")
    latent_only.save(tmp_path / "y.npz")
    back = Video.load_npz(tmp_path / "y.npz")
    assert back.num_frames == 0 and np.array_equal(back.latents, v.latents) and back.settings == {"a": 1}
    assert not (tmp_path / "missing").exists()
    assert sorted(os.listdir(tmp_path)) == ["d.mp4", "y.npz"]
