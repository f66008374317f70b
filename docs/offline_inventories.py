"""Intersphinx inventories for the Python and PyTorch names these docs link to, written without network.

Intersphinx normally downloads each project's ``objects.inv``; the docs
build must not touch the network, so ``conf.py`` writes the two inventories
below into a temporary folder and points intersphinx at them. Each entry is
a name as the docs (and the type hints) refer to it, its role, and its page
on the project's site. The build runs in nitpicky mode with warnings as
errors, so a name the docs start to use and this table lacks fails the build
instead of rendering without a link.
"""

from __future__ import annotations

import zlib
from pathlib import Path

PYTHON_URL = "https://docs.python.org/3/"
TORCH_URL = "https://docs.pytorch.org/docs/stable/"

# (name, role, page): "#$" on a page means "#" followed by the name.
PYTHON: list[tuple[str, str, str]] = [
    *[(name, "py:class", "library/functions.html#$") for name in ("int", "float", "bool", "object", "type", "slice")],
    *[(name, "py:class", "library/stdtypes.html#$") for name in ("str", "list", "dict", "tuple", "set", "bytes")],
    *[
        (name, "py:exception", "library/exceptions.html#$")
        for name in ("TypeError", "ValueError", "RuntimeError", "NotImplementedError", "AssertionError", "Exception")
    ],
    ("None", "py:data", "library/constants.html#$"),
    ("Ellipsis", "py:data", "library/constants.html#$"),
    *[
        (f"collections.abc.{name}", "py:class", "library/collections.abc.html#$")
        for name in ("Callable", "Iterable", "Iterator", "Mapping", "Sequence")
    ],
    ("typing.Any", "py:data", "library/typing.html#$"),
    ("typing.Literal", "py:data", "library/typing.html#$"),
    ("os.PathLike", "py:class", "library/os.html#$"),
    ("argparse.Namespace", "py:class", "library/argparse.html#$"),
]

TORCH: list[tuple[str, str, str]] = [
    ("torch.Tensor", "py:class", "tensors.html#$"),
    ("torch.dtype", "py:class", "tensor_attributes.html#$"),
    ("torch.device", "py:class", "tensor_attributes.html#$"),
    ("torch.Generator", "py:class", "generated/torch.Generator.html#$"),
    ("torch._C.Generator", "py:class", "generated/torch.Generator.html#torch.Generator"),
    ("torch.cat", "py:function", "generated/torch.cat.html#$"),
    ("torch.compile", "py:function", "generated/torch.compile.html#$"),
    ("torch.save", "py:function", "generated/torch.save.html#$"),
    ("torch.no_grad", "py:function", "generated/torch.no_grad.html#$"),
    ("torch.inference_mode", "py:function", "generated/torch.autograd.grad_mode.inference_mode.html"),
    ("torch.autocast", "py:function", "amp.html#$"),
    ("torch.func", "py:module", "func.html#module-$"),
    ("torch.nn.functional.cross_entropy", "py:function", "generated/torch.nn.functional.cross_entropy.html#$"),
    ("torch.func.functional_call", "py:function", "generated/torch.func.functional_call.html#$"),
    # Type hints name the class where it is defined; the docs use the short name.
    ("torch.nn.Module", "py:class", "generated/torch.nn.Module.html#$"),
    ("torch.nn.modules.module.Module", "py:class", "generated/torch.nn.Module.html#torch.nn.Module"),
    ("torch.nn.Module.to", "py:method", "generated/torch.nn.Module.html#$"),
    ("torch.nn.parameter.Parameter", "py:class", "generated/torch.nn.parameter.Parameter.html#$"),
    ("torch.nn.Linear", "py:class", "generated/torch.nn.Linear.html#$"),
    ("torch.nn.modules.linear.Linear", "py:class", "generated/torch.nn.Linear.html#torch.nn.Linear"),
    ("torch.nn.LazyLinear", "py:class", "generated/torch.nn.LazyLinear.html#$"),
    ("torch.nn.init.xavier_uniform_", "py:function", "nn.init.html#$"),
    ("torch.nn.utils.weight_norm", "py:function", "generated/torch.nn.utils.weight_norm.html#$"),
    (
        "torch.nn.utils.parametrizations.weight_norm",
        "py:function",
        "generated/torch.nn.utils.parametrizations.weight_norm.html#$",
    ),
    (
        "torch.nn.utils.parametrize",
        "py:module",
        "generated/torch.nn.utils.parametrize.register_parametrization.html",
    ),
    ("torch.optim.Optimizer", "py:class", "optim.html#$"),
    ("torch.optim.optimizer.Optimizer", "py:class", "optim.html#torch.optim.Optimizer"),
]


def write_inventory(path: Path, project: str, version: str, entries: list[tuple[str, str, str]]) -> Path:
    """Write ``entries`` as a Sphinx inventory (format 2) at ``path``; ``tests/test_docs.py`` reads one back."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = "".join(f"{name} {role} 1 {page} -\n" for name, role, page in entries)
    path.write_bytes(header.encode() + zlib.compress(body.encode()))
    return path


def intersphinx_mapping(folder: Path) -> dict[str, tuple[str, str]]:
    """Write both inventories into ``folder`` and return the ``intersphinx_mapping`` that reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "python": (PYTHON_URL, str(write_inventory(folder / "python.inv", "Python", "3", PYTHON))),
        "torch": (TORCH_URL, str(write_inventory(folder / "torch.inv", "PyTorch", "stable", TORCH))),
    }
