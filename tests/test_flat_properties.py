"""Property-based tests of the flat operations over random module trees (hypothesis).

The trees mix float16, bfloat16, float32 and float64 parameters, tied, frozen
and zero-element ones, gradients that are missing, strided, transposed or
channels_last, and parameters that are views of one shared buffer. The
profile is chosen by ``HYPOTHESIS_PROFILE`` (``ci``, the default, is
derandomised so that CI is reproducible; ``dev`` explores more examples).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import backbone

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@dataclass
class Case:
    module: nn.Module
    shared: Tensor | None  # the buffer the parameters are views of, if any

    @property
    def params(self) -> list[nn.Parameter]:
        return list(self.module.parameters())

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def dtype(self) -> torch.dtype:
        return functools.reduce(torch.promote_types, [p.dtype for p in self.params])


shapes = st.lists(st.integers(0, 4), min_size=1, max_size=4).map(tuple)


@st.composite
def cases(draw: st.DrawFn, shared: bool | None = None) -> Case:
    shared_mode = draw(st.booleans()) if shared is None else shared
    specs = draw(st.lists(st.tuples(shapes, st.sampled_from(DTYPES)), min_size=1, max_size=8))
    buffer = None
    if shared_mode:
        total = sum(torch.Size(shape).numel() for shape, _ in specs)
        buffer = torch.randn(2 * total + 1, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
        offset, tensors = 0, []
        for shape, _ in specs:
            size = torch.Size(shape).numel()
            tensors.append(buffer[offset : offset + size].view(shape))
            offset += size
    else:
        tensors = [torch.randn(shape).to(dtype) for shape, dtype in specs]
    params = [nn.Parameter(t, requires_grad=draw(st.booleans()) or t.numel() == 0) for t in tensors]
    for i, p in enumerate(params):
        kind = draw(st.sampled_from(["none", "contiguous", "transposed", "channels_last", "strided"]))
        p.grad = make_grad(p, kind, i)
    # A tree: each parameter goes to the root or a child, and some are tied.
    root = nn.Module()
    children = [nn.Module() for _ in range(draw(st.integers(0, 2)))]
    for j, child in enumerate(children):
        root.add_module(f"child{j}", child)
    owners = [root, *children]
    for i, p in enumerate(params):
        owners[draw(st.integers(0, len(owners) - 1))].register_parameter(f"p{i}", p)
        if draw(st.integers(0, 4)) == 0:
            owners[draw(st.integers(0, len(owners) - 1))].register_parameter(f"tied{i}", p)
    return Case(root, buffer)


def make_grad(p: nn.Parameter, kind: str, seed: int) -> Tensor | None:
    if kind == "none":
        return None
    values = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)).to(p.dtype)
    if kind == "transposed" and p.dim() >= 2:
        return values.transpose(0, 1).contiguous().transpose(0, 1)
    if kind == "channels_last" and p.dim() == 4:
        return values.contiguous(memory_format=torch.channels_last)
    if kind == "strided" and p.dim() >= 1:
        # Every other element of a larger tensor: reshape(-1) of it can be a view.
        wide = torch.zeros(*p.shape[:-1], 2 * p.shape[-1], dtype=p.dtype)
        wide[..., ::2] = values
        return wide[..., ::2]
    return values


def plain(tensors: list[Tensor | None], params: list[nn.Parameter], dtype: torch.dtype) -> Tensor:
    pieces = [
        torch.zeros(p.numel(), dtype=dtype) if t is None else t.detach().reshape(-1).to(dtype)
        for t, p in zip(tensors, params, strict=True)
    ]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=dtype)


def vector_for(case: Case, seed: int) -> Tensor:
    # Small integers are exact in every dtype, so a misplaced piece shows.
    return (torch.randperm(case.numel, generator=torch.Generator().manual_seed(seed)) % 61 - 30).to(case.dtype)


@given(cases())
def test_getters_equal_the_plain_definition(case: Case) -> None:
    params = case.params
    assert torch.equal(backbone.get_params(case.module).detach(), plain(list(params), params, case.dtype))
    expected_grads = plain([p.grad for p in params], params, case.dtype)
    assert torch.equal(backbone.get_grads(case.module), expected_grads)
    out = torch.full((case.numel,), 7, dtype=case.dtype)
    assert backbone.get_grads(case.module, out=out) is out and torch.equal(out, expected_grads)


@given(cases())
def test_get_grads_list_entries_are_exact_and_own_their_memory(case: Case) -> None:
    params = case.params
    for _ in range(1):
        entries = backbone.get_grads_list(case.module)
        assert len(entries) == len(params)
        for p, entry in zip(params, entries, strict=True):
            expected = torch.zeros(p.numel(), dtype=p.dtype) if p.grad is None else p.grad.reshape(-1)
            assert entry.dtype == p.dtype and torch.equal(entry, expected)
        before = [None if p.grad is None else p.grad.clone() for p in params]
        for entry in entries:
            entry.fill_(99)
        for p, grad in zip(params, before, strict=True):
            assert (p.grad is None and grad is None) or torch.equal(p.grad, grad)


@given(cases(), st.integers(0, 10**6))
def test_set_params_writes_each_slice(case: Case, seed: int) -> None:
    v = vector_for(case, seed)
    backbone.set_params(case.module, v)
    assert torch.equal(plain(list(case.params), case.params, case.dtype), v)


@given(cases(), st.integers(0, 10**6))
def test_set_grads_writes_each_slice_keeping_existing_grad_objects(case: Case, seed: int) -> None:
    objects = [p.grad for p in case.params]
    v = vector_for(case, seed)
    backbone.set_grads(case.module, v)
    assert torch.equal(plain([p.grad for p in case.params], case.params, case.dtype), v)
    for p, grad in zip(case.params, objects, strict=True):
        assert p.grad is not None and (grad is None or p.grad is grad)


@given(cases(shared=True), st.data())
def test_a_source_overlapping_the_parameters_gives_what_a_copy_gives(case: Case, data: st.DataObject) -> None:
    assert case.shared is not None and case.dtype == torch.float32  # views of one float32 buffer
    shift = data.draw(st.integers(0, case.numel + 1))
    source = case.shared[shift : shift + case.numel]
    expected = source.clone()
    backbone.set_params(case.module, source)
    assert torch.equal(backbone.get_params(case.module).detach(), expected)


@given(cases())
def test_a_rejected_call_changes_nothing(case: Case) -> None:
    params = case.params
    values = [p.detach().clone() for p in params]
    grads = [(p.grad, None if p.grad is None else p.grad.clone()) for p in params]
    calls = [
        lambda: backbone.set_params(case.module, torch.zeros(case.numel + 1)),
        lambda: backbone.set_grads(case.module, torch.zeros(case.numel, device="meta")),
        lambda: backbone.set_grads(case.module, torch.zeros(case.numel, dtype=torch.complex64)),
        lambda: backbone.get_grads(case.module, out=torch.zeros(case.numel, dtype=torch.int32)),
    ]
    for call in calls:
        try:
            call()
        except (TypeError, ValueError):
            pass
        else:
            raise AssertionError("the call should have been rejected")
        for p, value in zip(params, values, strict=True):
            assert torch.equal(p, value)
        for p, (grad, value) in zip(params, grads, strict=True):
            assert p.grad is grad
            assert grad is None or torch.equal(grad, value)


@given(cases(), st.integers(0, 10**6), st.sampled_from([1.0, -0.5, 2]))
def test_add_grads_adds_into_each_slice_and_creates_missing_ones(case: Case, seed: int, alpha: float) -> None:
    objects = [p.grad for p in case.params]
    before = [None if g is None else g.clone() for g in objects]
    v = vector_for(case, seed)
    backbone.add_grads(case.module, v, alpha=alpha)
    offset = 0  # the slices from a running sum of sizes, not from the package's layout
    for p, grad, old in zip(case.params, objects, before, strict=True):
        assert p.grad is not None and (grad is None or p.grad is grad)  # existing objects kept
        added = v[offset : offset + p.numel()].view(p.shape).to(p.dtype)
        offset += p.numel()
        expected = added * alpha if old is None else old + added * alpha
        torch.testing.assert_close(p.grad, expected.to(p.dtype), rtol=0, atol=0)
