"""``python -m backbone``: list the registered backbones, or check one."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

from .base import MammothBackbone
from .check import ContractError, RuleResult, check_backbone
from .registry import get_backbone, list_backbones, registered

__all__ = ["main"]

_DESCRIPTION = (
    "List the registered backbones, or check one against the backbone contract. "
    "--import MODULE imports your own module first, so that its register_backbone calls take effect."
)

_MARKS = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}


def _list() -> int:
    """One row per registered backbone, from its attributes alone: no forward pass runs."""
    rows = [("name", "parameters", "input", "out", "features", "stages (channels@reduction)")]
    for name in list_backbones():
        entry = registered(name)
        try:
            net = get_backbone(name, **entry.example_kwargs)
        except Exception as error:
            rows.append((name, f"cannot be built with its example arguments: {_one_line(error)}", "", "", "", ""))
            continue
        count = f"{sum(p.numel() for p in net.parameters()):,}"
        shape = "x".join(map(str, entry.example_input_shape)) if entry.example_input_shape else "-"
        out = str(_attribute(net, "num_classes"))
        features = str(_attribute(net, "num_features"))
        info = getattr(net, "feature_info", None) or []
        stages = _runs([f"{i.get('num_chs', '?')}@{i.get('reduction', '?')}" for i in info]) or "-"
        rows.append((name, count, shape, out, features, stages))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(
        "\nEach backbone built with its example arguments; shapes leave out the batch dimension. A stage C@r has "
        "C channels and a spatial size r times smaller than the input's (feature_info); xN repeats it."
    )
    return 0


def _runs(cells: list[str]) -> str:
    """Join cells, writing a run of equal ones once with its count: ``192@16 x12``."""
    out: list[str] = []
    for cell in cells:
        if out and out[-1].split(" x")[0] == cell:
            head, _, count = out[-1].partition(" x")
            out[-1] = f"{head} x{int(count or 1) + 1}"
        else:
            out.append(cell)
    return ", ".join(out)


def _attribute(net: torch.nn.Module, name: str) -> object:
    try:
        return getattr(net, name)
    except Exception:
        return "-"


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive ints such as 3,32,32, got {text!r}"
        ) from None
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints such as 3,32,32, got {text!r}")
    return shape


def _kwargs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"num_classes\": 10}}', got {text!r}")
    return value


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _build(target: str, kwargs: dict[str, Any], parser: argparse.ArgumentParser) -> tuple[torch.nn.Module, str]:
    """Build the backbone named by ``target``: MODULE:ATTR, or a registered name.

    Whatever goes wrong on the way (an import that fails, a syntax error in
    the user's module, a constructor that raises) is a usage error: exit 2,
    one line naming the cause.
    """
    if ":" not in target:
        try:
            entry = registered(target)
        except (ValueError, TypeError) as error:
            parser.error(f"{error} (give MODULE:ATTR for your own backbone)")
        try:
            return get_backbone(target, **{**entry.example_kwargs, **kwargs}), entry.name
        except Exception as error:
            parser.error(f"cannot build {entry.name!r} with --kwargs {json.dumps(kwargs)}: {_one_line(error)}")
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        parser.error(f"expected MODULE:ATTR such as mypackage.nets:MyNet, got {target!r}")
    # Let a module in the current directory be found, as `python -m` users expect.
    sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as error:
        parser.error(f"cannot load {target!r}: {_one_line(error)}")
    if isinstance(obj, torch.nn.Module):
        if kwargs:
            parser.error(f"{target!r} is already a module; --kwargs applies to classes and factories")
        return obj, target
    if not callable(obj):
        parser.error(f"{target!r} is a {type(obj).__name__}, not a backbone class, factory or instance")
    try:
        net = obj(**kwargs)
    except Exception as error:
        parser.error(f"cannot build {target!r} with --kwargs {json.dumps(kwargs)}: {_one_line(error)}")
    if not isinstance(net, torch.nn.Module):
        parser.error(f"{target!r} returned a {type(net).__name__}, not a torch.nn.Module")
    return net, target


def _print_results(results: list[RuleResult]) -> None:
    for result in results:
        line = f"{_MARKS[result.status]}  {result.rule}"
        if result.status == "skip":
            line += " (not verified)"
        print(f"{line}: {result.detail}" if result.detail else line)


def _summary(results: list[RuleResult]) -> str:
    counts = {status: sum(r.status == status for r in results) for status in _MARKS}
    if counts["fail"]:
        return f"{counts['fail']} of {len(results)} rules broken"
    if counts["skip"]:
        return f"{counts['pass']} of {len(results)} rules hold; {counts['skip']} not verified (see SKIP)"
    return f"all {len(results)} rules hold"


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    net, label = _build(args.target, args.kwargs, parser)
    shape = args.input_shape
    if shape is None:
        entry = registered(label) if ":" not in args.target else None
        shape = entry.example_input_shape if entry and entry.example_input_shape else (3, 32, 32)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, *shape)
    if not isinstance(net, MammothBackbone):
        print(f"note: {type(net).__name__} does not inherit from backbone.MammothBackbone")
    print(f"Checking {label} on an input of shape {tuple(x.shape)}")
    try:
        results, status = check_backbone(net, x), 0
    except ContractError as error:
        results, status = error.results, 1
    except (TypeError, ValueError) as error:
        parser.error(f"{_one_line(error)} (give the shape of one sample with --input-shape)")
    try:
        _print_results(results)
        print(f"\n{_summary(results)}")
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backbone", description=_DESCRIPTION)
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (repeatable); the current directory is searched",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", help="the registered backbones, with parameter counts and output shapes")
    check = commands.add_parser("check", help="check a backbone against the contract; exit 1 if a rule fails")
    check.set_defaults(parser=check)
    check.add_argument("target", help="MODULE:ATTR (a class, factory or instance) or a registered name")
    check.add_argument(
        "--input-shape",
        type=_int_tuple,
        default=None,
        metavar="C,H,W",
        help="shape of one input sample (default: the registered example, else 3,32,32)",
    )
    check.add_argument(
        "--kwargs",
        type=_kwargs,
        default={},
        metavar="JSON",
        help="keyword arguments for the class or factory, as a JSON object",
    )
    check.add_argument(
        "--batch-size", type=int, default=4, metavar="B", help="batch size of the example input (default 4)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Exit status 0: success (a rule that does not apply is reported as not
    verified, not as holding); 1: the checked backbone broke a rule; 2: a
    usage error, including a target that cannot be imported or built (one
    line names the cause). When the reader of the output goes away (``|
    head``), the command stops quietly with the status it had.

    Args:
        argv: the arguments after ``python -m backbone``; ``sys.argv[1:]`` when None.

    Returns:
        The exit status.

    Example:
        >>> from backbone.cli import main
        >>> main(["check", "mnistmlp"])  # doctest: +ELLIPSIS
        Checking mnistmlp on an input of shape (4, 1, 28, 28)
        PASS  returnt='out' gives logits [B, C], the default
        ...
        all ... rules hold
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    _import_modules(args.imports, parser)
    if args.command != "list" and args.batch_size < 1:
        args.parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        status = _list() if args.command == "list" else _check(args, args.parser)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return 0
    return status


def _import_modules(names: list[str], parser: argparse.ArgumentParser) -> None:
    """Import the user's modules, so that what they register is listed and checked."""
    if names:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:
            parser.error(f"cannot import {name!r}: {_one_line(error)}")


def _silence_stdout() -> None:
    """The reader stopped reading: send what is left, and the final flush, to devnull."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: stdout is not a file (captured in tests)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
