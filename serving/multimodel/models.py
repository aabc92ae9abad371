"""One worker's loaded models: loading on demand off the event loop, LRU eviction.

Every worker serves every registered model (`registry`) and loads each one the first time it
is asked for it, once per worker process: `model_fn` runs in a loader thread while the
worker's event loop keeps answering invocations of the models it already holds, so a load
never blocks other models (requests for the model being loaded wait for that load, and share
it). Each model directory may bring its own `code/inference.py` (with `requirements.txt`),
imported under a module name of its own; otherwise the default hooks serve it.

Room is made before a load: least recently used models are evicted while the count cap
(`SERVE_MME_MAX_MODELS`) would be exceeded, and while the host's available memory
(`MemAvailable`) is below the headroom (`SERVE_MME_MIN_FREE_MEMORY_MB`). When every other model
is gone and the headroom is still not there, the load fails with 507 (InsufficientStorage),
which tells SageMaker to unload models and retry. An evicted model stays registered: its next
invocation loads it again. A model unregistered through another worker is dropped here at
this worker's next request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import hashlib
import importlib.util
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from serving import usercode
from serving.batching import Batcher, Waiting
from serving.config import ServeConfig
from serving.errors import HttpError, InternalError, ModelLoadError, NotFound
from serving.multimodel.policy import LruOrder
from serving.multimodel.registry import ModelEntry, Registry
from serving.runtime import Runtime

log = logging.getLogger("serving")


LOADER_THREADS = 4


class InsufficientStorage(HttpError):
    """No room for one more model even after evicting every other one; answered 507."""

    status = 507


def available_memory() -> int:
    """The host's MemAvailable in bytes (what can be allocated without swapping)."""
    with Path("/proc/meminfo").open("rb") as meminfo:
        for line in meminfo:
            if line.startswith(b"MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


@dataclass(frozen=True, slots=True)
class Loaded:
    """A model loaded in this worker: what it was loaded from, its hooks and model."""

    entry: ModelEntry
    runtime: Runtime
    batcher: Batcher | None


def _import(path: Path, url: str) -> ModuleType:
    """Import a model's inference module under a name unique to its directory, so that the
    `inference.py` of one model never stands in for another's."""
    digest = hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()[:12]
    name = f"serve_model_{digest}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        raise ModelLoadError(f"importing {path} raised {type(exc).__name__}: {exc}") from exc
    return module


class ModelSet:
    """The models this worker holds; used only from the worker's event loop thread."""

    def __init__(
        self,
        config: ServeConfig,
        registry: Registry,
        free_memory: Callable[[], int] = available_memory,
        waiting: Waiting | None = None,
    ) -> None:
        self.config = config
        # Every model's batcher shares it (serving.batching.Waiting).
        self._waiting = waiting or Waiting()
        self.registry = registry
        self._free_memory = free_memory
        self._loaded: dict[str, Loaded] = {}
        self._loading: dict[str, asyncio.Future[Loaded]] = {}
        self._order = LruOrder(config.mme_max_models)
        self._seen = -1
        # Loads run beside the event loop; several at once, so that one slow model_fn does not
        # hold up the load of another model either.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            LOADER_THREADS, thread_name_prefix="model-load"
        )

    def sync(self) -> None:
        """Drop the models another worker unregistered (or re-registered elsewhere)."""
        generation = self.registry.generation
        if generation == self._seen:
            return
        self._seen = generation
        registered = self.registry.snapshot()
        for name in list(self._loaded):
            if registered.get(name) != self._loaded[name].entry.url:
                self.drop(name, "unloaded")

    def drop(self, name: str, why: str) -> None:
        """Forget this worker's copy of `name` (no error if there is none)."""
        if self._loaded.pop(name, None) is not None:
            self._order.remove(name)
            gc.collect()  # give the model's memory back now, not at some later collection
            log.info("model %s %s in this worker", name, why)

    def loaded_names(self) -> list[str]:
        """The models held by this worker, least recently used first."""
        return self._order.names()

    async def get(self, name: str) -> Loaded:
        """The loaded model `name`, loading it here first if needed.

        Raises NotFound when it is not registered, InsufficientStorage (507) when there is no
        room, InternalError (500) when it cannot be loaded.
        """
        self.sync()
        loaded = self._loaded.get(name)
        if loaded is not None:
            self._order.touch(name)
            return loaded
        entry = self.registry.get(name)
        if entry is None:
            raise NotFound(f"model {name!r} is not loaded; load it with POST /models")
        return await self.load(entry)

    async def load(self, entry: ModelEntry) -> Loaded:
        """Load `entry` in this worker (sharing a load already under way)."""
        pending = self._loading.get(entry.name)
        if pending is None:
            pending = asyncio.ensure_future(self._load(entry))
            self._loading[entry.name] = pending
            pending.add_done_callback(lambda _: self._loading.pop(entry.name, None))
        return await asyncio.shield(pending)

    async def _load(self, entry: ModelEntry) -> Loaded:
        self._make_room(entry.name)
        loop = asyncio.get_running_loop()
        runtime = await loop.run_in_executor(self._pool, self._load_blocking, entry)
        batcher = None
        if self.config.batch_size > 1:
            batcher = Batcher(
                runtime, self.config.batch_size, self.config.max_batch_delay_s, self._waiting
            )
        loaded = Loaded(entry, runtime, batcher)
        self._loaded[entry.name] = loaded
        self._order.touch(entry.name)
        if self._free_memory() < self.config.mme_min_free_bytes:
            # The model itself took the headroom: make room around it, else give it back.
            self._make_room(entry.name)
            if self._free_memory() < self.config.mme_min_free_bytes:
                self.drop(entry.name, "unloaded (no memory headroom left)")
                raise self._no_room(entry.name)
        log.info("model %s loaded from %s", entry.name, entry.url)
        return loaded

    def _no_room(self, name: str) -> InsufficientStorage:
        free_mb = self._free_memory() // (1024 * 1024)
        need_mb = self.config.mme_min_free_bytes // (1024 * 1024)
        return InsufficientStorage(
            f"no room for model {name!r}: {free_mb} MiB available, SERVE_MME_MIN_FREE_MEMORY_MB"
            f"={need_mb} with no other model left to evict"
        )

    def _make_room(self, name: str) -> None:
        for victim in self._order.over_cap(name):
            self.drop(victim, "evicted (least recently used, SERVE_MME_MAX_MODELS)")
        while self._free_memory() < self.config.mme_min_free_bytes:
            oldest = self._order.victim(keep=name)
            if oldest is None:
                if name not in self._loaded:
                    raise self._no_room(name)
                return
            self.drop(oldest, "evicted (least recently used, memory headroom)")

    def _load_blocking(self, entry: ModelEntry) -> Runtime:
        """In the loader thread: the model's hooks and model_fn. Raises InternalError."""
        model_dir = Path(entry.url)
        try:
            program = model_dir / "code" / self.config.program
            handler = usercode.DEFAULT_HANDLER
            if program.is_file():
                requirements = program.parent / "requirements.txt"
                if requirements.is_file():
                    usercode.install_requirements(requirements)
                handler = usercode.from_module(_import(program, entry.url))
            runtime = Runtime(self.config, handler, model_dir)
            runtime.load_model()
            runtime.warm_up()
        except ModelLoadError as exc:
            log.error("cannot load model %s: %s", entry.name, exc)
            raise InternalError(f"cannot load model {entry.name!r}: {exc}") from exc
        return runtime
