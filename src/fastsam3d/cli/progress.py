"""What a command shows while it works and what ``--timing`` reports: a status line on stderr for any
stage (:mod:`fastsam3d.stages`) that lasts over two seconds, and the wall time of each outermost stage
from the process's start."""

from __future__ import annotations

import os
import sys
import threading
import time

SHOW_AFTER_S = 2.0  # a stage shorter than this shows nothing
MODEL_STAGE = "loading model"  # the stage of loading a model (name prefix)


def _age_at_import() -> float:
    """Seconds from this process's start to now (Linux /proc, 10 ms steps), else 0."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = float(stat.read().rsplit(")", 1)[1].split()[19])
            return max(0.0, float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


_PROCESS_START = time.monotonic() - _age_at_import()


def process_age() -> float:
    """Seconds since this process started (since the CLI was imported where /proc is missing)."""
    return time.monotonic() - _PROCESS_START


class StatusLine:
    """Listener: after ``SHOW_AFTER_S`` of a stage, ``NAME… 12 s`` on stderr, rewritten each second on a
    terminal and erased at the stage's end; elsewhere (a log file) one ``fastsam3d: NAME…`` line."""

    def __init__(self, stream=None, show_after: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.show_after = SHOW_AFTER_S if show_after is None else show_after
        self.current: tuple[str, float] | None = None
        self.shown = self.closed = False
        self.lock = threading.Lock()
        self.wake = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def __call__(self, name: str, depth: int, seconds: float | None) -> None:
        with self.lock:
            if seconds is None:
                self._clear()
                self.current = (name, time.monotonic())
            elif self.current is not None and self.current[0] == name:
                self._clear()
                self.current = None
        self.wake.set()

    def close(self) -> None:
        """Erase the line and end the thread."""
        with self.lock:
            self._clear()
            self.closed = True
        self.wake.set()

    def _loop(self) -> None:
        while not self.closed:
            self.wake.wait(0.5)
            self.wake.clear()
            with self.lock:
                if self.current is None or self.closed:
                    continue
                name, started = self.current
                elapsed = time.monotonic() - started
                if elapsed < self.show_after:
                    continue
                if self.stream.isatty():
                    self.stream.write(f"\r\033[K{name}… {elapsed:.0f} s")
                elif not self.shown:
                    self.stream.write(f"fastsam3d: {name}…\n")
                self.stream.flush()
                self.shown = True

    def _clear(self) -> None:
        if self.shown and self.stream.isatty():
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.shown = False


class StageTimes:
    """Listener: the wall time of each outermost stage, as ``--timing`` reports them."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, float, float]] = []  # name, start and end as process ages

    def __call__(self, name: str, depth: int, seconds: float | None) -> None:
        if depth == 0 and seconds is not None:
            end = process_age()
            self.stages.append((name, end - seconds, end))

    def report(self) -> list[str]:
        """Start-up (interpreter, imports), each stage in the order it ran (reading, loading the
        model, each prompt, writing), the rest, and the total."""
        total = process_age()
        startup = min((start for _, start, _ in self.stages), default=total)
        later = [(name, end - start) for name, start, end in self.stages]
        counts: dict[str, int] = {}
        lines = [f"  start-up (interpreter, imports): {startup:.2f} s"]
        for name, seconds in later:
            counts[name] = counts.get(name, 0) + 1
            repeated = sum(other == name for other, _ in later) > 1
            lines.append(f"  {name}{f' #{counts[name]}' if repeated else ''}: {seconds:.2f} s")
        lines.append(f"  other: {total - startup - sum(s for _, s in later):.2f} s")
        lines.append(f"  total (wall time since the process started): {total:.2f} s")
        return lines
