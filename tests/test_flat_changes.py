"""The flat operations against their plain definitions, over random sequences of changes to the model.

The invariant the flat operations promise: every call's result equals the
plain definition worked out on the module as it is at that call, or the call
raises TypeError/ValueError and leaves parameters and gradients (values and
objects) exactly as they were. Nothing a call learns may go stale, so each
example builds a random tree and then alternates random changes between
calls (reshapes, transposes, ``as_strided`` and ``set_`` at the same
address, ``expand``, new data of the same or another shape, dtype and meta
changes, replaced and removed parameters and children, hooks, inference
tensors, stale gradients) with random flat operations, comparing each with a
reference written here from the documentation, on the same module state.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_flat_properties import DTYPES, Case, cases, make_grad
from torch import Tensor, nn

import backbone

# --- the reference: the documented definitions, written plainly -------------


def one_dimensional(name: str, p: nn.Parameter) -> bool:
    return p.dim() == 1


def ref_params(module: nn.Module, select: Any = None) -> list[nn.Parameter]:
    """The parameters a selection picks, written plainly (an explicit selection must pick one)."""
    if select is None or select == "all":
        return list(module.parameters())
    if select == "trainable":
        picked = [p for p in module.parameters() if p.requires_grad]
    else:
        picked = [p for name, p in module.named_parameters() if select(name, p)]
    if not picked:
        raise ValueError("empty selection")
    return picked


def ref_dtype(params: list[nn.Parameter]) -> torch.dtype:
    if not params:
        return torch.get_default_dtype()
    return functools.reduce(torch.promote_types, [p.dtype for p in params])


def ref_check_grads(params: list[nn.Parameter]) -> None:
    """Documented: a gradient that no longer matches its parameter is refused."""
    for p in params:
        g = p.grad
        if g is not None and (g.shape != p.shape or g.dtype != p.dtype or g.device != p.device):
            raise ValueError("stale gradient")


def values(t: Tensor) -> Tensor:
    """A fresh contiguous copy of ``t``'s dense value (copy_ reads any tensor that holds data)."""
    t = t.detach()
    return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t.to_dense() if t.is_sparse else t)


def ref_flat(tensors: list[Tensor | None], params: list[nn.Parameter], device: torch.device | None = None) -> Tensor:
    """The flat vector, on ``device`` (the first parameter's by default)."""
    if not params:
        return torch.empty(0)
    device, dtype = device or params[0].device, ref_dtype(params)
    pieces = [
        torch.zeros(p.numel(), dtype=dtype, device=device)
        if t is None
        else values(t).reshape(-1).to(device=device, dtype=dtype)
        for t, p in zip(tensors, params, strict=True)
    ]
    return torch.cat(pieces)


def offsets(t: Tensor) -> Tensor:
    """The storage offset of every element of ``t``, from its strides."""
    index = torch.zeros((), dtype=torch.int64)
    for size, stride in zip(t.shape, t.stride(), strict=True):
        index = (index.unsqueeze(-1) + torch.arange(size) * stride).reshape(-1)
    return index.reshape(-1)


def ref_check_destination(t: Tensor) -> None:
    """Documented: a tensor whose elements share memory (as after expand()) is never written, on any device."""
    if t.layout == torch.strided and len(set(offsets(t).tolist())) < t.numel():
        raise ValueError("elements share memory")


def element_bytes(t: Tensor) -> set[int]:
    """Every byte address that ``t`` reads or writes (exact, for the small tensors used here)."""
    if t.numel() == 0 or t.device.type == "meta" or t.layout != torch.strided:
        return set()
    starts = t.data_ptr() + offsets(t) * t.element_size()
    return {int(s) + b for s in starts for b in range(t.element_size())}


def ref_check_out(out: Tensor, params: list[nn.Parameter], every: list[nn.Parameter]) -> None:
    """Documented: out of exactly the result's dtype, sharing no memory with any parameter or gradient of the model
    (``every``, selected or not)."""
    if out.dtype != ref_dtype(params) or out.dim() != 1 or out.numel() != sum(p.numel() for p in params):
        raise TypeError("bad out")
    if out.device.type == "meta":
        raise ValueError("out holds no data")
    ref_check_destination(out)
    mine = element_bytes(out)
    for t in [*every, *(p.grad for p in every)]:
        if t is not None and t.device == out.device and mine & element_bytes(t):
            raise ValueError("out overlaps the model")


