"""Pokes: how an event reaches the loop of the service it is about.

Each service's loop rests while nothing happens (DESIGN.md invariant 6); a poke ends
the rest. Pokes come from the pod informer (its pods changed), from kopf's event
handler (its object changed) and from ``poke_on_load``, which reads the activators'
load once per interval and pokes only the services whose figures changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from glowplug.operator.activity import LoadSource
from glowplug.operator.autoscaler import ActivatorLoad

log = logging.getLogger(__name__)


class Pokes:
    """One asyncio.Event per service: set when something about it changed (an event
    from its pods' informer, its object, or its load) to end its loop's rest."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], asyncio.Event] = {}

    def event(self, namespace: str, name: str) -> asyncio.Event:
        return self.events.setdefault((namespace, name), asyncio.Event())

    def poke(self, namespace: str, name: str) -> None:
        ev = self.events.get((namespace, name))
        if ev is not None:
            ev.set()

    def forget(self, namespace: str, name: str) -> None:
        self.events.pop((namespace, name), None)


def _signature(loads: Sequence[ActivatorLoad]) -> tuple[tuple[Any, ...], ...]:
    return tuple(
        (a.in_flight, a.queued, a.waking, a.last_request_finished, a.first_response) for a in loads
    )


async def poke_on_load(reader: LoadSource, pokes: Pokes, interval: float) -> None:
    """Read the activators' load once per ``interval`` and poke the services whose load
    changed since the last read: a service at rest wakes on its first request."""
    prev: dict[str, tuple[tuple[Any, ...], ...]] = {}
    while True:
        try:
            snap = await reader.snapshot()
        except Exception as err:  # the reader logs its own failures; keep going
            log.debug("load read failed: %s", err)
        else:
            cur = {k: _signature(v) for k, v in snap.per_service.items()}
            for key in cur.keys() | prev.keys():
                if cur.get(key) != prev.get(key):
                    namespace, _sep, name = key.partition("/")
                    pokes.poke(namespace, name)
            prev = cur
        await asyncio.sleep(interval)
