"""Five continual-learning methods on scikit-learn's handwritten digits, written against the backbone API.

The 8x8 digits that ship with scikit-learn (``load_digits``, no download)
are split into five tasks of two classes each (0-1, 2-3, ..., 8-9) and
learnt one after the other by a registered backbone (``mnistmlp``). Five
methods are trained in turn, from the same initial weights and data order:

* **Fine-tune**: train on each task as it comes, nothing more;
* **ER** (experience replay): a reservoir buffer of past samples, replayed
  with every batch;
* **DER** (dark experience replay): the buffer keeps the logits the network
  gave each sample (``returnt="out"``), and replay matches them;
* **A-GEM**: the gradient is projected, with the flat operations, when it
  would increase the loss on a replayed batch;
* **EWC-online**: a running Fisher diagonal, read with ``get_grads(out=)``,
  weights a penalty whose gradient is added with ``add_grads``.

It prints each method's accuracy matrix (row *i*: the accuracy on every task
after learning task *i*), the final average accuracy and the forgetting, in
the class-incremental setting (every digit is a possible answer) and the
task-incremental one (the answer is one of the task's two digits), and saves
a figure. Run it from a clone of the repository::

    python3 -m pip install ".[examples]"
    python3 examples/digits_cl.py

``--help`` lists the options; the defaults (five seeds, ten epochs a task)
take about half a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import backbone

TASKS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
METHODS = ["Fine-tune", "ER", "DER", "A-GEM", "EWC-online"]


# --- data ----------------------------------------------------------------------


@dataclass
class Task:
    classes: tuple[int, int]
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def load_tasks(seed: int = 0) -> list[Task]:
    """The digits, scaled to [0, 1], split 70/30 per class and grouped into five two-class tasks."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    for classes in TASKS:
        train, test = [], []
        for c in classes:
            index = (y == c).nonzero().squeeze(1)
            index = index[torch.randperm(len(index), generator=generator)]
            cut = int(0.7 * len(index))
            train.append(index[:cut])
            test.append(index[cut:])
        tr, te = torch.cat(train), torch.cat(test)
        tasks.append(Task(classes, x[tr], y[tr], x[te], y[te]))
    return tasks


