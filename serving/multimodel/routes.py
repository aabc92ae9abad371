"""The multi-model HTTP contract, as sagemaker-inference and Multi Model Server implement it.

- `POST /models` with `{"model_name", "url"}` (or the same as query parameters): 200 loaded,
  400 malformed, 404 no such directory, 409 already loaded, 500 `model_fn` failed, 507 no room.
- `GET /models?limit=&next_page_token=`: 200 `{"models": [{"modelName", "modelUrl"}],
  "nextPageToken"}`, the token only while more remain.
- `GET /models/{name}`: 200 `{"modelName", "modelUrl"}`, or 404.
- `DELETE /models/{name}`: 200, or 404.
- `POST /models/{name}/invoke`: the model's answer; 404 not loaded; 507 no room to load it in
  this worker.
- `POST /invocations` with `X-Amzn-SageMaker-Target-Model`: the same for the named model; 400
  without the header.

The target-model header is logged (debug level: every request) and names the model for
`/invocations`. A POST loads the model in the worker that took it, and registers it only once
it loaded, so an unloadable model is never listed; the other workers load it on their first
invocation of it (`models`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs

import orjson

from serving import codecs
from serving.batching import Waiting
from serving.config import ServeConfig
from serving.errors import BadRequest, HttpError, MethodNotAllowed, NotFound
from serving.multimodel.models import ModelSet
from serving.multimodel.registry import ModelEntry, Registry
from serving.runtime import Reply

log = logging.getLogger("serving")

TARGET_HEADER = b"x-amzn-sagemaker-target-model"
DEFAULT_PAGE = 100
MAX_PAGE = 1000

ReadBody = Callable[[], Awaitable[bytes]]
# Runs one request on a loaded model (single or batched, records split): the app's dispatch.
Dispatch = Callable[..., Awaitable[Reply]]


class Conflict(HttpError):
    """The model is already loaded (POST /models of a registered name); answered 409."""

    status = 409


def _json(status: int, value: object) -> Reply:
    return Reply(status, codecs.JSON, orjson.dumps(value))


def _describe(entry: ModelEntry) -> dict[str, str]:
    return {"modelName": entry.name, "modelUrl": entry.url}


class MultiModelRoutes:
    """The routes above; built in the master, used by each worker after fork."""

    def __init__(
        self, config: ServeConfig, waiting: Waiting | None = None, registry: Registry | None = None
    ) -> None:
        self.registry = registry or Registry()
        self.models = ModelSet(config, self.registry, waiting=waiting)

    async def invoke(
        self,
        name: str,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        dispatch: Dispatch,
    ) -> Reply:
        """Answer one invocation of model `name`; raises NotFound / InsufficientStorage."""
        loaded = await self.models.get(name)
        return await dispatch(loaded.runtime, loaded.batcher, body, content_type, accept)

    async def handle(
        self, method: str, path: str, query: bytes, read_body: ReadBody
    ) -> Reply | None:
        """The reply for a /models route, or None when `path` is not one. Raises HttpError."""
        if path in ("/models", "/models/"):
            if method == "GET":
                return self._list(query)
            if method == "POST":
                return await self._load(query, await read_body())
            raise MethodNotAllowed("/models takes GET or POST")
        if not path.startswith("/models/"):
            return None
        name = path[len("/models/") :]
        if name.endswith("/invoke"):
            return None  # an invocation: the app reads its headers and calls `invoke`
        self.models.sync()
        if method == "GET":
            entry = self.registry.get(name)
            if entry is None:
                raise NotFound(f"model {name!r} is not loaded")
            return _json(200, _describe(entry))
        if method == "DELETE":
            if not self.registry.remove(name):
                raise NotFound(f"model {name!r} is not loaded")
            self.models.drop(name, "unloaded")
            return _json(200, {"status": f"model {name!r} unloaded"})
        raise MethodNotAllowed(f"/models/{{name}} takes GET or DELETE, not {method}")

    def _list(self, query: bytes) -> Reply:
        params = parse_qs(query.decode("latin-1"))
        limit = _int_param(params, "limit", DEFAULT_PAGE)
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit={limit}: expected 1 to {MAX_PAGE}")
        start = _int_param(params, "next_page_token", 0)
        if start < 0:
            raise BadRequest(f"next_page_token={start}: not a token this server gave")
        entries = sorted(self.registry.snapshot().items())
        page = entries[start : start + limit]
        answer: dict[str, object] = {
            "models": [_describe(ModelEntry(name, url)) for name, url in page]
        }
        if start + limit < len(entries):
            answer["nextPageToken"] = str(start + limit)
        return _json(200, answer)

    async def _load(self, query: bytes, body: bytes) -> Reply:
        params: dict[str, object] = {
            key: values[0] for key, values in parse_qs(query.decode("latin-1")).items()
        }
        if body.strip():
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"POST /models: malformed JSON: {exc}") from None
            if not isinstance(document, dict):
                raise BadRequest('POST /models: expected {"model_name": ..., "url": ...}')
            params.update(document)
        name, url = params.get("model_name"), params.get("url")
        if not isinstance(name, str) or not name or not isinstance(url, str) or not url:
            raise BadRequest('POST /models: expected {"model_name": ..., "url": ...} (strings)')
        if name.endswith("/invoke"):
            raise BadRequest(f"model_name {name!r} cannot end with /invoke")
        if self.registry.get(name) is not None:
            raise Conflict(f"model {name!r} is already loaded")
        if not Path(url).is_dir():
            raise NotFound(f"model directory {url!r} of model {name!r} does not exist")
        entry = ModelEntry(name, url)
        await self.models.load(entry)
        if not self.registry.add(entry):
            # Another worker registered the same name while this one loaded it.
            self.models.drop(name, "unloaded (loaded twice)")
            raise Conflict(f"model {name!r} is already loaded")
        return _json(200, {"status": f"model {name!r} loaded"})


def _int_param(params: dict[str, list[str]], key: str, default: int) -> int:
    values = params.get(key)
    if not values or not values[0]:
        return default
    try:
        return int(values[0])
    except ValueError:
        raise BadRequest(f"{key}={values[0]!r}: expected an integer") from None
