"""Headless Chromium (Debian's ``chromium`` package) for tests: the DOM after scripts ran, and screenshots."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

# Flags for a quiet, offline, throw-away browser: no sandbox (tests run as root), no GPU,
# no background requests, and a fresh profile per call.
_FLAGS = [
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
_TIMEOUT_S = 180


def require_chromium() -> str:
    """Return the chromium executable, or skip the test when it is absent (fail under CI=true)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    message = "chromium not found; install Debian's package with `apt-get install -y chromium` (make test does this as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _run(arguments: list[str], budget_ms: int | None) -> subprocess.CompletedProcess[str]:
    executable = require_chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [executable, *_FLAGS, f"--user-data-dir={profile}", *arguments]
        if budget_ms is not None:
            # Virtual time waits for pending requests, so scripts that fetch finish before the dump.
            command.insert(-1, f"--virtual-time-budget={budget_ms}")
        result = subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise AssertionError(f"chromium exited with {result.returncode}: {result.stderr[-2000:]}")
    return result


def dump_dom(url: str, budget_ms: int | None = None) -> str:
    """Load ``url`` and return the DOM after the load event, or after ``budget_ms`` of virtual time when given."""
    return _run(["--dump-dom", url], budget_ms).stdout


def screenshot(url: str, path: Path, width: int = 1280, height: int = 2400, budget_ms: int | None = None) -> Path:
    """Save a PNG screenshot of ``url`` to ``path``; also copy it to $ANOMALY_SPARK_SCREENSHOTS when set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--window-size={width},{height}", f"--screenshot={path}", url], budget_ms)
    keep = os.environ.get("ANOMALY_SPARK_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


class _Page(HTMLParser):
    """Collect the text of elements by id, the attributes of <body>, and every element's attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text_by_id: dict[str, str] = {}
        self.body: dict[str, str] = {}
        self.title = ""
        self.tags: list[tuple[str, dict[str, str]]] = []
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.tags.append((tag, attributes))
        if tag == "body":
            self.body = attributes
        if tag in ("img", "meta", "link", "input", "br", "hr", "source"):
            return
        element_id = attributes.get("id")
        if element_id:
            self.text_by_id.setdefault(element_id, "")
        self._open.append((tag, element_id))

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index][0] == tag:
                del self._open[index:]
                break

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1][0] == "title":
            self.title += data
        for _, element_id in self._open:
            if element_id:
                self.text_by_id[element_id] += data


def parse_page(dom: str) -> _Page:
    """Parse a dumped DOM into element texts by id, body attributes, title and tags."""
    page = _Page()
    page.feed(dom)
    page.close()
    return page
