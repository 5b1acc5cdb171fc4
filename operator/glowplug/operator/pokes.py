"""Pokes: how an event reaches the loop of the service it is about.

Each service's loop rests while nothing happens (DESIGN.md invariant 6); a poke ends
the rest. Pokes come from the pod informer (its pods changed), from kopf's event
handler (its object changed) and from the load reader's ``follow``
(``activity.LoadReader``), which hears each activator's changes as they happen and
pokes only the services whose figures changed, and from the one scheduler of every
loop's timers (``timers.Timers``) when a loop is due.
"""

from __future__ import annotations

import asyncio
import logging

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
