"""Per-example gradients and the Fisher diagonal, against the per-example loops they replace."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator

import pytest
import torch
from nets import TiedFrozenUnused, TinyNet
from torch import Tensor, nn
from torch.nn import functional as F

import backbone
from backbone import fisher_diagonal, per_sample_grads, selected_parameters


def loop_rows(net: nn.Module, loss_fn, x: Tensor, y: Tensor, select=None) -> Tensor:  # type: ignore[no-untyped-def]
    """One forward and backward per example, each row read back as torch.cat of the selected .grad (zeros if None)."""
    picked = selected_parameters(net, select)
    rows = []
    for i in range(x.shape[0]):
        for _, p in picked:
            p.grad = None
        loss_fn(net(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for _, p in picked]))
    for _, p in picked:
        p.grad = None
    return torch.stack(rows)


def assert_rows_close(rows: Tensor, expected: Tensor) -> None:
    """Equal within 1e-6 of the largest entry (float32), the bound the docs promise."""
    assert rows.shape == expected.shape
    scale = float(expected.abs().max())
    assert float((rows - expected).abs().max()) <= 1e-6 * max(scale, 1.0), float((rows - expected).abs().max())


def small_vit() -> backbone.VisionTransformer:
    return backbone.VisionTransformer(img_size=16, patch_size=4, num_classes=3, embed_dim=8, depth=2, num_heads=2)


NETS = {
    "mnistmlp": (lambda: backbone.MNISTMLP(6, 3, hidden_size=5), (5, 6)),
    "resnet18": (lambda: backbone.resnet18(3, num_filters=4).eval(), (4, 3, 8, 8)),
    "vit": (lambda: small_vit().eval(), (3, 3, 16, 16)),
    "tied-frozen": (TiedFrozenUnused, (5, 4)),
}


@pytest.mark.parametrize("name", NETS)
def test_rows_equal_the_per_example_loop(name: str) -> None:
    torch.manual_seed(0)
    make, shape = NETS[name]
    net = make()
    x, y = torch.randn(shape), torch.randint(0, 2, (shape[0],))
    rows = per_sample_grads(net, F.cross_entropy, x, y)
    assert rows.shape == (shape[0], backbone.get_params(net).numel())
    assert_rows_close(rows, loop_rows(net, F.cross_entropy, x, y))
    assert all(p.grad is None for p in net.parameters())  # nothing written to the model


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "inference_mode_inputs"])
def test_rows_and_fisher_are_the_same_in_every_grad_context(name: str, context: str) -> None:
    """Under no_grad and inference_mode (inputs made there or outside), both ways give the loop's rows."""
    torch.manual_seed(0)
    make, shape = NETS[name]
    net = make()
    x, y = torch.randn(shape), torch.randint(0, 2, (shape[0],))
    expected = loop_rows(net, F.cross_entropy, x, y)
    expected_fisher = fisher_diagonal(net, [(x, y)])
    assert float(expected.abs().sum()) > 0
    with torch.no_grad() if context == "no_grad" else torch.inference_mode():
        if context == "inference_mode_inputs":
            x, y = x.clone(), y.clone()
            assert x.is_inference()
        rows = per_sample_grads(net, F.cross_entropy, x, y)
        fisher = fisher_diagonal(net, [(x, y)])
    assert_rows_close(rows, expected)
    assert_rows_close(fisher[None], expected_fisher[None])
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("name", ["mnistmlp", "resnet18"])
def test_a_model_made_under_inference_mode_gives_the_rows_of_a_normal_copy(name: str) -> None:
    """Parameters and buffers that are inference tensors, on both ways (found by red-teaming)."""
    torch.manual_seed(0)
    make, shape = NETS[name]
    normal = make()
    with torch.inference_mode():
        made_there = copy.deepcopy(normal).to(torch.float64).to(torch.float32)  # .to() makes inference tensors here
    assert next(made_there.parameters()).is_inference()
    x, y = torch.randn(shape), torch.randint(0, 2, (shape[0],))
    expected = per_sample_grads(normal, F.cross_entropy, x, y)
    assert_rows_close(per_sample_grads(made_there, F.cross_entropy, x, y), expected)
    with torch.inference_mode():
        assert_rows_close(per_sample_grads(made_there, F.cross_entropy, x, y), expected)
    assert_rows_close(fisher_diagonal(made_there, [(x, y)])[None], fisher_diagonal(normal, [(x, y)])[None])


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
def test_chunks_give_the_same_rows(chunk_size: int) -> None:
    torch.manual_seed(1)
    net = backbone.MNISTMLP(6, 3, hidden_size=5)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    whole = per_sample_grads(net, F.cross_entropy, x, y)
    assert torch.allclose(per_sample_grads(net, F.cross_entropy, x, y, chunk_size=chunk_size), whole, atol=1e-7)


