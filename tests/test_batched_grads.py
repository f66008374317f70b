"""The one batched pass for per-example gradients and the Fisher, against the per-example loop.

Random models are built from the layers the batched pass covers (Linear,
LayerNorm, pointwise activations, dropout, containers) with unsupported ones
mixed in (a convolution, batch norm in eval mode, a module of one's own);
whichever way the package takes, rows and Fishers must be the loop's, and
stay so through random changes to the model between calls.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import backbone
from backbone import MNISTMLP, fisher_diagonal, per_sample_grads, selected_parameters
from backbone.batched_grads import applies


class Doubles(nn.Module):
    """A module of one's own: per-example, but the batched pass cannot know it."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * x


class BatchMean(nn.Module):
    """Mixes the examples of a batch: the batched pass must never be taken (it is not: the class is unknown)."""

    def forward(self, x: Tensor) -> Tensor:
        return x - x.mean(0, keepdim=True)


def random_model(rng: random.Random, width: int = 6, classes: int = 4) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(rng.randint(1, 4)):
        choice = rng.choice(["linear", "linear", "norm", "act", "dropout", "unsupported"])
        if choice == "linear":
            layers.append(nn.Linear(width, width, bias=rng.random() < 0.7))
        elif choice == "norm":
            layers.append(nn.LayerNorm(width, elementwise_affine=rng.random() < 0.8))
        elif choice == "act":
            layers.append(rng.choice([nn.ReLU(), nn.GELU(), nn.Tanh(), nn.SiLU()]))
        elif choice == "dropout":
            layers.append(nn.Dropout(0.3))
        else:
            layers.append(rng.choice([Doubles(), nn.BatchNorm1d(width).eval(), BatchMean()]))
    layers.append(nn.Linear(width, classes))
    if rng.random() < 0.3 and not any(isinstance(m, nn.BatchNorm1d) for m in layers):  # a token axis: [B, T, D]
        layers.insert(0, nn.Unflatten(1, (1, width)))
        layers.append(nn.Flatten())
    return nn.Sequential(*layers)


def loop_rows(net: nn.Module, x: Tensor, y: Tensor, select: object = None) -> Tensor:
    picked = selected_parameters(net, select)
    rows = []
    for i in range(x.shape[0]):
        for _, p in picked:
            p.grad = None
        F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for _, p in picked]))
    for _, p in picked:
        p.grad = None
    return torch.stack(rows)


def assert_close(got: Tensor, want: Tensor) -> None:
    scale = max(float(want.abs().max()), 1e-3) if want.numel() else 1.0
    assert got.shape == want.shape
    assert want.numel() == 0 or float((got - want).abs().max()) <= 1e-6 * scale


def change(net: nn.Module, rng: random.Random) -> object:
    """A random change between calls; returns the selection to use next."""
    params = list(net.parameters())
    what = rng.choice(["values", "freeze", "thaw", "select", "none"])
    with torch.no_grad():
        if what == "values":
            for p in params:
                p.add_(torch.randn_like(p) * 0.1)
        elif what == "freeze" and params:
            rng.choice(params).requires_grad_(False)
        elif what == "thaw":
            for p in params:
                p.requires_grad_(True)
    return "trainable" if what == "select" else None


@pytest.mark.parametrize("seed", range(40))
def test_rows_and_fishers_are_the_loops_on_random_models_through_random_changes(seed: int) -> None:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    net = random_model(rng).eval()
    for _ in range(3):
        select = change(net, rng)
        x, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
        if not any(p.requires_grad for _, p in selected_parameters(net, select)):
            continue
        before = {k: v.clone() for k, v in net.state_dict().items()}
        rows = per_sample_grads(net, F.cross_entropy, x, y, select=select, chunk_size=rng.choice([None, 2]))
        assert_close(rows, loop_rows(net, x, y, select))
        logits = torch.cat([net(x[i : i + 1]) for i in range(5)])  # each example alone, as the loop sees it
        weights = F.softmax(logits, 1).gather(1, y[:, None])[:, 0].detach()
        assert_close(fisher_diagonal(net, [(x, y)], select=select), (rows.square() * weights[:, None]).mean(0))
        assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
        assert all(p.grad is None for p in net.parameters())


def test_the_batched_pass_applies_exactly_where_no_operation_can_mix_the_examples() -> None:
    trusted = (MNISTMLP,)
    assert applies(MNISTMLP(4, 3, hidden_size=5), trusted)
    assert applies(nn.Sequential(nn.Linear(3, 3), nn.GELU(), nn.LayerNorm(3), nn.Dropout(), nn.Linear(3, 2)), trusted)
    assert not applies(nn.Sequential(nn.Linear(3, 3), BatchMean()), trusted)  # unknown class
    assert not applies(nn.Sequential(nn.Conv1d(1, 1, 1)), trusted)  # a layer it has no rule for
    assert not applies(backbone.vit_tiny_patch4_32(10), trusted)  # parameters outside Linear/LayerNorm
    hooked = nn.Sequential(nn.Linear(3, 2))
    hooked[0].register_forward_hook(lambda m, a, o: o)
    assert not applies(hooked, trusted)  # a hook could see or mix the batch
    parametrized = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(3, 2)))
    assert not applies(parametrized, trusted)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not applies(MNISTMLP(4, 3, hidden_size=5), trusted)


