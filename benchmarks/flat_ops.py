"""Benchmark the flat parameter and gradient operations against the copy limit, and whole training steps.

Every operation is timed next to, in the same process:

* the copy limit: one ``copy_`` between two flat tensors of the same size
  that the benchmark keeps for itself (so no operation under test warms its
  cache), for the operations that write into existing memory; for those
  that return a fresh tensor, an *allocating* copy (``torch.empty`` then
  ``copy_``), which pays the same page faults as they do. The page-fault
  cost itself is reported separately, as the allocating copy over the copy;
* ``torch.nn.utils.parameters_to_vector`` / ``vector_to_parameters``;
* a naive per-parameter slicing loop, as Mammoth's implementation does.

Then one training step of EWC-online and of A-GEM on three models, each
written three ways (``steps.py``), over the step without the method's flat
work.

By default torch uses one thread and, on the CPU, each call is timed with
the thread's CPU-time clock, so other processes on a shared machine do not
count; ``--threads N`` uses N threads and the wall clock. Ratios are of
medians over repetitions made round-robin, so they compare like with like.
Run ``python benchmarks/flat_ops.py --help`` for options; ``--device cuda``
times with CUDA events.
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
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
from backbone import MNISTMLP, reduced_resnet18, resnet18, resnet50, vit_base_patch16_224, vit_tiny_patch4_32

sys.path.insert(0, str(Path(__file__).resolve().parent))
import steps


class ManySmall(nn.Module):
    """About 1,000 tensors of 1,000 elements: a model bound by per-tensor overhead."""

    def __init__(self, count: int = 1000, size: int = 1000) -> None:
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(size)) for _ in range(count))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: resnet18(10),
    "resnet50": lambda: resnet50(10),
    "vit-tiny": lambda: vit_tiny_patch4_32(10),
    "many-small": ManySmall,
}

STEP_MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: resnet18(10),
    "reduced-resnet18": lambda: reduced_resnet18(10),
    "vit-tiny": lambda: vit_tiny_patch4_32(10),
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

    def __init__(self, device: torch.device, reps: int, warmup: int, cpu_clock: bool = False) -> None:
        self.device, self.reps, self.warmup, self.cpu_clock = device, reps, warmup, cpu_clock
        self.samples: dict[str, list[float]] = {}

    def _once(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        clock = time.thread_time if self.cpu_clock else time.perf_counter
        t0 = clock()
        fn()
        return clock() - t0

    def __call__(self, fns: dict[str, Callable[[], object]], grad: bool = False) -> dict[str, float]:
        """Median seconds of one call of each function (under no_grad unless ``grad``)."""
        with torch.set_grad_enabled(grad):
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
        self.samples = samples
        return {name: statistics.median(times) for name, times in samples.items()}

    def ratio(self, name: str, limit: str) -> float:
        """The median, over the rounds of the last call, of ``name``'s time over ``limit``'s in the same round.

        Pairing calls made moments apart cancels most of a shared machine's
        drift, which a ratio of two medians would keep.
        """
        return statistics.median(a / b for a, b in zip(self.samples[name], self.samples[limit], strict=True))


@dataclass
class Row:
    model: str
    op: str
    ours_us: float
    limit: str
    limit_us: float
    torch_us: float | None
    naive_us: float | None
    ratio: float  # the median of paired ratios (Timer.ratio), not ours_us / limit_us


def bench_model(name: str, timer: Timer) -> tuple[list[Row], float]:
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
            "alloc copy": lambda: torch.empty_like(src).copy_(src),
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
        ("get_params()", "alloc copy", "p2v", "naive get_params"),
        ("get_params(out=)", "copy", "p2v", "naive get_params"),
        ("get_grads()", "alloc copy", None, "naive get_grads"),
        ("get_grads(out=)", "copy", None, "naive get_grads"),
        ("set_params", "copy", "v2p", "naive set_params"),
        ("set_grads", "copy", None, "naive set_grads"),
        ("get_grads_list", "alloc copy", None, "naive get_grads_list"),
    ]
    rows = [
        Row(name, op, us[op], limit, us[limit], None if util is None else us[util], us[naive], timer.ratio(op, limit))
        for op, limit, util, naive in table
    ]
    return rows, timer.ratio("alloc copy", "copy")


@dataclass
class StepRow:
    method: str
    model: str
    floor_ms: float
    package_ms: float
    mammoth_ms: float
    torch_ms: float
    ratios: dict[str, float]  # each way's median paired ratio to the floor

    def ratio(self, way: str) -> float:
        return self.ratios[way]


def bench_steps(model: str, timer: Timer, batch: int) -> list[StepRow]:
    """One training step per method and way, on one model; medians in milliseconds."""
    torch.manual_seed(0)
    setup = steps.make_setup(STEP_MODELS[model](), batch, timer.device)
    fns = {
        f"{method}/{way}": functools.partial(fn, setup)
        for method, ways in steps.STEPS.items()
        for way, fn in ways.items()
    }
    ms = {key: value * 1e3 for key, value in timer(fns, grad=True).items()}
    ways = ("package", "mammoth", "torch")
    return [
        StepRow(
            method,
            model,
            *(ms[f"{method}/{way}"] for way in ("floor", *ways)),
            {way: timer.ratio(f"{method}/{way}", f"{method}/floor") for way in ways},
        )
        for method in steps.STEPS
    ]


def fisher_ratio(timer: Timer) -> float:
    """Mammoth's Fisher accumulation over the package's, on ResNet-18 (the flat work only)."""
    setup = steps.make_setup(resnet18(10), 2, timer.device)
    steps.plain_step(setup)
    timer({"package": lambda: steps.fisher_package(setup), "mammoth": lambda: steps.fisher_mammoth(setup)})
    return timer.ratio("mammoth", "package")


# --- the Fisher diagonal over a batch: the package, Mammoth's loop, the floor and the peers ---------------------


def vit_tiny_lora() -> nn.Module:
    """ViT-Tiny with rank-4 LoRA factors on every qkv, the base frozen: the Fisher of the factors only."""
    net = vit_tiny_patch4_32(10)
    backbone.add_lora(net, 4, sites=["qkv"])
    backbone.freeze_base(net)
    return net


FISHER_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mnistmlp": (lambda: MNISTMLP(784, 10), (784,)),
    "reduced-resnet18": (lambda: reduced_resnet18(10), (3, 32, 32)),
    "resnet18": (lambda: resnet18(10), (3, 32, 32)),
    "vit-tiny": (lambda: vit_tiny_patch4_32(10), (3, 32, 32)),
    "vit-tiny-lora": (vit_tiny_lora, (3, 32, 32)),
}


def fisher_mammoth_loop(net: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Mammoth's models/ewc_on.py end_task (commit 20ff873a): one forward and backward per example."""
    fish = torch.zeros_like(backbone.get_params(net))
    for inputs, labels in batches:
        for ex, lab in zip(inputs, labels, strict=True):
            net.zero_grad()
            output = net(ex.unsqueeze(0))
            loss = -torch.nn.functional.nll_loss(torch.log_softmax(output, dim=1), lab.unsqueeze(0), reduction="none")
            exp_cond_prob = torch.mean(torch.exp(loss.detach().clone()))
            torch.mean(loss).backward()
            fish += exp_cond_prob * backbone.get_grads(net) ** 2
    fish /= sum(len(labels) for _, labels in batches)
    return fish


