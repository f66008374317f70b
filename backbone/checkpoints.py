"""Pretrained weights for the reference Vision Transformer, read from local files only.

:func:`~backbone.load_checkpoint` reads the two layouts pretrained ViTs come
in: the original Google ``.npz`` files (``ViT-B_16.npz`` and the AugReg and
big_vision releases, which L2P, DualPrompt and CODA-Prompt start from) and
timm's state dicts (``torch.save`` files, ``.safetensors`` when the
``safetensors`` package is installed, or a mapping already in memory). The
position embeddings are resampled when the checkpoint's patch grid differs
from the model's, and the patch kernel when the patch size differs. Nothing
is ever downloaded: a URL or a hub name is refused.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import struct
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._checks import check_bool
from .models import VisionTransformer
from .tuning import LoRA, is_tuning_parameter
from .wrappers import unwrap

__all__ = ["load_checkpoint"]

_INTERPOLATIONS = ("bicubic", "bilinear")

# Keys that wrap the weights in a training checkpoint, and the prefixes that
# DistributedDataParallel and torch.compile put before every name.
_WRAPPING_KEYS = ("state_dict", "model")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# Where the weights sit in the .npz releases: the original ViT files at the
# top, training snapshots under opt/target/, big_vision under params/ (and
# params/img/ for image-text models).
_NPZ_PREFIXES = ("", "opt/target/", "params/", "params/img/")

_HEAD_PREFIXES = ("head.", "pre_logits.")


def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    *,
    head: bool = True,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> list[str]:
    """Load pretrained weights from a local file or a mapping into a :class:`~backbone.VisionTransformer`.

    The layout is read from the keys, whatever the file is called:

    * **Google's** ``.npz`` (what ``VisionTransformer.load_pretrained`` reads
      in timm): ``embedding/kernel``, ``cls``,
      ``Transformer/posembed_input/pos_embedding``,
      ``Transformer/encoderblock_{i}/...`` and ``head``, with the kernels in
      Flax's layout (transposed here); also under ``opt/target/``,
      ``params/`` or ``params/img/``, with big_vision's names and with the
      blocks stacked in one array each.
    * **timm's** state dict, as :func:`torch.save` wrote it (read with
      ``weights_only=True``), possibly under a ``state_dict`` or ``model``
      key, with ``module.`` or ``_orig_mod.`` before the names; or a
      ``.safetensors`` file, when the ``safetensors`` package is installed.
    * **Mammoth's** tuned checkpoints: its ``IncrementalClassifier``
      (``head.heads.{t}.weight``, one linear head a task, their logits
      concatenated) loads as the one head whose rows they are, in task
      order; L2P's ``pos_embed`` with a row for each prompt after the class
      row loads without those rows, which L2P fills with the class row (pass
      ``prompt_pos="class"`` at the call to add them to the prompts; rows
      that differ from the class row are refused, not dropped).

    When the checkpoint's position embeddings cover another patch grid
    (another image size or patch size), the class token's embedding is kept
    and the grid is resized as an image with ``interpolation`` and
    ``antialias`` (timm's ``resample_abs_pos_embed``, whose defaults these
    are). When the patch size differs, the patch kernel is resized too, by
    the pseudo-inverse of the resize (FlexiViT's rule, timm's
    ``resample_patch_embed``). timm's own ``.npz`` loader resizes with
    ``interpolation='bilinear', antialias=False``; pass those to get its
    numbers.

    Loading is all or nothing: every check runs and every tensor is built
    before the first is copied, so on any error the model is unchanged.
    Parameters and buffers of tuning hooks (names starting with ``tuning.``
    or containing ``.tuning.``) are never in pretrained checkpoints: when
    missing they keep their values. Any other key missing from the
    checkpoint, or one the model lacks, is an error. A model with LoRA deltas
    merged into its weights is refused: the checkpoint would overwrite the
    merged weights and a later ``unmerge_lora`` would undo the
    load; unmerge first.

    Args:
        model: the model to load into (DataParallel, DDP and compiled
            wrappers are looked through).
        checkpoint: the path of a local file, or the checkpoint as a mapping
            (a state dict, a training checkpoint around one, or the arrays of
            an ``.npz`` file, such as ``numpy.load(path)``).
        head: load the classifier ``head``. With ``False`` the checkpoint's
            head (and the representation layer ``pre_logits`` of the
            original ImageNet-21k files) is left out and the model's head
            keeps its values, whatever its number of classes.
        interpolation: how the position-embedding grid and the patch kernel
            are resized: ``'bicubic'`` or ``'bilinear'``.
        antialias: resize with an antialiasing filter (it matters when
            shrinking).

    Returns:
        The names in the model's ``state_dict`` that kept their values: the
        tuning hooks' the checkpoint lacks, and the head's with ``head=False``.

    Raises:
        TypeError: ``model`` is not a :class:`~backbone.VisionTransformer`,
            ``checkpoint`` is not a path or a mapping, or an option has the
            wrong type.
        ValueError: ``checkpoint`` is a URL or a hub name (nothing is
            downloaded: download the file and pass its path), the file is
            missing or unreadable, the keys or shapes do not fit the model,
            the head has another number of classes and ``head=True``, or a
            LoRA is merged.

    Example:
        >>> import os, tempfile, torch
        >>> from backbone import VisionTransformer, load_checkpoint
        >>> _ = torch.manual_seed(0)
        >>> source = VisionTransformer(img_size=32, patch_size=8, num_classes=5, embed_dim=24, depth=2, num_heads=2)
        >>> folder = tempfile.TemporaryDirectory()
        >>> path = os.path.join(folder.name, "vit.pth")
        >>> torch.save(source.state_dict(), path)
        >>> net = VisionTransformer(img_size=32, patch_size=8, num_classes=5, embed_dim=24, depth=2, num_heads=2)
        >>> load_checkpoint(net, path)
        []
        >>> x = torch.randn(2, 3, 32, 32)
        >>> torch.equal(net(x), source(x))
        True

        At 48 px the grid is 6x6, not 4x4: the position embeddings are
        resampled. The head here has 3 classes, not 5, so it is left out:

        >>> bigger = VisionTransformer(img_size=48, patch_size=8, num_classes=3, embed_dim=24, depth=2, num_heads=2)
        >>> load_checkpoint(bigger, path, head=False)
        ['head.weight', 'head.bias']
        >>> bigger.pos_embed.shape, torch.equal(bigger.pos_embed[:, 0], source.pos_embed[:, 0])
        (torch.Size([1, 37, 24]), True)
        >>> load_checkpoint(bigger, path)
        Traceback (most recent call last):
        ...
        ValueError: the checkpoint's head has 5 classes and the model's 3: pass head=False to keep the model's head
        >>> folder.cleanup()
    """
    net = _check_model(model)
    check_bool("head", head)
    check_bool("antialias", antialias)
    if not isinstance(interpolation, str) or interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(map(repr, _INTERPOLATIONS))}, got {interpolation!r}")
    merged = [name for name, module in net.named_modules() if isinstance(module, LoRA) and module.merged]
    if merged:
        # The checkpoint would replace merged weights, and unmerging later would restore the old ones.
        raise ValueError(
            f"the model has LoRA deltas merged into its weights ({_names(merged)}): "
            "call unmerge_lora(model) before loading a checkpoint"
        )
    _check_writable(net)
    state, layout = _read(checkpoint)
    loaded, kept = _fit(net, state, layout, head=head, interpolation=interpolation, antialias=antialias)
    net.load_state_dict(loaded, strict=False)
    return kept


def _check_writable(net: nn.Module) -> None:
    """Refuse a model that load_state_dict would fill half-way (inference tensors) or not at all (meta)."""
    for name, t in net.state_dict(keep_vars=True).items():
        if t.device.type == "meta":
            raise ValueError(
                f"the model is on the meta device ({name} holds no data), so nothing would be loaded: "
                "materialise it first (model.to_empty(device='cpu'))"
            )
        if t.is_inference() and not torch.is_inference_mode_enabled():
            raise ValueError(
                f"the model's {name} is an inference tensor (made under torch.inference_mode()), which cannot be "
                "written outside inference mode: build the model outside it"
            )


def _check_model(model: object) -> VisionTransformer:
    if isinstance(model, nn.Module):
        inner = unwrap(model)
        if isinstance(inner, VisionTransformer):
            return inner
    raise TypeError(f"model must be a backbone.VisionTransformer, got {type(model).__name__}")


# --- reading ------------------------------------------------------------------


def _read(checkpoint: object) -> tuple[dict[str, Tensor], str]:
    """The checkpoint as tensors under the model's names, and the layout it came in (for messages)."""
    if isinstance(checkpoint, (str, os.PathLike)):
        raw = _read_file(os.fsdecode(checkpoint))
    elif isinstance(checkpoint, Mapping):
        raw = checkpoint
    else:
        raise TypeError(
            f"checkpoint must be a path (str or os.PathLike) or a mapping of names to tensors, "
            f"got {type(checkpoint).__name__}"
        )
    raw = _unwrap_training_checkpoint(raw)
    prefix = _npz_prefix(raw)
    if prefix is not None:
        return _from_npz(raw, prefix), ".npz checkpoint"
    return _from_state_dict(raw), "state dict"


