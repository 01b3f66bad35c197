"""Strict, pickle-free reading of safetensors checkpoints.

Every loader in jaxvdm (Wan transformer, VAE, text encoder, the shipped model) reads tensors through
this module, so every one of them fails the same way on bad input:

* a directory without the expected config or weights says what it expected to find;
* a truncated or corrupt safetensors file raises :class:`CheckpointError` naming the file;
* :func:`check_tensors` compares what a model expects with what a checkpoint holds and raises one
  error naming *every* missing, unexpected and mis-shaped tensor.

The safetensors format is parsed here directly (8-byte header length, JSON header, raw little-endian
data), memory-mapped, so bfloat16 checkpoints load without torch and nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

__all__ = [
    "CheckpointError",
    "read_config",
    "read_safetensors",
    "read_safetensors_dir",
    "write_safetensors",
    "check_tensors",
    "model_from_params",
]

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024
_DAMAGED = "the file is damaged or incomplete (an interrupted download or copy?): download or write it again"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


def read_config(directory: str | os.PathLike, name: str = "config.json") -> dict:
    """Reads ``directory/name`` as JSON.

    Raises CheckpointError if the directory does not exist, has no such file (the message says
    which file was expected and what the directory holds), or the file is not valid JSON.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (expected a checkpoint folder holding {name})")
    path = directory / name
    if not path.is_file():
        present = sorted(p.name for p in directory.iterdir())[:12]
        raise CheckpointError(
            f"{directory}: no {name} (expected {name} beside the safetensors weights; found {present or 'nothing'})"
        )
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def read_safetensors(path: str | os.PathLike, *, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Reads tensors from one ``.safetensors`` file as read-only numpy arrays (memory-mapped).

    Args:
      path: the file.
      names: if given, only these tensors are returned (all must exist in the file).

    Returns:
      ``{name: array}`` with the file's dtypes (bfloat16 as ``ml_dtypes.bfloat16``).

    Raises:
      CheckpointError naming the file if it is missing, truncated, or its header is corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated or not a safetensors file ({size} bytes); {_DAMAGED}")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors header (header length {n}, file {size} bytes); "
                                  f"{_DAMAGED}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e}); {_DAMAGED}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object); {_DAMAGED}")
    header.pop("__metadata__", None)
    data_start = 8 + n
    wanted = set(header) if names is None else set(names)
    missing = wanted - set(header)
    if missing:
        raise CheckpointError(f"{path}: tensors listed in the index are absent from the file: {sorted(missing)[:10]}")
    mm = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else np.zeros((0,), np.uint8)
    out: dict[str, np.ndarray] = {}
    for name in sorted(wanted):
        info = header[name]
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}: {info!r}; {_DAMAGED}") from None
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dtype.itemsize or begin < 0:
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r} (offsets do not match shape {shape} "
                                  f"{info.get('dtype')}); {_DAMAGED}")
        if data_start + end > size:
            raise CheckpointError(
                f"{path}: truncated file: tensor {name!r} needs bytes up to {data_start + end}, file has {size}; {_DAMAGED}"
            )
        out[name] = mm[data_start + begin : data_start + end].view(dtype).reshape(shape)
    return out


def read_safetensors_dir(directory: str | os.PathLike, weights_name: str) -> dict[str, np.ndarray]:
    """Reads all tensors of a diffusers/transformers-style folder.

    Looks for ``{weights_name}.safetensors``, or for the sharded layout
    ``{weights_name}.safetensors.index.json`` plus the shard files it names. ``.bin``/``.pt``
    pickles are refused: jaxvdm never unpickles.

    Raises:
      CheckpointError saying what was expected if neither layout is present, naming any shard that
      is missing, truncated or corrupt.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    single = directory / f"{weights_name}.safetensors"
    index = directory / f"{weights_name}.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: corrupt index ({e!r})") from None
        by_file: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            by_file.setdefault(file, []).append(name)
        out: dict[str, np.ndarray] = {}
        for file, names in sorted(by_file.items()):
            out.update(read_safetensors(directory / file, names=names))
        return out
    pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
    hint = f" (found pickle files {pickles}: jaxvdm only reads safetensors)" if pickles else ""
    raise CheckpointError(
        f"{directory}: no weights: expected {single.name} or {index.name}{hint}"
    )


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Writes ``tensors`` to ``path`` in safetensors format, atomically (temporary file + rename)."""
    path = Path(path)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        a = np.ascontiguousarray(a).reshape(a.shape)  # ascontiguousarray makes 0-d arrays 1-d
        if a.dtype not in _CODES:
            raise TypeError(f"cannot store dtype {a.dtype} of tensor {name!r} in safetensors")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": _CODES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for a in arrays:
                f.write(a.tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_tensors(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, np.ndarray],
    *,
    source: str,
    ignore_unexpected: Iterable[str] = (),
) -> None:
    """Raises CheckpointError naming every missing, unexpected and mis-shaped tensor.

    Args:
      expected: tensor name -> shape the model needs.
      found: tensor name -> array the checkpoint holds.
      source: what to call the checkpoint in the message (usually its path).
      ignore_unexpected: substrings; unexpected keys containing one are tolerated (e.g. diffusers'
        ``norm_added_q``, which the reference model ignores too).
    """
    ignore = tuple(ignore_unexpected)
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected and not any(s in k for s in ignore))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(expected[k])}"
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k])
    )
    if not (missing or unexpected or misshaped):
        return
    parts = [f"{source}: checkpoint does not match the model"]
    if missing:
        parts.append(f"missing {len(missing)} tensor(s): " + ", ".join(missing))
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} tensor(s): " + ", ".join(unexpected))
    if misshaped:
        parts.append(f"mis-shaped {len(misshaped)} tensor(s): " + "; ".join(misshaped))
    raise CheckpointError("\n  ".join(parts))


def model_from_params(abstract_module, params: Mapping):
    """The module ``abstract_module`` (from ``nnx.eval_shape``: structure and dtypes, nothing allocated)
    holding ``params``, a nested dict of arrays with the layout of ``nnx.to_pure_dict`` of its state.

    Every array is cast to its leaf's dtype. Guards the conversion itself (the strict name/shape check
    runs before it, on the checkpoint's names): a converted array whose shape differs from the
    leaf's raises CheckpointError naming the parameter path.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(abstract_module)

    def take(path, leaf):
        node = params
        for k in path:
            node = node[getattr(k, "key", getattr(k, "idx", k))]
        arr = np.asarray(node)
        if arr.shape != tuple(leaf.shape):
            raise CheckpointError(f"internal: converted {jax.tree_util.keystr(path)} is {arr.shape}, "
                                  f"model needs {tuple(leaf.shape)}")
        return jnp.asarray(arr, dtype=leaf.dtype)

    pure = jax.tree_util.tree_map_with_path(take, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)
