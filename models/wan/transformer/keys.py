"""The Wan DiT's checkpoint key map: diffusers tensor names and shapes, and the original Wan-AI names.

* :func:`diffusers_tensor_shapes` -- every tensor of a diffusers ``WanTransformer3DModel`` of a config;
* :func:`params_from_diffusers` -- a diffusers-named state dict -> jaxvdm's parameter tree (strict);
* :func:`original_to_diffusers_names` -- original Wan-AI key names -> diffusers names;
* :func:`infer_config` -- a config from original-format tensor shapes;
* :func:`original_image_fields` -- the image branch of an original checkpoint, read from its tensors.

The image branch (Wan2.1 I2V / FLF2V), original -> diffusers names: ``img_emb.proj.{0,1,3,4}`` ->
``condition_embedder.image_embedder.{norm1, ff.net.0.proj, ff.net.2, norm2}``, ``img_emb.emb_pos`` ->
``condition_embedder.image_embedder.pos_embed``, and per block ``cross_attn.{k_img, v_img, norm_k_img}``
-> ``attn2.{add_k_proj, add_v_proj, norm_added_k}`` (Wan2.1's ``WanI2VCrossAttention`` / ``MLPProj``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from jaxvdm.models.checkpoint import CheckpointError, check_tensors
from jaxvdm.models.wan.transformer.config import WanConfig

__all__ = ["diffusers_tensor_shapes", "params_from_diffusers", "original_to_diffusers_names", "is_original",
           "infer_config", "original_image_fields"]

# (our path, diffusers name, kind). kind: "linear" (W.T / bias), "conv" (patch embedding), "copy".
_LINEARS_TOP = [
    ("condition_embedder/time_linear_1", "condition_embedder.time_embedder.linear_1"),
    ("condition_embedder/time_linear_2", "condition_embedder.time_embedder.linear_2"),
    ("condition_embedder/time_proj", "condition_embedder.time_proj"),
    ("condition_embedder/text_linear_1", "condition_embedder.text_embedder.linear_1"),
    ("condition_embedder/text_linear_2", "condition_embedder.text_embedder.linear_2"),
    ("proj_out", "proj_out"),
]
_LINEARS_BLOCK = [
    (f"{a}/{p}", f"{a}.{q}")
    for a in ("attn1", "attn2")
    for p, q in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out.0"))
] + [("ffn/proj_in", "ffn.net.0.proj"), ("ffn/proj_out", "ffn.net.2")]
_NORMS_BLOCK = [(f"{a}/{n}/scale", f"{a}.{n}.weight") for a in ("attn1", "attn2") for n in ("norm_q", "norm_k")]
_IMG = "condition_embedder.image_embedder"
_LINEARS_IMAGE = [("condition_embedder/image_embedder/linear_1", f"{_IMG}.ff.net.0.proj"),
                  ("condition_embedder/image_embedder/linear_2", f"{_IMG}.ff.net.2")]
_NORMS_IMAGE = [("condition_embedder/image_embedder/norm1", f"{_IMG}.norm1"),
                ("condition_embedder/image_embedder/norm2", f"{_IMG}.norm2")]
_LINEARS_ADDED_KV = [("attn2/add_k_proj", "attn2.add_k_proj"), ("attn2/add_v_proj", "attn2.add_v_proj")]


def _linear_shapes(d_out: int, d_in: int) -> dict:
    return {"weight": (d_out, d_in), "bias": (d_out,)}


def diffusers_tensor_shapes(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name of a diffusers ``WanTransformer3DModel`` of ``cfg`` with its PyTorch shape."""
    d = cfg.hidden_size
    pt, ph, pw = cfg.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, cfg.in_channels, pt, ph, pw),
        "patch_embedding.bias": (d,),
        "scale_shift_table": (1, 2, d),
    }
    dims = {
        "condition_embedder.time_embedder.linear_1": (d, cfg.freq_dim),
        "condition_embedder.time_embedder.linear_2": (d, d),
        "condition_embedder.time_proj": (6 * d, d),
        "condition_embedder.text_embedder.linear_1": (d, cfg.text_dim),
        "condition_embedder.text_embedder.linear_2": (d, d),
        "proj_out": (cfg.out_channels * cfg.patch_volume, d),
    }
    block = {q: (d, d) for _, q in _LINEARS_BLOCK if q.startswith("attn")}
    block["ffn.net.0.proj"] = (cfg.ffn_dim, d)
    block["ffn.net.2"] = (d, cfg.ffn_dim)
    if cfg.has_image_branch:
        c = cfg.image_dim
        dims[f"{_IMG}.ff.net.0.proj"] = (c, c)
        dims[f"{_IMG}.ff.net.2"] = (d, c)
        for name, width in ((f"{_IMG}.norm1", c), (f"{_IMG}.norm2", d)):
            shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (width,)
        if cfg.pos_embed_seq_len is not None:
            shapes[f"{_IMG}.pos_embed"] = (1, cfg.pos_embed_seq_len, c)
    if cfg.added_kv_proj_dim is not None:
        block["attn2.add_k_proj"] = block["attn2.add_v_proj"] = (d, cfg.added_kv_proj_dim)
    for name, (o, i) in dims.items():
        shapes.update({f"{name}.{k}": v for k, v in _linear_shapes(o, i).items()})
    for layer in range(cfg.num_layers):
        pre = f"blocks.{layer}."
        for name, (o, i) in block.items():
            shapes.update({f"{pre}{name}.{k}": v for k, v in _linear_shapes(o, i).items()})
        for _, q in _NORMS_BLOCK:
            shapes[pre + q] = (d,)
        if cfg.added_kv_proj_dim is not None:
            shapes[pre + "attn2.norm_added_k.weight"] = (d,)
        if cfg.cross_attn_norm:
            shapes[pre + "norm2.weight"] = (d,)
            shapes[pre + "norm2.bias"] = (d,)
        shapes[pre + "scale_shift_table"] = (1, 6, d)
    return shapes


