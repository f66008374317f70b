"""The flat operations' cached plan: reused while the module is unchanged, rebuilt whenever it is not.

Every test runs the operations at least twice around a change, so that the
second call would use a stale plan if invalidation missed the change. The
two copy paths (through the staging vector for models of many small tensors,
through views of the caller's vector otherwise) are both exercised by
forcing the size threshold either way.
"""

from __future__ import annotations

import copy
import gc
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_flat_properties import Case, cases, plain
from torch import nn

import backbone
from backbone import flat


@contextmanager
def regime(small: bool) -> Iterator[None]:
    """Make every cacheable model use the staging vector (small) or never use it."""
    saved = flat._SMALL_AVERAGE
    flat._SMALL_AVERAGE = 1 << 62 if small else 0
    try:
        yield
    finally:
        flat._SMALL_AVERAGE = saved


def check_all_operations(module: nn.Module, seed: int) -> None:
    """Every operation agrees with the plain definition on the module as it is now, twice over."""
    params = list(module.parameters())
    dtype = flat._result_dtype(params)
    case = Case(module, None)
    for _ in range(2):
        assert torch.equal(backbone.get_params(module).detach(), plain(list(params), params, dtype))
        out = torch.full((case.numel,), 7, dtype=dtype)
        assert torch.equal(backbone.get_params(module, out=out), plain(list(params), params, dtype))
        grads = plain([p.grad for p in params], params, dtype)
        assert torch.equal(backbone.get_grads(module), grads)
        assert torch.equal(backbone.get_grads(module, out=out), grads)
        assert torch.equal(torch.cat(backbone.get_grads_list(module) or [torch.zeros(0, dtype=dtype)]).to(dtype), grads)
    # Small integers are exact in every dtype, so a misplaced piece shows.
    v = (torch.randperm(case.numel, generator=torch.Generator().manual_seed(seed)) % 61 - 30).to(dtype)
    backbone.set_params(module, v)
    assert torch.equal(plain(list(params), params, dtype), v)
    backbone.set_grads(module, v)
    assert torch.equal(plain([p.grad for p in params], params, dtype), v)
    backbone.add_grads(module, v, alpha=-1.0)
    assert not plain([p.grad for p in params], params, dtype).any()


def first_leaf(module: nn.Module) -> tuple[nn.Module, str] | None:
    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None:
                return m, name
    return None


def replace_object(module: nn.Module) -> None:
    found = first_leaf(module)
    if found:
        m, name = found
        old = m._parameters[name]
        assert old is not None
        setattr(m, name, nn.Parameter(torch.randn(3, 2).to(old.dtype)))


def replace_data_same_shape(module: nn.Module) -> None:
    for p in module.parameters():
        p.data = torch.randn(p.shape).to(p.dtype)


def replace_data_new_shape(module: nn.Module) -> None:
    for p in module.parameters():
        p.data = torch.randn(p.numel() + 2).to(p.dtype)
        p.grad = None
        break


def shrink_keeping_address(module: nn.Module) -> None:
    for p in module.parameters():
        if p.numel() > 1 and p.is_contiguous():
            p.data = p.data.reshape(-1)[: p.numel() - 1]  # a view from the same first element
            p.grad = None
            return


def reinterpret_half(module: nn.Module) -> None:
    """float16 data read as bfloat16: same address, same size, another dtype."""
    twin = {torch.float16: torch.bfloat16, torch.bfloat16: torch.float16}
    for p in module.parameters():
        if p.dtype in twin:
            p.data = p.data.view(twin[p.dtype])
            p.grad = None


def reshape_empty(module: nn.Module) -> None:
    """A parameter without elements has no address to watch."""
    module.register_parameter("empty", nn.Parameter(torch.empty(0, 3)))
    backbone.get_params(module)
    module.empty.data = torch.empty(2, 0, 5).to(flat._result_dtype(list(module.parameters())))


def to_double(module: nn.Module) -> None:
    module.double()


def to_double_swapping(module: nn.Module) -> None:
    swapping = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        module.double()
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swapping)


def add_parameter(module: nn.Module) -> None:
    module.register_parameter(f"added{len(list(module.parameters()))}", nn.Parameter(torch.randn(5)))


def delete_parameter(module: nn.Module) -> None:
    found = first_leaf(module)
    if found:
        delattr(found[0], found[1])


def add_child(module: nn.Module) -> None:
    module.add_module(f"extra{len(list(module.children()))}", nn.Linear(2, 3))


def tie(module: nn.Module) -> None:
    params = list(module.parameters())
    if params:
        module.register_parameter(f"tied{len(params)}", params[-1])


def assign_state(module: nn.Module) -> None:
    state = {k: v.clone() + 1 for k, v in module.state_dict().items()}
    module.load_state_dict(state, assign=True)


def drop_grads(module: nn.Module) -> None:
    module.zero_grad(set_to_none=True)


def reorder_children(module: nn.Module) -> None:
    children = list(module._modules.items())
    module._modules.clear()
    module._modules.update(reversed(children))


MUTATIONS: list[Callable[[nn.Module], None]] = [
    replace_object,
    replace_data_same_shape,
    replace_data_new_shape,
    shrink_keeping_address,
    reinterpret_half,
    reshape_empty,
    to_double,
    to_double_swapping,
    add_parameter,
    delete_parameter,
    add_child,
    tie,
    assign_state,
    drop_grads,
    reorder_children,
]


