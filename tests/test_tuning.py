"""The ViT tuning hooks against forwards written by hand from the weights.

Every equivalence compares the package's ViT with hooks attached (or given at
the call) to :func:`reference`, which recomputes the model from its
parameters with plain tensor operations: attention written out as a softmax,
each linear layer with its weight delta added to the weight, prompts
concatenated, prefixes put before the keys and values. Nothing here calls the
hooks' own ``forward``.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import backbone
from backbone import (
    SSF_SITES,
    VisionTransformer,
    add_adapters,
    add_lora,
    add_prompts,
    add_ssf,
    check_backbone,
    freeze_base,
    get_grads,
    get_params,
    grow_classifier,
    is_tuning_parameter,
    merge_lora,
    remove_tuning,
    unmerge_lora,
)

RETURNTS = ("out", "features", "both", "full")


def tiny(depth: int = 3, dtype: torch.dtype = torch.float64) -> VisionTransformer:
    torch.manual_seed(0)
    net = VisionTransformer(img_size=16, patch_size=4, num_classes=5, embed_dim=8, depth=depth, num_heads=2)
    with torch.no_grad():  # fresh ViT weights are tiny; larger ones make differences show
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net.to(dtype).eval()


def images(batch: int = 3, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=dtype)


def randomise(module: nn.Module, seed: int = 2) -> None:
    """Give hooks non-trivial values (a fresh LoRA, adapter or SSF changes nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


# --- the reference -------------------------------------------------------------------------------------------------

Delta = Callable[[int, str], Tensor | None]  # (block, site) -> weight delta [out, in] or per sample [B, out, in]


def linear(x: Tensor, layer: nn.Linear, delta: Tensor | None) -> Tensor:
    weight = layer.weight if delta is None else layer.weight + delta
    out = torch.einsum("bti,boi->bto", x, weight) if weight.dim() == 3 else x @ weight.T
    return out if layer.bias is None else out + layer.bias


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.softmax(-1) @ v


def reference(
    net: VisionTransformer,
    x: Tensor,
    *,
    prompts: dict[int, Tensor] | None = None,
    prefixes: dict[int, Tensor] | None = None,
    delta: Delta = lambda i, site: None,
    ssf: Callable[[int, str], tuple[Tensor, Tensor] | None] = lambda i, site: None,
    adapter: Callable[[int], tuple[str, nn.Module] | None] = lambda i: None,
) -> dict[str, object]:
    """The ViT computed from its weights: final tokens, the class token, the logits and each block's patch tokens."""
    prompts, prefixes = prompts or {}, prefixes or {}

    def scaled(i: int, site: str, t: Tensor) -> Tensor:
        pair = ssf(i, site)
        return t if pair is None else t * pair[0] + pair[1]

    proj = net.patch_embed.proj
    patches = F.conv2d(x, proj.weight, proj.bias, stride=proj.stride)
    batch, dim, rows, cols = patches.shape
    tokens = torch.cat([net.cls_token.expand(batch, 1, dim), patches.flatten(2).transpose(1, 2)], 1) + net.pos_embed
    present, stages = 0, []
    for i, block in enumerate(net.blocks):
        if i in prompts:
            tokens = torch.cat([tokens[:, :1], prompts[i].expand(batch, -1, -1), tokens[:, 1 + present :]], 1)
            present = prompts[i].shape[-2]
        heads, length = block.attn.num_heads, tokens.shape[1]
        h = scaled(i, "norm1", F.layer_norm(tokens, (dim,), block.norm1.weight, block.norm1.bias, 1e-6))
        qkv = scaled(i, "qkv", linear(h, block.attn.qkv, delta(i, "qkv")))
        q, k, v = (t.reshape(batch, length, heads, -1).transpose(1, 2) for t in qkv.split(dim, -1))
        if i in prefixes:
            pk, pv = (
                t.expand(batch, -1, -1).reshape(batch, -1, heads, dim // heads).transpose(1, 2)
                for t in prefixes[i].unbind(-3)
            )
            k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
        a = attention(q, k, v).transpose(1, 2).reshape(batch, length, dim)
        tokens = tokens + scaled(i, "proj", linear(a, block.attn.proj, delta(i, "proj")))
        h = scaled(i, "norm2", F.layer_norm(tokens, (dim,), block.norm2.weight, block.norm2.bias, 1e-6))
        h = F.gelu(scaled(i, "fc1", linear(h, block.mlp.fc1, delta(i, "fc1"))))
        m = scaled(i, "fc2", linear(h, block.mlp.fc2, delta(i, "fc2")))
        found = adapter(i)
        if found is None:
            tokens = tokens + m
        else:
            mode, ad = found
            src = tokens if mode == "parallel" else m
            tokens = (
                tokens + m + ad.scale * (F.relu(src @ ad.down.weight.T + ad.down.bias) @ ad.up.weight.T + ad.up.bias)
            )
        stages.append(tokens[:, 1 + present :].reshape(batch, rows, cols, dim).permute(0, 3, 1, 2))
    final = F.layer_norm(tokens, (dim,), net.norm.weight, net.norm.bias, 1e-6)
    features = final[:, 0]
    return {
        "tokens": final,
        "features": features,
        "logits": features @ net.head.weight.T + net.head.bias,
        "stages": stages,
    }


def assert_every_returnt(
    net: VisionTransformer, x: Tensor, ref: dict[str, object], tol: float = 1e-10, **call: object
) -> None:
    """Every returnt, forward_features and forward_intermediates agree with the reference."""

    def close(a: Tensor, b: object) -> None:
        assert isinstance(b, Tensor) and a.shape == b.shape, (a.shape, getattr(b, "shape", None))
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)

    close(net(x, **call), ref["logits"])
    close(net(x, returnt="features", **call), ref["features"])
    logits, features = net(x, returnt="both", **call)
    close(logits, ref["logits"])
    close(features, ref["features"])
    logits, stages = net(x, returnt="full", **call)
    close(logits, ref["logits"])
    assert len(stages) == len(ref["stages"])  # type: ignore[arg-type]
    for got, want in zip(stages, ref["stages"], strict=True):  # type: ignore[call-overload]
        close(got, want)
    close(net.forward_features(x, **call), ref["tokens"])
    final, last = net.forward_intermediates(x, indices=1, output_fmt="NLC", **call)
    close(final, ref["tokens"])
    want = ref["stages"][-1]  # type: ignore[index]
    close(last[0], want.flatten(2).transpose(1, 2))


# --- nothing attached ----------------------------------------------------------------------------------------------


def plain_float32(net: VisionTransformer, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Today's forward op for op (module calls in the same order), for a bit-for-bit comparison."""
    t = net.patch_embed.proj(x).flatten(2).transpose(1, 2)
    t = torch.cat([net.cls_token.expand(x.shape[0], -1, -1), t], dim=1) + net.pos_embed
    stages = []
    for block in net.blocks:
        attn = block.attn
        batch, length, dim = t.shape
        h = block.norm1(t)
        qkv = attn.qkv(h).reshape(batch, length, 3, attn.num_heads, dim // attn.num_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        t = t + attn.proj(a.transpose(1, 2).reshape(batch, length, dim))
        t = t + block.mlp.fc2(block.mlp.act(block.mlp.fc1(block.norm2(t))))
        stages.append(t[:, 1:].reshape(batch, 4, 4, dim).permute(0, 3, 1, 2))
    return net.head(net.norm(t)[:, 0]), stages


def test_with_nothing_attached_the_model_is_bit_for_bit_the_plain_vit() -> None:
    net = tiny(2, torch.float32)
    x = images(dtype=torch.float32)
    logits, stages = plain_float32(net, x)
    assert torch.equal(net(x), logits)
    got_logits, got_stages = net(x, returnt="full")
    assert torch.equal(got_logits, logits)
    assert all(torch.equal(a, b) for a, b in zip(got_stages, stages, strict=True))
    # Call-time arguments that add nothing change nothing either (Mammoth passes AB={}).
    assert torch.equal(net(x, AB={}, prompts=None, prefixes={}), logits)
    assert torch.equal(net(x, AB={0: {}, 1: None}), logits)
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(2):
        keys += [
            f"blocks.{i}.{name}.{kind}"
            for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
            for kind in ("weight", "bias")
        ]
    keys += ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    assert list(net.state_dict()) == keys
    assert [name for name, _ in net.named_parameters()] == keys


def test_attaching_every_hook_then_removing_them_gives_back_the_plain_model() -> None:
    net = tiny()
    x = images()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    logits, stages = net(x, returnt="full")
    for module in add_lora(net, 2) + add_adapters(net, 3) + add_ssf(net) + [add_prompts(net, 2, blocks=(0, 2))]:
        randomise(module)
    merge_lora(net)
    assert not torch.allclose(net(x), logits)
    remove_tuning(net)
    assert list(net.state_dict()) == list(before)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    got_logits, got_stages = net(x, returnt="full")
    assert torch.equal(got_logits, logits)
    assert all(torch.equal(a, b) for a, b in zip(got_stages, stages, strict=True))


@pytest.mark.parametrize("factory", [backbone.vit_tiny_patch16_224, backbone.vit_base_patch16_224])
def test_fresh_hooks_on_full_size_vits_change_no_output_of_any_returnt(
    factory: Callable[[int], VisionTransformer],
) -> None:
    # A fresh LoRA (B = 0), adapter (up = 0) and SSF (scale 1, shift 0) add exact zeros.
    torch.manual_seed(0)
    net = factory(10).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        plain = {r: net(x, returnt=r) for r in RETURNTS}
        add_lora(net, 4)
        add_adapters(net, 8, blocks=[0, 11])
        add_ssf(net, blocks=[5])
        hooked = {r: net(x, returnt=r) for r in RETURNTS}
        prompted_logits, prompted_stages = net(
            x, returnt="full", prompts={0: torch.randn(4, net.feature_dim), 6: torch.randn(2, net.feature_dim)}
        )
    flatten = lambda out: list(out) if isinstance(out, tuple) else [out]  # noqa: E731
    for r in RETURNTS:
        for a, b in zip(flatten(plain[r]), flatten(hooked[r]), strict=True):
            pairs = zip(a, b, strict=True) if isinstance(a, list) else [(a, b)]
            assert all(torch.equal(u, v) for u, v in pairs), r
    assert prompted_logits.shape == (1, 10)
    assert [tuple(s.shape) for s in prompted_stages] == [(1, net.feature_dim, 14, 14)] * 12


# --- LoRA ------------------------------------------------------------------------------------------------------------


def test_lora_equals_the_model_with_scale_b_a_added_to_each_weight() -> None:
    net = tiny()
    x = images()
    loras = add_lora(net, 3, sites=("qkv", "fc2"), blocks=[0, 2], alpha=6.0)
    for lora in loras:
        randomise(lora)
    by_place = {(i, s): lora for (i, s), lora in zip(itertools.product([0, 2], ["qkv", "fc2"]), loras, strict=True)}
    assert all(lora.scale == 2.0 for lora in loras)

    def delta(i: int, site: str) -> Tensor | None:
        lora = by_place.get((i, site))
        return None if lora is None else 2.0 * lora.B @ lora.A

    assert_every_returnt(net, x, reference(net, x, delta=delta))


def test_merge_then_unmerge_is_an_exact_round_trip_and_merged_outputs_match() -> None:
    net = tiny()
    x = images()
    for lora in add_lora(net, 2):
        randomise(lora)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    unmerged = net(x, returnt="full")
    assert merge_lora(net) == 12
    assert merge_lora(net) == 0  # already merged
    assert not torch.equal(net.blocks[1].mlp.fc1.weight, state["blocks.1.mlp.fc1.weight"])
    merged = net(x, returnt="full")
    torch.testing.assert_close(merged[0], unmerged[0], rtol=1e-10, atol=1e-10)
    # While merged the LoRA modules are skipped: the plain reference on the merged weights gives the outputs.
    plain = reference(net, x)
    torch.testing.assert_close(merged[0], plain["logits"], rtol=1e-10, atol=1e-10)
    assert unmerge_lora(net) == 12
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert torch.equal(net(x), unmerged[0])


def test_unmerge_refuses_after_the_merged_weight_changed_and_changes_nothing() -> None:
    net = tiny()
    for lora in add_lora(net, 2, sites=["proj"]):
        randomise(lora)
    merge_lora(net)
    with torch.no_grad():
        net.blocks[2].attn.proj.weight[0, 0] += 1.0
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="changed since merge_lora"):
        unmerge_lora(net)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert all(lora.merged for lora in net.modules() if isinstance(lora, backbone.LoRA))
    with pytest.raises(ValueError, match="changed since merge_lora"):
        remove_tuning(net)
    assert "lora" in net.blocks[0].attn.proj.tuning


@pytest.mark.parametrize("convert", ["none", "double", "deepcopy"])
def test_unmerge_refuses_a_write_through_data_which_moves_no_version_counter(convert: str) -> None:
    net = tiny(dtype=torch.float32)
    for lora in add_lora(net, 2, sites=["fc1"]):
        randomise(lora)
    merge_lora(net)
    net = {"none": lambda n: n, "double": lambda n: n.double(), "deepcopy": copy.deepcopy}[convert](net)
    weight = net.blocks[1].mlp.fc1.weight
    weight.data.add_(1e-12 if convert == "double" else 1.0)  # 1e-12 is below float32's rounding, not float64's
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="changed since merge_lora"):
        unmerge_lora(net)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert all(lora.merged for lora in net.modules() if isinstance(lora, backbone.LoRA))


def test_merge_and_unmerge_on_inference_tensors_are_refused_before_any_write() -> None:
    """torch writes an inference tensor in place and then raises, outside inference mode (found by red-teaming)."""
    with torch.inference_mode():
        net = tiny()
        for lora in add_lora(net, 2, sites=["qkv"]):
            randomise(lora)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="merge_lora: the weights are inference tensors"):
        merge_lora(net)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert not any(lora.merged for lora in net.modules() if isinstance(lora, backbone.LoRA))
    with torch.inference_mode():
        assert merge_lora(net) == 3
    merged = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="unmerge_lora: the weights are inference tensors"):
        unmerge_lora(net)
    assert all(torch.equal(v, merged[k]) for k, v in net.state_dict().items())
    with torch.inference_mode():
        assert unmerge_lora(net) == 3
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_a_lora_converted_apart_from_its_layer_is_refused() -> None:
    net = tiny(dtype=torch.float32)
    for lora in add_lora(net, 2, sites=["qkv"]):
        randomise(lora)
    merge_lora(net)
    net.blocks[0].attn.qkv.tuning.half()  # the kept weight lives in the LoRA: now half precision, the layer's is not
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="moved or converted apart"):
        unmerge_lora(net)
    assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())


