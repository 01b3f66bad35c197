"""Whether this machine can run jaxvdm's FP8 (e4m3) path, checked before anything is traced.

FP8 needs three things, all on the host side of JAX:

* an NVIDIA GPU of compute capability 9.0 or newer (Hopper: H100/H200; Blackwell is newer): cuBLASLt's
  FP8 GEMMs and cuDNN's FP8 flash attention exist only there (XLA rewrites FP8 dots for 8.9+, cuDNN's
  FP8 attention refuses below 9.0);
* cuDNN 9.1.0 or newer loaded by JAX's CUDA plugin (the first release with FP8 flash-attention
  forward). The plugin's ``_versions`` module (``jax._src.lib.cuda_versions``, present in JAX 0.10 and
  0.11) reports both the loaded version (``cudnn_get_version``) and the one JAX was built against
  (``cudnn_build_version``), as ``major*10000 + minor*100 + patch`` for cuDNN 9;
* the private cuDNN attention entry point
  ``jax._src.cudnn.fused_attention_stablehlo.dot_product_attention`` with its ``use_fp8`` and
  ``fp8_params`` arguments (``jax.nn.dot_product_attention`` does not expose FP8).

:func:`check_fp8` inspects all of them and raises one :class:`ValueError` naming what is missing.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import jax

__all__ = ["Fp8Support", "check_fp8", "MIN_COMPUTE_CAPABILITY", "MIN_CUDNN_VERSION", "format_cudnn_version"]

MIN_COMPUTE_CAPABILITY = (9, 0)
MIN_CUDNN_VERSION = 90100  # 9.1.0

_NEEDS = "an NVIDIA GPU of compute capability 9.0 or newer (H100/H200)"
_WORKS = (f"precision='fp8' runs on {_NEEDS} with cuDNN 9.1 or newer and jax 0.10.2 to 0.11.x "
          "(pip install -U 'jax[cuda12]'); use precision='bf16' elsewhere")


class Fp8Support(NamedTuple):
    """What :func:`check_fp8` found on a capable machine."""

    device_kind: str
    compute_capability: tuple[int, int]
    cudnn_version: int
    cudnn_build_version: int
    jax_version: str


def format_cudnn_version(v: int) -> str:
    """``91002 -> '9.10.2'`` (cuDNN 9 numbering; cuDNN 8 numbers ``8906`` as ``8.9.6``)."""
    v = int(v)
    if v >= 90000:
        return f"{v // 10000}.{(v // 100) % 100}.{v % 100}"
    return f"{v // 1000}.{(v // 100) % 10}.{v % 100}"


def _cuda_versions():
    try:
        from jax._src.lib import cuda_versions
    except ImportError:  # pragma: no cover - depends on the JAX version
        return None
    return cuda_versions


def _fp8_attention_entry_point() -> str | None:
    """None when the private FP8 attention is importable with the arguments jaxvdm passes, else why not."""
    try:
        from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention
    except ImportError as e:
        return f"jax {jax.__version__} has no jax._src.cudnn.fused_attention_stablehlo ({e})"
    params = inspect.signature(dot_product_attention).parameters
    missing = [p for p in ("use_fp8", "fp8_params") if p not in params]
    if missing:
        return (f"jax {jax.__version__}'s cuDNN dot_product_attention lacks {', '.join(missing)} "
                "(the FP8 attention entry point)")
    return None


def check_fp8() -> Fp8Support:
    """Checks that ``precision='fp8'`` can run here; returns what was found.

    Raises:
      ValueError: one line naming every missing requirement and what would work. On a machine whose
        JAX backend is not a GPU the message is exactly ``"precision='fp8' needs an NVIDIA GPU of
        compute capability 9.0 or newer (H100/H200); this machine runs jax on cpu"`` (or ``tpu``).
    """
    backend = jax.default_backend()
    if backend != "gpu":
        raise ValueError(f"precision='fp8' needs {_NEEDS}; this machine runs jax on {backend}")
    devices = jax.local_devices(backend="gpu")
    platform_version = str(getattr(devices[0].client, "platform_version", ""))
    if "cuda" not in platform_version.lower():
        raise ValueError(f"precision='fp8' needs {_NEEDS}; this machine's jax GPU backend is not CUDA "
                         f"({platform_version or 'unknown platform'})")
    problems = []
    kinds = sorted({d.device_kind for d in devices})
    try:
        caps = [tuple(int(p) for p in str(d.compute_capability).split(".")[:2]) for d in devices]
        cap = min(caps)
    except (AttributeError, ValueError):
        cap = (0, 0)
        problems.append(f"jax reports no compute capability for {', '.join(kinds)}")
    else:
        if cap < MIN_COMPUTE_CAPABILITY:
            problems.append(f"{', '.join(kinds)} has compute capability {cap[0]}.{cap[1]}, below 9.0")
    versions = _cuda_versions()
    cudnn = build = 0
    if versions is None:
        problems.append("jax's CUDA plugin reports no library versions (is jax[cuda12] installed?)")
    else:
        cudnn = int(versions.cudnn_get_version())
        build = int(getattr(versions, "cudnn_build_version", lambda: 0)())
        if cudnn < MIN_CUDNN_VERSION:
            problems.append(f"cuDNN {format_cudnn_version(cudnn)} is loaded, FP8 flash attention needs 9.1.0")
    entry = _fp8_attention_entry_point()
    if entry is not None:
        problems.append(entry)
    if problems:
        raise ValueError(f"precision='fp8' cannot run on this machine: {'; '.join(problems)}. {_WORKS}")
    return Fp8Support(kinds[0], cap, cudnn, build, jax.__version__)
