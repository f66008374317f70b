"""Flat operations over a selection: the plain definitions over the selected parameters, the rest untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import backbone
from backbone import MNISTMLP, carry_vector, flat_layout, selected_parameters


def partly_frozen() -> MNISTMLP:
    torch.manual_seed(0)
    net = MNISTMLP(6, 3, hidden_size=5)
    net.fc1.requires_grad_(False)
    return net


def trained(net: nn.Module) -> nn.Module:
    net(torch.randn(4, 6)).sum().backward()
    return net


def cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


SELECTIONS = ["trainable", "no_classifier", ["fc2.weight", "classifier.bias"], lambda name, p: name.endswith("bias")]


@pytest.mark.parametrize("select", SELECTIONS)
def test_getters_are_the_concatenation_of_the_selected_parameters(select: object) -> None:
    net = trained(partly_frozen())
    picked = [p for _, p in selected_parameters(net, select)]  # type: ignore[arg-type]
    assert torch.equal(backbone.get_params(net, select=select), cat(picked))  # type: ignore[arg-type]
    expected = cat([torch.zeros_like(p) if p.grad is None else p.grad for p in picked])
    assert torch.equal(backbone.get_grads(net, select=select), expected)  # type: ignore[arg-type]
    out = torch.full((expected.numel(),), float("nan"))
    assert backbone.get_grads(net, out=out, select=select) is out and torch.equal(out, expected)  # type: ignore[arg-type]
    assert [g.numel() for g in backbone.get_grads_list(net, select=select)] == [p.numel() for p in picked]  # type: ignore[arg-type]
    assert flat_layout(net, select=select).numel == expected.numel()  # type: ignore[arg-type]


@pytest.mark.parametrize("select", SELECTIONS)
def test_setters_write_the_selected_parameters_and_nothing_else(select: object) -> None:
    net = trained(partly_frozen())
    picked = {id(p) for _, p in selected_parameters(net, select)}  # type: ignore[arg-type]
    others = [(p, p.detach().clone(), p.grad) for p in net.parameters() if id(p) not in picked]
    n = flat_layout(net, select=select).numel  # type: ignore[arg-type]
    backbone.set_params(net, torch.arange(float(n)), select=select)  # type: ignore[arg-type]
    backbone.set_grads(net, -torch.arange(float(n)), select=select)  # type: ignore[arg-type]
    backbone.add_grads(net, torch.ones(n), alpha=2.0, select=select)  # type: ignore[arg-type]
    assert torch.equal(backbone.get_params(net, select=select), torch.arange(float(n)))  # type: ignore[arg-type]
    assert torch.equal(backbone.get_grads(net, select=select), 2 - torch.arange(float(n)))  # type: ignore[arg-type]
    for p, value, grad in others:
        assert torch.equal(p, value) and p.grad is grad


def test_a_vector_for_the_whole_model_is_refused_for_a_selection_and_nothing_changes() -> None:
    net = trained(partly_frozen())
    before = backbone.get_params(net).detach().clone(), backbone.get_grads(net)
    with pytest.raises(ValueError, match="new_params must have 48 elements"):
        backbone.set_params(net, torch.zeros(73), select="trainable")
    with pytest.raises(ValueError, match=r"select names 'fc9\.weight'"):
        backbone.set_grads(net, torch.zeros(73), select=["fc9.weight"])
    assert torch.equal(backbone.get_params(net), before[0]) and torch.equal(backbone.get_grads(net), before[1])


def test_trainable_follows_freezing_between_calls() -> None:
    net = partly_frozen()
    assert backbone.get_params(net, select="trainable").numel() == 48
    net.fc1.requires_grad_(True)
    assert backbone.get_params(net, select="trainable").numel() == 83
    net.requires_grad_(False)
    with pytest.raises(ValueError, match="select='trainable' picks no parameter of MNISTMLP"):
        backbone.get_params(net, select="trainable")


def test_all_but_the_classifier_is_untouched_by_growth_and_carries_by_name() -> None:
    net = partly_frozen()
    body = flat_layout(net, select="no_classifier")
    anchor = backbone.get_params(net, select="no_classifier").detach().clone()
    trainable = flat_layout(net, select="trainable")
    importance = torch.rand(trainable.numel)
    net.grow_classifier(5)
    assert flat_layout(net, select="no_classifier") == body  # the body's vectors need no carrying
    assert torch.equal(backbone.get_params(net, select="no_classifier"), anchor)
    carried = carry_vector(importance, trainable, flat_layout(net, select="trainable"))
    new = flat_layout(net, select="trainable")
    assert torch.equal(new.view(carried, "fc2.weight"), trainable.view(importance, "fc2.weight"))
    assert torch.equal(new.view(carried, "classifier.bias")[:3], trainable.view(importance, "classifier.bias"))
    assert not new.view(carried, "classifier.bias")[3:].any()


def test_a_layout_as_the_selection_is_refused_once_the_model_changed() -> None:
    net = partly_frozen()
    layout = flat_layout(net, select="trainable")
    assert torch.equal(backbone.get_params(net, select=layout), backbone.get_params(net, select="trainable"))
    net.grow_classifier(4)
    with pytest.raises(ValueError, match=r"select's layout has 'classifier\.weight' as"):
        backbone.get_grads(net, select=layout)


# --- the methods, and Mammoth's name for all but the classifier ------------------------------


def test_the_methods_take_the_selection() -> None:
    net = trained(partly_frozen())
    for select in SELECTIONS:
        assert torch.equal(net.get_params(select=select), backbone.get_params(net, select=select))  # type: ignore[arg-type]
        assert torch.equal(net.get_grads(select=select), backbone.get_grads(net, select=select))  # type: ignore[arg-type]
    n = flat_layout(net, select="trainable").numel
    net.set_params(torch.zeros(n), select="trainable")
    net.set_grads(torch.ones(n), select="trainable")
    assert not net.get_params(select="trainable").any() and net.fc1.weight.abs().sum() > 0
    assert [g.numel() for g in net.get_grads_list(select="trainable")] == [25, 5, 15, 3]
    assert torch.equal(torch.cat(net.get_grads_list(select="trainable")), torch.ones(n))


def test_discard_classifier_is_mammoths_name_for_no_classifier() -> None:
    vit = backbone.VisionTransformer(img_size=8, patch_size=4, num_classes=3, embed_dim=4, depth=1, num_heads=1)
    vit(torch.randn(2, 3, 8, 8)).sum().backward()
    body = [p for name, p in vit.named_parameters() if not name.startswith("head.")]
    assert torch.equal(vit.get_params(discard_classifier=True), cat(body))
    assert torch.equal(vit.get_grads(discard_classifier=True), cat([p.grad for p in body]))
    assert torch.equal(vit.get_params(discard_classifier=True, select="no_classifier"), cat(body))
    assert torch.equal(vit.get_params(discard_classifier=False), cat(list(vit.parameters())))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"discard_classifier": 1}, TypeError, "discard_classifier must be a bool, got int"),
        (
            {"discard_classifier": True, "select": "trainable"},
            TypeError,
            "discard_classifier=True is select='no_classifier'; pass one of them, got select='trainable' too",
        ),
    ],
)
def test_discard_classifier_refusals(kwargs: dict, error: type[Exception], message: str) -> None:  # type: ignore[type-arg]
    net = partly_frozen()
    for getter in (net.get_params, net.get_grads):
        with pytest.raises(error) as info:
            getter(**kwargs)
        assert str(info.value) == message


# --- what the red team found ---------------------------------------------------------------------


@pytest.mark.parametrize("getter", ["get_params", "get_grads"])
def test_out_may_not_overlap_a_parameter_or_gradient_the_selection_leaves_out(getter: str) -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    net(torch.randn(4, 3)).sum().backward()
    victim = net[0].weight if getter == "get_params" else net[0].weight.grad
    before = victim.detach().clone()
    out = victim.detach().view(-1)[:2]
    with pytest.raises(ValueError, match=r"out must not share memory with the model, but it overlaps the"):
        getattr(backbone, getter)(net, out=out, select=["1.bias"])
    assert torch.equal(victim, before)


def test_names_are_read_from_the_slots_whatever_named_parameters_takes() -> None:
    class OldStyle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 2)

        def named_parameters(self, prefix: str = "", recurse: bool = True):  # type: ignore[no-untyped-def, override]
            return super().named_parameters(prefix, recurse)

    assert [name for name, _ in selected_parameters(OldStyle(), ["a.bias"])] == ["a.bias"]


def test_a_get_classifier_that_raises_attribute_error_means_no_classifier() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(2, 2)

        def get_classifier(self) -> nn.Module:
            return self.head  # type: ignore[no-any-return]  # no such attribute

    with pytest.raises(TypeError, match="select='no_classifier' needs a classifier, but Broken has none"):
        backbone.get_params(Broken(), select="no_classifier")