def test_after_a_coarser_dtype_each_elements_change_is_judged_by_its_own_rounding() -> None:
    net = tiny(dtype=torch.float32)
    for lora in add_lora(net, 2, sites=["proj"]):
        randomise(lora)
    merge_lora(net)
    net.to(torch.bfloat16)
    weight = net.blocks[1].attn.proj.weight
    small = int(weight.detach().abs().argmin())
    with torch.no_grad():
        weight.view(-1)[small] += 100 * max(float(weight.view(-1)[small].abs()), 1e-6)  # far above its rounding
    with pytest.raises(ValueError, match="changed since merge_lora"):
        unmerge_lora(net)


def test_merged_state_follows_the_model_to_another_dtype_refusal_not_corruption() -> None:
    net = tiny()
    for lora in add_lora(net, 2, sites=["fc1"]):
        randomise(lora)
    merge_lora(net)
    copied = copy.deepcopy(net)
    assert unmerge_lora(copied) == 3  # the kept weights travel with a copy
    assert torch.equal(copied.blocks[0].mlp.fc1.weight, tiny().blocks[0].mlp.fc1.weight)


# --- Mammoth's AB ----------------------------------------------------------------------------------------------------


def mammoth_delta_per_sample(entry: object, batch: int) -> Tensor:
    """Mammoth's rule per sample: the delta is B (or B @ A); leading dims broadcast to [batch, K], summed over K."""
    if isinstance(entry, dict):
        b, a = entry["B"], entry.get("A")
    else:
        b, a = entry, None
    full = b if a is None else b @ a  # [..., out, in]
    while full.dim() < 4:
        full = full.unsqueeze(0)
    full = full.expand(batch, -1, -1, -1)
    return full.sum(1)  # [batch, out, in]


