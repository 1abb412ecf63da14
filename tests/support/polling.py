"""Waiting for something a server does in the background, without sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    """Polls `condition` every `step` s until it holds (True) or `timeout` s pass (its last value).
    `timeout` is a generous bound for something that takes milliseconds, never a speed claim."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()
