"""grow_classifier over heads that grow themselves, and grow_to_fit: whole refusal messages, the
prefixes a saved state dict may carry, and the random numbers the fit check must not draw."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from backbone import MNISTMLP, CosineClassifier, MultiHeadClassifier, grow_classifier, grow_to_fit


class WithHead(nn.Module):
    """A plain module holding a head as ``classifier``, with no init_classifier unless given one."""

    def __init__(self, head: nn.Module, init: Any = None) -> None:
        super().__init__()
        self.classifier = head
        if init is not None:
            self.init_classifier = init

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x)


class Recording(nn.Module):
    """A head with grow_classes and no out_features: records what it is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, 3))
        self.asked: list[tuple[int, Any]] = []

    def grow_classes(self, num_classes: int, *, optimizer: Any = None, init: Any = None) -> None:
        self.asked.append((num_classes, init))


def test_a_head_that_grows_itself_cannot_shrink_and_the_message_says_so() -> None:
    net = WithHead(CosineClassifier(3, 5))
    with pytest.raises(ValueError) as info:
        grow_classifier(net, 4)
    assert str(info.value) == "num_classes must be at least the current 5 (growing only), got 4"
    assert net.classifier.out_features == 5


def test_a_head_without_out_features_is_asked_for_any_size_and_gets_no_init_it_cannot_call() -> None:
    head = Recording()
    grow_classifier(WithHead(head), 0)
    grow_classifier(WithHead(head, init="not callable"), 7)
    assert head.asked == [(0, None), (7, None)]


def test_a_callable_init_classifier_reaches_a_head_that_grows_itself() -> None:
    head = Recording()

    def init(module: nn.Module) -> None:
        pass

    grow_classifier(WithHead(head, init=init), 4)
    assert head.asked == [(4, init)]


def test_an_optimizer_without_the_linear_classifier_is_refused_with_the_whole_message() -> None:
    net = MNISTMLP(4, 2, hidden_size=3)
    optimizer = torch.optim.SGD(net.fc1.parameters(), lr=0.1)
    with pytest.raises(ValueError) as info:
        grow_classifier(net, 5, optimizer=optimizer)
    assert str(info.value) == (
        "the optimizer holds none of the classifier's parameters, so there is nothing of it to carry; "
        "grow without optimizer= or pass the optimizer that trains the classifier"
    )
    assert net.classifier.out_features == 2


# --- grow_to_fit ---------------------------------------------------------------


def saved_after_growth(num_classes: int, *, bias: bool = True) -> tuple[nn.Module, dict[str, Tensor]]:
    trained = nn.Sequential()
    trained.add_module("body", nn.Linear(4, 3))
    trained.add_module("classifier", nn.Linear(3, 2, bias=bias))
    grow_classifier(trained, num_classes)
    return trained, trained.state_dict()


def fresh(bias: bool = True) -> nn.Sequential:
    net = nn.Sequential()
    net.add_module("body", nn.Linear(4, 3))
    net.add_module("classifier", nn.Linear(3, 2, bias=bias))
    return net


@pytest.mark.parametrize(
    "state_dict, message",
    [
        ([1, 2], "state_dict must be a mapping of names to tensors, got list"),
        ({"body.weight": torch.zeros(3, 4)}, "the state dict has no tensor classifier.weight for the classifier"),
        (
            {"classifier.weight": torch.zeros(1, 3), "classifier.bias": torch.zeros(1)},
            "the state dict's classifier has 1 classes, fewer than the model's 2",
        ),
        (
            {"classifier.weight": torch.zeros(5), "classifier.bias": torch.zeros(5)},
            "the state dict's classifier is not this classifier grown: classifier.weight: saved (5,), grown (5, 3)",
        ),
        (
            {"classifier.weight": torch.zeros(5, 3)},
            "the state dict's classifier is not this classifier grown: classifier.bias: saved missing, grown (5,)",
        ),
        (
            {"classifier.weight": torch.zeros(5, 3), "classifier.bias": "oops"},
            "the state dict's classifier is not this classifier grown: classifier.bias: saved str, grown (5,)",
        ),
        (
            {
                "classifier.weight": torch.zeros(5, 3),
                "classifier.bias": torch.zeros(5),
                "classifier.extra": torch.ones(1),
            },
            "the state dict's classifier is not this classifier grown: classifier.extra: saved (1,), grown missing",
        ),
    ],
    ids=["not-a-mapping", "no-weight", "fewer", "1-d-weight", "missing-bias", "not-a-tensor", "extra-key"],
)
def test_grow_to_fit_refusals_name_what_is_wrong_and_change_nothing(state_dict: Any, message: str) -> None:
    net = fresh()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises((TypeError, ValueError)) as info:
        grow_to_fit(net, state_dict)
    assert str(info.value) == message
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in before.items()}


