"""LoRA for the Wan DiT: read a LoRA file, merge it into a :class:`WanTransformer`'s weights, unmerge it.

**Reading** (:func:`load_lora`) accepts the layouts diffusers' ``WanLoraLoaderMixin`` converts, and
names the layout of anything else it refuses:

* ``diffusers`` / PEFT: ``transformer.blocks.0.attn1.to_q.lora_A.weight`` / ``.lora_B.weight``
  (also with no prefix, or PEFT's ``base_model.model.``), optional ``lora_B.bias``, an optional
  per-module ``<module>.alpha``, and the ``lora_adapter_metadata`` diffusers writes into the file
  (``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern``, ``use_rslora``);
* ``original`` Wan / ComfyUI: ``diffusion_model.blocks.0.self_attn.q.lora_down.weight`` /
  ``.lora_up.weight`` (or ``lora_A``/``lora_B``), ``.alpha``, and the full-tensor deltas ``.diff``
  (a weight, norm scale or modulation table) and ``.diff_b`` (a bias) that distilled Wan LoRAs carry;
* ``musubi`` (kohya-ss musubi-tuner): ``lora_unet_blocks_0_self_attn_q.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``.

Refused, each by name: DoRA (``dora_scale`` / ``lora_magnitude_vector``), LyCORIS LoHa (``hada_``),
LoKr (``lokr_``) and Tucker/LoCon mid factors (``lora_mid``), text-encoder LoRAs (``lora_te*``,
``text_encoder.``), PEFT metadata other than plain LoRA, and files mixing layouts.

**The math.** A low-rank update of a layer ``W [out, in]`` (PyTorch layout) with ``A [r, in]``,
``B [out, r]`` is ``W += scale * (alpha / r) * B @ A`` (``alpha / sqrt(r)`` with rsLoRA; ``alpha = r``
when the file has none, the diffusers/PEFT convention); a bias update (``lora_B.bias``) gets the
same factor, a full delta (``diff``/``diff_b``) ``scale`` alone. Our kernels are ``[in, out]`` (block
kernels stacked ``[L, in, out]``), so the update added is ``scale * factor * A.T @ B.T`` at layer
``l``; the patch-embedding convolution ``[D, C, pt, ph, pw]`` is our ``[C*pt*ph*pw, D]`` kernel, and
its ``A [r, C, pt, ph, pw]`` / ``B [D, r, 1, 1, 1]`` flatten to the same product. Every DiT linear is a
target: the block projections (``attn1``/``attn2`` q, k, v, out; ``ffn``), the condition embedder
(time ``linear_1``/``linear_2``, ``time_proj``, text ``linear_1``/``linear_2``), the head
(``proj_out``) and the patch embedding.

**Strict.** Against the model's config every key must name a tensor of the model, every shape must
match and ``A``'s rank must be ``B``'s: otherwise :class:`LoraError` names the key(s).

**Pure.** :func:`merge_lora` returns a new model (the input model is not modified);
:func:`merge_lora_params` a new parameter tree (unmodified leaves shared). Updates run in float32
and are cast back to each parameter's dtype; :func:`unmerge_lora` subtracts the same update, so it
gives the original weights back to float rounding (one rounding step of the storage dtype: merge at
load time, before casting to bfloat16, to keep that exact).

Where this departs from diffusers 0.42 (which the tests compare with): diffusers drops ``.diff``
keys other than ``head.head.diff`` and the norm ``diff``/``diff_b`` (the published ones are zeros)
and ``time_projection`` bias deltas without weights; jaxvdm applies every delta the file holds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvdm.models.checkpoint import CheckpointError, read_safetensors
from jaxvdm.models.wan.transformer.config import WanConfig
from jaxvdm.models.wan.transformer.keys import diffusers_tensor_shapes

__all__ = ["LoraError", "LowRank", "FullDelta", "WanLora", "load_lora", "lora_from_state_dict", "check_lora",
           "merge_lora", "unmerge_lora", "merge_lora_params"]

F32 = jnp.float32


class LoraError(CheckpointError):
    """A LoRA file is of an unsupported layout, malformed, or does not match the model it is merged into."""


@dataclasses.dataclass(frozen=True)
class LowRank:
    """``W += scale * factor * up @ down`` on a module's weight (PyTorch layout).

    key: the file key of ``down`` (for messages). down: ``A [r, in]`` (``[r, C, pt, ph, pw]`` for the
    patch embedding). up: ``B [out, r]`` (``[out, r, 1, 1, 1]``). factor: ``alpha / r``.
    """

    key: str
    down: np.ndarray
    up: np.ndarray
    factor: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclasses.dataclass(frozen=True)
class FullDelta:
    """``T += scale * factor * delta`` on one tensor (PyTorch layout and shape)."""

    key: str
    delta: np.ndarray
    factor: float = 1.0


@dataclasses.dataclass(frozen=True)
class WanLora:
    """A LoRA in diffusers names, independent of any model (see the module docstring).

    layout: ``"diffusers"``, ``"original"`` or ``"musubi"``. source: where it was read from.
    low_rank: diffusers module name (``blocks.3.attn1.to_q``) -> its weight's :class:`LowRank` update.
    full: diffusers tensor name (``blocks.3.attn1.to_q.bias``) -> :class:`FullDelta`.
    """

    layout: str
    source: str
    low_rank: Mapping[str, LowRank]
    full: Mapping[str, FullDelta]

    def __len__(self) -> int:
        return len(self.low_rank) + len(self.full)


# ----------------------------------------------------------------------------- names


_TABLE = "scale_shift_table"
# original Wan module names -> diffusers module names (blocks: after "blocks.N.")
_ORIG_TOP = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": _TABLE,
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
}
_ORIG_BLOCK = {
    **{f"{o}.{p}": f"{d}.{q}" for o, d in (("self_attn", "attn1"), ("cross_attn", "attn2"))
       for p, q in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"), ("norm_q", "norm_q"),
                    ("norm_k", "norm_k"))},
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "norm3": "norm2",
    "modulation": _TABLE,
}
_MUSUBI_TOP = {k.replace(".", "_"): k for k in _ORIG_TOP}
_MUSUBI_BLOCK = {k.replace(".", "_"): k for k in _ORIG_BLOCK}

# diffusers tensor names -> our parameter paths and layout kinds (blocks: after "blocks.N.")
_OURS_TOP = {
    "patch_embedding": (("patch_embedding",), "conv"),
    "condition_embedder.time_embedder.linear_1": (("condition_embedder", "time_linear_1"), "linear"),
    "condition_embedder.time_embedder.linear_2": (("condition_embedder", "time_linear_2"), "linear"),
    "condition_embedder.time_proj": (("condition_embedder", "time_proj"), "linear"),
    "condition_embedder.text_embedder.linear_1": (("condition_embedder", "text_linear_1"), "linear"),
    "condition_embedder.text_embedder.linear_2": (("condition_embedder", "text_linear_2"), "linear"),
    "proj_out": (("proj_out",), "linear"),
}
_OURS_BLOCK = {
    **{f"{a}.{q}": ((a, p), "linear") for a in ("attn1", "attn2")
       for p, q in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out.0"))},
    "ffn.net.0.proj": (("ffn", "proj_in"), "linear"),
    "ffn.net.2": (("ffn", "proj_out"), "linear"),
    **{f"{a}.{n}": ((a, n), "norm") for a in ("attn1", "attn2") for n in ("norm_q", "norm_k")},
    "norm2": (("norm2",), "norm"),
}
_LEAF = {"linear": {"weight": "kernel", "bias": "bias"}, "conv": {"weight": "kernel", "bias": "bias"},
         "norm": {"weight": "scale", "bias": "bias"}}


def _target(name: str) -> tuple[tuple[str, ...], int | None, str]:
    """diffusers tensor name -> (our parameter path, layer index or None, kind); KeyError if unmapped.

    kind: ``"linear"`` (our kernel is the transpose), ``"conv"`` (the patch embedding: flattened and
    transposed), ``"copy"`` (biases, norm scales, modulation tables: same layout).
    """
    layer = None
    rest = name
    if (m := re.fullmatch(r"blocks\.(\d+)\.(.+)", name)) is not None:
        layer, rest = int(m.group(1)), m.group(2)
    if rest == _TABLE:
        return (("blocks",) if layer is not None else ()) + (_TABLE,), layer, "copy"
    module, _, leaf = rest.rpartition(".")
    path, kind = (_OURS_BLOCK if layer is not None else _OURS_TOP)[module]
    ours = _LEAF[kind][leaf]
    if leaf == "bias" or kind == "norm":
        kind = "copy"
    return (("blocks",) if layer is not None else ()) + path + (ours,), layer, kind


# ----------------------------------------------------------------------------- reading


_REFUSED = (
    (("dora_scale", "lora_magnitude_vector"), "DoRA (weight-decomposed LoRA)"),
    (("hada_w", "hada_t"), "LyCORIS LoHa"),
    (("lokr_w", "lokr_t"), "LyCORIS LoKr"),
    ((".lora_mid.",), "LyCORIS LoCon/Tucker (lora_mid)"),
)
_PREFIXES = (
    ("transformer.", "diffusers"),
    ("base_model.model.", "diffusers"),
    ("model.diffusion_model.", "original"),
    ("diffusion_model.", "original"),
    ("lora_unet_", "musubi"),
)
_SUFFIXES = (
    (".lora_A.weight", "down"), (".lora_down.weight", "down"),
    (".lora_B.weight", "up"), (".lora_up.weight", "up"),
    (".lora_B.bias", "up_bias"), (".lora_up.bias", "up_bias"),
    (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff", "diff"),
)
_METADATA_KEY = "lora_adapter_metadata"


def _refuse_unsupported(keys: list[str], source: str) -> None:
    for marks, what in _REFUSED:
        hits = [k for k in keys if any(m in k for m in marks)]
        if hits:
            raise LoraError(f"{source}: a {what} file ({hits[0]!r}, {len(hits)} such keys); jaxvdm merges plain "
                            "LoRA (A/B matrices, alpha, diff/diff_b) only: convert it to a LoRA first")
    te = [k for k in keys if k.startswith(("lora_te", "text_encoder.", "text_encoder_2."))]
    if te:
        raise LoraError(f"{source}: holds a text-encoder LoRA ({te[0]!r}, {len(te)} keys); Wan LoRAs apply to the "
                        "transformer only (as in diffusers): remove those keys")


def _layout(keys: list[str], source: str) -> str:
    found: dict[str, str] = {}
    for k in keys:
        layout = next((lay for p, lay in _PREFIXES if k.startswith(p)), "diffusers (no prefix)")
        found.setdefault(layout, k)
    if len(found) > 1:
        raise LoraError(f"{source}: keys of several LoRA layouts in one file: "
                        + "; ".join(f"{lay} (e.g. {k!r})" for lay, k in found.items()) + "; use one layout")
    layout = next(iter(found))
    if layout == "diffusers (no prefix)":
        example = found[layout]
        if not example.startswith(("blocks.", "condition_embedder.", "proj_out.", "patch_embedding.")):
            raise LoraError(
                f"{source}: unrecognised LoRA layout (e.g. key {example!r}); supported: diffusers/PEFT "
                "('transformer.blocks.0.attn1.to_q.lora_A.weight'), original Wan "
                "('diffusion_model.blocks.0.self_attn.q.lora_down.weight'), musubi/kohya "
                "('lora_unet_blocks_0_self_attn_q.lora_down.weight')")
        return "diffusers"
    return layout


def _strip_prefix(key: str) -> str:
    for p, _ in _PREFIXES:
        if key.startswith(p):
            return key[len(p):]
    return key


def _module_to_diffusers(module: str, layout: str) -> str | None:
    """A module (or table) name of ``layout`` -> its diffusers name; None when it names no Wan module."""
    if layout == "diffusers":
        return module
    if layout == "musubi":
        if (m := re.fullmatch(r"blocks_(\d+)_(.+)", module)) is not None:
            rest = _MUSUBI_BLOCK.get(m.group(2))
            return None if rest is None else f"blocks.{m.group(1)}.{_ORIG_BLOCK[rest]}"
        top = _MUSUBI_TOP.get(module)
        return None if top is None else _ORIG_TOP[top]
    if (m := re.fullmatch(r"blocks\.(\d+)\.(.+)", module)) is not None:
        rest = _ORIG_BLOCK.get(m.group(2))
        return None if rest is None else f"blocks.{m.group(1)}.{rest}"
    return _ORIG_TOP.get(module)


def _split_key(stripped: str) -> tuple[str, str] | None:
    for suffix, kind in _SUFFIXES:
        if stripped.endswith(suffix):
            return stripped[: -len(suffix)], kind
    return None


def _f32(a: np.ndarray, key: str, source: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise LoraError(f"{source}: tensor {key!r} holds NaN or infinite values; the file is broken")
    return a


class _Factors:
    """``alpha / r`` per module from diffusers' ``lora_adapter_metadata`` (PEFT ``LoraConfig`` fields)."""

    def __init__(self, meta: Mapping[str, Any], source: str):
        meta = {k.removeprefix("transformer."): v for k, v in meta.items()}
        self.source = source
        if meta.get("peft_type", "LORA") != "LORA":
            raise LoraError(f"{source}: PEFT adapter type {meta.get('peft_type')!r}; only plain LoRA can be merged")
        for flag, what in (("use_dora", "DoRA (weight-decomposed LoRA)"), ("fan_in_fan_out", "fan_in_fan_out layers")):
            if meta.get(flag):
                raise LoraError(f"{source}: metadata says {flag}=true ({what}); jaxvdm merges plain LoRA only")
        try:
            self.r = int(meta["r"])
            self.alpha = float(meta.get("lora_alpha", self.r))
        except (KeyError, TypeError, ValueError):
            raise LoraError(f"{source}: {_METADATA_KEY} lacks a valid 'r'/'lora_alpha': {meta!r:.300}") from None
        self.rank_pattern = dict(meta.get("rank_pattern") or {})
        self.alpha_pattern = dict(meta.get("alpha_pattern") or {})
        self.rslora = bool(meta.get("use_rslora", False))

    @staticmethod
    def _match(patterns: Mapping[str, Any], module: str):
        for pat, value in patterns.items():  # PEFT's rule: the first pattern matching a suffix of the name
            if re.match(rf"(.*\.)?({pat})$", module):
                return value
        return None

    def factor(self, module: str, rank: int, key: str) -> float:
        r = self._match(self.rank_pattern, module)
        r = self.r if r is None else int(r)
        if r != rank:
            raise LoraError(f"{self.source}: {key!r} has rank {rank} but the file's metadata says r={r} for {module}")
        alpha = self._match(self.alpha_pattern, module)
        alpha = self.alpha if alpha is None else float(alpha)
        return alpha / (math.sqrt(r) if self.rslora else r)


