"""A selection of parameters: which ones each form picks, resolved against the module as it is at the call."""

from __future__ import annotations

import pytest
from nets import TiedFrozenUnused, TinyNet
from torch import nn

import backbone
from backbone import SELECTIONS, selected_parameters


def names(module: nn.Module, select: object = None) -> list[str]:
    return [name for name, _ in selected_parameters(module, select)]  # type: ignore[arg-type]


def test_all_is_named_parameters_each_tied_parameter_once() -> None:
    net = TiedFrozenUnused()
    expected = [name for name, _ in net.named_parameters()]
    assert names(net) == names(net, "all") == expected
    assert [p for _, p in selected_parameters(net)] == list(net.parameters())
    assert SELECTIONS == ("all", "trainable", "no_classifier")


def test_trainable_follows_requires_grad_at_each_call() -> None:
    net = TinyNet()
    assert names(net, "trainable") == names(net)
    net.stage1.requires_grad_(False)
    assert names(net, "trainable") == ["stage2.weight", "stage2.bias", "classifier.weight", "classifier.bias"]
    net.stage1.weight.requires_grad_(True)
    assert names(net, "trainable")[0] == "stage1.weight"


def test_no_classifier_leaves_out_what_get_classifier_returns() -> None:
    vit = backbone.VisionTransformer(img_size=8, patch_size=4, num_classes=3, embed_dim=4, depth=1, num_heads=1)
    picked = names(vit, "no_classifier")
    assert "head.weight" not in picked and "head.bias" not in picked
    assert picked == [n for n in names(vit) if not n.startswith("head.")]

    class Plain(nn.Module):  # no get_classifier: the classifier attribute
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(2, 2)
            self.classifier = nn.Linear(2, 1)

    assert names(Plain(), "no_classifier") == ["body.weight", "body.bias"]


@pytest.mark.parametrize("module", [nn.Linear(2, 2), backbone.MammothBackbone()])
def test_no_classifier_without_a_classifier_is_refused(module: nn.Module) -> None:
    with pytest.raises(TypeError) as info:
        selected_parameters(module, "no_classifier")
    assert str(info.value) == (
        f"select='no_classifier' needs a classifier, but {type(module).__name__} has none "
        "(expected get_classifier() or a classifier attribute that is a module)"
    )


def test_names_pick_in_flat_order_and_a_tied_parameter_answers_to_each_name() -> None:
    net = TiedFrozenUnused()
    assert names(net, ["classifier.bias", "encoder.bias"]) == ["encoder.bias", "classifier.bias"]
    assert names(net, ("decoder.weight",)) == ["encoder.weight"]  # the tied weight, under its first name
    assert names(net, iter(["frozen.weight", "frozen.weight"])) == ["frozen.weight"]


def test_an_unknown_name_is_refused_with_close_matches() -> None:
    with pytest.raises(ValueError) as info:
        selected_parameters(TinyNet(), ["stage1.wieght"])
    assert str(info.value) == (
        "select names 'stage1.wieght', which TinyNet has no parameter of; did you mean 'stage1.weight' or "
        "'stage2.weight' or 'stage1.bias'?"
    )
    with pytest.raises(ValueError) as info:
        selected_parameters(TinyNet(), ["zzz"])
    assert str(info.value) == "select names 'zzz', which TinyNet has no parameter of"


def test_a_predicate_is_asked_about_each_parameter() -> None:
    net = TinyNet()
    assert names(net, lambda name, p: p.dim() == 1) == ["stage1.bias", "stage2.bias", "classifier.bias"]
    with pytest.raises(TypeError) as info:
        selected_parameters(net, lambda name, p: p.sum())
    assert str(info.value) == "select's predicate must return a bool, got Tensor for parameter 'stage1.weight'"


def test_a_layout_picks_its_parameters_while_they_are_as_it_describes() -> None:
    net = TinyNet()
    layout = backbone.flat_layout(net)
    assert names(net, layout) == names(net)
    net.grow_classifier(4)
    with pytest.raises(ValueError) as info:
        selected_parameters(net, layout)
    assert str(info.value) == (
        "select's layout has 'classifier.weight' as (2, 3) torch.float32, but it is now (4, 3) torch.float32; "
        "take a new layout (and carry kept vectors with carry_vector)"
    )
    del net.stage2
    with pytest.raises(ValueError, match=r"select's layout covers 'stage2\.weight', which TinyNet no longer has"):
        selected_parameters(net, backbone.flat_layout(TinyNet()))


@pytest.mark.parametrize(
    ("select", "error", "message"),
    [
        ("heads", ValueError, "select must be one of 'all', 'trainable', 'no_classifier', a predicate"),
        ([], ValueError, "select=[] picks no parameter of TinyNet; expected a selection of at least one parameter"),
        (lambda n, p: False, ValueError, "select=<function> picks no parameter of TinyNet"),
        (3, TypeError, "select must be one of 'all', 'trainable', 'no_classifier', None, a predicate"),
        ([1, 2], TypeError, "select's parameter names must be strings, got int"),
        ({"stage1.weight": True}, TypeError, "got dict"),
    ],
)
def test_bad_selections_are_refused(select: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        selected_parameters(TinyNet(), select)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_an_empty_trainable_selection_is_refused() -> None:
    net = TinyNet().requires_grad_(False)
    with pytest.raises(ValueError, match="select='trainable' picks no parameter of TinyNet"):
        selected_parameters(net, "trainable")
    assert names(net) == names(TinyNet())  # all still means all


def test_selection_keeps_no_reference_to_the_module() -> None:
    import gc
    import weakref

    net = TinyNet()
    selected_parameters(net, "trainable")
    ref = weakref.ref(net)
    del net
    gc.collect()
    assert ref() is None
