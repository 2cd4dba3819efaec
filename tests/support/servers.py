"""Waiting in tests: for a condition to hold, and for a Dagster webserver a test started."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest


def wait_for(
    condition: Callable[[], object], what: str, timeout: float, every: float = 0.005
) -> None:
    """Poll ``condition`` every ``every`` seconds; fail the test (not hang) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def wait_for_dagster(
    base: str, proc: subprocess.Popen, seconds: float, what: str, output: Callable[[], str]
) -> None:
    """Poll ``base``/server_info until it answers; fail the test if ``proc`` dies or time runs
    out. ``output`` gives the process's output for the failure message."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited: {output()}")
        try:
            with urllib.request.urlopen(f"{base}/server_info", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"{what} did not answer within {seconds:.0f} s")
