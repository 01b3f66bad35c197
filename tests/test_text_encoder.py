"""UMT5 text encoder, tokenizer and Wan prompt encoding against transformers/diffusers (float32, CPU).

The reference encoder is a tiny random-weight transformers ``UMT5EncoderModel`` saved to a temporary
folder; the tokenizer is a sentencepiece model trained here on a few sentences. Nothing is downloaded.
All encoder runs use one shape ``[B, L]`` so the jitted forward compiles once per dtype.
"""

import json
import re
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import rel_err

from jaxvdm.models.checkpoint import CheckpointError, read_safetensors, write_safetensors
from jaxvdm.models.wan import text_encoder as te

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

TINY = dict(vocab_size=300, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0)
B, L = 4, 16  # every encoder call in this file has this shape
SENTENCES = [
    "A cat and a dog baking a cake together in a kitchen.",
    "The cat is carefully measuring flour, while the dog is stirring the batter.",
    "Bright tones, overexposed, static, blurred details, subtitles.",
    "A red fox jumps over the lazy brown dog in the snow.",
    "Hello world, this is a tiny tokenizer.",
]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """Tiny transformers encoder (random weights, random norm scales) and a trained T5 tokenizer, saved."""
    root = tmp_path_factory.mktemp("umt5")
    torch.manual_seed(0)
    model = transformers.UMT5EncoderModel(transformers.UMT5Config(**TINY)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:  # default ones would hide a mis-mapped norm
                p.uniform_(0.5, 1.5)
    model.save_pretrained(root / "text_encoder")

    (root / "sp").mkdir()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 4), model_prefix=str(root / "sp" / "spiece"), vocab_size=64,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2,
    )
    tok = transformers.T5Tokenizer.from_pretrained(str(root / "sp"), local_files_only=True)
    assert len(tok) <= TINY["vocab_size"]
    tok.save_pretrained(root / "tokenizer")
    return types.SimpleNamespace(root=root, model=model, tok=tok)


@pytest.fixture(scope="module")
def encoder(ref):
    return te.load_text_encoder(ref.root / "text_encoder")


def _torch_hidden(model, ids, mask):
    with torch.no_grad():
        m = None if mask is None else torch.as_tensor(mask)
        return model(torch.as_tensor(ids, dtype=torch.long), m).last_hidden_state.numpy()


def _pure(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


# ----------------------------------------------------------------------------- encoder


def test_encoder_matches_transformers_with_padding(ref, encoder):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, TINY["vocab_size"], (B, L)).astype(np.int32)
    lengths = np.array([L, 9, 3, 1])
    mask = (np.arange(L)[None, :] < lengths[:, None]).astype(np.int32)

    ours = np.asarray(te.encoder_forward(encoder, ids, mask))
    theirs = _torch_hidden(ref.model, ids, mask)
    assert ours.shape == (B, L, TINY["d_model"]) and ours.dtype == np.float32
    assert rel_err(ours, theirs) <= 1e-5
    for i in range(B):  # every row, including the length-1 one and padded query positions
        assert rel_err(ours[i], theirs[i]) <= 1e-5, i

    # no mask at all (same shape: no recompilation)
    ours_nomask = np.asarray(te.encoder_forward(encoder, ids))
    assert rel_err(ours_nomask, _torch_hidden(ref.model, ids, None)) <= 1e-5
    # the mask matters: masked keys change the result of a padded row
    assert rel_err(ours_nomask[1], ours[1]) > 1e-3


def test_encoder_bf16_close_to_reference(ref):
    enc = te.load_text_encoder(ref.root / "text_encoder", dtype=jnp.bfloat16)
    assert enc.embed[...].dtype == jnp.bfloat16 and enc.layers.wo[...].dtype == jnp.bfloat16
    kept = te.load_text_encoder(ref.root / "text_encoder", dtype=jnp.bfloat16, keep_wo_fp32=True)
    assert kept.layers.wo[...].dtype == jnp.float32 and kept.layers.wi_0[...].dtype == jnp.bfloat16
    wo0 = read_safetensors(ref.root / "text_encoder" / "model.safetensors")["encoder.block.0.layer.1.DenseReluDense.wo.weight"]
    np.testing.assert_array_equal(np.asarray(kept.layers.wo[...])[0], wo0.T)  # full precision, not rounded
    rng = np.random.default_rng(2)
    ids = rng.integers(0, TINY["vocab_size"], (B, L)).astype(np.int32)
    mask = (np.arange(L)[None, :] < np.array([L, 5, 2, 1])[:, None]).astype(np.int32)
    ours = np.asarray(te.encoder_forward(enc, ids, mask).astype(jnp.float32))
    assert rel_err(ours, _torch_hidden(ref.model, ids, mask)) <= 3e-2