def ab_forms(batch: int, out: int, inn: int, g: torch.Generator) -> dict[str, object]:
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.2  # noqa: E731
    return {
        "delta": r(out, inn),
        "B only": {"B": r(out, inn)},
        "A and B": {"A": r(2, inn), "B": r(out, 2)},
        "stacked": {"A": r(3, 2, inn), "B": r(3, out, 2)},
        "per sample": {"A": r(batch, 2, 2, inn), "B": r(batch, 2, out, 2)},
        "per-sample delta": r(batch, 1, out, inn),
    }


@pytest.mark.parametrize("form", ["delta", "B only", "A and B", "stacked", "per sample", "per-sample delta"])
def test_ab_deltas_follow_mammoths_semantics_in_every_form(form: str) -> None:
    net = tiny()
    x = images()
    g = torch.Generator().manual_seed(3)
    sizes = {"qkv": (24, 8), "proj": (8, 8), "fc1": (32, 8), "fc2": (8, 32)}
    ab = {
        i: {site: ab_forms(3, *sizes[site], g)[form] for site in sites}
        for i, sites in [(0, ["qkv", "fc2"]), (2, ["proj", "fc1"])]
    }

    def delta(i: int, site: str) -> Tensor | None:
        entry = ab.get(i, {}).get(site)
        return None if entry is None else mammoth_delta_per_sample(entry, 3)

    assert_every_returnt(net, x, reference(net, x, delta=delta), AB=ab)


