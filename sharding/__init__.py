"""Parallel strategies over a ``jax.sharding.Mesh``: one module per strategy, mesh helpers and
communication accounting.

This folder installs as ``jaxvdm.sharding``; it is never importable as a bare ``sharding`` package.
"""

if __name__ != "jaxvdm.sharding":
    raise ImportError(
        f"this folder is the package 'jaxvdm.sharding' and cannot be imported as '{__name__}'; "
        "install jaxvdm (pip install -e .) and import jaxvdm.sharding instead"
    )

from jaxvdm.sharding.mesh import make_mesh, parse_mesh_spec  # noqa: E402,F401
from jaxvdm.sharding.registry import STRATEGIES, available_strategies, resolve  # noqa: E402,F401
from jaxvdm.sharding.distributed import initialize_distributed, is_main_process  # noqa: E402,F401