def _read_file(path: str) -> Mapping[str, Any]:
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path) or path.lower().startswith(("hf-hub:", "hf_hub:")):
        raise ValueError(
            f"checkpoint must be a local file, got {path!r}, and nothing is ever downloaded: "
            "download the file and pass its path"
        )
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint must be a local file, got {path!r}, which is not a file")
    try:
        kind = _sniff(path)
    except OSError as error:
        raise ValueError(f"cannot read {path!r}: {error}") from error
    load_safetensors = _safetensors_loader(path) if kind == "safetensors" else None
    try:
        if kind == "npz":
            with np.load(path, allow_pickle=False) as arrays:
                return {key: arrays[key] for key in arrays.files}
        if load_safetensors is not None:
            return cast(Mapping[str, Any], load_safetensors(path, device="cpu"))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # whatever numpy, torch or safetensors raise on a damaged or foreign file
        raise ValueError(f"cannot read {path!r} as a {kind} checkpoint: {error}") from error
    if not isinstance(state, Mapping):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a mapping of names to tensors")
    return state


def _sniff(path: str) -> str:
    """'npz' (a zip of .npy arrays), 'safetensors' (a length, then a JSON header) or 'torch' (anything else)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        # torch.save writes a zip too, of data.pkl and storages.
        return "npz" if names and all(name.endswith(".npy") for name in names) else "torch"
    with open(path, "rb") as file:
        start = file.read(9)
    if len(start) == 9 and start[8:9] == b"{" and struct.unpack("<Q", start[:8])[0] <= os.path.getsize(path) - 8:
        return "safetensors"
    return "torch"


def _safetensors_loader(path: str) -> Callable[..., Any]:
    # Optional and untyped here: imported by name, so that neither mypy nor the package depends on it.
    try:
        return cast(Callable[..., Any], importlib.import_module("safetensors.torch").load_file)
    except ImportError as error:
        raise ValueError(f"{path!r} is a safetensors file: pip install safetensors to read it") from error


def _unwrap_training_checkpoint(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in _WRAPPING_KEYS:
        if isinstance(raw.get(key), Mapping):
            return _unwrap_training_checkpoint(raw[key])
    return raw


def _as_tensor(value: object, key: str) -> Tensor:
    if isinstance(value, Tensor):
        if value.layout != torch.strided or value.is_nested or value.is_quantized:
            what = (
                "a nested tensor" if value.is_nested else "a quantized tensor" if value.is_quantized else value.layout
            )
            raise ValueError(f"checkpoint entry {key!r} must be a dense (strided) tensor, got {what}")
        if value.device.type == "meta":
            raise ValueError(f"checkpoint entry {key!r} holds no data (a tensor on the meta device)")
        if value.is_complex():
            raise ValueError(f"checkpoint entry {key!r} must hold real values, got {value.dtype}")
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return torch.from_numpy(np.array(value))
    what = f"array of dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
    raise ValueError(f"checkpoint entry {key!r} must be a tensor or a numeric array, got a {what}")


def _from_state_dict(raw: Mapping[str, Any]) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ValueError(f"checkpoint keys must be str, got {type(key).__name__} {key!r}")
        name = key
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if name in state:
            raise ValueError(f"checkpoint keys {key!r} and another both name {name!r} once prefixes are removed")
        state[name] = _as_tensor(value, key)
    return _join_mammoth_heads(state)


_MAMMOTH_HEAD = re.compile(r"head\.heads\.(\d+)\.(weight|bias)")


def _join_mammoth_heads(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Mammoth's ``IncrementalClassifier`` (``head.heads.{t}.*``, a linear head a task, logits concatenated) as one."""
    found: dict[str, dict[int, Tensor]] = {}
    for key in list(state):
        match = _MAMMOTH_HEAD.fullmatch(key)
        if match:
            found.setdefault(match[2], {})[int(match[1])] = state.pop(key)
    if not found:
        return state
    if "head.weight" in state or "head.bias" in state:
        raise ValueError(
            "the checkpoint has both head.weight/head.bias and Mammoth's head.heads.{t}: expected one head"
        )
    for kind, parts in found.items():
        if sorted(parts) != list(range(len(parts))):
            raise ValueError(f"the checkpoint's Mammoth heads must be numbered 0, 1, ..., got {sorted(parts)} ({kind})")
        tensors = [parts[t] for t in range(len(parts))]
        wanted = 2 if kind == "weight" else 1
        if any(t.dim() != wanted for t in tensors) or len({t.shape[1:] for t in tensors}) > 1:
            shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
            raise ValueError(f"the checkpoint's Mammoth heads must be linear heads of one width, got {kind} {shapes}")
        state[f"head.{kind}"] = torch.cat(tensors, dim=0)
    return state