def ref_get_params(module: nn.Module, out: Tensor | None, select: Any = None) -> Tensor:
    params = ref_params(module, select)
    if out is not None:
        ref_check_out(out, params, list(module.parameters()))
    result = ref_flat(list(params), params, None if out is None else out.device)
    return result if out is None else out.copy_(result)


def ref_get_grads(module: nn.Module, out: Tensor | None, select: Any = None) -> Tensor:
    params = ref_params(module, select)
    ref_check_grads(params)
    if out is not None:
        ref_check_out(out, params, list(module.parameters()))
    result = ref_flat([p.grad for p in params], params, None if out is None else out.device)
    return result if out is None else out.copy_(result)


def ref_get_grads_list(module: nn.Module, select: Any = None) -> list[Tensor]:
    params = ref_params(module, select)
    ref_check_grads(params)
    return [
        torch.zeros(p.numel(), dtype=p.dtype, device=p.device) if p.grad is None else values(p.grad).reshape(-1)
        for p in params
    ]


def ref_source(vector: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
    """Slices of a copy of ``vector`` shaped like each parameter, after the documented checks."""
    if vector.dim() != 1 or vector.numel() != sum(p.numel() for p in params) or vector.device.type == "meta":
        raise ValueError("wrong length, or no data")
    if any(not torch.can_cast(vector.dtype, p.dtype) for p in params):
        raise TypeError("cannot cast")
    vector, pieces, offset = vector.clone(), [], 0
    for p in params:
        pieces.append(vector[offset : offset + p.numel()].view(p.shape))
        offset += p.numel()
    return pieces


def ref_set_params(module: nn.Module, vector: Tensor, select: Any = None) -> None:
    params = ref_params(module, select)
    pieces = ref_source(vector, params)
    for p in params:
        ref_check_destination(p)
    with torch.no_grad():
        for p, piece in zip(params, pieces, strict=True):
            p.copy_(piece)


def ref_write_grads(module: nn.Module, vector: Tensor, alpha: float | None, select: Any = None) -> None:
    params = ref_params(module, select)
    ref_check_grads(params)
    if any(p.grad is not None and p.grad.layout != torch.strided for p in params):
        raise TypeError("sparse gradient")
    pieces = ref_source(vector, params)
    for p in params:
        if p.grad is not None:
            ref_check_destination(p.grad)
    with torch.no_grad():
        for p, piece in zip(params, pieces, strict=True):
            if p.grad is None:
                grad = torch.empty_like(p)
                p.grad = grad.copy_(piece) if alpha is None else grad.zero_().add_(piece, alpha=alpha)
            elif alpha is None:
                p.grad.copy_(piece)
            else:
                p.grad.add_(piece, alpha=alpha)


# --- module state: snapshot, restore, compare --------------------------------


def storages(module: nn.Module) -> list[Tensor]:
    """A byte view of every storage a parameter or gradient lives in, once each."""
    views: dict[int, Tensor] = {}
    for p in module.parameters():
        for t in (p, p.grad):
            if t is None or t.device.type == "meta" or t.layout != torch.strided:
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() not in views:
                with torch.inference_mode():  # reading an inference tensor's storage is allowed there
                    views[storage.data_ptr()] = torch.empty(0, dtype=torch.uint8).set_(storage)
    return list(views.values())


@dataclass
class Snapshot:
    grads: list[tuple[nn.Parameter, Tensor | None]]
    saved: list[tuple[Tensor, Tensor]]

    @classmethod
    def of(cls, module: nn.Module) -> Snapshot:
        with torch.inference_mode():
            saved = [(view, view.clone()) for view in storages(module)]
        return cls([(p, p.grad) for p in module.parameters()], saved)

    def restore(self) -> None:
        with torch.inference_mode():
            for view, value in self.saved:
                view.copy_(value)
        for p, grad in self.grads:
            if p.grad is not grad:
                p.grad = grad


def state(module: nn.Module, snapshot: Snapshot) -> list[Any]:
    """What a flat operation may change, comparably: values, strides, and whether each gradient object is kept."""
    before = {id(p): grad for p, grad in snapshot.grads}
    out: list[Any] = []
    for p in module.parameters():
        out.append(describe(p))
        out.append(None if p.grad is None else (p.grad is before.get(id(p)), describe(p.grad)))
    return out


def describe(t: Tensor) -> Any:
    meta = (tuple(t.shape), t.stride() if t.layout == torch.strided else None, t.dtype, t.device.type)
    if t.device.type == "meta":
        return meta
    return (*meta, values(t).to(torch.float64).reshape(-1).tolist())


def same_result(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same_result, a, b))
    assert isinstance(a, Tensor) and isinstance(b, Tensor)
    if (a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device):
        return False
    return a.device.type == "meta" or torch.equal(a.detach(), b.detach())