def batches(task: Task, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    order = torch.randperm(len(task.train_y), generator=generator)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield task.train_x[index], task.train_y[index]


# --- what the methods keep between steps -----------------------------------------


@dataclass
class Buffer:
    """A reservoir of past samples (and, for DER, the logits the network gave them)."""

    size: int
    generator: torch.Generator
    x: list[Tensor] = field(default_factory=list)
    y: list[Tensor] = field(default_factory=list)
    logits: list[Tensor] = field(default_factory=list)
    seen: int = 0

    def add(self, x: Tensor, y: Tensor, logits: Tensor) -> None:
        for i in range(len(y)):
            self.seen += 1
            if len(self.y) < self.size:
                self.x.append(x[i])
                self.y.append(y[i])
                self.logits.append(logits[i])
                continue
            slot = int(torch.randint(self.seen, (1,), generator=self.generator))
            if slot < self.size:
                self.x[slot], self.y[slot], self.logits[slot] = x[i], y[i], logits[i]

    def sample(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        index = torch.randperm(len(self.y), generator=self.generator)[:n].tolist()
        return (
            torch.stack([self.x[i] for i in index]),
            torch.stack([self.y[i] for i in index]),
            torch.stack([self.logits[i] for i in index]),
        )

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class State:
    """A method's network, optimizer and memory."""

    net: backbone.MammothBackbone
    optimizer: torch.optim.Optimizer
    buffer: Buffer
    # A-GEM's two gradient buffers and EWC's vectors, allocated once.
    grad: Tensor
    reference: Tensor
    anchor: Tensor | None = None
    fisher: Tensor | None = None


# --- one training step per method --------------------------------------------------
# Each takes a batch, leaves the update's gradient in .grad and returns the
# logits it computed for the batch (for the buffer). The optimizer step and
# the buffer update are shared (train_task).

REPLAY_BATCH = 32
DER_ALPHA = 0.3
EWC_LAMBDA = 300.0
EWC_GAMMA = 1.0


def finetune_step(s: State, x: Tensor, y: Tensor) -> Tensor:
    logits = s.net(x, returnt="out")
    F.cross_entropy(logits, y).backward()
    return logits


def er_step(s: State, x: Tensor, y: Tensor) -> Tensor:
    logits = s.net(x, returnt="out")
    loss = F.cross_entropy(logits, y)
    if len(s.buffer):
        bx, by, _ = s.buffer.sample(REPLAY_BATCH)
        loss = loss + F.cross_entropy(s.net(bx, returnt="out"), by)
    loss.backward()
    return logits


def der_step(s: State, x: Tensor, y: Tensor) -> Tensor:
    logits = s.net(x, returnt="out")
    loss = F.cross_entropy(logits, y)
    if len(s.buffer):
        bx, _, old_logits = s.buffer.sample(REPLAY_BATCH)
        loss = loss + DER_ALPHA * F.mse_loss(s.net(bx, returnt="out"), old_logits)
    loss.backward()
    return logits


def agem_step(s: State, x: Tensor, y: Tensor) -> Tensor:
    if len(s.buffer):
        bx, by, _ = s.buffer.sample(REPLAY_BATCH)
        F.cross_entropy(s.net(bx, returnt="out"), by).backward()
        s.net.get_grads(out=s.reference)
        s.net.zero_grad()
    logits = s.net(x, returnt="out")
    F.cross_entropy(logits, y).backward()
    if len(s.buffer):
        grad = s.net.get_grads(out=s.grad)
        dot = torch.dot(grad, s.reference)
        if dot < 0:  # the step would increase the loss on the replayed batch
            grad.sub_(s.reference, alpha=(dot / torch.dot(s.reference, s.reference)).item())
            s.net.set_grads(grad)
    return logits


def ewc_step(s: State, x: Tensor, y: Tensor) -> Tensor:
    logits = s.net(x, returnt="out")
    F.cross_entropy(logits, y).backward()
    if s.anchor is not None and s.fisher is not None:
        # The gradient of lambda * sum(F * (theta - anchor)^2), added directly.
        delta = s.net.get_params(out=s.grad).sub_(s.anchor).mul_(s.fisher)
        backbone.add_grads(s.net, delta, alpha=2 * EWC_LAMBDA)
    return logits


def ewc_end_task(s: State, task: Task) -> None:
    """Fold this task's Fisher diagonal into the running one and move the anchor."""
    fisher = torch.zeros_like(s.grad)
    for i in range(len(task.train_y)):
        s.net.zero_grad()
        F.cross_entropy(s.net(task.train_x[i : i + 1], returnt="out"), task.train_y[i : i + 1]).backward()
        grad = s.net.get_grads(out=s.reference)
        fisher.addcmul_(grad, grad)
    fisher /= len(task.train_y)
    s.fisher = fisher if s.fisher is None else s.fisher.mul_(EWC_GAMMA).add_(fisher)
    s.anchor = s.net.get_params().detach().clone()
    s.net.zero_grad()


STEPS: dict[str, Callable[[State, Tensor, Tensor], Tensor]] = {
    "Fine-tune": finetune_step,
    "ER": er_step,
    "DER": der_step,
    "A-GEM": agem_step,
    "EWC-online": ewc_step,
}


# --- training and evaluation --------------------------------------------------------


@dataclass
class Config:
    epochs: int = 10
    batch_size: int = 16
    lr: float = 0.05
    buffer_size: int = 100
    hidden_size: int = 100


def new_state(seed: int, config: Config) -> State:
    torch.manual_seed(seed)
    net = backbone.get_backbone("mnistmlp", input_size=64, output_size=10, hidden_size=config.hidden_size)
    n = net.get_params().numel()
    return State(
        net=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=config.lr),
        buffer=Buffer(config.buffer_size, torch.Generator().manual_seed(seed)),
        grad=torch.empty(n),
        reference=torch.empty(n),
    )


def train_task(s: State, method: str, task: Task, config: Config, generator: torch.Generator) -> None:
    step = STEPS[method]
    s.net.train()
    for _ in range(config.epochs):
        for x, y in batches(task, config.batch_size, generator):
            s.optimizer.zero_grad()
            logits = step(s, x, y)
            s.optimizer.step()
            s.buffer.add(x, y, logits.detach())
    if method == "EWC-online":
        ewc_end_task(s, task)


@torch.no_grad()
def accuracy(net: backbone.MammothBackbone, task: Task, task_incremental: bool) -> float:
    net.eval()
    logits = net(task.test_x, returnt="out")
    if task_incremental:  # only the task's own classes compete
        mask = torch.full_like(logits, float("-inf"))
        mask[:, list(task.classes)] = 0
        logits = logits + mask
    return float((logits.argmax(1) == task.test_y).float().mean())


@dataclass
class Run:
    """One method on one seed: ``matrix[i][j]`` is the accuracy on task j after learning task i."""

    method: str
    seed: int
    class_il: list[list[float]]
    task_il: list[list[float]]


def run_method(method: str, seed: int, tasks: list[Task], config: Config, progress: Callable[[str], None]) -> Run:
    s = new_state(seed, config)
    generator = torch.Generator().manual_seed(seed)
    class_il, task_il = [], []
    for t, task in enumerate(tasks):
        progress(f"{method:<10} seed {seed}  task {t + 1}/{len(tasks)}")
        train_task(s, method, task, config, generator)
        class_il.append([accuracy(s.net, other, False) for other in tasks])
        task_il.append([accuracy(s.net, other, True) for other in tasks])
    return Run(method, seed, class_il, task_il)


def average_accuracy(matrix: list[list[float]]) -> float:
    """The mean accuracy over all tasks after the last one."""
    return sum(matrix[-1]) / len(matrix[-1])


def forgetting(matrix: list[list[float]]) -> float:
    """The mean, over every task but the last, of its best accuracy before the end minus its final accuracy."""
    last = len(matrix) - 1
    drops = [max(matrix[i][j] for i in range(j, last)) - matrix[last][j] for j in range(last)]
    return sum(drops) / len(drops)


def mean_matrix(runs: list[Run], setting: str) -> list[list[float]]:
    matrices = [getattr(r, setting) for r in runs]
    return [[sum(m[i][j] for m in matrices) / len(matrices) for j in range(len(TASKS))] for i in range(len(TASKS))]


def summarise(runs: list[Run]) -> list[dict[str, object]]:
    """One row per method: the mean, over seeds, of each measure."""
    rows = []
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        row: dict[str, object] = {"method": method}
        for setting, label in (("class_il", "Class-IL"), ("task_il", "Task-IL")):
            row[f"{label} accuracy"] = sum(average_accuracy(getattr(r, setting)) for r in mine) / len(mine)
            row[f"{label} forgetting"] = sum(forgetting(getattr(r, setting)) for r in mine) / len(mine)
        rows.append(row)
    return rows


# --- output ------------------------------------------------------------------------


def print_report(runs: list[Run], rows: list[dict[str, object]], seeds: int) -> None:
    for method in dict.fromkeys(r.method for r in runs):
        matrix = mean_matrix([r for r in runs if r.method == method], "class_il")
        print(f"\n{method}: Class-IL accuracy on each task (columns) after each task (rows), mean of {seeds} seed(s)")
        for t, row in enumerate(matrix):
            print(f"  after task {t + 1}: " + "  ".join(f"{100 * a:5.1f}" for a in row))
    print()
    header = list(rows[0])
    print("  ".join(f"{h:>20}" if i else f"{h:<12}" for i, h in enumerate(header)))
    for row in rows:
        cells = [f"{row['method']:<12}"] + [f"{100 * float(row[h]):>19.1f}%" for h in header[1:]]  # type: ignore[arg-type]
        print("  ".join(cells))


def save(runs: list[Run], rows: list[dict[str, object]], out: Path, seeds: int) -> None:
    """Write OUT/digits.json (every run), OUT/digits.csv (the summary) and OUT/digits.png."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "digits.json").write_text(json.dumps([r.__dict__ for r in runs], indent=1) + "\n")
    with open(out / "digits.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", *[f"{h} (%)" for h in list(rows[0])[1:]]])
        for row in rows:
            writer.writerow([row["method"], *[f"{100 * float(v):.1f}" for k, v in row.items() if k != "method"]])  # type: ignore[arg-type]
    plot(runs, out / "digits.png", seeds)


def plot(runs: list[Run], path: Path, seeds: int) -> None:
    """One accuracy matrix per method (tasks not yet learnt left blank), and the mean accuracy on the tasks seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in runs))
    columns = 3
    rows = -(-(len(methods) + 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.2 * rows), squeeze=False)
    cells = list(axes.flat)
    labels = [f"{a}-{b}" for a, b in TASKS]
    for ax, method in zip(cells, methods, strict=False):
        matrix = mean_matrix([r for r in runs if r.method == method], "class_il")
        shown = [[100 * a if j <= i else float("nan") for j, a in enumerate(row)] for i, row in enumerate(matrix)]
        ax.imshow(shown, vmin=0, vmax=100, cmap="viridis")
        for i, row in enumerate(matrix):
            for j, a in enumerate(row[: i + 1]):
                colour = "white" if a < 0.6 else "black"
                ax.text(j, i, f"{100 * a:.0f}", ha="center", va="center", fontsize=8, color=colour)
        summary = f"average {100 * average_accuracy(matrix):.1f}%, forgetting {100 * forgetting(matrix):.1f}"
        ax.set_title(f"{method}\n{summary}", fontsize=9)
        ax.set_xticks(range(len(TASKS)), labels, fontsize=7)
        ax.set_yticks(range(len(TASKS)), [f"after {label}" for label in labels], fontsize=7)
        ax.set_xlabel("accuracy on task (digits)", fontsize=7)
    ax = cells[len(methods)]
    for method in methods:
        matrix = mean_matrix([r for r in runs if r.method == method], "class_il")
        seen = [100 * sum(row[: t + 1]) / (t + 1) for t, row in enumerate(matrix)]
        ax.plot(range(1, len(TASKS) + 1), seen, marker="o", label=method)
    ax.set_xticks(range(1, len(TASKS) + 1))
    ax.set_xlabel("tasks learnt", fontsize=8)
    ax.set_ylabel("mean accuracy on the tasks seen (%)", fontsize=8)
    ax.set_ylim(0, 102)
    ax.legend(fontsize=7)
    for ax in cells[len(methods) + 1 :]:
        ax.axis("off")
    fig.suptitle(f"Class-IL accuracy (%) on each task's test digits, mean of {seeds} seed(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def progress_printer(total: int) -> Callable[[str], None]:
    """A one-line progress display on stderr: step count, elapsed time and what runs now."""
    start, done = time.perf_counter(), [0]

    def show(what: str) -> None:
        done[0] += 1
        elapsed = time.perf_counter() - start
        end = "\n" if done[0] == total else ""
        sys.stderr.write(f"\r[{done[0]:>3}/{total}] {elapsed:5.1f}s  {what:<40}{end}")
        sys.stderr.flush()

    return show


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="runs per method, each from its own seed (default 5)")
    parser.add_argument("--epochs", type=int, default=Config.epochs, help=f"epochs per task (default {Config.epochs})")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ", ".join(METHODS))
    parser.add_argument(
        "--out", type=Path, default=Path("digits-results"), help="output folder (default digits-results)"
    )
    parser.add_argument("--no-save", action="store_true", help="print only: no figure, no files")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or args.seeds < 1 or args.epochs < 1:
        parser.error(f"--methods must come from {', '.join(METHODS)} (got {unknown}); --seeds and --epochs at least 1")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    random.seed(0)
    tasks = load_tasks()
    config = Config(epochs=args.epochs)
    progress = (lambda _: None) if args.quiet else progress_printer(len(methods) * args.seeds * len(tasks))
    runs = [run_method(m, seed, tasks, config, progress) for m in methods for seed in range(args.seeds)]
    rows = summarise(runs)
    print_report(runs, rows, args.seeds)
    if not args.no_save:
        save(runs, rows, args.out, args.seeds)
        print(f"\nsaved {args.out / 'digits.csv'}, {args.out / 'digits.json'} and {args.out / 'digits.png'}")
    return rows


if __name__ == "__main__":
    main()