# --- Google's .npz layout -----------------------------------------------------


def _npz_prefix(raw: Mapping[str, Any]) -> str | None:
    """The prefix of the Flax parameters when ``raw`` is in Google's layout; None for a state dict."""
    return next((p for p in _NPZ_PREFIXES if f"{p}embedding/kernel" in raw), None)


def _dense(w: Tensor) -> Tensor:
    """A Flax Dense kernel is [in, out]; torch's Linear weight is [out, in]."""
    return w.T


def _conv(w: Tensor) -> Tensor:
    """A Flax Conv kernel is [H, W, in, out]; torch's Conv2d weight is [out, in, H, W]."""
    return w.permute(3, 2, 0, 1)


def _heads_in(w: Tensor) -> Tensor:
    """query/key/value kernels are [D, heads, head_dim]: flatten the heads, then transpose as a Dense kernel."""
    return w.reshape(w.shape[0], -1).T


def _heads_out(w: Tensor) -> Tensor:
    """The output kernel is [heads, head_dim, D]: flatten the heads into torch's [D, heads * head_dim]."""
    return w.reshape(-1, w.shape[-1]).T


def _flat(w: Tensor) -> Tensor:
    return w.reshape(-1)


def _same(w: Tensor) -> Tensor:
    return w


_NDIMS: dict[Callable[[Tensor], Tensor], int] = {_dense: 2, _conv: 4, _heads_in: 3, _heads_out: 3, _flat: 2}


