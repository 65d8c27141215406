"""Download and hashing progress, injectable so the CLI decides whether a bar is drawn.

The downloader and the store only call ``Progress`` methods; ``NullProgress`` is the default,
and ``make_progress`` gives a tqdm bar (bytes, speed, ETA) on a terminal and nothing otherwise.
"""

from __future__ import annotations

import sys
from typing import Protocol

__all__ = ["NullProgress", "Progress", "human_bytes", "make_progress"]


def human_bytes(n: int) -> str:
    """``16546404736`` → ``16.5 GB`` (decimal units, as the Hub shows file sizes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


class Progress(Protocol):
    """Receives byte counts; one bar covers all the files of one operation."""

    def start(self, total: int, done: int, description: str) -> None:
        """Begin: ``total`` bytes overall, of which ``done`` are already here (resumed)."""

    def advance(self, n: int) -> None:
        """``n`` more bytes arrived (negative when a server forced a restart from zero)."""

    def note(self, text: str) -> None:
        """Which file is being worked on now."""

    def close(self) -> None:
        """Finish the bar."""


class NullProgress:
    """Draws nothing (``--json``, pipes, tests)."""

    def start(self, total: int, done: int, description: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class TqdmProgress:
    """One tqdm bar on stderr: bytes done of total, speed and ETA."""

    def __init__(self) -> None:
        self._bar = None

    def start(self, total: int, done: int, description: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total,
            initial=done,
            desc=description,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            dynamic_ncols=True,
            file=sys.stderr,
            # Speed and ETA over the bytes fetched now, not the ones resumed from disk.
            smoothing=0.1,
        )

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def make_progress(enabled: bool) -> Progress:
    """A bar when ``enabled`` and stderr is a terminal, else nothing."""
    if enabled and sys.stderr.isatty():
        return TqdmProgress()
    return NullProgress()
