"""load_checkpoint: Google's .npz and timm's state dicts, read from local files into the reference ViT.

The .npz files are written here from the format's definition (``google_arrays``),
so this file is the reference for the layout; the timm-marked tests check the
same files, and the resampling, against timm's own loaders.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from backbone import (
    MNISTMLP,
    VisionTransformer,
    add_adapters,
    add_lora,
    add_prompts,
    add_ssf,
    is_tuning_parameter,
    load_checkpoint,
    merge_lora,
    remove_tuning,
    unmerge_lora,
)

DIM, HEADS = 24, 2


def vit(img: int = 32, patch: int = 8, classes: int = 5, depth: int = 2, seed: int = 0) -> VisionTransformer:
    """A small ViT whose every parameter is drawn at random, so that no zero bias or unit scale hides a mix-up."""
    torch.manual_seed(seed)
    net = VisionTransformer(
        img_size=img, patch_size=patch, num_classes=classes, embed_dim=DIM, depth=depth, num_heads=HEADS
    )
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    return net.eval()


def google_arrays(net: VisionTransformer, layout: str = "vit", prefix: str = "") -> dict[str, np.ndarray]:
    """``net``'s weights as Google's ViT .npz files store them.

    Flax keeps a Dense kernel as ``[in, out]`` (torch's Linear weight is
    ``[out, in]``) and a Conv kernel as ``[H, W, in, out]`` (torch:
    ``[out, in, H, W]``). Attention has separate query, key and value
    projections whose kernels split the heads out, ``[D, heads, head_dim]``
    (biases ``[heads, head_dim]``), and an output kernel ``[heads, head_dim,
    D]``. The original ViT files ('vit') number the block's sublayers
    LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3 and
    keep the position embeddings under Transformer/posembed_input;
    big_vision's ('big_vision') number them 0, 0, 1, 0 and keep
    ``pos_embedding`` at the top; 'stacked' is big_vision's with each block
    parameter of every block in one array, block index first.
    """
    sd = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    depth, head_dim = len(net.blocks), DIM // HEADS
    big_vision = layout in ("big_vision", "stacked")
    attn, mlp, norm2 = ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1")
    if not big_vision:
        attn, mlp, norm2 = ("MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")
    arrays = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        ("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"): sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": sd["head.weight"].T,
        "head/bias": sd["head.bias"],
    }
    blocks: list[dict[str, np.ndarray]] = []
    for i in range(depth):
        p = f"blocks.{i}."
        block = {
            "LayerNorm_0/scale": sd[p + "norm1.weight"],
            "LayerNorm_0/bias": sd[p + "norm1.bias"],
            f"{norm2}/scale": sd[p + "norm2.weight"],
            f"{norm2}/bias": sd[p + "norm2.bias"],
            f"{attn}/out/kernel": sd[p + "attn.proj.weight"].T.reshape(HEADS, head_dim, DIM),
            f"{attn}/out/bias": sd[p + "attn.proj.bias"],
            f"{mlp}/Dense_0/kernel": sd[p + "mlp.fc1.weight"].T,
            f"{mlp}/Dense_0/bias": sd[p + "mlp.fc1.bias"],
            f"{mlp}/Dense_1/kernel": sd[p + "mlp.fc2.weight"].T,
            f"{mlp}/Dense_1/bias": sd[p + "mlp.fc2.bias"],
        }
        weights = np.split(sd[p + "attn.qkv.weight"], 3)  # query, key, value rows, in that order
        biases = np.split(sd[p + "attn.qkv.bias"], 3)
        for name, w, b in zip(("query", "key", "value"), weights, biases, strict=True):
            block[f"{attn}/{name}/kernel"] = w.T.reshape(DIM, HEADS, head_dim)
            block[f"{attn}/{name}/bias"] = b.reshape(HEADS, head_dim)
        blocks.append(block)
    if layout == "stacked":
        arrays |= {f"Transformer/encoderblock/{k}": np.stack([b[k] for b in blocks]) for k in blocks[0]}
    else:
        arrays |= {f"Transformer/encoderblock_{i}/{k}": v for i, b in enumerate(blocks) for k, v in b.items()}
    return {prefix + k: np.ascontiguousarray(v) for k, v in arrays.items()}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def state(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def assert_state_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert list(a) == list(b)
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert unequal == []


def assert_same_model(net: VisionTransformer, source: VisionTransformer) -> None:
    assert_state_equal(state(net), state(source))
    x = torch.randn(2, 3, *([net.patch_embed.grid_size[0] * net.patch_embed.patch_size] * 2))
    with torch.no_grad():
        assert torch.equal(net(x, returnt="both")[0], source(x, returnt="both")[0])


# --- Google's .npz --------------------------------------------------------------


NPZ_LAYOUTS = [
    ("vit", ""),
    ("vit", "opt/target/"),
    ("big_vision", "params/"),
    ("stacked", ""),
    ("stacked", "params/img/"),
]


@pytest.mark.parametrize(("layout", "prefix"), NPZ_LAYOUTS)
def test_a_google_npz_file_loads_every_weight_exactly(tmp_path: Path, layout: str, prefix: str) -> None:
    source = vit(seed=1)
    path = save_npz(tmp_path / "ViT.npz", google_arrays(source, layout, prefix))
    net = vit(seed=2)
    assert load_checkpoint(net, path) == []
    assert_same_model(net, source)


def test_the_npz_layout_is_read_from_the_keys_not_the_file_name(tmp_path: Path) -> None:
    source = vit(seed=1)
    path = save_npz(tmp_path / "weights.npz", google_arrays(source))
    renamed = tmp_path / "weights.bin"
    path.rename(renamed)
    net = vit(seed=2)
    load_checkpoint(net, str(renamed))
    assert_same_model(net, source)


def test_npz_arrays_already_loaded_load_too(tmp_path: Path) -> None:
    source = vit(seed=1)
    path = save_npz(tmp_path / "ViT.npz", google_arrays(source))
    for checkpoint in (dict(google_arrays(source)), np.load(path)):
        net = vit(seed=2)
        load_checkpoint(net, checkpoint)
        assert_same_model(net, source)


def test_training_snapshot_entries_outside_the_weights_prefix_are_ignored() -> None:
    source = vit(seed=1)
    arrays = google_arrays(source, "vit", "opt/target/") | {"opt/state/step": np.array(10), "opt/state/m": np.ones(3)}
    net = vit(seed=2)
    load_checkpoint(net, arrays)
    assert_same_model(net, source)


def test_the_representation_layer_of_the_imagenet21k_files_goes_with_the_head() -> None:
    source = vit(seed=1)
    arrays = google_arrays(source) | {"pre_logits/kernel": np.ones((DIM, DIM)), "pre_logits/bias": np.zeros(DIM)}
    net = vit(seed=2)
    before = state(net)
    with pytest.raises(ValueError, match=r"the model has no pre_logits\.weight, pre_logits\.bias; pass head=False"):
        load_checkpoint(net, arrays)
    assert_state_equal(state(net), before)
    assert load_checkpoint(net, arrays, head=False) == ["head.weight", "head.bias"]
    loaded = state(net)
    assert torch.equal(loaded["head.weight"], before["head.weight"])
    assert torch.equal(loaded["blocks.1.mlp.fc2.weight"], source.blocks[1].mlp.fc2.weight)


# --- timm's state dicts -----------------------------------------------------------


WRAPPINGS: dict[str, Callable[[dict[str, Tensor]], dict[str, Any]]] = {
    "plain": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 3, "optimizer": {"state": {}}},
    "model": lambda sd: {"model": sd, "args": "--lr 0.1"},
    "ddp": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "compiled ddp": lambda sd: {"state_dict": {f"_orig_mod.module.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("wrapping", WRAPPINGS)
def test_a_timm_state_dict_file_loads_exactly(tmp_path: Path, wrapping: str) -> None:
    source = vit(seed=1)
    path = tmp_path / "vit.pth"
    torch.save(WRAPPINGS[wrapping](source.state_dict()), path)
    net = vit(seed=2)
    assert load_checkpoint(net, path) == []
    assert_same_model(net, source)
    net = vit(seed=2)
    load_checkpoint(net, WRAPPINGS[wrapping](source.state_dict()))  # the mapping itself
    assert_same_model(net, source)


def test_a_legacy_pickle_file_loads(tmp_path: Path) -> None:
    source = vit(seed=1)
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path, _use_new_zipfile_serialization=False)
    net = vit(seed=2)
    load_checkpoint(net, path)
    assert_same_model(net, source)


def test_a_safetensors_file_loads_when_safetensors_is_installed(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    source = vit(seed=1)
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    net = vit(seed=2)
    load_checkpoint(net, path)
    assert_same_model(net, source)


def test_a_safetensors_file_is_recognised_by_its_header(tmp_path: Path) -> None:
    """An empty safetensors file (no tensors) written by hand: an 8-byte header length, then the JSON header."""
    path = tmp_path / "empty.bin"
    path.write_bytes(struct.pack("<Q", 2) + b"{}")
    net = vit(seed=2)
    before = state(net)
    try:
        import safetensors  # noqa: F401
    except ImportError:
        message = "is a safetensors file: pip install safetensors to read it"
    else:
        message = "the state dict's keys do not fit the model: the checkpoint lacks cls_token"
    with pytest.raises(ValueError, match=message):
        load_checkpoint(net, path)
    assert_state_equal(state(net), before)


def test_a_half_precision_checkpoint_is_cast_to_the_models_dtype() -> None:
    source = vit(seed=1)
    half = {k: v.half() for k, v in source.state_dict().items()}
    net = vit(seed=2)
    load_checkpoint(net, half)
    assert all(torch.equal(v, half[k].float()) for k, v in net.state_dict().items())


def test_a_wrapped_model_is_loaded_through_its_wrapper() -> None:
    source, net = vit(seed=1), vit(seed=2)
    load_checkpoint(nn.DataParallel(net), source.state_dict())
    assert_same_model(net, source)


@pytest.mark.cuda
def test_a_checkpoint_on_the_gpu_is_resampled_there_and_loads_into_a_gpu_model() -> None:
    source = vit(seed=1)
    on_cpu = vit(img=24, patch=4, seed=2)  # another grid (6x6) and another patch size (4)
    load_checkpoint(on_cpu, source.state_dict())
    for checkpoint in ({k: v.cuda() for k, v in source.state_dict().items()}, source.state_dict()):
        on_gpu = vit(img=24, patch=4, seed=2).cuda()
        load_checkpoint(on_gpu, checkpoint)
        expected = state(on_cpu)
        for key, value in on_gpu.state_dict().items():
            assert value.is_cuda
            torch.testing.assert_close(value.cpu(), expected[key], rtol=1e-5, atol=1e-5)


# --- resampling ---------------------------------------------------------------------


def grid_of(pos: Tensor) -> Tensor:
    """The patch positions of ``pos [1, 1 + n * n, D]`` as an image ``[1, D, n, n]`` (row-major, as patches are)."""
    side = int((pos.shape[1] - 1) ** 0.5)
    return pos[0, 1:].reshape(side, side, -1).permute(2, 0, 1).unsqueeze(0)


@pytest.mark.parametrize("img", [48, 16])  # a 6x6 grid (upsampling) and a 2x2 grid (downsampling) from 4x4
@pytest.mark.parametrize(("interpolation", "antialias"), [("bicubic", True), ("bilinear", False)])
def test_position_embeddings_are_resampled_as_an_image_and_the_class_position_stays(
    img: int, interpolation: str, antialias: bool
) -> None:
    source = vit(seed=1)
    net = vit(img=img, seed=2)
    load_checkpoint(net, source.state_dict(), interpolation=interpolation, antialias=antialias)
    pos = source.pos_embed.detach()
    side = img // 8
    expected = F.interpolate(grid_of(pos), size=(side, side), mode=interpolation, antialias=antialias)
    assert torch.equal(net.pos_embed[:, 0], pos[:, 0])
    assert torch.equal(grid_of(net.pos_embed.detach()), expected)
    # Everything else is copied as it is.
    loaded, original = state(net), state(source)
    assert all(torch.equal(loaded[k], original[k]) for k in loaded if k != "pos_embed")


def test_the_default_resampling_is_antialiased_bicubic() -> None:
    # Shrinking is where antialiasing shows: 4x4 to 2x2.
    source, net = vit(seed=1), vit(img=16, seed=2)
    load_checkpoint(net, source.state_dict())
    expected = F.interpolate(grid_of(source.pos_embed.detach()), size=(2, 2), mode="bicubic", antialias=True)
    assert torch.equal(grid_of(net.pos_embed.detach()), expected)
    assert not torch.allclose(expected, F.interpolate(grid_of(source.pos_embed.detach()), size=(2, 2), mode="bicubic"))


def test_resampling_keeps_rows_as_rows_and_constants_constant() -> None:
    """Hand-checkable cases: a grid that varies down the rows only still does after resizing; a constant stays."""
    source, net = vit(seed=1), vit(img=48, seed=2)
    with torch.no_grad():
        rows = torch.arange(4.0).repeat_interleave(4)  # position (r, c) holds r
        source.pos_embed[0, 1:, 0] = rows
        source.pos_embed[0, 1:, 1] = 0.5
    load_checkpoint(net, source.state_dict())
    grid = grid_of(net.pos_embed.detach())[0]
    torch.testing.assert_close(grid[0], grid[0][:, :1].expand(6, 6), rtol=0, atol=1e-6)  # each row constant
    assert bool((grid[0][1:, 0] > grid[0][:-1, 0]).all())  # increasing down the rows
    torch.testing.assert_close(grid[1], torch.full((6, 6), 0.5), rtol=0, atol=1e-6)


def test_a_checkpoint_with_another_patch_size_has_its_patch_kernel_resampled() -> None:
    """FlexiViT's rule: on a patch resized the same way, the new kernel gives what the old one gave on the patch."""
    source = vit(img=8, patch=8, seed=1)  # one patch per image
    net = vit(img=16, patch=16, seed=2)
    load_checkpoint(net, source.state_dict())
    x = torch.randn(4, 3, 8, 8)
    bigger = F.interpolate(x, size=(16, 16), mode="bicubic", antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(net.patch_embed.proj(bigger), source.patch_embed.proj(x), rtol=1e-4, atol=1e-4)
    assert net.patch_embed.proj.weight.shape == (DIM, 3, 16, 16)


def test_a_grid_that_is_not_square_is_refused() -> None:
    source, net = vit(seed=1), vit(img=48, seed=2)
    checkpoint = source.state_dict() | {"pos_embed": torch.zeros(1, 16, DIM)}  # 15 patch positions
    before = state(net)
    with pytest.raises(ValueError, match="class token and a square grid, got 16 positions"):
        load_checkpoint(net, checkpoint)
    assert_state_equal(state(net), before)


# --- the head ---------------------------------------------------------------------


def test_a_head_with_another_number_of_classes_is_refused_unless_left_out(tmp_path: Path) -> None:
    source = vit(classes=5, seed=1)
    path = save_npz(tmp_path / "ViT.npz", google_arrays(source))
    net = vit(classes=3, seed=2)
    before = state(net)
    message = "the checkpoint's head has 5 classes and the model's 3: pass head=False to keep the model's head"
    for checkpoint in (path, source.state_dict()):
        with pytest.raises(ValueError, match=message):
            load_checkpoint(net, checkpoint)
        assert_state_equal(state(net), before)
    for checkpoint in (path, source.state_dict()):
        assert load_checkpoint(net, checkpoint, head=False) == ["head.weight", "head.bias"]
        loaded, original = state(net), state(source)
        assert {k for k in loaded if not torch.equal(loaded[k], original.get(k, torch.empty(0)))} == {
            "head.weight",
            "head.bias",
        }
        assert torch.equal(loaded["head.weight"], before["head.weight"])
        assert torch.equal(loaded["head.bias"], before["head.bias"])


def test_head_false_keeps_the_head_even_when_the_classes_agree() -> None:
    source, net = vit(seed=1), vit(seed=2)
    head = state(net)["head.weight"]
    load_checkpoint(net, source.state_dict(), head=False)
    assert torch.equal(net.head.weight, head)
    assert torch.equal(net.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_a_checkpoint_without_a_head_needs_head_false() -> None:
    source, net = vit(seed=1), vit(seed=2)
    headless = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    with pytest.raises(ValueError, match=r"the checkpoint lacks head\.weight, head\.bias; pass head=False"):
        load_checkpoint(net, headless)
    load_checkpoint(net, headless, head=False)
    assert torch.equal(net.norm.weight, source.norm.weight)


def test_a_model_without_a_head_takes_a_checkpoint_with_one_only_with_head_false() -> None:
    source, net = vit(seed=1), vit(seed=2)
    net.reset_classifier(0)
    with pytest.raises(ValueError, match="the checkpoint's head has 5 classes and the model has none: pass head=False"):
        load_checkpoint(net, source.state_dict())
    assert load_checkpoint(net, source.state_dict(), head=False) == []
    assert torch.equal(net.norm.bias, source.norm.bias)


# --- tuning hooks ------------------------------------------------------------------


def attach(container: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in ``container.tuning`` (a ModuleDict, made if the model has none)."""
    if not isinstance(getattr(container, "tuning", None), nn.ModuleDict):
        container.tuning = nn.ModuleDict()
    container.tuning[name] = module  # type: ignore[index]


def test_tuning_parameters_and_buffers_may_be_missing_and_keep_their_values(tmp_path: Path) -> None:
    source = vit(seed=1)
    net = vit(seed=2)
    probe = nn.Linear(DIM, 2)
    probe.register_buffer("count", torch.tensor([7.0]))
    attach(net, "probe", probe)
    attach(net.blocks[1], "probe", nn.Linear(DIM, 4, bias=False))
    hooks = {k: v for k, v in state(net).items() if "tuning." in k}
    assert sorted(hooks) == [
        "blocks.1.tuning.probe.weight",
        "tuning.probe.bias",
        "tuning.probe.count",
        "tuning.probe.weight",
    ]
    path = save_npz(tmp_path / "ViT.npz", google_arrays(source))
    for checkpoint in (source.state_dict(), path):
        assert sorted(load_checkpoint(net, checkpoint)) == sorted(hooks)
        loaded = state(net)
        assert all(torch.equal(loaded[k], v) for k, v in hooks.items())
        assert all(torch.equal(loaded[k], v) for k, v in state(source).items())


def test_tuning_parameters_in_the_checkpoint_are_loaded() -> None:
    source, net = vit(seed=1), vit(seed=2)
    attach(source, "probe", nn.Linear(DIM, 2))
    attach(net, "probe", nn.Linear(DIM, 2))
    assert load_checkpoint(net, source.state_dict()) == []
    assert torch.equal(net.get_submodule("tuning.probe").weight, source.get_submodule("tuning.probe").weight)


def test_only_names_with_a_tuning_component_may_be_missing() -> None:
    source = vit(seed=1)
    for name in ("mytuning", "tuning_scale"):
        net = vit(seed=2)
        net.register_parameter(name, nn.Parameter(torch.ones(3)))
        before = state(net)
        with pytest.raises(ValueError, match=f"the checkpoint lacks {name}$"):
            load_checkpoint(net, source.state_dict())
        assert_state_equal(state(net), before)
    net = vit(seed=2)
    net.blocks[0].add_module("retuning", nn.Linear(2, 2))
    with pytest.raises(
        ValueError, match=r"the checkpoint lacks blocks\.0\.retuning\.weight, blocks\.0\.retuning\.bias"
    ):
        load_checkpoint(net, source.state_dict())


def test_every_kind_of_hook_keeps_its_values_while_the_base_is_loaded(tmp_path: Path) -> None:
    source, net = vit(seed=1), vit(seed=2)
    add_lora(net, 2)
    add_adapters(net, 4)
    add_ssf(net)
    add_prompts(net, 3, blocks=(0, 1))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if is_tuning_parameter(name):
                p.normal_()
    hooks = {k: v for k, v in state(net).items() if is_tuning_parameter(k)}
    assert {k.split(".tuning.")[-1].split(".")[0] for k in hooks} >= {"lora", "adapter", "ssf"}
    assert "blocks.1.mlp.fc2.tuning.ssf.scale" in hooks and "blocks.0.attn.qkv.tuning.lora.A" in hooks
    assert any(k.startswith("tuning.prompts.") for k in hooks)
    path = save_npz(tmp_path / "ViT.npz", google_arrays(source))
    assert sorted(load_checkpoint(net, path)) == sorted(hooks)
    loaded = state(net)
    assert all(torch.equal(loaded[k], v) for k, v in hooks.items())
    remove_tuning(net)
    assert_same_model(net, source)


def test_a_model_with_merged_lora_deltas_is_refused_until_unmerged() -> None:
    source, net = vit(seed=1), vit(seed=2)
    for lora in add_lora(net, 2):
        nn.init.normal_(lora.B)
    merge_lora(net)
    before = state(net)
    with pytest.raises(
        ValueError, match=r"merged into its weights \(blocks\.0\.attn\.qkv\.tuning\.lora, .*\): call unmerge_lora"
    ):
        load_checkpoint(net, source.state_dict())
    assert_state_equal(state(net), before)
    unmerge_lora(net)
    load_checkpoint(net, source.state_dict())
    assert torch.equal(net.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)


# --- refusals: the model is unchanged ------------------------------------------------


def test_missing_and_unexpected_keys_are_named() -> None:
    source = vit(depth=2, seed=1)
    deeper = vit(depth=3, seed=2)
    before = state(deeper)
    with pytest.raises(ValueError, match=r"lacks blocks\.2\.norm1\.weight, blocks\.2\.norm1\.bias, .* and 4 more$"):
        load_checkpoint(deeper, source.state_dict())
    assert_state_equal(state(deeper), before)
    shallower = vit(depth=1, seed=2)
    with pytest.raises(ValueError, match=r"the model has no blocks\.1\.norm1\.weight, .* and 4 more$"):
        load_checkpoint(shallower, google_arrays(source))
    net = vit(seed=2)
    before = state(net)
    with pytest.raises(
        ValueError, match=r"the state dict's keys do not fit the model: the model has no extra\.weight$"
    ):
        load_checkpoint(net, source.state_dict() | {"extra.weight": torch.zeros(1)})
    assert_state_equal(state(net), before)


def test_unknown_npz_entries_and_half_attention_projections_are_refused() -> None:
    net = vit(seed=2)
    before = state(net)
    arrays = google_arrays(vit(seed=1))
    with pytest.raises(ValueError, match=r"the \.npz checkpoint has entries the model lacks: MAPHead_0/probe$"):
        load_checkpoint(net, arrays | {"MAPHead_0/probe": np.zeros((1, 1, DIM))})
    del arrays["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/key/kernel"]
    with pytest.raises(ValueError, match=r"lacks the key part of blocks\.1\.attn\.qkv\.weight"):
        load_checkpoint(net, arrays)
    assert_state_equal(state(net), before)


def bad_checkpoints(tmp_path: Path) -> dict[str, tuple[object, type[Exception], str]]:
    source = vit(seed=1)
    sd = dict(source.state_dict())
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    a_list = tmp_path / "list.pth"
    torch.save([1, 2, 3], a_list)
    a_module = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), a_module)
    wide = vit(seed=1)
    wide_sd = VisionTransformer(img_size=32, patch_size=8, num_classes=5, embed_dim=32, depth=2, num_heads=2)
    bad_npz = google_arrays(wide) | {"embedding/kernel": np.zeros((8, 8, 3))}
    sparse_file = tmp_path / "sparse.pth"
    torch.save(sd | {"head.bias": sd["head.bias"].to_sparse()}, sparse_file)
    return {
        "int": (3, TypeError, "checkpoint must be a path .* or a mapping of names to tensors, got int"),
        "bytes": (b"vit.npz", TypeError, "got bytes"),
        "list": ([("cls_token", torch.zeros(1))], TypeError, "got list"),
        "http": ("https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz", ValueError, "download the file"),
        "hf-hub": ("hf-hub:timm/vit_base_patch16_224.augreg_in21k", ValueError, "download the file and pass its path"),
        "hf_hub": ("HF_HUB:timm/vit_base_patch16_224", ValueError, "nothing is ever downloaded"),
        "missing file": (str(tmp_path / "absent.npz"), ValueError, "which is not a file"),
        "directory": (tmp_path, ValueError, "which is not a file"),
        "garbage": (garbage, ValueError, "cannot read .*garbage.pth' as a torch checkpoint"),
        "a list file": (a_list, ValueError, "holds a list, not a mapping"),
        "a module file": (a_module, ValueError, "cannot read"),
        "wider": (wide_sd.state_dict(), ValueError, r"shapes do not fit the model: cls_token \(1, 1, 32\)"),
        "not a tensor": (sd | {"norm.weight": [1.0] * DIM}, ValueError, "'norm.weight' must be a tensor"),
        "integers": (
            sd | {"norm.weight": torch.ones(DIM, dtype=torch.int64)},
            ValueError,
            "floating-point values for norm.weight",
        ),
        "3-d kernel": (bad_npz, ValueError, "'embedding/kernel' must have 4 dimensions, got shape \\(8, 8, 3\\)"),
        "strings in npz": (
            google_arrays(wide) | {"cls": np.array(["a"])},
            ValueError,
            "'cls' must be a tensor or a numeric array",
        ),
        "both prefixes": (sd | {f"module.{k}": v for k, v in sd.items()}, ValueError, "both name"),
        # The last entry is the bad one, so that every other entry would have been copied before it.
        "meta": (sd | {"head.bias": torch.empty(5, device="meta")}, ValueError, "'head.bias' holds no data"),
        "sparse": (sd | {"head.bias": sd["head.bias"].to_sparse()}, ValueError, "'head.bias' must be a dense"),
        "sparse file": (sparse_file, ValueError, "'head.bias' must be a dense"),
        "complex": (sd | {"head.bias": sd["head.bias"].to(torch.complex64)}, ValueError, "must hold real values"),
        # Found by red-teaming: each was a raw torch error.
        "class position only": (sd | {"pos_embed": sd["pos_embed"][:, :1]}, ValueError, "a class token and a square"),
        "empty kernel": (
            sd | {"patch_embed.proj.weight": torch.zeros(24, 3, 0, 0)},
            ValueError,
            r"patch kernel is empty, shape \(24, 3, 0, 0\)",
        ),
        "query of another width": (
            google_arrays(source)
            | {"Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel": np.zeros((25, 2, 12))},
            ValueError,
            "query, key and value parts of blocks.0.attn.qkv.weight do not fit together",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "int", "bytes", "list", "http", "hf-hub", "hf_hub", "missing file", "directory", "garbage", "a list file",
        "a module file", "wider", "not a tensor", "integers", "3-d kernel", "strings in npz", "both prefixes",
        "meta", "sparse", "sparse file", "complex", "class position only", "empty kernel", "query of another width",
    ],
)  # fmt: skip
def test_a_bad_checkpoint_is_refused_and_changes_nothing(tmp_path: Path, case: str) -> None:
    checkpoint, error, message = bad_checkpoints(tmp_path)[case]
    net = vit(seed=2)
    before = state(net)
    with pytest.raises(error, match=message):
        load_checkpoint(net, checkpoint)  # type: ignore[arg-type]
    assert_state_equal(state(net), before)


def test_the_last_check_to_fail_still_leaves_the_model_unchanged() -> None:
    """A shape mismatch found after resampling: every other tensor was ready, none was copied."""
    source, net = vit(seed=1), vit(img=48, seed=2)
    checkpoint = source.state_dict() | {"blocks.1.mlp.fc2.bias": torch.zeros(DIM + 1)}
    before = state(net)
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc2\.bias \(25,\) \(the model's is \(24,\)\)"):
        load_checkpoint(net, checkpoint)
    assert_state_equal(state(net), before)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"head": "no"}, TypeError, "head must be a bool, got str"),
        ({"antialias": 1}, TypeError, "antialias must be a bool, got int"),
        ({"interpolation": "nearest"}, ValueError, "interpolation must be one of 'bicubic', 'bilinear', got 'nearest'"),
    ],
)
def test_bad_options_are_refused_before_anything_is_read(kwargs: dict[str, Any], error: type, message: str) -> None:
    net = vit(seed=2)
    before = state(net)
    with pytest.raises(error, match=message):
        load_checkpoint(net, "https://example.com/never-read.npz", **kwargs)
    assert_state_equal(state(net), before)


@pytest.mark.parametrize("model", [MNISTMLP(4, 2), "vit", None])
def test_only_a_vision_transformer_is_loaded_into(model: object) -> None:
    with pytest.raises(TypeError, match=r"model must be a backbone\.VisionTransformer, got"):
        load_checkpoint(model, vit().state_dict())  # type: ignore[arg-type]


def test_a_path_like_object_is_a_path(tmp_path: Path) -> None:
    class Where(os.PathLike[str]):
        def __fspath__(self) -> str:
            return str(tmp_path / "vit.pth")

    source = vit(seed=1)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    net = vit(seed=2)
    load_checkpoint(net, Where())
    assert_same_model(net, source)


# --- against timm -------------------------------------------------------------------


def _timm():  # type: ignore[no-untyped-def]
    import timm

    return timm


def timm_vit(img: int = 32, patch: int = 8, classes: int = 5):  # type: ignore[no-untyped-def]
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    return TimmViT(img_size=img, patch_size=patch, num_classes=classes, embed_dim=DIM, depth=2, num_heads=HEADS)


@pytest.mark.timm
@pytest.mark.parametrize(("img", "patch"), [(32, 8), (48, 8), (16, 8), (32, 4)])
@pytest.mark.parametrize(("layout", "prefix"), NPZ_LAYOUTS)
def test_an_npz_file_loads_as_timms_load_pretrained_loads_it(
    tmp_path: Path, layout: str, prefix: str, img: int, patch: int
) -> None:
    """The same .npz into timm's ViT and ours: timm resizes with bilinear and no antialias, so those are passed."""
    path = save_npz(tmp_path / "ViT.npz", google_arrays(vit(seed=1), layout, prefix))
    reference = timm_vit(img, patch)
    reference.load_pretrained(str(path))
    net = vit(img=img, patch=patch, seed=2)
    load_checkpoint(net, path, interpolation="bilinear", antialias=False)
    assert_state_equal(state(net), state(reference))


@pytest.mark.timm
@pytest.mark.parametrize(("img", "patch"), [(48, 8), (16, 8), (40, 8), (32, 4), (32, 16)])
def test_a_state_dict_is_resampled_as_timms_checkpoint_filter_does(img: int, patch: int) -> None:
    from timm.models.vision_transformer import checkpoint_filter_fn

    source = vit(seed=1)
    reference = timm_vit(img, patch)
    reference.load_state_dict(checkpoint_filter_fn(source.state_dict(), reference))
    net = vit(img=img, patch=patch, seed=2)
    load_checkpoint(net, source.state_dict())
    loaded, expected = state(net), state(reference)
    assert_state_equal(
        {k: v for k, v in loaded.items() if k != "patch_embed.proj.weight"},
        {k: v for k, v in expected.items() if k != "patch_embed.proj.weight"},
    )
    torch.testing.assert_close(loaded["patch_embed.proj.weight"], expected["patch_embed.proj.weight"], rtol=0, atol=0)


@pytest.mark.timm
def test_position_resampling_matches_timms_resample_abs_pos_embed() -> None:
    from timm.layers import resample_abs_pos_embed

    source = vit(seed=1)
    for img in (16, 24, 40, 48, 64):
        net = vit(img=img, seed=2)
        load_checkpoint(net, source.state_dict())
        side = img // 8
        expected = resample_abs_pos_embed(source.pos_embed.detach(), new_size=[side, side], num_prefix_tokens=1)
        assert torch.equal(net.pos_embed.detach(), expected)


def test_a_model_that_load_state_dict_would_fill_half_way_or_not_at_all_is_refused() -> None:
    """A model made under inference_mode (torch writes some entries, then raises) or on meta (nothing is written)."""
    checkpoint = vit(seed=1).state_dict()
    with torch.inference_mode():
        made_there = vit(seed=2)
    before = state(made_there)
    with pytest.raises(ValueError, match=r"is an inference tensor .* build the model outside it"):
        load_checkpoint(made_there, checkpoint)
    assert_state_equal(state(made_there), before)
    with torch.device("meta"):
        on_meta = VisionTransformer(img_size=32, patch_size=8, num_classes=5, embed_dim=DIM, depth=2, num_heads=2)
    with pytest.raises(ValueError, match=r"on the meta device .* first \(model\.to_empty"):
        load_checkpoint(on_meta, checkpoint)


def test_mammoths_incremental_heads_load_as_the_one_head_they_make() -> None:
    """Mammoth's IncrementalClassifier: ``head.heads.{t}``, one linear head a task, logits concatenated."""
    source = vit(seed=1)
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    w, b = source.head.weight.detach(), source.head.bias.detach()
    sd |= {
        "head.heads.0.weight": w[:2],
        "head.heads.0.bias": b[:2],
        "head.heads.1.weight": w[2:],
        "head.heads.1.bias": b[2:],
    }
    net = vit(seed=2)
    assert load_checkpoint(net, sd) == []
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(net(x), source(x))
    del sd["head.heads.0.weight"], sd["head.heads.0.bias"]
    before = state(net)
    with pytest.raises(ValueError, match=r"Mammoth heads must be numbered 0, 1, \.\.\., got \[1\]"):
        load_checkpoint(net, sd)
    assert_state_equal(state(net), before)


def test_l2ps_position_rows_for_its_prompts_load_without_them() -> None:
    """L2P's pos_embed is [1, 1 + P + N, D], its prompt rows copies of the class row (frozen)."""
    source = vit(seed=1)
    sd = dict(source.state_dict())
    pos = sd["pos_embed"]
    sd["pos_embed"] = torch.cat([pos[:, :1], pos[:, :1].expand(1, 5, DIM), pos[:, 1:]], 1)
    net = vit(seed=2)
    assert load_checkpoint(net, sd) == []
    assert torch.equal(net.pos_embed, pos)
    prompts = torch.randn(5, DIM)
    x = torch.randn(2, 3, 32, 32)
    # What L2P computes: [cls, prompts, patches] + its pos_embed.
    assert torch.allclose(
        net.forward_features(x, prompts=prompts, prompt_pos="class"),
        l2p_tokens(source, x, prompts, sd["pos_embed"]),
        atol=1e-5,
    )
    sd["pos_embed"] = sd["pos_embed"].clone()
    sd["pos_embed"][0, 3] += 1.0
    before = state(net)
    with pytest.raises(ValueError, match=r"5 prompt rows after the class row \(L2P's layout\) that differ"):
        load_checkpoint(net, sd)
    assert_state_equal(state(net), before)


def test_l2ps_prompt_rows_are_recognised_when_with_the_patches_they_make_a_square() -> None:
    """9 prompt rows and 16 patch rows are 25, a 5x5 grid: the copies of the class row say they are L2P's."""
    source = vit(seed=1)
    sd = dict(source.state_dict())
    pos = sd["pos_embed"]
    sd["pos_embed"] = torch.cat([pos[:, :1], pos[:, :1].expand(1, 9, DIM), pos[:, 1:]], 1)
    net = vit(seed=2)
    assert load_checkpoint(net, sd) == []
    assert torch.equal(net.pos_embed, pos)


def l2p_tokens(net: VisionTransformer, x: Tensor, prompts: Tensor, pos_embed: Tensor) -> Tensor:
    patches = net.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([net.cls_token.expand(x.shape[0], 1, DIM), prompts.expand(x.shape[0], -1, -1), patches], 1)
    return net.norm(net.blocks(tokens + pos_embed))
