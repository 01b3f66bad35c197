"""Text-to-video pipelines and :func:`generate`.

A :class:`Pipeline` is three pluggable parts around one transformer:

* ``encode_text(prompts) -> [B, L, text_dim]`` — UMT5 for Wan, a word-embedding table for the shipped
  model, or precomputed embeddings;
* the transformer, sampled by a strategy (``jaxvdm.sharding``) with a flow-matching scheduler;
* ``decode(latents, mesh) -> video [1, 3, F, H, W]`` in ``[-1, 1]`` — the Wan VAE, or the identity for
  a pixel-space model.

:func:`generate` resolves the model (the shipped model by default, a preset, a checkpoint folder, or a
Pipeline), the strategy and the sizes, draws the initial noise from ``seed`` (the same noise on every
mesh), denoises, decodes and returns a :class:`~jaxvdm.video.Video`.
"""

from __future__ import annotations

import functools
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxvdm.models.pipeline import Pipeline, SizeError, valid_frames
from jaxvdm.sharding.runtime import MemoryBudgetError, check_activations
from jaxvdm.models.schedulers import make_scheduler
from jaxvdm.sharding.registry import resolve

__all__ = ["Pipeline", "generate", "get_pipeline", "seed_key", "SizeError", "DEFAULT_MODEL"]

DEFAULT_MODEL = "shapes"


# ------------------------------------------------------------------------------------------ models


@functools.lru_cache(maxsize=4)
def _load_cached(key: str) -> Pipeline:
    if key == DEFAULT_MODEL:
        from jaxvdm.models.shapes.pipeline import load_shapes_pipeline

        return load_shapes_pipeline()
    path = Path(key)
    if path.is_file() and path.suffix == ".safetensors":  # retrained shapes weights (one file)
        from jaxvdm.models.shapes.pipeline import load_shapes_pipeline

        return load_shapes_pipeline(path)
    if path.exists():
        from jaxvdm.models.wan.pipeline import load_pipeline

        return load_pipeline(path)
    from jaxvdm.models.presets import list_presets

    if key in list_presets():
        raise ValueError(
            f"model {key!r} is a preset without shipped weights; download the checkpoint and pass its folder "
            f"(model='path/to/Wan2.1-T2V-...-Diffusers'), or use jaxvdm.models.wan.random_pipeline({key!r}) for "
            "random weights (benchmarks)"
        )
    raise ValueError(f"model {key!r} is neither {DEFAULT_MODEL!r}, a preset, a shapes weights file (.safetensors) nor "
                     "an existing checkpoint folder")


def get_pipeline(model: str | os.PathLike | Pipeline | None) -> Pipeline:
    """Resolves ``model``: None (the shipped model), a Wan checkpoint folder, a shapes model weights file
    (``.safetensors``, as ``python -m jaxvdm.models.shapes.train`` writes), or a Pipeline (returned as is)."""
    if isinstance(model, Pipeline):
        return model
    return _load_cached(str(model) if model is not None else DEFAULT_MODEL)


# ------------------------------------------------------------------------------------------ generate