def _read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (already validated by ``read_safetensors``)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return dict(json.loads(f.read(n)).get("__metadata__") or {})


def load_lora(path: str | os.PathLike) -> WanLora:
    """Reads a LoRA ``.safetensors`` file (any layout of the module docstring) into a :class:`WanLora`.

    Raises LoraError (a :class:`~jaxvdm.models.checkpoint.CheckpointError`) naming the layout or key
    that is refused; a truncated or corrupt file raises CheckpointError naming the file. Nothing here
    depends on a model: :func:`check_lora` / :func:`merge_lora` check the names and shapes against one.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            names = [f.name for f in files]
            raise LoraError(f"{path}: expected one LoRA .safetensors file in the folder, found {names}")
        path = files[0]
    sd = read_safetensors(path)
    meta = _read_metadata(path).get(_METADATA_KEY)
    try:
        meta = json.loads(meta) if meta else None
    except json.JSONDecodeError as e:
        raise LoraError(f"{path}: corrupt {_METADATA_KEY} ({e})") from None
    return lora_from_state_dict(sd, metadata=meta, source=str(path))


def lora_from_state_dict(sd: Mapping[str, np.ndarray], *, metadata: Mapping[str, Any] | None = None,
                         source: str = "LoRA") -> WanLora:
    """A :class:`WanLora` from a LoRA state dict (name -> array) and diffusers' optional adapter metadata."""
    keys = sorted(sd)
    if not keys:
        raise LoraError(f"{source}: the LoRA file holds no tensors")
    _refuse_unsupported(keys, source)
    layout = _layout(keys, source)
    if metadata and layout != "diffusers":
        raise LoraError(f"{source}: PEFT adapter metadata beside {layout}-layout keys is ambiguous (alpha would apply "
                        "twice); remove the metadata or convert the keys to the diffusers layout")
    groups: dict[str, dict[str, tuple[str, np.ndarray]]] = {}
    for key in keys:
        split = _split_key(_strip_prefix(key))
        if split is None:
            raise LoraError(f"{source}: key {key!r} is not a LoRA tensor (expected lora_A/lora_B, lora_down/lora_up, "
                            "alpha, diff or diff_b)")
        module, kind = split
        name = _module_to_diffusers(module, layout)
        if name is None:
            raise LoraError(f"{source}: key {key!r} names no Wan transformer module ({layout} layout)")
        groups.setdefault(name, {})[kind] = (key, sd[key])
    factors = _Factors(metadata, source) if metadata else None
    low_rank: dict[str, LowRank] = {}
    full: dict[str, FullDelta] = {}
    for name, g in groups.items():
        factor = 1.0
        if "down" in g or "up" in g:
            if "down" not in g or "up" not in g:
                have, lack = ("down", "lora_B/lora_up") if "down" in g else ("up", "lora_A/lora_down")
                raise LoraError(f"{source}: {g[have][0]!r} has no matching {lack} tensor; the file is incomplete")
            (kd, down), (ku, up) = g["down"], g["up"]
            down, up = _f32(down, kd, source), _f32(up, ku, source)
            if down.ndim < 2 or up.ndim < 2 or down.shape[0] != up.shape[1]:
                raise LoraError(f"{source}: rank mismatch: {kd!r} is {tuple(down.shape)} and {ku!r} is "
                                f"{tuple(up.shape)} (A must be [r, in...], B [out, r...])")
            rank = int(down.shape[0])
            if "alpha" in g:
                if factors is not None:
                    raise LoraError(f"{source}: {g['alpha'][0]!r} and the file's lora_alpha metadata both set alpha")
                alpha = np.asarray(g["alpha"][1], np.float64).reshape(-1)
                if alpha.size != 1 or not np.isfinite(alpha[0]):
                    raise LoraError(f"{source}: {g['alpha'][0]!r} must be one finite number, got shape {alpha.shape}")
                factor = float(alpha[0]) / rank
            elif factors is not None:
                factor = factors.factor(name, rank, kd)
            low_rank[name] = LowRank(kd, down, up, factor)
        elif "alpha" in g or "up_bias" in g:
            k = g.get("alpha", g.get("up_bias"))[0]
            raise LoraError(f"{source}: {k!r} has no lora_A/lora_B pair for its module; the file is incomplete")
        if "up_bias" in g:
            full[f"{name}.bias"] = FullDelta(g["up_bias"][0], _f32(g["up_bias"][1], g["up_bias"][0], source), factor)
        if "diff" in g:
            tensor = name if name.rpartition(".")[2] == _TABLE else f"{name}.weight"
            full[tensor] = FullDelta(g["diff"][0], _f32(g["diff"][1], g["diff"][0], source))
        if "diff_b" in g:
            if f"{name}.bias" in full:
                other = full[f"{name}.bias"].key
                raise LoraError(f"{source}: {g['diff_b'][0]!r} and {other!r} both update {name}.bias")
            full[f"{name}.bias"] = FullDelta(g["diff_b"][0], _f32(g["diff_b"][1], g["diff_b"][0], source))
    return WanLora(layout, source, low_rank, full)


