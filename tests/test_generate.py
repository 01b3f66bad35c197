"""jaxvdm.generate on the shipped shapes model: outputs, determinism, exact strategies equal one device,
argument errors, and saving the Video atomically.

Every run uses the same small setting (4 frames of 16x16, 2 steps, guidance on), so one compiled step per
strategy serves all tests (and test_cli / test_profiling reuse them).
"""

import os
import re
import subprocess

import jax
import numpy as np
import pytest
from helpers import rel_err

import jaxvdm
from jaxvdm import video as video_mod
from jaxvdm.pipeline import SizeError
from jaxvdm.sharding import make_mesh
from jaxvdm.video import Video

PROMPT = "a red circle moving left"
SMALL = dict(num_frames=4, height=16, width=16, steps=2, progress=False)
LATENT_SHAPE = (1, 3, 4, 16, 16)  # the shapes model is pixel space: 3 channels, stride 1


@pytest.fixture(scope="module")
def base():
    return jaxvdm.generate(PROMPT, seed=0, **SMALL)


def test_video_frames_seed_and_latents(base):
    v = base
    assert isinstance(v, Video)
    assert v.frames.dtype == np.uint8 and v.frames.shape == (4, 16, 16, 3)
    assert v.latents.dtype == np.float32 and v.latents.shape == LATENT_SHAPE
    assert v.fps == 8 and v.num_frames == 4 and (v.height, v.width) == (16, 16)
    s = v.settings
    assert [s[k] for k in ("steps", "seed", "strategy", "num_frames", "height", "width")] == [2, 0, "single", 4, 16, 16]
    assert s["timings"]["compile_s"] >= 0 and s["timings"]["denoise_s"] > 0
    # the shapes model decodes by clipping the pixel-space latent: the frames are exactly that, as uint8
    expect = Video.from_float(np.clip(v.latents[0], -1, 1), layout="CFHW").frames
    assert np.array_equal(v.frames, expect)
    assert v.frames.std() > 5  # not a blank video

    again = jaxvdm.generate(PROMPT, seed=0, **SMALL)
    assert np.array_equal(again.frames, v.frames) and np.array_equal(again.latents, v.latents)

    other = jaxvdm.generate(PROMPT, seed=1, **SMALL)
    assert np.abs(other.latents - v.latents).max() > 0.1
    assert not np.array_equal(other.frames, v.frames)

    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(0), LATENT_SHAPE, np.float32))
    given = jaxvdm.generate(PROMPT, latents=noise, **SMALL)
    assert np.array_equal(given.latents, v.latents) and np.array_equal(given.frames, v.frames)
    assert given.settings["seed"] is None
    with pytest.raises(ValueError, match=r"latents have shape \(1, 3, 4, 8, 16\), expected \(1, 3, 4, 16, 16\)"):
        jaxvdm.generate(PROMPT, latents=noise[..., :8, :], **SMALL)


def _check_equal_to_single(video, base, describe):
    assert video.settings["strategy"] == describe
    assert rel_err(video.latents, base.latents) < 2e-5
    # uint8 rounding may flip by one level where the latents differ in the last bits
    assert np.abs(video.frames.astype(int) - base.frames).max() <= 1


def test_cfg_on_mesh_equals_single_device(devices, base):
    mesh = make_mesh(cfg=2)
    v = jaxvdm.generate(PROMPT, seed=0, mesh=mesh, strategy="cfg", **SMALL)
    _check_equal_to_single(v, base, "cfg on cfg=2")


@pytest.mark.parametrize("sp", [2, 4])
def test_ulysses_equals_single_device(devices, base, sp):
    mesh = make_mesh(sp=sp)
    v = jaxvdm.generate(PROMPT, seed=0, mesh=mesh, strategy="ulysses", **SMALL)
    _check_equal_to_single(v, base, f"ulysses on sp={sp}")


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(height=30), r"height=30 must be a multiple of 4 .*nearest valid: 28"),
    (dict(width=19), r"width=19 must be a multiple of 4 .*nearest valid: 20"),
    (dict(width=2), r"width=2 must be a multiple of 4 .*nearest valid: 4"),
    (dict(num_frames=0), r"num_frames must be a positive integer, got 0"),
])
def test_invalid_sizes_name_the_nearest_valid_one(kwargs, pattern):
    args = {**SMALL, **kwargs}
    with pytest.raises(SizeError, match=pattern) as info:
        jaxvdm.generate(PROMPT, **args)
    assert isinstance(info.value, ValueError)


def test_strategy_and_mesh_errors_name_the_axis(devices):
    with pytest.raises(ValueError, match=r"unknown strategy 'nope'; available: single, cfg, ulysses"):
        jaxvdm.generate(PROMPT, strategy="nope", **SMALL)
    with pytest.raises(ValueError, match=r"strategy 'ulysses' needs a mesh axis named 'sp', but the mesh has cfg=2"):
        jaxvdm.generate(PROMPT, mesh=make_mesh(cfg=2), strategy="ulysses", **SMALL)
    with pytest.raises(ValueError, match=r"strategy 'lp' needs a mesh axis named 'lp'"):
        jaxvdm.generate(PROMPT, mesh=make_mesh(sp=2), strategy="lp", **SMALL)
    with pytest.raises(ValueError, match=r"mesh axis 'sp' has size 2 but strategy 'cfg' does not use it"):
        jaxvdm.generate(PROMPT, mesh=make_mesh(cfg=2, sp=2), strategy="cfg", **SMALL)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['overlap'\] for strategy 'ulysses'"):
        jaxvdm.generate(PROMPT, mesh=make_mesh(sp=2), strategy="ulysses", overlap=0.5, **SMALL)
    with pytest.raises(ValueError, match=r"guidance_scale <= 1 disables guidance"):
        jaxvdm.generate(PROMPT, mesh=make_mesh(cfg=2), strategy="cfg", guidance_scale=1.0, **SMALL)


