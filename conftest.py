"""Test configuration for the CUDA- and browser-marked tests.

``BACKBONE_REQUIRE_CUDA=1`` (set by ``tox -e py311-cuda``) turns a missing GPU
into an error instead of a skip, so the CUDA env cannot pass without running
its GPU tests; ``BACKBONE_REQUIRE_BROWSER=1`` (set by ``tox -e browser``) does
the same for Chromium.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, settings

# Named hypothesis profiles: HYPOTHESIS_PROFILE=dev explores more examples;
# ci (the default) is derandomised, so a CI run is reproducible.
settings.register_profile(
    "ci", max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _required(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _has_timm() -> bool:
    try:
        import timm  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


def _has_chromium() -> bool:
    return any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome"))


def pytest_sessionstart(session: pytest.Session) -> None:
    if _required("BACKBONE_REQUIRE_CUDA") and not torch.cuda.is_available():
        raise pytest.UsageError(
            "BACKBONE_REQUIRE_CUDA is set but CUDA is missing: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). "
            "Run this env on a machine with an NVIDIA GPU and a CUDA build of torch."
        )

    if _required("BACKBONE_REQUIRE_TIMM") and not _has_timm():
        raise pytest.UsageError(
            "BACKBONE_REQUIRE_TIMM is set but timm or torchvision does not import: "
            'pip install "backbone[timm]" (tox -e adapters installs the tested versions).'
        )

    if _required("BACKBONE_REQUIRE_BROWSER") and not _has_chromium():
        raise pytest.UsageError(
            "BACKBONE_REQUIRE_BROWSER is set but Chromium is missing: install Debian's chromium package "
            "(apt-get install chromium) or put chromium on PATH."
        )


@pytest.hookimpl(tryfirst=True)  # mark before -m deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = {}
    if not torch.cuda.is_available():
        skips["cuda"] = pytest.mark.skip(reason="needs CUDA: run tox -e py311-cuda on a GPU machine")
    if not _has_timm():
        skips["timm"] = pytest.mark.skip(reason="needs timm and torchvision: run tox -e adapters")
    if not _has_chromium():
        skips["browser"] = pytest.mark.skip(reason="needs Chromium: run tox -e browser after installing it")
    for item in items:
        # The adapters' docstring examples build timm and torchvision models.
        if item.path.name == "adapters.py" and item.path.parent.name == "backbone":
            item.add_marker(pytest.mark.timm)
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)
