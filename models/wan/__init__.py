"""The Wan family in JAX: the DiT, the video VAE and the UMT5 text encoder, each as
``config`` / ``model`` / ``keys`` (checkpoint names) / ``load``, and whole pipelines.

    from jaxvdm.models.wan import load_transformer, load_vae, load_text_encoder, load_pipeline
"""

from jaxvdm.models.wan.pipeline import load_pipeline, random_pipeline
from jaxvdm.models.wan.text_encoder import load_text_encoder, load_tokenizer
from jaxvdm.models.wan.transformer import (WanConfig, WanTransformer, abstract_transformer, init_transformer,
                                           load_transformer, save_converted)
from jaxvdm.models.wan.vae import WanVAE, WanVAEConfig, load_vae

__all__ = ["load_transformer", "load_vae", "load_text_encoder", "load_tokenizer", "load_pipeline", "random_pipeline",
           "init_transformer", "abstract_transformer", "save_converted", "WanConfig", "WanTransformer", "WanVAE",
           "WanVAEConfig"]
