"""A Wan text-to-video pipeline from a diffusers-format folder, all in JAX.

    pipe = load_pipeline("Wan2.1-T2V-1.3B-Diffusers")   # model_index.json, transformer/, vae/, text_encoder/,
    video = jaxvdm.generate("a cat surfing", model=pipe)  # tokenizer/, scheduler/

The UMT5 text encoder, the DiT and the VAE can each have their own dtype (the text encoder and VAE run
well in bfloat16 while the DiT does; tests use float32 throughout). The scheduler config (its class,
UniPC or flow-matching Euler, its ``flow_shift`` and every option diffusers honours) becomes the
pipeline's defaults. A Wan2.2 A14B folder (``transformer_2/`` and ``boundary_ratio``) loads both experts:
the high-noise ``transformer`` runs the steps with ``t >= boundary_ratio * num_train_timesteps``, the
low-noise ``transformer_2`` the rest (with ``guidance_scale_2``). Folders with components or flags jaxvdm
does not run yet (image-to-video, TI2V, ...: :data:`UNSUPPORTED`) are refused with what and why, never
run in part.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxvdm.models.checkpoint import CheckpointError, read_config
from jaxvdm.models.pipeline import Pipeline, SizeError
from jaxvdm.models.presets import list_presets, load_preset, wan_config
from jaxvdm.models.schedulers import scheduler_spec_from_config
from jaxvdm.models.wan.rope import check_grid
from jaxvdm.models.wan.text_encoder import encode_prompts, load_text_encoder, load_tokenizer
from jaxvdm.models.wan.transformer import init_transformer, load_transformer
from jaxvdm.models.wan.i2v import FirstFrameCondition, VideoCondition, first_frame_latent, image_condition
from jaxvdm.models.wan.lora import load_lora, merge_lora
from jaxvdm.models.wan.image_encoder import load_image_encoder, load_image_processor
from jaxvdm.models.wan.vae import denormalize_latents, load_vae, normalize_latents
from jaxvdm.models.wan.vae.sharded import decode_sharded

__all__ = ["load_pipeline", "random_pipeline", "WAN_DEFAULTS", "UNSUPPORTED"]

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")

# diffusers WanPipeline's call defaults (used when the transformer is not one of the presets)
WAN_DEFAULTS = dict(num_frames=81, height=480, width=832, steps=50, guidance_scale=5.0, flow_shift=3.0,
                    scheduler="unipc", fps=16, negative_prompt="", max_text_len=512)


def _defaults_for(transformer_config, two_experts: bool = False) -> dict:
    """diffusers' call defaults, overridden by those of the preset with this transformer config (and the same
    number of experts: Wan2.2 A14B's experts have Wan2.1 14B's architecture)."""
    keys = set(WAN_DEFAULTS) | ({"guidance_scale_2"} if two_experts else set())
    for name in list_presets():
        p = load_preset(name)
        if (p.get("family") == "wan" and wan_config(name) == transformer_config
                and ("boundary_ratio" in p["pipeline"]) == two_experts):
            return {**WAN_DEFAULTS, **{k: v for k, v in p["pipeline"].items() if k in keys}}
    return dict(WAN_DEFAULTS)


# What jaxvdm runs, for the messages below.
RUNS = ("jaxvdm runs Wan text-to-video folders: a WanPipeline with one transformer (e.g. "
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers or Wan2.1-T2V-14B-Diffusers) or Wan2.2's two experts "
        "(transformer/, transformer_2/ and boundary_ratio: Wan-AI/Wan2.2-T2V-A14B-Diffusers)")

# Every component and flag of a diffusers Wan folder that jaxvdm does not run yet, where it is found, and
# why: load_pipeline refuses a folder that sets any of them. Remove an entry when its support lands.
# A model_index.json entry counts as set unless it is null, false or [null, null] (diffusers' "absent").
UNSUPPORTED: dict[tuple[str, str], str] = {}

# The pipeline and component classes jaxvdm runs (model_index.json, and the components' own _class_name).
I2V_PIPELINE = "WanImageToVideoPipeline"
PIPELINE_CLASSES = ("WanPipeline", I2V_PIPELINE)
COMPONENT_CLASSES = {"transformer": ("WanTransformer3DModel",), "transformer_2": ("WanTransformer3DModel",),
                     "vae": ("AutoencoderKLWan",), "text_encoder": ("UMT5EncoderModel",),
                     "image_encoder": ("CLIPVisionModel", "CLIPVisionModelWithProjection"),
                     "image_processor": ("CLIPImageProcessor", "CLIPImageProcessorPil")}
# Optional components and flags jaxvdm runs: Wan2.2 A14B's low-noise expert and the switch to it; the
# CLIP image encoder and its processor of a Wan2.1 image-to-video folder.
OPTIONAL = ("transformer_2", "boundary_ratio", "image_encoder", "image_processor", "expand_timesteps")


def _is_set(value) -> bool:
    return value not in (None, False) and value != [None, None]


def _check_supported(root: Path, index: dict) -> None:
    """Raises CheckpointError for a folder with any component, flag or class jaxvdm does not run (before any
    weights are read): what it is, where, why, and what jaxvdm does run."""
    problems = []
    cls = index.get("_class_name")
    if cls is not None and cls not in PIPELINE_CLASSES:
        problems.append(f"model_index.json describes {cls!r}, not a {' or '.join(PIPELINE_CLASSES)}")
    configs = {"model_index.json": index}
    for comp in ("transformer", "transformer_2", "vae"):
        if (root / comp / "config.json").is_file():
            configs[f"{comp}/config.json"] = read_config(root / comp)
    for (where, key), why in UNSUPPORTED.items():
        places = [where] + (["transformer_2/config.json"] if where == "transformer/config.json" else [])
        for place in places:
            value = configs.get(place, {}).get(key)
            if _is_set(value):
                problems.append(f"{place} sets {key}={value!r}: {why}")
    problems += _expert_problems(root, index)
    problems += _task_problems(index, configs)
    known = set(COMPONENTS) | set(OPTIONAL) | {k for w, k in UNSUPPORTED if w == "model_index.json"}
    for key, value in index.items():
        if not key.startswith("_") and key not in known:
            problems.append(f"model_index.json lists {key}={value!r}, which is not part of a Wan2.1 T2V pipeline")
    for comp, classes in COMPONENT_CLASSES.items():
        entry = index.get(comp)
        named = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
        own = configs.get(f"{comp}/config.json", {}).get("_class_name")
        for where, name in ((f"model_index.json's {comp}", named), (f"{comp}/config.json", own)):
            if name is not None and name not in classes:
                problems.append(f"{where} is a {name!r}, not a {' or '.join(classes)}")
    if problems:
        raise CheckpointError(f"{root}: this folder has what jaxvdm does not run:\n  " + "\n  ".join(problems)
                              + f"\n  {RUNS}")


def _task_problems(index: dict, configs: dict) -> list[str]:
    """What does not fit the folder's task: a text-to-video WanPipeline runs a transformer whose input is the
    noise alone and lists no image encoder; a WanImageToVideoPipeline's transformer takes noise ‖ mask ‖
    image latent (``in_channels = 2 * out_channels + 4``), with the CLIP encoder and processor exactly when
    the transformer has an image branch (``image_dim``: Wan2.1 I2V / FLF2V; Wan2.2 I2V has none)."""
    cfg = configs.get("transformer/config.json")
    if cfg is None:
        return []
    i2v = index.get("_class_name") == I2V_PIPELINE
    cin, cout, image_dim = cfg.get("in_channels", 16), cfg.get("out_channels", 16), cfg.get("image_dim")
    clip = [k for k in ("image_encoder", "image_processor") if _is_set(index.get(k))]
    problems = []
    if _is_set(index.get("expand_timesteps")):  # Wan2.2 TI2V: the image enters as the first latent frame
        if cin != cout or _is_set(image_dim) or clip:
            problems.append(f"model_index.json sets expand_timesteps (Wan2.2 TI2V), which needs a transformer whose "
                            f"input is the noise alone (in_channels = out_channels, no image_dim) and no image encoder; "
                            f"got in_channels={cin}, out_channels={cout}, image_dim={image_dim!r}"
                            + (f", {' and '.join(clip)}" if clip else ""))
        return problems
    if not i2v:
        if cin != cout or _is_set(image_dim) or _is_set(cfg.get("added_kv_proj_dim")):
            problems.append(f"transformer/config.json describes an image-to-video transformer (in_channels={cin}, "
                            f"image_dim={image_dim!r}) in a text-to-video WanPipeline: set model_index.json's "
                            f"_class_name to {I2V_PIPELINE!r} if this is an I2V checkpoint")
        problems += [f"model_index.json lists {k} in a text-to-video WanPipeline (only {I2V_PIPELINE} uses it)"
                     for k in clip]
        return problems
    if cin != 2 * cout + 4:
        problems.append(f"transformer/config.json has in_channels={cin}: an image-to-video transformer takes "
                        f"noise, mask and image latent, 2 * out_channels + 4 = {2 * cout + 4}")
    if _is_set(image_dim) and len(clip) < 2:
        problems.append(f"transformer/config.json sets image_dim={image_dim!r} (CLIP image states) but model_index.json "
                        f"lacks {' and '.join(k for k in ('image_encoder', 'image_processor') if k not in clip)}: "
                        "download the image_encoder/ and image_processor/ folders of the checkpoint")
    if not _is_set(image_dim) and clip:
        problems.append(f"model_index.json lists {' and '.join(clip)}, but the transformer has no image branch "
                        "(image_dim is null) and would not use them: remove them (Wan2.2 I2V has none)")
    if _is_set(cfg.get("added_kv_proj_dim")) and not _is_set(image_dim):
        problems.append("transformer/config.json sets added_kv_proj_dim without image_dim: not a Wan I2V transformer")
    return problems


def _expert_problems(root: Path, index: dict) -> list[str]:
    """What is wrong with a folder's Wan2.2 A14B expert entries: ``transformer_2`` and ``boundary_ratio`` come
    together (one without the other would leave an expert unused or a switch to nothing), the ratio is a
    number in [0, 1], and the second expert's folder exists with the first one's config."""
    two, ratio = _is_set(index.get("transformer_2")), index.get("boundary_ratio")
    if not two and not _is_set(ratio):
        return []
    if two and not _is_set(ratio):
        return ["model_index.json lists transformer_2 but no boundary_ratio: the low-noise expert would never run; "
                "set boundary_ratio (Wan2.2 T2V-A14B: 0.875, I2V-A14B: 0.9) or remove transformer_2"]
    if not two:
        return [f"model_index.json sets boundary_ratio={ratio!r} but no transformer_2: the switch has no low-noise "
                "expert to switch to; add the transformer_2/ folder of the checkpoint or remove boundary_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        return [f"model_index.json sets boundary_ratio={ratio!r}: it must be a number in [0, 1] (the fraction of "
                "num_train_timesteps at which the low-noise expert takes over)"]
    first, second = root / "transformer" / "config.json", root / "transformer_2" / "config.json"
    if first.is_file() and second.is_file():
        def arch(folder):
            return {k: v for k, v in read_config(folder).items() if not k.startswith("_")}

        a, b = arch(root / "transformer"), arch(root / "transformer_2")
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            return [f"transformer/ and transformer_2/ have different configs ({', '.join(diff)}): jaxvdm runs two "
                    "experts of one architecture, as in Wan2.2 A14B"]
    return []


def _scheduler_defaults(root: Path, index: dict) -> dict:
    """The folder's scheduler as Pipeline defaults: ``scheduler`` (a name, or a SchedulerSpec when the config
    sets options beyond jaxvdm's defaults) and ``flow_shift`` (the config's, diffusers' 1.0 when absent)."""
    folder = root / "scheduler"
    cfg = read_config(folder, "scheduler_config.json")
    entry = index.get("scheduler")
    cls = entry[1] if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str) else None
    try:
        spec, shift = scheduler_spec_from_config(cfg, cls)
    except ValueError as e:
        raise CheckpointError(
            f"{folder / 'scheduler_config.json'}: {e}\n  jaxvdm runs the flow-matching UniPCMultistepScheduler and "
            f"FlowMatchEulerDiscreteScheduler with the options diffusers honours there; fix the file to run this "
            f"folder") from None
    return {"scheduler": spec if spec.options else spec.name, "flow_shift": shift}


