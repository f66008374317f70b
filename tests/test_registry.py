"""The backbone registry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nets import TinyNet

from backbone import (
    MNISTMLP,
    MammothBackbone,
    ResNet,
    get_backbone,
    list_backbones,
    register_backbone,
    registered,
    unregister_backbone,
)

BUILTIN = ["mnistmlp", "reduced-resnet18", "resnet18", "resnet32", "resnet34", "resnet50"]


@pytest.fixture
def scratch() -> Iterator[str]:
    yield "scratch-net"
    if "scratch-net" in list_backbones():
        unregister_backbone("scratch-net")


def test_builtin_names_sorted() -> None:
    assert [n for n in list_backbones() if n in BUILTIN] == BUILTIN
    assert list_backbones() == sorted(list_backbones())


@pytest.mark.parametrize("name", ["resnet18", "ResNet18", "RESNET18", " resnet18 "])
def test_names_are_case_insensitive(name: str) -> None:
    net = get_backbone(name, num_classes=3)
    assert isinstance(net, ResNet) and net.classifier.out_features == 3


@pytest.mark.parametrize("name", ["reduced_resnet18", "Reduced-ResNet18", "REDUCED_RESNET18"])
def test_underscore_equals_dash(name: str) -> None:
    net = get_backbone(name, num_classes=10)
    assert net.num_filters == 20


def test_get_backbone_builds_classes_with_kwargs() -> None:
    net = get_backbone("mnistmlp", input_size=20, output_size=4, hidden_size=7)
    assert isinstance(net, MNISTMLP) and net.feature_dim == 7


def test_unknown_name_lists_known_names_and_closest_match() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet-18'") as info:
        get_backbone("resnet-18", num_classes=10)
    message = str(info.value)
    assert all(name in message for name in BUILTIN)
    assert "did you mean 'resnet18'?" in message


def test_unknown_name_with_no_close_match_has_no_hint() -> None:
    with pytest.raises(ValueError) as info:
        get_backbone("transformer")
    assert "did you mean" not in str(info.value)


def test_wrong_keyword_names_the_accepted_ones() -> None:
    with pytest.raises(TypeError, match=r"resnet18 accepts num_classes, num_filters=64; .*\['n_classes'\]"):
        get_backbone("resnet18", n_classes=10)


def test_missing_argument_names_the_accepted_ones() -> None:
    with pytest.raises(TypeError, match="mnistmlp accepts input_size, output_size, hidden_size=100; missing"):
        get_backbone("mnistmlp", input_size=784)


def test_register_function_and_class(scratch: str) -> None:
    @register_backbone(scratch)
    def factory(width: int = 3) -> MammothBackbone:
        return TinyNet(hidden=width)

    assert scratch in list_backbones()
    assert get_backbone("Scratch_Net", width=5).feature_dim == 5
    assert registered(scratch).builder is factory


def test_register_twice_is_a_value_error(scratch: str) -> None:
    register_backbone(scratch)(TinyNet)
    with pytest.raises(ValueError, match="'scratch-net' is already registered"):
        register_backbone("SCRATCH_NET")(TinyNet)
    with pytest.raises(ValueError, match="'resnet18' is already registered"):
        register_backbone("resnet18")(TinyNet)


def test_register_rejects_non_backbone_classes(scratch: str) -> None:
    with pytest.raises(TypeError, match="MammothBackbone subclass or a factory"):
        register_backbone(scratch)(dict)  # type: ignore[type-var]
    assert scratch not in list_backbones()


def test_factory_returning_a_non_backbone_is_a_type_error(scratch: str) -> None:
    register_backbone(scratch)(lambda: object())  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="returned object, not a MammothBackbone"):
        get_backbone(scratch)


def test_unregister_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        unregister_backbone("never-registered")


def test_non_string_name() -> None:
    with pytest.raises(TypeError, match="name must be a str, got int"):
        get_backbone(18)  # type: ignore[arg-type]


def test_override_replaces_an_entry_and_says_how_when_refused() -> None:
    from backbone import MNISTMLP, get_backbone, register_backbone, registered, unregister_backbone

    original = registered("resnet18")
    with pytest.raises(ValueError, match="pass override=True to replace it, or unregister_backbone"):
        register_backbone("resnet18")(MNISTMLP)
    try:
        register_backbone("resnet18", override=True)(lambda num_classes: MNISTMLP(4, num_classes))
        assert isinstance(get_backbone("resnet18", num_classes=3), MNISTMLP)
    finally:
        unregister_backbone("resnet18")
        register_backbone(
            "resnet18",
            example_kwargs=original.example_kwargs,
            override=False,
            example_input_shape=original.example_input_shape,
        )(original.builder)
    assert registered("resnet18") == original
