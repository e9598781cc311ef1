"""Named stages of long calls (reading a volume, loading a model, a prompt, writing), for progress
displays and timing. Without listeners a stage costs one list check.

    remove = add_listener(lambda name, depth, seconds: ...)  # seconds: None at the start, then the duration
    with stage("reading ct.nii.gz"):
        ...
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[str, int, "float | None"], None]
_listeners: list[Listener] = []
_depth = threading.local()


def add_listener(listener: Listener) -> Callable[[], None]:
    """Call ``listener(name, depth, seconds)`` at each stage's start (``seconds`` None) and end;
    ``depth`` is 0 for an outermost stage. Returns the function that removes it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Tell the listeners that ``name`` runs for the duration of the block."""
    if not _listeners:
        yield
        return
    depth = getattr(_depth, "value", 0)
    _depth.value = depth + 1
    for listener in list(_listeners):
        listener(name, depth, None)
    started = time.perf_counter()
    try:
        yield
    finally:
        _depth.value = depth
        for listener in list(_listeners):
            listener(name, depth, time.perf_counter() - started)


def staged(describe: Callable[..., str]):
    """Decorator: run the function as a stage named ``describe(*args, **kwargs)``."""

    def wrap(function):
        @functools.wraps(function)
        def run(*args, **kwargs):
            if not _listeners:
                return function(*args, **kwargs)
            with stage(describe(*args, **kwargs)):
                return function(*args, **kwargs)

        return run

    return wrap
