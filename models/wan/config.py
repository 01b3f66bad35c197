"""Compatibility: :class:`WanConfig` lives in :mod:`jaxvdm.models.wan.transformer.config`."""

from jaxvdm.models.wan.transformer.config import WanConfig  # noqa: F401

__all__ = ["WanConfig"]
