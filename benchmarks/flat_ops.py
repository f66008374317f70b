"""Benchmark the flat parameter and gradient operations against the copy limit.

Every operation is timed next to, in the same process:

* the copy limit: one ``copy_`` of a same-sized flat tensor into a
  preallocated one (for the operations that write into existing memory), or
  one ``clone()`` (for those that return a fresh tensor);
* ``torch.nn.utils.parameters_to_vector`` / ``vector_to_parameters``;
* a naive per-parameter slicing loop, as Mammoth's implementation does.

Ratios are medians over the repetitions, so they compare like with like on
a noisy machine. Run ``python benchmarks/flat_ops.py --help`` for options;
``--device cuda`` times with CUDA events.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import backbone
from backbone import resnet18, resnet50


class ManySmall(nn.Module):
    """About 1,000 tensors of 1,000 elements: a model bound by per-tensor overhead."""

    def __init__(self, count: int = 1000, size: int = 1000) -> None:
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(size)) for _ in range(count))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: resnet18(10),
    "resnet50": lambda: resnet50(10),
    "many-small": ManySmall,
}


# --- the naive per-parameter loops, as Mammoth writes them -------------------


def naive_get(tensors: list[Tensor]) -> Tensor:
    out = torch.empty(sum(t.numel() for t in tensors), dtype=tensors[0].dtype, device=tensors[0].device)
    i = 0
    for t in tensors:
        out[i : i + t.numel()] = t.reshape(-1)
        i += t.numel()
    return out


def naive_set(tensors: list[Tensor], vector: Tensor) -> None:
    i = 0
    for t in tensors:
        t.copy_(vector[i : i + t.numel()].view_as(t))
        i += t.numel()


# --- timing ------------------------------------------------------------------


class Timer:
    """Round-robin timing: every repetition calls each function once, in a shuffled order.

    Drift on a shared machine (another process waking up, a frequency change)
    then hits every function of a comparison alike, and the ratios of the
    medians stay meaningful.
    """

    def __init__(self, device: torch.device, reps: int, warmup: int) -> None:
        self.device, self.reps, self.warmup = device, reps, warmup

    def _once(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def __call__(self, fns: dict[str, Callable[[], object]]) -> dict[str, float]:
        """Median seconds of one call of each function."""
        with torch.no_grad():
            for fn in fns.values():
                for _ in range(self.warmup):
                    fn()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            samples: dict[str, list[float]] = {name: [] for name in fns}
            order = list(fns)
            shuffle = random.Random(0).shuffle
            for _ in range(self.reps):
                # A fresh order each round: what ran just before (a large free,
                # say) must not favour one function over another.
                shuffle(order)
                for name in order:
                    samples[name].append(self._once(fns[name]))
        return {name: statistics.median(times) for name, times in samples.items()}


@dataclass
class Row:
    model: str
    op: str
    ours_us: float
    limit: str
    limit_us: float
    torch_us: float | None
    naive_us: float | None

    @property
    def ratio(self) -> float:
        return self.ours_us / self.limit_us


def bench_model(name: str, timer: Timer) -> list[Row]:
    torch.manual_seed(0)
    net = MODELS[name]().to(timer.device)
    params = list(net.parameters())
    n = sum(p.numel() for p in params)
    for p in params:
        p.grad = torch.randn_like(p)
    src = torch.randn(n, device=timer.device)
    dst = torch.empty(n, device=timer.device)
    # vector_to_parameters makes the parameters views of its vector; on the
    # real parameters that would turn every later copy from src into a no-op.
    spare = [p.detach().clone() for p in params]
    t = timer(
        {
            "copy": lambda: dst.copy_(src),
            "clone": lambda: src.clone(),
            # Like the package's functions, the baselines walk the module on
            # every call, as a method's training step does.
            "p2v": lambda: parameters_to_vector(net.parameters()),
            "v2p": lambda: vector_to_parameters(src, spare),
            "naive get_params": lambda: naive_get(list(net.parameters())),
            "naive get_grads": lambda: naive_get([p.grad for p in net.parameters()]),  # type: ignore[misc]
            "naive set_params": lambda: naive_set(list(net.parameters()), src),
            "naive set_grads": lambda: naive_set([p.grad for p in net.parameters()], src),  # type: ignore[misc]
            "naive get_grads_list": lambda: [p.grad.clone().view(-1) for p in net.parameters()],  # type: ignore[union-attr]
            "get_params()": lambda: backbone.get_params(net),
            "get_params(out=)": lambda: backbone.get_params(net, out=dst),
            "get_grads()": lambda: backbone.get_grads(net),
            "get_grads(out=)": lambda: backbone.get_grads(net, out=dst),
            "set_params": lambda: backbone.set_params(net, src),
            "set_grads": lambda: backbone.set_grads(net, src),
            "get_grads_list": lambda: backbone.get_grads_list(net),
        }
    )
    us = {key: value * 1e6 for key, value in t.items()}
    # (operation, limit, torch utility, naive loop)
    table = [
        ("get_params()", "clone", "p2v", "naive get_params"),
        ("get_params(out=)", "copy", "p2v", "naive get_params"),
        ("get_grads()", "clone", None, "naive get_grads"),
        ("get_grads(out=)", "copy", None, "naive get_grads"),
        ("set_params", "copy", "v2p", "naive set_params"),
        ("set_grads", "copy", None, "naive set_grads"),
        ("get_grads_list", "clone", None, "naive get_grads_list"),
    ]
    return [
        Row(name, op, us[op], limit, us[limit], None if util is None else us[util], us[naive])
        for op, limit, util, naive in table
    ]


def peak_memory_ratio(name: str, device: torch.device) -> float:
    """Bytes allocated while get_grads() runs, over the bytes of the vector it returns."""
    net = MODELS[name]().to(device)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    vector_bytes = sum(p.numel() for p in net.parameters()) * 4
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = backbone.get_grads(net)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        del result
        return extra / vector_bytes
    # On the CPU, count every allocation made during the call: an upper bound of the peak.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        backbone.get_grads(net)
    allocated = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0 and e.cpu_parent is None)
    return allocated / vector_bytes


def forward_ratio(device: torch.device, timer: Timer) -> tuple[float, float]:
    """ResNet-18, batch 32: median time of returnt='full' and of 'out'."""
    torch.manual_seed(0)
    net = resnet18(10).to(device).eval()
    x = torch.randn(32, 3, 32, 32, device=device)
    t = timer({"full": lambda: net(x, returnt="full"), "out": lambda: net(x, returnt="out")})
    return t["full"], t["out"]


def import_ratio(reps: int) -> tuple[float, float]:
    """Whole-process median seconds of `python -c "import backbone"` and `... import torch`."""

    def run(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t0

    run("import torch")  # warm the file cache
    # Alternate, so that drift on a shared machine hits both alike.
    pairs = [(run("import backbone"), run("import torch")) for _ in range(reps)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def kernel_counts(device: torch.device) -> dict[str, int]:
    """CUDA kernels launched by one call of each operation on the many-small model."""
    net = ManySmall().to(device)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    n = sum(p.numel() for p in net.parameters())
    buf, src = torch.empty(n, device=device), torch.randn(n, device=device)
    calls: dict[str, Callable[[], object]] = {
        "get_params(out=)": lambda: backbone.get_params(net, out=buf),
        "get_grads(out=)": lambda: backbone.get_grads(net, out=buf),
        "set_params": lambda: backbone.set_params(net, src),
        "set_grads": lambda: backbone.set_grads(net, src),
        "naive loop (set_params)": lambda: naive_set(list(net.parameters()), src),
    }
    counts = {}
    for label, fn in calls.items():
        with torch.no_grad():
            fn()
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
        counts[label] = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return counts


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def fmt(us: float | None) -> str:
    return "n/a" if us is None else f"{us:,.0f}"


TABLE_HEADER = ["model", "operation", "ours us", "limit", "limit us", "x limit", "torch us", "naive us"]


def table_cells(r: Row) -> list[str]:
    return [r.model, r.op, fmt(r.ours_us), r.limit, fmt(r.limit_us), f"{r.ratio:.2f}", fmt(r.torch_us), fmt(r.naive_us)]


def print_table(rows: list[Row]) -> None:
    cells = [TABLE_HEADER] + [table_cells(r) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(TABLE_HEADER))]
    for k, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if k == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))


def extra_lines(result: dict[str, Any]) -> list[tuple[str, str]]:
    lines = [
        ("get_grads() extra memory / vector bytes (resnet18)", f"{result['get_grads_memory_ratio']:.3f}"),
        ("resnet18 forward, batch 32: 'full' / 'out'", f"{result['forward_full_over_out']:.3f}"),
        ("process import: backbone / torch", f"{result['import_backbone_over_torch']:.3f}"),
    ]
    for label, count in result["cuda_kernels_many_small"].items():
        lines.append((f"CUDA kernels per call, many-small: {label}", str(count)))
    return lines


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in rows))
    ops = list(dict.fromkeys(r.op for r in rows))
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        ratios = [next(r.ratio for r in rows if r.model == model and r.op == op) for op in ops]
        ax.bar([j + i * width for j in range(len(ops))], ratios, width, label=model)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(ops))], ops, rotation=20, ha="right")
    ax.set_ylabel("median time / copy limit (log scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def save(result: dict[str, Any], rows: list[Row], prefix: Path) -> None:
    """Write PREFIX.json, PREFIX.csv (the table), PREFIX-extra.csv, PREFIX-machine.txt and PREFIX.png."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}-machine.txt").write_text(
        f"Measured on {result['machine']}, {result['date']}; medians of {result['reps']} calls.\n"
    )
    Path(f"{prefix}.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(f"{prefix}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TABLE_HEADER)
        writer.writerows(table_cells(r) for r in rows)
    with open(f"{prefix}-extra.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["measure", "value"])
        writer.writerows(extra_lines(result))
    plot(rows, Path(f"{prefix}.png"), f"Flat operations / copy limit: {result['machine']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--reps", type=int, default=40, help="timed repetitions per operation, at least 20 (default 40)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from " + ", ".join(MODELS))
    parser.add_argument("--import-reps", type=int, default=10, help="process starts per import timing (default 10)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument(
        "--save", type=Path, metavar="PREFIX", help="also write PREFIX.json, .csv, -extra.csv, -machine.txt and .png"
    )
    args = parser.parse_args()
    if args.reps < 20:
        parser.error(f"--reps must be at least 20, got {args.reps}")
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch.cuda.is_available() is False")
    timer = Timer(device, args.reps, args.warmup)

    rows = [row for name in args.models.split(",") for row in bench_model(name, timer)]
    full, out = forward_ratio(device, timer)
    imp_backbone, imp_torch = import_ratio(args.import_reps)
    result = {
        "machine": machine(device),
        "date": time.strftime("%Y-%m-%d"),
        "device": str(device),
        "reps": args.reps,
        "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
        "get_grads_memory_ratio": peak_memory_ratio("resnet18", device),
        "forward_full_over_out": full / out,
        "import_backbone_over_torch": imp_backbone / imp_torch,
        "cuda_kernels_many_small": kernel_counts(device) if device.type == "cuda" else {},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"machine: {result['machine']}; medians of {args.reps} calls after {args.warmup} warm-up calls\n")
        print_table(rows)
        print()
        for label, value in extra_lines(result):
            print(f"{label}: {value}")
    if args.save:
        save(result, rows, args.save)


if __name__ == "__main__":
    main()
