"""The :class:`Video` that :func:`jaxvdm.generate` returns, and writing it to disk.

``Video.save(path)`` picks the format by suffix:

* ``.mp4``: H.264 (``libx264``, ``yuv420p``, CRF 12) with the ffmpeg binary of imageio-ffmpeg (its exit
  status checked, so an encoder error raises). yuv420p needs an even width and height, so an odd-sized
  video is padded by repeating its last column and/or row (the file is then one pixel wider/taller;
  nothing is rescaled). Chroma is stored at half resolution, so colour edges soften a little: round trips
  are close, not exact.
* ``.gif``: 8-bit palette through Pillow, looping. GIF stores frame durations in hundredths of a second;
  the durations alternate so the total length matches ``fps`` (e.g. 16 fps -> 60/70 ms). Identical
  consecutive frames are stored once with their durations added (the GIF writer's choice), so a reader
  can return fewer frames for a still video; playback timing is kept.
* ``.npz``: exact: ``frames``, ``fps``, ``latents`` (absent when None) and ``settings`` as a JSON string.
  Read it back with :meth:`Video.load_npz`.

Every save writes a temporary file next to the target and renames it into place (``os.replace``), so an
error or an interrupt (KeyboardInterrupt included) leaves neither a partial file nor the temporary one, and
an existing file is replaced only by a complete one. The parent directory must exist: ``save`` does not
create directories (FileNotFoundError names the missing one); the CLI checks the same before generating.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Video", "SUFFIXES"]

SUFFIXES = (".mp4", ".gif", ".npz")
MP4_CRF = 12


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return str(o)


def _is_main_process() -> bool:
    """False only on processes other than 0 of a multi-process JAX run (never imports JAX itself)."""
    jax = sys.modules.get("jax")
    joined = getattr(getattr(jax, "distributed", None), "is_initialized", None)
    if joined is None or not joined():
        return True
    return jax.process_index() == 0


def _exists_message(path: Path) -> str:
    return f"cannot save {str(path)!r}: the file exists; pass overwrite=True to replace it"


def _move_no_clobber(tmp: str, path: Path) -> None:
    """Moves ``tmp`` to ``path`` unless something is there (atomically where hard links work)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(_exists_message(path)) from None
    except OSError:  # no hard links on this file system: check, then rename (a small window remains)
        if os.path.lexists(path):
            raise FileExistsError(_exists_message(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass
class Video:
    """A generated video.

    Attributes:
      frames: uint8 ``[F, H, W, 3]`` RGB (``F`` may be 0 when generated with ``decode=False``).
      fps: frames per second (positive int).
      latents: the final latents (``[1, C, T, H', W']`` float32 from jaxvdm) or None.
      settings: what produced the video (prompt, model, strategy, steps, seed, timings, ...).
    """

    frames: np.ndarray
    fps: int = 16
    latents: np.ndarray | None = None
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        frames = np.asarray(self.frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"Video.frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape} "
                             f"(use Video.from_float for float frames in [-1, 1])")
        self.frames = frames
        if isinstance(self.fps, bool) or int(self.fps) != self.fps or int(self.fps) < 1:
            raise ValueError(f"fps must be a positive integer, got {self.fps!r}")
        self.fps = int(self.fps)
        if self.latents is not None:
            self.latents = np.asarray(self.latents)
        self.settings = dict(self.settings or {})

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_float(cls, frames, fps: int = 16, latents=None, settings: dict | None = None, *,
                   layout: str = "auto") -> "Video":
        """A Video from float frames in ``[-1, 1]``: ``uint8 = clip(round((x + 1) * 127.5), 0, 255)``.

        ``layout``: ``"FHWC"`` (``[F, H, W, 3]``), ``"CFHW"`` (``[3, F, H, W]``, as a decoder returns) or
        ``"auto"``: FHWC when the last axis has 3 entries, else CFHW when the first has. Raises ValueError
        for non-finite values (a diverged sampler) rather than writing garbage.
        """
        x = np.asarray(frames)
        if x.ndim != 4:
            raise ValueError(f"expected frames [F, H, W, 3] or [3, F, H, W], got shape {x.shape}")
        if layout == "auto":
            layout = "FHWC" if x.shape[-1] == 3 else "CFHW" if x.shape[0] == 3 else None
            if layout is None:
                raise ValueError(f"frames of shape {x.shape} have no axis of 3 colour channels at either end")
        if layout == "CFHW":
            x = np.moveaxis(x, 0, -1)
        elif layout != "FHWC":
            raise ValueError(f"layout must be 'auto', 'FHWC' or 'CFHW', got {layout!r}")
        if x.shape[-1] != 3:
            raise ValueError(f"frames in layout {layout} need 3 channels, got shape {np.asarray(frames).shape}")
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError("frames contain NaN or infinite values (did the sampler diverge?)")
        u8 = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
        return cls(frames=u8, fps=fps, latents=None if latents is None else np.asarray(latents),
                   settings=dict(settings or {}))

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> "Video":
        """Reads a video written by ``save(".npz")`` (no pickles are loaded)."""
        with np.load(path, allow_pickle=False) as z:
            missing = {"frames", "fps", "settings"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: not a jaxvdm video file (missing {sorted(missing)})")
            latents = z["latents"] if "latents" in z.files else None
            return cls(frames=z["frames"], fps=int(z["fps"]), latents=latents,
                       settings=json.loads(str(z["settings"])))

    # ------------------------------------------------------------------ properties

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def duration(self) -> float:
        """Seconds of playback."""
        return self.num_frames / self.fps

    def __repr__(self) -> str:
        lat = "none" if self.latents is None else "x".join(map(str, self.latents.shape))
        prompt = self.settings.get("prompt")
        tail = ""
        if prompt is not None:
            p = prompt if len(prompt) <= 40 else prompt[:37] + "..."
            tail = f", prompt={p!r}"
        strategy = self.settings.get("strategy")
        if strategy:
            tail += f", strategy={strategy!r}"
        return f"Video({self.num_frames} frames, {self.width}x{self.height}, {self.fps} fps, latents {lat}{tail})"

    # ------------------------------------------------------------------ saving

    def save(self, path: str | os.PathLike, *, overwrite: bool = True, all_processes: bool = False) -> Path:
        """Writes the video; the format follows the suffix (``.mp4``, ``.gif``, ``.npz``; see the module
        docstring). Atomic: a failure leaves no file (and an existing target untouched). Returns the path.

        In a multi-process run (``jaxvdm.sharding.initialize_distributed``) every process holds the same
        video and only process 0 writes (the others return the path without touching the disk), unless
        ``all_processes=True`` (e.g. to keep a copy on each host's local disk).

        ``overwrite=False`` refuses to replace an existing file (FileExistsError, checked before encoding
        and again, atomically, when the finished file is put in place: a file that appears meanwhile is
        kept and the new video discarded).

        Raises ValueError for an unknown suffix or (mp4/gif) a video without frames, FileNotFoundError when
        the directory does not exist, IsADirectoryError when ``path`` is a directory, FileExistsError (see
        ``overwrite``).
        """
        path = Path(path)
        suffix = path.suffix.lower()
        writers = {".mp4": self._write_mp4, ".gif": self._write_gif, ".npz": self._write_npz}
        if suffix not in writers:
            raise ValueError(f"cannot save {str(path)!r}: unknown suffix {path.suffix or '(none)'!r}; "
                             f"use one of {', '.join(SUFFIXES)}")
        if suffix != ".npz" and self.num_frames == 0:
            raise ValueError(f"cannot save {str(path)!r}: the video has no frames (generated with decode=False?); "
                             f"save as .npz to keep its latents")
        if not all_processes and not _is_main_process():
            return path
        parent = path.absolute().parent
        if not parent.is_dir():
            raise FileNotFoundError(f"cannot save {str(path)!r}: directory {str(parent)!r} does not exist "
                                    f"(create it first)")
        if path.is_dir():
            raise IsADirectoryError(f"cannot save {str(path)!r}: it is a directory; give a file name such as "
                                    f"{str(path / ('video' + suffix))!r}")
        if not overwrite and os.path.lexists(path):
            raise FileExistsError(_exists_message(path))
        try:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
        except PermissionError:
            raise PermissionError(f"cannot save {str(path)!r}: directory {str(parent)!r} is not writable; "
                                  f"choose another directory or fix its permissions") from None
        os.close(fd)
        try:
            writers[suffix](tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
            if overwrite:
                os.replace(tmp, path)
            else:
                _move_no_clobber(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return path

    def _even_frames(self) -> np.ndarray:
        """Frames padded (last row/column repeated) to even height and width, as yuv420p needs."""
        f = self.frames
        ph, pw = f.shape[1] % 2, f.shape[2] % 2
        if ph or pw:
            f = np.pad(f, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
        return np.ascontiguousarray(f)

    def _write_mp4(self, tmp: str) -> None:
        """Runs imageio's ffmpeg binary directly (raw RGB on stdin) so that its exit status is checked: an
        encoder error raises instead of leaving an empty file."""
        import imageio_ffmpeg

        frames = self._even_frames()
        h, w = frames.shape[1:3]
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(self.fps), "-i", "-",
               "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(MP4_CRF), "-movflags", "+faststart",
               "-f", "mp4", tmp]
        # close_fds=False lets Python use posix_spawn instead of fork (JAX warns about forking its threads);
        # Python's own descriptors are non-inheritable anyway
        proc = subprocess.run(cmd, input=frames.tobytes(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              close_fds=False)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"ffmpeg failed to encode the video (exit status {proc.returncode}): {err}")

    def _write_gif(self, tmp: str) -> None:
        import imageio.v3 as iio

        # centisecond boundaries of each frame, so the durations add up to num_frames / fps
        ends = np.rint(np.arange(self.num_frames + 1) * 100.0 / self.fps).astype(int)
        durations = [int(max(d, 1) * 10) for d in np.diff(ends)]
        iio.imwrite(tmp, self.frames, plugin="pillow", extension=".gif", duration=durations, loop=0)

    def _write_npz(self, tmp: str) -> None:
        arrays = dict(frames=self.frames, fps=np.int64(self.fps),
                      settings=np.array(json.dumps(self.settings, default=_json_default)))
        if self.latents is not None:
            arrays["latents"] = self.latents
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
