"""The docs and README stay consistent with what tox and CI run."""

from __future__ import annotations

import configparser
import csv
import re
import sys
from pathlib import Path

import backbone

ROOT = Path(__file__).resolve().parent.parent


def tox() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "tox.ini")
    return parser


def test_every_page_with_examples_is_doctested_by_tox() -> None:
    command = tox()["testenv:doctest"]["commands"]
    with_examples = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.rst") if ">>> " in p.read_text()}
    listed = set(re.findall(r"docs/\w+\.rst", command))
    assert with_examples <= listed, f"not doctested: {sorted(with_examples - listed)}"
    assert "README.md" in command


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("## ", 1)[0]
    commands = re.findall(r"```sh\n(.+?)\n```", quick_start)
    assert len(commands) == 2
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_default_envlist_leaves_out_cuda() -> None:
    envs = [e.strip() for e in tox()["tox"]["env_list"].split(",")]
    assert "py311" in envs and "py311-cuda" not in envs


def test_every_public_name_is_in_the_api_reference() -> None:
    api = (ROOT / "docs" / "api.rst").read_text()
    missing = [name for name in backbone.__all__ if f"backbone.{name}\n" not in api]
    assert not missing


def _figures(text: str) -> set[str]:
    """The measured figures quoted in a text: ratios with two or three decimals (1.09, 0.910), grouped integers (4,553).

    Single-decimal numbers are left out: they are doctest outputs and stated targets (1.1), not measurements.
    """
    return set(re.findall(r"(?<![\w.])\d+\.\d{2,}(?![\w.])|(?<![\w,])\d{1,3}(?:,\d{3})+(?![\w,])", text))


def test_performance_figures_come_from_the_committed_benchmark_run() -> None:
    """Every figure the Performance page, the flat-vectors page and the README quote is a cell of the run's tables."""
    cells = {
        cell.strip()
        for path in (ROOT / "docs" / "_static").glob("perf-cpu*.csv")
        for row in csv.reader(path.read_text().splitlines())
        for cell in row
    }
    page = (ROOT / "docs" / "performance.rst").read_text() + (ROOT / "docs" / "flat.rst").read_text()
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Performance") : readme.index("## Development")]
    # The targets and the model sizes are stated, not measured.
    quoted = (_figures(page) | _figures(section)) - {"1.10", "1.1", "4,096", "1,000"}
    assert quoted, "no figures found: the check would pass vacuously"
    assert quoted <= cells, f"figures quoted but not in docs/_static/perf-cpu*.csv: {sorted(quoted - cells)}"


def test_py311_runs_every_cpu_check() -> None:
    """The default run installs one CPU torch: py311 runs what doctest, docs and lint run alone."""
    config = tox()
    commands = config["testenv:py311"]["commands"]
    for part in ("doctest", "docs", "lint"):
        assert f"{{[testenv:{part}]commands}}" in commands
    envs = [e.strip() for e in config["tox"]["env_list"].split(",")]
    assert not {"doctest", "docs", "lint"} & set(envs)


def test_offline_inventories_link_torch_and_python_names(tmp_path: Path) -> None:
    """The docs link torch.Tensor and friends from inventories written locally, never downloaded."""
    from sphinx.util.inventory import InventoryFile

    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import offline_inventories
    finally:
        sys.path.pop(0)
    mapping = offline_inventories.intersphinx_mapping(tmp_path)
    expected = {
        "torch": ("py:class", "torch.Tensor", "https://docs.pytorch.org/docs/stable/tensors.html#torch.Tensor"),
        "python": ("py:exception", "TypeError", "https://docs.python.org/3/library/exceptions.html#TypeError"),
    }
    for project, (url, location) in mapping.items():
        assert Path(location).parent == tmp_path  # a local file: intersphinx reads it, fetches nothing
        with open(location, "rb") as f:
            inventory = InventoryFile.load(f, url, lambda base, page: base + page)
        role, name, link = expected[project]
        item = inventory[role][name]
        uri = item.uri if hasattr(item, "uri") else item[2]  # Sphinx 9 has .uri; older ones a tuple
        assert uri == link