def fisher_batch_squared(net: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> Tensor:
    """The floor: one forward and backward of the batch, its gradient squared (another quantity, the same work)."""
    fish = torch.zeros_like(backbone.get_params(net))
    for inputs, labels in batches:
        net.zero_grad()
        torch.log_softmax(net(inputs), dim=1).gather(1, labels[:, None]).mean().backward()
        fish += backbone.get_grads(net) ** 2
    return fish


def backpack_way(net: nn.Module) -> Callable[[list[tuple[Tensor, Tensor]]], Tensor] | None:
    """BackPACK's SumGradSquared (unweighted squared per-example gradients), on a copy extended once; None if absent."""
    try:
        from backpack import backpack, extend
        from backpack.extensions import SumGradSquared
    except ImportError:
        return None
    model = extend(copy.deepcopy(net))
    loss_fn = extend(nn.CrossEntropyLoss(reduction="sum"))
    params = [p for p in model.parameters() if p.requires_grad]

    def run(batches: list[tuple[Tensor, Tensor]]) -> Tensor:
        total = torch.zeros(sum(p.numel() for p in params))
        for inputs, labels in batches:
            model.zero_grad()
            with backpack(SumGradSquared()):
                loss_fn(model(inputs), labels).backward()
            total += torch.cat([p.sum_grad_squared.reshape(-1) for p in params])  # type: ignore[attr-defined]
        return total

    return run


def as_sequential(net: nn.Module) -> nn.Module:
    """MNISTMLP as the plain nn.Sequential it computes (its own layers, copied): Opacus's hooks need each layer
    called once under one name, and MNISTMLP registers its layers under two (Mammoth's key layout)."""
    if isinstance(net, MNISTMLP):
        twin = copy.deepcopy(net)
        return nn.Sequential(nn.Flatten(), twin.fc1, nn.ReLU(), twin.fc2, nn.ReLU(), twin.classifier)
    return copy.deepcopy(net)


def opacus_way(net: nn.Module) -> Callable[[list[tuple[Tensor, Tensor]]], Tensor] | None:
    """Opacus's per-sample gradients (GradSampleModule), squared and summed; None if absent."""
    try:
        from opacus import GradSampleModule
    except ImportError:
        return None
    # Opacus records activations in training mode only; the models it runs here have no dropout or batch norm.
    model = GradSampleModule(as_sequential(net).train())
    params = [p for p in model.parameters() if p.requires_grad]

    def run(batches: list[tuple[Tensor, Tensor]]) -> Tensor:
        total = torch.zeros(sum(p.numel() for p in params))
        for inputs, labels in batches:
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs), labels, reduction="sum").backward()
            total += torch.cat([p.grad_sample.square().sum(0).reshape(-1) for p in params])  # type: ignore[attr-defined]
        return total

    return run


