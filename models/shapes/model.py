"""The shipped shapes model: a small Wan DiT in pixel space with a word-level text encoder.

* Transformer: the Wan DiT (``jaxvdm.models.wan.transformer``) with the ``shapes`` preset
  (``configs/shapes.toml``): 16 frames of 32x32 RGB, patch 1x4x4, 8 layers, 3 heads of 64.
* Text encoder: a word embedding table plus learned positions over the caption grammar's vocabulary
  (``jaxvdm.models.shapes.data``). Padding tokens give zero vectors, so the empty prompt is all zeros,
  like Wan's zero-padded UMT5 states.
* "VAE": the identity. The latent *is* the video in ``[-1, 1]``; with no VAE there is nothing to train
  or to get wrong, and every strategy's error shows directly in pixels.

Weights ship as one safetensors file (``weights.safetensors`` beside this module) holding the transformer
(``transformer/...``) and the text encoder (``text/...``), with the config and vocabulary in its metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from jaxvdm.models.checkpoint import CheckpointError, check_tensors, read_safetensors, write_safetensors
from jaxvdm.models.wan.transformer import WanConfig, WanTransformer

__all__ = ["WordEncoder", "ShapesModel", "init_model", "init_from", "save_model", "load_model", "WEIGHTS_PATH",
           "preset"]

WEIGHTS_PATH = Path(__file__).with_name("weights.safetensors")
_FLOAT_DTYPES = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16))


def preset() -> dict:
    from jaxvdm.models.presets import load_preset

    return load_preset("shapes")


class WordEncoder(nnx.Module):
    """Token ids ``[B, L]`` -> embeddings ``[B, L, dim]``; id ``pad_id`` maps to zeros."""

    def __init__(self, vocab_size: int, max_len: int, dim: int, *, pad_id: int = 0, rngs: nnx.Rngs):
        self.pad_id = pad_id
        self.embedding = nnx.Param(jax.random.normal(rngs.params(), (vocab_size, dim)) * 0.5)
        self.position = nnx.Param(jax.random.normal(rngs.params(), (max_len, dim)) * 0.1)

    def __call__(self, ids: jax.Array) -> jax.Array:
        ids = jnp.asarray(ids, jnp.int32)
        e = jnp.take(self.embedding[...], ids, axis=0) + self.position[...][None, : ids.shape[1]]
        return jnp.where((ids != self.pad_id)[..., None], e, 0.0).astype(jnp.float32)


class ShapesModel(nnx.Module):
    """The transformer and its text encoder, trained together."""

    def __init__(self, config: WanConfig, vocab_size: int, max_len: int, *, dtype=jnp.float32, rngs: nnx.Rngs,
                 pad_id: int = 0):
        self.transformer = WanTransformer(config, dtype=dtype, rngs=rngs)
        self.text = WordEncoder(vocab_size, max_len, config.text_dim, pad_id=pad_id, rngs=rngs)


def init_model(seed: int = 0, *, dtype=jnp.float32, config: WanConfig | None = None,
               max_len: int | None = None) -> ShapesModel:
    """A randomly initialised shapes model (the preset's architecture and caption length unless ``config`` /
    ``max_len`` are given)."""
    from jaxvdm.models.shapes import data

    p = preset()
    cfg = config or WanConfig.from_dict(p["transformer"])
    return ShapesModel(cfg, len(data.VOCAB), int(max_len or p["text"]["max_len"]), dtype=dtype, rngs=nnx.Rngs(seed),
                       pad_id=data.PAD_ID)


def init_from(path: str | os.PathLike, seed: int = 0, *, dtype=jnp.float32, max_len: int | None = None) -> ShapesModel:
    """A shapes model holding the weights at ``path`` (e.g. the shipped ones), to train further.

    The architecture is the file's. With ``max_len`` longer than the file's caption length (two-shape
    captions need :data:`data.MAX_LEN_TWO_SHAPES`) the word encoder's extra positions are freshly
    initialised from ``seed`` and every other weight is the file's. Raises CheckpointError for a file that
    is not a shapes model and ValueError for a ``max_len`` shorter than the file's.
    """
    loaded = load_model(path, dtype=dtype)
    have = int(loaded.text.position.shape[0])
    if max_len is None or max_len == have:
        return loaded
    if max_len < have:
        raise ValueError(f"max_len {max_len} is shorter than the {have} caption positions of {path}")
    fresh = init_model(seed, dtype=dtype, config=loaded.transformer.config, max_len=max_len)
    params = nnx.to_pure_dict(nnx.state(loaded, nnx.Param))
    position = np.asarray(fresh.text.position[...]).copy()
    position[:have] = np.asarray(params["text"]["position"])
    params["text"]["position"] = jnp.asarray(position)
    state = nnx.state(fresh, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(fresh, state)
    return fresh


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = np.asarray(v)
    return out


def save_model(model: ShapesModel, path: str | os.PathLike, *, dtype=np.float16, info: dict | None = None) -> None:
    """Writes the model (parameters cast to ``dtype``) with its config and vocabulary as metadata."""
    from jaxvdm.models.shapes import data

    params = _flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    params = {k: v.astype(dtype) for k, v in params.items()}
    meta = {"config": json.dumps(model.transformer.config.to_dict()), "vocab": json.dumps(list(data.VOCAB)),
            "max_len": str(model.text.position.shape[0]), "format": "jaxvdm-shapes-1"}
    if info:
        meta["info"] = json.dumps(info)
    write_safetensors(path, params, metadata=meta)


def _metadata(path: Path) -> dict:
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)).get("__metadata__", {})


def load_model(path: str | os.PathLike | None = None, *, dtype=jnp.float32) -> ShapesModel:
    """Loads shipped (or retrained) weights strictly: every tensor must match the config in the file."""
    from jaxvdm.models.shapes import data

    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.is_file():
        raise CheckpointError(f"{path}: shapes model weights not found (train them with "
                              f"python -m jaxvdm.models.shapes.train)")
    fix = ("reinstall jaxvdm to restore the shipped weights" if path.resolve() == WEIGHTS_PATH.resolve() else
           "save them again with jaxvdm.models.shapes.model.save_model or retrain with "
           "python -m jaxvdm.models.shapes.train")
    tensors = read_safetensors(path)
    meta = _metadata(path)
    try:
        cfg = WanConfig.from_dict(json.loads(meta["config"]))
        vocab = json.loads(meta["vocab"])
        max_len = int(meta["max_len"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: not a shapes model file: its metadata lacks the shapes model config ({e}); "
                              f"{fix} (Wan checkpoints are folders: pass the folder)") from None
    if vocab != list(data.VOCAB):
        raise CheckpointError(f"{path}: vocabulary does not match jaxvdm.models.shapes.data.VOCAB; {fix}")
    not_float = sorted(f"{k} ({v.dtype})" for k, v in tensors.items() if v.dtype not in _FLOAT_DTYPES)
    if not_float:
        raise CheckpointError(f"{path}: weights must be floating point; got {', '.join(not_float[:5])}"
                              f"{' ...' if len(not_float) > 5 else ''}; {fix}")
    abstract = nnx.eval_shape(lambda: ShapesModel(cfg, len(vocab), max_len, dtype=dtype, rngs=nnx.Rngs(0),
                                                  pad_id=data.PAD_ID))
    graphdef, state = nnx.split(abstract)
    pure = nnx.to_pure_dict(state)
    expected = {"/".join(str(getattr(p, "key", p)) for p in path_): leaf.shape
                for path_, leaf in jax.tree_util.tree_leaves_with_path(pure)}
    try:
        check_tensors(expected, tensors, source=str(path))
    except CheckpointError as e:
        raise CheckpointError(f"{e}\n  {fix}") from None
    values = jax.tree_util.tree_map_with_path(
        lambda p, leaf: jnp.asarray(tensors["/".join(str(getattr(k, "key", k)) for k in p)], jnp.float32), pure)
    nnx.replace_by_pure_dict(state, values)
    return nnx.merge(graphdef, state)