@pytest.mark.parametrize("select", ["trainable", "no_classifier", ["fc2.bias", "classifier.weight"]])
def test_a_selection_gives_the_selected_columns_of_the_loop(select: object) -> None:
    torch.manual_seed(2)
    net = backbone.MNISTMLP(6, 3, hidden_size=5)
    net.fc1.requires_grad_(False)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    rows = per_sample_grads(net, F.cross_entropy, x, y, select=select)
    assert_rows_close(rows, loop_rows(net, F.cross_entropy, x, y, select))


def test_a_frozen_parameter_in_the_selection_has_zero_columns() -> None:
    torch.manual_seed(3)
    net = backbone.MNISTMLP(6, 3, hidden_size=5)
    net.fc1.requires_grad_(False)
    rows = per_sample_grads(net, F.cross_entropy, torch.randn(4, 6), torch.randint(0, 3, (4,)))
    span = backbone.flat_layout(net).span("fc1")
    assert not rows[:, span].any() and rows[:, span.stop :].any()


def test_the_model_as_it_is_at_each_call_through_random_changes() -> None:
    rng = random.Random(0)
    torch.manual_seed(4)
    net = backbone.MNISTMLP(6, 3, hidden_size=5)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    for _ in range(8):
        change = rng.choice(["freeze", "unfreeze", "perturb", "grow", "replace", "train-step"])
        if change == "freeze":
            rng.choice([net.fc1, net.fc2, net.classifier]).requires_grad_(False)
        elif change == "unfreeze":
            net.requires_grad_(True)
        elif change == "perturb":
            backbone.set_params(
                net, backbone.get_params(net).detach() + 0.1 * torch.randn(backbone.get_params(net).numel())
            )
        elif change == "grow":
            net.grow_classifier(net.num_classes + 1)
        elif change == "replace":
            net.fc2.bias = nn.Parameter(torch.randn(5))
        else:
            optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
            net.zero_grad(set_to_none=True)
        rows = per_sample_grads(net, F.cross_entropy, x, y)
        assert_rows_close(rows, loop_rows(net, F.cross_entropy, x, y))


def test_any_loss_of_one_example() -> None:
    torch.manual_seed(5)
    net = TinyNet(num_classes=2)
    x, y = torch.randn(3, 4), torch.randn(3, 2)

    def squared(out: Tensor, target: Tensor) -> Tensor:
        return ((out - target) ** 2).sum()

    assert_rows_close(per_sample_grads(net, squared, x, y), loop_rows(net, squared, x, y))


def test_batch_norm_in_training_mode_is_refused_naming_the_layer_and_nothing_changes() -> None:
    net = backbone.resnet18(3, num_filters=4)
    state = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError) as info:
        per_sample_grads(net, F.cross_entropy, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    assert str(info.value) == (
        "BatchNorm2d 'bn1' is in training mode, where one example's output depends on the rest of the batch; "
        "expected the module in eval mode (call module.eval() first)"
    )
    assert net.training and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_dropout_in_training_mode_draws_per_example_masks() -> None:
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(4, 64), nn.Dropout(0.5), nn.Linear(64, 1))
    x = torch.randn(1, 4).expand(6, 4)  # the same example six times
    rows = per_sample_grads(net, lambda out, t: out.sum(), x, torch.zeros(6))
    assert len({tuple(r.tolist()) for r in rows}) > 1  # masks differ between examples
    net.eval()
    rows = per_sample_grads(net, lambda out, t: out.sum(), x, torch.zeros(6))
    assert all(torch.equal(r, rows[0]) for r in rows)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((torch.randn(3, 6), torch.tensor([0, 1])), {}, ValueError, "got 3 inputs and 2 targets"),
        ((torch.randn(0, 6), torch.zeros(0, dtype=torch.long)), {}, ValueError, "the batch is empty"),
        (
            (torch.randn(2, 6), torch.tensor([0, 1])),
            {"chunk_size": 0},
            ValueError,
            "chunk_size must be positive, got 0",
        ),
        (
            (torch.randn(2, 6), torch.tensor([0, 1])),
            {"chunk_size": 1.5},
            TypeError,
            "chunk_size must be an int or None",
        ),
        (([[0.0] * 6], torch.tensor([0])), {}, TypeError, "inputs must be a torch.Tensor, got list"),
        ((torch.randn(2, 6), [0, 1]), {}, TypeError, "targets must be a torch.Tensor, got list"),
        ((torch.randn(2, 6), torch.tensor([0, 1])), {"select": "heads"}, ValueError, "select must be one of"),
        ((torch.randn(2, 6), torch.tensor([0, 1])), {"select": []}, ValueError, "picks no parameter of MNISTMLP"),
    ],
)
def test_bad_arguments_are_refused(args: tuple, kwargs: dict, error: type[Exception], message: str) -> None:  # type: ignore[type-arg]
    net = backbone.MNISTMLP(6, 3, hidden_size=5)
    with pytest.raises(error, match=message.replace("(", r"\(")):
        per_sample_grads(net, F.cross_entropy, *args, **kwargs)


