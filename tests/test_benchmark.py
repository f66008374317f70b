"""The benchmark's baselines compute what they stand in for."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import flat_ops

import backbone


def test_naive_loops_match_the_library() -> None:
    net = flat_ops.ManySmall(count=20, size=7)
    params = list(net.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    assert torch.equal(flat_ops.naive_get(params), backbone.get_params(net).detach())  # type: ignore[arg-type]
    vector = torch.randn(140)
    with torch.no_grad():
        flat_ops.naive_set(params, vector)  # type: ignore[arg-type]
    assert torch.equal(backbone.get_params(net).detach(), vector)


def test_many_small_model_has_the_advertised_shape() -> None:
    params = list(flat_ops.ManySmall().parameters())
    assert len(params) == 1000 and {p.numel() for p in params} == {1000}


def test_timer_reports_a_median_per_function() -> None:
    calls: list[str] = []
    timer = flat_ops.Timer(torch.device("cpu"), reps=3, warmup=1)
    medians = timer({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")})
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())
    assert calls.count("a") == calls.count("b") == 4
