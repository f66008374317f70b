"""What the flat operations keep between calls (nothing), and the cases that a kept plan got wrong.

Each change here happens between two calls, at the same memory address, so
that anything remembered from the first call would be stale in the second;
and each model here is dropped after a call, so that anything remembered
would keep it alive.
"""

from __future__ import annotations

import copy
import gc
import weakref
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import backbone

OPERATIONS: dict[str, Callable[[nn.Module, int], object]] = {
    "get_params": lambda net, n: backbone.get_params(net),
    "get_params(out=)": lambda net, n: backbone.get_params(net, out=torch.empty(n)),
    "get_grads": lambda net, n: backbone.get_grads(net),
    "get_grads(out=)": lambda net, n: backbone.get_grads(net, out=torch.empty(n)),
    "get_grads_list": lambda net, n: backbone.get_grads_list(net),
    "set_params": lambda net, n: backbone.set_params(net, torch.zeros(n)),
    "set_grads": lambda net, n: backbone.set_grads(net, torch.zeros(n)),
    "add_grads": lambda net, n: backbone.add_grads(net, torch.ones(n)),
    "flat_layout": lambda net, n: backbone.flat_layout(net),
}


def numel(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def values(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


# --- changes at the same address ----------------------------------------------


@pytest.mark.parametrize("wide", [False, True], ids=["small-tensors", "large-tensors"])
@pytest.mark.parametrize(
    "reshape",
    [
        lambda w: w.t(),
        lambda w: w.view(-1),
        lambda w: w.as_strided((w.shape[1], w.shape[0]), (1, w.shape[1])),
    ],
    ids=["t", "view", "as_strided"],
)
def test_a_parameter_reshaped_in_place_is_read_and_written_as_it_is_now(reshape, wide: bool) -> None:  # type: ignore[no-untyped-def]
    width = 4096 if wide else 5
    net = nn.Sequential(nn.Linear(3, width), nn.Linear(width, 4))
    n = numel(net)
    backbone.get_params(net, out=torch.empty(n))
    address = net[1].weight.data_ptr()
    net[1].weight.data = reshape(net[1].weight.data)
    assert net[1].weight.data_ptr() == address
    expected = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    assert torch.equal(backbone.get_params(net, out=torch.empty(n)), expected)
    backbone.set_params(net, torch.arange(float(n)))
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in net.parameters()]), torch.arange(float(n)))


def test_a_parameter_reset_onto_its_own_storage_is_seen() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 4))
    backbone.get_params(net, out=torch.empty(20))
    w = net[1].weight
    with torch.no_grad():
        w.set_(w.untyped_storage(), w.storage_offset(), (2, 4), (1, 2))  # the transpose, by hand
    backbone.set_params(net, torch.arange(20.0))
    assert torch.equal(w.detach().reshape(-1), torch.arange(8.0, 16.0))


@pytest.mark.parametrize("wide", [False, True], ids=["small-tensors", "large-tensors"])
def test_a_parameter_expanded_in_place_is_refused_with_nothing_written(wide: bool) -> None:
    size = 4096 if wide else 96
    net = nn.Sequential(nn.Linear(3, size), nn.Linear(size, 2))
    n = numel(net)
    backbone.set_params(net, torch.zeros(n))
    bias = net[0].bias
    address = bias.data_ptr()
    bias.data = bias.data[:1].expand(size)
    assert bias.data_ptr() == address
    before = values(net)
    with pytest.raises(ValueError, match=r"parameter '0.bias' cannot be written element by element"):
        backbone.set_params(net, torch.ones(n))
    assert all(map(torch.equal, values(net), before))


def test_a_parameter_made_read_only_after_a_call_is_refused() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 4))
    backbone.set_params(net, torch.zeros(20))
    with torch.inference_mode():
        frozen = torch.zeros(4, 2)
    net[1].weight.grad = None
    net[1].weight = nn.Parameter(frozen.clone())  # a normal tensor: writable
    backbone.set_grads(net, torch.ones(20))
    with torch.inference_mode():
        net[1].weight.grad = torch.zeros(4, 2)  # an inference tensor: not writable outside inference mode
    before = [p.grad.clone() for p in net.parameters()]
    with pytest.raises(ValueError, match=r"the gradient of parameter '1.weight' is an inference tensor"):
        backbone.set_grads(net, torch.full((20,), 2.0))
    assert all(torch.equal(p.grad, b) for p, b in zip(net.parameters(), before, strict=True))


