"""Weight sharding: block parameters sharded over a mesh axis and all-gathered one layer at a time.

The stacked block parameters (leading layer axis) are each split along one non-layer dimension that
the axis size divides (the largest such dimension); tensors with no divisible dimension stay replicated
(they are tiny: biases of odd sizes). Inside the layer scan, :func:`gather_hook` all-gathers the current
layer's shards, so a device holds the whole of one layer only while computing it. The embedding and
the output head are small and stay replicated.

Per-device parameter bytes are therefore ``block_bytes / n + replicated_bytes`` (checked by the tests
with ``jax.eval_shape`` on the abstract 14B model and with the compiled memory analysis).
"""

from __future__ import annotations

import jax
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxvdm.models.wan.transformer.model import is_block_path

__all__ = ["shard_dims", "param_specs", "gather_hook", "per_device_bytes"]


def shard_dims(state, n: int) -> list[int | None]:
    """For each leaf of a model state (leaf order), the dim sharded over ``n`` devices, or None.

    Only ``blocks/...`` leaves are sharded, never along their leading layer axis.
    """
    dims = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        d = None
        if is_block_path(path) and n > 1:
            cands = [i for i in range(1, leaf.ndim) if leaf.shape[i] % n == 0]
            if cands:
                d = max(cands, key=lambda i: (leaf.shape[i], -i))
        dims.append(d)
    return dims


def param_specs(state, axis: str | None, n: int):
    """A tree like ``state`` of PartitionSpecs: block tensors sharded on ``axis``, the rest replicated."""
    if axis is None or n == 1:
        return jax.tree.map(lambda _: P(), state)
    dims = shard_dims(state, n)
    leaves, treedef = jax.tree.flatten(state)
    specs = []
    for leaf, d in zip(leaves, dims):
        if d is None:
            specs.append(P())
        else:
            specs.append(P(*([None] * d + [axis])))
    return jax.tree.unflatten(treedef, specs)


def gather_hook(block_dims: list[int | None], axis: str):
    """A ``param_hook`` for ``WanTransformer.run_blocks``: all-gathers one layer's sharded tensors.

    ``block_dims`` are the shard dims of the *blocks* leaves (with the layer axis); inside the scan a
    layer's leaf has lost that axis, so it is gathered along ``dim - 1``.
    """

    def hook(layer_state):
        leaves, treedef = jax.tree.flatten(layer_state)
        if len(leaves) != len(block_dims):
            raise ValueError("internal: block parameter tree does not match its shard dims")
        out = [a if d is None else lax.all_gather(a, axis, axis=d - 1, tiled=True) for a, d in zip(leaves, block_dims)]
        return jax.tree.unflatten(treedef, out)

    return hook


def per_device_bytes(state, n: int) -> tuple[int, int]:
    """``(sharded_bytes_per_device, replicated_bytes)`` of ``state`` (abstract or concrete) on ``n`` devices."""
    sharded = replicated = 0
    for leaf, d in zip(jax.tree.leaves(state), shard_dims(state, n)):
        nbytes = int(leaf.size) * leaf.dtype.itemsize
        if d is None:
            replicated += nbytes
        else:
            sharded += nbytes // n
    return sharded, replicated