def _set(tree: dict, path: str, value) -> None:
    keys = path.split("/")
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def params_from_diffusers(cfg: WanConfig, sd: Mapping[str, np.ndarray], *, source: str = "checkpoint") -> dict:
    """Converts a diffusers-named state dict to jaxvdm's parameter tree (nested dict of numpy arrays).

    Linear weights are transposed to ``[in, out]``; the patch-embedding convolution becomes a linear
    kernel ``[C*pt*ph*pw, D]``; per-block tensors are stacked on a leading layer axis.
    Raises CheckpointError naming every missing, unexpected or mis-shaped tensor.
    """
    check_tensors(diffusers_tensor_shapes(cfg), sd, source=source, ignore_unexpected=("norm_added_q",))
    p: dict = {}
    w = sd["patch_embedding.weight"]
    _set(p, "patch_embedding/kernel", np.asarray(w).reshape(w.shape[0], -1).T)
    _set(p, "patch_embedding/bias", np.asarray(sd["patch_embedding.bias"]))
    _set(p, "scale_shift_table", np.asarray(sd["scale_shift_table"]))
    for ours, theirs in _LINEARS_TOP:
        _set(p, f"{ours}/kernel", np.asarray(sd[f"{theirs}.weight"]).T)
        _set(p, f"{ours}/bias", np.asarray(sd[f"{theirs}.bias"]))
    layers = range(cfg.num_layers)

    def stack(name, fn=np.asarray):
        return np.stack([fn(sd[f"blocks.{i}.{name}"]) for i in layers])

    if cfg.has_image_branch:
        for ours, theirs in _LINEARS_IMAGE:
            _set(p, f"{ours}/kernel", np.asarray(sd[f"{theirs}.weight"]).T)
            _set(p, f"{ours}/bias", np.asarray(sd[f"{theirs}.bias"]))
        for ours, theirs in _NORMS_IMAGE:
            _set(p, f"{ours}/scale", np.asarray(sd[f"{theirs}.weight"]))
            _set(p, f"{ours}/bias", np.asarray(sd[f"{theirs}.bias"]))
        if cfg.pos_embed_seq_len is not None:
            _set(p, "condition_embedder/image_embedder/pos_embed", np.asarray(sd[f"{_IMG}.pos_embed"]))
    block_linears = _LINEARS_BLOCK + (_LINEARS_ADDED_KV if cfg.added_kv_proj_dim is not None else [])
    block_norms = _NORMS_BLOCK + ([("attn2/norm_added_k/scale", "attn2.norm_added_k.weight")]
                                  if cfg.added_kv_proj_dim is not None else [])
    for ours, theirs in block_linears:
        _set(p, f"blocks/{ours}/kernel", stack(f"{theirs}.weight", lambda a: np.asarray(a).T))
        _set(p, f"blocks/{ours}/bias", stack(f"{theirs}.bias"))
    for ours, theirs in block_norms:
        _set(p, f"blocks/{ours}", stack(theirs))
    if cfg.cross_attn_norm:
        _set(p, "blocks/norm2/scale", stack("norm2.weight"))
        _set(p, "blocks/norm2/bias", stack("norm2.bias"))
    _set(p, "blocks/scale_shift_table", stack("scale_shift_table"))
    return p