def test_ab_on_top_of_an_attached_lora_adds_both() -> None:
    net = tiny()
    x = images()
    (lora,) = add_lora(net, 2, sites=["qkv"], blocks=[1])
    randomise(lora)
    ab_delta = torch.randn(24, 8, dtype=torch.float64) * 0.1
    ref = reference(net, x, delta=lambda i, s: lora.B @ lora.A + ab_delta if (i, s) == (1, "qkv") else None)
    assert_every_returnt(net, x, ref, AB={1: {"qkv": ab_delta}})


def test_ab_gradients_reach_the_factors_the_method_holds() -> None:
    net = tiny()
    x = images()
    a = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(24, 2, dtype=torch.float64, requires_grad=True)
    net(x, AB={0: {"qkv": {"A": a, "B": b}}}).sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0
    assert a.grad is not None and torch.equal(a.grad, torch.zeros_like(a))  # B = 0 blocks A's gradient


# --- prompts and prefixes --------------------------------------------------------------------------------------------


def test_shallow_prompts_equal_concatenating_the_tokens_after_the_class_token() -> None:
    net = tiny()
    x = images()
    per_sample = torch.randn(3, 4, 8, dtype=torch.float64)
    assert_every_returnt(net, x, reference(net, x, prompts={0: per_sample}), prompts=per_sample)
    shared = torch.randn(4, 8, dtype=torch.float64)
    assert_every_returnt(net, x, reference(net, x, prompts={0: shared}), prompts=shared)
    assert net.forward_features(x, prompts=shared).shape == (3, 1 + 4 + 16, 8)


def test_deep_prompts_replace_the_earlier_prompts_before_each_chosen_block() -> None:
    net = tiny()
    x = images()
    given = {0: torch.randn(1, 4, 8, dtype=torch.float64), 2: torch.randn(3, 2, 8, dtype=torch.float64)}
    ref = reference(net, x, prompts=given)
    assert_every_returnt(net, x, ref, prompts=given)
    assert net.forward_features(x, prompts=given).shape == (3, 1 + 2 + 16, 8)
    _, pairs = net.forward_intermediates(x, return_prefix_tokens=True, output_fmt="NLC")
    assert [tuple(p.shape) for _, p in pairs] == [(3, 1, 8)] * 3
    _, pairs = net.forward_intermediates(x, return_prefix_tokens=True, output_fmt="NLC", prompts=given)
    assert [tuple(p.shape) for _, p in pairs] == [(3, 5, 8), (3, 5, 8), (3, 3, 8)]


