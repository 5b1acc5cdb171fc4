"""``GET /stats``: the per-service load figures the operator's autoscaler reads.

The contract (fields, keys, types) is ``glowplug.kube.stats``, shared with the reader.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from glowplug.activator.services import Route, Services
from glowplug.kube.stats import ServiceStats, document


def stats(services: Services, activator: str, only: Iterable[str] | None = None) -> dict[str, Any]:
    """Every routed service, or those of ``only`` ("namespace/name") this activator
    routes: the operator's re-read right before a scale to zero asks for the services
    going to zero, not for all of them."""
    routes: Iterable[Route] = services.routes.values()
    if only is not None:
        routes = [r for r in (services.routes.get(k) for k in dict.fromkeys(only)) if r]
    return document(
        activator,
        (
            ServiceStats(
                namespace=st.namespace,
                name=st.name,
                in_flight=st.inflight,
                queued=st.queued,
                waking=st.waking,
                last_request_finished=st.last_finished,
                first_response_after_wake=st.first_response_after_wake,
            )
            for st in (route.state for route in routes)
        ),
    )