def test_a_loss_that_is_not_a_scalar_is_refused() -> None:
    net = backbone.MNISTMLP(6, 3, hidden_size=5)
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar for a batch of one example, got \(1, 3\)"):
        per_sample_grads(net, lambda out, t: out, torch.randn(2, 6), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="loss_fn must be callable, got str"):
        per_sample_grads(net, "cross_entropy", torch.randn(2, 6), torch.tensor([0, 1]))  # type: ignore[arg-type]


# --- the Fisher ------------------------------------------------------------------------------


def mammoth_fisher(net: nn.Module, loader: list[tuple[Tensor, Tensor]], batch_size: int) -> Tensor:
    """The loop of Mammoth's models/ewc_on.py end_task, written from its behaviour: one example at a time."""
    fish = torch.zeros_like(backbone.get_params(net))
    for inputs, labels in loader:
        for ex, lab in zip(inputs, labels, strict=True):
            net.zero_grad()
            output = net(ex.unsqueeze(0))
            loss = -F.nll_loss(F.log_softmax(output, dim=1), lab.unsqueeze(0), reduction="none")
            exp_cond_prob = torch.mean(torch.exp(loss.detach().clone()))
            loss = torch.mean(loss)
            loss.backward()
            fish += exp_cond_prob * backbone.get_grads(net) ** 2
    fish /= len(loader) * batch_size
    net.zero_grad()
    return fish


def data(batches: int, batch_size: int, shape: tuple[int, ...], classes: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch_size, *shape, generator=generator),
            torch.randint(0, classes, (batch_size,), generator=generator),
        )
        for _ in range(batches)
    ]


@pytest.mark.parametrize("name", ["mnistmlp", "resnet18", "vit"])
def test_the_fisher_equals_mammoths_ewc_on_loop(name: str) -> None:
    torch.manual_seed(7)
    make, shape = NETS[name]
    net = make().eval()
    loader = data(3, 4, shape[1:], 3, seed=8)
    expected = mammoth_fisher(net, loader, batch_size=4)
    fisher = fisher_diagonal(net, loader)
    assert fisher.shape == expected.shape
    assert float((fisher - expected).abs().max()) <= 1e-6 * float(expected.abs().max())


def test_the_empirical_fisher_is_the_mean_of_squared_log_likelihood_gradients() -> None:
    torch.manual_seed(9)
    net = backbone.MNISTMLP(6, 3, hidden_size=5)
    loader = data(2, 3, (6,), 3, seed=10) + data(1, 2, (6,), 3, seed=11)  # a short last batch
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    rows = loop_rows(net, lambda out, t: F.log_softmax(out, 1)[0, t[0]], x, y)
    expected = rows.square().mean(0)
    fisher = fisher_diagonal(net, loader, weight_by_probability=False)
    assert float((fisher - expected).abs().max()) <= 1e-6 * float(expected.abs().max())
    total = fisher_diagonal(net, loader, weight_by_probability=False, reduction="sum")
    torch.testing.assert_close(total, expected * 8)


def test_online_decay_updates_the_kept_fisher_in_place() -> None:
    torch.manual_seed(12)
    net = backbone.MNISTMLP(6, 3, hidden_size=5)
    loader = data(2, 3, (6,), 3, seed=13)
    fresh = fisher_diagonal(net, loader)
    kept = torch.rand_like(fresh)
    start = kept.clone()
    assert fisher_diagonal(net, loader, into=kept, decay=0.9) is kept
    torch.testing.assert_close(kept, 0.9 * start + fresh)


