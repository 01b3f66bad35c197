"""Loading Wan transformer checkpoints: diffusers format, original Wan format, and jaxvdm's orbax copy.

* **diffusers**: a folder with ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or shards
  listed in ``diffusion_pytorch_model.safetensors.index.json``) — the ``transformer/`` folder of a
  ``Wan2.1-T2V-*-Diffusers`` download.
* **original**: the Wan-AI layout: one safetensors file with the original key names
  (``self_attn.q``, ``head.head``, ``blocks.N.modulation``…), with a ``config.json`` of the original
  ``WanModel`` (``dim``, ``num_heads``…) beside it, or a bare file plus an explicit config. The image
  branch of an original I2V/FLF2V checkpoint (``img_emb.*``, ``cross_attn.k_img``…) is read from its
  tensors and must agree with the config's ``model_type``.
* **orbax**: what :func:`save_converted` (``jaxvdm convert``) writes, so later starts skip conversion.

Loading is strict: every missing, unexpected or mis-shaped tensor is reported by name in one
:class:`~jaxvdm.models.checkpoint.CheckpointError`; truncated or corrupt files name the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvdm.models.checkpoint import (CheckpointError, model_from_params, read_config, read_safetensors,
                                      read_safetensors_dir)
from jaxvdm.models.wan.transformer.config import WanConfig
from jaxvdm.models.wan.transformer.keys import (infer_config, is_original, original_image_fields,
                                                original_to_diffusers_names, params_from_diffusers)
from jaxvdm.models.wan.transformer.model import WanTransformer, abstract_transformer

__all__ = ["load_transformer", "load_transformer_params", "save_converted"]

ORBAX_MARKER = "jaxvdm_transformer.json"
_WEIGHTS = "diffusion_pytorch_model"


def load_transformer_params(path: str | os.PathLike, *, config: WanConfig | None = None) -> tuple[WanConfig, dict]:
    """Reads and converts a checkpoint to ``(config, params)`` (nested dict of numpy arrays).

    ``path`` is a diffusers ``transformer/`` folder, an original-format folder or ``.safetensors``
    file, or a folder written by :func:`save_converted`.
    """
    path = Path(path)
    if path.is_dir() and (path / ORBAX_MARKER).is_file():
        return _load_orbax(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path}: expected a .safetensors file or a checkpoint folder")
        sd = read_safetensors(path)
        cfg_dict = None
        if config is None and (path.parent / "config.json").is_file():
            cfg_dict = read_config(path.parent)
        source = str(path)
    elif path.is_dir():
        if config is None:
            cfg_dict = read_config(path)
        else:
            cfg_dict = None
        sd = _read_dir_weights(path)
        source = str(path)
    else:
        raise CheckpointError(f"{path}: no such file or directory")
    if config is None and cfg_dict is None:
        config = _config_from_tensors(sd, source)
    elif config is None:
        try:
            config = WanConfig.from_dict(cfg_dict)
        except (TypeError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{source}: invalid transformer config: {e}") from None
        if cfg_dict is not None and "dim" in cfg_dict and is_original(sd):
            config = _with_original_image_branch(config, cfg_dict.get("model_type", "t2v"), sd, source)
    if is_original(sd):
        sd = original_to_diffusers_names(sd)
    return config, params_from_diffusers(config, sd, source=source)


_HEAD_DIM = 128  # Wan's attention head dim in every release (1.3B: 12 heads of 128; 14B: 40 heads of 128)
_PRESETS = ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b")
_WHAT_TO_PASS = (
    "pass the architecture: load_transformer(path, config=WanConfig(num_attention_heads=..., attention_head_dim=..., "
    "...)) or a published one, e.g. config=jaxvdm.models.presets.wan_config({presets}), or put the model's "
    "config.json (diffusers' WanTransformer3DModel or the original WanModel one) beside the file")


def _config_from_tensors(sd: dict, source: str) -> WanConfig:
    """The config of a bare original-format file (no ``config.json`` beside it), from its tensor shapes.

    The shapes fix the hidden size, patch, channels, text and time-embedding widths, FFN width and depth. They
    do not fix how the hidden size splits into heads (q, k, v are [D, D]), the norm eps or the rotary table
    length: those are Wan's in every release (head dim 128, eps 1e-6, 1024 positions). A config equal to a
    published preset is taken silently; any other is taken with a warning naming the guessed fields. Raises
    CheckpointError saying what to pass when the tensors do not determine it (a hidden size that is not a
    multiple of 128, missing tensors, or diffusers names, which carry no original WanModel layout).
    """
    presets = ", ".join(repr(p) for p in _PRESETS)
    fix = _WHAT_TO_PASS.format(presets=" or ".join(repr(p) for p in _PRESETS))
    names = {k.removeprefix("model.diffusion_model."): v for k, v in sd.items()}
    if not is_original(sd):
        raise CheckpointError(f"{source}: no config.json beside it, and only an original-format (Wan-AI) file's "
                              f"tensors can stand in for one; {fix}")
    patch = names.get("patch_embedding.weight")
    if patch is None or patch.ndim != 5:
        raise CheckpointError(f"{source}: no config.json beside it, and no 5-D patch_embedding.weight to read the "
                              f"architecture from; {fix}")
    dim = int(patch.shape[0])
    if dim % _HEAD_DIM:
        raise CheckpointError(
            f"{source}: no config.json beside it, and its tensors do not determine the attention heads: the hidden "
            f"size {dim} is not a multiple of Wan's head dim {_HEAD_DIM} (q, k and v are [{dim}, {dim}] for any "
            f"split into heads); {fix}")
    try:
        config = infer_config(sd, head_dim=_HEAD_DIM)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: no config.json beside it, and the architecture cannot be read from its "
                              f"tensors ({e}); {fix}") from None
    from jaxvdm.models.presets import wan_config

    if not any(wan_config(p) == config for p in _PRESETS):
        warnings.warn(
            f"{source}: no config.json beside it; its config was read from the tensor shapes, and "
            f"attention_head_dim={_HEAD_DIM} ({config.num_attention_heads} heads), eps={config.eps} and "
            f"rope_max_seq_len={config.rope_max_seq_len} are Wan's release values, not read from the file (it "
            f"matches none of the published presets {presets}); pass config= if this model differs", stacklevel=3)
    return config


def _with_original_image_branch(config: WanConfig, model_type: str, sd, source: str) -> WanConfig:
    """``config`` (from an original config.json, which has no image fields) with the image branch its
    tensors hold; raises CheckpointError when they contradict ``model_type``."""
    fields = original_image_fields(sd)
    has_image, has_pos = fields["image_dim"] is not None, fields["pos_embed_seq_len"] is not None
    problem = None
    if model_type in ("t2v", "ti2v") and has_image:
        problem = "holds image-branch tensors (img_emb.*), which a text-to-video model has not"
    elif model_type == "flf2v" and not has_pos:
        problem = "has no img_emb.emb_pos (the first-last-frame position embedding)"
    elif model_type == "i2v" and has_pos:
        problem = "holds img_emb.emb_pos, which only first-last-frame models ('flf2v') have"
    if problem:
        raise CheckpointError(f"{source}: config.json says model_type {model_type!r} but the checkpoint {problem}: "
                              f"take config.json and the weights from the same checkpoint")
    try:
        return dataclasses.replace(config, **fields)
    except ValueError as e:
        raise CheckpointError(f"{source}: the image-branch tensors do not fit the config: {e}") from None


def _read_dir_weights(path: Path) -> dict[str, np.ndarray]:
    """diffusers names first; an original-format folder holds one ``*.safetensors`` file of another name."""
    if (path / f"{_WEIGHTS}.safetensors").is_file() or (path / f"{_WEIGHTS}.safetensors.index.json").is_file():
        return read_safetensors_dir(path, _WEIGHTS)
    files = sorted(path.glob("*.safetensors"))
    if len(files) == 1:
        return read_safetensors(files[0])
    return read_safetensors_dir(path, _WEIGHTS)  # raises, saying what it expected


def load_transformer(
    path: str | os.PathLike,
    *,
    dtype=jnp.float32,
    param_dtype=None,
    config: WanConfig | None = None,
) -> WanTransformer:
    """Loads a Wan transformer checkpoint (diffusers, original or orbax layout; T2V, I2V, FLF2V, TI2V).

    Args:
      path: see :func:`load_transformer_params`.
      dtype: computation dtype (bfloat16 on accelerators).
      param_dtype: storage dtype of the parameters (default: ``dtype``).
      config: architecture, for a bare original-format file without ``config.json``.

    Returns:
      A :class:`WanTransformer` whose ``model(latents, timestep, context)`` is the diffusers forward.
    """
    config, params = load_transformer_params(path, config=config)
    return model_from_params(abstract_transformer(config, dtype=dtype, param_dtype=param_dtype or dtype), params)


def save_converted(model: WanTransformer, dst: str | os.PathLike) -> None:
    """Saves a model's converted parameters with orbax, plus its config, into folder ``dst``.

    :func:`load_transformer` on ``dst`` gives a model with identical outputs.
    """
    import orbax.checkpoint as ocp

    dst = Path(dst).absolute()
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} exists and is not empty; choose a new folder")
    dst.mkdir(parents=True, exist_ok=True)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    params = jax.tree.map(lambda a: np.asarray(a), params)
    ckptr = ocp.PyTreeCheckpointer()
    ckptr.save(dst / "params", params)
    (dst / ORBAX_MARKER).write_text(json.dumps({"format": "jaxvdm-orbax-1", "config": model.config.to_dict()}, indent=1))


def _load_orbax(path: Path) -> tuple[WanConfig, dict]:
    import orbax.checkpoint as ocp

    meta = json.loads((path / ORBAX_MARKER).read_text())
    cfg = WanConfig.from_dict(meta["config"])
    params = ocp.PyTreeCheckpointer().restore(path.absolute() / "params")
    return cfg, params
