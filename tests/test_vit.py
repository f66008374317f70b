"""The reference ViT as Mammoth's ViT methods call it, against forwards written out from the weights.

Each method family's way of feeding the ViT is written here as its authors
wrote it (DualPrompt prepends each layer's prompts in front of the whole
sequence, DAP makes each block's prompts from that block's input,
STAR-Prompt adds a per-sample offset to every value, L2P pools the prompt
tokens, SLCA and RanPAC read features from a head-less ViT), with plain
tensor operations, and compared with the package's ViT on the same weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from backbone import VisionTransformer, call_inputs, check_backbone

DIM, HEADS, DEPTH = 8, 2, 3


def tiny(**kwargs: object) -> VisionTransformer:
    torch.manual_seed(0)
    options: dict[str, object] = {"num_classes": 5, **kwargs}
    net = VisionTransformer(img_size=16, patch_size=4, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, **options)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net.double().eval()


def images(batch: int = 3) -> Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def randn(*shape: int, seed: int = 3) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def block(net: VisionTransformer, i: int, x: Tensor, value: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """One pre-norm block written out; ``value`` ``[B, D]`` is added to every token's value (STAR-Prompt)."""
    blk = net.blocks[i]
    batch, length, dim = x.shape
    h = F.layer_norm(x, (dim,), blk.norm1.weight, blk.norm1.bias, eps)
    q, k, v = (h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).split(dim, -1)
    if value is not None:
        v = v + value[:, None, :]
    q, k, v = (t.reshape(batch, length, HEADS, -1).transpose(1, 2) for t in (q, k, v))
    a = ((q @ k.transpose(-2, -1)) / math.sqrt(dim // HEADS)).softmax(-1) @ v
    x = x + a.transpose(1, 2).reshape(batch, length, dim) @ blk.attn.proj.weight.T + blk.attn.proj.bias
    h = F.layer_norm(x, (dim,), blk.norm2.weight, blk.norm2.bias, eps)
    h = F.gelu(h @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias)
    return x + h @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias


def embed(net: VisionTransformer, x: Tensor) -> Tensor:
    proj = net.patch_embed.proj
    patches = F.conv2d(x, proj.weight, proj.bias, stride=proj.stride).flatten(2).transpose(1, 2)
    return torch.cat([net.cls_token.expand(x.shape[0], 1, DIM), patches], 1) + net.pos_embed


def final_norm(net: VisionTransformer, x: Tensor, eps: float = 1e-6) -> Tensor:
    return F.layer_norm(x, (DIM,), net.norm.weight, net.norm.bias, eps)


def close(a: object, b: Tensor) -> None:
    assert isinstance(a, Tensor) and a.shape == b.shape, (getattr(a, "shape", a), b.shape)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# --- 1. AB second, as Mammoth's ViT takes it --------------------------------------------------------------------


def test_ab_is_the_second_argument_as_in_mammoth_and_a_string_there_is_returnt() -> None:
    net, x = tiny(), images()
    delta = {1: {"fc1": {"A": randn(2, DIM), "B": randn(4 * DIM, 2, seed=4)}}}
    expected = net(x, AB=delta)
    assert not torch.allclose(expected, net(x))
    close(net(x, delta), expected)
    close(net(x, delta, "features"), net(x, AB=delta, returnt="features"))
    close(net.forward_features(x, delta), net.forward_features(x, AB=delta))  # lora_prompt.py's call
    close(net(x, "features"), net(x, returnt="features"))
    close(net(x, {}), net(x))  # Mammoth's default AB={}
    with pytest.raises(TypeError, match="returnt given twice"):
        net(x, "features", "both")


# --- 2. 'full' as Mammoth's ViT gives it --------------------------------------------------------------------------


def test_mammoths_full_is_every_blocks_whole_sequence_then_the_normed_final_one() -> None:
    net, x = tiny(), images()
    tokens, expected = embed(net, x), []
    for i in range(DEPTH):
        tokens = block(net, i, tokens)
        expected.append(tokens)
    expected.append(final_norm(net, tokens))
    logits, stages = net(x, returnt="full", full_fmt="mammoth")
    close(logits, expected[-1][:, 0] @ net.head.weight.T + net.head.bias)
    assert len(stages) == DEPTH + 1
    for got, want in zip(stages, expected, strict=True):
        close(got, want)
    every = net.forward_features(x, {}, True)  # Mammoth's forward_features(x, AB, return_all=True)
    assert isinstance(every, list) and len(every) == DEPTH + 1
    for got, want in zip(every, expected, strict=True):
        close(got, want)
    # timm's meaning stays the default: patch tokens as maps, and as tokens with full_fmt='NLC'.
    _, maps = net(x, returnt="full")
    close(maps[0], expected[0][:, 1:].reshape(3, 4, 4, DIM).permute(0, 3, 1, 2))
    _, nlc = net(x, returnt="full", full_fmt="NLC")
    close(nlc[1], expected[1][:, 1:])
    with pytest.raises(ValueError, match="full_fmt must be one of 'NCHW', 'NLC', 'mammoth', got 'nlc'"):
        net(x, returnt="full", full_fmt="nlc")


# --- 3. DualPrompt's prompt tuning, and prompts dropped -----------------------------------------------------------


def test_dualprompts_prompt_tuning_prepends_each_layers_prompts_to_the_sequence() -> None:
    """DualPrompt: ``x = cat([prompt, x])`` before each prompted block; the class token is at ``total_prompt_len``."""
    net, x = tiny(), images()
    given = {0: randn(3, 2, DIM, seed=5), 2: randn(3, 3, DIM, seed=6)}
    tokens, total = embed(net, x), 0
    for i in range(DEPTH):
        if i in given:
            tokens = torch.cat([given[i], tokens], dim=1)
            total += given[i].shape[1]
        tokens = block(net, i, tokens)
    final = final_norm(net, tokens)
    features = final[:, total]
    close(net(x, returnt="features", prompts=given, prompt_mode="add"), features)
    close(net(x, prompts=given, prompt_mode="add"), features @ net.head.weight.T + net.head.bias)
    ours = net.forward_features(x, prompts=given, prompt_mode="add")
    assert isinstance(ours, Tensor)
    # The same tokens, the class token moved to the front: [cls, p2, p0, patches] against [p2, p0, cls, patches].
    close(ours, torch.cat([final[:, total : total + 1], final[:, :total], final[:, total + 1 :]], 1))


def test_a_block_given_no_prompt_tokens_drops_those_present() -> None:
    """DAP on ImageNet-R: prompts before every block but the last, which gets none."""
    net, x = tiny(), images()
    prompts = {0: randn(3, 2, DIM), 1: randn(3, 2, DIM, seed=4), 2: torch.zeros(3, 0, DIM, dtype=torch.float64)}
    tokens = embed(net, x)
    for i in range(DEPTH):
        tokens = torch.cat([tokens[:, :1], prompts[i], tokens[:, -16:]], 1)
        tokens = block(net, i, tokens)
    close(net.forward_features(x, prompts=prompts), final_norm(net, tokens))
    assert net.forward_features(x, prompts=prompts).shape == (3, 17, DIM)  # type: ignore[union-attr]


# --- 4. prompts made from each block's input (DAP) ----------------------------------------------------------------


def test_prompts_made_from_each_blocks_own_input_in_one_pass() -> None:
    net, x = tiny(), images()
    weights = {i: randn(DIM, DIM, seed=10 + i) for i in range(DEPTH)}
    seen: list[Tensor] = []

    def generator(i: int) -> Callable[[Tensor], Tensor]:
        def make(tokens: Tensor) -> Tensor:  # two prompts from the block's input patches, as DAP's generator does
            seen.append(tokens)
            return torch.tanh(tokens[:, -16:].mean(1, keepdim=True) @ weights[i]).expand(-1, 2, -1)

        return make

    tokens = embed(net, x)
    inputs = []
    for i in range(DEPTH):
        inputs.append(tokens)
        prompt = torch.tanh(tokens[:, -16:].mean(1, keepdim=True) @ weights[i]).expand(-1, 2, -1)
        tokens = block(net, i, torch.cat([tokens[:, :1], prompt, tokens[:, -16:]], 1))
    got = net.forward_features(x, prompts={i: generator(i) for i in range(DEPTH)})
    close(got, final_norm(net, tokens))
    assert len(seen) == DEPTH  # one pass: each generator called once
    for a, b in zip(seen, inputs, strict=True):
        close(a, b)
    close(seen[0], embed(net, x))  # block 0's generator sees the embedding's output


def test_a_prompt_function_that_returns_the_wrong_shape_is_refused_naming_the_block() -> None:
    net, x = tiny(), images()
    with pytest.raises(ValueError, match=r"the prompts made for block 1 must be \[3, L, 8\]"):
        net(x, prompts={1: lambda tokens: tokens[:, :2, :4]})
    with pytest.raises(TypeError, match=r"the prompts made for block 0 must be a torch\.Tensor, got list"):
        net(x, prompts={0: lambda tokens: [tokens]})


# --- 5. per-sample value offsets (STAR-Prompt) --------------------------------------------------------------------


def test_a_per_sample_offset_is_added_to_every_value() -> None:
    net, x = tiny(), images()
    offsets = {0: randn(3, DIM, seed=7), 2: randn(DIM, seed=8)}
    tokens = embed(net, x)
    for i in range(DEPTH):
        value = offsets.get(i)
        tokens = block(net, i, tokens, None if value is None else value.expand(3, DIM))
    final = final_norm(net, tokens)
    close(net(x, returnt="features", values=offsets), final[:, 0])
    close(net.forward_features(x, values=offsets), final)
    with pytest.raises(ValueError, match=r"values for block 0 must be \[3, 8\] or \[8\]"):
        net(x, values={0: randn(2, DIM)})


# --- 6. head, norm and pooling as timm builds them ----------------------------------------------------------------


def test_no_classifier_gives_the_features_as_logits_and_passes_the_checker() -> None:
    net, x = tiny(num_classes=0), images()
    assert isinstance(net.head, torch.nn.Identity) and net.num_classes == 0
    close(net(x), net(x, returnt="features"))
    assert all(r.passed for r in check_backbone(net, x))


def test_the_norm_eps_is_every_layernorms() -> None:
    net, x = tiny(norm_eps=1e-5), images()
    assert {m.eps for m in net.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
    tokens = embed(net, x)
    for i in range(DEPTH):
        tokens = block(net, i, tokens, eps=1e-5)
    close(net.forward_features(x), final_norm(net, tokens, eps=1e-5))


@pytest.mark.parametrize("pool", ["token", "avg", "prompt", "token+prompt"])
def test_global_pool_as_timm_and_l2p_pool(pool: str) -> None:
    net, x = tiny(global_pool=pool), images()
    prompts = randn(4, DIM, seed=9)
    tokens = embed(net, x)
    tokens = torch.cat([tokens[:, :1], prompts.expand(3, -1, -1), tokens[:, 1:]], 1)
    for i in range(DEPTH):
        tokens = block(net, i, tokens)
    final = final_norm(net, tokens)
    expected = {
        "token": final[:, 0],
        "avg": final[:, 5:].mean(1),
        "prompt": final[:, 1:5].mean(1),  # L2P's head_type='prompt'
        "token+prompt": final[:, :5].mean(1),  # L2P's head_type='token+prompt'
    }[pool]
    close(net(x, returnt="features", prompts=prompts), expected)
    close(net.forward_head(final, pre_logits=True, num_prompts=4), expected)
    if pool in ("prompt", "token+prompt"):
        with pytest.raises(
            ValueError, match=re.escape(f"global_pool='{pool}' pools the prompt tokens, but the call has none")
        ):
            net(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"global_pool": "max"}, "global_pool must be one of 'token', 'avg', 'prompt', 'token\\+prompt', got 'max'"),
        ({"norm_eps": 0.0}, "norm_eps must be a positive finite number, got 0.0"),
        ({"norm_eps": float("inf")}, "norm_eps must be a positive finite number"),
        ({"num_classes": -1}, "num_classes"),
    ],
)
def test_bad_constructor_options_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VisionTransformer(img_size=16, patch_size=4, embed_dim=DIM, depth=1, num_heads=HEADS, **kwargs)  # type: ignore[arg-type]