@pytest.mark.parametrize("context", ["plain", "no_grad", "inference_mode"])
def test_mnistmlp_rows_are_the_loops_in_every_context_and_leave_the_rng(context: str) -> None:
    torch.manual_seed(0)
    net = MNISTMLP(6, 3, hidden_size=7)
    x, y = torch.randn(9, 6), torch.randint(0, 3, (9,))
    expected = loop_rows(net, x, y)
    state = torch.get_rng_state()
    with (
        torch.no_grad()
        if context == "no_grad"
        else torch.inference_mode()
        if context == "inference_mode"
        else torch.enable_grad()
    ):
        rows = per_sample_grads(net, F.cross_entropy, x, y)
    assert_close(rows, expected)
    assert torch.equal(torch.get_rng_state(), state)


def test_dropout_in_training_mode_leaves_the_rng_and_gives_the_same_rows_each_call() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    state = torch.get_rng_state()
    first = per_sample_grads(net, F.cross_entropy, x, y)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(per_sample_grads(net, F.cross_entropy, x, y), first)
    assert bool((first == 0).any())  # units were dropped


def test_a_tied_weight_used_twice_adds_its_uses_before_squaring() -> None:
    torch.manual_seed(1)
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, nn.Tanh(), shared, nn.Linear(4, 3))
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    rows = per_sample_grads(net, F.cross_entropy, x, y)
    assert_close(rows, loop_rows(net, x, y))
    assert_close(fisher_diagonal(net, [(x, y)], kind="empirical"), rows.square().mean(0))


def test_a_loss_that_fails_on_the_batch_is_named_for_its_example() -> None:
    net = MNISTMLP(4, 3, hidden_size=5)
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 7, 2])
    with pytest.raises(ValueError, match=r"failed on one example \(example 2 of the batch\): IndexError"):
        per_sample_grads(net, F.cross_entropy, x, y)
    assert all(p.grad is None for p in net.parameters())


# --- the Fishers --------------------------------------------------------------------------------------------------


def per_class_rows(net: nn.Module, x: Tensor, classes: int) -> Tensor:
    """``[B, C, P]``: the gradient of ``log p(c | x_i)`` for every example and class, one backward each."""
    out = []
    for i in range(x.shape[0]):
        rows = []
        for c in range(classes):
            net.zero_grad()
            F.log_softmax(net(x[i : i + 1]), 1)[0, c].backward()
            rows.append(backbone.get_grads(net).clone())
        out.append(torch.stack(rows))
    net.zero_grad(set_to_none=True)
    return torch.stack(out)


@pytest.mark.parametrize(
    "make", [lambda: MNISTMLP(6, 3, hidden_size=5), lambda: backbone.resnet18(3, num_filters=4).eval()]
)
def test_each_fisher_is_its_written_out_definition(make) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    net = make()
    shape = (6,) if isinstance(net, MNISTMLP) else (3, 8, 8)
    x, y = torch.randn(4, *shape), torch.tensor([0, 2, 1, 2])
    g = per_class_rows(net, x, 3)
    with torch.no_grad():
        p = F.softmax(net(x), 1)
    own = g[torch.arange(4), y]
    definitions = {
        "mammoth": (p[torch.arange(4), y][:, None] * own.square()).mean(0),
        "empirical": own.square().mean(0),
        "true": (p[:, :, None] * g.square()).sum(1).mean(0),
    }
    for kind, expected in definitions.items():
        assert_close(fisher_diagonal(net, [(x, y)], kind=kind), expected)
    drawn = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(5))[:, 0]
    sampled = fisher_diagonal(net, [(x, y)], kind="sampled", generator=torch.Generator().manual_seed(5))
    assert_close(sampled, g[torch.arange(4), drawn].square().mean(0))
    assert torch.equal(
        fisher_diagonal(net, [(x, y)], weight_by_probability=False), fisher_diagonal(net, [(x, y)], kind="empirical")
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kind": "exact"}, ValueError, "kind must be one of 'mammoth', 'empirical', 'true', 'sampled', got 'exact'"),
        ({"kind": "true", "weight_by_probability": False}, ValueError, "weight_by_probability=False asks for"),
        ({"kind": "sampled", "generator": 5}, TypeError, "generator must be a torch.Generator or None, got int"),
    ],
)
def test_bad_fisher_kinds_are_refused(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    net = MNISTMLP(4, 3, hidden_size=5)
    with pytest.raises(error, match=match):
        fisher_diagonal(net, [(torch.randn(2, 4), torch.tensor([0, 1]))], **kwargs)  # type: ignore[arg-type]


# --- found by red-teaming the batched pass -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "act", [nn.ReLU(inplace=True), nn.LeakyReLU(0.1, inplace=True), nn.Hardtanh(inplace=True), nn.SiLU(inplace=True)]
)
def test_an_in_place_activation_after_a_layer_does_not_rewrite_its_recorded_output(act: nn.Module) -> None:
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(5, 8), act, nn.Linear(8, 3))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    assert_close(per_sample_grads(net, F.cross_entropy, x, y), loop_rows(net, x, y))