def peer(
    make: Callable[[nn.Module], Callable[..., Tensor] | None], net: nn.Module, batches: list[Any]
) -> tuple[Any, str]:
    """The peer's function if it runs this model (tried once, untimed), and why not otherwise."""
    try:
        way = make(net)
        if way is None:
            return None, "not installed"
        way(batches)
    except Exception as error:  # whatever the peer refuses the model with
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
    return way, ""


@dataclass
class FisherRow:
    model: str
    parameters: int
    mammoth_ms: float
    package_ms: float
    batch_ms: float
    backpack_ms: float | None
    opacus_ms: float | None
    mammoth_over_package: float
    package_over_batch: float
    best_peer_over_package: float | None
    notes: str = ""


FISHER_HEADER = [
    "model", "parameters", "Mammoth loop ms", "fisher_diagonal ms", "batch floor ms", "BackPACK ms", "Opacus ms",
    "Mammoth / fisher_diagonal", "fisher_diagonal / floor", "fastest peer / fisher_diagonal",
]  # fmt: skip


def bench_fisher(name: str, timer: Timer, batch: int) -> FisherRow:
    """The Fisher over one batch, five ways, timed in one run on the same machine and torch."""
    torch.manual_seed(0)
    make, shape = FISHER_MODELS[name]
    net = make().to(timer.device).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=generator).to(timer.device)
    y = torch.randint(10, (batch,), generator=generator).to(timer.device)
    batches = [(x, y)]
    select = "trainable" if name.endswith("lora") else None
    fns: dict[str, Callable[[], object]] = {
        "mammoth": lambda: fisher_mammoth_loop(net, batches),
        "package": lambda: backbone.fisher_diagonal(net, batches, select=select),
        "batch": lambda: fisher_batch_squared(net, batches),
    }
    notes = []
    for label, maker in (("backpack", backpack_way), ("opacus", opacus_way)):
        way, why = peer(maker, net, batches)
        if way is None:
            notes.append(f"{label}: {why}")
        else:
            fns[label] = functools.partial(way, batches)
    ms = timer(fns, grad=True)
    peers = [ms[k] for k in ("backpack", "opacus") if k in ms]
    return FisherRow(
        name,
        backbone.get_params(net, select=select).numel(),
        ms["mammoth"] * 1e3,
        ms["package"] * 1e3,
        ms["batch"] * 1e3,
        ms["backpack"] * 1e3 if "backpack" in ms else None,
        ms["opacus"] * 1e3 if "opacus" in ms else None,
        timer.ratio("mammoth", "package"),
        timer.ratio("package", "batch"),
        min(peers) / ms["package"] if peers else None,
        "; ".join(notes),
    )