@dataclasses.dataclass
class _RopeCheckedPipeline(Pipeline):
    """A Wan :class:`Pipeline` whose video sizes are also held to the transformer's rotary table: a token grid
    longer than ``rope_max_seq_len`` on any axis raises SizeError (naming the axis, the largest position, the
    limit and the largest size that fits) before anything is traced, for every strategy (their windows lie
    inside the full grid)."""

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        shape = super().latent_shape(num_frames, height, width)
        cfg = self.transformer.config
        try:
            check_grid(cfg.token_grid(shape[2:]), cfg.rope_max_seq_len)
        except ValueError as e:
            (pt, ph, pw), (st, sh, sw), n = cfg.patch_size, self.vae_stride, cfg.rope_max_seq_len
            raise SizeError(f"{num_frames} frames of {height}x{width} is too large for {self.name}: {e}. The largest "
                            f"it covers is {st * (n * pt - 1) + 1} frames of {n * ph * sh}x{n * pw * sw}") from None
        return shape


def _component(root: Path, name: str, load):
    """``load(root / name)``, with a CheckpointError's message extended by what to do about it.

    The component loaders name the file and every bad tensor; this adds which component failed and the
    fix: a truncated or corrupt file is re-downloaded, weights that do not fit their ``config.json`` come
    from a different checkpoint than the config.
    """
    folder = root / name
    try:
        return load(folder)
    except CheckpointError as e:
        msg = str(e)
        if "truncated" in msg or "corrupt" in msg:
            fix = (f"the file is incomplete or damaged (an interrupted download or copy?): download or copy "
                   f"{name}/ again")
        elif "does not match the model" in msg:
            fix = (f"the weights in {name}/ do not fit {name}/config.json: take both from the same checkpoint "
                   f"(download {name}/ again)")
        else:
            fix = f"{name}/ must come from the same diffusers Wan2.1 T2V checkpoint as the other components"
        raise CheckpointError(f"{msg}\n  while loading the {name!r} component of {root}: {fix}") from e