def test_the_fisher_over_a_selection_is_the_selected_part() -> None:
    torch.manual_seed(14)
    net = backbone.MNISTMLP(6, 3, hidden_size=5)
    loader = data(2, 3, (6,), 3, seed=15)
    whole = fisher_diagonal(net, loader)
    part = fisher_diagonal(net, loader, select="no_classifier")
    torch.testing.assert_close(part, whole[: backbone.flat_layout(net).span("classifier").start])


def test_mammoths_loader_items_after_the_targets_are_ignored() -> None:
    torch.manual_seed(16)
    net = backbone.MNISTMLP(6, 3, hidden_size=5)
    loader = data(2, 3, (6,), 3, seed=17)
    with_extra = [(x, y, x.clone(), torch.arange(3)) for x, y in loader]  # (inputs, labels, not_aug_inputs, ...)
    torch.testing.assert_close(fisher_diagonal(net, with_extra), fisher_diagonal(net, loader))


@pytest.mark.parametrize(
    ("loader", "kwargs", "error", "message"),
    [
        ([], {}, ValueError, "loader yielded no example"),
        ([torch.zeros(2, 6)], {}, TypeError, "each batch must be a sequence (inputs, targets, ...), got Tensor"),
        (None, {}, TypeError, "loader must be an iterable"),
        ("default", {"reduction": "max"}, ValueError, "reduction must be 'mean' or 'sum', got 'max'"),
        ("default", {"into": torch.zeros(3)}, ValueError, "into must have shape (73,), one element per"),
        ("default", {"decay": "0.9"}, TypeError, "decay must be a real number, got str"),
        ("default", {"weight_by_probability": 1}, TypeError, "weight_by_probability must be a bool, got int"),
    ],
)
def test_fisher_refuses_bad_arguments(loader: object, kwargs: dict, error: type[Exception], message: str) -> None:  # type: ignore[type-arg]
    net = backbone.MNISTMLP(4, 3, hidden_size=5)
    if loader == "default":
        loader = data(1, 2, (4,), 3, seed=0)
    before = backbone.get_params(net).detach().clone()
    with pytest.raises(error) as info:
        fisher_diagonal(net, loader, **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert torch.equal(backbone.get_params(net), before) and all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("name", ["mnistmlp", "resnet18"])  # vectorised, then one example at a time
def test_a_failure_of_the_model_is_a_value_error_naming_the_cause(name: str) -> None:
    make, shape = NETS[name]
    net = make()
    x = torch.randn(2, *shape[1:])
    with pytest.raises(ValueError, match=r"the model or the loss failed on one example \(.*\): .*out of bounds"):
        fisher_diagonal(net, [(x, torch.tensor([0, 7]))])  # class 7 of 3
    with pytest.raises(ValueError, match=r"the model or the loss failed on one example \(.*\): .*out of bounds"):
        per_sample_grads(net, F.cross_entropy, x, torch.tensor([0, 7]))
    assert all(p.grad is None for p in net.parameters())


def test_fisher_needs_class_indices_and_logits() -> None:
    net = backbone.MNISTMLP(4, 3, hidden_size=5)
    with pytest.raises(TypeError, match="fisher_diagonal needs targets as class indices, an integer tensor"):
        fisher_diagonal(net, [(torch.randn(2, 4), torch.tensor([0.0, 1.0]))])
    features = nn.Sequential(nn.Linear(4, 3), nn.Flatten(0))  # a 1-D output for one example
    with pytest.raises(ValueError, match=r"fisher_diagonal needs module\(x\) to be logits \[1, C\]"):
        fisher_diagonal(features, [(torch.randn(2, 4), torch.tensor([0, 1]))])
    with pytest.raises(TypeError, match="into must be a dense floating-point tensor"):
        fisher_diagonal(net, [(torch.randn(2, 4), torch.tensor([0, 1]))], into=torch.zeros(73, dtype=torch.long))


# --- what the red team found: the model is left as it was, and refusals come first -----------------


def test_a_submodule_used_twice_keeps_its_parameter_objects_and_its_rows_are_the_loops() -> None:
    torch.manual_seed(20)
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, nn.Tanh(), shared, nn.Linear(4, 3))
    weight = shared.weight
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    rows = per_sample_grads(net, F.cross_entropy, x, y)
    fisher_diagonal(net, [(x, y)])
    assert net[0].weight is weight and net[2].weight is weight and isinstance(weight, nn.Parameter)
    assert_rows_close(rows, loop_rows(net, F.cross_entropy, x, y))