def generate(
    prompt: str,
    *,
    model: str | os.PathLike | Pipeline | None = None,
    image=None,
    last_image=None,
    mesh: Mesh | None = None,
    strategy: str = "single",
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    guidance_scale_2: float | None = None,
    negative_prompt: str | None = None,
    seed: int = 0,
    latents=None,
    scheduler: str | None = None,
    shift: float | None = None,
    prompt_embeds=None,
    negative_prompt_embeds=None,
    decode: bool = True,
    attention: str | None = None,
    precision: str = "bf16",
    progress: bool | None = None,
    profile_dir: str | os.PathLike | None = None,
    dump_hlo: str | os.PathLike | None = None,
    **strategy_options,
):
    """Generates a video from a text prompt.

    Args:
      prompt: the text (an empty string is a valid unconditional prompt).
      model: None for the shipped model; a diffusers Wan checkpoint folder; a retrained shapes weights file
        (``.safetensors``); or a :class:`Pipeline`.
      image: an image-to-video model's first frame (a path, a PIL image or a uint8 ``[H, W, 3]`` array;
        resized to the video with Lanczos as diffusers does); required by I2V models, optional for Wan2.2
        TI2V (text-image-to-video: without it the run is text-to-video), refused by text-to-video ones.
      last_image: a first-last-frame (FLF2V) model's last frame (Wan2.2 I2V also takes one).
      mesh: a ``jax.sharding.Mesh`` whose axes the strategy uses (None: one device).
      strategy: a strategy name or composition, e.g. ``"lp"``, ``"cfg+ulysses"`` (see
        ``jaxvdm.sharding.available_strategies()``).
      num_frames, height, width, steps, guidance_scale, negative_prompt, scheduler ("unipc"/"euler"),
        shift: default to the model's preset.
      guidance_scale_2: a two-expert model's (Wan2.2 A14B) guidance for the low-noise expert
        (``transformer_2``, the steps with ``t < boundary_ratio * num_train_timesteps``); default: the model's
        when ``guidance_scale`` is not given either, else ``guidance_scale`` (diffusers' rule). Refused for a
        one-transformer model. Guidance is on when ``guidance_scale > 1`` (as diffusers decides it). Both
        experts' weights are resident on the devices for the whole run.
      seed: an integer in the signed 64-bit range; the initial noise is
        ``jax.random.normal(seed_key(seed), latent_shape)`` (``PRNGKey(seed)`` as 64-bit JAX builds it), the
        same on every mesh and every process.
      latents: initial noise ``[1, C, T', H', W']`` instead of ``seed`` (to compare across frameworks).
      prompt_embeds, negative_prompt_embeds: ``[1, L, text_dim]`` text embeddings instead of encoding.
      decode: False returns the video without decoding (``Video.frames`` empty, latents set).
      attention: local attention backend ("auto", "xla", "xla_chunked", "cudnn", "splash", "cudnn_fp8").
      precision: "bf16" (the model's dtype, default), "fp8_attention" (cuDNN FP8 flash attention for
        self-attention, everything else as is) or "fp8" (that and the blocks' linear layers as FP8 matmuls,
        weights quantised once). FP8 needs an NVIDIA Hopper GPU (refused elsewhere, in one line); a call
        whose keys are padded (Ulysses/Ring/FSDP when the tokens do not divide the devices, DualParal's
        cached keys) runs that attention in bf16.
      progress: progress bar over denoising steps (default: on when stderr is a terminal).
      profile_dir: write a ``jax.profiler`` trace of the denoising loop there (and the compiled steps'
        optimised HLO under ``profile_dir/hlo``); summarise it with ``jaxvdm profile DIR``.
      dump_hlo: write the optimised HLO of every compiled step into this folder.
      **strategy_options: e.g. ``overlap=0.25`` (lp), ``warmup=5`` (parastep).

    Returns:
      A :class:`~jaxvdm.video.Video` with uint8 frames ``[F, H, W, 3]``, fps, final latents and settings.
    """
    from jaxvdm.profiling import enable_compilation_cache, maybe_trace
    from jaxvdm.video import Video

    enable_compilation_cache()
    t_start = time.perf_counter()
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise TypeError(f"negative_prompt must be a string (or None for the model's default), "
                        f"got {type(negative_prompt).__name__}")
    pipe = get_pipeline(model)
    d = pipe.defaults
    num_frames = d["num_frames"] if num_frames is None else num_frames
    height = d["height"] if height is None else height
    width = d["width"] if width is None else width
    shape = pipe.latent_shape(num_frames, height, width)  # SizeError for non-integers too (never truncated)
    num_frames, height, width = int(num_frames), int(height), int(width)
    steps = _check_int("steps", d["steps"] if steps is None else steps, minimum=1)
    guidance_2 = _guidance_2(pipe, guidance_scale, guidance_scale_2)
    guidance_scale = _check_float("guidance_scale", d["guidance_scale"] if guidance_scale is None else guidance_scale)
    negative_prompt = d.get("negative_prompt", "") if negative_prompt is None else negative_prompt
    scheduler_name = scheduler or d.get("scheduler", "unipc")
    shift = _check_float("shift", d["flow_shift"] if shift is None else shift)
    if latents is None:
        seed = _check_seed(seed)
    from jaxvdm.models.wan.attention import get_attention

    get_attention(attention)  # an unknown backend fails here, not while tracing the first step
    model, attention = with_precision(pipe.transformer, precision, attention)
    plan = resolve(strategy, mesh, strategy_options)
    with_cfg = guidance_scale > 1.0
    if plan.cfg_axis and not with_cfg:
        raise ValueError("strategy 'cfg' splits the guidance pair, but guidance_scale <= 1 disables guidance; "
                         "use guidance_scale > 1 or drop 'cfg'")
    sched = make_scheduler(scheduler_name, steps, shift)
    if pipe.transformer_2 is not None:  # Wan2.2 A14B: the sampler picks the expert of every step
        from jaxvdm.sharding.experts import Experts

        model = Experts((model, with_precision(pipe.transformer_2, precision, None)[0]),
                        boundary=float(d["boundary_ratio"]) * sched.num_train_timesteps, guidance_2=guidance_2)
    cfg = pipe.transformer.config
    try:  # a lower bound of the memory one device's forward needs, before anything is compiled
        check_activations(plan.forward_tokens(plan, shape, cfg.patch_size, steps, model_defaults(pipe)),
                          2 if with_cfg and not plan.cfg_axis else 1, cfg.ffn_dim,
                          jnp.dtype(model.dtype).itemsize, mesh)
    except MemoryBudgetError as e:
        raise MemoryError(_fit_advice(e, pipe, num_frames, height, width, mesh)) from None

    if latents is not None:
        noise = jnp.asarray(latents, jnp.float32)
        if noise.shape != shape:
            raise ValueError(f"latents have shape {tuple(noise.shape)}, expected {shape} for {num_frames}x{height}x{width}")
    else:
        noise = jax.random.normal(seed_key(seed), shape, jnp.float32)

    t0 = time.perf_counter()
    context = _text_context(pipe, prompt, negative_prompt, with_cfg, prompt_embeds, negative_prompt_embeds)
    context = _image_context(pipe, context, image, last_image, num_frames, height, width)
    t_text = time.perf_counter() - t0

    try:
        with maybe_trace(profile_dir, dump_hlo):
            out, timing = plan.sample(model, plan, mesh, noise, context, guidance_scale, sched,
                                      attention=attention, progress=progress, defaults=model_defaults(pipe),
                                      seed=None if latents is not None else seed)
    except MemoryBudgetError as e:
        raise MemoryError(_fit_advice(e, pipe, num_frames, height, width, mesh)) from None
    except Exception as e:  # noqa: BLE001 - only an out-of-memory of the runtime is rephrased
        if not _is_out_of_memory(e):
            raise
        raise MemoryError(f"ran out of device memory generating {num_frames}x{height}x{width} with strategy "
                          f"{plan.describe()}: use a smaller video or more devices "
                          f"({str(e).strip().splitlines()[0][:200]})") from None
    from jaxvdm.models.wan.i2v import FirstFrameCondition, inject_first_frame

    out_np = _to_host(out)
    if isinstance(context, FirstFrameCondition):  # Wan2.2 TI2V: the result's first frame is the image's
        out_np = np.asarray(inject_first_frame(out_np, _to_host(context.latent)))
        out = out_np

    t0 = time.perf_counter()
    frames = None
    if decode and pipe.decode is not None:
        video = pipe.decode(out, mesh)
        frames = _to_host(video)[0]  # [3, F, H, W]
    t_decode = time.perf_counter() - t0
    settings = dict(
        prompt=prompt, negative_prompt=negative_prompt if with_cfg else None, model=pipe.name, strategy=plan.describe(),
        strategy_options=dict(plan.options), precision=precision, num_frames=num_frames, height=height, width=width, steps=steps,
        guidance_scale=guidance_scale, scheduler=scheduler_name, shift=shift, seed=None if latents is not None else seed,
        **({} if guidance_2 is None else dict(guidance_scale_2=guidance_2, boundary_ratio=d["boundary_ratio"])),
        timings=dict(text_s=t_text, **{k: v for k, v in timing.items() if isinstance(v, (int, float))},
                     decode_s=t_decode, total_s=time.perf_counter() - t_start),
    )
    fps = int(pipe.defaults.get("fps", 16))
    if frames is None:
        return Video(frames=np.zeros((0, height, width, 3), np.uint8), fps=fps, latents=out_np, settings=settings)
    return Video.from_float(frames, fps=fps, latents=out_np, settings=settings)


