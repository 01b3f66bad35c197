"""Test set-up: 8 simulated CPU devices, float32, no network. Runs before JAX is imported."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAXVDM_PROGRESS", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)


@pytest.fixture(scope="session")
def devices():
    """The 8 simulated CPU devices every multi-device test runs on."""
    devs = jax.devices()
    assert len(devs) == 8, f"expected 8 simulated devices, got {len(devs)} (XLA_FLAGS={os.environ.get('XLA_FLAGS')})"
    return devs


@pytest.fixture
def rng():
    return np.random.default_rng(0)


