"""The fast paths of the flat operations against their plain definitions.

Random module trees mix float16, float32 and float64 parameters, channels_last
and transposed (non-contiguous) gradients, tied and frozen parameters, and
missing gradients.
"""

from __future__ import annotations

import copy
import functools
import random

import pytest
import torch
from torch import Tensor, nn

import backbone

DTYPES = [torch.float16, torch.float32, torch.float64]


def random_parameter(rng: random.Random, gen: torch.Generator) -> nn.Parameter:
    dims = rng.randint(1, 4)
    shape = [rng.randint(1, 5) for _ in range(dims)]
    dtype = rng.choice(DTYPES)
    data = torch.randn(shape, generator=gen).to(dtype)
    if dims == 4 and rng.random() < 0.5:
        data = data.contiguous(memory_format=torch.channels_last)
    return nn.Parameter(data, requires_grad=rng.random() > 0.2)


def random_grad(p: nn.Parameter, rng: random.Random, gen: torch.Generator) -> Tensor | None:
    kind = rng.choice(["none", "contiguous", "transposed", "channels_last"])
    if kind == "none":
        return None
    grad = torch.randn(p.shape, generator=gen).to(p.dtype)
    if kind == "transposed" and p.dim() >= 2:
        grad = grad.transpose(0, 1).contiguous().transpose(0, 1)
        assert grad.shape == p.shape
    if kind == "channels_last" and p.dim() == 4:
        grad = grad.contiguous(memory_format=torch.channels_last)
    return grad


def random_tree(seed: int) -> nn.Module:
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    pool: list[nn.Parameter] = []

    def build(depth: int) -> nn.Module:
        module = nn.Module()
        for i in range(rng.randint(0, 3)):
            if pool and rng.random() < 0.2:
                param = rng.choice(pool)  # tie to an earlier parameter
            else:
                param = random_parameter(rng, gen)
                pool.append(param)
            module.register_parameter(f"p{i}", param)
        if depth < 3:
            for j in range(rng.randint(0, 3)):
                module.add_module(f"m{j}", build(depth + 1))
        return module

    root = build(0)
    if not pool:
        root.register_parameter("p", random_parameter(rng, gen))
    for p in root.parameters():
        p.grad = random_grad(p, rng, gen)
    return root


def promoted(module: nn.Module) -> torch.dtype:
    return functools.reduce(torch.promote_types, (p.dtype for p in module.parameters()))


def plain_params(module: nn.Module) -> Tensor:
    dtype = promoted(module)
    return torch.cat([p.detach().reshape(-1).to(dtype) for p in module.parameters()])


def plain_grads(module: nn.Module) -> Tensor:
    dtype = promoted(module)
    return torch.cat(
        [
            torch.zeros(p.numel(), dtype=dtype) if p.grad is None else p.grad.reshape(-1).to(dtype)
            for p in module.parameters()
        ]
    )


def plain_set(tensors: list[Tensor], vector: Tensor) -> None:
    i = 0
    for t in tensors:
        t.copy_(vector[i : i + t.numel()].view(t.shape))
        i += t.numel()


SEEDS = range(40)


@pytest.mark.parametrize("seed", SEEDS)
def test_getters_match_the_plain_definition(seed: int) -> None:
    module = random_tree(seed)
    n = sum(p.numel() for p in module.parameters())
    assert torch.equal(backbone.get_params(module).detach(), plain_params(module))
    assert torch.equal(backbone.get_grads(module), plain_grads(module))
    out = torch.full((n,), float("nan"), dtype=promoted(module))
    assert torch.equal(backbone.get_params(module, out=out), plain_params(module))
    assert torch.equal(backbone.get_grads(module, out=out), plain_grads(module))
    grads = backbone.get_grads_list(module)
    for p, g in zip(module.parameters(), grads, strict=True):
        expected = torch.zeros(p.numel(), dtype=p.dtype) if p.grad is None else p.grad.reshape(-1)
        assert g.dtype == p.dtype and torch.equal(g, expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_setters_match_the_plain_definition(seed: int) -> None:
    module = random_tree(seed)
    n = sum(p.numel() for p in module.parameters())
    vector = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    ours, plain = module, copy.deepcopy(module)
    backbone.set_params(ours, vector)
    with torch.no_grad():
        plain_set(list(plain.parameters()), vector)
    for a, b in zip(ours.parameters(), plain.parameters(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
        assert a.is_contiguous(memory_format=torch.channels_last) == b.is_contiguous(memory_format=torch.channels_last)

    backbone.set_grads(ours, vector)
    for p in plain.parameters():
        if p.grad is None:
            p.grad = torch.empty_like(p)
    plain_set([p.grad for p in plain.parameters()], vector)  # type: ignore[misc]
    for a, b in zip(ours.parameters(), plain.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        assert a.grad.dtype == a.dtype and torch.equal(a.grad, b.grad)
    assert torch.equal(backbone.get_grads(ours), plain_grads(plain))


def test_random_trees_cover_the_cases() -> None:
    """The generator really produces what the tests above claim to cover."""
    seen = set()
    for seed in SEEDS:
        module = random_tree(seed)
        named = list(module.named_parameters(remove_duplicate=False))
        if len({id(p) for _, p in named}) < len(named):
            seen.add("tied")
        for p in module.parameters():
            seen.add(p.dtype)
            if not p.requires_grad:
                seen.add("frozen")
            if p.grad is None:
                seen.add("missing")
            elif not p.grad.is_contiguous():
                seen.add("non-contiguous grad")
    assert seen >= {"tied", "frozen", "missing", "non-contiguous grad", *DTYPES}