# ----------------------------------------------------------------------------- checking against a model


def check_lora(config: WanConfig, lora: WanLora) -> None:
    """Raises LoraError naming every key of ``lora`` that matches no tensor of a model of ``config``
    or whose shape does not fit it (low-rank: ``A [r, *W.shape[1:]]``, ``B [W.shape[0], r, 1...]``)."""
    shapes = diffusers_tensor_shapes(config)
    problems = []
    for module, lr in lora.low_rank.items():
        w = shapes.get(f"{module}.weight")
        if w is None or not _mapped(f"{module}.weight"):
            problems.append(f"{lr.key}: {module} matches no layer of this model")
            continue
        want_a, want_b = (lr.rank, *w[1:]), (w[0], lr.rank) + (1,) * (len(w) - 2)
        if tuple(lr.down.shape) != want_a or tuple(lr.up.shape) != want_b:
            problems.append(f"{lr.key}: A {tuple(lr.down.shape)} / B {tuple(lr.up.shape)} do not fit {module}.weight "
                            f"{tuple(w)} (need A {want_a}, B {want_b})")
    for name, fd in lora.full.items():
        t = shapes.get(name)
        if t is None or not _mapped(name):
            problems.append(f"{fd.key}: {name} matches no tensor of this model")
        elif tuple(fd.delta.shape) != tuple(t):
            problems.append(f"{fd.key}: shape {tuple(fd.delta.shape)} does not fit {name} {tuple(t)}")
    if problems:
        raise LoraError(f"{lora.source}: the LoRA does not match the transformer ({config.num_layers} layers, hidden "
                        f"{config.hidden_size}); {len(problems)} problem(s):\n  " + "\n  ".join(problems))