def test_tensors_a_forward_keeps_on_the_module_are_put_back() -> None:
    net = backbone.resnet18(3, num_filters=4).eval()
    net.set_return_prerelu(True)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    net(x, returnt="full")
    kept = net.layer1[-1].prerelu
    per_sample_grads(net, F.cross_entropy, x, y)
    assert net.layer1[-1].prerelu is kept
    fresh = backbone.resnet18(3, num_filters=4).eval()
    fresh.set_return_prerelu(True)
    per_sample_grads(fresh, F.cross_entropy, x, y)
    assert not hasattr(fresh.layer1[-1], "prerelu")


def test_buffers_a_training_forward_updates_are_put_back() -> None:
    torch.manual_seed(21)
    net = nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(4, 4)), nn.Linear(4, 3)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    per_sample_grads(net, F.cross_entropy, torch.randn(3, 4), torch.tensor([0, 1, 2]))
    fisher_diagonal(net, [(torch.randn(3, 4), torch.tensor([0, 1, 2]))])
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize(
    ("make_into", "message"),
    [
        (lambda net: torch.zeros(1).expand(73), "into must own each of its elements"),
        (lambda net: torch.zeros(73, device="meta"), "into is on the meta device"),
        (lambda net: _inference(), "into is an inference tensor"),
        (lambda net: _view_of(net), "it shares 'fc1.weight'"),
    ],
)
def test_an_into_that_cannot_be_updated_is_refused_before_any_work(make_into, message: str) -> None:  # type: ignore[no-untyped-def]
    net = backbone.MNISTMLP(4, 3, hidden_size=5)
    into = make_into(net)
    params = backbone.get_params(net).detach().clone()
    with pytest.raises(ValueError, match=message):
        fisher_diagonal(net, [(torch.randn(2, 4), torch.tensor([0, 1]))], into=into)
    assert torch.equal(backbone.get_params(net), params)


def _inference() -> Tensor:
    with torch.inference_mode():
        return torch.zeros(73)


def _view_of(net: nn.Module) -> Tensor:
    big = nn.Parameter(torch.zeros(100))
    net.fc1.weight = nn.Parameter(big.data[:20].view(5, 4))  # the weight lives in a larger storage
    return big.data[20:93]


@pytest.mark.parametrize("decay", [float("nan"), float("inf"), 10**400])
def test_a_decay_that_is_not_finite_is_refused(decay: float) -> None:
    net = backbone.MNISTMLP(4, 3, hidden_size=5)
    into = torch.ones(73)
    with pytest.raises(ValueError, match="decay must be a finite number"):
        fisher_diagonal(net, [(torch.randn(2, 4), torch.tensor([0, 1]))], into=into, decay=decay)
    assert torch.equal(into, torch.ones(73))


def test_an_iterator_of_names_is_read_once() -> None:
    net = backbone.MNISTMLP(4, 3, hidden_size=5)
    loader = data(3, 2, (4,), 3, seed=22)
    expected = fisher_diagonal(net, loader, select=["classifier.bias"])
    torch.testing.assert_close(fisher_diagonal(net, loader, select=iter(["classifier.bias"])), expected)


def test_a_model_that_changes_while_the_loader_runs_is_refused() -> None:
    net = backbone.MNISTMLP(4, 3, hidden_size=5)

    def growing() -> Iterator[tuple[Tensor, Tensor]]:
        yield torch.randn(2, 4), torch.tensor([0, 1])
        net.grow_classifier(4)
        yield torch.randn(2, 4), torch.tensor([0, 3])

    with pytest.raises(ValueError, match="the selected parameters changed shape while the loader ran"):
        fisher_diagonal(net, growing())


def test_with_nothing_to_differentiate_the_model_and_loss_still_run() -> None:
    net = backbone.MNISTMLP(4, 3, hidden_size=5).requires_grad_(False)
    rows = per_sample_grads(net, F.cross_entropy, torch.randn(2, 4), torch.tensor([0, 1]))
    assert rows.shape == (2, 73) and not rows.any()
    with pytest.raises(ValueError, match="the model or the loss failed on one example"):
        per_sample_grads(net, F.cross_entropy, torch.randn(2, 4), torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="the model or the loss failed on one example"):
        fisher_diagonal(net, [(torch.randn(2, 4), torch.tensor([0, 9]))])


