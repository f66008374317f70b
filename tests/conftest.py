"""Test configuration: CUDA-marked tests and shared fixtures.

``BACKBONE_REQUIRE_CUDA=1`` (set by ``tox -e py311-cuda``) turns a missing GPU
into an error instead of a skip, so the CUDA env cannot pass without running
its GPU tests.
"""

from __future__ import annotations

import os

import pytest
import torch


def _cuda_required() -> bool:
    return os.environ.get("BACKBONE_REQUIRE_CUDA", "") not in ("", "0")


def pytest_sessionstart(session: pytest.Session) -> None:
    if _cuda_required() and not torch.cuda.is_available():
        raise pytest.UsageError(
            "BACKBONE_REQUIRE_CUDA is set but CUDA is missing: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). "
            "Run this env on a machine with an NVIDIA GPU and a CUDA build of torch."
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: run tox -e py311-cuda on a GPU machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
