"""The benchmark's baselines compute what they stand in for."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import flat_ops
import steps

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


def small_setup() -> steps.Setup:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.ReLU(), torch.nn.Linear(6, 10))
    return steps.make_setup(net, 4, torch.device("cpu"), image=(3, 2, 2))


def updated(step: Callable[[steps.Setup], None]) -> torch.Tensor:
    setup = small_setup()
    for _ in range(2):  # the second step uses the buffers kept from the first
        step(setup)
    return backbone.get_params(setup.net).detach()


@pytest.mark.parametrize("method", list(steps.STEPS))
def test_the_three_ways_of_a_method_make_the_same_update(method: str) -> None:
    ways = steps.STEPS[method]
    expected = updated(ways["mammoth"])
    assert not torch.allclose(expected, updated(ways["floor"]))  # the method changes the update
    for way in ("package", "torch"):
        torch.testing.assert_close(updated(ways[way]), expected, rtol=1e-5, atol=1e-6)


def test_agem_projects_only_on_disagreement_when_asked() -> None:
    for way in (steps.agem_package, steps.agem_mammoth, steps.agem_torch):
        setup = small_setup()
        setup.replay_x, setup.replay_y = setup.x, setup.y  # the same batch: the gradients agree
        way(setup, always=False)
        floor = small_setup()
        floor.replay_x, floor.replay_y = floor.x, floor.y
        steps.agem_floor(floor)
        assert torch.equal(backbone.get_params(setup.net), backbone.get_params(floor.net))


def test_the_two_fisher_accumulations_agree() -> None:
    a, b = small_setup(), small_setup()
    for setup, accumulate in ((a, steps.fisher_package), (b, steps.fisher_mammoth)):
        steps.plain_step(setup)
        accumulate(setup)
    torch.testing.assert_close(a.fisher, b.fisher)


def test_ratios_pair_the_calls_of_each_round() -> None:
    timer = flat_ops.Timer(torch.device("cpu"), reps=3, warmup=0)
    timer.samples = {"op": [2.0, 30.0, 4.0], "limit": [1.0, 10.0, 4.0]}
    assert timer.ratio("op", "limit") == 2.0  # the ratio of medians would be 4 / 4 = 1


def test_mammoths_fisher_loop_computes_the_fisher_the_package_does() -> None:
    torch.manual_seed(0)
    net = backbone.MNISTMLP(12, 4, hidden_size=6).eval()
    batches = [(torch.randn(5, 12), torch.randint(0, 4, (5,)))]
    expected = flat_ops.fisher_mammoth_loop(net, batches)
    torch.testing.assert_close(backbone.fisher_diagonal(net, batches), expected, rtol=1e-5, atol=1e-9)
    # The squared batch gradient is another quantity: the reason the table shows it for reference only.
    assert not torch.allclose(flat_ops.fisher_batch_squared(net, batches), expected)