def test_an_integer_loss_is_refused_and_small_integer_targets_are_class_indices() -> None:
    net = backbone.MNISTMLP(4, 3, hidden_size=5)
    with pytest.raises(
        ValueError, match=r"loss_fn must return a floating-point scalar to differentiate, got torch\.int64"
    ):
        per_sample_grads(net, lambda out, t: out.argmax(), torch.randn(2, 4), torch.tensor([0, 1]))
    x, y = torch.randn(2, 4), torch.tensor([0, 2])
    torch.testing.assert_close(fisher_diagonal(net, [(x, y.to(torch.uint8))]), fisher_diagonal(net, [(x, y)]))


class WithIdleConv(nn.Module):
    """An MLP plus a convolution that holds parameters but never runs: the same rows, taken the other way."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)
        self.idle = nn.Conv2d(1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def test_the_vectorised_and_the_one_by_one_ways_give_the_rows_of_the_loop() -> None:
    # An all-linear model is vectorised over the batch; one with any other layer holding parameters is taken one
    # example at a time. Both must give the per-example loop's rows, on the same linear layers.
    torch.manual_seed(0)
    with_conv = WithIdleConv()
    mlp = nn.Sequential(copy.deepcopy(with_conv.fc1), nn.Tanh(), copy.deepcopy(with_conv.fc2))
    x, y = torch.randn(9, 6), torch.randint(0, 3, (9,))
    one_by_one = per_sample_grads(with_conv, F.cross_entropy, x, y)
    vectorised = per_sample_grads(mlp, F.cross_entropy, x, y)
    assert_rows_close(one_by_one, loop_rows(with_conv, F.cross_entropy, x, y))
    assert_rows_close(vectorised, loop_rows(mlp, F.cross_entropy, x, y))
    assert_rows_close(one_by_one[:, :-2], vectorised)
    assert torch.equal(one_by_one[:, -2:], torch.zeros(9, 2))  # the idle convolution's weight and bias
    fisher_a = fisher_diagonal(with_conv, [(x, y)])
    fisher_b = fisher_diagonal(mlp, [(x, y)])
    torch.testing.assert_close(fisher_a[:-2], fisher_b, rtol=1e-5, atol=1e-9)


class Recurrent(nn.Module):
    """A sparse embedding, an LSTM and a linear head: taken one example at a time."""

    def __init__(self, sparse: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 4, sparse=sparse)
        self.lstm = nn.LSTM(4, 5, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.lstm(self.embedding(x))[0][:, -1])


@pytest.mark.parametrize("sparse", [False, True])
def test_recurrent_layers_and_sparse_embeddings_give_the_rows_of_the_loop(sparse: bool) -> None:
    # A sparse embedding's gradient reads as its dense value, as get_grads reads a sparse .grad.
    torch.manual_seed(0)
    net = Recurrent(sparse).eval()
    x, y = torch.randint(0, 10, (5, 6)), torch.randint(0, 3, (5,))
    rows = per_sample_grads(net, F.cross_entropy, x, y)
    expected = []
    for i in range(5):
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        expected.append(backbone.get_grads(net))
    net.zero_grad(set_to_none=True)
    assert_rows_close(rows, torch.stack(expected))
    empirical = fisher_diagonal(net, [(x, y)], weight_by_probability=False)
    torch.testing.assert_close(empirical, torch.stack(expected).square().mean(0), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", ["mnistmlp", "resnet18"])  # vectorised, then one example at a time
def test_hooks_on_the_parameter_tensors_do_not_run_and_do_not_change_the_rows(name: str) -> None:
    make, shape = NETS[name]
    torch.manual_seed(0)
    net = make()
    x, y = torch.randn(*shape), torch.randint(0, 3, (shape[0],))
    expected = loop_rows(net, F.cross_entropy, x, y)
    calls = []
    handles = [p.register_hook(lambda g: calls.append(1) or g * 0) for p in net.parameters()]
    rows = per_sample_grads(net, F.cross_entropy, x, y)
    fisher = fisher_diagonal(net, [(x, y)], weight_by_probability=False)
    for handle in handles:
        handle.remove()
    assert calls == []
    assert_rows_close(rows, expected)
    torch.testing.assert_close(fisher, expected.square().mean(0), rtol=1e-5, atol=1e-9)


class Detached(nn.Module):
    """A model whose logits do not depend on its parameters (the output is detached)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x).detach().flatten(1)