# --- 7. L2P's prompt positions, AdaptFormer's adapter options ------------------------------------------------------


def test_l2p_adds_the_position_embedding_rows_of_its_prompts() -> None:
    """L2P: ``[cls, prompts, patches] + pos_embed``, its prompt rows copies of the class row (or rows of its own)."""
    net, x = tiny(global_pool="prompt"), images()
    prompts = randn(3, 4, DIM, seed=11)
    own_rows = randn(4, DIM, seed=12)
    for given, rows in (("class", net.pos_embed[:, :1].expand(1, 4, DIM)), (own_rows, own_rows[None])):
        pos = torch.cat([net.pos_embed[:, :1], rows, net.pos_embed[:, 1:]], 1)
        proj = net.patch_embed.proj
        patches = F.conv2d(x, proj.weight, proj.bias, stride=proj.stride).flatten(2).transpose(1, 2)
        tokens = torch.cat([net.cls_token.expand(3, 1, DIM), prompts, patches], 1) + pos
        for i in range(DEPTH):
            tokens = block(net, i, tokens)
        expected = final_norm(net, tokens)[:, 1:5].mean(1)
        close(net(x, returnt="features", prompts=prompts, prompt_pos=given), expected)
    with pytest.raises(ValueError, match="prompt_pos was given, but no prompts go in before block 0"):
        net(x, prompts={1: prompts}, prompt_pos="class")
    with pytest.raises(ValueError, match=r"prompt_pos must be \[1, 4, 8\] or \[4, 8\]"):
        net(x, prompts=prompts, prompt_pos=randn(3, DIM))
    with pytest.raises(ValueError, match="prompt_pos must be 'class', a tensor"):
        net(x, prompts=prompts, prompt_pos="cls")


