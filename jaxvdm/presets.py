"""Model presets shipped as TOML files in ``jaxvdm.configs``."""

from __future__ import annotations

import functools
import importlib.resources
import tomllib
from typing import Any

__all__ = ["list_presets", "load_preset", "wan_config"]


def list_presets() -> list[str]:
    """Names of the shipped presets (file names without ``.toml``)."""
    files = importlib.resources.files("jaxvdm.configs")
    return sorted(p.name[: -len(".toml")] for p in files.iterdir() if p.name.endswith(".toml"))


@functools.lru_cache(maxsize=None)
def load_preset(name: str) -> dict[str, Any]:
    """The preset ``name`` as a dict (sections ``transformer``, ``pipeline``, ...).

    Raises ValueError listing the available presets if ``name`` is unknown.
    """
    names = list_presets()
    if name not in names:
        raise ValueError(f"unknown model preset {name!r}; available: {', '.join(names)}")
    text = importlib.resources.files("jaxvdm.configs").joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def wan_config(name: str):
    """The :class:`~jaxvdm.models.wan.config.WanConfig` of a preset."""
    from jaxvdm.models.wan.config import WanConfig

    return WanConfig.from_dict(load_preset(name)["transformer"])
