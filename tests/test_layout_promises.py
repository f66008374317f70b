"""What ``flat_layout``, ``FlatLayout`` and ``carry_vector`` promise, checked exactly.

Every expected value here is computed independently (plain slicing and
concatenation); every fixed error message is compared whole.
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

import backbone


def sequential(**children: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(children))


def many_linears(count: int) -> nn.Sequential:
    """``count`` parameters, all weights: ``0.weight``, ``1.weight``, ..."""
    return nn.Sequential(*(nn.Linear(1, 1, bias=False) for _ in range(count)))


# --- FlatLayout[name] --------------------------------------------------------


def test_unknown_name_lists_all_names_of_a_layout_of_eight() -> None:
    layout = backbone.flat_layout(many_linears(8))
    with pytest.raises(KeyError) as info:
        layout["nope"]
    names = ", ".join(f"{i}.weight" for i in range(8))
    assert info.value.args == (f"no parameter named 'nope' in this layout; it has {names}",)


def test_unknown_name_lists_the_first_eight_names_of_a_longer_layout() -> None:
    layout = backbone.flat_layout(many_linears(9))
    with pytest.raises(KeyError) as info:
        layout["nope"]
    names = ", ".join(f"{i}.weight" for i in range(8))
    assert info.value.args == (f"no parameter named 'nope' in this layout; it has {names}, ...",)


def test_unknown_name_in_a_short_layout() -> None:
    layout = backbone.flat_layout(nn.Linear(3, 2))
    with pytest.raises(KeyError) as info:
        layout["bias2"]
    assert info.value.args == ("no parameter named 'bias2' in this layout; it has weight, bias",)


# --- FlatLayout.view ---------------------------------------------------------


def test_view_of_a_non_tensor_names_the_vector_and_its_type() -> None:
    layout = backbone.flat_layout(nn.Linear(3, 2))
    with pytest.raises(TypeError) as info:
        layout.view([0.0] * 8, "bias")  # type: ignore[arg-type]
    assert str(info.value) == "vector must be a torch.Tensor, got list"


def test_view_of_a_vector_of_the_wrong_length_names_the_vector() -> None:
    layout = backbone.flat_layout(nn.Linear(3, 2))
    with pytest.raises(ValueError) as info:
        layout.view(torch.zeros(7), "bias")
    assert str(info.value) == "vector must be a 1-D tensor of 8 elements (the old layout), got shape (7,)"


def test_view_of_a_sparse_vector_names_the_vector() -> None:
    layout = backbone.flat_layout(nn.Linear(3, 2))
    with pytest.raises(TypeError) as info:
        layout.view(torch.zeros(8).to_sparse(), "bias")
    assert str(info.value) == "vector must be a dense (strided) tensor, got layout torch.sparse_coo"


# --- carry_vector: refusals --------------------------------------------------


def test_carry_vector_names_the_vector_and_its_type() -> None:
    layout = backbone.flat_layout(nn.Linear(3, 2))
    with pytest.raises(TypeError) as info:
        backbone.carry_vector((0.0,) * 8, layout, layout)  # type: ignore[arg-type]
    assert str(info.value) == "vector must be a torch.Tensor, got tuple"


def test_carry_vector_names_a_bad_old_layout() -> None:
    layout = backbone.flat_layout(nn.Linear(3, 2))
    with pytest.raises(TypeError) as info:
        backbone.carry_vector(torch.zeros(8), {"weight": 0}, layout)  # type: ignore[arg-type]
    assert str(info.value) == "old must be a FlatLayout (from flat_layout(module)), got dict"


def test_carry_vector_names_a_bad_new_layout() -> None:
    layout = backbone.flat_layout(nn.Linear(3, 2))
    with pytest.raises(TypeError) as info:
        backbone.carry_vector(torch.zeros(8), layout, list(layout))  # type: ignore[arg-type]
    assert str(info.value) == "new must be a FlatLayout (from flat_layout(module)), got list"


def test_carry_vector_refuses_a_removed_parameter_with_the_whole_message() -> None:
    old = backbone.flat_layout(sequential(a=nn.Linear(2, 2), b=nn.Linear(2, 1)))
    new = backbone.flat_layout(sequential(b=nn.Linear(2, 1)))
    with pytest.raises(ValueError) as info:
        backbone.carry_vector(torch.zeros(old.numel), old, new)
    assert str(info.value) == (
        "the new layout has no parameter 'a.weight', so its values would be lost; pass drop_removed=True to drop them"
    )


def test_carry_vector_checks_every_kept_parameter_after_a_new_one() -> None:
    # The new layout starts with a parameter the old one lacks; one after it shrank.
    old = backbone.flat_layout(sequential(b=nn.Linear(2, 3)))
    new = backbone.flat_layout(sequential(a=nn.Linear(2, 2), b=nn.Linear(2, 2)))
    with pytest.raises(ValueError) as info:
        backbone.carry_vector(torch.zeros(old.numel), old, new)
    assert str(info.value) == (
        "parameter 'b.weight' went from shape (3, 2) to (2, 2); only growing along existing dimensions can be carried"
    )


# --- carry_vector: values, dtype and device -----------------------------------


def test_carry_vector_copies_kept_parameters_after_a_new_one() -> None:
    old_net = sequential(b=nn.Linear(2, 3))
    new_net = sequential(a=nn.Linear(2, 2), b=nn.Linear(2, 4))
    old, new = backbone.flat_layout(old_net), backbone.flat_layout(new_net)
    vector = torch.arange(1.0, old.numel + 1)  # b.weight: 1..6 as (3, 2); b.bias: 7, 8, 9
    carried = backbone.carry_vector(vector, old, new, fill=-1.0)
    expected = torch.cat(
        [
            torch.full((6,), -1.0),  # a.weight (2, 2) and a.bias (2,): new
            torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, -1.0]),  # b.weight (4, 2): 3 old rows, 1 new
            torch.tensor([7.0, 8.0, 9.0, -1.0]),  # b.bias (4,)
        ]
    )
    assert torch.equal(carried, expected)


def test_carry_vector_keeps_the_vectors_dtype() -> None:
    old = backbone.flat_layout(nn.Linear(2, 1))
    new = backbone.flat_layout(nn.Linear(2, 2))
    vector = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    carried = backbone.carry_vector(vector, old, new, fill=0.7)
    assert carried.dtype == torch.float64
    assert torch.equal(carried, torch.tensor([0.1, 0.2, 0.7, 0.7, 0.3, 0.7], dtype=torch.float64))


def test_carry_vector_keeps_the_vectors_device() -> None:
    old = backbone.flat_layout(nn.Linear(2, 1))
    new = backbone.flat_layout(nn.Linear(2, 2))
    vector: Tensor = torch.zeros(old.numel, device="meta")
    carried = backbone.carry_vector(vector, old, new)
    assert carried.device == torch.device("meta")
    assert carried.shape == (new.numel,)


# --- the walk: flat_layout is named_parameters() -------------------------------


def names_of(module: nn.Module) -> list[str]:
    return [entry.name for entry in backbone.flat_layout(module)]


def torch_names(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_parameters()]


def test_flat_layout_walks_a_nested_tree_with_shared_and_empty_slots_as_named_parameters() -> None:
    shared = nn.Linear(2, 2)
    inner = sequential(first=nn.Linear(2, 3), shared=shared)
    inner.register_parameter("nothing", None)
    inner.add_module("gap", None)
    net = sequential(inner=inner, again=shared, frozen=nn.Linear(3, 1), last=nn.Linear(1, 1))
    net.frozen.requires_grad_(False)
    net.last.weight = net.inner.first.bias  # tied: (3,) under a second name
    net.scale = nn.Parameter(torch.ones(1))  # the root's own parameter comes first
    expected = [
        "scale",
        "inner.first.weight",
        "inner.first.bias",
        "inner.shared.weight",
        "inner.shared.bias",
        "frozen.weight",
        "frozen.bias",
        "last.bias",
    ]
    assert names_of(net) == expected == torch_names(net)
    layout = backbone.flat_layout(net)
    sizes = [p.numel() for _, p in net.named_parameters()]
    assert [e.offset for e in layout] == [sum(sizes[:i]) for i in range(len(sizes))]
    assert [e.shape for e in layout] == [tuple(p.shape) for _, p in net.named_parameters()]


def test_flat_layout_walks_past_a_module_listed_twice() -> None:
    shared = nn.Linear(2, 2)
    net = nn.Sequential(shared, nn.Linear(2, 2), shared, nn.Linear(2, 1), nn.Sequential(nn.Linear(1, 1)))
    assert names_of(net) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias", "4.0.weight", "4.0.bias"]


def test_flat_layout_walks_a_module_that_contains_itself_once() -> None:
    net = sequential(a=nn.Linear(2, 2), b=nn.Linear(2, 1))
    net.a.add_module("loop", net)  # a cycle: named_parameters() visits each module once
    assert names_of(net) == ["a.weight", "a.bias", "b.weight", "b.bias"] == torch_names(net)


def test_a_submodule_slot_holding_something_else_is_refused_by_name() -> None:
    net = sequential(a=nn.Linear(2, 2), b=nn.Sequential(nn.Linear(2, 1)))
    net.b._modules["bad"] = 3  # type: ignore[assignment]
    with pytest.raises(TypeError) as info:
        backbone.flat_layout(net)
    assert str(info.value) == "submodule 'b.bad' must be a torch.nn.Module, got int"


def test_a_parameter_slot_holding_something_else_is_refused_by_name() -> None:
    net = nn.Linear(2, 1)
    net._parameters["x"] = 3.0  # type: ignore[assignment]
    with pytest.raises(TypeError) as info:
        backbone.flat_layout(net)
    assert str(info.value) == "parameter 'x' must be a tensor, got float"


class ReversedParameters(nn.Sequential):
    """A class whose named_parameters() lists the parameters last to first."""

    def named_parameters(  # type: ignore[override]
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        return reversed(list(super().named_parameters(prefix, recurse, remove_duplicate)))


class ReversedMembers(nn.Sequential):
    """A class whose named_parameters() comes out last to first, through the method torch builds it with."""

    def _named_members(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        return reversed(list(super()._named_members(*args, **kwargs)))


class ReversedThroughGetattribute(nn.Sequential):
    """A class whose attribute lookup hands out a named_parameters() that lists them last to first."""

    def __getattribute__(self, name: str) -> Any:
        found = super().__getattribute__(name)
        if name == "named_parameters":
            return lambda *args, **kwargs: reversed(list(found(*args, **kwargs)))
        return found


class HidesItsSecondLayer(nn.Sequential):
    """A child whose named_modules() leaves out its second layer."""

    def named_modules(  # type: ignore[override]
        self, memo: set[nn.Module] | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Module]]:
        for name, module in super().named_modules(memo, prefix, remove_duplicate):
            if not name.endswith(".1"):
                yield name, module


class HidesThroughGetattribute(nn.Sequential):
    """A child whose attribute lookup hands out a named_modules() that leaves out its second layer."""

    def __getattribute__(self, name: str) -> Any:
        found = super().__getattribute__(name)
        if name == "named_modules":
            return lambda *args, **kwargs: ((n, m) for n, m in found(*args, **kwargs) if not n.endswith(".1"))
        return found


def two_linears(kind: type[nn.Sequential] = nn.Sequential) -> nn.Sequential:
    return kind(nn.Linear(2, 3), nn.Linear(3, 1))


@pytest.mark.parametrize("kind", [ReversedParameters, ReversedMembers, ReversedThroughGetattribute])
def test_a_root_class_that_changes_named_parameters_is_followed(kind: type[nn.Sequential]) -> None:
    net = two_linears(kind)
    assert names_of(net) == ["1.bias", "1.weight", "0.bias", "0.weight"] == torch_names(net)
    expected = torch.cat([p.detach().reshape(-1) for _, p in net.named_parameters()])
    assert torch.equal(backbone.get_params(net).detach(), expected)


def test_a_named_parameters_set_on_the_instance_is_followed() -> None:
    net = two_linears()
    walk = net.named_parameters
    net.named_parameters = lambda *args, **kwargs: reversed(list(walk(*args, **kwargs)))  # type: ignore[method-assign]
    assert names_of(net) == ["1.bias", "1.weight", "0.bias", "0.weight"] == torch_names(net)


def test_a_named_members_set_on_the_instance_is_followed() -> None:
    net = two_linears()
    members = net._named_members
    net._named_members = lambda *args, **kwargs: reversed(list(members(*args, **kwargs)))  # type: ignore[method-assign]
    assert names_of(net) == ["1.bias", "1.weight", "0.bias", "0.weight"] == torch_names(net)


@pytest.mark.parametrize("kind", [HidesItsSecondLayer, HidesThroughGetattribute])
def test_a_child_class_that_changes_named_modules_is_followed(kind: type[nn.Sequential]) -> None:
    net = nn.Sequential(nn.Linear(1, 2), two_linears(kind))
    assert names_of(net) == ["0.weight", "0.bias", "1.0.weight", "1.0.bias"] == torch_names(net)


def test_a_named_modules_set_on_a_child_instance_is_followed() -> None:
    net = nn.Sequential(nn.Linear(1, 2), two_linears())
    child = net[1]
    walk = child.named_modules
    child.named_modules = lambda *args, **kwargs: (  # type: ignore[method-assign]
        (n, m) for n, m in walk(*args, **kwargs) if not n.endswith(".1")
    )
    assert names_of(net) == ["0.weight", "0.bias", "1.0.weight", "1.0.bias"] == torch_names(net)


# --- the walk: parameters a flat vector cannot hold -----------------------------


def with_parameter(p: nn.Parameter) -> nn.Module:
    """A module with a plain parameter, then ``p`` as ``odd``, then another plain one."""
    net = nn.Module()
    net.plain = nn.Parameter(torch.ones(2))
    net.odd = p
    net.after = nn.Parameter(torch.ones(1))
    return net


def test_a_quantized_parameter_is_refused_by_name() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.quint8)
    net = with_parameter(nn.Parameter(quantized, requires_grad=False))
    with pytest.raises(TypeError) as info:
        backbone.flat_layout(net)
    assert str(info.value) == (
        "parameter 'odd' must be a plain dense tensor, got a quantized one; "
        "flat vectors cover plain dense parameters only"
    )


def test_a_nested_parameter_is_refused_by_name() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nested = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    net = with_parameter(nn.Parameter(nested, requires_grad=False))
    with pytest.raises(TypeError) as info:
        backbone.flat_layout(net)
    assert str(info.value) == (
        "parameter 'odd' must be a plain dense tensor, got a nested one; flat vectors cover plain dense parameters only"
    )


def test_a_sparse_parameter_is_refused_by_name() -> None:
    sparse = torch.sparse_coo_tensor([[0]], [1.0], (4,), check_invariants=True)
    net = with_parameter(nn.Parameter(sparse))
    with pytest.raises(TypeError) as info:
        backbone.flat_layout(net)
    assert str(info.value) == (
        "parameter 'odd' must be a dense (strided) tensor, got layout torch.sparse_coo; "
        "flat vectors cover dense parameters only"
    )


def test_a_flat_parameter_of_the_older_fsdp_is_refused_by_name() -> None:
    from torch.distributed.fsdp._flat_param import FlatParameter

    net = with_parameter(FlatParameter(torch.zeros(4)))
    with pytest.raises(TypeError) as info:
        backbone.flat_layout(net)
    assert str(info.value).startswith("parameter 'odd' is sharded by FSDP (")


@pytest.fixture
def one_rank_mesh() -> Iterator[Any]:
    from torch.distributed.device_mesh import init_device_mesh

    if dist.is_initialized():
        pytest.skip("a process group is already set up")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_a_dtensor_parameter_of_fully_shard_is_refused_by_name(one_rank_mesh: Any) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor

    net = with_parameter(nn.Parameter(distribute_tensor(torch.zeros(4), one_rank_mesh, [Shard(0)])))
    with pytest.raises(TypeError) as info:
        backbone.flat_layout(net)
    assert str(info.value) == (
        "parameter 'odd' is sharded by FSDP (DTensor), so each rank holds only part of it; flat vectors of a sharded "
        "model are not supported: use DistributedDataParallel, or gather the full parameters first"
    )


# --- selections ----------------------------------------------------------------


def picked(module: nn.Module, select: Any) -> list[str]:
    return [name for name, _ in backbone.selected_parameters(module, select)]


def half_frozen() -> nn.Sequential:
    """``0`` frozen, ``1`` trainable; ``2.weight`` tied to ``1.weight``'s twin under another name."""
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    net[0].requires_grad_(False)
    net[2].weight = net[1].weight
    return net


