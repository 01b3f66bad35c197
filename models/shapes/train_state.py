"""Resumable training state of the shapes model, in files small enough to leave a device call.

One device call runs for at most 10 minutes and hands back at most 8 files of 16 MiB each, so a long
training run is a chain of calls, each resuming from the state the previous one wrote. A state folder::

    state.json               step, training seconds so far, the PRNG key, the loss log, which trees it holds
    params-000.safetensors   the parameters (float32), in shards of at most ``shard_bytes``
    ema-000.safetensors      the EMA parameters (float32)
    adam-000.safetensors     the optimizer state (float32; left out of compact states)

A full state resumes exactly: the same steps in one call or in several give bit-identical parameters
(``tests/test_shapes_model.py`` checks it). A compact state leaves out the optimizer moments (about 40 %
of the bytes, which is what makes the shapes model's state fit in one call's files); resuming from it
restarts the optimizer, and ``train`` warms the learning rate up again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np

from jaxvdm.models.checkpoint import CheckpointError, read_safetensors, write_safetensors

__all__ = ["save_state", "load_state", "has_state", "flatten_tree", "STATE_FILE"]

STATE_FILE = "state.json"
_SHARD_BYTES = 15 * 2**20


def flatten_tree(tree) -> dict[str, np.ndarray]:
    """``{key path (jax.tree_util.keystr): numpy array}`` of a pytree's leaves, fetched to the host."""
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
            jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


def _write_shards(directory: Path, name: str, flat: dict[str, np.ndarray], shard_bytes: int) -> list[str]:
    files, shard, size = [], {}, 0
    for key in sorted(flat):
        a = flat[key]
        if a.nbytes > shard_bytes:
            raise ValueError(f"tensor {name}{key} has {a.nbytes} bytes, more than one shard ({shard_bytes})")
        if shard and size + a.nbytes > shard_bytes:
            files.append(f"{name}-{len(files):03d}.safetensors")
            write_safetensors(directory / files[-1], shard)
            shard, size = {}, 0
        shard[key] = a
        size += a.nbytes
    files.append(f"{name}-{len(files):03d}.safetensors")
    write_safetensors(directory / files[-1], shard)
    return files


def save_state(directory: str | os.PathLike, trees: dict, meta: dict, *, shard_bytes: int = _SHARD_BYTES) -> None:
    """Writes ``trees`` (name -> pytree of arrays, e.g. params, ema, adam) as float32 safetensors shards and
    ``meta`` (JSON-ready) into ``directory``, replacing what was there only once everything is written."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    for name, tree in trees.items():
        flat = {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in flatten_tree(tree).items()}
        files[name] = _write_shards(tmp, name, flat, shard_bytes)
    (tmp / STATE_FILE).write_text(json.dumps({**meta, "files": files}, indent=1))
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def has_state(directory: str | os.PathLike | None) -> bool:
    """Whether ``directory`` holds a saved training state."""
    return directory is not None and (Path(directory) / STATE_FILE).is_file()


def load_state(directory: str | os.PathLike, templates: dict) -> tuple[dict, dict]:
    """Reads a state written by :func:`save_state`. ``templates`` maps each tree's name to a pytree of the
    expected structure (e.g. freshly initialised parameters); returns ``(trees, meta)`` with each stored
    tree rebuilt in its template's structure and dtypes. Trees in ``templates`` that the state does not hold
    are left out of ``trees`` (a compact state has no ``adam``). A tensor missing or of the wrong shape is
    a :class:`CheckpointError` naming it."""
    directory = Path(directory)
    meta = json.loads((directory / STATE_FILE).read_text())
    trees = {}
    for name, template in templates.items():
        if name not in meta.get("files", {}):
            continue
        stored: dict[str, np.ndarray] = {}
        for f in meta["files"][name]:
            stored.update(read_safetensors(directory / f))
        paths, treedef = jax.tree_util.tree_flatten_with_path(template)
        leaves = []
        for path, leaf in paths:
            key = jax.tree_util.keystr(path)
            if key not in stored:
                raise CheckpointError(f"{directory}: training state {name!r} lacks {key}; it was written by "
                                      f"another model configuration (start a new --state folder)")
            a = stored.pop(key)
            if a.shape != np.shape(leaf):
                raise CheckpointError(f"{directory}: training state {name}{key} has shape {a.shape}, the model "
                                      f"needs {np.shape(leaf)} (start a new --state folder)")
            leaves.append(np.asarray(a, dtype=np.asarray(leaf).dtype))
        if stored:
            raise CheckpointError(f"{directory}: training state {name!r} has tensors this model lacks: "
                                  f"{sorted(stored)[:3]} (start a new --state folder)")
        trees[name] = jax.tree_util.tree_unflatten(treedef, leaves)
    return trees, meta
