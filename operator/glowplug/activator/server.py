"""The HTTP app: OpenAI endpoints, health, stats and metrics, and graceful shutdown.

The request path is: validate the body, resolve ``model`` (dictionary lookups), take a
slot from the service's hold queue (waiting, and waking the service, if none is free),
POST to the pod over a pooled connection, rewrite the answer. No Kubernetes API call and
no logging on success.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from glowplug.activator import openai as oai
from glowplug.activator.apikeys import ApiKey, KeyStore, wake_not_allowed
from glowplug.activator.cache import MemoryCache
from glowplug.activator.coldstart import cold_start_headers
from glowplug.activator.embeddingcache import EmbeddingCache, Forward
from glowplug.activator.forwarder import (
    BrokenResponse,
    ConnectFailed,
    DroppedBeforeResponse,
    Forwarder,
    UpstreamTimeout,
)
from glowplug.activator.holdqueue import HoldTimeout, QueueFull, ServiceFailed, ServiceGone
from glowplug.activator.http import Request, Response
from glowplug.activator.limits import BadShape, check_json_shape
from glowplug.activator.metrics import Metrics
from glowplug.activator.services import Route, Services
from glowplug.activator.stats import StatsFeed
from glowplug.kube import stats as kstats

log = logging.getLogger("glowplug.activator")

JSON = "application/json"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_INPUTS = 2048
DEFAULT_DRAIN_SECONDS = 5.0
RETRY_AFTER_QUEUE_FULL = "2"
RETRY_AFTER_FAILED = "30"
CONNECT_RETRY_DELAY = 0.05


@dataclass
class Config:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_inputs: int = DEFAULT_MAX_INPUTS
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    name: str = field(default_factory=socket.gethostname)


def _error(err: oai.APIError) -> Response:
    return Response(err.status, err.body(), JSON, err.headers)


def _json(doc: Any) -> Response:
    return Response(200, json.dumps(doc).encode(), JSON)


def _text(status: int, text: str) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8")


class Activator:
    """The request path and the small endpoints, served by ``http.HttpServer``."""

    def __init__(
        self,
        services: Services,
        *,
        metrics: Metrics,
        forwarder: Forwarder | None = None,
        config: Config | None = None,
        keys: KeyStore | None = None,
        internal_split: bool = False,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self.services = services
        self.keys = keys or KeyStore("off")
        # With an internal port, /stats and /metrics answer there only (handle_internal).
        self.internal_split = internal_split
        self.metrics = metrics
        self.forwarder = forwarder or Forwarder()
        self.config = config or Config()
        # Used only by services with spec.cache.enabled (docs/activator.md).
        self.cache = cache or EmbeddingCache(MemoryCache())
        services.on_delete(self.cache.forget)
        services.cache_bytes = self.cache.memory.service_bytes
        shared = self.cache.shared
        if shared is not None and shared.on_error is None:
            shared.on_error = metrics.cache_shared_errors.inc
        # /stats: full reads and changes after a cursor (glowplug.kube.stats).
        self.feed = StatsFeed(services, self.config.name, keyed=lambda: self.keys.active)
        services.on_delete(self.feed.touch)
        self.synced = asyncio.Event()  # the sources have listed everything once
        self.draining = False
        self._routes: dict[str, Callable[[], Response]] = {
            "/v1/models": self.models,
            "/models": self.models,
            "/stats": self.stats,
            "/metrics": self.prometheus,
            "/healthz": self.healthz,
            "/readyz": self.readyz,
        }

    async def handle(self, request: Request) -> Response:
        """Route one request (the HTTP server's handler)."""
        path = request.path
        if path in ("/v1/embeddings", "/embeddings"):
            return await self.embeddings(request)
        get = self._routes.get(path)
        if self.internal_split and path in _INTERNAL_PATHS:
            get = None
        if get is not None and request.method in ("GET", "HEAD"):
            if path == "/metrics":
                return await self.prometheus_off_loop()
            if path == "/stats":
                return await self.stats_request(request)
        return self._small(request, get)

    async def handle_internal(self, request: Request) -> Response:
        """The internal port's handler: /stats, /metrics and the probes, no API."""
        path = request.path
        get = self._routes.get(path) if path in (*_INTERNAL_PATHS, *_PROBE_PATHS) else None
        if get is not None and request.method in ("GET", "HEAD"):
            if path == "/metrics":
                return await self.prometheus_off_loop()
            if path == "/stats":
                return await self.stats_request(request)
        return self._small(request, get)

    def _small(self, request: Request, get: Callable[[], Response] | None) -> Response:
        path = request.path
        if get is None:
            return _error(
                oai.APIError(404, f"no such endpoint: {request.method} {path}", code="not_found")
            )
        if request.method not in ("GET", "HEAD"):  # HEAD: the HTTP layer drops the body
            return _error(
                oai.APIError(
                    405,
                    f"method {request.method} is not allowed on {path}; use GET",
                    code="method_not_allowed",
                    headers={"Allow": "GET"},
                )
            )
        if path in _MODELS_PATHS:
            try:
                key = self.keys.authenticate(request.headers.get("authorization"))
            except oai.APIError as err:
                self.metrics.key(None).rejected(err.code or str(err.status)).inc()
                return _error(err)
            return self.models(key)
        return get()

    # --- small endpoints ----------------------------------------------------------------

    def healthz(self) -> Response:
        return _text(200, "ok\n")

    def readyz(self) -> Response:
        if self.draining:
            return _text(503, "draining\n")
        if not self.synced.is_set():
            return _text(503, "not synced with the API server yet\n")
        return _text(200, "ok\n")

    def stats(self) -> Response:
        return _json(self.feed.full())

    async def stats_request(self, request: Request) -> Response:
        """``GET /stats[?since=EPOCH:CURSOR&wait=SECONDS]``: a full read, or the changes
        after a cursor, held up to ``wait`` seconds until there are some (a long poll)."""
        query = urllib.parse.parse_qs(request.query)
        since = (query.get("since") or [""])[-1]
        wait = kstats.parse_wait((query.get("wait") or [""])[-1])
        if self.draining:
            wait = 0.0  # answer at once: the process is going away
        return _json(await self.feed.answer(since, wait))

    def prometheus(self) -> Response:
        return Response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

    async def prometheus_off_loop(self) -> Response:
        """/metrics rendered in a worker thread: with thousands of services a render takes
        seconds, and on the event loop it would stall every request and probe meanwhile
        (prometheus_client copies each family's children under its lock, so rendering
        while the loop updates counters is safe)."""
        body = await asyncio.to_thread(self.metrics.render)
        return Response(200, body, "text/plain; version=0.0.4; charset=utf-8")

    def models(self, key: ApiKey | None = None) -> Response:
        """Every model, or those ``key`` may call (cached until a service changes)."""
        return Response(200, self.services.models.body(key), JSON)

    # --- the request path ---------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        t0 = time.monotonic()
        key: ApiKey | None = None
        try:
            key = self.keys.authenticate(request.headers.get("authorization"))
            req, route, payload = self._admit(request)
            if key is not None:
                # A request the cache may answer whole needs no wake: its wake right is
                # checked when (and only if) its misses go to the engine (_serve_for_key).
                wakes = _would_wake(route) and not _cacheable(route, req)
                self.keys.admit(key, route.spec, wakes=wakes)
        except oai.APIError as err:
            if self.keys.active:
                self.metrics.key(key.ref if key else None).rejected(
                    err.code or str(err.status)
                ).inc()
            return _error(err)
        if key is None:
            return await self._answer(req, route, payload, t0, self._serve)
        try:
            resp = await self._answer(
                req, route, payload, t0, functools.partial(self._serve_for_key, key)
            )
        finally:
            self.keys.release(key)
        km = self.metrics.key(key.ref)
        km.requests(resp.status).inc()
        if resp.status == 200:
            km.inputs.inc(req.n_inputs)
        return resp

    async def _answer(
        self,
        req: oai.EmbeddingRequest,
        route: Route,
        payloads: list[bytes],
        t0: float,
        forward: Forward,
    ) -> Response:
        """From the embedding cache where the service enables it, else from the engine
        (``forward``: what sends inputs to the engine)."""
        if _cacheable(route, req):
            return await self.cache.serve(req, route, t0, forward)
        return await forward(req, route, payloads, t0)

    async def _serve_for_key(
        self,
        key: ApiKey,
        req: oai.EmbeddingRequest,
        route: Route,
        payloads: list[bytes],
        t0: float,
    ) -> Response:
        """The engine path for a keyed request: the wake right, checked now that inputs
        must be computed (a fully cached request never gets here)."""
        if not key.wake and _would_wake(route):
            self.metrics.key(key.ref).rejected("wake_not_allowed").inc()
            return _error(wake_not_allowed(route.spec))
        resp = await self._serve(req, route, payloads, t0)
        if resp.status == 200:
            route.computed[key.ref] = route.computed.get(key.ref, 0) + req.n_inputs
            self.feed.touch(f"{route.spec.namespace}/{route.spec.name}")  # /stats changed
        return resp

    def _admit(self, request: Request) -> tuple[oai.EmbeddingRequest, Route, list[bytes]]:
        if request.method != "POST":
            raise oai.APIError(
                405,
                f"method {request.method} is not allowed on {request.path}; use POST",
                code="method_not_allowed",
                headers={"Allow": "POST"},
            )
        ctype = request.headers.get("content-type")
        if ctype is not None:
            main = ctype.split(";", 1)[0].strip().lower()
            if main != JSON and not main.endswith("+json"):
                raise oai.APIError(
                    415,
                    f"Content-Type must be application/json, got {main!r}",
                    code="unsupported_media_type",
                )
        if request.too_large:
            length = request.headers.get("content-length")
            raise self._too_large(int(length) if length and length.isdigit() else None)
        body = request.body
        try:
            # One array per input at most, plus the few a request has around them.
            check_json_shape(body, max_containers=self.config.max_inputs + 16)
        except BadShape as err:
            raise oai.APIError(400, str(err), code="invalid_json") from None
        req = oai.parse_request(body, max_inputs=self.config.max_inputs)
        route = self.services.resolve(req.model)
        oai.check_dimensions(req, route.spec)
        return req, route, oai.upstream_bodies(req, route.spec, body, route.max_batch)

    def _too_large(self, length: int | None) -> oai.APIError:
        size = f" ({length} bytes)" if length is not None else ""
        return oai.APIError(
            413,
            f"request body{size} is larger than the limit of {self.config.max_body_bytes} bytes",
            code="request_too_large",
        )

    async def _forward(
        self, route: Route, payload: bytes, deadline: float
    ) -> tuple[int, bytes, float, float]:
        """POST one body to a ready pod: (status, body, seconds waiting, seconds upstream).

        Retried on another pod (after a short cool-down of this one) until the deadline:
        a refused connection, and a 503 (an engine that is starting or shutting down says
        so: SGLang and vLLM answer 503 once SIGTERM arrives). A connection dropped before
        any response byte is retried once.
        """
        state = route.state
        touch = self.feed.touch  # /stats: this service's figures change
        touch(state.ref)
        request_timeout = route.spec.engine.request_timeout
        waited = upstream = 0.0
        retried_drop = False
        refusal: ConnectFailed | None = None  # the last connect error, if any
        unavailable: tuple[int, bytes] | None = None  # the last 503, if any
        while True:
            b = state.try_acquire()
            if b is None:
                tw = time.monotonic()
                try:
                    b = await state.acquire(max(0.0, deadline - tw))
                except HoldTimeout:
                    if refusal is not None:
                        raise _RefusedUntilDeadline(refusal) from None
                    if unavailable is not None:
                        return (*unavailable, waited + time.monotonic() - tw, upstream)
                    raise
                waited += time.monotonic() - tw
            tu = time.monotonic()
            completed = retry = False
            try:
                status, body = await self.forwarder.post(b.address, payload, request_timeout)
                completed = True
                if status == 503 and time.monotonic() < deadline:
                    state.cool_down(b)
                    retry, unavailable = True, (status, body)
            except ConnectFailed as err:
                state.cool_down(b)
                if time.monotonic() >= deadline:
                    raise
                retry, refusal = True, err
            except DroppedBeforeResponse:
                if retried_drop:
                    raise
                retried_drop = True
                continue
            except (BrokenResponse, UpstreamTimeout):
                completed = True
                raise
            finally:
                upstream += time.monotonic() - tu
                state.release(b, completed=completed)
                touch(state.ref)
            if retry:
                # Not served: retry (another pod first) until the deadline.
                await asyncio.sleep(CONNECT_RETRY_DELAY)
                continue
            return status, body, waited, upstream

    async def _forward_all(
        self, route: Route, payloads: list[bytes], deadline: float
    ) -> tuple[int, bytes, float, float]:
        """Every chunk of a split request at once (each takes its own slot); the first
        non-200 answer is the answer, else the merged one."""
        results = await asyncio.gather(
            *(self._forward(route, p, deadline) for p in payloads), return_exceptions=True
        )
        done: list[tuple[int, bytes, float, float]] = []
        for r in results:
            if isinstance(r, BaseException):
                raise r
            done.append(r)
        waited = max(r[2] for r in done)
        spent = max(r[2] + r[3] for r in done)
        for status, body, _, _ in done:
            if status != 200:
                return status, body, waited, spent - waited
        batch = route.max_batch or 1
        merged = oai.merge_responses([r[1] for r in done], batch)
        return 200, merged, waited, spent - waited

    async def _serve(
        self, req: oai.EmbeddingRequest, route: Route, payloads: list[bytes], t0: float
    ) -> Response:
        state, sm, spec = route.state, route.metrics, route.spec
        path = "warm" if state.has_ready else "cold"
        deadline = t0 + spec.scaling.activation_timeout
        try:
            if len(payloads) == 1:
                status, body, waited, upstream = await self._forward(route, payloads[0], deadline)
            else:
                status, body, waited, upstream = await self._forward_all(route, payloads, deadline)
        except oai.APIError as err:
            return self._reject(route, path, err, None)
        except QueueFull:
            retry = RETRY_AFTER_QUEUE_FULL
            if not state.has_ready:  # queued behind a wake: the rest of a typical wake
                retry = route.wake.retry_after(time.monotonic() - t0)
            return self._reject(
                route,
                path,
                oai.APIError(
                    503,
                    f"model {spec.model.served_name!r} has {state.max_queue} requests queued"
                    f" (spec.scaling.maxQueuedRequests); retry later{route.wake.describe()}",
                    type="service_unavailable",
                    code="queue_full",
                    headers={"Retry-After": retry},
                ),
                "queue_full",
            )
        except _RefusedUntilDeadline as err:
            # It waited because the pods refused connections: say that, not "timeout".
            return self._reject(
                route,
                path,
                oai.APIError(
                    502,
                    f"model {spec.model.served_name!r}: the engine refused connections"
                    f" until the activation timeout: {err.refusal}",
                    type="upstream_error",
                    code="upstream_error",
                ),
                "upstream_error",
            )
        except oai.UpstreamFormatError as err:
            return self._reject(
                route,
                path,
                oai.APIError(502, str(err), type="upstream_error", code="upstream_error"),
                "upstream_error",
            )
        except HoldTimeout:
            cold = not state.has_ready
            what = "was not ready" if cold else "had no free slot"
            return self._reject(
                route,
                path,
                oai.APIError(
                    504,
                    f"model {spec.model.served_name!r} {what} within the activation timeout"
                    f" of {spec.scaling.activation_timeout:g}s"
                    + (route.wake.describe() if cold else ""),
                    type="timeout",
                    code="activation_timeout",
                    headers=(
                        {"Retry-After": route.wake.retry_after(time.monotonic() - t0)}
                        if cold
                        else None
                    ),
                ),
                "activation_timeout",
            )
        except ServiceFailed as err:
            f = err.failure
            return self._reject(
                route,
                path,
                oai.APIError(
                    503,
                    f"model {spec.model.served_name!r} cannot start: {f.reason}: {f.message}",
                    type="service_unavailable",
                    code=f.reason,
                    headers={"Retry-After": RETRY_AFTER_FAILED},
                ),
                "wake_failed",
            )
        except ServiceGone:
            return self._reject(
                route,
                path,
                oai.APIError(
                    404,
                    f"model {spec.model.served_name!r} was deleted while the request waited",
                    code="model_not_found",
                ),
                "service_deleted",
            )
        except (ConnectFailed, DroppedBeforeResponse, BrokenResponse) as err:
            return self._reject(
                route,
                path,
                oai.APIError(
                    502,
                    f"model {spec.model.served_name!r}: the engine failed: {err}",
                    type="upstream_error",
                    code="upstream_error",
                ),
                "upstream_error",
            )
        except UpstreamTimeout as err:
            return self._reject(
                route,
                path,
                oai.APIError(
                    504,
                    f"model {spec.model.served_name!r}: {err} (spec.engine.requestTimeout)",
                    type="timeout",
                    code="upstream_timeout",
                ),
                "upstream_error",
            )

        if waited:
            sm.queue_wait.observe(waited)
        if status == 200:
            try:
                out = oai.rewrite_response(body, spec.model.served_name, req.encoding_format)
            except oai.UpstreamFormatError as err:
                return self._reject(
                    route,
                    path,
                    oai.APIError(502, str(err), type="upstream_error", code="upstream_error"),
                    "upstream_error",
                )
            sm.embeddings.inc(req.n_inputs)
            resp = Response(200, out, JSON)
        else:
            resp = Response(status, _engine_error(status, body), JSON)
        if waited:
            state.answered_after_wait()
            self.feed.touch(state.ref)
            if path == "cold":
                resp.headers.update(cold_start_headers(waited))
        total = time.monotonic() - t0
        sm.requests(status, path).inc()
        sm.duration[path].observe(total)
        sm.overhead.observe(max(0.0, total - waited - upstream))
        return resp

    def _reject(self, route: Route, path: str, err: oai.APIError, reason: str | None) -> Response:
        sm = route.metrics
        sm.requests(err.status, path).inc()
        if reason is not None:
            sm.rejected[reason].inc()
        return _error(err)

    # --- lifecycle ----------------------------------------------------------------------

    def idle(self) -> bool:
        return all(
            r.state.inflight == 0 and r.state.queued == 0 for r in self.services.routes.values()
        )

    async def drain(self) -> None:
        """Fail readiness and keep serving ``drain_seconds`` (load balancers notice)."""
        self.draining = True
        self.feed.close()  # held /stats requests answer now
        log.info("draining: /readyz fails, serving %.1fs more", self.config.drain_seconds)
        await asyncio.sleep(self.config.drain_seconds)

    async def wait_idle(self, max_wait: float) -> None:
        """Wait until no request is in flight or queued, at most ``max_wait`` seconds."""
        end = time.monotonic() + max_wait
        # Polling is fine here: it runs once, at shutdown, for a few seconds.
        while not self.idle() and time.monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if not self.idle():
            log.warning("shutdown timeout: exiting with requests still in flight or queued")

    async def close(self) -> None:
        await self.forwarder.close()
        await self.cache.close()


_MODELS_PATHS = ("/v1/models", "/models")
_INTERNAL_PATHS = ("/stats", "/metrics")
_PROBE_PATHS = ("/healthz", "/readyz")


def _cacheable(route: Route, req: oai.EmbeddingRequest) -> bool:
    """Whether the embedding cache looks this request up (and may answer it whole)."""
    return route.spec.cache.enabled and req.text_inputs


def _would_wake(route: Route) -> bool:
    """Whether holding this request would start a wake (nothing ready, at zero, no wake
    in progress): what a key without ``wake`` may not do."""
    state = route.state
    return not state.has_ready and state.replicas == 0 and not state.waking


class _RefusedUntilDeadline(Exception):
    """Every connection attempt was refused until the activation deadline."""

    def __init__(self, refusal: ConnectFailed) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


def _engine_error(status: int, body: bytes) -> bytes:
    """Pass an engine error through, in OpenAI's shape if it is not already.

    Flat engine errors (SGLang and vLLM: ``{"object": "error", "message", "type",
    "param", "code"}``; TEI: ``{"message", "type", "code"}``) keep their ``type`` (for
    example ``BadRequestError``) and ``param``; the HTTP status becomes ``code``.
    """
    try:
        doc: Any = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return body
    message = ""
    kind = "invalid_request_error" if 400 <= status < 500 else "upstream_error"
    param = None
    if isinstance(doc, dict):
        message = str(doc.get("message") or doc.get("detail") or doc.get("error") or "")
        engine_type = doc.get("type") or doc.get("error_type")
        if isinstance(engine_type, str) and engine_type:
            kind = engine_type
        if isinstance(doc.get("param"), str):
            param = doc["param"]
    if not message:
        message = body[:500].decode("utf-8", "replace") or f"engine answered {status}"
    return oai.error_body(f"engine: {message}", type=kind, param=param, code=str(status))
