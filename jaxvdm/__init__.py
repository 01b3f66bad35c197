"""jaxvdm: video diffusion transformers (Wan2.1-class DiTs) in JAX/Flax, across many accelerators.

    import jaxvdm
    video = jaxvdm.generate("a red circle moving left")      # the shipped model, one device, offline
    video.save("out.mp4")

    mesh = jaxvdm.sharding.make_mesh(lp=4)
    video = jaxvdm.generate("a blue square moving right", mesh=mesh, strategy="lp", overlap=0.5)
"""

__version__ = "0.1.0"

from jaxvdm import sharding  # noqa: E402,F401  (jaxvdm.sharding.make_mesh, strategies)
from jaxvdm.pipeline import Pipeline, generate, get_pipeline  # noqa: E402
from jaxvdm.models.presets import list_presets  # noqa: E402
from jaxvdm.sharding.registry import available_strategies  # noqa: E402


def load_pipeline(path):
    """Loads a diffusers-format Wan2.1 text-to-video folder (``model_index.json``, ``transformer/``,
    ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) as a :class:`Pipeline`."""
    from jaxvdm.models.wan.pipeline import load_pipeline as _load

    return _load(path)


def __getattr__(name):
    if name == "Video":
        from jaxvdm.video import Video

        return Video
    raise AttributeError(f"module 'jaxvdm' has no attribute {name!r}")


def available_models() -> list[str]:
    """The shipped model and the presets (presets need a downloaded checkpoint: ``model=PATH``)."""
    return ["shapes"] + [p for p in list_presets() if p != "shapes"]


__all__ = ["generate", "load_pipeline", "Pipeline", "Video", "available_models", "available_strategies",
           "get_pipeline", "sharding"]