def _mapped(name: str) -> bool:
    try:
        _target(name)
        return True
    except KeyError:
        return False


# ----------------------------------------------------------------------------- merging


@functools.partial(jax.jit, static_argnames=("stacked",))
def _updated_leaf(leaf, low_rank, full, *, stacked: bool):
    """``leaf`` plus its updates, computed in float32 and cast back to ``leaf.dtype``.

    low_rank: tuple of ``(layers [n] int32, downs [n, r, K], ups [n, N, r], factors [n])`` groups of
    one rank each (the update of layer ``l`` is ``factor * down.T @ up.T``, shaped ``[K, N]``).
    full: None or ``(layers [n], deltas [n, *leaf.shape[1:]] in our layout)`` (``n = 1``, no layer axis,
    when not ``stacked``).
    """
    w = leaf.astype(F32)
    hi = jax.lax.Precision.HIGHEST
    for layers, downs, ups, factors in low_rank:
        def add(i, w, layers=layers, downs=downs, ups=ups, factors=factors):
            d = jnp.einsum("rk,nr->kn", downs[i], ups[i], precision=hi) * factors[i]
            return w.at[layers[i]].add(d) if stacked else w + d
        w = jax.lax.fori_loop(0, layers.shape[0], add, w)
    if full is not None:
        layers, deltas = full
        w = w.at[layers].add(deltas) if stacked else w + deltas[0]
    return w.astype(leaf.dtype)