@settings(max_examples=120)
@given(cases(), st.lists(st.sampled_from(MUTATIONS), max_size=4), st.booleans(), st.integers(0, 10**6))
def test_every_operation_follows_the_module_through_changes(
    case: Case, mutations: list[Callable[[nn.Module], None]], small: bool, seed: int
) -> None:
    with regime(small):
        check_all_operations(case.module, seed)
        for mutate in mutations:
            mutate(case.module)
            check_all_operations(case.module, seed)


class CountingPlan(flat._Plan):
    built = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        type(self).built += 1
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def test_an_unchanged_module_is_walked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flat, "_Plan", CountingPlan)
    CountingPlan.built = 0
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    n = sum(p.numel() for p in net.parameters())
    for _ in range(3):
        backbone.get_params(net, out=torch.empty(n))
        backbone.set_params(net, torch.zeros(n))
        backbone.get_grads(net)
        backbone.set_grads(net, torch.ones(n))
    assert CountingPlan.built == 1
    net[0].weight.data = torch.zeros(3, 4)  # same shape, new memory
    backbone.set_params(net, torch.ones(n))
    assert CountingPlan.built == 2
    assert torch.equal(net[0].weight, torch.ones(3, 4))
    net[2] = nn.Linear(3, 2)
    assert backbone.get_params(net).shape == (n,) and CountingPlan.built == 3


def test_growing_the_classifier_rebuilds_the_plan() -> None:
    net = backbone.MNISTMLP(4, 2, hidden_size=3)
    before = backbone.get_params(net).numel()
    net.grow_classifier(5)
    after = backbone.get_params(net)
    assert after.numel() == before + 3 * 3 + 3
    backbone.set_params(net, torch.arange(float(after.numel())))
    assert torch.equal(backbone.get_params(net).detach(), torch.arange(float(after.numel())))


class Selective(nn.Module):
    """A module whose parameters() is its own: a plan cannot know when its answer changes."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(2))
        self.b = nn.Parameter(torch.full((3,), 2.0))
        self.only_a = False

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        yield self.a
        if not self.only_a:
            yield self.b


def test_a_module_with_its_own_parameters_method_is_asked_every_time() -> None:
    net = Selective()
    assert backbone.get_params(net).tolist() == [1, 1, 2, 2, 2]
    net.only_a = True
    assert backbone.get_params(net).tolist() == [1, 1]
    backbone.set_params(net, torch.zeros(2))
    assert net.a.tolist() == [0, 0] and net.b.tolist() == [2, 2, 2]


def test_the_cache_does_not_keep_a_module_alive() -> None:
    net = nn.Linear(3, 2)
    backbone.get_params(net, out=torch.empty(8))
    alive = weakref.ref(net)
    del net
    gc.collect()
    assert alive() is None


def test_a_deep_copy_has_a_plan_of_its_own() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    backbone.set_params(net, torch.zeros(14))
    twin = copy.deepcopy(net)
    backbone.set_params(twin, torch.ones(14))
    assert not backbone.get_params(net).any() and backbone.get_params(twin).detach().eq(1).all()


@pytest.mark.parametrize("small", [True, False])
def test_concurrent_readers_each_get_the_right_vector(small: bool) -> None:
    """The staging vector is shared by every call on one model, so its use must be serialised."""
    with regime(small):
        net = nn.ParameterList(nn.Parameter(torch.randn(50)) for _ in range(200))
        for p in net:
            p.grad = torch.randn_like(p)
        params, grads = torch.cat([p.detach() for p in net]), torch.cat([p.grad for p in net])
        failures: list[str] = []

        def read() -> None:
            for _ in range(100):
                if not torch.equal(backbone.get_grads(net), grads):
                    failures.append("get_grads")
                if not torch.equal(backbone.get_params(net, out=torch.empty(10_000)), params):
                    failures.append("get_params")

        threads = [threading.Thread(target=read) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures


def test_a_small_model_written_in_inference_mode_is_normal_outside_it() -> None:
    with regime(True):
        net = nn.Linear(3, 2)
        with torch.inference_mode():
            backbone.set_params(net, torch.arange(8.0))
            backbone.set_grads(net, torch.ones(8))
            inside = backbone.get_grads(net)
        assert inside.is_inference()
        assert not net.weight.grad.is_inference()
        net(torch.ones(1, 3)).sum().backward()
        assert torch.equal(net.bias.grad, torch.full((2,), 2.0))
        backbone.set_params(net, torch.zeros(8))
        assert not backbone.get_params(net).any()


def sample_module(half: bool) -> nn.Module:
    """Linear, conv and norm layers with a tied weight and some gradients; mixed float32/float16 or all float16."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Conv2d(2, 2, 2), nn.BatchNorm2d(2)), nn.Linear(4, 2))
    (net if half else net[1][1]).half()
    net.register_parameter("tied", net[2].weight)
    for i, p in enumerate(net.parameters()):
        if i % 3:
            p.grad = torch.randn_like(p)
    return net


@pytest.mark.parametrize("half", [False, True], ids=["mixed", "half"])
@pytest.mark.parametrize("small", [True, False], ids=["staged", "direct"])
@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__)
def test_each_change_is_seen_by_the_next_call(mutate: Callable[[nn.Module], None], small: bool, half: bool) -> None:
    with regime(small):
        net = sample_module(half)
        check_all_operations(net, 0)
        mutate(net)
        check_all_operations(net, 1)
