"""The models the platform loaded (POST /models), shared by every worker of the server.

A POST or DELETE reaches one worker, but every worker must answer for every model: the
registry is one JSON document in anonymous shared memory created before the workers fork,
with a generation number that each change bumps. Changes take a `multiprocessing.Lock`
(inherited across fork); a reader compares the generation (one 8-byte read) and re-reads the
document only when it moved, so the invocation path pays nothing for it. The lock is held only
for a copy in memory (microseconds). A worker killed inside that window would leave it held:
waiting for it is bounded (`LOCK_TIMEOUT_S`), after which the request fails with 503 rather
than hanging the worker.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from serving.errors import HttpError

# Room for the document: at ~150 bytes per model, tens of thousands of models.
DEFAULT_CAPACITY = 8 * 1024 * 1024
_HEADER = struct.Struct("<QQ")  # generation, document length
LOCK_TIMEOUT_S = 5.0


class RegistryBusy(HttpError):
    """The registry's lock was not free within LOCK_TIMEOUT_S; answered 503."""

    status = 503


class RegistryFull(HttpError):
    """The registry's shared memory cannot hold one more model; answered 507."""

    status = 507


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A loaded model as the platform named it: its name and its directory."""

    name: str
    url: str


class Registry:
    """The shared name -> directory table; safe to use from every worker process."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._memory = mmap.mmap(-1, _HEADER.size + capacity)  # anonymous, shared across fork
        self._capacity = capacity
        self._lock = multiprocessing.get_context("fork").Lock()
        self._write(0, {})
        self._seen = -1
        self._cache: dict[str, str] = {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            raise RegistryBusy(
                f"the model registry stayed locked for {LOCK_TIMEOUT_S:g} s (a worker died "
                "while changing it?); restart serve"
            )
        try:
            yield
        finally:
            self._lock.release()

    @property
    def generation(self) -> int:
        """Bumped by every change; cheap to read."""
        generation: int = _HEADER.unpack_from(self._memory, 0)[0]
        return generation

    def _read(self) -> tuple[int, dict[str, str]]:
        generation, length = _HEADER.unpack_from(self._memory, 0)
        start = _HEADER.size
        document: dict[str, str] = orjson.loads(self._memory[start : start + length])
        return generation, document

    def _write(self, generation: int, document: dict[str, str]) -> None:
        data = orjson.dumps(document)
        if len(data) > self._capacity:
            raise RegistryFull(
                f"the model registry is full ({len(document) - 1} models); unload one first"
            )
        self._memory[_HEADER.size : _HEADER.size + len(data)] = data
        _HEADER.pack_into(self._memory, 0, generation, len(data))

    def snapshot(self) -> dict[str, str]:
        """Every registered model, name -> directory (a cached copy; do not modify)."""
        if self.generation != self._seen:
            with self._locked():
                self._seen, self._cache = self._read()
        return self._cache

    def get(self, name: str) -> ModelEntry | None:
        url = self.snapshot().get(name)
        return None if url is None else ModelEntry(name, url)

    def add(self, entry: ModelEntry) -> bool:
        """Register `entry`; False (nothing changed) when its name is already registered.
        Raises RegistryFull when the document would not fit."""
        with self._locked():
            generation, document = self._read()
            if entry.name in document:
                return False
            document[entry.name] = entry.url
            self._write(generation + 1, document)
            return True

    def remove(self, name: str) -> bool:
        """Unregister `name`; False when it was not registered."""
        with self._locked():
            generation, document = self._read()
            if document.pop(name, None) is None:
                return False
            self._write(generation + 1, document)
            return True