# --- the changes between calls ------------------------------------------------


def owners(module: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, name) for m in module.modules() for name, p in m._parameters.items() if p is not None]


def change(module: nn.Module, data: st.DataObject) -> str:
    """Apply one random change to ``module`` and say what it was."""
    slots = owners(module)
    kind = data.draw(st.sampled_from(CHANGES if slots else ["add"]), label="change")
    if kind in ("add", "child"):
        shape = data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=3).map(tuple))
        dtype = data.draw(st.sampled_from(DTYPES))
        target = nn.Module() if kind == "child" else module
        target.register_parameter("extra", nn.Parameter(torch.randn(shape).to(dtype)))
        if kind == "child":
            module.add_module(data.draw(st.sampled_from(["child0", "new"])), target)
        return kind
    owner, name = data.draw(st.sampled_from(slots), label="parameter")
    p = owner._parameters[name]
    assert p is not None
    try:
        apply_change(kind, module, owner, name, p, data)
    except RuntimeError:  # a change torch itself refuses is no change
        return f"{kind} {name} (refused by torch)"
    return f"{kind} {name}"


def apply_change(kind: str, module: nn.Module, owner: nn.Module, name: str, p: nn.Parameter, data: Any) -> None:
    draw = data.draw
    if kind == "transpose" and p.dim() >= 2:
        p.data = p.data.transpose(0, 1)
    elif kind == "view" and p.is_contiguous():
        p.data = p.data.view(-1)
    elif kind == "as_strided" and p.numel() >= 2:
        # Every other element at the same address: a strided parameter.
        p.data = p.data.as_strided((p.numel() // 2,), (2,))
    elif kind == "set_" and p.numel() > 0:
        with torch.no_grad():
            p.set_(p.untyped_storage(), p.storage_offset(), (p.numel(),), (1,))
    elif kind == "expand" and p.numel() > 0:
        p.data = p.data.reshape(-1)[:1].expand(p.numel())
    elif kind == "new_data":
        shape = draw(st.sampled_from([tuple(p.shape), (2, 2), (0,), (3,)]))
        p.data = torch.randn(shape).to(p.dtype)
    elif kind == "dtype":
        p.data = p.data.to(draw(st.sampled_from(DTYPES)))
    elif kind == "module_dtype":
        module.to(draw(st.sampled_from([torch.float32, torch.float64, torch.float16])))
    elif kind == "meta":  # a parameter that holds no data
        setattr(owner, name, nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta")))
    elif kind == "replace":
        setattr(owner, name, nn.Parameter(torch.randn(draw(st.sampled_from([(2,), tuple(p.shape)]))).to(p.dtype)))
    elif kind == "remove":
        del owner._parameters[name]
    elif kind == "tie":
        module.register_parameter(f"tied_{name}", p)
    elif kind == "hooks":
        owner.register_forward_hook(lambda *args: None)
        if p.requires_grad:
            p.register_hook(lambda g: g)
            p.register_post_accumulate_grad_hook(lambda t: None)
    elif kind == "inference_data":
        with torch.inference_mode():
            fresh = torch.randn(p.shape).to(p.dtype)
        setattr(owner, name, nn.Parameter(fresh, requires_grad=False))
    elif kind == "inference_grad":
        with torch.inference_mode():
            p.grad = torch.randn(p.shape).to(p.dtype)
    elif kind == "grad":
        p.grad = make_grad(p, draw(st.sampled_from(["none", "contiguous", "transposed", "strided"])), 7)
    elif kind == "requires_grad":
        p.requires_grad_(not p.requires_grad)
    elif kind == "channels_last" and p.dim() == 4:
        p.data = p.data.contiguous(memory_format=torch.channels_last)


CHANGES = [
    "transpose", "view", "as_strided", "set_", "expand", "new_data", "dtype", "module_dtype", "meta",
    "replace", "remove", "tie", "hooks", "inference_data", "inference_grad", "grad", "requires_grad",
    "channels_last", "add", "child",
]  # fmt: skip


# --- the operations -------------------------------------------------------------


def vector_for(module: nn.Module, case: Case, data: st.DataObject, *, out: bool, select: Any = None) -> Tensor:
    try:
        params = ref_params(module, select)
    except ValueError:
        params = []  # an empty selection: any vector, the call is refused
    n = sum(p.numel() for p in params)
    dtype = ref_dtype(params) if out else data.draw(st.sampled_from([*DTYPES, ref_dtype(params)]), label="dtype")
    kind = data.draw(st.sampled_from(["fresh", "fresh", "short", "shared", "param"]), label="vector")
    if kind == "short":
        n += 1
    elif kind == "shared" and case.shared is not None and case.shared.numel() >= n and dtype == torch.float32:
        start = data.draw(st.integers(0, case.shared.numel() - n), label="start")
        return case.shared[start : start + n]
    elif kind == "param":
        # The memory of the model's own largest parameter, if it is long enough.
        big = max(params, key=lambda p: p.numel(), default=None)
        if big is not None and big.numel() >= n and big.dtype == dtype and big.is_contiguous():
            return big.detach().reshape(-1)[:n]
    if out:
        return torch.full((n,), 7, dtype=dtype)
    values = torch.randperm(max(n, 1), generator=torch.Generator().manual_seed(n))[:n] % 61 - 30
    return values.to(dtype)  # small integers, exact in every dtype


def operation(module: nn.Module, case: Case, data: st.DataObject) -> tuple[str, Callable[[], Any], Callable[[], Any]]:
    """A random flat operation over a random selection, as the package and as the reference."""
    name = data.draw(st.sampled_from(OPERATIONS), label="operation")
    select = data.draw(st.sampled_from([None, None, "all", "trainable", one_dimensional]), label="select")
    label = f"{name}[{getattr(select, '__name__', select)}]"
    if name in ("get_params", "get_grads"):
        return label, lambda: getattr(backbone, name)(module, select=select), lambda: REFS[name](module, None, select)
    if name in ("get_params(out=)", "get_grads(out=)"):
        op = name[: -len("(out=)")]
        out = vector_for(module, case, data, out=True, select=select)
        return (
            label,
            lambda: getattr(backbone, op)(module, out=out, select=select),
            lambda: REFS[op](module, out, select),
        )
    if name == "get_grads_list":
        return label, lambda: backbone.get_grads_list(module, select=select), lambda: ref_get_grads_list(module, select)
    vector = vector_for(module, case, data, out=False, select=select)
    if name == "set_params":
        return (
            label,
            lambda: backbone.set_params(module, vector, select=select),
            lambda: ref_set_params(module, vector, select),
        )
    if name == "set_grads":
        return (
            label,
            lambda: backbone.set_grads(module, vector, select=select),
            lambda: ref_write_grads(module, vector, None, select),
        )
    alpha = data.draw(st.sampled_from([1.0, -0.5, 3.0]), label="alpha")
    return (
        label,
        lambda: backbone.add_grads(module, vector, alpha=alpha, select=select),
        lambda: ref_write_grads(module, vector, alpha, select),
    )


OPERATIONS = [
    "get_params", "get_params(out=)", "get_grads", "get_grads(out=)", "get_grads_list",
    "set_params", "set_grads", "add_grads",
]  # fmt: skip
REFS = {"get_params": ref_get_params, "get_grads": ref_get_grads}


def run(call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return call(), None
    except Exception as error:  # the reference may fail any way torch fails
        return None, error


def compare(module: nn.Module, case: Case, data: st.DataObject, log: list[str]) -> None:
    """Run one operation both ways on the same state; they must agree, or the package must refuse cleanly."""
    name, ours, reference = operation(module, case, data)
    log.append(name)
    snapshot = Snapshot.of(module)
    before = state(module, snapshot)
    result, error = run(ours)
    after_ours = state(module, snapshot)
    snapshot.restore()
    expected, ref_error = run(reference)
    after_ref = state(module, snapshot)
    if error is not None or ref_error is not None:
        snapshot.restore()
    assert error is None or isinstance(error, (TypeError, ValueError)), (log, repr(error))
    log.append("refused" if error is not None else "done")
    if error is not None:
        assert after_ours == before, (log, "a refused call changed the model")
        assert ref_error is not None, (log, f"refused what the definition allows: {error}")
        return
    assert ref_error is None, (log, f"did what the definition refuses ({ref_error!r})")
    if result is not None or expected is not None:
        assert same_result(result, expected), log
    assert after_ours == after_ref, log


@settings(max_examples=400, deadline=None)
@given(cases(), st.data())
def test_every_operation_follows_the_model_through_changes(case: Case, data: st.DataObject) -> None:
    log: list[str] = []
    torch.manual_seed(0)  # the changes draw new values from the global generator
    with contextlib.ExitStack():
        for _ in range(data.draw(st.integers(1, 6), label="rounds")):
            compare(case.module, case, data, log)
            log.append(change(case.module, data))
        compare(case.module, case, data, log)