def fisher_cells(r: FisherRow) -> list[str]:
    def ms(value: float | None) -> str:
        return "—" if value is None else f"{value:,.1f}"

    return [
        r.model,
        f"{r.parameters:,}",
        ms(r.mammoth_ms),
        ms(r.package_ms),
        ms(r.batch_ms),
        ms(r.backpack_ms),
        ms(r.opacus_ms),
        f"{r.mammoth_over_package:.2f}",
        f"{r.package_over_batch:.2f}",
        "—" if r.best_peer_over_package is None else f"{r.best_peer_over_package:.2f}",
    ]


# --- a selection: the trainable part of a ViT-B ------------------------------------


def bench_subset(timer: Timer) -> list[list[str]]:
    """get_grads and set_grads over all of a ViT-B/16 and over its trainable part: BitFit's, then LoRA factors'."""
    rows = []
    for part_name in ("BitFit", "LoRA r=4 on qkv, proj"):
        torch.manual_seed(0)
        net = vit_base_patch16_224(10).to(timer.device)
        if part_name == "BitFit":  # biases, norms and the head train; the rest is frozen
            for name, p in net.named_parameters():
                p.requires_grad_(p.dim() <= 1 or name.startswith("head."))
        else:
            backbone.add_lora(net, 4, sites=("qkv", "proj"))
            backbone.freeze_base(net)
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        total = backbone.get_params(net).numel()
        part = backbone.get_params(net, select="trainable").numel()
        out_all, out_part = torch.empty(total, device=timer.device), torch.empty(part, device=timer.device)
        timer(
            {
                "get all": lambda: backbone.get_grads(net, out=out_all),  # noqa: B023 (timed before the next loop)
                "get trainable": lambda: backbone.get_grads(net, out=out_part, select="trainable"),  # noqa: B023
                "set all": lambda: backbone.set_grads(net, out_all),  # noqa: B023
                "set trainable": lambda: backbone.set_grads(net, out_part, select="trainable"),  # noqa: B023
            }
        )
        for operation, key in (("get_grads(out=)", "get"), ("set_grads", "set")):
            rows.append(
                [
                    operation,
                    part_name,
                    f"{total:,}",
                    f"{part:,}",
                    f"{part / total:.4f}",
                    f"{timer.ratio(f'{key} trainable', f'{key} all'):.4f}",
                ]
            )
    return rows


SUBSET_HEADER = [
    "operation (ViT-B/16)", "trainable part", "all elements", "trainable elements", "fraction", "time, trainable / all",
]  # fmt: skip


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


def forward_ratio(device: torch.device, timer: Timer) -> float:
    """ResNet-18, batch 32: the time of returnt='full' over that of 'out'."""
    torch.manual_seed(0)
    net = resnet18(10).to(device).eval()
    x = torch.randn(32, 3, 32, 32, device=device)
    timer({"full": lambda: net(x, returnt="full"), "out": lambda: net(x, returnt="out")})
    return timer.ratio("full", "out")


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


def per_tensor_floor(timer: Timer) -> dict[str, float]:
    """On the many-small model, torch's own multi-tensor copies from ready-made views, over the flat copy.

    No Python runs per tensor here: what remains is the cost of copying a
    thousand separate tensors, the floor of any implementation that leaves
    the parameters in their own memory.
    """
    net = ManySmall().to(timer.device)
    params = [p.detach() for p in net.parameters()]
    n = sum(p.numel() for p in params)
    src, dst, out = (torch.randn(n, device=timer.device) for _ in range(3))
    pieces = list(out.split([p.numel() for p in params]))
    flat_params = [p.view(-1) for p in params]
    timer(
        {
            "copy": lambda: dst.copy_(src),
            "gather": lambda: torch._foreach_copy_(pieces, params),
            "scatter": lambda: torch._foreach_copy_(params, pieces),
            "cat": lambda: torch.cat(flat_params, out=out),
        }
    )
    return {op: timer.ratio(op, "copy") for op in ("gather", "scatter", "cat")}


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
    threads = torch.get_num_threads()
    return f"{cpu}, {threads} torch thread{'s' * (threads != 1)}, torch {torch.__version__}"


def fmt(us: float | None) -> str:
    return "n/a" if us is None else f"{us:,.0f}"


TABLE_HEADER = ["model", "operation", "ours us", "limit", "limit us", "x limit", "torch us", "naive us"]


