"""Progress of long loops: bars in a terminal, plain lines in a log file.

A tqdm bar redraws itself with carriage returns; written to a file (``make demo >
demo.log``, a SLURM job's output, CI) that is hundreds of kilobytes of one line. When
stderr is not a terminal, ``progress_bar`` prints one line each time another tenth of the
loop is done, or after a minute without a line, and nothing in between.

``MDD_PROGRESS=bars|lines|off`` overrides the choice.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

LINE_EVERY_FRACTION = 0.1
LINE_EVERY_S = 60.0


def progress_mode(stream: TextIO | None = None) -> str:
    """``bars``, ``lines`` or ``off``: the environment's choice, else by the stream."""
    chosen = os.environ.get("MDD_PROGRESS", "").strip().lower()
    if chosen in ("bars", "lines", "off"):
        return chosen
    stream = stream or sys.stderr
    return "bars" if hasattr(stream, "isatty") and stream.isatty() else "lines"


class LineProgress:
    """The part of tqdm's interface mdd uses, reported as occasional whole lines."""

    def __init__(
        self,
        iterable: Iterable[Any] | None,
        desc: str,
        total: int | None,
        initial: int,
        unit: str,
        stream: TextIO,
        clock=time.monotonic,
    ):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = initial + len(iterable)  # tqdm's total also counts the resumed part
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.n, self.stream, self.clock = initial, stream, clock
        self.postfix = ""
        self._start_n, self._start_s = initial, clock()
        self._last_s = self._start_s
        self._next_fraction = self._fraction_after(initial)

    def _fraction_after(self, n: int) -> float:
        if not self.total:
            return float("inf")
        done = n / self.total
        return (int(done / LINE_EVERY_FRACTION + 1e-9) + 1) * LINE_EVERY_FRACTION

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "LineProgress without an iterable: call update()"
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        reached = self.total and self.n / self.total >= self._next_fraction - 1e-9
        if reached or now - self._last_s >= LINE_EVERY_S:
            self._write(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def _write(self, now: float) -> None:
        self._last_s = now
        self._next_fraction = self._fraction_after(self.n)
        elapsed = now - self._start_s
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        if self.total:
            parts = [f"{self.n}/{self.total} ({100 * self.n / self.total:.0f} %)"]
        else:
            parts = [f"{self.n} {self.unit}"]
        parts.append(f"{rate:.2f} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"{_duration((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        print(f"{self.desc}: {', '.join(parts)}", file=self.stream, flush=True)

    def close(self) -> None:
        """Nothing to clear: every line written stays as it is."""

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Silent(LineProgress):
    def _write(self, now: float) -> None:
        pass


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: int | None = None,
    initial: int = 0,
    unit: str = "it",
    disable: bool = False,
    leave: bool = True,
) -> Any:
    """A tqdm bar in a terminal, a :class:`LineProgress` otherwise (see the module's text)."""
    mode = "off" if disable else progress_mode()
    if mode == "bars":
        return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit, leave=leave)
    kind = _Silent if mode == "off" else LineProgress
    return kind(iterable, desc, total, initial, unit, sys.stderr)