LORA_TARGETS = ("transformer", "transformer_2")


def _lora_entries(lora, two_experts: bool) -> list[tuple[Path, float, str]]:
    """``lora`` (``[(file, scale)]`` or ``[(file, scale, target)]``) checked: a file path, a finite real scale,
    a target of :data:`LORA_TARGETS` (``transformer_2`` only in a two-expert folder). Raises ValueError."""
    out = []
    for entry in lora or ():
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
            raise ValueError(f"lora entries are (file, scale) or (file, scale, target), e.g. [('style.safetensors', "
                             f"0.8)], got {entry!r}")
        file, scale, *rest = entry
        target = rest[0] if rest else "transformer"
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"lora {file}: the scale must be a finite number, got {scale!r}")
        if target not in LORA_TARGETS:
            raise ValueError(f"lora {file}: target must be one of {LORA_TARGETS}, got {target!r}")
        if target == "transformer_2" and not two_experts:
            raise ValueError(f"lora {file}: target transformer_2 needs a Wan2.2 two-expert folder; this folder has "
                             "one transformer (use target 'transformer')")
        out.append((Path(file), float(scale), target))
    return out


def load_pipeline(path: str | os.PathLike, *, dtype=jnp.float32, text_encoder_dtype=None, vae_dtype=None,
                  vae_split: str = "width", lora=None):
    """Loads a diffusers-format Wan text-to-video folder (Wan2.1, or Wan2.2 A14B's two experts) as a
    :class:`jaxvdm.Pipeline`.

    Args:
      path: the folder with ``model_index.json`` and the component sub-folders.
      dtype: the transformer's computation dtype (bfloat16 on accelerators).
      text_encoder_dtype, vae_dtype: their dtypes (default: ``dtype``).
      vae_split: how decoding is split over a mesh's devices ("width" or "height").
      lora: LoRA files merged into the transformer's weights at load, in order: ``[(file, scale), ...]``
        (into ``transformer``, what diffusers' ``load_lora_weights`` + ``set_adapters(..., scale)`` does) or
        ``(file, scale, "transformer_2")`` (a Wan2.2 expert folder's low-noise expert: diffusers'
        ``load_into_transformer_2=True``). Every layout of :mod:`jaxvdm.models.wan.lora` is read; a key
        matching nothing in the transformer raises :class:`~jaxvdm.models.wan.lora.LoraError`.

    The scheduler's ``scheduler_config.json`` becomes ``defaults["scheduler"]`` (its class as "unipc" /
    "euler", or a :class:`~jaxvdm.models.schedulers.SchedulerSpec` holding the options it sets beyond
    jaxvdm's defaults) and ``defaults["flow_shift"]``; every option is honoured as diffusers does or refused.
    A two-expert folder gives ``transformer_2`` (the low-noise expert, loaded like the first, with the same
    config) and ``defaults["boundary_ratio"]`` / ``defaults["guidance_scale_2"]`` (the preset's, else
    ``guidance_scale`` as in diffusers); both experts are held in memory (and on device while sampling).

    Raises CheckpointError naming a missing component, any component, flag or class jaxvdm does not run
    (:data:`UNSUPPORTED`; checked before any weights are read), a scheduler option it does not run, and
    (through the component loaders) every tensor that does not match its config.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory (expected a diffusers Wan folder with model_index.json)")
    index = read_config(root, "model_index.json")
    _check_supported(root, index)
    two = _is_set(index.get("transformer_2"))
    loras = _lora_entries(lora, two)
    clip = _is_set(index.get("image_encoder"))
    extra = (("transformer_2",) if two else ()) + (("image_encoder", "image_processor") if clip else ())
    missing = [c for c in COMPONENTS + extra if not (root / c).is_dir()]
    if missing:
        raise CheckpointError(f"{root}: missing component folder(s) {missing}; a Wan2.1 diffusers folder has "
                              f"{list(COMPONENTS)} beside model_index.json: copy or download the missing folder(s) "
                              f"from the same checkpoint (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")
    sched_defaults = _scheduler_defaults(root, index)
    transformer = _component(root, "transformer", lambda p: load_transformer(p, dtype=dtype))
    transformer_2 = _component(root, "transformer_2", lambda p: load_transformer(p, dtype=dtype)) if two else None
    for file, scale, target in loras:  # merged in float32, cast back to each weight's dtype
        adapter = load_lora(file)
        if target == "transformer":
            transformer = merge_lora(transformer, adapter, scale)
        else:
            transformer_2 = merge_lora(transformer_2, adapter, scale)
    encoder = _component(root, "text_encoder", lambda p: load_text_encoder(p, dtype=text_encoder_dtype or dtype))
    tokenizer = _component(root, "tokenizer", load_tokenizer)
    vae = _component(root, "vae", lambda p: load_vae(p, dtype=vae_dtype or dtype))
    defaults = {**_defaults_for(transformer.config, two), **sched_defaults, "task": "t2v"}
    if two:  # diffusers: guidance_scale_2 defaults to guidance_scale
        defaults["boundary_ratio"] = float(index["boundary_ratio"])
        defaults.setdefault("guidance_scale_2", defaults["guidance_scale"])
    max_len = int(defaults.get("max_text_len", 512))

    def encode_text(prompts):
        return encode_prompts(encoder, tokenizer, list(prompts), max_length=max_len)[0]

    def decode(z, mesh):
        z = denormalize_latents(jnp.asarray(z, jnp.float32), vae.config)
        if mesh is None or mesh.size == 1:
            return vae.decode(z)
        flat = jax.sharding.Mesh(mesh.devices.reshape(-1), ("vae",))
        return decode_sharded(vae, z, flat, "vae", split=vae_split)

    stride = (vae.config.temporal_factor, vae.config.spatial_factor, vae.config.spatial_factor)
    encode_image = None
    if _is_set(index.get("expand_timesteps")):  # Wan2.2 TI2V: text-image-to-video, the image optional
        encode_image = _first_frame_conditioner(vae, required=index.get("_class_name") == I2V_PIPELINE)
        defaults["task"] = "ti2v"
    elif index.get("_class_name") == I2V_PIPELINE:
        defaults["task"] = "i2v"
        image_encoder = processor = None
        if clip:
            image_encoder = _component(root, "image_encoder",
                                       lambda p: load_image_encoder(p, dtype=text_encoder_dtype or dtype))
            processor = _component(root, "image_processor", load_image_processor)
        encode_image = _image_conditioner(transformer.config, vae, image_encoder, processor)
    return _RopeCheckedPipeline(name=root.name, transformer=transformer, encode_text=encode_text, decode=decode,
                                vae_stride=stride, defaults=defaults, transformer_2=transformer_2,
                                encode_image=encode_image)


def _image_conditioner(cfg, vae, image_encoder, processor):
    """The Pipeline's ``encode_image`` for an I2V transformer: checks that the images fit the checkpoint
    (FLF2V takes a first and a last image, Wan2.1 I2V one; Wan2.2 I2V either) and builds the conditioning."""
    flf2v = cfg.pos_embed_seq_len is not None

    def encode_image(text, image, last_image, num_frames, height, width):
        if image is None:
            raise ValueError("this is an image-to-video model: pass image= (a path or a uint8 [H, W, 3] array), "
                             "the video's first frame")
        if flf2v and last_image is None:
            raise ValueError("this is a first-last-frame (FLF2V) model: pass last_image= as well as image=")
        if cfg.has_image_branch and not flf2v and last_image is not None:
            raise ValueError("this Wan2.1 I2V model conditions on one image's CLIP states; last_image= needs a "
                             "first-last-frame (FLF2V) checkpoint")
        latent, clip = image_condition(image, last_image, num_frames=num_frames, height=height, width=width, vae=vae,
                                       encode_video=lambda v, video: v.encode(video)[0],
                                       normalize=lambda z: normalize_latents(z, vae.config),
                                       image_encoder=image_encoder, image_processor=processor,
                                       stride_t=vae.config.temporal_factor, flf2v=flf2v)
        return VideoCondition(text, clip, latent)

    return encode_image


def _first_frame_conditioner(vae, *, required: bool):
    """The Pipeline's ``encode_image`` for Wan2.2 TI2V (``expand_timesteps``): one image, the first frame; without
    one (allowed unless ``required``: a WanImageToVideoPipeline folder) the run is text-to-video, the text alone
    (diffusers' WanPipeline, whose per-token timesteps are then all ``t``)."""
    def encode_image(text, image, last_image, num_frames, height, width):
        if image is None and required:
            raise ValueError("this is a Wan2.2 TI2V image-to-video folder: pass image= (the video's first frame)")
        if image is None and last_image is None:
            return text
        if last_image is not None:
            raise ValueError("Wan2.2 TI2V conditions on the first frame only; last_image= is not taken (diffusers "
                             "ignores it): leave it unset")
        latent = first_frame_latent(image, height=height, width=width, vae=vae,
                                    encode_video=lambda v, video: v.encode(video)[0],
                                    normalize=lambda z: normalize_latents(z, vae.config))
        return FirstFrameCondition(text, latent)

    return encode_image


def random_pipeline(preset: str, *, dtype=jnp.bfloat16, seed: int = 0, text_len: int = 512):
    """A pipeline with the preset's transformer and random weights, no text encoder and no VAE.

    For speed benchmarks, where the shapes are what matter: pass ``prompt_embeds`` (e.g. random
    ``[1, text_len, text_dim]``) and ``decode=False`` to :func:`jaxvdm.generate`.
    """
    cfg = wan_config(preset)
    p = load_preset(preset)["pipeline"]
    model = init_transformer(cfg, seed=seed, dtype=dtype, param_dtype=dtype)
    defaults = {**WAN_DEFAULTS, **{k: v for k, v in p.items() if k in WAN_DEFAULTS}, "max_text_len": text_len}
    return _RopeCheckedPipeline(name=f"{preset} (random weights)", transformer=model, encode_text=None, decode=None,
                    vae_stride=tuple(p.get("vae_stride", (4, 8, 8))), defaults=defaults)
