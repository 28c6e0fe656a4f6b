"""Headless Chromium with no network: load a page from disk, read its DOM and console, screenshot it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

NO_NETWORK = ("--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
              "--host-resolver-rules=MAP * ~NOTFOUND")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", *NO_NETWORK)


@dataclass(frozen=True)
class Page:
    dom: str
    console: list[str]     # console messages Chromium logged (level, text)
    errors: list[str]      # the ones at error level, and failed network loads


def chromium() -> str:
    """The browser's path; skips the test when it is missing, except under CI (CI=true) where it fails."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed (.ci/run installs Debian's package)")
    pytest.skip("chromium is not installed")


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def load(page: Path, tmp: Path, budget_ms: int = 15000) -> Page:
    """``page`` (file://) after ``budget_ms`` of virtual time: its DOM and its console."""
    tmp.mkdir(parents=True, exist_ok=True)
    proc = _run(["--enable-logging=stderr", "--v=1", f"--virtual-time-budget={budget_ms}",
                 "--dump-dom", page.resolve().as_uri()], tmp / "profile-dom")
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    errors = [line for line in console if ":ERROR:CONSOLE" in line or "Uncaught" in line]
    assert proc.returncode == 0, proc.stderr[-2000:]
    return Page(proc.stdout, console, errors)


def screenshot(page: Path, out: Path, tmp: Path, size: str = "1400,2400", budget_ms: int = 15000) -> Path:
    """A PNG of ``page`` at ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = _run([f"--window-size={size}", f"--virtual-time-budget={budget_ms}", "--hide-scrollbars",
                 f"--screenshot={out}", page.resolve().as_uri()], tmp / "profile-shot")
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-2000:]
    return out


def charts(dom: str) -> list[str]:
    """Every Vega chart's SVG in ``dom``."""
    return re.findall(r"<svg\b[^>]*class=\"marks\"[^>]*>.*?</svg>", dom, flags=re.S)
