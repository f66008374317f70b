"""The built docs site, opened in headless Chromium.

Marked ``browser``: ``tox -e browser`` runs it with ``BACKBONE_REQUIRE_BROWSER=1``,
where a missing Chromium is an error; elsewhere it runs when Chromium is
installed. Screenshots go to ``$BACKBONE_SCREENSHOTS`` (default: pytest's tmp dir).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.browser,
    # Sphinx's own deprecation notices, raised while building, are not ours to fix.
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning"),
]

DOCS = Path(__file__).resolve().parent.parent / "docs"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("unreachable: conftest skips or fails browser tests when Chromium is missing")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from sphinx.cmd.build import build_main

    out = tmp_path_factory.mktemp("html")
    assert build_main(["-q", "-W", "-n", "-b", "html", str(DOCS), str(out)]) == 0
    handler = functools.partial(QuietHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("BACKBONE_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_chromium(*args: str, profile: Path) -> str:
    result = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def dom_and_screenshot(url: str, shot: Path, tmp_path: Path) -> str:
    run_chromium("--window-size=1280,1400", f"--screenshot={shot}", url, profile=tmp_path / "a")
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    return run_chromium("--dump-dom", url, profile=tmp_path / "b")


def test_landing_page(site: str, shots: Path, tmp_path: Path) -> None:
    dom = dom_and_screenshot(f"{site}/index.html", shots / "landing.png", tmp_path)
    assert "backbone" in dom and "A two-minute example" in dom
    assert 'href="backbones.html"' in dom and 'href="api.html"' in dom


def test_backbones_guide(site: str, shots: Path, tmp_path: Path) -> None:
    dom = dom_and_screenshot(f"{site}/backbones.html", shots / "backbones.png", tmp_path)
    assert "returnt-taps.svg" in dom
    assert "Where each" in dom and "TwF and LiDER" in dom and "feature_dim" in dom


def test_search_finds_get_grads(site: str, shots: Path, tmp_path: Path) -> None:
    dom = dom_and_screenshot(f"{site}/search.html?q=get_grads", shots / "search.png", tmp_path)
    # Sphinx fills the result list from its search index with JavaScript.
    assert 'api.html#backbone.get_grads"' in dom or 'api.html#backbone.MammothBackbone.get_grads"' in dom, dom[-3000:]
