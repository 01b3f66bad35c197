"""Loaders refuse what jaxvdm does not run, naming what, where and why; and read what they can.

* ``load_pipeline`` on folders that set a component, flag or class jaxvdm does not run (every entry of
  ``UNSUPPORTED``), or a scheduler option it does not honour: the message, before any weights are read. The
  folders are skeletons (configs as diffusers writes them, no weights): a skeleton without the flag gets
  past these checks and fails on the missing weights instead, so each refusal is the flag's. (Real Wan2.2
  and image-to-video folders written by diffusers load in ``test_wan22_experts.py`` and ``test_wan_i2v_pipeline.py``.)
* ``load_transformer`` on a bare original-format file without ``config.json``: read from its tensor shapes
  when they determine the config (hidden size a multiple of Wan's head dim 128, with a warning naming the
  guessed fields), otherwise a message saying exactly what to pass.
"""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_err

from jaxvdm.models.checkpoint import CheckpointError, write_safetensors
from jaxvdm.models.wan.pipeline import RUNS, UNSUPPORTED, load_pipeline
from jaxvdm.models.wan.transformer import WanConfig, load_transformer

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

DIT = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
           text_dim=32, freq_dim=32, ffn_dim=48, num_layers=2, rope_max_seq_len=64)

# model_index.json as diffusers 0.42 writes it for a Wan2.1 T2V WanPipeline
MODEL_INDEX = {
    "_class_name": "WanPipeline", "_diffusers_version": "0.42.1", "boundary_ratio": None, "expand_timesteps": False,
    "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"], "transformer": ["diffusers", "WanTransformer3DModel"],
    "transformer_2": [None, None], "vae": ["diffusers", "AutoencoderKLWan"],
}

# A value that sets each UNSUPPORTED entry, as the Wan2.2 / I2V folders have it.
SETTING: dict = {}  # every entry has landed (Wan2.2 TI2V's expand_timesteps last); new ones get a value here
CLIP = {"image_encoder": ["transformers", "CLIPVisionModel"], "image_processor": ["transformers", "CLIPImageProcessor"]}
I2V = {"_class_name": "WanImageToVideoPipeline"}


