"""One image-feature budget for many sessions (the server's ``--cache-mb``).

Each engine keeps its embeddings in a mapping (ROI key or slice index -> tensor). Given a
:meth:`FeatureCache.view` instead of its own ``OrderedDict``, an engine's embeddings join one LRU
over every session: storing a new embedding evicts the least recently used ones of any session until
the total fits the budget, so the features of idle sessions go first. The newest embedding is always
kept. A view answers the ``OrderedDict`` calls the engines make, under one lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import torch


class FeatureCache:
    """Embeddings of all sessions, least recently used first, at most ``max_mb`` megabytes."""

    def __init__(self, max_mb: float) -> None:
        self.max_bytes = int(max_mb * 2**20)
        self._entries: OrderedDict[tuple[int, Hashable], torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._views = 0

    def view(self) -> CacheView:
        """A mapping for one session's embeddings."""
        with self._lock:
            self._views += 1
            return CacheView(self, self._views)

    def total_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def _put(self, owner: int, key: Hashable, value: torch.Tensor) -> None:
        with self._lock:
            self._pop((owner, key))
            self._entries[owner, key] = value
            self._bytes += nbytes(value)
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                self._pop(next(iter(self._entries)))

    def _pop(self, full_key: tuple[int, Hashable]) -> torch.Tensor | None:
        value = self._entries.pop(full_key, None)
        if value is not None:
            self._bytes -= nbytes(value)
        return value


class CacheView:
    """One session's part of a :class:`FeatureCache`, used like an ``OrderedDict``."""

    def __init__(self, cache: FeatureCache, owner: int) -> None:
        self._cache = cache
        self._owner = owner

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` is cached (and then it becomes the most recently used)."""
        with self._cache._lock:
            found = (self._owner, key) in self._cache._entries
            if found:
                self._cache._entries.move_to_end((self._owner, key))
            return found

    def __getitem__(self, key: Hashable) -> torch.Tensor:
        with self._cache._lock:
            return self._cache._entries[self._owner, key]

    def __setitem__(self, key: Hashable, value: torch.Tensor) -> None:
        self._cache._put(self._owner, key, value)

    def __len__(self) -> int:
        return len(self._keys())

    def move_to_end(self, key: Hashable) -> None:
        with self._cache._lock:
            if (self._owner, key) in self._cache._entries:
                self._cache._entries.move_to_end((self._owner, key))

    def values(self) -> list[torch.Tensor]:
        with self._cache._lock:
            return [value for (owner, _), value in self._cache._entries.items() if owner == self._owner]

    def popitem(self, last: bool = True) -> tuple[Hashable, torch.Tensor]:
        with self._cache._lock:
            keys = [key for owner, key in self._cache._entries if owner == self._owner]
            if not keys:
                raise KeyError("popitem(): the session has no cached features")
            key = keys[-1] if last else keys[0]
            return key, self._cache._pop((self._owner, key))

    def clear(self) -> None:
        """Drop this session's embeddings (a new image, or the session closed)."""
        with self._cache._lock:
            for key in [key for key in self._cache._entries if key[0] == self._owner]:
                self._cache._pop(key)

    def _keys(self) -> list[Hashable]:
        with self._cache._lock:
            return [key for owner, key in self._cache._entries if owner == self._owner]


def nbytes(value) -> int:
    """Bytes of a tensor or of the tensors in a (nested) tuple or list. The similarity maps a ROI's
    features keep for the next clicks (a dict inside :class:`~fastsam3d.modeling.click_unet.ClickUNetFeatures`)
    count as the most they may hold (``memo_bytes_at_most``, 4 MB for 64³), from the start: a stored
    value's size must not change while it is stored, and the budget still bounds what it grows to."""
    if value is None or isinstance(value, dict):
        return 0
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    bound = getattr(value, "memo_bytes_at_most", None)
    return (bound() if bound is not None else 0) + sum(nbytes(part) for part in value)
