"""jaxvdm: video diffusion transformers in JAX/Flax, across many accelerators."""

__version__ = "0.1.0"
