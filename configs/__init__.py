"""Model presets as data (TOML files), shipped as package data of ``jaxvdm.configs``."""