def table_cells(r: Row) -> list[str]:
    return [r.model, r.op, fmt(r.ours_us), r.limit, fmt(r.limit_us), f"{r.ratio:.2f}", fmt(r.torch_us), fmt(r.naive_us)]


def extra_lines(result: dict[str, Any]) -> list[tuple[str, str]]:
    lines = [
        (f"allocating copy / copy ({model}): page faults", f"{ratio:.2f}")
        for model, ratio in result["page_fault_ratio"].items()
    ]
    floor = result["per_tensor_floor"]
    multi = "many-small floor: torch's multi-tensor copy {} views of a vector, no Python / copy"
    lines += [
        (multi.format("into"), f"{floor['gather']:.2f}"),
        (multi.format("from"), f"{floor['scatter']:.2f}"),
        ("many-small floor: torch.cat(out=) of flat views, no Python / copy", f"{floor['cat']:.2f}"),
    ]
    lines += [
        (
            "Fisher accumulation (resnet18): Mammoth's fish += get_grads() squared, "
            "over a kept buffer and in-place addcmul",
            f"{result['fisher_mammoth_over_package']:.2f}",
        ),
        ("get_grads() extra memory / vector bytes (resnet18)", f"{result['get_grads_memory_ratio']:.3f}"),
        ("resnet18 forward, batch 32: 'full' / 'out'", f"{result['forward_full_over_out']:.3f}"),
        ("process import: backbone / torch", f"{result['import_backbone_over_torch']:.3f}"),
    ]
    for label, count in result["cuda_kernels_many_small"].items():
        lines.append((f"CUDA kernels per call, many-small: {label}", str(count)))
    return lines


STEP_HEADER = ["method", "model", "floor ms", "package ms", "x floor", "Mammoth ms", "x floor", "torch ms", "x floor"]


def step_cells(r: StepRow) -> list[str]:
    return [
        r.method,
        r.model,
        f"{r.floor_ms:,.1f}",
        f"{r.package_ms:,.1f}",
        f"{r.ratio('package'):.3f}",
        f"{r.mammoth_ms:,.1f}",
        f"{r.ratio('mammoth'):.3f}",
        f"{r.torch_ms:,.1f}",
        f"{r.ratio('torch'):.3f}",
    ]