def test_a_module_without_a_classifier_or_one_outside_it_is_refused_by_name() -> None:
    with pytest.raises(TypeError) as info:
        grow_to_fit(nn.Sequential(nn.Linear(2, 2)), {})
    assert str(info.value) == "grow_to_fit needs a module with a classifier, got Sequential"

    class Outside(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(2, 2)

        def get_classifier(self) -> nn.Module:
            return nn.Linear(2, 3)  # a classifier that is not a submodule: nowhere in the state dict

    with pytest.raises(TypeError) as info:
        grow_to_fit(Outside(), {})
    assert str(info.value) == "grow_to_fit needs a module with a classifier, got Outside"


def test_a_state_dict_with_as_many_classes_changes_nothing() -> None:
    net = fresh()
    weight = net.classifier.weight.detach().clone()
    assert grow_to_fit(net, fresh().state_dict()) == 2
    assert torch.equal(net.classifier.weight, weight)


def test_more_classes_than_input_features_grow() -> None:
    # The number of classes is the weight's first dimension, not its second (3 input features here).
    _, state = saved_after_growth(10)
    net = fresh()
    assert grow_to_fit(net, state) == 10
    net.load_state_dict(state)


def test_a_classifier_without_a_bias_grows_to_fit() -> None:
    _, state = saved_after_growth(6, bias=False)
    net = fresh(bias=False)
    assert grow_to_fit(net, state) == 6
    net.load_state_dict(state)


@pytest.mark.parametrize("wrap", ["module.", "_orig_mod."])
def test_a_state_dict_saved_through_a_wrapper_is_read(wrap: str) -> None:
    # DataParallel/DDP save under "module.", torch.compile under "_orig_mod.".
    _, state = saved_after_growth(7)
    net = fresh()
    assert grow_to_fit(net, {wrap + k: v for k, v in state.items()}) == 7
    assert net.classifier.weight.shape == (7, 3)


def test_a_submodule_named_module_is_not_taken_for_a_wrapper() -> None:
    # The model's own keys come first: "module.classifier.*" here belongs to a submodule called "module".
    class Nested(nn.Module):
        def __init__(self, outer: int, inner: int) -> None:
            super().__init__()
            self.module = nn.Module()
            self.module.classifier = nn.Linear(3, inner)
            self.classifier = nn.Linear(3, outer)

    net = Nested(2, 2)
    assert grow_to_fit(net, Nested(5, 3).state_dict()) == 5
    assert net.classifier.out_features == 5


def test_the_fit_check_draws_no_random_numbers() -> None:
    # grow_to_fit gives the new units what grow_classifier gives them from the same seed: checking the
    # state dict on a probe first must not draw from the generator (the probe lives on the meta device).
    _, state = saved_after_growth(6)
    for make in (fresh, lambda: WithHead(CosineClassifier(3, 2))):
        a, b = make(), make()
        b.load_state_dict(a.state_dict())
        target = (
            state
            if isinstance(a, nn.Sequential)
            else {
                "classifier.weight": torch.zeros(6, 3),
                **{k: v for k, v in a.state_dict().items() if k != "classifier.weight"},
            }
        )
        torch.manual_seed(1)
        grow_to_fit(a, target)
        torch.manual_seed(1)
        grow_classifier(b, 6)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_grouped_heads_grow_group_by_group_from_several_groups() -> None:
    net = WithHead(MultiHeadClassifier(3, [2, 3]))
    saved = WithHead(MultiHeadClassifier(3, [2, 3]))
    grow_classifier(saved, 9)
    assert grow_to_fit(net, saved.state_dict()) == 9
    assert net.classifier.group_sizes == [2, 3, 4]
    net.load_state_dict(saved.state_dict())


def test_groups_that_do_not_extend_the_heads_are_refused_with_both_lists() -> None:
    net = WithHead(MultiHeadClassifier(3, [3]))
    with pytest.raises(ValueError) as info:
        grow_to_fit(net, WithHead(MultiHeadClassifier(3, [2, 3])).state_dict())
    assert str(info.value) == "the state dict's groups [2, 3] do not extend the classifier's groups [3]"


def test_at_most_four_differences_are_shown() -> None:
    net = WithHead(MultiHeadClassifier(3, [2]))
    state = WithHead(MultiHeadClassifier(3, [2, 2, 2])).state_dict()
    state = {**state, **{f"classifier.extra{i}": torch.zeros(1) for i in range(5)}}
    with pytest.raises(ValueError) as info:
        grow_to_fit(net, state)
    shown = str(info.value).split(": ", 1)[1].split(", classifier.")
    assert len(shown) == 4