def test_results_are_plain_data() -> None:
    net = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    rows = per_sample_grads(net, F.cross_entropy, x, y)
    fisher = fisher_diagonal(net, [(x, y)])
    assert not rows.requires_grad and rows.grad_fn is None
    assert not fisher.requires_grad and fisher.grad_fn is None


def test_what_mixes_or_hides_the_examples_is_not_taken_the_batched_way() -> None:
    trusted = (MNISTMLP,)
    assert not applies(nn.Sequential(nn.Linear(5, 3), nn.Flatten(0)), trusted)
    assert not applies(nn.Sequential(nn.Linear(5, 3), nn.Flatten(-2)), trusted)
    patched = nn.Sequential(nn.Linear(5, 3))
    patched[0].forward = lambda x: x  # type: ignore[method-assign]
    assert not applies(patched, trusted)
    handle = nn.modules.module.register_module_forward_hook(lambda m, a, o: o)
    try:
        assert not applies(nn.Sequential(nn.Linear(5, 3)), trusted)
    finally:
        handle.remove()
    # And the answer stays the loop's where a model mixes them.
    net = nn.Sequential(nn.Linear(5, 3), nn.Flatten(0))
    x, y = torch.randn(4, 5), torch.randn(4, 3)
    loss = lambda out, t: (out - t.reshape(-1)).square().sum()  # noqa: E731
    rows = per_sample_grads(net, loss, x, y)
    expected = []
    for i in range(4):
        net.zero_grad()
        loss(net(x[i : i + 1]), y[i : i + 1]).backward()
        expected.append(backbone.get_grads(net).clone())
    assert_close(rows, torch.stack(expected))


def test_a_token_axis_gives_the_loops_rows_another_way() -> None:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.LayerNorm(6), nn.Linear(6, 3), nn.Flatten())
    x, y = torch.randn(5, 2, 4), torch.randint(0, 6, (5,))
    assert_close(per_sample_grads(net, F.cross_entropy, x, y), loop_rows(net, x, y))


def test_the_true_and_sampled_fishers_leave_the_rng_and_refuse_logits_that_are_not_finite() -> None:
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 3)).train()
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    state = torch.get_rng_state()
    fisher_diagonal(net, [(x, y)], kind="true")
    fisher_diagonal(net, [(x, y)], kind="sampled", generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="needs finite logits"):
        fisher_diagonal(net.eval(), [(torch.full((2, 4), float("nan")), torch.tensor([0, 1]))], kind="sampled")


def test_a_vit_tuned_by_lora_takes_one_batched_pass_with_the_loops_rows() -> None:
    torch.manual_seed(7)
    net = backbone.VisionTransformer(img_size=16, patch_size=4, num_classes=3, embed_dim=8, depth=2, num_heads=2)
    net.eval()
    loras = backbone.add_lora(net, 2, sites=["qkv", "fc2"])
    for lora in loras:
        with torch.no_grad():
            lora.B.normal_()
    trainable = {id(p) for n, p in net.named_parameters() if ".tuning." in n}
    assert applies(net, (backbone.VisionTransformer,), set(), ()) is False  # its layers are not all trusted here
    backbone.freeze_base(net, train_head=True)
    x, y = torch.randn(5, 3, 16, 16), torch.randint(0, 3, (5,))
    rows = per_sample_grads(net, F.cross_entropy, x, y, select="trainable")
    assert_close(rows, loop_rows(net, x, y, "trainable"))
    assert trainable  # the factors have rows
    net.cls_token.requires_grad_(True)  # a parameter outside any layer with a rule: another way, the same rows
    assert_close(per_sample_grads(net, F.cross_entropy, x, y, select="trainable"), loop_rows(net, x, y, "trainable"))


def test_a_trained_layer_whose_site_scales_its_output_is_differentiated_at_its_own_output() -> None:
    """An SSF or a sequential adapter on a trained layer's site (found by the second red team)."""
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.LayerNorm(6), nn.Linear(6, 3))
    backbone.add_ssf(net, target_modules=["0", "2"])
    backbone.add_adapters(net, 2, target_modules=["3"], mode="sequential")
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".tuning." in name:
                p.normal_(0, 0.5)
                p.requires_grad_(False)  # frozen hooks, trained layers: the batched way is taken
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    rows = per_sample_grads(net, F.cross_entropy, x, y, select="trainable")
    assert_close(rows, loop_rows(net, x, y, "trainable"))
