"""The ``GET /stats`` contract between the activator (producer) and the autoscaler
(consumer), in one place.

A full read, ``GET /stats``::

    {"activator": "<hostname>", "time": <unix float>, "epoch": "<id>", "cursor": <int>,
     "full": true,
     "services": {"<namespace>/<name>": {"namespace", "name", "inFlight", "queued",
                                         "waking", "lastRequestFinished": <unix float|null>,
                                         "firstResponseAfterWake": <unix float|null>,
                                         "computedInputs": {"<key>": <int>}}}}

``computedInputs`` (only while API keys are in use on that activator, ``{}`` until a
key's input was computed): per API key ("namespace/name" of its Secret), the inputs the
engine computed for it (cache misses), cumulative since this activator began routing
the service; the operator splits GPU-seconds by their increase (operator/attribution.py).

Keyed by metadata.name, not servedName. Every routed service appears, idle or not; a
service that does not appear has no load (zeros, no times).

Changes only, ``GET /stats?since=<epoch>:<cursor>&wait=<seconds>``: the same body with
``"full": false`` and in ``services`` only the services whose figures changed after
``cursor`` (a deleted service appears once more, with zeros). With nothing changed it
waits up to ``wait`` seconds (at most ``MAX_WAIT``) for a change, then answers an empty
``services``: a long poll, so N idle services cost one small request per ``wait`` seconds
instead of N entries every second. The consumer keeps what it was told and sends the
answer's ``epoch:cursor`` next time. The epoch names one activator process: after a
restart (another epoch), for a cursor it cannot answer from, or without ``since``, the
answer is a full read (``"full": true``), which replaces everything the consumer knew.
Producers that predate the cursor answer every request in full (no ``epoch``): the
consumer then simply reads in full each time.
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


MAX_WAIT = 30.0  # the longest a ``since`` request is held open without a change


def document(
    activator: str,
    services: Iterable[ServiceStats],
    *,
    epoch: str = "",
    cursor: int = 0,
    full: bool = True,
) -> dict[str, Any]:
    """The body an activator serves: every service (``full``) or the changed ones."""
    return {
        "activator": activator,
        "time": time.time(),
        "epoch": epoch,
        "cursor": cursor,
        "full": full,
        "services": {s.key: s.to_json() for s in services},
    }


def format_since(epoch: str, cursor: int) -> str:
    return f"{epoch}:{cursor}"


def parse_since(value: str | None) -> tuple[str, int] | None:
    """``epoch:cursor`` -> (epoch, cursor); None when absent or malformed (a full read)."""
    if not value:
        return None
    epoch, sep, cursor = value.rpartition(":")
    if not sep or not epoch or not cursor.isdigit():
        return None
    return epoch, int(cursor)


def parse_wait(value: str | None) -> float:
    """The ``wait`` parameter in seconds, clamped to [0, MAX_WAIT] (bad input: 0)."""
    try:
        seconds = float(value or 0)
    except ValueError:
        return 0.0
    if seconds != seconds:  # NaN
        return 0.0
    return min(max(seconds, 0.0), MAX_WAIT)


@dataclass(frozen=True)
class Reply:
    """One answer: whose (epoch), up to where (cursor), everything or changes only."""

    epoch: str
    cursor: int
    full: bool
    services: dict[str, ServiceStats]


def parse_reply(payload: Any) -> Reply:
    """An answer to a full or a ``since`` read; ValueError naming the field if malformed.

    A body without ``epoch`` (an older producer) is a full read with no cursor."""
    services = parse(payload)
    epoch = payload.get("epoch")
    if not epoch:
        return Reply("", 0, True, services)
    cursor = payload.get("cursor")
    if not isinstance(epoch, str) or not isinstance(cursor, int) or isinstance(cursor, bool):
        raise ValueError("stats: 'epoch' must be a string and 'cursor' an integer")
    return Reply(epoch, cursor, payload.get("full") is not False, services)


def parse(payload: Any) -> dict[str, ServiceStats]:
    """One activator's body -> figures by "namespace/name"; ValueError if malformed."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("services"), Mapping):
        raise ValueError("stats: no 'services' object")
    return {str(k): ServiceStats.from_json(str(k), v) for k, v in payload["services"].items()}


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"computedInputs: {value!r} is not a count")
    return value