def print_cells(cells: list[list[str]], left: int) -> None:
    """Print a table whose first ``left`` columns are text, the others numbers."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for k, row in enumerate(cells):
        print(
            "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if k == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))


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


def save(result: dict[str, Any], rows: list[Row], step_rows: list[StepRow], prefix: Path) -> None:
    """Write PREFIX.json, .csv (operations), -steps.csv, -extra.csv, -machine.txt and .png."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}-machine.txt").write_text(headline(result) + "\n")
    with open(f"{prefix}-steps.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(STEP_HEADER)
        writer.writerows(step_cells(r) for r in step_rows)
    Path(f"{prefix}.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(f"{prefix}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TABLE_HEADER)
        writer.writerows(table_cells(r) for r in rows)
    with open(f"{prefix}-extra.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["measure", "value"])
        writer.writerows(extra_lines(result))
    with open(f"{prefix}-fisher.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FISHER_HEADER)
        writer.writerows(fisher_cells(FisherRow(**r)) for r in result["fisher"])
    with open(f"{prefix}-fisher-peers.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "peers that did not run, and what they raised"])
        writer.writerows([r["model"], r["notes"]] for r in result["fisher"] if r["notes"])
    with open(f"{prefix}-subset.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SUBSET_HEADER)
        writer.writerows(result["subset"])
    if rows:  # --models "" measures the other tables only, and there is nothing to plot
        plot(rows, Path(f"{prefix}.png"), f"Flat operations / copy limit: {result['machine']}")


def headline(result: dict[str, Any]) -> str:
    return (
        f"Measured on {result['machine']} with the {result['clock']} clock, {result['date']}; operations: medians "
        f"of {result['reps']} calls after {result['warmup']} warm-up calls; training steps: medians of "
        f"{result['step_reps']} steps at batch {result['batch']} (3x32x32 images)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--reps", type=int, default=40, help="timed repetitions per operation, at least 20 (default 40)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: CPU-time clock)")
    parser.add_argument("--step-reps", type=int, default=10, help="timed training steps per way (default 10)")
    parser.add_argument("--batch", type=int, default=10, help="training-step batch size (default 10)")
    parser.add_argument(
        "--step-models", default=",".join(STEP_MODELS), help="comma-separated, from " + ", ".join(STEP_MODELS)
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from " + ", ".join(MODELS))
    parser.add_argument(
        "--fisher-models", default=",".join(FISHER_MODELS), help="comma-separated, from " + ", ".join(FISHER_MODELS)
    )
    parser.add_argument("--fisher-batch", type=int, default=32, help="examples in the Fisher batch (default 32)")
    parser.add_argument("--fisher-reps", type=int, default=3, help="timed Fisher computations per way (default 3)")
    parser.add_argument("--no-subset", dest="subset", action="store_false", help="skip the ViT-B subset table")
    parser.add_argument("--import-reps", type=int, default=10, help="process starts per import timing (default 10)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument(
        "--save", type=Path, metavar="PREFIX", help="also write PREFIX.json, .csv, -extra.csv, -machine.txt and .png"
    )
    args = parser.parse_args()
    if args.reps < 20:
        parser.error(f"--reps must be at least 20, got {args.reps}")
    if args.threads < 1 or args.step_reps < 3 or args.batch < 1:
        parser.error("--threads, --batch must be at least 1 and --step-reps at least 3")
    for option, given, known in (("--models", args.models, MODELS), ("--step-models", args.step_models, STEP_MODELS)):
        unknown = set(filter(None, given.split(","))) - set(known)
        if unknown:
            parser.error(f"unknown {option} {sorted(unknown)}; choose from {', '.join(known)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    cpu_clock = device.type == "cpu" and args.threads == 1
    timer = Timer(device, args.reps, args.warmup, cpu_clock)

    rows: list[Row] = []
    page_faults = {}
    for name in filter(None, args.models.split(",")):
        model_rows, page_faults[name] = bench_model(name, timer)
        rows += model_rows
    step_timer = Timer(device, args.step_reps, 1, cpu_clock)
    step_rows = [
        row for name in filter(None, args.step_models.split(",")) for row in bench_steps(name, step_timer, args.batch)
    ]
    fisher_timer = Timer(device, args.fisher_reps, 1, cpu_clock)
    fisher_rows = [
        bench_fisher(name, fisher_timer, args.fisher_batch) for name in filter(None, args.fisher_models.split(","))
    ]
    subset_rows = bench_subset(timer) if args.subset else []
    full_over_out = forward_ratio(device, timer)
    imp_backbone, imp_torch = import_ratio(args.import_reps)
    result = {
        "machine": machine(device),
        "date": time.strftime("%Y-%m-%d"),
        "device": str(device),
        "clock": "CUDA-event" if device.type == "cuda" else ("thread CPU-time" if cpu_clock else "wall"),
        "reps": args.reps,
        "warmup": args.warmup,
        "step_reps": args.step_reps,
        "batch": args.batch,
        "rows": [asdict(r) for r in rows],
        "steps": [asdict(r) for r in step_rows],
        "page_fault_ratio": page_faults,
        "per_tensor_floor": per_tensor_floor(timer),
        "fisher_mammoth_over_package": fisher_ratio(timer),
        "get_grads_memory_ratio": peak_memory_ratio("resnet18", device),
        "forward_full_over_out": full_over_out,
        "import_backbone_over_torch": imp_backbone / imp_torch,
        "cuda_kernels_many_small": kernel_counts(device) if device.type == "cuda" else {},
        "fisher_batch": args.fisher_batch,
        "fisher": [asdict(r) for r in fisher_rows],
        "subset": subset_rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(headline(result) + "\n")
        print_cells([TABLE_HEADER] + [table_cells(r) for r in rows], 2)
        print()
        print_cells([STEP_HEADER] + [step_cells(r) for r in step_rows], 2)
        print()
        for label, value in extra_lines(result):
            print(f"{label}: {value}")
        print()
        print_cells([FISHER_HEADER] + [fisher_cells(r) for r in fisher_rows], 1)
        for r in fisher_rows:
            if r.notes:
                print(f"  {r.model}: {r.notes}")
        print()
        print_cells([SUBSET_HEADER, *subset_rows], 1)
    if args.save:
        save(result, rows, step_rows, args.save)


if __name__ == "__main__":
    main()