@pytest.mark.parametrize("layer", [nn.Linear(4, 3), nn.Conv1d(1, 3, 4)], ids=["vectorised", "one-by-one"])
def test_a_loss_that_does_not_reach_the_parameters_gives_zero_rows(layer: nn.Module) -> None:
    net = Detached(layer)
    x = torch.randn(3, 4) if isinstance(layer, nn.Linear) else torch.randn(3, 1, 4)
    rows = per_sample_grads(net, F.cross_entropy, x, torch.tensor([0, 1, 2]))
    assert rows.shape == (3, 15) and not rows.any()
    assert not fisher_diagonal(net, [(x, torch.tensor([0, 1, 2]))]).any()


class Keeper(nn.Module):
    """A forward that writes onto the module: an attribute that starts as None, a list it appends to, a counter."""

    def __init__(self, conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 1) if conv else None
        self.fc = nn.Linear(4, 3)
        self.tap: Tensor | None = None
        self.feats: list[Tensor] = []
        self.seen: dict[str, int] = {}
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is not None:
            x = self.conv(x.unsqueeze(1)).squeeze(1)
        self.tap = self.fc(x)
        self.feats.append(self.tap)
        self.seen["forward"] = self.seen.get("forward", 0) + 1
        self.calls += 1
        self.added = True
        return self.tap


@pytest.mark.parametrize("conv", [False, True], ids=["vectorised", "one-by-one"])
def test_attributes_and_containers_a_forward_writes_are_put_back(conv: bool) -> None:
    torch.manual_seed(0)
    net = Keeper(conv)
    feats, seen = net.feats, net.seen
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    expected = loop_rows(copy.deepcopy(net), F.cross_entropy, x, y)
    rows = per_sample_grads(net, F.cross_entropy, x, y)
    assert_rows_close(rows, expected)
    assert "tap" in vars(net) and net.tap is None
    assert net.feats is feats and net.feats == []
    assert net.seen is seen and net.seen == {}
    assert net.calls == 0 and not hasattr(net, "added")
    fisher_diagonal(net.eval(), [(x, y)])
    assert net.tap is None and net.feats == [] and net.seen == {} and net.calls == 0 and not hasattr(net, "added")