def test_attached_prompt_tokens_equal_the_same_prompts_given_at_the_call() -> None:
    net = tiny()
    x = images()
    prompts = add_prompts(net, 3, blocks=(1, 2))
    ref = reference(net, x, prompts={1: prompts.tokens[0], 2: prompts.tokens[1]})
    assert_every_returnt(net, x, ref)
    with pytest.raises(ValueError, match="block 2, which has prompts attached"):
        net(x, prompts={2: torch.zeros(3, 8, dtype=torch.float64)})
    # Other blocks may still get prompts at the call.
    extra = torch.randn(2, 8, dtype=torch.float64)
    ref = reference(net, x, prompts={0: extra, 1: prompts.tokens[0], 2: prompts.tokens[1]})
    assert_every_returnt(net, x, ref, prompts={0: extra})


def test_prefixes_equal_an_attention_with_the_extra_keys_and_values() -> None:
    net = tiny()
    x = images()
    given = {0: torch.randn(3, 2, 5, 8, dtype=torch.float64), 2: torch.randn(2, 1, 8, dtype=torch.float64)}
    assert_every_returnt(net, x, reference(net, x, prefixes=given), prefixes=given)
    # Prefixes change attention only: the token count stays.
    assert net.forward_features(x, prefixes=given).shape == (3, 17, 8)


def test_l2p_style_per_sample_prompt_selection_trains_the_pool_through_the_backbone() -> None:
    net = tiny()
    freeze_base(net)
    x = images()
    pool = nn.Parameter(torch.randn(6, 2, 8, dtype=torch.float64))  # 6 prompts of 2 tokens
    keys = nn.Parameter(torch.randn(6, 8, dtype=torch.float64))
    with torch.no_grad():
        query = net(x, returnt="features")
    chosen = (F.normalize(query, dim=1) @ F.normalize(keys, dim=1).T).topk(2, dim=1).indices  # [3, 2]
    prompts = pool[chosen].flatten(1, 2)  # [3, 4, 8]
    loss = net(x, prompts=prompts).sum()
    loss.backward()
    assert pool.grad is not None
    used = set(chosen.flatten().tolist())
    assert all((pool.grad[k].abs().sum() > 0) == (k in used) for k in range(6))
    assert all(p.grad is None for p in net.parameters() if not p.requires_grad)


# --- adapters and SSF ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_adapters_equal_the_hand_written_block(mode: str) -> None:
    net = tiny()
    x = images()
    adapters = add_adapters(net, 3, mode=mode, blocks=[0, 2], scale=0.5)
    for adapter in adapters:
        randomise(adapter)
    by_block = dict(zip([0, 2], adapters, strict=True))
    ref = reference(net, x, adapter=lambda i: (mode, by_block[i]) if i in by_block else None)
    assert_every_returnt(net, x, ref)


def test_ssf_equals_scale_and_shift_after_each_chosen_output() -> None:
    net = tiny()
    x = images()
    sites = ("norm1", "qkv", "fc2")
    modules = add_ssf(net, sites=sites, blocks=[1, 2])
    for m in modules:
        randomise(m)
    by_place = dict(zip(itertools.product([1, 2], sites), modules, strict=True))
    ref = reference(
        net, x, ssf=lambda i, s: (by_place[i, s].scale, by_place[i, s].shift) if (i, s) in by_place else None
    )
    assert_every_returnt(net, x, ref)
    assert len(add_ssf(net, blocks=[0])) == len(SSF_SITES)


# --- freezing, selection, growth, the checker ------------------------------------------------------------------------


def test_freeze_base_leaves_exactly_the_hooks_for_the_trainable_selection() -> None:
    net = tiny()
    hooks = add_lora(net, 2, sites=["qkv"]) + add_adapters(net, 2, blocks=[1]) + [add_prompts(net, 2)]
    names = freeze_base(net)
    hook_params = [p for h in hooks for p in h.parameters()]
    assert {id(p) for p in net.parameters() if p.requires_grad} == {id(p) for p in hook_params}
    assert names == [n for n, _ in net.named_parameters() if is_tuning_parameter(n)]
    x = images()
    for h in hooks:
        randomise(h)
    net(x).square().sum().backward()
    want = torch.cat([p.grad.flatten() for n, p in net.named_parameters() if is_tuning_parameter(n)])
    assert torch.equal(get_grads(net, select="trainable"), want)
    assert torch.equal(get_grads(net, select=is_tuning_parameter), want)
    assert get_params(net, select="trainable").numel() == sum(p.numel() for p in hook_params)
    with_head = freeze_base(net, train_head=True)
    assert with_head == [n for n, _ in net.named_parameters() if is_tuning_parameter(n) or n.startswith("head.")]
    assert "head.weight" in with_head and net.head.weight.requires_grad