@pytest.mark.parametrize("buckets,max_distance,length", [(32, 128, 600), (32, 16, 60), (20, 50, 200), (64, 256, 300)])
def test_relative_position_buckets_match_transformers(buckets, max_distance, length):
    from transformers.models.umt5.modeling_umt5 import UMT5Attention

    cfg = transformers.UMT5Config(d_model=8, d_kv=2, num_heads=4, relative_attention_num_buckets=buckets,
                                  relative_attention_max_distance=max_distance)
    attn = UMT5Attention(cfg, has_relative_attention_bias=True)
    pos = torch.arange(length)
    theirs = attn._relative_position_bucket(pos[None, :] - pos[:, None]).numpy()
    ours = te.relative_position_buckets(length, length, buckets, max_distance)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.min() >= 0 and ours.max() < buckets


# ----------------------------------------------------------------------------- prompts


def test_prompt_clean_matches_diffusers():
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean as diffusers_clean

    for text in ["  A  cat\n\tand a dog  ", "fish &amp;amp; chips &lt;b&gt;", "wide\u3000space\u00a0here\u2009x",
                 "sep\x1cchars\x1f kept", "", "   ", "line\u2028break\u0085next", "zero\u200bwidth"]:
        assert te.prompt_clean(text) == diffusers_clean(text), repr(text)


def test_encode_prompts_matches_diffusers(ref, encoder):
    from diffusers.pipelines.wan.pipeline_wan import WanPipeline
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean as diffusers_clean

    long_prompt = " ".join(SENTENCES)
    prompts = ["A cat and a dog.", "", long_prompt, "  a\u3000dog,\n\n &amp;amp; fox  "]
    assert len(prompts) == B
    n_tokens = [len(ids) for ids in ref.tok([diffusers_clean(p) for p in prompts])["input_ids"]]
    n_long = n_tokens[2]
    assert n_long > L and max(n_tokens[:2] + n_tokens[3:]) < L

    tokenizer = te.load_tokenizer(ref.root / "tokenizer")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb, lengths = te.encode_prompts(encoder, tokenizer, prompts, max_length=L)
    ours_warn = [w for w in caught if issubclass(w.category, UserWarning) and "max_length" in str(w.message)]
    assert len(ours_warn) == 1, [str(w.message) for w in caught]
    assert re.search(rf"prompt 2 .*\b{n_long - L} token\(s\) were dropped", str(ours_warn[0].message))

    # diffusers' own method, on a stand-in object that has only what the method reads
    pipe = types.SimpleNamespace(tokenizer=ref.tok, text_encoder=ref.model, _execution_device=torch.device("cpu"))
    with torch.no_grad():
        theirs = WanPipeline._get_t5_prompt_embeds(pipe, prompt=prompts, max_sequence_length=L,
                                                   device=torch.device("cpu"), dtype=torch.float32).numpy()
    emb = np.asarray(emb)
    assert emb.shape == (B, L, TINY["d_model"]) and emb.dtype == np.float32
    for i in range(B):
        assert rel_err(emb[i], theirs[i]) <= 1e-5, i

    expected_lengths = ref.tok([diffusers_clean(p) for p in prompts], padding="max_length", max_length=L,
                               truncation=True)["attention_mask"]
    np.testing.assert_array_equal(lengths, np.sum(expected_lengths, axis=1))
    assert lengths[1] == 1 and lengths[2] == L  # "" is </s> alone; the long prompt fills max_length
    for i in range(B):
        assert np.all(emb[i, lengths[i]:] == 0.0) and np.all(np.any(emb[i, : lengths[i]] != 0.0, axis=-1))