class Counting(nn.Module):
    """A forward that replaces a registered buffer with a new tensor rather than updating it in place."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        self.count = self.count + 1
        return self.fc(x)


def test_a_buffer_the_forward_replaces_is_put_back_as_the_same_tensor() -> None:
    net = Counting()
    count = net.count
    per_sample_grads(net, F.cross_entropy, torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert net.count is count and float(count) == 0.0
    assert dict(net.named_buffers())["count"] is count


def test_rows_inside_parametrize_cached_are_the_loops() -> None:
    # parametrize.cached() would hand every example the weight computed from the first example's parameters.
    from torch.nn.utils import parametrize

    class Symmetric(nn.Module):
        def forward(self, w: Tensor) -> Tensor:
            return w.triu() + w.triu(1).transpose(-1, -2)

    torch.manual_seed(0)
    for conv in (False, True):
        net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))
        if conv:
            net.insert(0, nn.Sequential(nn.Unflatten(1, (1, 4)), nn.Conv1d(1, 1, 1), nn.Flatten()))
        parametrize.register_parametrization(net[-3], "weight", Symmetric())
        x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
        expected = loop_rows(net, F.cross_entropy, x, y)
        with parametrize.cached():
            net(x[:1])  # the cache holds the weight from the module's own parameters
            rows = per_sample_grads(net, F.cross_entropy, x, y)
            assert parametrize._cache_enabled == 1
        assert_rows_close(rows, expected)


@pytest.mark.parametrize("conv", [False, True], ids=["all-linear", "with-conv"])
def test_backward_hooks_on_modules_run_as_in_the_loop(conv: bool) -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)]
    if conv:
        layers = [nn.Unflatten(1, (1, 4)), nn.Conv1d(1, 1, 1), nn.Flatten(), *layers]
    net = nn.Sequential(*layers)
    net[-2].register_full_backward_hook(lambda module, grad_in, grad_out: (grad_in[0] * 2,))
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    expected = loop_rows(net, F.cross_entropy, x, y)
    assert_rows_close(per_sample_grads(net, F.cross_entropy, x, y), expected)
    plain = copy.deepcopy(net)
    plain[-2]._backward_hooks.clear()
    assert not torch.allclose(per_sample_grads(plain, F.cross_entropy, x, y), expected)  # the hook mattered


@pytest.mark.parametrize(
    "bad",
    [
        lambda: torch.eye(3).to_sparse(),
        lambda: torch.nested.nested_tensor([torch.randn(3), torch.randn(3)]),
    ],
    ids=["sparse", "nested"],
)
@pytest.mark.parametrize("which", ["inputs", "targets"])
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_sparse_and_nested_batches_are_type_errors(bad, which: str) -> None:  # type: ignore[no-untyped-def]
    net = nn.Linear(3, 3)
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    batch = {"inputs": x, "targets": y, which: bad()}
    with pytest.raises(TypeError, match=f"{which} must be a dense"):
        per_sample_grads(net, F.cross_entropy, batch["inputs"], batch["targets"])
    with pytest.raises(TypeError, match=f"{which} must be a dense"):
        fisher_diagonal(net, [(batch["inputs"], batch["targets"])])


def test_numpy_scalars_are_real_numbers_for_decay() -> None:
    np = pytest.importorskip("numpy")
    net = nn.Linear(3, 2)
    data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    fisher = fisher_diagonal(net, data)
    online = fisher_diagonal(net, data, into=fisher.clone(), decay=np.float32(0.5))
    torch.testing.assert_close(online, 1.5 * fisher)


class CountsInPlace(nn.Module):
    """All linear, but its forward appends to a list and then updates a buffer in place, which torch.func refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 3)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.seen: list[Tensor] = []
        self.scale = 1.0

    def forward(self, x: Tensor) -> Tensor:
        # Each call doubles the scale: the failed vectorised attempt must leave it as it was for the loop.
        h = torch.tanh(self.fc1(x))
        self.seen.append(h)
        self.scale = self.scale * 2.0
        self.calls += 1
        return self.fc2(h) * self.scale


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_a_model_torch_func_cannot_run_gives_the_loops_rows(chunk_size: int | None) -> None:
    torch.manual_seed(0)
    net = CountsInPlace()
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    expected = loop_rows(copy.deepcopy(net), F.cross_entropy, x, y)
    calls, seen = net.calls, net.seen
    assert_rows_close(per_sample_grads(net, F.cross_entropy, x, y, chunk_size=chunk_size), expected)
    assert net.calls is calls and int(calls) == 0 and net.seen is seen and seen == [] and net.scale == 1.0
    fisher = fisher_diagonal(net.eval(), [(x, y)], chunk_size=chunk_size)
    torch.testing.assert_close(fisher, fisher_diagonal(copy.deepcopy(net), [(x, y)]))
    assert int(calls) == 0 and seen == []


class Slotted(nn.Module):
    """A module whose forward writes to attributes declared in __slots__."""

    __slots__ = ("__private", "last")

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.last = 0

    def forward(self, x: Tensor) -> Tensor:
        self.last += 1
        self.__private = x
        return self.fc(x)


def test_slots_a_forward_sets_are_put_back() -> None:
    net = Slotted()
    per_sample_grads(net, F.cross_entropy, torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert net.last == 0
    assert not hasattr(net, "_Slotted__private")


def raises(kind: type[Exception]) -> nn.Module:
    class Failing(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            raise kind("broken on purpose")

    return Failing(4, 3)


@pytest.mark.parametrize("kind", [AssertionError, KeyError, TypeError, ZeroDivisionError, RuntimeError])
@pytest.mark.parametrize("conv", [False, True], ids=["all-linear", "with-conv"])
def test_any_exception_of_the_model_is_a_value_error_naming_it(kind: type[Exception], conv: bool) -> None:
    layers = [nn.Unflatten(1, (1, 4)), nn.Conv1d(1, 1, 1), nn.Flatten()] if conv else []
    net = nn.Sequential(*layers, raises(kind))
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    message = rf"the model or the loss failed on one example \(example 0 of the batch\): {kind.__name__}: .*on purpose"
    with pytest.raises(ValueError, match=message):
        per_sample_grads(net, F.cross_entropy, x, y)
    with pytest.raises(ValueError, match=message):
        fisher_diagonal(net.eval(), [(x, y)])


def test_a_loss_that_fails_with_an_assertion_is_a_value_error() -> None:
    # cross_entropy with probability targets of the wrong number of classes asserts on the vectorised way.
    net = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="the model or the loss failed on one example"):
        per_sample_grads(net, F.cross_entropy, torch.randn(3, 4), torch.rand(3, 2))
