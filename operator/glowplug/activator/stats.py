"""``GET /stats``: the per-service load figures the operator's autoscaler reads.

The contract (fields, keys, types) is ``glowplug.kube.stats``, shared with the reader.
"""

from __future__ import annotations

from typing import Any

from glowplug.activator.services import Services
from glowplug.kube.stats import ServiceStats, document


def stats(services: Services, activator: str) -> dict[str, Any]:
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
            for st in (route.state for route in services.routes.values())
        ),
    )