ALL = ["0.weight", "0.bias", "1.weight", "1.bias", "2.bias"]


@pytest.mark.parametrize("select", [None, "all"])
def test_every_parameter_is_selected_by_default_and_by_all(select: Any) -> None:
    net = half_frozen()
    pairs = backbone.selected_parameters(net, select)
    assert [name for name, _ in pairs] == ALL
    assert all(p is q for (_, p), (_, q) in zip(pairs, net.named_parameters(), strict=True))


def test_trainable_selects_the_parameters_that_require_grad_now() -> None:
    net = half_frozen()
    assert picked(net, "trainable") == ["1.weight", "1.bias", "2.bias"]
    net[0].bias.requires_grad_(True)
    assert picked(net, "trainable") == ["0.bias", "1.weight", "1.bias", "2.bias"]


def test_no_classifier_leaves_out_the_classifier_of_get_classifier_or_the_attribute() -> None:
    assert picked(backbone.MNISTMLP(4, 3, hidden_size=5), "no_classifier") == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    ]
    net = sequential(body=nn.Linear(2, 2), classifier=nn.Linear(2, 1))
    assert picked(net, "no_classifier") == ["body.weight", "body.bias"]


def test_no_classifier_of_a_module_without_one_is_refused() -> None:
    with pytest.raises(TypeError) as info:
        backbone.selected_parameters(nn.Linear(2, 1), "no_classifier")
    assert str(info.value) == (
        "select='no_classifier' needs a classifier, but Linear has none "
        "(expected get_classifier() or a classifier attribute that is a module)"
    )