def test_unknown_prompt_word_lists_the_vocabulary():
    vocabulary = r"does not know \['dragon', 'purple'\]; its words are: a, on, .*circle"
    with pytest.raises(ValueError, match=vocabulary) as info:
        jaxvdm.generate("a purple dragon moving left", **SMALL)
    assert "<pad>" not in str(info.value)
    with pytest.raises(ValueError, match=r"does not know \['blurry'\]"):
        jaxvdm.generate(PROMPT, negative_prompt="blurry", **SMALL)
    words = str(info.value).split("its words are: ")[1].split(", ")
    assert "and" not in words and "circle" in words  # the shipped model does not take two-shape captions


@pytest.mark.parametrize("prompt", ["a red circle moving left and a blue square moving right",
                                    "a cyan triangle bouncing vertically and a red circle moving left"])
def test_two_shape_captions_are_refused_by_the_shipped_model(prompt):
    """The shipped weights were trained on one shape per caption: a two-shape caption is one ValueError that
    says so and names the model that would take it (one trained with --two-shapes)."""
    with pytest.raises(ValueError) as info:
        jaxvdm.generate(prompt, **SMALL)
    msg = str(info.value)
    assert "\n" not in msg and f"prompt {prompt!r}: the shipped shapes model draws one shape per caption" in msg
    assert "a shapes model trained on two-shape captions, which accepts them" in msg and "--two-shapes" in msg


# ------------------------------------------------------------------------------------------ saving


def _read_mp4(path):
    """uint8 [F, H, W, 3] decoded by imageio's ffmpeg binary (spawned, not forked: JAX is loaded)."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.run(cmd, capture_output=True, close_fds=False, check=True)
    w, h = map(int, re.search(rb"Video: .*?, (\d+)x(\d+)", proc.stderr).groups())
    return np.frombuffer(proc.stdout, np.uint8).reshape(-1, h, w, 3)


def test_save_mp4_gif_npz(base, tmp_path):
    import imageio.v3 as iio

    for suffix in (".mp4", ".gif", ".npz"):
        assert base.save(tmp_path / f"v{suffix}") == tmp_path / f"v{suffix}"
    assert sorted(os.listdir(tmp_path)) == ["v.gif", "v.mp4", "v.npz"]  # no temporary files left behind
    back = Video.load_npz(tmp_path / "v.npz")
    assert np.array_equal(back.frames, base.frames) and np.array_equal(back.latents, base.latents)
    assert back.settings["prompt"] == PROMPT and back.settings["timings"] == base.settings["timings"]
    mp4 = _read_mp4(tmp_path / "v.mp4")
    assert mp4.shape == base.frames.shape
    # yuv420p keeps luma at full resolution (chroma at half: a 2-step video is close to noise, so compare luma)
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(mp4 @ luma - base.frames @ luma).mean() < 4
    gif = iio.imread(tmp_path / "v.gif", index=None)[..., :3]
    assert gif.shape == base.frames.shape and np.abs(gif.astype(int) - base.frames).max() <= 8


def test_failed_save_leaves_no_file(base, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown suffix '\.avi'; use one of \.mp4, \.gif, \.npz"):
        base.save(tmp_path / "v.avi")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        base.save(tmp_path / "missing" / "v.mp4")
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(FileNotFoundError):  # the "directory" is a file
        base.save(tmp_path / "plain" / "v.npz")
    assert sorted(os.listdir(tmp_path)) == ["plain"]

    # the last step (putting the finished file in place) fails, as in a directory without write access
    def denied(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(video_mod.os, "replace", denied)
    for suffix in (".mp4", ".gif", ".npz"):
        with pytest.raises(PermissionError):
            base.save(tmp_path / f"v{suffix}")
    assert sorted(os.listdir(tmp_path)) == ["plain"]  # neither the target nor a temporary file


def test_save_overwrite(base, tmp_path, monkeypatch):
    target = tmp_path / "v.npz"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        base.save(target, overwrite=False)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["v.npz"]
    base.save(target)  # the default replaces, atomically
    assert np.array_equal(Video.load_npz(target).frames, base.frames)
    assert os.listdir(tmp_path) == ["v.npz"]

    # a file that appears while the video is being encoded is kept, not replaced
    late = tmp_path / "late.npz"
    write = Video._write_npz

    def racing_writer(self, tmp):
        write(self, tmp)
        late.write_bytes(b"someone else's")

    monkeypatch.setattr(Video, "_write_npz", racing_writer)
    with pytest.raises(FileExistsError):
        base.save(late, overwrite=False)
    assert late.read_bytes() == b"someone else's"
    assert sorted(os.listdir(tmp_path)) == ["late.npz", "v.npz"]
