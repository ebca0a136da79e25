"""Audio embeddings by waveform content, so a clip is encoded once however many prompts and alphas ask about it.

The key hashes every byte of the waveform: upstream hashed about a thousand samples, so two clips
that agree there (a shared intro and outro, a clip and its edited copy) got each other's answer.
Embeddings do not depend on alpha (only the LLM is interpolated), so one entry serves every alpha.
The bound is in bytes of stored tensors, not entries, because window counts vary per clip.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict

import numpy as np
import torch


def content_key(waveform: np.ndarray | torch.Tensor, **params: object) -> str:
    """sha256 of the whole waveform plus everything that changes its embeddings (dtype, shape, window params).

    `params` (e.g. window_s=10.0, hop_s=10.0) are part of the key, so the same clip windowed
    differently never shares an entry.
    """
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu().numpy()
    samples = np.ascontiguousarray(waveform)
    digest = hashlib.sha256()
    digest.update(f"{samples.dtype.str}|{samples.shape}|{sorted(params.items())}|".encode())
    digest.update(memoryview(samples).cast("B"))
    return digest.hexdigest()


class WindowKeys:
    """content_key of each window array, computed once per array object, in the caller's thread.

    Hashing a 10 s window (640 KB) takes about half a millisecond; on the engine's thread, for the
    hundreds of windows of a sweep batch, that stalled the GPU and every user waiting on it. Callers
    compute keys as they submit (hashlib releases the GIL), and a sweep that submits one array for all
    of a recording's rows hashes it once: entries are keyed by the array's identity, checked through a
    weak reference so a recycled id never returns another array's key. An array changed in place after
    it was submitted keeps its first key, as it would have inside one batch before.
    """

    def __init__(self, max_entries: int = 8192) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[int, tuple[weakref.ref, str]] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, window: np.ndarray) -> str:
        with self._lock:
            entry = self._entries.get(id(window))
            if entry is not None and entry[0]() is window:
                self._entries.move_to_end(id(window))
                return entry[1]
        key = content_key(window)
        with self._lock:
            self._entries[id(window)] = (weakref.ref(window), key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return key


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class AudioEmbeddingCache:
    """A thread-safe LRU of tensors bounded by their total size in bytes, with hit and miss counters."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        """Membership without touching recency or the counters."""
        with self._lock:
            return key in self._entries

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            tensor = self._entries.get(key)
            if tensor is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return tensor

    def put(self, key: str, tensor: torch.Tensor) -> None:
        """Store, evicting least recently used entries; a tensor larger than the whole cache is not kept."""
        tensor = tensor.detach()
        if tensor.untyped_storage().nbytes() > tensor_nbytes(tensor):
            # A view of a batch would keep the whole batch alive and make the byte bound a lie.
            tensor = tensor.clone()
        size = tensor_nbytes(tensor)
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._nbytes -= tensor_nbytes(previous)
            if size > self.max_bytes:
                return
            while self._nbytes + size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._nbytes -= tensor_nbytes(evicted)
            self._entries[key] = tensor
            self._nbytes += size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0