def _npz_names(big_vision: bool) -> list[tuple[re.Pattern[str], str, Callable[[Tensor], Tensor]]]:
    """(Flax name, model name, conversion) for every parameter; ``{i}`` in a name is the block index."""
    attn, mlp, norm2 = ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1")
    if not big_vision:
        attn, mlp, norm2 = ("MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")
    block = r"Transformer/encoderblock_(\d+)/"
    table = [
        ("embedding/kernel", "patch_embed.proj.weight", _conv),
        ("embedding/bias", "patch_embed.proj.bias", _same),
        ("cls", "cls_token", _same),
        ("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding", "pos_embed", _same),
        ("Transformer/encoder_norm/scale", "norm.weight", _same),
        ("Transformer/encoder_norm/bias", "norm.bias", _same),
        ("head/kernel", "head.weight", _dense),
        ("head/bias", "head.bias", _same),
        ("pre_logits/kernel", "pre_logits.weight", _dense),
        ("pre_logits/bias", "pre_logits.bias", _same),
        (block + "LayerNorm_0/scale", "blocks.{i}.norm1.weight", _same),
        (block + "LayerNorm_0/bias", "blocks.{i}.norm1.bias", _same),
        (block + f"{norm2}/scale", "blocks.{i}.norm2.weight", _same),
        (block + f"{norm2}/bias", "blocks.{i}.norm2.bias", _same),
        (block + f"{attn}/(query|key|value)/kernel", "blocks.{i}.attn.qkv.weight.{part}", _heads_in),
        (block + f"{attn}/(query|key|value)/bias", "blocks.{i}.attn.qkv.bias.{part}", _flat),
        (block + f"{attn}/out/kernel", "blocks.{i}.attn.proj.weight", _heads_out),
        (block + f"{attn}/out/bias", "blocks.{i}.attn.proj.bias", _same),
        (block + f"{mlp}/Dense_0/kernel", "blocks.{i}.mlp.fc1.weight", _dense),
        (block + f"{mlp}/Dense_0/bias", "blocks.{i}.mlp.fc1.bias", _same),
        (block + f"{mlp}/Dense_1/kernel", "blocks.{i}.mlp.fc2.weight", _dense),
        (block + f"{mlp}/Dense_1/bias", "blocks.{i}.mlp.fc2.bias", _same),
    ]
    return [(re.compile(flax), name, convert) for flax, name, convert in table]


