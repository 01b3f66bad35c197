"""A Wan2.1 text-to-video pipeline from a diffusers-format folder, all in JAX.

    pipe = load_pipeline("Wan2.1-T2V-1.3B-Diffusers")   # model_index.json, transformer/, vae/, text_encoder/,
    video = jaxvdm.generate("a cat surfing", model=pipe)  # tokenizer/, scheduler/

The UMT5 text encoder, the DiT and the VAE can each have their own dtype (the text encoder and VAE run
well in bfloat16 while the DiT does; tests use float32 throughout). The scheduler config's
``flow_shift`` and class (UniPC or flow-matching Euler) become the pipeline's defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxvdm.models.checkpoint import CheckpointError, read_config
from jaxvdm.models.pipeline import Pipeline
from jaxvdm.models.presets import list_presets, load_preset, wan_config
from jaxvdm.models.wan.text_encoder import encode_prompts, load_text_encoder, load_tokenizer
from jaxvdm.models.wan.transformer import init_transformer, load_transformer
from jaxvdm.models.wan.vae import denormalize_latents, load_vae
from jaxvdm.models.wan.vae.sharded import decode_sharded

__all__ = ["load_pipeline", "random_pipeline", "WAN_DEFAULTS"]

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")

# diffusers WanPipeline's call defaults (used when the transformer is not one of the presets)
WAN_DEFAULTS = dict(num_frames=81, height=480, width=832, steps=50, guidance_scale=5.0, flow_shift=3.0,
                    scheduler="unipc", fps=16, negative_prompt="", max_text_len=512)


def _defaults_for(transformer_config) -> dict:
    for name in list_presets():
        p = load_preset(name)
        if p.get("family") == "wan" and wan_config(name) == transformer_config:
            return {**WAN_DEFAULTS, **{k: v for k, v in p["pipeline"].items() if k in WAN_DEFAULTS}}
    return dict(WAN_DEFAULTS)


def _scheduler_defaults(path: Path) -> dict:
    cfg = read_config(path, "scheduler_config.json")
    name = cfg.get("_class_name", "UniPCMultistepScheduler")
    out = {}
    if name == "UniPCMultistepScheduler":
        out["scheduler"] = "unipc"
        if "flow_shift" in cfg and cfg["flow_shift"] is not None:
            out["flow_shift"] = float(cfg["flow_shift"])
    elif name == "FlowMatchEulerDiscreteScheduler":
        out["scheduler"] = "euler"
        if cfg.get("shift") is not None:
            out["flow_shift"] = float(cfg["shift"])
    else:
        raise CheckpointError(f"{path}: scheduler {name!r} is not supported (UniPCMultistepScheduler or "
                              f"FlowMatchEulerDiscreteScheduler)")
    return out


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


def load_pipeline(path: str | os.PathLike, *, dtype=jnp.float32, text_encoder_dtype=None, vae_dtype=None,
                  vae_split: str = "width"):
    """Loads a diffusers-format Wan2.1 T2V folder as a :class:`jaxvdm.Pipeline`.

    Args:
      path: the folder with ``model_index.json`` and the component sub-folders.
      dtype: the transformer's computation dtype (bfloat16 on accelerators).
      text_encoder_dtype, vae_dtype: their dtypes (default: ``dtype``).
      vae_split: how decoding is split over a mesh's devices ("width" or "height").

    Raises CheckpointError naming a missing component, and (through the component loaders) every
    tensor that does not match its config.
    """
    
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory (expected a diffusers Wan folder with model_index.json)")
    index = read_config(root, "model_index.json")
    missing = [c for c in COMPONENTS if not (root / c).is_dir()]
    if missing:
        raise CheckpointError(f"{root}: missing component folder(s) {missing}; a Wan2.1 diffusers folder has "
                              f"{list(COMPONENTS)} beside model_index.json: copy or download the missing folder(s) "
                              f"from the same checkpoint (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")
    cls = index.get("_class_name")
    if cls not in (None, "WanPipeline"):
        raise CheckpointError(f"{root}: model_index.json describes {cls!r}; only WanPipeline (text-to-video) is supported")
    transformer = _component(root, "transformer", lambda p: load_transformer(p, dtype=dtype))
    encoder = _component(root, "text_encoder", lambda p: load_text_encoder(p, dtype=text_encoder_dtype or dtype))
    tokenizer = _component(root, "tokenizer", load_tokenizer)
    vae = _component(root, "vae", lambda p: load_vae(p, dtype=vae_dtype or dtype))
    defaults = {**_defaults_for(transformer.config), **_component(root, "scheduler", _scheduler_defaults)}
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
    return Pipeline(name=root.name, transformer=transformer, encode_text=encode_text, decode=decode,
                    vae_stride=stride, defaults=defaults)


def random_pipeline(preset: str, *, dtype=jnp.bfloat16, seed: int = 0, text_len: int = 512):
    """A pipeline with the preset's transformer and random weights, no text encoder and no VAE.

    For speed benchmarks, where the shapes are what matter: pass ``prompt_embeds`` (e.g. random
    ``[1, text_len, text_dim]``) and ``decode=False`` to :func:`jaxvdm.generate`.
    """
    
    cfg = wan_config(preset)
    p = load_preset(preset)["pipeline"]
    model = init_transformer(cfg, seed=seed, dtype=dtype, param_dtype=dtype)
    defaults = {**WAN_DEFAULTS, **{k: v for k, v in p.items() if k in WAN_DEFAULTS}, "max_text_len": text_len}
    return Pipeline(name=f"{preset} (random weights)", transformer=model, encode_text=None, decode=None,
                    vae_stride=tuple(p.get("vae_stride", (4, 8, 8))), defaults=defaults)