def test_encode_prompts_rejects_bad_input(ref, encoder):
    tokenizer = te.load_tokenizer(ref.root / "tokenizer")
    with pytest.raises(ValueError, match="at least one prompt"):
        te.encode_prompts(encoder, tokenizer, [], max_length=L)
    with pytest.raises(TypeError, match="prompt 1"):
        te.encode_prompts(encoder, tokenizer, ["ok", None], max_length=L)
    with pytest.raises(ValueError, match="max_length"):
        te.encode_prompts(encoder, tokenizer, ["ok"], max_length=0)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        te.load_tokenizer(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "tokenizer_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json or spiece\.model"):
        te.load_tokenizer(tmp_path / "empty")


# ----------------------------------------------------------------------------- loading


def _write(folder, sd, config):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    write_safetensors(folder / "model.safetensors", sd)
    return folder


def test_loader_embedding_layouts_and_shards(ref, encoder, tmp_path):
    src = ref.root / "text_encoder"
    config = json.loads((src / "config.json").read_text())
    sd = {k: np.array(v) for k, v in read_safetensors(src / "model.safetensors").items()}
    assert "shared.weight" in sd and "encoder.embed_tokens.weight" not in sd  # what save_pretrained writes
    expected = _pure(encoder)
    np.testing.assert_array_equal(expected["embed"], sd["shared.weight"])
    np.testing.assert_array_equal(expected["layers"]["q"][1], sd["encoder.block.1.layer.0.SelfAttention.q.weight"].T)

    renamed = dict(sd)
    renamed["encoder.embed_tokens.weight"] = renamed.pop("shared.weight")
    ref.model.save_pretrained(tmp_path / "sharded", max_shard_size="10KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    for folder in [_write(tmp_path / "renamed", renamed, config), tmp_path / "sharded"]:
        got = _pure(te.load_text_encoder(folder))
        jax.tree.map(np.testing.assert_array_equal, got, expected)

    # both names with different values: the encoder must use what transformers' encoder uses
    both = dict(sd, **{"encoder.embed_tokens.weight": sd["shared.weight"] + 1.0})
    folder = _write(tmp_path / "both", both, config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_model = transformers.UMT5EncoderModel.from_pretrained(folder)
    got = _pure(te.load_text_encoder(folder))
    np.testing.assert_array_equal(got["embed"], torch_model.encoder.embed_tokens.weight.detach().numpy())
    got["embed"] = expected["embed"]
    jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_loader_strict_errors(ref, tmp_path):
    src = ref.root / "text_encoder"
    config = json.loads((src / "config.json").read_text())
    sd = {k: np.array(v) for k, v in read_safetensors(src / "model.safetensors").items()}

    bad = dict(sd)
    missing = "encoder.block.1.layer.0.SelfAttention.k.weight"
    unexpected = "encoder.block.2.layer.0.layer_norm.weight"
    misshaped = "encoder.block.0.layer.1.DenseReluDense.wo.weight"
    del bad[missing]
    bad[unexpected] = np.ones((TINY["d_model"],), np.float32)
    bad[misshaped] = np.ascontiguousarray(sd[misshaped].T)
    with pytest.raises(CheckpointError) as err:
        te.load_text_encoder(_write(tmp_path / "bad", bad, config))
    msg = str(err.value)
    for key in (missing, unexpected, misshaped):
        assert key in msg
    assert "missing 1" in msg and "unexpected 1" in msg and "mis-shaped 1" in msg

    no_embed = {k: v for k, v in sd.items() if k != "shared.weight"}
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): shared\.weight"):
        te.load_text_encoder(_write(tmp_path / "no_embed", no_embed, config))

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    write_safetensors(no_config / "model.safetensors", sd)
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        te.load_text_encoder(no_config)

    with pytest.raises(CheckpointError, match="umt5"):
        te.load_text_encoder(_write(tmp_path / "t5", sd, dict(config, model_type="t5")))
    with pytest.raises(CheckpointError, match="d_model"):
        te.load_text_encoder(_write(tmp_path / "nodim", sd, {k: v for k, v in config.items() if k != "d_model"}))
    with pytest.raises(CheckpointError, match="no weights"):
        (tmp_path / "no_weights").mkdir()
        (tmp_path / "no_weights" / "config.json").write_text(json.dumps(config))
        te.load_text_encoder(tmp_path / "no_weights")
