"""The ``GET /stats`` contract between the activator (producer) and the autoscaler
(consumer), in one place::

    {"activator": "<hostname>", "time": <unix float>,
     "services": {"<namespace>/<name>": {"namespace", "name", "inFlight", "queued",
                                         "waking", "lastRequestFinished": <unix float|null>,
                                         "firstResponseAfterWake": <unix float|null>,
                                         "computedInputs": {"<key>": <int>}}}}

``computedInputs`` (only while API keys are in use on that activator, ``{}`` until a
key's input was computed): per API key ("namespace/name" of its Secret), the inputs the
engine computed for it (cache misses), cumulative since this activator began routing
the service; the operator splits GPU-seconds by their increase (operator/attribution.py).

Keyed by metadata.name, not servedName. Every routed service appears, idle or not.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServiceStats:
    """One service's figures on one activator."""

    namespace: str
    name: str
    in_flight: int = 0
    queued: int = 0
    waking: bool = False
    last_request_finished: float | None = None
    first_response_after_wake: float | None = None
    computed_inputs: Mapping[str, int] | None = None  # None: no API keys in use

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "namespace": self.namespace,
            "name": self.name,
            "inFlight": self.in_flight,
            "queued": self.queued,
            "waking": self.waking,
            "lastRequestFinished": self.last_request_finished,
            "firstResponseAfterWake": self.first_response_after_wake,
        }
        if self.computed_inputs is not None:
            out["computedInputs"] = dict(self.computed_inputs)
        return out

    @classmethod
    def from_json(cls, key: str, entry: Any) -> ServiceStats:
        """One entry; ValueError naming the key when it is malformed."""
        if not isinstance(entry, Mapping):
            raise ValueError(f"stats: {key}: not an object")
        namespace, _sep, name = key.partition("/")
        finished = entry.get("lastRequestFinished")
        first = entry.get("firstResponseAfterWake")
        computed = entry.get("computedInputs")
        if computed is not None and not isinstance(computed, Mapping):
            raise ValueError(f"stats: {key}: computedInputs: not an object")
        try:
            return cls(
                namespace=str(entry.get("namespace") or namespace),
                name=str(entry.get("name") or name),
                in_flight=int(entry.get("inFlight") or 0),
                queued=int(entry.get("queued") or 0),
                waking=bool(entry.get("waking")),
                last_request_finished=None if finished is None else float(finished),
                first_response_after_wake=None if first is None else float(first),
                computed_inputs=None
                if computed is None
                else {str(k): _count(v) for k, v in computed.items()},
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"stats: {key}: {err}") from None


def document(activator: str, services: Iterable[ServiceStats]) -> dict[str, Any]:
    """The body an activator serves."""
    return {
        "activator": activator,
        "time": time.time(),
        "services": {s.key: s.to_json() for s in services},
    }


def parse(payload: Any) -> dict[str, ServiceStats]:
    """One activator's body -> figures by "namespace/name"; ValueError if malformed."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("services"), Mapping):
        raise ValueError("stats: no 'services' object")
    return {str(k): ServiceStats.from_json(str(k), v) for k, v in payload["services"].items()}


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"computedInputs: {value!r} is not a count")
    return value