@pytest.mark.parametrize("norm", ["none", "in", "out"])
def test_adaptformers_options_dropout_layernorm_and_a_learnable_scale(norm: str) -> None:
    from backbone import add_adapters

    net, x = tiny(), images()
    (adapter,) = add_adapters(net, 3, blocks=[1], dropout=0.5, norm=norm, scale="learnable")
    assert isinstance(adapter.scale, torch.nn.Parameter) and adapter.scale.requires_grad
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(13))

    def written_out(train: bool) -> Tensor:
        tokens = block(net, 0, embed(net, x))
        blk = net.blocks[1]
        mid = tokens + (block(net, 1, tokens) - tokens - mlp_branch(net, 1, tokens, after_attention=True))
        h = mid
        if norm == "in":
            h = F.layer_norm(h, (DIM,), adapter.norm.weight, adapter.norm.bias)
        hidden = F.dropout(F.relu(h @ adapter.down.weight.T + adapter.down.bias), 0.5, training=train)
        out = (hidden @ adapter.up.weight.T + adapter.up.bias) * adapter.scale
        if norm == "out":
            out = F.layer_norm(out, (DIM,), adapter.norm.weight, adapter.norm.bias)
        tokens = mid + mlp_branch(net, 1, mid) + out
        assert blk is net.blocks[1]
        tokens = block(net, 2, tokens)
        return final_norm(net, tokens)

    close(net.forward_features(x), written_out(train=False))
    net.train()
    torch.manual_seed(14)
    got = net.forward_features(x)
    torch.manual_seed(14)
    close(got, written_out(train=True))


