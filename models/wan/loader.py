"""Loading Wan2.1 transformer checkpoints: diffusers format, original Wan format, and jaxvdm's orbax copy.

* **diffusers**: a folder with ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or shards
  listed in ``diffusion_pytorch_model.safetensors.index.json``) — the ``transformer/`` folder of a
  ``Wan2.1-T2V-*-Diffusers`` download.
* **original**: the Wan-AI layout: one safetensors file with the original key names
  (``self_attn.q``, ``head.head``, ``blocks.N.modulation``…), with a ``config.json`` of the original
  ``WanModel`` (``dim``, ``num_heads``…) beside it, or a bare file plus an explicit config.
* **orbax**: what :func:`save_converted` (``jaxvdm convert``) writes, so later starts skip conversion.

Loading is strict: every missing, unexpected or mis-shaped tensor is reported by name in one
:class:`~jaxvdm.models.checkpoint.CheckpointError`; truncated or corrupt files name the file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvdm.models.checkpoint import CheckpointError, check_tensors, read_config, read_safetensors, read_safetensors_dir
from jaxvdm.models.wan.config import WanConfig
from jaxvdm.models.wan.transformer import WanTransformer

__all__ = [
    "load_transformer",
    "load_transformer_params",
    "save_converted",
    "diffusers_tensor_shapes",
    "params_from_diffusers",
    "original_to_diffusers_names",
    "init_transformer",
    "abstract_transformer",
    "count_parameters",
]

ORBAX_MARKER = "jaxvdm_transformer.json"
_WEIGHTS = "diffusion_pytorch_model"

# (our path, diffusers name, kind). kind: "linear" (W.T / bias), "conv" (patch embedding), "copy".
_LINEARS_TOP = [
    ("condition_embedder/time_linear_1", "condition_embedder.time_embedder.linear_1"),
    ("condition_embedder/time_linear_2", "condition_embedder.time_embedder.linear_2"),
    ("condition_embedder/time_proj", "condition_embedder.time_proj"),
    ("condition_embedder/text_linear_1", "condition_embedder.text_embedder.linear_1"),
    ("condition_embedder/text_linear_2", "condition_embedder.text_embedder.linear_2"),
    ("proj_out", "proj_out"),
]
_LINEARS_BLOCK = [
    (f"{a}/{p}", f"{a}.{q}")
    for a in ("attn1", "attn2")
    for p, q in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out.0"))
] + [("ffn/proj_in", "ffn.net.0.proj"), ("ffn/proj_out", "ffn.net.2")]
_NORMS_BLOCK = [(f"{a}/{n}/scale", f"{a}.{n}.weight") for a in ("attn1", "attn2") for n in ("norm_q", "norm_k")]


def _linear_shapes(d_out: int, d_in: int) -> dict:
    return {"weight": (d_out, d_in), "bias": (d_out,)}


def diffusers_tensor_shapes(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name of a diffusers ``WanTransformer3DModel`` of ``cfg`` with its PyTorch shape."""
    d = cfg.hidden_size
    pt, ph, pw = cfg.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, cfg.in_channels, pt, ph, pw),
        "patch_embedding.bias": (d,),
        "scale_shift_table": (1, 2, d),
    }
    dims = {
        "condition_embedder.time_embedder.linear_1": (d, cfg.freq_dim),
        "condition_embedder.time_embedder.linear_2": (d, d),
        "condition_embedder.time_proj": (6 * d, d),
        "condition_embedder.text_embedder.linear_1": (d, cfg.text_dim),
        "condition_embedder.text_embedder.linear_2": (d, d),
        "proj_out": (cfg.out_channels * cfg.patch_volume, d),
    }
    block = {q: (d, d) for _, q in _LINEARS_BLOCK if q.startswith("attn")}
    block["ffn.net.0.proj"] = (cfg.ffn_dim, d)
    block["ffn.net.2"] = (d, cfg.ffn_dim)
    for name, (o, i) in dims.items():
        shapes.update({f"{name}.{k}": v for k, v in _linear_shapes(o, i).items()})
    for layer in range(cfg.num_layers):
        pre = f"blocks.{layer}."
        for name, (o, i) in block.items():
            shapes.update({f"{pre}{name}.{k}": v for k, v in _linear_shapes(o, i).items()})
        for _, q in _NORMS_BLOCK:
            shapes[pre + q] = (d,)
        if cfg.cross_attn_norm:
            shapes[pre + "norm2.weight"] = (d,)
            shapes[pre + "norm2.bias"] = (d,)
        shapes[pre + "scale_shift_table"] = (1, 6, d)
    return shapes


