"""The one walk behind every flat vector, and the layout it describes.

``backbone.layout.walk`` reads the modules' slots directly when every method
of the walk is torch's own; these tests hold it to ``named_parameters()``
over random and odd trees, and check that the flat operations and
``flat_layout`` agree with it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_flat_properties import Case, cases
from torch import nn
from torch.nn.utils import parametrize

import backbone
from backbone.layout import walk


def named(module: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    pairs = list(module.named_parameters())
    return [n for n, _ in pairs], [p for _, p in pairs]


def assert_same_walk(module: nn.Module) -> None:
    names, params = walk(module)
    expected_names, expected_params = named(module)
    assert names == expected_names
    assert len(params) == len(expected_params) and all(map(lambda a, b: a is b, params, expected_params))


@given(cases(), st.data())
def test_walk_is_named_parameters_on_random_trees(case: Case, data: st.DataObject) -> None:
    module = case.module
    modules = list(module.modules())
    # Share a subtree under a second name, and leave empty slots, as real models do.
    if data.draw(st.booleans()):
        data.draw(st.sampled_from(modules)).add_module("again", data.draw(st.sampled_from(modules[1:] or modules)))
    if data.draw(st.booleans()):
        data.draw(st.sampled_from(modules)).register_parameter("empty", None)
        data.draw(st.sampled_from(modules)).add_module("nothing", None)
    assert_same_walk(module)


@pytest.mark.parametrize("name", backbone.list_backbones())
def test_walk_is_named_parameters_on_every_registered_backbone(name: str) -> None:
    kwargs = {"input_size": 4, "output_size": 3} if name == "mnistmlp" else {"num_classes": 3}
    assert_same_walk(backbone.get_backbone(name, **kwargs))


def test_a_module_listed_twice_is_walked_once() -> None:
    shared = nn.Linear(2, 2)
    net = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(2, 1))
    assert walk(net)[0] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert_same_walk(net)


def test_parametrized_weights_walk_as_torch_does() -> None:
    class Double(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    net = nn.Sequential(nn.Linear(3, 2))
    parametrize.register_parametrization(net[0], "weight", Double())
    assert "0.parametrizations.weight.original" in walk(net)[0]
    assert_same_walk(net)


class OwnNamedModules(nn.Module):
    """A child whose named_modules hides its second layer: the walk must ask it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):  # type: ignore[no-untyped-def,override]
        yield prefix, self
        yield from self.a.named_modules(memo, prefix + ".a" if prefix else "a", remove_duplicate)


class OwnNamedParameters(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 3)

    def named_parameters(  # type: ignore[override]
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        yield from self.b.named_parameters(prefix="b")


@pytest.mark.parametrize("make", [lambda: nn.Sequential(OwnNamedModules()), OwnNamedParameters])
def test_a_class_that_redefines_the_walk_is_asked(make) -> None:  # type: ignore[no-untyped-def]
    net = make()
    assert_same_walk(net)
    expected = torch.cat([p.detach().reshape(-1) for _, p in net.named_parameters()])
    assert torch.equal(backbone.get_params(net).detach(), expected)
    assert backbone.flat_layout(net).numel == expected.numel()


def test_walk_refuses_what_is_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"expected a torch\.nn\.Module, got str"):
        walk("net")


@given(cases())
def test_flat_layout_describes_where_get_params_puts_each_parameter(case: Case) -> None:
    layout = backbone.flat_layout(case.module)
    vector = backbone.get_params(case.module).detach()
    assert layout.numel == vector.numel()
    for entry, (name, p) in zip(layout, case.module.named_parameters(), strict=True):
        assert entry.name == name and entry.shape == tuple(p.shape) and entry.dtype == p.dtype
        assert torch.equal(layout.view(vector, name), p.detach().to(vector.dtype))


def test_a_very_deep_model_is_walked() -> None:
    root = current = nn.Module()
    for _ in range(3000):  # deeper than Python's recursion limit allows a recursive walk
        current.child = nn.Module()
        current = current.child
    current.p = nn.Parameter(torch.ones(1))
    names, params = walk(root)
    assert len(params) == 1 and names[0].count("child") == 3000
    assert backbone.get_params(root).tolist() == [1.0]


@pytest.mark.parametrize("method", ["named_parameters", "named_modules"])
def test_an_override_set_on_the_instance_is_asked(method: str) -> None:
    net = nn.Sequential(nn.Linear(2, 1))
    if method == "named_parameters":
        net.named_parameters = lambda *args, **kwargs: iter([("0.weight", net[0].weight)])  # type: ignore[method-assign]
    else:
        child = net[0]
        child.named_modules = lambda memo=None, prefix="", remove_duplicate=True: iter([])  # type: ignore[method-assign]
    assert_same_walk(net)
    assert [e.name for e in backbone.flat_layout(net)] == [n for n, _ in net.named_parameters()]


def test_a_class_that_serves_the_walk_through_getattribute_is_asked() -> None:
    class Served(nn.Sequential):
        def __getattribute__(self, name: str):  # type: ignore[no-untyped-def]
            if name == "named_parameters":
                return lambda *args, **kwargs: iter([("only", self._modules["1"].bias)])
            return super().__getattribute__(name)

    net = Served(nn.Linear(2, 2), nn.Linear(2, 1))
    assert walk(net)[0] == ["only"]


def test_a_children_mapping_whose_items_is_an_iterator_is_walked_in_its_order() -> None:
    class Reversed(dict):  # type: ignore[type-arg]
        def items(self):  # type: ignore[no-untyped-def,override]
            return reversed(list(super().items()))

    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    net._modules = Reversed(net._modules)  # type: ignore[assignment]
    assert_same_walk(net)