def _unstack_blocks(arrays: dict[str, Any]) -> dict[str, Any]:
    """big_vision may store each block parameter for all blocks in one array: split it into one per block."""
    stacked = "Transformer/encoderblock/"
    out = {key: value for key, value in arrays.items() if not key.startswith(stacked)}
    depths = {key: len(value) for key, value in arrays.items() if key.startswith(stacked)}
    if len(set(depths.values())) > 1:
        raise ValueError(f"the stacked blocks of the .npz checkpoint must share their first dimension, got {depths}")
    for key in depths:
        for i, value in enumerate(arrays[key]):
            out[key.replace(stacked, f"Transformer/encoderblock_{i}/")] = value
    return out


def _npz_target(
    key: str, names: list[tuple[re.Pattern[str], str, Callable[[Tensor], Tensor]]]
) -> tuple[str, Callable[[Tensor], Tensor]] | None:
    """The model name a Flax name becomes (a part name for query, key and value), and its conversion."""
    for pattern, name, convert in names:
        found = pattern.fullmatch(key)
        if found:
            block, part = (*found.groups(), "", "")[:2]
            return name.format(i=block, part=part), convert
    return None


def _from_npz(raw: Mapping[str, Any], prefix: str) -> dict[str, Tensor]:
    arrays = {key[len(prefix) :]: value for key, value in raw.items() if key.startswith(prefix)}
    big_vision = (
        prefix.startswith("params/")
        or "pos_embedding" in arrays
        or any(key.startswith("Transformer/encoderblock/") for key in arrays)
    )
    names = _npz_names(big_vision)
    state: dict[str, Tensor] = {}
    unexpected = []
    for key, value in _unstack_blocks(arrays).items():
        target = _npz_target(key, names)
        if target is None:
            unexpected.append(prefix + key)
            continue
        name, convert = target
        tensor = _as_tensor(value, prefix + key)
        if convert in _NDIMS and tensor.dim() != _NDIMS[convert]:
            raise ValueError(
                f".npz entry {prefix + key!r} must have {_NDIMS[convert]} dimensions, got shape {tuple(tensor.shape)}"
            )
        state[name] = convert(tensor)
    if unexpected:
        raise ValueError(f"the .npz checkpoint has entries the model lacks: {_names(unexpected)}")
    return _join_qkv(state)


