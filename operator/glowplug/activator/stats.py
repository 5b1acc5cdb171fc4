"""``GET /stats``: the per-service load figures the operator's autoscaler reads.

Contract (shared with the autoscaler)::

    {"activator": "<hostname>", "time": <unix float>,
     "services": {"<namespace>/<name>": {"namespace", "name", "inFlight", "queued",
                                         "waking", "lastRequestFinished": <unix float|null>,
                                         "firstResponseAfterWake": <unix float|null>}}}

Keyed by metadata.name, not servedName. Every routed service appears, idle or not.
"""

from __future__ import annotations

import time
from typing import Any

from glowplug.activator.services import Services


def stats(services: Services, activator: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ref, route in services.routes.items():
        st = route.state
        out[ref] = {
            "namespace": st.namespace,
            "name": st.name,
            "inFlight": st.inflight,
            "queued": st.queued,
            "waking": st.waking,
            "lastRequestFinished": st.last_finished,
            "firstResponseAfterWake": st.first_response_after_wake,
        }
    return {"activator": activator, "time": time.time(), "services": out}
