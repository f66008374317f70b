"""The digits example runs end to end and its methods do what they claim (a short run, with margins)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_cl", ROOT / "examples" / "digits_cl.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["digits_cl"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


example = load_example()
SHORT = ["--seeds", "1", "--quiet"]


@pytest.fixture(scope="module")
def short_run() -> dict[str, dict[str, float]]:
    rows = example.main([*SHORT, "--no-save"])
    return {str(row["method"]): {k: float(v) for k, v in row.items() if k != "method"} for row in rows}


def test_fine_tuning_forgets_every_earlier_task(short_run: dict[str, dict[str, float]]) -> None:
    # The setting must show forgetting, or the comparisons below mean nothing.
    assert short_run["Fine-tune"]["Class-IL forgetting"] > 0.8
    assert short_run["Fine-tune"]["Class-IL accuracy"] < 0.3


@pytest.mark.parametrize(("method", "margin"), [("ER", 0.4), ("DER", 0.4), ("A-GEM", 0.03)])
def test_replay_and_agem_forget_less_than_fine_tuning(
    short_run: dict[str, dict[str, float]], method: str, margin: float
) -> None:
    assert short_run[method]["Class-IL forgetting"] < short_run["Fine-tune"]["Class-IL forgetting"] - margin
    assert short_run[method]["Class-IL accuracy"] > short_run["Fine-tune"]["Class-IL accuracy"] + margin / 2


def test_every_method_learns_the_task_at_hand() -> None:
    tasks = example.load_tasks()
    for method in example.METHODS:
        run = example.run_method(method, 0, tasks, example.Config(), lambda _: None)
        assert min(run.class_il[t][t] for t in range(len(tasks))) > 0.85, method


def penalty_after_the_second_task(method: str) -> float:
    """The EWC penalty sum(F * (theta - anchor)^2) of the first task, after ``method`` learnt the second."""
    tasks = example.load_tasks()
    config = example.Config()
    state = example.new_state(0, config)
    generator = torch.Generator().manual_seed(0)
    example.train_task(state, "EWC-online", tasks[0], config, generator)  # leaves the anchor and the Fisher
    anchor, fisher = state.anchor.clone(), state.fisher.clone()
    example.train_task(state, method, tasks[1], config, generator)
    return float((fisher * (state.net.get_params().detach() - anchor) ** 2).sum())


def test_ewc_keeps_the_important_parameters_near_their_anchor() -> None:
    assert penalty_after_the_second_task("EWC-online") < 0.5 * penalty_after_the_second_task("Fine-tune")


def test_a_saved_run_writes_its_table_and_figure(tmp_path: Path) -> None:
    example.main(["--seeds", "1", "--epochs", "1", "--quiet", "--methods", "Fine-tune,ER", "--out", str(tmp_path)])
    with open(tmp_path / "digits.csv") as f:
        table = list(csv.reader(f))
    assert [row[0] for row in table[1:]] == ["Fine-tune", "ER"]
    assert (tmp_path / "digits.png").stat().st_size > 10_000
    assert (tmp_path / "digits.json").exists()


def test_unknown_methods_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--methods", "Fine-tune,iCaRL"])
    assert exit_info.value.code == 2
    assert "iCaRL" in capsys.readouterr().err


def test_an_agem_step_never_points_against_the_replayed_gradient() -> None:
    tasks = example.load_tasks()
    config = example.Config()
    state = example.new_state(0, config)
    generator = torch.Generator().manual_seed(0)
    example.train_task(state, "A-GEM", tasks[0], config, generator)  # fills the buffer with task 1
    projected = 0
    for x, y in example.batches(tasks[1], config.batch_size, generator):
        state.optimizer.zero_grad()
        example.agem_step(state, x, y)
        update = state.net.get_grads()
        dot, tolerance = torch.dot(update, state.reference), 1e-5 * state.reference.norm() * update.norm()
        assert dot >= -tolerance
        projected += int(dot.abs() <= tolerance)  # a projected update is orthogonal to the reference
    assert projected > 0  # the check above was exercised on projected steps
