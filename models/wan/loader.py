"""Compatibility: the transformer's loaders live in :mod:`jaxvdm.models.wan.transformer`."""

from jaxvdm.models.wan.transformer import *  # noqa: F401,F403
from jaxvdm.models.wan.transformer import __all__  # noqa: F401