def _set(tree: dict, path: str, value) -> None:
    keys = path.split("/")
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def params_from_diffusers(cfg: WanConfig, sd: Mapping[str, np.ndarray], *, source: str = "checkpoint") -> dict:
    """Converts a diffusers-named state dict to jaxvdm's parameter tree (nested dict of numpy arrays).

    Linear weights are transposed to ``[in, out]``; the patch-embedding convolution becomes a linear
    kernel ``[C*pt*ph*pw, D]``; per-block tensors are stacked on a leading layer axis.
    Raises CheckpointError naming every missing, unexpected or mis-shaped tensor.
    """
    check_tensors(diffusers_tensor_shapes(cfg), sd, source=source, ignore_unexpected=("norm_added_q",))
    p: dict = {}
    w = sd["patch_embedding.weight"]
    _set(p, "patch_embedding/kernel", np.asarray(w).reshape(w.shape[0], -1).T)
    _set(p, "patch_embedding/bias", np.asarray(sd["patch_embedding.bias"]))
    _set(p, "scale_shift_table", np.asarray(sd["scale_shift_table"]))
    for ours, theirs in _LINEARS_TOP:
        _set(p, f"{ours}/kernel", np.asarray(sd[f"{theirs}.weight"]).T)
        _set(p, f"{ours}/bias", np.asarray(sd[f"{theirs}.bias"]))
    layers = range(cfg.num_layers)

    def stack(name, fn=np.asarray):
        return np.stack([fn(sd[f"blocks.{i}.{name}"]) for i in layers])

    for ours, theirs in _LINEARS_BLOCK:
        _set(p, f"blocks/{ours}/kernel", stack(f"{theirs}.weight", lambda a: np.asarray(a).T))
        _set(p, f"blocks/{ours}/bias", stack(f"{theirs}.bias"))
    for ours, theirs in _NORMS_BLOCK:
        _set(p, f"blocks/{ours}", stack(theirs))
    if cfg.cross_attn_norm:
        _set(p, "blocks/norm2/scale", stack("norm2.weight"))
        _set(p, "blocks/norm2/bias", stack("norm2.bias"))
    _set(p, "blocks/scale_shift_table", stack("scale_shift_table"))
    return p


_ORIG_TOP = {
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "head.head": "proj_out",
    "patch_embedding": "patch_embedding",
}
_ORIG_BLOCK = {
    "self_attn": "attn1",
    "cross_attn": "attn2",
}
_ORIG_PROJ = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q", "norm_k": "norm_k"}


