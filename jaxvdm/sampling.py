"""Compatibility: the denoising loop lives with the strategies, in :mod:`jaxvdm.sharding.sampling`."""

from jaxvdm.sharding.runtime import progress_enabled  # noqa: F401
from jaxvdm.sharding.sampling import Denoiser, clear_placements, placed, sample  # noqa: F401

__all__ = ["Denoiser", "sample", "placed", "clear_placements", "progress_enabled"]