PRECISIONS = ("bf16", "fp8_attention", "fp8")
_FP8_MODELS: dict = {}


def with_precision(model, precision: str, attention: str | None):
    """``(model, attention)`` for ``precision``: as given for "bf16"; cuDNN FP8 self-attention for
    "fp8_attention"; and the blocks' linear layers quantised to FP8 once (cached per model) for "fp8".
    Raises ValueError for another name, or (:func:`~jaxvdm.models.wan.fp8_support.check_fp8`) when this
    machine cannot run FP8."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        return model, attention
    from jaxvdm.models.wan.fp8_support import check_fp8

    check_fp8(f"precision={precision!r}")
    if attention not in (None, "auto", "cudnn", "cudnn_fp8"):
        raise ValueError(f"precision={precision!r} runs attention through cuDNN FP8; attention={attention!r} "
                         "cannot be combined with it (leave attention unset)")
    if precision == "fp8":
        key = id(model)
        if key not in _FP8_MODELS or _FP8_MODELS[key][0] is not model:
            from jaxvdm.models.wan.fp8 import quantize_transformer

            while len(_FP8_MODELS) >= 2:  # two: both experts of a Wan2.2 A14B model
                _FP8_MODELS.pop(next(iter(_FP8_MODELS)))
            _FP8_MODELS[key] = (model, quantize_transformer(model))
        model = _FP8_MODELS[key][1]
    return model, "cudnn_fp8"


def _guidance_2(pipe: Pipeline, guidance_scale, guidance_scale_2) -> float | None:
    """The low-noise expert's guidance scale of a two-expert ``pipe`` (None for one transformer): the given
    one, else ``guidance_scale`` when that is given, else the model's default. Raises ValueError for a
    ``guidance_scale_2`` given to a one-transformer model."""
    if pipe.transformer_2 is None:
        if guidance_scale_2 is not None:
            raise ValueError(f"guidance_scale_2 is the guidance of a second expert (Wan2.2 A14B's transformer_2), "
                             f"but model {pipe.name!r} has one transformer; leave guidance_scale_2 unset")
        return None
    if guidance_scale_2 is None:
        guidance_scale_2 = guidance_scale if guidance_scale is not None else pipe.defaults.get(
            "guidance_scale_2", pipe.defaults["guidance_scale"])
    return _check_float("guidance_scale_2", guidance_scale_2)


def _is_out_of_memory(e: Exception) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def _fit_advice(e: MemoryBudgetError, pipe: Pipeline, num_frames: int, height: int, width: int, mesh) -> str:
    """One line: what the request needs, what is free, and the largest frame count (and size) that would fit
    on these devices (memory grows about linearly with tokens), or how many devices it needs."""
    ratio = e.available / max(e.needed, 1)
    st, sh, sw = pipe.vae_stride
    pt, ph, pw = pipe.transformer.config.patch_size
    frames = max(1, int(num_frames * ratio))
    while frames > 1 and not valid_frames(frames, st, pt):
        frames -= 1
    scale = ratio ** 0.5
    m_h, m_w = sh * ph, sw * pw
    h, w = max(m_h, int(height * scale) // m_h * m_h), max(m_w, int(width * scale) // m_w * m_w)
    head = (f"{num_frames}x{height}x{width} does not fit: {e}; at this size about {frames} frames fit, or at "
            f"{num_frames} frames about {h}x{w}")
    devices = [jax.devices()[0]] if mesh is None else list(mesh.devices.flat)
    if devices[0].platform == "cpu":  # simulated CPU devices share the host: splitting does not add memory
        return head
    more = max(2, -(-e.needed // max(e.available, 1)) * len(devices))
    return f"{head}; or split the video over {more} or more devices (e.g. --mesh sp={more} --strategy ulysses)"


def model_defaults(pipe: Pipeline) -> dict:
    """The values a strategy's sampler may read about the model: its defaults and ``vae_stride``."""
    return {**pipe.defaults, "vae_stride": tuple(pipe.vae_stride)}