def _join_qkv(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Concatenate the separate query, key and value projections into timm's one ``qkv``, in that order."""
    out = {key: value for key, value in state.items() if not re.search(r"\.(query|key|value)$", key)}
    joined = {key.rsplit(".", 1)[0] for key in state if key not in out}
    for name in sorted(joined):
        parts = [state.get(f"{name}.{part}") for part in ("query", "key", "value")]
        if any(part is None for part in parts):
            absent = [part for part, value in zip(("query", "key", "value"), parts, strict=True) if value is None]
            raise ValueError(f"the .npz checkpoint lacks the {'/'.join(absent)} part of {name}")
        present = [p for p in parts if p is not None]
        if len({tuple(p.shape[1:]) for p in present}) > 1 or any(p.dim() == 0 for p in present):
            shapes = ", ".join(str(tuple(p.shape)) for p in present)
            raise ValueError(
                f"the .npz checkpoint's query, key and value parts of {name} do not fit together: {shapes}"
            )
        out[name] = torch.cat(present)
    return out


# --- fitting to the model -----------------------------------------------------


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _fit(
    net: VisionTransformer, state: dict[str, Tensor], layout: str, *, head: bool, interpolation: str, antialias: bool
) -> tuple[dict[str, Tensor], list[str]]:
    """The tensors to copy into ``net``, checked and resampled, and the names of the model's state that stays."""
    own = net.state_dict()
    if not head:
        state = {key: value for key, value in state.items() if not key.startswith(_HEAD_PREFIXES)}
    _check_head(own, state, head)
    kept = [
        key for key in own if key not in state and (is_tuning_parameter(key) or (not head and key.startswith("head.")))
    ]
    missing = [key for key in own if key not in state and key not in kept]
    unexpected = [key for key in state if key not in own]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"the checkpoint lacks {_names(missing)}")
        if unexpected:
            problems.append(f"the model has no {_names(unexpected)}")
        hint = (
            "; pass head=False to leave the head out"
            if any(k.startswith(_HEAD_PREFIXES) for k in missing + unexpected)
            else ""
        )
        raise ValueError(f"the {layout}'s keys do not fit the model: {'; '.join(problems)}{hint}")
    state = _resample(state, own, net.patch_embed.grid_size, interpolation=interpolation, antialias=antialias)
    wrong = [
        f"{key} {tuple(value.shape)} (the model's is {tuple(own[key].shape)})"
        for key, value in state.items()
        if value.shape != own[key].shape
    ]
    if wrong:
        raise ValueError(f"the {layout}'s shapes do not fit the model: {_names(wrong)}")
    not_float = [key for key, value in state.items() if own[key].is_floating_point() and not value.is_floating_point()]
    if not_float:
        raise ValueError(f"the {layout} must hold floating-point values for {_names(not_float)}")
    return state, kept


@torch.no_grad()
def _resample(
    state: dict[str, Tensor], own: dict[str, Tensor], grid: tuple[int, int], *, interpolation: str, antialias: bool
) -> dict[str, Tensor]:
    """``state`` with the patch kernel and the position embeddings resized to the model's, where they differ."""
    state = dict(state)
    kernel, target = state["patch_embed.proj.weight"], own["patch_embed.proj.weight"]
    if kernel.dim() == 4 and kernel.shape[:2] == target.shape[:2] and kernel.shape[2:] != target.shape[2:]:
        if min(kernel.shape[2:]) < 1:
            raise ValueError(f"the checkpoint's patch kernel is empty, shape {tuple(kernel.shape)}")
        size = (target.shape[2], target.shape[3])
        state["patch_embed.proj.weight"] = _resample_kernel(
            kernel, size, interpolation=interpolation, antialias=antialias
        )
    pos, target = state["pos_embed"], own["pos_embed"]
    if pos.dim() == 3 and pos.shape[0] == 1 and pos.shape[2] == target.shape[2] and pos.shape[1] != target.shape[1]:
        pos = _without_prompt_rows(pos, target.shape[1] - 1)
        if pos.shape[1] != target.shape[1]:
            pos = _resample_pos_embed(pos, grid, interpolation=interpolation, antialias=antialias)
        state["pos_embed"] = pos
    return state