def _skeleton(root, *, index=None, transformer=None, scheduler=None):
    """A Wan folder of configs only (no weights): model_index.json, transformer/ and vae/ configs, a scheduler."""
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({**MODEL_INDEX, **(index or {})}))
    for comp in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        (root / comp).mkdir()
    tcfg = {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.42.1", "added_kv_proj_dim": None,
            "image_dim": None, "pos_embed_seq_len": None, **DIT, **(transformer or {})}
    (root / "transformer" / "config.json").write_text(json.dumps(tcfg))
    (root / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", "z_dim": 16}))
    sched = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    cfg = {**json.loads(sched.to_json_string()), **(scheduler or {})}
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    return root


def _refusal(folder) -> str:
    with pytest.raises(CheckpointError) as err:
        load_pipeline(folder)
    return str(err.value)


def test_skeleton_without_flags_gets_past_the_checks(tmp_path):
    """The control: no refusal, the loader goes on to the transformer weights (absent here)."""
    msg = _refusal(_skeleton(tmp_path / "plain"))
    assert "while loading the 'transformer' component" in msg
    assert "does not run" not in msg and RUNS not in msg


def test_every_unsupported_entry_has_a_case():
    assert set(SETTING) == set(UNSUPPORTED)


@pytest.mark.parametrize("where,key", sorted(UNSUPPORTED), ids=[k for _, k in sorted(UNSUPPORTED)])
def test_unsupported_component_or_flag_is_refused(tmp_path, where, key):
    value = SETTING[(where, key)]
    if where == "model_index.json":
        folder = _skeleton(tmp_path / key, index={key: value})
    else:
        folder = _skeleton(tmp_path / key, transformer={key: value})
    msg = _refusal(folder)
    assert str(folder) in msg  # which folder
    assert f"{where} sets {key}={value!r}: {UNSUPPORTED[(where, key)]}" in msg  # what, where, why
    assert RUNS in msg  # what jaxvdm does run
    assert "while loading" not in msg  # refused before any weights were read


EXPERT = ["diffusers", "WanTransformer3DModel"]


def _two_experts(root, *, index=None, transformer_2=None):
    """A Wan2.2 A14B skeleton: transformer_2/ beside transformer/ (its config: the first's, edited)."""
    folder = _skeleton(root, index={"transformer_2": EXPERT, "boundary_ratio": 0.875, **(index or {})})
    (folder / "transformer_2").mkdir()
    cfg = {**json.loads((folder / "transformer" / "config.json").read_text()), **(transformer_2 or {})}
    (folder / "transformer_2" / "config.json").write_text(json.dumps(cfg))
    return folder


def test_wan22_a14b_skeleton_gets_past_the_checks(tmp_path):
    msg = _refusal(_two_experts(tmp_path / "a14b"))
    assert "while loading the 'transformer' component" in msg and RUNS not in msg


@pytest.mark.parametrize("index,transformer_2,message", [
    (dict(boundary_ratio=None), None, "lists transformer_2 but no boundary_ratio: the low-noise expert would never run"),
    (dict(transformer_2=[None, None]), None, "sets boundary_ratio=0.875 but no transformer_2"),
    (dict(boundary_ratio=1.5), None, "boundary_ratio=1.5: it must be a number in [0, 1]"),
    (None, dict(num_layers=3), "transformer/ and transformer_2/ have different configs (num_layers)"),
    (None, dict(image_dim=1280), "transformer/ and transformer_2/ have different configs (image_dim)"),
])
def test_wan22_a14b_expert_entries_are_checked(tmp_path, index, transformer_2, message):
    msg = _refusal(_two_experts(tmp_path / "a14b", index=index, transformer_2=transformer_2))
    assert message in msg and "while loading" not in msg


def test_wan22_a14b_missing_expert_folder(tmp_path):
    folder = _skeleton(tmp_path / "a14b", index={"transformer_2": EXPERT, "boundary_ratio": 0.875})
    assert "missing component folder(s) ['transformer_2']" in _refusal(folder)


@pytest.mark.parametrize("index,transformer,message", [
    (I2V, None, "transformer/config.json has in_channels=16: an image-to-video transformer takes noise, mask and "
                "image latent, 2 * out_channels + 4 = 36"),
    (None, dict(in_channels=36, image_dim=1280), "describes an image-to-video transformer (in_channels=36, "
                                                 "image_dim=1280) in a text-to-video WanPipeline"),
    (CLIP, None, "model_index.json lists image_encoder in a text-to-video WanPipeline"),
    (dict(expand_timesteps=True), dict(in_channels=36), "sets expand_timesteps (Wan2.2 TI2V), which needs a "
                                                        "transformer whose input is the noise alone"),
    (I2V, dict(in_channels=36, image_dim=1280), "sets image_dim=1280 (CLIP image states) but model_index.json lacks "
                                               "image_encoder and image_processor"),
    ({**I2V, **CLIP}, dict(in_channels=36), "lists image_encoder and image_processor, but the transformer has no image "
                                           "branch"),
    (dict(_class_name="WanVACEPipeline"), None, "describes 'WanVACEPipeline'"),
    (dict(transformer=["diffusers", "WanVACETransformer3DModel"]), None,
     "model_index.json's transformer is a 'WanVACETransformer3DModel', not a WanTransformer3DModel"),
    (dict(vae=["diffusers", "AutoencoderKLQwenImage"]), None, "model_index.json's vae is a 'AutoencoderKLQwenImage'"),
    (dict(text_encoder=["transformers", "T5EncoderModel"]), None, "text_encoder is a 'T5EncoderModel'"),
    (None, dict(_class_name="WanAnimateTransformer3DModel"),
     "transformer/config.json is a 'WanAnimateTransformer3DModel'"),
    (dict(controlnet=["diffusers", "SomeControlNet"]), None,
     "model_index.json lists controlnet=['diffusers', 'SomeControlNet'], which is not part of a Wan2.1 T2V pipeline"),
])
def test_unknown_classes_and_components_are_refused(tmp_path, index, transformer, message):
    msg = _refusal(_skeleton(tmp_path / "f", index=index, transformer=transformer))
    assert message in msg and RUNS in msg and "while loading" not in msg


@pytest.mark.parametrize("edits,message", [
    (dict(prediction_type="epsilon", use_flow_sigmas=False),
     "jaxvdm runs flow-matching schedulers; this folder's scheduler is an epsilon-prediction UniPC"),
    (dict(use_karras_sigmas=True), "use_karras_sigmas=True"),
    (dict(solver_order=4), "solver_order must be 1, 2 or 3"),
    (dict(lower_order_final=False), "lower_order_final=False with final_sigmas_type='zero'"),
    (dict(foo="bar"), "foo='bar': diffusers 0.42's UniPCMultistepScheduler has no such option"),
])
def test_scheduler_options_are_refused_at_load(tmp_path, edits, message):
    folder = _skeleton(tmp_path / "s", scheduler=edits)
    msg = _refusal(folder)
    assert str(folder / "scheduler" / "scheduler_config.json") in msg and message in msg
    assert "while loading" not in msg


def test_scheduler_class_must_agree_with_model_index(tmp_path):
    folder = _skeleton(tmp_path / "s", index=dict(scheduler=["diffusers", "FlowMatchEulerDiscreteScheduler"]))
    assert "model_index.json builds the scheduler as 'FlowMatchEulerDiscreteScheduler'" in _refusal(folder)


# ----------------------------------------------------------------------------- config-less original files

from helpers import to_original_wan_layout  # noqa: E402  (the test-side diffusers -> original map)


def _bare_original(tmp_path, cfg: dict, seed: int = 0):
    """A random diffusers model of ``cfg`` saved as one original-format file with nothing beside it."""
    torch.manual_seed(seed)
    m = diffusers.WanTransformer3DModel(**cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    path = tmp_path / "bare.safetensors"
    write_safetensors(path, {f"model.diffusion_model.{k}": v for k, v in to_original_wan_layout(sd).items()})
    assert not (tmp_path / "config.json").exists()
    return path, m


def _forward_matches(model, m, cfg):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, cfg["in_channels"], 2, 4, 4), dtype=np.float32)
    ts = np.array([500.0], np.float32)
    ctx = rng.standard_normal((1, 5, cfg["text_dim"]), dtype=np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x), torch.from_numpy(ts), torch.from_numpy(ctx), return_dict=False)[0].numpy()
    got = np.asarray(jax.jit(lambda a, b, c: model(a, b, c))(jnp.asarray(x), jnp.asarray(ts), jnp.asarray(ctx)))
    assert rel_err(got, want) <= 1e-5