def test_a_gradient_left_behind_by_a_reshaped_parameter_is_refused() -> None:
    net = nn.Linear(3, 2)
    net(torch.ones(1, 3)).sum().backward()
    net.weight.data = torch.zeros(3, 3)  # .data replacement keeps the old (2, 3) gradient
    for call in (
        lambda: backbone.get_grads(net),
        lambda: backbone.get_grads(net, out=torch.empty(11)),
        lambda: backbone.get_grads_list(net),
        lambda: backbone.set_grads(net, torch.zeros(11)),
        lambda: backbone.add_grads(net, torch.zeros(11)),
    ):
        with pytest.raises(ValueError, match=r"the gradient of parameter 'weight' must match the parameter"):
            call()
    assert net.weight.grad is not None and net.weight.grad.shape == (2, 3)


# --- overlap, whatever the storage ------------------------------------------------


def test_out_sharing_memory_with_a_parameter_through_another_storage_is_refused() -> None:
    array = np.zeros(30, dtype=np.float32)
    net = nn.Module()
    net.a = nn.Parameter(torch.from_numpy(array[0:10]))
    net.b = nn.Parameter(torch.from_numpy(array[10:20]))
    out = torch.from_numpy(array[5:25])  # its own storage object, over both parameters' memory
    assert out.untyped_storage().data_ptr() != net.a.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="out must not share memory with the model, but it overlaps the parameter 'a'"):
        backbone.get_params(net, out=out)
    grads = np.zeros(30, dtype=np.float32)
    net.a.grad, net.b.grad = torch.from_numpy(grads[0:10]), torch.from_numpy(grads[10:20])
    with pytest.raises(ValueError, match="overlaps the gradient of parameter 'b'"):
        backbone.get_grads(net, out=torch.from_numpy(grads[10:30]))  # a third storage object over b's gradient
    assert not grads.any()
    assert not array.any()


def test_a_source_sharing_memory_through_another_storage_gives_what_a_copy_gives() -> None:
    array = np.arange(30, dtype=np.float32)
    net = nn.Module()
    net.a = nn.Parameter(torch.from_numpy(array[0:10]))
    net.b = nn.Parameter(torch.from_numpy(array[10:20]))
    source = torch.from_numpy(array[5:25])
    expected = source.clone()
    backbone.set_params(net, source)
    assert torch.equal(backbone.get_params(net).detach(), expected)


def test_reading_a_meta_model_into_a_vector_with_data_is_a_value_error() -> None:
    net = nn.Linear(3, 2).to("meta")
    with pytest.raises(ValueError, match="parameter 'weight' is on the meta device and holds no data"):
        backbone.get_params(net, out=torch.empty(8))
    assert backbone.get_params(net).device.type == "meta"
    assert backbone.get_grads(net, out=torch.full((8,), 7.0)).eq(0).all()  # missing gradients read as zeros


# --- nothing is kept ------------------------------------------------------------------


class Hooked(nn.Module):
    """A model whose hooks refer back to it, as methods register them on ``self.net``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.fc.register_forward_hook(self.grab)
        self.fc.weight.register_hook(self.scale)

    def grab(self, *args: object) -> None:
        pass

    def scale(self, grad: torch.Tensor) -> torch.Tensor:
        return grad


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_dropped_model_is_freed_after_any_operation(operation: str) -> None:
    net = Hooked()
    OPERATIONS[operation](net, numel(net))
    model, layer, weight = weakref.ref(net), weakref.ref(net.fc), weakref.ref(net.fc.weight)
    del net
    gc.collect()
    assert model() is None and layer() is None and weight() is None


def test_deep_copies_flattened_once_each_are_freed() -> None:
    net = backbone.resnet18(10)
    refs = []
    for _ in range(3):  # an old model per task, as distillation methods keep
        old = copy.deepcopy(net)
        backbone.get_params(old)
        backbone.get_grads(old)
        refs.append(weakref.ref(old))
        del old
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_a_replaced_parameter_is_freed_without_another_flat_call() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 4))
    backbone.get_params(net, out=torch.empty(20))
    backbone.set_grads(net, torch.zeros(20))
    old = weakref.ref(net[1].weight)
    net[1].weight = nn.Parameter(torch.zeros(4, 2))
    gc.collect()
    assert old() is None


def test_a_replaced_layer_is_freed_without_another_flat_call() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 4))
    backbone.get_grads(net)
    old = weakref.ref(net[1])
    net[1] = nn.Linear(2, 4)
    gc.collect()
    assert old() is None


def test_flat_operations_make_no_reference_cycles_of_their_own() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 4))
    gc.collect()
    gc.disable()
    try:
        for operation in OPERATIONS.values():
            operation(net, 20)
        ref = weakref.ref(net)
        del net
        assert ref() is None  # freed by reference counting alone, before any collection
    finally:
        gc.enable()
