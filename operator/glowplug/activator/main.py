"""Run the activator: an OpenAI-compatible embeddings proxy that holds requests while it
wakes EmbeddingServices from zero.

Routes POST /v1/embeddings by the request's `model` (servedName, or namespace/servedName)
to ready pods of the EmbeddingService, read from the Kubernetes API ($KUBECONFIG, or the
in-cluster service account), or from --static-config for runs without a cluster. Also
serves GET /v1/models, /stats, /metrics, /healthz and /readyz.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
from typing import Any

from glowplug.activator.apikeys import AUTH_MODES
from glowplug.activator.http import Limits
from glowplug.activator.server import (
    DEFAULT_DRAIN_SECONDS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_INPUTS,
)

log = logging.getLogger("glowplug.activator")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="route EmbeddingServices of this namespace (repeatable; default: all namespaces)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body accepted (larger: 413)",
    )
    parser.add_argument(
        "--max-inputs",
        type=int,
        default=DEFAULT_MAX_INPUTS,
        help="most inputs in one embeddings request (more: 400)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=DEFAULT_DRAIN_SECONDS,
        help="on SIGTERM, keep serving this long with /readyz failing before closing the port",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=120.0,
        help="on SIGTERM, longest wait for in-flight and queued requests after the drain",
    )
    parser.add_argument(
        "--cache-max-bytes",
        default=os.environ.get("GLOWPLUG_CACHE_MAX_BYTES", "256Mi"),
        help="memory for the embedding cache of all services together (e.g. 256Mi); each"
        " service is also bounded by its spec.cache.maxBytes",
    )
    parser.add_argument(
        "--cache-redis-url",
        default=os.environ.get("GLOWPLUG_CACHE_REDIS_URL", ""),
        help="a Redis shared by every activator replica for the embedding cache, e.g."
        " redis://redis:6379/0 (password from $GLOWPLUG_CACHE_REDIS_PASSWORD); default: none",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=Limits.max_connections,
        help="most client connections open at once (more: 503 and closed)",
    )
    parser.add_argument(
        "--max-held-bytes",
        type=int,
        default=Limits.max_held_bytes,
        help="request body bytes held by all connections together (more: 503, Retry-After)",
    )
    parser.add_argument(
        "--auth",
        choices=AUTH_MODES,
        default="auto",
        help="API keys (Secrets labelled glowplug.dev/api-key): required: every API request"
        " needs a key; auto: once any key exists; off: none needed, Secrets not watched",
    )
    parser.add_argument(
        "--keys-namespace",
        default=os.environ.get("POD_NAMESPACE", ""),
        help="namespace whose key Secrets may call every namespace (default: $POD_NAMESPACE);"
        " with --namespace, each watched namespace's keys call that namespace only",
    )
    parser.add_argument(
        "--internal-port",
        type=int,
        default=0,
        help="serve /stats and /metrics on this port only, not on --port (0: on --port)",
    )
    parser.add_argument(
        "--per-service-histograms",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("GLOWPLUG_PER_SERVICE_HISTOGRAMS", "").lower() in ("1", "true"),
        help="label the latency histograms per service (about 70 series per service);"
        " default: aggregated over services, counters stay per service"
        " ($GLOWPLUG_PER_SERVICE_HISTOGRAMS=true)",
    )
    parser.add_argument(
        "--static-config",
        metavar="FILE",
        help="read services and endpoints from this YAML file instead of the Kubernetes API",
    )
    parser.add_argument(
        "--event-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="auto: uvloop when it is installed (faster, see docs/benchmarks.md), else asyncio",
    )
    parser.add_argument(
        "--log-level", default=os.environ.get("GLOWPLUG_LOG_LEVEL", "INFO"), help="log level"
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.event_loop != "asyncio":
        try:
            import uvloop  # type: ignore[import-not-found]  # optional, faster event loop

            uvloop.install()
        except ImportError:
            if args.event_loop == "uvloop":
                raise
    return asyncio.run(serve(args))


async def serve(args: argparse.Namespace) -> int:
    from glowplug.activator import static
    from glowplug.activator.apikeys import KeyStore
    from glowplug.activator.http import HttpServer
    from glowplug.activator.metrics import Metrics
    from glowplug.activator.readiness_probe import ReadinessProber
    from glowplug.activator.server import Activator, Config
    from glowplug.activator.services import Services
    from glowplug.activator.waker import KubeScaler, Waker
    from glowplug.activator.watch import KubeSource
    from glowplug.kube.client import new_api_client

    metrics = Metrics(per_service_histograms=args.per_service_histograms)
    services = Services(metrics)
    cache = await _embedding_cache(args)
    prober = ReadinessProber(services.probed_ready)
    services.set_prober(prober)
    keys = KeyStore(args.auth, args.keys_namespace or None)
    activator = Activator(
        services,
        metrics=metrics,
        cache=cache,
        config=Config(
            max_body_bytes=args.max_body_bytes,
            max_inputs=args.max_inputs,
            drain_seconds=args.drain_seconds,
        ),
        keys=keys,
        internal_split=bool(args.internal_port),
    )
    source: KubeSource | None = None
    api_client: Any = None
    waker: Waker
    if args.static_config:
        scaler = static.StaticScaler(services)
        waker = Waker(scaler, metrics)
        services.set_waker(waker)
        static.load(args.static_config, services, scaler, keys)
        activator.synced.set()
    else:
        from kubernetes_asyncio import client

        api_client = await new_api_client("activator")
        waker = Waker(KubeScaler(client.CustomObjectsApi(api_client)), metrics)
        services.set_waker(waker)
        key_namespaces: list[str] = []
        if args.auth != "off":
            key_namespaces = [*([args.keys_namespace] if args.keys_namespace else [])]
            key_namespaces += list(args.namespaces or [])
            if not key_namespaces:
                log.warning(
                    "--auth=%s without --keys-namespace or --namespace: no key Secrets are watched",
                    args.auth,
                )
        source = KubeSource(api_client, services, args.namespaces, keys, key_namespaces)
        source.start()

        async def mark_synced() -> None:
            assert source is not None
            await source.wait_synced()
            activator.synced.set()
            log.info("synced: routing %d EmbeddingServices", len(services.table))

        synced_task = asyncio.create_task(mark_synced())

    limits = Limits(max_connections=args.max_connections, max_held_bytes=args.max_held_bytes)
    server = HttpServer(activator.handle, max_body=args.max_body_bytes, limits=limits)
    port = await server.start(args.host, args.port)
    log.info("listening on %s:%d (auth %s)", args.host, port, args.auth)
    internal: HttpServer | None = None
    if args.internal_port:
        internal = HttpServer(activator.handle_internal, max_body=4096)
        iport = await internal.start(args.host, args.internal_port)
        log.info("internal port (/stats, /metrics, probes) on %s:%d", args.host, iport)
    # Startup objects (API client, modules) never die: keep them out of the collector's
    # scans so that full collections on the request path stay short.
    gc.freeze()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down")
    await activator.drain()
    server.stop_listening()  # no new connections; open ones are served, then closed
    await activator.wait_idle(args.shutdown_timeout)
    await server.close()
    if internal is not None:
        await internal.close()
    await waker.close()
    await prober.close()
    if source is not None:
        synced_task.cancel()
        await source.close()
    if api_client is not None:
        await api_client.close()
    await activator.close()
    log.info("stopped")
    return 0


async def _embedding_cache(args: argparse.Namespace) -> Any:
    """The memory tier, plus Redis when a URL is given. A Redis that does not answer (or
    a missing client library) is a warning: the activator serves without it."""
    from glowplug.activator.cache import MemoryCache
    from glowplug.activator.embeddingcache import EmbeddingCache
    from glowplug.api.sizes import SizeError, parse_size

    try:
        max_bytes = parse_size(args.cache_max_bytes)
    except SizeError as err:
        raise SystemExit(f"--cache-max-bytes: {err}") from None
    shared = None
    if args.cache_redis_url:
        try:
            from glowplug.activator.sharedcache import SharedCache

            shared = SharedCache(
                args.cache_redis_url,
                password=os.environ.get("GLOWPLUG_CACHE_REDIS_PASSWORD") or None,
            )
        except ImportError:
            log.warning(
                "--cache-redis-url is set but the redis client is not installed (pip install"
                " 'glowplug[cache]'); serving without the shared cache"
            )
        except ValueError as err:
            log.warning("--cache-redis-url: %s; serving without the shared cache", err)
        if shared is not None and await shared.ping():
            log.info("shared embedding cache: %s", args.cache_redis_url.split("@")[-1])
    return EmbeddingCache(MemoryCache(max_bytes), shared)