def _check_int(name: str, value, *, minimum: int) -> int:
    """``value`` as an int (Python or numpy integer, not bool) of at least ``minimum``; never truncates."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _check_float(name: str, value) -> float:
    """``value`` as a finite float (a real number, not bool or a string)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


SEED_RANGE = (-(2**63), 2**63 - 1)


def _check_seed(seed) -> int:
    """A seed ``jax.random.PRNGKey`` takes: an integer in the signed 64-bit range."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    lo, hi = SEED_RANGE
    if not lo <= int(seed) <= hi:
        raise ValueError(f"seed {seed} is outside the 64-bit range [-2**63, 2**63 - 1]; use a smaller seed "
                         f"(e.g. seed % 2**63)")
    return int(seed)


def seed_key(seed: int) -> jax.Array:
    """The PRNG key of a seed in the signed 64-bit range, as ``jax.random.PRNGKey(seed)`` builds it with
    ``jax_enable_x64``: every such seed has its own key. (Without x64, ``PRNGKey`` keeps only the low 32
    bits, so seeds 5 and 2**32 + 5, or -1 and 2**32 - 1, would give the same noise.) Seeds in
    ``[0, 2**32)`` give exactly ``PRNGKey(seed)`` either way."""
    seed = _check_seed(seed)
    if jax.config.jax_enable_x64 or 0 <= seed < 2**32 or jax.config.jax_default_prng_impl != "threefry2x32":
        return jax.random.PRNGKey(seed)
    bits = seed & (2**64 - 1)  # two's complement, as an int64 seed
    return jnp.asarray(np.array([bits >> 32, bits & 0xFFFFFFFF], np.uint32))


def _to_host(x) -> np.ndarray:
    """The whole of ``x`` as a numpy array on this process, also when ``x`` is a global array of a
    multi-process mesh (not fully addressable): a replicated array is read from a local copy, a sharded
    one is gathered from every process (a collective: every process must call this)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _image_context(pipe: Pipeline, text, image, last_image, num_frames: int, height: int, width: int):
    """``text`` for a text-to-video model; a :class:`~jaxvdm.models.wan.i2v.VideoCondition` (text, CLIP states,
    conditioning latent) or ``FirstFrameCondition`` (Wan2.2 TI2V) for an image-to-video one. Raises ValueError for an image given to a text-to-video
    model, or images that do not fit the I2V model (none, or a last image it cannot take)."""
    if pipe.encode_image is None:
        if image is not None or last_image is not None:
            raise ValueError(f"model {pipe.name!r} is text-to-video and takes no image; load an image-to-video "
                             f"checkpoint (Wan2.1 I2V / FLF2V, Wan2.2 I2V) for image= / last_image=")
        return text
    return pipe.encode_image(text, image, last_image, num_frames, height, width)


def _text_context(pipe: Pipeline, prompt, negative_prompt, with_cfg, prompt_embeds, negative_prompt_embeds):
    """``[2, L, D]`` (cond, uncond) with guidance, ``[1, L, D]`` without."""
    if prompt_embeds is not None:
        cond = jnp.asarray(prompt_embeds, jnp.float32)
        if not with_cfg:
            return cond[:1]
        if negative_prompt_embeds is None:
            raise ValueError("prompt_embeds given with guidance: also give negative_prompt_embeds")
        unc = jnp.asarray(negative_prompt_embeds, jnp.float32)
        if unc.shape != cond.shape:
            raise ValueError(f"negative_prompt_embeds {unc.shape} must have the shape of prompt_embeds {cond.shape}")
        return jnp.concatenate([cond[:1], unc[:1]], axis=0)
    if pipe.encode_text is None:
        raise ValueError(f"model {pipe.name!r} has no text encoder: pass prompt_embeds (and negative_prompt_embeds)")
    prompts = [prompt, negative_prompt] if with_cfg else [prompt]
    return jnp.asarray(pipe.encode_text(prompts), jnp.float32)