_ORIG_TOP = {
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "head.head": "proj_out",
    "patch_embedding": "patch_embedding",
    "img_emb.proj.0": f"{_IMG}.norm1",
    "img_emb.proj.1": f"{_IMG}.ff.net.0.proj",
    "img_emb.proj.3": f"{_IMG}.ff.net.2",
    "img_emb.proj.4": f"{_IMG}.norm2",
}
_ORIG_BLOCK = {
    "self_attn": "attn1",
    "cross_attn": "attn2",
}
_ORIG_PROJ = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q", "norm_k": "norm_k"}
_ORIG_IMAGE_PROJ = {"k_img": "add_k_proj", "v_img": "add_v_proj", "norm_k_img": "norm_added_k"}


def original_to_diffusers_names(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames an original-format Wan state dict to diffusers names (tensors unchanged).

    Keys it does not recognise are kept as they are, so the strict check reports them as unexpected.
    """
    out: dict[str, np.ndarray] = {}
    for key, value in sd.items():
        k = key.removeprefix("model.diffusion_model.")
        new = None
        if k == "head.modulation":
            new = "scale_shift_table"
        elif k == "img_emb.emb_pos":
            new = f"{_IMG}.pos_embed"
        elif (m := re.fullmatch(r"blocks\.(\d+)\.(.+)", k)) is not None:
            i, rest = m.groups()
            parts = rest.split(".")
            if rest == "modulation":
                new = "scale_shift_table"
            elif parts[0] in _ORIG_BLOCK and len(parts) == 3 and parts[1] in _ORIG_PROJ:
                new = f"{_ORIG_BLOCK[parts[0]]}.{_ORIG_PROJ[parts[1]]}.{parts[2]}"
            elif parts[0] == "cross_attn" and len(parts) == 3 and parts[1] in _ORIG_IMAGE_PROJ:
                new = f"attn2.{_ORIG_IMAGE_PROJ[parts[1]]}.{parts[2]}"
            elif parts[0] == "ffn" and len(parts) == 3 and parts[1] in ("0", "2"):
                new = f"ffn.net.0.proj.{parts[2]}" if parts[1] == "0" else f"ffn.net.2.{parts[2]}"
            elif parts[0] == "norm3" and len(parts) == 2:  # the affine cross-attention norm
                new = f"norm2.{parts[1]}"
            if new is not None:
                new = f"blocks.{i}.{new}"
        else:
            for o, d in _ORIG_TOP.items():
                if k.startswith(o + "."):
                    new = d + k[len(o):]
        out[new if new is not None else key] = value
    return out


def is_original(sd: Mapping[str, np.ndarray]) -> bool:
    return any(k.removeprefix("model.diffusion_model.") in ("head.head.weight", "head.modulation") for k in sd)


def original_image_fields(sd: Mapping[str, np.ndarray]) -> dict:
    """The image-branch fields of :class:`WanConfig` read from an original-format state dict.

    ``img_emb.proj.0.weight [image_dim]`` gives ``image_dim`` (and ``added_kv_proj_dim`` = the hidden
    size, Wan2.1's ``k_img``/``v_img`` being ``dim x dim``); ``img_emb.emb_pos [1, P, image_dim]`` gives
    ``pos_embed_seq_len = P``. All three are None for a checkpoint without ``img_emb`` (T2V, Wan2.2).
    """
    sd = {k.removeprefix("model.diffusion_model."): v for k, v in sd.items()}
    out = dict(image_dim=None, added_kv_proj_dim=None, pos_embed_seq_len=None)
    norm = sd.get("img_emb.proj.0.weight")
    if norm is None:
        return out
    out["image_dim"] = int(norm.shape[0])
    if "blocks.0.cross_attn.k_img.weight" in sd:
        out["added_kv_proj_dim"] = int(sd["blocks.0.cross_attn.k_img.weight"].shape[1])
    if "img_emb.emb_pos" in sd:
        out["pos_embed_seq_len"] = int(sd["img_emb.emb_pos"].shape[1])
    return out


def infer_config(sd: Mapping[str, np.ndarray], head_dim: int = 128) -> WanConfig:
    """Infers a config from original-format tensor shapes (Wan's head dim is 128 in every release),
    the image branch included (:func:`original_image_fields`)."""
    image = original_image_fields(sd)
    sd = {k.removeprefix("model.diffusion_model."): v for k, v in sd.items()}
    try:
        w = sd["patch_embedding.weight"]
        dim, cin = w.shape[:2]
        layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
        return WanConfig(
            patch_size=tuple(w.shape[2:]),
            num_attention_heads=dim // head_dim,
            attention_head_dim=head_dim,
            in_channels=cin,
            out_channels=sd["head.head.weight"].shape[0] // int(np.prod(w.shape[2:])),
            text_dim=sd["text_embedding.0.weight"].shape[1],
            freq_dim=sd["time_embedding.0.weight"].shape[1],
            ffn_dim=sd["blocks.0.ffn.0.weight"].shape[0],
            num_layers=layers,
            **image,
        )
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"cannot infer the Wan config from the tensors (missing {e}); pass config=") from None