def _plan(config: WanConfig, lora: WanLora, scale: float) -> dict[tuple[str, ...], tuple[bool, tuple, Any]]:
    """Our parameter path -> (stacked, low-rank groups, full deltas), the arguments of :func:`_updated_leaf`."""
    check_lora(config, lora)
    by_leaf: dict[tuple[str, ...], dict] = {}
    for module, lr in lora.low_rank.items():
        path, layer, _ = _target(f"{module}.weight")
        entry = by_leaf.setdefault(path, {"stacked": layer is not None, "lr": {}, "full": []})
        down = lr.down.reshape(lr.rank, -1)
        up = lr.up.reshape(lr.up.shape[0], lr.rank)
        entry["lr"].setdefault(lr.rank, []).append((layer or 0, down, up, lr.factor * scale))
    for name, fd in lora.full.items():
        path, layer, kind = _target(name)
        entry = by_leaf.setdefault(path, {"stacked": layer is not None, "lr": {}, "full": []})
        d = fd.delta.reshape(fd.delta.shape[0], -1).T if kind in ("linear", "conv") else fd.delta
        entry["full"].append((layer or 0, d * np.float32(fd.factor * scale)))
    plan = {}
    for path, e in by_leaf.items():
        groups = tuple(
            (np.asarray([t[0] for t in ts], np.int32), np.stack([t[1] for t in ts]), np.stack([t[2] for t in ts]),
             np.asarray([t[3] for t in ts], np.float32))
            for _, ts in sorted(e["lr"].items())
        )
        full = None
        if e["full"]:
            full = (np.asarray([t[0] for t in e["full"]], np.int32), np.stack([t[1] for t in e["full"]]))
        plan[path] = (e["stacked"], groups, full)
    return plan