def test_the_head_grows_with_hooks_attached_and_their_optimizer_state_survives() -> None:
    net = tiny()
    x = images()
    loras = add_lora(net, 2, sites=["qkv"])
    freeze_base(net, train_head=True)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net(x).sum().backward()
    opt.step()
    before = net(x)
    state = opt.state[loras[0].B]["exp_avg"].clone()
    grow_classifier(net, 7, optimizer=opt)
    after = net(x)
    assert after.shape == (3, 7)
    torch.testing.assert_close(after[:, :5], before, rtol=0, atol=1e-12)
    assert torch.equal(opt.state[loras[0].B]["exp_avg"], state)


@pytest.mark.parametrize("hook", ["lora", "adapter", "ssf", "prompts"])
def test_the_checker_passes_a_frozen_vit_with_each_hook(hook: str) -> None:
    net = tiny(2, torch.float32)
    attach = {
        "lora": lambda: add_lora(net, 2),
        "adapter": lambda: add_adapters(net, 2),
        "ssf": lambda: add_ssf(net),
        "prompts": lambda: [add_prompts(net, 2, blocks=(0, 1))],
    }[hook]
    for module in attach():
        randomise(module)
    freeze_base(net)
    results = check_backbone(net, images(2, torch.float32))
    assert [r for r in results if r.status == "fail"] == []
    assert sum(r.status == "pass" for r in results) > 10


# --- refusals --------------------------------------------------------------------------------------------------------


