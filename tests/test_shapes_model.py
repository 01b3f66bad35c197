"""The shipped shapes model: strict loading, what it has learned, and that training runs and learns."""

import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvdm.models.checkpoint import CheckpointError, read_safetensors, write_safetensors
from jaxvdm.models.shapes import data
from jaxvdm.models.shapes import evaluate as ev
from jaxvdm.models.shapes.model import WEIGHTS_PATH, init_model, load_model, preset
from jaxvdm.models.wan.config import WanConfig


@pytest.fixture(scope="module")
def shipped():
    return load_model()


def test_shipped_weights_match_the_preset_and_size_budget(shipped):
    assert WEIGHTS_PATH.stat().st_size <= 20 * 2**20
    assert shipped.transformer.config == WanConfig.from_dict(preset()["transformer"])


def _x0_error(model, sigma: float) -> float:
    clips, _, ids = data.sample_batch(123, 8)
    x0 = jnp.transpose(jnp.asarray(clips), (0, 4, 1, 2, 3))
    eps = jax.random.normal(jax.random.key(0), x0.shape)
    xt = (1 - sigma) * x0 + sigma * eps
    v = model.transformer(xt, jnp.full((8,), sigma * 1000.0), model.text(jnp.asarray(ids)))
    return float(jnp.mean((xt - sigma * v - x0) ** 2))


@pytest.mark.parametrize("sigma", [0.3, 0.7])
def test_shipped_model_denoises_far_better_than_untrained(shipped, sigma):
    trained, untrained = _x0_error(shipped, sigma), _x0_error(init_model(1), sigma)
    assert trained < 0.1 * untrained, (trained, untrained)
    assert trained < 0.03


def test_shipped_model_follows_colour_and_background(shipped):
    """The attributes the shipped model has learned (docs/shapes/README.md): colour and background."""
    from jaxvdm.models.shapes.sample import sample_clips

    rng = np.random.default_rng(7)
    specs = [data.sample_spec(rng) for _ in range(4)]
    captions = [data.caption(s) for s in specs]
    clips = np.asarray(sample_clips(shipped, data.tokenize_batch(captions), jax.random.key(0), steps=8, shift=3.0))
    scores = ev.score_batch(clips, captions)
    assert scores["colour_right"] >= 3 / 4, scores
    assert scores["found_fraction"] > 0.9, scores


def test_load_model_is_strict(tmp_path):
    tensors = read_safetensors(WEIGHTS_PATH)
    with open(WEIGHTS_PATH, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(n))["__metadata__"]
    missing = dict(tensors)
    gone = sorted(missing)[0]
    del missing[gone]
    write_safetensors(tmp_path / "missing.safetensors", missing, metadata=meta)
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path / "missing.safetensors")
    bad_vocab = dict(meta, vocab=json.dumps(["<pad>", "<unk>", "a"]))
    write_safetensors(tmp_path / "vocab.safetensors", tensors, metadata=bad_vocab)
    with pytest.raises(CheckpointError, match="vocabulary"):
        load_model(tmp_path / "vocab.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.safetensors")


def test_training_smoke_loss_falls(tmp_path):
    from jaxvdm.models.shapes import train

    train.main(["--out", str(tmp_path), "--small", "--steps", "25", "--batch-size", "4", "--workers", "1",
                "--lr", "2e-3", "--warmup", "5", "--eval-prompts", "0", "--log-every", "10"])
    log = json.loads((tmp_path / "train_log.json").read_text())["log"]
    assert log["loss"][-1] < 0.6 * log["loss"][0], log["loss"]
    m = load_model(tmp_path / "weights.safetensors")
    assert m.transformer.config.num_layers == 2
