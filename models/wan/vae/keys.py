"""The Wan VAE's checkpoint key map: diffusers ``AutoencoderKLWan`` tensor names, shapes and layouts."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx

from jaxvdm.models.checkpoint import check_tensors
from jaxvdm.models.wan.vae.config import WanVAEConfig
from jaxvdm.models.wan.vae.model import abstract_vae

__all__ = ["diffusers_tensor_shapes", "params_from_diffusers"]


def _torch_entry(path: tuple, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...], str]:
    """Our parameter path and shape -> (diffusers tensor name, PyTorch shape, layout kind)."""
    parts = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
    leaf, parent = parts[-1], parts[-2]
    if leaf == "gamma":  # attention norm is (C, 1, 1), the others (C, 1, 1, 1)
        return ".".join(parts), (shape[0], 1, 1) if parent == "norm" else (shape[0], 1, 1, 1), "gamma"
    mod = parts[:-1]
    if parent == "resample":
        mod = mod + ["1"]  # nn.Sequential(pad-or-upsample, Conv2d)
    name = ".".join(mod + ["weight" if leaf == "kernel" else leaf])
    if leaf == "bias":
        return name, tuple(shape), "copy"
    if parent in ("to_qkv", "proj"):
        return name, (shape[1], shape[0], 1, 1), "linear"
    if parent == "resample":
        return name, (shape[4], shape[3], shape[1], shape[2]), "conv2d"
    return name, (shape[4], shape[3], *shape[:3]), "conv3d"


def _entries(config: WanVAEConfig) -> list[tuple[tuple, str, tuple[int, ...], str]]:
    state = nnx.state(abstract_vae(config), nnx.Param)
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0]
    return [(path, *_torch_entry(path, tuple(leaf.shape))) for path, leaf in flat]


def diffusers_tensor_shapes(config: WanVAEConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name of a diffusers ``AutoencoderKLWan`` of ``config`` with its PyTorch shape."""
    return {name: shape for _, name, shape, _ in _entries(config)}


_FROM_TORCH = {
    "copy": lambda a: a,
    "gamma": lambda a: a.reshape(-1),
    "linear": lambda a: a[:, :, 0, 0].T,  # [O, I, 1, 1] -> [I, O]
    "conv2d": lambda a: a.transpose(2, 3, 1, 0)[None],  # [O, I, kh, kw] -> [1, kh, kw, I, O]
    "conv3d": lambda a: a.transpose(2, 3, 4, 1, 0),  # [O, I, kt, kh, kw] -> [kt, kh, kw, I, O]
}


def params_from_diffusers(config: WanVAEConfig, sd: Mapping[str, np.ndarray], *, source: str = "checkpoint") -> dict:
    """Converts a diffusers ``AutoencoderKLWan`` state dict (name -> numpy array) to jaxvdm's parameter
    tree (nested dict of numpy arrays matching ``nnx.to_pure_dict`` of a :class:`WanVAE`).

    Convolution weights become channels-last kernels ``[kt, kh, kw, Cin, Cout]`` (2-D ones get
    ``kt = 1``), 1x1 attention convolutions ``[Cin, Cout]`` matrices, norm gammas vectors ``[C]``.
    Raises CheckpointError naming every missing, unexpected or mis-shaped tensor (a config that
    does not match the weights shows up as mis-shaped, missing or unexpected names).
    """
    entries = _entries(config)
    check_tensors({name: shape for _, name, shape, _ in entries}, sd, source=source)
    out: dict = {}
    for path, name, _, kind in entries:
        node = out
        keys = [getattr(p, "key", getattr(p, "idx", p)) for p in path]
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = np.ascontiguousarray(_FROM_TORCH[kind](np.asarray(sd[name])))
    return out