def _without_prompt_rows(pos: Tensor, patches: int) -> Tensor:
    """L2P's ``pos_embed`` ``[1, 1 + P + N, D]`` (rows for its P prompts after the class row) as ``[1, 1 + N, D]``.

    Recognised when the ``P`` rows after the class row are copies of it (L2P
    fills its prompt rows with the class row and keeps them frozen), whatever
    ``P + N`` is. Other rows that do not make a square grid would be lost,
    and are refused; a square grid of another size is resampled.
    """
    rows = pos.shape[1] - 1
    extra = rows - patches
    if extra <= 0:
        return pos
    prompt_rows = pos[:, 1 : 1 + extra]
    copies = torch.equal(prompt_rows, pos[:, :1].expand_as(prompt_rows))
    if not copies and math.isqrt(rows) ** 2 == rows:
        return pos  # a square grid of another size: resampled as timm does
    if not copies:
        raise ValueError(
            f"the checkpoint's pos_embed has {extra} prompt rows after the class row (L2P's layout) that differ from "
            "the class row; load it without them (pos_embed[:, :1] and pos_embed[:, 1 + P:]) and pass them at the "
            "call as prompt_pos=pos_embed[0, 1:1 + P]"
        )
    return torch.cat([pos[:, :1], pos[:, 1 + extra :]], dim=1)


def _check_head(own: dict[str, Tensor], state: dict[str, Tensor], head: bool) -> None:
    if not head or "head.weight" not in state or state["head.weight"].dim() != 2:
        return
    classes = state["head.weight"].shape[0]
    if "head.weight" not in own:
        raise ValueError(f"the checkpoint's head has {classes} classes and the model has none: pass head=False")
    if own["head.weight"].shape[1] == state["head.weight"].shape[1] and own["head.weight"].shape[0] != classes:
        raise ValueError(
            f"the checkpoint's head has {classes} classes and the model's {own['head.weight'].shape[0]}: "
            "pass head=False to keep the model's head"
        )


def _resample_pos_embed(pos: Tensor, grid: tuple[int, int], *, interpolation: str, antialias: bool) -> Tensor:
    """Resize the patch positions ``[1, 1 + n * n, D]`` to ``grid`` as an image; the class position stays."""
    side = math.isqrt(pos.shape[1] - 1)
    if side == 0 or side * side != pos.shape[1] - 1:
        raise ValueError(
            f"the checkpoint's pos_embed must cover a class token and a square grid, got {pos.shape[1]} positions"
        )
    dim = pos.shape[2]
    # Interpolation runs in float32 (half-precision bicubic is not available everywhere), as timm's does.
    image = pos[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=grid, mode=interpolation, antialias=antialias)
    patches = image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pos.dtype)
    return torch.cat([pos[:, :1], patches], dim=1)


def _resample_kernel(kernel: Tensor, size: tuple[int, int], *, interpolation: str, antialias: bool) -> Tensor:
    """Resize a patch kernel so that, on a patch resized the same way, it gives what the old kernel gave.

    Resizing a patch is linear, ``new = R @ old``; the kernel ``k`` becomes
    ``k @ pinv(R)``, so ``k' . R x = k . x`` whenever ``R`` loses nothing
    (growing the patch), and the least-squares best otherwise.
    """
    out_chans, in_chans, height, width = kernel.shape
    basis = torch.eye(height * width, dtype=torch.float32, device=kernel.device).reshape(
        height * width, 1, height, width
    )
    resized = F.interpolate(basis, size=size, mode=interpolation, antialias=antialias, align_corners=False)
    resize = resized.reshape(height * width, size[0] * size[1]).T
    flat = kernel.float().reshape(out_chans, in_chans, height * width) @ cast(Tensor, torch.linalg.pinv(resize))
    return flat.reshape(out_chans, in_chans, *size).to(kernel.dtype)