def mlp_branch(net: VisionTransformer, i: int, x: Tensor, after_attention: bool = False) -> Tensor:
    """Block ``i``'s MLP branch ``mlp(norm2(x))``; with ``after_attention``, of the stream after its attention."""
    blk = net.blocks[i]
    if after_attention:
        h = F.layer_norm(x, (DIM,), blk.norm1.weight, blk.norm1.bias, 1e-6)
        q, k, v = (h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).split(DIM, -1)
        q, k, v = (t.reshape(x.shape[0], x.shape[1], HEADS, -1).transpose(1, 2) for t in (q, k, v))
        a = ((q @ k.transpose(-2, -1)) / math.sqrt(DIM // HEADS)).softmax(-1) @ v
        x = x + a.transpose(1, 2).reshape(x.shape) @ blk.attn.proj.weight.T + blk.attn.proj.bias
    h = F.layer_norm(x, (DIM,), blk.norm2.weight, blk.norm2.bias, 1e-6)
    return F.gelu(h @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias) @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias


# --- 9. the same inputs through hooks, for a ViT whose forward does not take them (timm's) -------------------------


def call_cases() -> dict[str, dict[str, object]]:
    return {
        "prompts": {"prompts": {0: randn(3, 2, DIM, seed=20), 2: randn(2, DIM, seed=21)}},
        "prompts added": {"prompts": {0: randn(3, 2, DIM, seed=20), 2: randn(2, DIM, seed=21)}, "prompt_mode": "add"},
        "prompt function": {"prompts": {1: lambda tokens: tokens[:, -2:] * 0.5}},
        "prefixes": {"prefixes": {0: randn(3, 2, 4, DIM, seed=22), 1: randn(2, 1, DIM, seed=23)}},
        "values": {"values": {1: randn(3, DIM, seed=24)}},
        "AB": {
            "AB": {
                0: {"qkv": {"A": randn(2, DIM, seed=25), "B": randn(3 * DIM, 2, seed=26)}},
                2: {"fc2": randn(DIM, 4 * DIM, seed=27)},
            }
        },
    }


@pytest.mark.parametrize("case", list(call_cases()))
def test_call_inputs_give_what_the_forward_arguments_give(case: str) -> None:
    net, x = tiny(), images()
    kwargs = call_cases()[case]
    expected = net.forward_features(x, **kwargs)
    plain = net.forward_features(x)
    with call_inputs(net, **kwargs):
        got = net.forward_features(x)
    close(got, expected)  # type: ignore[arg-type]
    # Nothing stays: the next call is the plain model's, and no attribute was left behind.
    assert all("forward" not in vars(m) for m in net.modules())
    close(net.forward_features(x), plain)  # type: ignore[arg-type]


def test_call_inputs_are_removed_after_an_error_and_refuse_other_models() -> None:
    net, x = tiny(), images()
    plain = net.forward_features(x)
    with (
        pytest.raises(ValueError, match=r"prompts for block 0 must be \[3, L, 8\]"),
        call_inputs(net, prompts=randn(3, 2, 5)),
    ):
        net(x)
    with pytest.raises(RuntimeError, match="inside"), call_inputs(net, prefixes={0: randn(2, 1, DIM)}):
        raise RuntimeError("inside")
    close(net.forward_features(x), plain)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a ViT with timm's block layout"), call_inputs(torch.nn.Linear(2, 2)):
        pass
    with (
        pytest.raises(ValueError, match="AB\\[0\\] names layers out of"),
        call_inputs(net, AB={0: {"attn": randn(2, 2)}}),
    ):
        pass


# --- found by red-teaming the ViT hosting -------------------------------------------------------------------------


def test_nested_call_inputs_are_refused_and_ab_at_the_call_adds_to_a_blocks() -> None:
    net, x = tiny(), images()
    first, second = randn(3 * DIM, DIM, seed=30), randn(3 * DIM, DIM, seed=31)
    with call_inputs(net, AB={0: {"qkv": first}}):
        with pytest.raises(ValueError, match="call_inputs is already active on this model"), call_inputs(net):
            pass
        both = net.forward_features(x, {0: {"qkv": second}})  # the forward's own AB joins the block's
    close(both, net.forward_features(x, {0: {"qkv": first + second}}))  # type: ignore[arg-type]
    close(net.forward_features(x), net.forward_features(x, {}))  # type: ignore[arg-type]  # nothing left behind


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"AB": {0: {"qkv": {"A": randn(2, DIM)}}}}, ValueError, "got keys \\['A'\\]"),
        ({"AB": {0: {"qkv": randn(DIM, DIM)}}}, ValueError, r"AB\[0\]\['qkv'\] must be \[\.\.\., 24, 8\]"),
        ({"AB": {0: {"qkv": torch.randn(3 * DIM, DIM)}}}, TypeError, "model's dtype torch.float64"),
        ({"values": {0: torch.randn(3, DIM)}}, TypeError, "model's dtype"),
        ({"prompts": randn(3, 2, DIM).to_sparse()}, TypeError, "dense"),
        ({"prompt_mode": "prepend"}, ValueError, "prompt_mode must be one of"),
    ],
)
def test_call_inputs_refuses_bad_inputs_before_any_hook(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    net, x = tiny(), images()
    plain = net.forward_features(x)
    with pytest.raises(error, match=match), call_inputs(net, **kwargs):  # type: ignore[arg-type]
        pass
    close(net.forward_features(x), plain)  # type: ignore[arg-type]


def test_constructor_and_forward_head_refuse_what_would_build_or_pool_wrongly() -> None:
    with pytest.raises(ValueError, match="mlp_ratio must be a positive finite number, got '2'"):
        VisionTransformer(img_size=16, patch_size=4, embed_dim=DIM, depth=1, num_heads=HEADS, mlp_ratio="2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="qkv_bias must be a bool"):
        VisionTransformer(img_size=16, patch_size=4, embed_dim=DIM, depth=1, num_heads=HEADS, qkv_bias="no")  # type: ignore[arg-type]
    net = tiny(global_pool="avg")
    tokens = net.forward_features(images())
    assert isinstance(tokens, Tensor)
    with pytest.raises(ValueError, match=r"tokens \[B, 1 \+ P \+ N, 8\] with P = num_prompts = 20"):
        net.forward_head(tokens, num_prompts=20)
    with pytest.raises(ValueError, match="got shape \\(3, 8\\)"):
        net.forward_head(tokens[:, 0])
    with pytest.raises(TypeError, match="pre_logits must be a bool"):
        net.forward_head(tokens, pre_logits="no")  # type: ignore[arg-type]


def test_hooks_attached_inside_inference_mode_can_be_trained() -> None:
    from backbone import add_adapters, add_lora, add_ssf

    net, x = tiny(), images()
    with torch.inference_mode():
        made = [*add_lora(net, 2, sites=["qkv"]), *add_ssf(net, sites=["fc1"]), *add_adapters(net, 2, blocks=[0])]
    assert not any(p.is_inference() for m in made for p in m.parameters())
    net(x).sum().backward()
    assert made[0].B.grad is not None


def test_call_inputs_refuse_at_the_call_what_does_not_fit_the_batch() -> None:
    net, x = tiny(), images()
    with (
        pytest.raises(ValueError, match=r"do not broadcast against the batch \[3, 1\]"),
        call_inputs(net, AB={0: {"qkv": randn(2, 1, 3 * DIM, DIM)}}),
    ):
        net(x)
    with (
        pytest.raises(ValueError, match=r"prefixes must be \[3, 2, L, 8\] or \[2, L, 8\]"),
        call_inputs(net, prefixes={0: randn(3, 2, 0, DIM)}),
    ):
        net(x)
