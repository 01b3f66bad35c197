"""Model presets shipped as TOML files in ``jaxvdm.configs``."""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import tomllib
from typing import Any

__all__ = ["list_presets", "load_preset", "wan_config", "ModelSpec", "model_spec"]


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
    """The :class:`~jaxvdm.models.wan.transformer.WanConfig` of a preset."""
    from jaxvdm.models.wan.transformer.config import WanConfig

    return WanConfig.from_dict(load_preset(name)["transformer"])


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model size to measure with random weights: transformer config, VAE stride, text length, and the
    model's defaults (sizes, steps, guidance, scheduler, DualParal blocks)."""

    name: str
    config: Any  # WanConfig
    vae_stride: tuple[int, int, int]
    text_len: int
    defaults: dict


def _tiny_config():
    from jaxvdm.models.wan.transformer.config import WanConfig

    return WanConfig(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4,
                     text_dim=32, freq_dim=32, ffn_dim=128, num_layers=4)


_DEFAULT_KEYS = ("num_frames", "height", "width", "steps", "guidance_scale", "flow_shift", "scheduler",
                 "dualparal_block_frames", "dualparal_context_frames")


def model_spec(name: str) -> ModelSpec:
    """``tiny`` (built in: 4 layers of width 64, for CPU tests) or a preset (``shapes``, ``wan2.1-t2v-1.3b``, ...).

    Raises ValueError naming the choices for an unknown name."""
    if name == "tiny":
        return ModelSpec("tiny", _tiny_config(), (4, 8, 8), 16,
                         dict(num_frames=17, height=64, width=64, steps=6, guidance_scale=5.0, flow_shift=3.0,
                              scheduler="unipc", dualparal_block_frames=2, dualparal_context_frames=1))
    if name not in list_presets():
        raise ValueError(f"unknown model {name!r}; choose tiny or a preset: {', '.join(list_presets())}")
    p = load_preset(name)
    pipe = p.get("pipeline", {})
    text_len = int(pipe.get("max_text_len", p.get("text", {}).get("max_len", 512)))
    defaults = {k: pipe[k] for k in _DEFAULT_KEYS if k in pipe}
    defaults.setdefault("dualparal_block_frames", 4)
    defaults.setdefault("dualparal_context_frames", 1)
    return ModelSpec(name, wan_config(name), tuple(int(v) for v in pipe.get("vae_stride", (4, 8, 8))), text_len,
                     defaults)
