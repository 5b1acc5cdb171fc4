"""``GET /stats``: the per-service load figures the operator's autoscaler reads.

The contract (fields, keys, types) is ``glowplug.kube.stats``, shared with the reader.
"""

from __future__ import annotations

from typing import Any

from glowplug.activator.services import Services
from glowplug.kube.stats import ServiceStats, document


def stats(services: Services, activator: str, keyed: bool = False) -> dict[str, Any]:
    """``keyed``: API keys are in use, so each service reports ``computedInputs`` (empty
    until a key's input was computed): the operator's attribution starts from it."""
    return document(
        activator,
        (
            ServiceStats(
                namespace=route.state.namespace,
                name=route.state.name,
                in_flight=route.state.inflight,
                queued=route.state.queued,
                waking=route.state.waking,
                last_request_finished=route.state.last_finished,
                first_response_after_wake=route.state.first_response_after_wake,
                computed_inputs=dict(route.computed) if keyed or route.computed else None,
            )
            for route in services.routes.values()
        ),
    )
