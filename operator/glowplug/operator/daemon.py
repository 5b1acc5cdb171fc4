"""The per-service loops' kopf wiring: one daemon per EmbeddingService, shared watches.

Each daemon runs a ``ServiceLoop`` and waits between its ticks for a poke (``pokes``):
its pods changed (one pod informer for all services, ``glowplug.kube.informer``), its
object changed (kopf's event handler), its load changed in the activators' ``/stats``
(``LoadReader.follow``: a long poll of changes per activator), or its next due time
came. The daemons hold no timer: each tick says when its loop is next due
(``ServiceLoop.next_due``: idle deadline, scaleDownDelay, pre-warm edges, a wake's
polls and timeouts, the ledger checkpoint while GPUs are held, the next tick while load
is in flight) and one scheduler (``timers.Timers``: a heap, one task) pokes it then. A
service with nothing pending has no timer; at zero and idle it makes no API request and
no write. Two ticks of one service are at least ``--autoscale-interval`` / 4 apart, so a
burst of events costs a few ticks, not one each.

Why a kopf daemon: kopf stops daemons when peering tells this operator replica to
stand by, and starts them again when it becomes active, so only one replica scales and
accounts at a time; a daemon also stops when its object is deleted. At start-up (or a
failover) the one object read of each service that writes a ledger checkpoint (before
its first; an idle service reads nothing) passes a shared rate gate.

State shared by the daemons lives in one ``Daemons`` object made by ``configure``;
kopf holds its bound methods (no module-level state).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from glowplug.api.spec import GROUP, PLURAL, VERSION
from glowplug.kube.informer import Informer
from glowplug.kube.outage import Outage, is_unreachable
from glowplug.operator.activity import LoadReader, StaticDiscovery, watched_endpoint_slices
from glowplug.operator.pokes import Pokes
from glowplug.operator.serviceapi import GatedServiceAPI, RateGate, ServiceAPI
from glowplug.operator.serviceloop import Options, ServiceLoop
from glowplug.operator.timers import Timers

log = logging.getLogger(__name__)

# A service's first ledger checkpoint reads its object once (the latest checkpoint, in
# case kopf's body lags it): at most this many per second, so a start-up or a failover
# with thousands of services holding pods does not stampede the API server.
FIRST_READS_PER_SECOND = 50.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the autoscaler's command-line options to ``glowplug operator``."""
    group = parser.add_argument_group("autoscaler and ledger")
    group.add_argument(
        "--activator-service",
        default="",
        metavar="NAMESPACE/NAME",
        help="read load from every endpoint of this activator Service (in a cluster)",
    )
    group.add_argument(
        "--activator-url",
        action="append",
        default=[],
        metavar="URL",
        help="read load from this activator base URL (repeatable; local runs)",
    )
    group.add_argument(
        "--autoscale-interval", type=float, default=1.0, help="seconds between ticks"
    )
    group.add_argument(
        "--ledger-checkpoint",
        type=float,
        default=10.0,
        help="seconds between GPU-ledger checkpoints into status while GPUs are held",
    )
    group.add_argument(
        "--stats-timeout", type=float, default=1.0, help="timeout of one /stats read"
    )


def options(args: argparse.Namespace) -> Options:
    return Options(
        activator_urls=tuple(getattr(args, "activator_url", None) or ()),
        activator_service=getattr(args, "activator_service", "") or "",
        interval=float(getattr(args, "autoscale_interval", 1.0)),
        checkpoint_every=float(getattr(args, "ledger_checkpoint", 10.0)),
        stats_timeout=float(getattr(args, "stats_timeout", 1.0)),
        namespaces=tuple(getattr(args, "namespace", None) or ()),
    )


def configure(args: argparse.Namespace) -> Daemons:
    """Apply the parsed options and register the autoscaler's kopf handlers."""
    import kopf

    daemons = Daemons(options(args))
    kopf.on.startup(id="glowplug-scaling-startup")(daemons.startup)
    kopf.on.cleanup(id="glowplug-scaling-cleanup")(daemons.cleanup)
    kopf.daemon(
        GROUP,
        VERSION,
        PLURAL,
        id="glowplug-scaling",
        cancellation_timeout=10.0,
    )(daemons.daemon)
    # A change of the object (spec, status, a scale write) ends its loop's rest at once.
    kopf.on.event(GROUP, VERSION, PLURAL, id="glowplug-scaling-poke")(daemons.poke_on_event)
    return daemons


