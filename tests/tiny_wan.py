"""Tiny random-weight diffusers Wan components for pipeline parity tests (nothing is downloaded).

The sizes are those of tests/test_wan_pipeline.py (a UMT5 encoder with a sentencepiece tokenizer trained
here, a 2-layer DiT, a small Wan VAE, Wan's flow UniPC scheduler); every tensor is perturbed so that a
mis-mapped norm scale or bias would not go unnoticed.
"""

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

UMT5 = dict(vocab_size=300, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0)
DIT = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
           text_dim=UMT5["d_model"], freq_dim=32, ffn_dim=48, num_layers=2, rope_max_seq_len=64)
PROMPT = "A red fox jumps over the lazy brown dog in the snow."
NEGATIVE = "Bright tones, overexposed, static, blurred details, subtitles."
SENTENCES = ["A cat and a dog baking a cake together in a kitchen.",
             "The cat is carefully measuring flour, while the dog is stirring the batter.", NEGATIVE, PROMPT,
             "Hello world, this is a tiny tokenizer."]


def randomise(module, seed, *, gamma_names=(), scale=0.2):
    """Perturbs every tensor of ``module`` (norm scales named in ``gamma_names`` around 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(name.endswith(s) for s in gamma_names):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.add_(scale * torch.randn(p.shape, generator=g))


def text_parts(root):
    """``(tokenizer, text_encoder)``: a sentencepiece T5 tokenizer trained in ``root`` and a random UMT5."""
    torch.manual_seed(0)
    encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(**UMT5)).eval()
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
    sp_dir = root / "sp"
    sp_dir.mkdir(exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 4), model_prefix=str(sp_dir / "spiece"), vocab_size=64,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
    return transformers.T5Tokenizer.from_pretrained(str(sp_dir), local_files_only=True), encoder


def transformer(seed, **overrides):
    """A random ``WanTransformer3DModel`` of the tiny config (``overrides`` replace its entries)."""
    torch.manual_seed(seed)
    m = diffusers.WanTransformer3DModel(**{**DIT, **overrides}).eval()
    randomise(m, seed + 100)
    return m


def vae(seed=2):
    """A random small ``AutoencoderKLWan`` (z_dim 16, stride 4x8x8)."""
    m = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                                   temperal_downsample=[False, True, True]).eval()
    randomise(m, seed, gamma_names=("gamma",), scale=0.1)
    return m


def scheduler(flow_shift=5.0):
    """Wan's flow-matching UniPC scheduler with ``flow_shift``."""
    return diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=flow_shift,
        solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero")


def latents_callback(store, last_step):
    """A ``callback_on_step_end`` that keeps the latents after step ``last_step`` in ``store["latents"]``."""
    def keep(pipe, i, t, kw):
        if i == last_step:
            store["latents"] = kw["latents"].clone()
        return {}
    return keep