def original_to_diffusers_names(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames an original-format Wan state dict to diffusers names (tensors unchanged).

    Keys it does not recognise are kept as they are, so the strict check reports them as unexpected.
    """
    out: dict[str, np.ndarray] = {}
    for key, value in sd.items():
        k = key.removeprefix("model.diffusion_model.")
        new = None
        if k == "head.modulation":
            new = "scale_shift_table"
        elif (m := re.fullmatch(r"blocks\.(\d+)\.(.+)", k)) is not None:
            i, rest = m.groups()
            parts = rest.split(".")
            if rest == "modulation":
                new = "scale_shift_table"
            elif parts[0] in _ORIG_BLOCK and len(parts) == 3 and parts[1] in _ORIG_PROJ:
                new = f"{_ORIG_BLOCK[parts[0]]}.{_ORIG_PROJ[parts[1]]}.{parts[2]}"
            elif parts[0] == "ffn" and len(parts) == 3 and parts[1] in ("0", "2"):
                new = f"ffn.net.0.proj.{parts[2]}" if parts[1] == "0" else f"ffn.net.2.{parts[2]}"
            elif parts[0] == "norm3" and len(parts) == 2:  # the affine cross-attention norm
                new = f"norm2.{parts[1]}"
            if new is not None:
                new = f"blocks.{i}.{new}"
        else:
            for o, d in _ORIG_TOP.items():
                if k.startswith(o + "."):
                    new = d + k[len(o):]
        out[new if new is not None else key] = value
    return out


def _is_original(sd: Mapping[str, np.ndarray]) -> bool:
    return any(k.removeprefix("model.diffusion_model.") in ("head.head.weight", "head.modulation") for k in sd)


def _infer_config(sd: Mapping[str, np.ndarray], head_dim: int = 128) -> WanConfig:
    """Infers a config from original-format tensor shapes (Wan's head dim is 128 in every release)."""
    sd = {k.removeprefix("model.diffusion_model."): v for k, v in sd.items()}
    try:
        w = sd["patch_embedding.weight"]
        dim, cin = w.shape[:2]
        layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
        return WanConfig(
            patch_size=tuple(w.shape[2:]),
            num_attention_heads=dim // head_dim,
            attention_head_dim=head_dim,
            in_channels=cin,
            out_channels=sd["head.head.weight"].shape[0] // int(np.prod(w.shape[2:])),
            text_dim=sd["text_embedding.0.weight"].shape[1],
            freq_dim=sd["time_embedding.0.weight"].shape[1],
            ffn_dim=sd["blocks.0.ffn.0.weight"].shape[0],
            num_layers=layers,
        )
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"cannot infer the Wan config from the tensors (missing {e}); pass config=") from None


def abstract_transformer(cfg: WanConfig, *, dtype=jnp.float32, param_dtype=jnp.float32) -> WanTransformer:
    """A WanTransformer whose parameters are ``jax.ShapeDtypeStruct`` (nothing allocated)."""
    return nnx.eval_shape(lambda: WanTransformer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))


def count_parameters(model: WanTransformer) -> int:
    """Number of parameters (works on an abstract model)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def init_transformer(cfg: WanConfig, *, seed: int = 0, dtype=jnp.float32, param_dtype=jnp.float32) -> WanTransformer:
    """A randomly initialised WanTransformer (for benchmarks and training from scratch)."""
    return WanTransformer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))


def _model_from_params(cfg: WanConfig, params: dict, dtype, param_dtype) -> WanTransformer:
    """Builds a WanTransformer holding ``params`` (our nested-dict layout), cast to ``param_dtype``."""
    graphdef, state = nnx.split(abstract_transformer(cfg, dtype=dtype, param_dtype=param_dtype))

    def take(path, leaf):
        node = params
        for k in path:
            node = node[getattr(k, "key", k)]
        arr = np.asarray(node)
        if arr.shape != leaf.shape:  # the strict check runs first; this guards the conversion itself
            raise CheckpointError(f"internal: converted {jax.tree_util.keystr(path)} is {arr.shape}, model needs {leaf.shape}")
        return jnp.asarray(arr, dtype=leaf.dtype)

    pure = jax.tree_util.tree_map_with_path(take, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


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
    if config is None:
        try:
            config = WanConfig.from_dict(cfg_dict) if cfg_dict is not None else _infer_config(sd)
        except (TypeError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{source}: invalid transformer config: {e}") from None
    if _is_original(sd):
        sd = original_to_diffusers_names(sd)
    return config, params_from_diffusers(config, sd, source=source)


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
    """Loads a Wan2.1 transformer checkpoint (diffusers, original or orbax layout).

    Args:
      path: see :func:`load_transformer_params`.
      dtype: computation dtype (bfloat16 on accelerators).
      param_dtype: storage dtype of the parameters (default: ``dtype``).
      config: architecture, for a bare original-format file without ``config.json``.

    Returns:
      A :class:`WanTransformer` whose ``model(latents, timestep, context)`` is the diffusers forward.
    """
    config, params = load_transformer_params(path, config=config)
    return _model_from_params(config, params, dtype, param_dtype or dtype)


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