@dataclass
class Daemons:
    options: Options
    api: ServiceAPI | None = None
    reader: LoadReader | None = None
    api_client: Any = None
    pods: Informer | None = None
    slices: Informer | None = None  # the activators' EndpointSlices (--activator-service)
    pokes: Pokes = field(default_factory=Pokes)
    timers: Timers | None = None  # every loop's next due time (made in startup)
    load_task: asyncio.Task[None] | None = None
    closing: bool = False  # cleanup began: the clients are being closed under the loops
    outage: Outage = field(default_factory=lambda: Outage(log))  # shared by every loop

    async def startup(self, **kwargs: Any) -> None:
        logger: logging.Logger = kwargs.get("logger") or log

        from glowplug.kube import informer
        from glowplug.kube.client import new_api_client

        opts = self.options
        if self.timers is None:
            from glowplug.operator.servicemetrics import TIMERS

            self.timers = Timers(self.pokes.poke)
            TIMERS.set_function(self.timers.pending)
            self.timers.start()
        self.api_client = await new_api_client("operator")
        # One watch of every engine pod instead of a LIST per service per tick.
        self.pods = informer.pods(self.api_client, opts.namespaces, self.pokes.poke)
        self.pods.start()
        self.api = GatedServiceAPI(self.api_client, self.pods, RateGate(FIRST_READS_PER_SECOND))
        discovery: Any = None
        if opts.activator_urls:
            discovery = StaticDiscovery(opts.activator_urls)
        elif opts.activator_service:
            ns, _sep, svc_name = opts.activator_service.partition("/")
            # A watch of its EndpointSlices, not a LIST per look.
            discovery = watched_endpoint_slices(self.api_client, ns, svc_name)
            self.slices = discovery.informer
        if discovery is None:
            logger.warning(
                "no --activator-url or --activator-service: the autoscaler is off (replicas"
                " are left as they are); the ledger and wake-failure detection still run"
            )
            return
        from glowplug.operator.servicemetrics import STATS_ERRORS

        self.reader = LoadReader(
            discovery,
            timeout=opts.stats_timeout,
            max_age=min(0.5, opts.interval / 2),
            on_error=lambda url: STATS_ERRORS.labels(url).inc(),
        )
        # Load changes as they happen (a long poll per activator), each poking its loop.
        self.load_task = asyncio.create_task(
            self.reader.follow(self.pokes.poke, opts.interval), name="load changes"
        )

    async def poke_on_event(self, **kwargs: Any) -> None:
        body = kwargs.get("body") or {}
        meta = body.get("metadata") or {}
        self.pokes.poke(str(meta.get("namespace")), str(meta.get("name")))

    async def cleanup(self, **_: Any) -> None:
        self.closing = True
        if self.timers is not None:
            await self.timers.close()
        if self.load_task is not None:
            self.load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.load_task
        if self.pods is not None:
            await self.pods.close()
        if self.slices is not None:
            await self.slices.close()
        if self.reader is not None:
            await self.reader.close()
        if self.api_client is not None:
            await self.api_client.close()

    async def daemon(self, **kwargs: Any) -> None:
        body, stopped, logger = kwargs["body"], kwargs["stopped"], kwargs.get("logger") or log
        if self.api is None:
            await self.startup(logger=logger)
        assert self.api is not None and self.timers is not None
        timers = self.timers
        loop = ServiceLoop(self.api, self.reader, self.options, outage=self.outage)
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        ref = f"{key[0]}/{key[1]}"
        poke = self.pokes.event(*key)
        min_gap = self.options.interval / 4
        from glowplug.operator.servicemetrics import TICKS

        try:
            while not stopped:
                started = time.monotonic()
                poke.clear()  # a poke during the tick makes the next one come at once
                answered = getattr(self.api, "answered", 0)
                TICKS.inc()
                try:
                    await loop.tick(body)
                    # The outage ends at a real answer, not at a tick served from caches.
                    if not loop.tick_failed and getattr(self.api, "answered", 0) > answered:
                        self.outage.ok(ref)
                    due = loop.next_due
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # one bad tick must not end the loop
                    if stopped or self.closing:
                        break  # shutting down: the API client may already be closed
                    if is_unreachable(err):
                        self.outage.failed(err, ref)  # logged once for all services
                    else:
                        logger.warning("autoscaler tick failed: %s", err, exc_info=True)
                    due = time.time() + self.options.interval  # try again
                timers.schedule(*key, due)
                await rest(stopped, poke, None)
                # Events in a burst (a wake's pod updates, a busy service's load) share
                # a tick: not sooner than min_gap after the last one began.
                gap = min_gap - (time.monotonic() - started)
                if gap > 0 and not stopped:
                    await stopped.wait(gap)
        finally:
            timers.cancel(*key)
            self.pokes.forget(*key)
            self.outage.forget(ref)
            if loop.series is not None:
                if _deleted(stopped):
                    loop.series.remove()
                else:
                    loop.series.stop()


async def rest(stopped: Any, poke: asyncio.Event, seconds: float | None) -> None:
    """Sleep until poked, stopped or ``seconds`` passed (None: no time limit; the
    loop's timer is a poke from ``Timers``)."""
    if poke.is_set():
        return
    waits = {
        asyncio.ensure_future(poke.wait()),
        asyncio.ensure_future(stopped.wait(seconds)),
    }
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _deleted(stopped: Any) -> bool:
    try:
        import kopf

        reason = stopped.reason
        return bool(reason and reason & kopf.DaemonStoppingReason.RESOURCE_DELETED)
    except Exception:
        return False


__all__ = ["Daemons", "add_arguments", "configure", "options", "rest"]