def _get(tree: Mapping, path: tuple[str, ...]):
    for k in path:
        tree = tree[k]
    return tree


def _with(tree: Mapping, path: tuple[str, ...], value) -> dict:
    """A shallow copy of nested dict ``tree`` with ``path`` set to ``value`` (other leaves shared)."""
    out = dict(tree)
    out[path[0]] = value if len(path) == 1 else _with(tree[path[0]], path[1:], value)
    return out


def merge_lora_params(config: WanConfig, params: Mapping, lora: WanLora, scale: float = 1.0) -> dict:
    """``params`` (jaxvdm's DiT parameter tree, e.g. from ``load_transformer_params``, or
    ``nnx.to_pure_dict`` of a model's state) with ``lora`` merged at ``scale``; pure.

    Each updated leaf is a new array of the same dtype and kind (numpy in, numpy out; jax in, jax
    out); the others are the input's. Raises LoraError (via :func:`check_lora`) before any compute
    when the LoRA does not fit ``config``.
    """
    out = dict(params)
    for path, (stacked, groups, full) in _plan(config, lora, float(scale)).items():
        leaf = _get(params, path)
        new = _updated_leaf(jnp.asarray(leaf), groups, full, stacked=stacked)
        out = _with(out, path, np.asarray(new) if isinstance(leaf, np.ndarray) else new)
    return out


def merge_lora(model, lora: WanLora, scale: float = 1.0):
    """A new :class:`~jaxvdm.models.wan.transformer.WanTransformer` whose weights are ``model``'s with
    ``lora`` merged at ``scale`` (``W += scale * (alpha/r) * B @ A`` per layer); ``model`` is unchanged.

    The result runs exactly like a model loaded with those weights (no adapter at run time).
    """
    graphdef, state = nnx.split(model)
    pure = merge_lora_params(model.config, nnx.to_pure_dict(state), lora, scale)
    state = jax.tree.map(lambda x: x, state)  # a new State: the model's own stays as it is
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def unmerge_lora(model, lora: WanLora, scale: float = 1.0):
    """:func:`merge_lora` with the update subtracted: after ``merge_lora(m, lora, s)`` it gives back
    ``m``'s weights to float rounding."""
    return merge_lora(model, lora, -float(scale))
