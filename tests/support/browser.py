"""Chromium for the browser tests: Debian's /usr/bin/chromium through Playwright (never `playwright install`, which
downloads browsers from the internet; `.ci/run` installs Chromium with apt), its launch arguments, and numbered
screenshots that are copied to `test-output/browser/<suite>/` (gitignored) for a person to look at.

The browser may reach 127.0.0.1 only. `LOOPBACK_ONLY` does that in Chromium's resolver (every other host name
fails to resolve) rather than by intercepting requests: Playwright's request interception answers HTTP auth
challenges itself, which would hide from the gate what the MLflow UI's sign-out sends after one.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
LOOPBACK_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_MS = 30_000


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (/usr/bin/chromium is missing); .ci/run installs it with "
                    "`apt-get install chromium` (never `playwright install`: it needs the internet)")


class Shots:
    """Numbered screenshots in a tmp directory, copied to test-output/browser/<suite>/ by `publish`."""

    def __init__(self, root: Path, suite: str) -> None:
        self.root, self.suite = root, suite
        self.n = 0
        self.paths: list[Path] = []

    def take(self, page: Any, name: str, full_page: bool = False) -> Path:
        self.n += 1
        path = self.root / f"{self.n:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        self.paths.append(path)
        return path

    def publish(self) -> Path:
        out = REPO / "test-output" / "browser" / self.suite
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.png"):
            old.unlink()
        for p in self.paths:
            shutil.copy2(p, out / p.name)
        return out


def body_text(page: Any) -> str:
    return str(page.inner_text("body"))


def wait_for_text(page: Any, text: str, timeout: float = TIMEOUT_MS) -> None:
    page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=timeout)