def snapshot(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def unchanged(net: nn.Module, before: dict[str, Tensor]) -> bool:
    now = net.state_dict()
    return list(now) == list(before) and all(torch.equal(now[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda net: add_lora(net, 0), ValueError, "rank must be a positive int, got 0"),
        (lambda net: add_lora(net, 2, sites=["qkv", "bogus"]), ValueError, "got 'bogus'"),
        (lambda net: add_lora(net, 2, blocks=[0, 3]), ValueError, "block index 3 is out of range"),
        (lambda net: add_lora(net, 2, blocks=[]), ValueError, "at least one block"),
        (
            lambda net: add_lora(nn.Linear(2, 2), 2),
            TypeError,
            "Linear has no ViT blocks in timm's layout; pass target_modules",
        ),
        (
            lambda net: add_lora(net, 2, target_modules=["norm1"]),
            ValueError,
            r"must pick Linear modules, but it picks blocks\.0\.norm1",
        ),
        (
            lambda net: add_lora(net, 2, target_modules=["qkvv"]),
            ValueError,
            r"matches no module; the Linear modules are blocks\.0\.attn\.qkv",
        ),
        (lambda net: add_lora(net, 2, target_modules="blocks.[0-9+"), ValueError, "not a valid regular expression"),
        (lambda net: add_lora(net, 2, target_modules=[]), TypeError, "non-empty sequence of module names"),
        (lambda net: add_lora(net, 2, target_modules=["qkv"], blocks=[0]), ValueError, "not both"),
        (lambda net: add_adapters(net, 2, target_modules=["qkv"]), ValueError, "input and output widths equal"),
        (lambda net: add_adapters(net, 2, mode="serial"), ValueError, "'parallel' or 'sequential', got 'serial'"),
        (lambda net: add_ssf(net, sites=[]), ValueError, "at least one site"),
        (lambda net: add_prompts(net, 2, blocks=(2, 1)), ValueError, "increasing order"),
        (lambda net: freeze_base(net, train_head=1), TypeError, "train_head"),
    ],
)
def test_bad_attachments_are_refused_and_change_nothing(
    call: Callable[[nn.Module], object], error: type[Exception], match: str
) -> None:
    net = tiny()
    add_lora(net, 2, sites=["qkv"], blocks=[0])
    before = snapshot(net)
    grads = [p.requires_grad for p in net.parameters()]
    with pytest.raises(error, match=match):
        call(net)
    assert unchanged(net, before)
    assert [p.requires_grad for p in net.parameters()] == grads


def test_a_taken_place_refuses_the_whole_attachment() -> None:
    net = tiny()
    add_lora(net, 2, sites=["fc1"], blocks=[2])
    before = snapshot(net)
    with pytest.raises(ValueError, match=r"blocks\.2\.mlp\.fc1 already has 'lora' attached"):
        add_lora(net, 2)  # blocks 0 and 1 were free, but nothing is attached
    assert unchanged(net, before)
    add_prompts(net, 2)
    with pytest.raises(ValueError, match="already has prompts"):
        add_prompts(net, 3)


def z(*shape: int) -> Tensor:
    return torch.zeros(*shape, dtype=torch.float64)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prompts": z(4, 7)}, ValueError, r"prompts for block 0 must be \[3, L, 8\]"),
        ({"prompts": z(2, 4, 8)}, ValueError, "prompts for block 0"),
        ({"prefixes": {0: z(2, 0, 8)}}, ValueError, "L > 0"),
        ({"values": {0: z(3, 7)}}, ValueError, r"values for block 0 must be \[3, 8\] or \[8\]"),
        ({"prompt_mode": "prepend"}, ValueError, "prompt_mode must be one of 'replace', 'add'"),
        ({"prompts": [z(4, 8)]}, TypeError, "a tensor, a function or a mapping"),
        ({"prompts": {3: z(4, 8)}}, ValueError, "block index 3 is out of range"),
        ({"prompts": {"0": z(4, 8)}}, TypeError, "keyed by block index"),
        ({"prompts": torch.zeros(4, 8, dtype=torch.float32)}, TypeError, "dtype torch.float64"),
        ({"prompts": torch.zeros(4, 8, dtype=torch.long)}, TypeError, "floating point"),
        ({"prefixes": {0: z(3, 8)}}, ValueError, r"prefixes for block 0 must be \[3, 2, L, 8\]"),
        ({"prefixes": z(2, 3, 8)}, TypeError, "mapping"),
        ({"AB": {0: {"qkv": z(8, 24)}}}, ValueError, r"AB\[0\]\['qkv'\] must be \[\.\.\., 24, 8\]"),
        ({"AB": {0: {"attn": z(24, 8)}}}, ValueError, "names layers out of"),
        ({"AB": {0: {"qkv": {"A": z(2, 8)}}}}, ValueError, "got keys"),
        (
            {"AB": {0: {"qkv": {"A": z(2, 8), "B": z(24, 3)}}}},
            ValueError,
            "A \\[\\.\\.\\., r, 8\\]",
        ),
        ({"AB": {0: {"qkv": z(2, 1, 24, 8)}}}, ValueError, r"broadcast against \[3, 1\]"),
        ({"AB": {0: {"qkv": z(3, 3, 3, 24, 8)}}}, ValueError, "broadcast"),
        ({"AB": {0: z(24, 8)}}, TypeError, "must map layer names"),
        ({"AB": [{}]}, TypeError, "mapping"),
    ],
)
def test_bad_call_time_arguments_are_refused_before_anything_runs(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    net = tiny()
    x = images()
    before = snapshot(net)
    for returnt in RETURNTS:
        with pytest.raises(error, match=match):
            net(x, returnt=returnt, **kwargs)
    with pytest.raises(error, match=match):
        net.forward_intermediates(x, **kwargs)
    assert unchanged(net, before)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: backbone.LoRA(4, 4, rank=0), "rank"),
        (lambda: backbone.LoRA(4, 4, rank=2, alpha=float("nan")), "alpha"),
        (lambda: backbone.Adapter(4, 0), "bottleneck"),
        (lambda: backbone.Adapter(4, 2, scale=True), "scale"),
        (lambda: backbone.SSF(0), "dim"),
        (lambda: backbone.PromptTokens(2, 4, blocks=()), "blocks"),
    ],
)
def test_hook_modules_refuse_bad_sizes(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


# --- found by red-teaming ------------------------------------------------------------------------------------------


def merged_tiny() -> tuple[VisionTransformer, dict[str, Tensor]]:
    net = tiny(dtype=torch.float32)
    for lora in add_lora(net, 2):
        randomise(lora)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    merge_lora(net)
    return net, before


@pytest.mark.parametrize("convert", ["double", "deepcopy"])
def test_unmerge_after_converting_or_copying_the_merged_model_restores_the_kept_weights(convert: str) -> None:
    net, before = merged_tiny()
    net = net.double() if convert == "double" else copy.deepcopy(net)
    assert unmerge_lora(net) == 12
    for key, value in before.items():
        assert torch.equal(net.state_dict()[key], value.to(net.state_dict()[key].dtype)), key


def test_training_the_factors_while_merged_does_not_block_the_unmerge() -> None:
    net, before = merged_tiny()
    loras = [m for m in net.modules() if isinstance(m, backbone.LoRA)]
    opt = torch.optim.SGD([p for lora in loras for p in lora.parameters()], lr=0.1, weight_decay=0.1)
    for lora in loras:
        lora.B.grad = torch.zeros_like(lora.B)
        lora.A.grad = torch.zeros_like(lora.A)
    opt.step()  # weight decay moves A and B; the merged weights are not touched
    assert unmerge_lora(net) == 12
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items() if ".tuning." not in k)


def test_a_nan_in_a_factor_does_not_block_the_unmerge() -> None:
    net, before = merged_tiny()
    unmerge_lora(net)
    with torch.no_grad():
        net.blocks[0].attn.qkv.tuning.lora.B[0, 0] = float("nan")
    merge_lora(net)
    assert unmerge_lora(net) == 12
    assert torch.equal(net.blocks[0].attn.qkv.weight, before["blocks.0.attn.qkv.weight"])


def test_merge_and_unmerge_on_the_meta_device_are_refused_clearly() -> None:
    net, _ = merged_tiny()
    net.to("meta")
    with pytest.raises(ValueError, match="meta device"):
        unmerge_lora(net)
    fresh = tiny(dtype=torch.float32)
    add_lora(fresh, 2)
    fresh.to("meta")
    with pytest.raises(ValueError, match="meta device"):
        merge_lora(fresh)


def test_a_refused_attachment_draws_no_random_numbers() -> None:
    net = tiny()
    add_lora(net, 2, sites=["fc1"], blocks=[2])
    add_prompts(net, 2)
    state = torch.get_rng_state()
    with pytest.raises(ValueError):
        add_lora(net, 2)
    with pytest.raises(ValueError):
        add_prompts(net, 3)
    assert torch.equal(torch.get_rng_state(), state)