def test_a_predicate_selects_in_flat_vector_order() -> None:
    net = half_frozen()
    seen: list[str] = []

    def bias(name: str, p: nn.Parameter) -> bool:
        seen.append(name)
        return name.endswith("bias")

    assert picked(net, bias) == ["0.bias", "1.bias", "2.bias"]
    assert seen == ALL


def test_names_select_in_flat_vector_order_and_a_tied_parameter_by_any_name() -> None:
    net = half_frozen()
    assert picked(net, ("2.bias", "0.weight")) == ["0.weight", "2.bias"]
    assert picked(net, ["2.weight"]) == ["1.weight"]
    assert picked(net, iter(["1.bias"])) == ["1.bias"]


def test_flat_layout_with_a_selection_lays_out_only_the_selected() -> None:
    net = half_frozen()
    layout = backbone.flat_layout(net, select="trainable")
    assert [(e.name, e.offset, e.shape) for e in layout] == [
        ("1.weight", 0, (2, 2)),
        ("1.bias", 4, (2,)),
        ("2.bias", 6, (2,)),
    ]
    assert picked(net, layout) == ["1.weight", "1.bias", "2.bias"]


@pytest.mark.parametrize(
    ("select", "message"),
    [
        ([], "select=[] picks no parameter of Sequential; expected a selection of at least one parameter"),
        ((), "select=() picks no parameter of Sequential; expected a selection of at least one parameter"),
        (
            lambda name, p: False,
            "select=<function> picks no parameter of Sequential; expected a selection of at least one parameter",
        ),
    ],
)
def test_a_selection_that_picks_nothing_is_refused(select: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        backbone.selected_parameters(half_frozen(), select)
    assert str(info.value) == message


def test_trainable_of_a_frozen_module_picks_nothing_and_is_refused() -> None:
    net = nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(ValueError) as info:
        backbone.flat_layout(net, select="trainable")
    assert str(info.value) == (
        "select='trainable' picks no parameter of Linear; expected a selection of at least one parameter"
    )


@pytest.mark.parametrize(
    ("select", "kind", "message"),
    [
        (
            "trainables",
            ValueError,
            "select must be one of 'all', 'trainable', 'no_classifier', a predicate, parameter names or a FlatLayout, "
            "got 'trainables'",
        ),
        (
            "ALL",
            ValueError,
            "select must be one of 'all', 'trainable', 'no_classifier', a predicate, parameter names or a FlatLayout, "
            "got 'ALL'",
        ),
        (
            3,
            TypeError,
            "select must be one of 'all', 'trainable', 'no_classifier', None, a predicate, parameter names or a "
            "FlatLayout, got int",
        ),
        (
            {"weight": True},
            TypeError,
            "select must be one of 'all', 'trainable', 'no_classifier', None, a predicate, parameter names or a "
            "FlatLayout, got dict",
        ),
        (
            b"weight",
            TypeError,
            "select must be one of 'all', 'trainable', 'no_classifier', None, a predicate, parameter names or a "
            "FlatLayout, got bytes",
        ),
        (["weight", 1], TypeError, "select's parameter names must be strings, got int"),
        (lambda name, p: 1, TypeError, "select's predicate must return a bool, got int for parameter 'weight'"),
        (["wieght"], ValueError, "select names 'wieght', which Linear has no parameter of; did you mean 'weight'?"),
        (["bias", "zzz"], ValueError, "select names 'zzz', which Linear has no parameter of"),
    ],
)
def test_a_bad_selection_is_refused_with_its_message(select: Any, kind: type[Exception], message: str) -> None:
    with pytest.raises(kind) as info:
        backbone.selected_parameters(nn.Linear(2, 1), select)
    assert str(info.value) == message


def test_a_layout_selection_that_no_longer_matches_is_refused() -> None:
    net = sequential(a=nn.Linear(2, 2), b=nn.Linear(2, 1))
    layout = backbone.flat_layout(net, select=["a.bias", "b.weight"])
    net.b = nn.Linear(2, 3)
    with pytest.raises(ValueError) as info:
        backbone.selected_parameters(net, layout)
    assert str(info.value) == (
        "select's layout has 'b.weight' as (1, 2) torch.float32, but it is now (3, 2) torch.float32; "
        "take a new layout (and carry kept vectors with carry_vector)"
    )
    del net.b
    with pytest.raises(ValueError) as info:
        backbone.selected_parameters(net, layout)
    assert str(info.value) == (
        "select's layout covers 'b.weight', which Sequential no longer has; "
        "expected a layout of this module as it is now"
    )
    reordered = backbone.FlatLayout(tuple(reversed(backbone.flat_layout(net).entries)))
    with pytest.raises(ValueError) as info:
        backbone.selected_parameters(net, reordered)
    assert (
        str(info.value) == "select's layout orders the parameters otherwise than this module does; expected its layout"
    )


def test_a_predicate_is_asked_with_each_name_and_parameter() -> None:
    net = half_frozen()
    asked: list[tuple[str, nn.Parameter]] = []

    def record(name: str, p: nn.Parameter) -> bool:
        asked.append((name, p))
        return True

    backbone.selected_parameters(net, record)
    assert [name for name, _ in asked] == ALL
    assert all(p is q for (_, p), (_, q) in zip(asked, net.named_parameters(), strict=True))


def test_an_unknown_name_lists_at_most_three_close_matches() -> None:
    net = nn.Module()
    for i in range(1, 5):
        net.register_parameter(f"ab{i}", nn.Parameter(torch.zeros(1)))
    with pytest.raises(ValueError) as info:
        backbone.selected_parameters(net, ["ab"])
    assert str(info.value) == (
        "select names 'ab', which Module has no parameter of; did you mean 'ab4' or 'ab3' or 'ab2'?"
    )


class HeadAndAuxiliary(nn.Module):
    """get_classifier() names ``head``; ``classifier`` is another layer (an auxiliary branch, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 3)
        self.classifier = nn.Linear(3, 2)
        self.head = nn.Linear(3, 4)

    def get_classifier(self) -> nn.Module:
        return self.head


def test_no_classifier_leaves_out_what_get_classifier_names_not_the_classifier_attribute() -> None:
    net = HeadAndAuxiliary()
    names = [n for n, _ in backbone.selected_parameters(net, "no_classifier")]
    assert names == ["body.weight", "body.bias", "classifier.weight", "classifier.bias"]


def test_a_submodule_registered_twice_is_selected_by_either_name() -> None:
    shared = nn.Linear(2, 2)
    net = nn.Module()
    net.first = shared
    net.second = shared  # the same module under a second name
    ((name, param),) = backbone.selected_parameters(net, ["second.weight"])
    assert param is shared.weight and name == "first.weight"


def test_index_names_the_parameter_and_offset_of_every_element() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 0), nn.Linear(0, 2), nn.Linear(2, 1))  # empty ones between
    layout = backbone.flat_layout(net)
    vector = torch.arange(float(layout.numel))
    parts = layout.split(vector)
    assert list(parts) == [e.name for e in layout]
    for i in range(layout.numel):
        name, offset = layout.index(i)
        assert parts[name].reshape(-1)[offset] == vector[i]
        assert layout.index(i - layout.numel) == (name, offset)
        assert layout.index(torch.tensor(i)) == (name, offset)
    assert all(parts[name].shape == p.shape for name, p in net.named_parameters())
    assert parts["0.weight"].data_ptr() == vector.data_ptr()  # views, not copies


@pytest.mark.parametrize(
    ("i", "error", "message"),
    [
        (14, IndexError, "index 14 is out of range for a flat vector of 14 elements"),
        (-15, IndexError, "index -15 is out of range"),
        (1.0, TypeError, "i must be an integer, got float"),
        (True, TypeError, "i must be an integer, got bool"),
        (torch.tensor(1.0), TypeError, "got a tensor of 1 elements of dtype torch.float32"),
        (torch.tensor([1, 2]), TypeError, "got a tensor of 2 elements"),
        (torch.tensor(True), TypeError, "dtype torch.bool"),
        (torch.tensor(1, device="meta"), TypeError, "got a tensor on the meta device"),
    ],
)
def test_index_refuses_what_is_not_an_index_into_the_vector(i: object, error: type[Exception], message: str) -> None:
    layout = backbone.flat_layout(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)))
    with pytest.raises(error, match=re.escape(message)):
        layout.index(i)  # type: ignore[arg-type]


def test_split_refuses_a_vector_of_another_layout() -> None:
    layout = backbone.flat_layout(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"1-D tensor of 8 elements"):
        layout.split(torch.zeros(9))
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor, got list"):
        layout.split([0.0] * 8)  # type: ignore[arg-type]