def test_bare_original_file_with_wan_head_dim_is_read_from_its_shapes(tmp_path):
    """Hidden size 256 = 2 heads of Wan's 128: every field follows from the shapes but the head split, eps and
    rotary length, which are Wan's and named in a warning; the model equals diffusers'."""
    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=4, out_channels=4,
               text_dim=16, freq_dim=32, ffn_dim=64, num_layers=2)
    path, m = _bare_original(tmp_path, cfg)
    with pytest.warns(UserWarning) as record:
        model = load_transformer(path)
    text = " ".join(str(w.message) for w in record)
    assert "attention_head_dim=128 (2 heads)" in text and "rope_max_seq_len=1024" in text and "pass config=" in text
    assert model.config == WanConfig(**cfg)
    _forward_matches(model, m, cfg)


def test_bare_original_file_of_a_preset_shape_loads_without_a_warning(tmp_path):
    """Shapes equal to a published release are that release's config (checked on abstract shapes only)."""
    from jaxvdm.models.presets import wan_config
    from jaxvdm.models.wan.transformer.keys import diffusers_tensor_shapes
    from jaxvdm.models.wan.transformer.load import _config_from_tensors

    want = wan_config("wan2.1-t2v-1.3b")
    shapes = diffusers_tensor_shapes(want)
    fake = {k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in shapes.items()}
    orig = {f"model.diffusion_model.{k}": v for k, v in to_original_wan_layout(fake).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _config_from_tensors(orig, "bare.safetensors") == want


def test_bare_original_file_with_other_head_dim_says_what_to_pass(tmp_path):
    """Hidden size 32 (2 heads of 16): the tensors cannot tell the heads apart. The message says what to pass;
    passing it loads the model, equal to diffusers'."""
    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
               text_dim=16, freq_dim=32, ffn_dim=48, num_layers=2)
    path, m = _bare_original(tmp_path, cfg)
    with pytest.raises(CheckpointError) as err:
        load_transformer(path)
    msg = str(err.value)
    assert str(path) in msg and "no config.json beside it" in msg
    assert "hidden size 32 is not a multiple of Wan's head dim 128" in msg
    assert "config=WanConfig(num_attention_heads=..., attention_head_dim=..., ...)" in msg
    assert "jaxvdm.models.presets.wan_config('wan2.1-t2v-1.3b' or 'wan2.1-t2v-14b')" in msg
    assert "config.json" in msg and "must be positive" not in msg
    model = load_transformer(path, config=WanConfig(**cfg, rope_max_seq_len=1024))
    _forward_matches(model, m, cfg)


def test_bare_diffusers_named_file_says_what_to_pass(tmp_path):
    torch.manual_seed(0)
    m = diffusers.WanTransformer3DModel(**{**DIT, "patch_size": (1, 2, 2)})
    path = tmp_path / "diffusers_named.safetensors"
    write_safetensors(path, {k: v.detach().numpy() for k, v in m.state_dict().items()})
    with pytest.raises(CheckpointError) as err:
        load_transformer(path)
    assert "only an original-format (Wan-AI) file's tensors can stand in for one" in str(err.value)
    assert "config=WanConfig(" in str(err.value)