def test_call_time_tensors_under_autocast_must_be_the_models_or_autocasts_dtype() -> None:
    net = tiny(dtype=torch.float32)
    x = images(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(x, prompts=torch.zeros(2, 8, dtype=torch.bfloat16)).shape == (3, 5)
        assert net(x, prompts=torch.zeros(2, 8)).shape == (3, 5)
        for kwargs in (
            {"prompts": torch.zeros(2, 8, dtype=torch.float64)},
            {"prefixes": {0: torch.zeros(2, 2, 8, dtype=torch.float16)}},
            {"AB": {0: {"qkv": torch.zeros(24, 8, dtype=torch.float64)}}},
        ):
            with pytest.raises(TypeError, match=r"dtype torch.float32 or torch.bfloat16"):
                net(x, **kwargs)
        with pytest.raises(TypeError, match=r"dtype torch.float32 or torch.bfloat16, got torch.float64"):
            net(x.double())


def test_sparse_prompts_and_inputs_on_another_device_are_refused() -> None:
    net = tiny()
    x = images()
    with pytest.raises(TypeError, match="dense"):
        net(x, prompts=torch.zeros(2, 8, dtype=torch.float64).to_sparse())
    with pytest.raises(ValueError, match="device"):
        net(x.to("meta"))


@pytest.mark.parametrize("flag", ["norm", "stop_early", "return_prefix_tokens", "intermediates_only"])
def test_forward_intermediates_refuses_flags_that_are_not_bools(flag: str) -> None:
    with pytest.raises(TypeError, match=flag):
        tiny().forward_intermediates(images(), **{flag: "no"})


def test_messages_name_the_shape_given_and_the_model_expected() -> None:
    net = tiny()
    with pytest.raises(ValueError, match=r"got shape \(2, 7\)$"):
        net(images(), prompts=torch.zeros(2, 7, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"^expected a torch.nn.Module as add_lora's model, got NoneType$"):
        add_lora(None, 2)  # type: ignore[arg-type]


# --- found by red-teaming tuning by site --------------------------------------------------------------------------


def test_a_module_with_a_tuning_attribute_of_its_own_is_not_a_site() -> None:
    net = tiny()
    add_adapters(net, 2, blocks=[0])
    before = snapshot(net)
    with pytest.raises(ValueError, match=r"blocks\.0 has a 'tuning' attribute of its own"):
        add_adapters(net, 2, target_modules=["blocks.0"])
    assert unchanged(net, before)

    class Own(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.tuning = nn.ModuleDict({"mine": nn.Linear(3, 3)})

        def forward(self, x: Tensor) -> Tensor:
            return self.tuning["mine"](self.fc(x))

    model = Own()
    add_lora(model, 2, target_modules=["fc"])
    remove_tuning(model)
    assert "mine" in model.tuning  # a container of the model's own is left alone


def test_lora_refuses_linear_subclasses_and_works_on_a_layer_called_by_keyword() -> None:
    mha = nn.MultiheadAttention(4, 2)
    with pytest.raises(ValueError, match=r"out_proj is a NonDynamicallyQuantizableLinear, not an nn\.Linear"):
        add_lora(mha, 2, target_modules=["out_proj"])

    class ByKeyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(input=x)  # type: ignore[no-any-return]

    model = ByKeyword()
    (lora,) = add_lora(model, 1, target_modules=["fc"])
    with torch.no_grad():
        lora.B.fill_(1.0)
    x = torch.randn(4, 3)
    assert torch.allclose(model(x), x @ (model.fc.weight + lora.delta()).T + model.fc.bias, atol=1e-6)


def test_a_hooked_module_that_returns_no_tensor_is_a_clear_type_error() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return self.fc(x), x

    model = nn.Sequential(Pair())
    add_adapters(model, 2, target_modules=["0"], mode="sequential")
    with pytest.raises(TypeError, match=r"a tuning hook needs its layer \(Pair\) to return a tensor, got tuple"):
        model(torch.randn(2, 4))


def test_two_layers_sharing_a_weight_cannot_merge_their_loras() -> None:
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), nn.Linear(3, 3))
    model[2].weight = shared.weight
    loras = add_lora(model, 1, target_modules=["0", "2"])
    for lora in loras:
        randomise(lora)
    weight = shared.weight.detach().clone()
    with pytest.raises(ValueError, match="share one weight"):
        merge_lora(model)
    assert torch.equal(shared.weight, weight) and not any(lora.merged for lora in loras)
    remove_tuning(model)


def test_adapters_by_blocks_belong_to_the_package_vit_and_say_the_way_elsewhere() -> None:
    mlp = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="pass target_modules"):
        add_adapters(mlp, 2, blocks=[0])


def test_unmerge_after_a_coarser_dtype_accepts_its_rounding_with_small_factors() -> None:
    net = tiny(dtype=torch.float32)
    for lora in add_lora(net, 2, sites=["qkv"]):
        with torch.no_grad():
            lora.B.normal_(0, 0.01)
    merge_lora(net)
    net.half()
    assert unmerge_lora(net) == 3
