"""The GPU-hour ledger: GPU-seconds held by a service's pods, and the always-on baseline.

Pure accounting: observations (time, the pods bound to a node at that time) in, seconds
out. The live loop feeds it one observation per tick and checkpoints it into status; the
unit tests feed it scripted pod lifetimes.

Rules (DESIGN.md section 3.5):

- A pod holds ``gpus`` GPUs from the moment it is bound to a node (Pending included:
  the GPU is allocated while the image pulls and the model loads) until it is gone from
  the API. A pod that vanished between two observations is charged up to the later one
  (the moment we learned it was gone).
- The baseline is what ``max(actual, cost.baselineReplicas)`` always-on replicas would
  hold over the same time: at each instant max(GPUs held, baselineReplicas x gpus).
- Totals are cumulative and cover the time up to ``as_of``. The checkpoint in status is
  (gpuSeconds, baselineGpuSeconds, ledgerTime) written together in one patch, so after
  a restart the ledger continues from ledgerTime: a re-listed pod is charged from
  max(bound time, ledgerTime), never twice. What cannot be known after a restart is a
  pod that came and went while no operator ran; the checkpoint interval bounds that.
- A checkpoint also says how fast the totals grow from ``ledgerTime`` on: ``gpusHeld``
  and ``baselineGpus`` (GPU-seconds per second). The loop writes a checkpoint whenever
  either changes, so a reader gets the totals at any later instant t exactly as
  status + rate x (t - ledgerTime) (``totals_at``), and a service at zero, whose
  baseline keeps growing, needs no write to stay exact (DESIGN.md invariant 6: an idle
  service writes nothing).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from glowplug.kube import timefmt


@dataclass(frozen=True)
class PodHold:
    """A pod that holds GPUs: bound to a node at ``bound_at``, still in the API."""

    uid: str
    bound_at: float
    gpus: int


@dataclass(frozen=True)
class Delta:
    gpu_seconds: float
    baseline_gpu_seconds: float


@dataclass(frozen=True)
class Rates:
    """GPU-seconds per second from a checkpoint on: GPUs held, and the baseline's GPUs."""

    gpus: float
    baseline_gpus: float


@dataclass
class Ledger:
    gpu_seconds: float = 0.0
    baseline_gpu_seconds: float = 0.0
    as_of: float = 0.0  # the totals cover everything up to this instant
    # Pods seen at ``as_of``; None when unknown (fresh after a restart).
    seen: dict[str, PodHold] | None = field(default=None)
    # How fast the totals grow from as_of on (the pods seen then); None before advance().
    rates: Rates | None = field(default=None)

    def advance(self, now: float, pods: Iterable[PodHold], baseline_gpus: float) -> Delta:
        """Account the interval (as_of, now] given the pods bound to nodes at ``now``."""
        current = {p.uid: p for p in pods}
        held_now = float(sum(p.gpus for p in current.values()))
        self.rates = Rates(held_now, max(held_now, baseline_gpus))
        if now <= self.as_of:
            # Time did not move (or a clock went backwards): nothing to charge, but
            # remember the pods so that a later gone pod is charged from as_of.
            self.seen = {**(self.seen or {}), **current}
            return Delta(0.0, 0.0)
        start = self.as_of
        intervals: list[tuple[float, float, int]] = []
        for pod in current.values():
            begin = min(max(pod.bound_at, start), now)
            intervals.append((begin, now, pod.gpus))
        for uid, pod in (self.seen or {}).items():
            if uid not in current:
                intervals.append((start, now, pod.gpus))  # gone in (as_of, now]
        held, baseline = integrate(intervals, start, now, baseline_gpus)
        self.gpu_seconds += held
        self.baseline_gpu_seconds += baseline
        self.as_of = now
        self.seen = current
        return Delta(held, baseline)

    # --- the checkpoint in status --------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """The status fields that persist the ledger (one patch, so they agree)."""
        fields: dict[str, Any] = {
            "gpuSeconds": round(self.gpu_seconds, 3),
            "baselineGpuSeconds": round(self.baseline_gpu_seconds, 3),
            "ledgerTime": timefmt.format_time(self.as_of),
            "gpuHours": round(self.gpu_seconds / 3600.0, 2),
            "savedPercent": saved_percent(self.gpu_seconds, self.baseline_gpu_seconds),
        }
        if self.rates is not None:
            fields["gpusHeld"] = self.rates.gpus
            fields["baselineGpus"] = self.rates.baseline_gpus
        return fields

    @classmethod
    def restore(cls, status: Mapping[str, Any] | None, created: float, now: float) -> Ledger:
        """Continue from the checkpoint in ``status``; a new service starts at ``created``.

        The checkpoint's time is ``status.ledgerTime``. Without it (a service the ledger
        never saw) accounting starts at ``created``, or at ``now`` when totals exist but
        their time is unknown (counting from creation again would double count).
        """
        status = status or {}
        gpu = _number(status.get("gpuSeconds"))
        base = _number(status.get("baselineGpuSeconds"))
        when = timefmt.parse_time(status.get("ledgerTime"))
        if when is None:
            when = now if (gpu or base) else min(created, now)
        return cls(gpu_seconds=gpu, baseline_gpu_seconds=base, as_of=min(when, now), seen=None)


def spec_baseline_gpus(obj: Mapping[str, Any]) -> float:
    """The always-on baseline's GPUs from an EmbeddingService's spec (raw, defaults
    applied): ``cost.baselineReplicas x resources.gpus``."""
    spec = _section(obj, "spec")
    cost = _section(spec, "cost")
    resources = _section(spec, "resources")
    return _count(cost.get("baselineReplicas"), 1) * _count(resources.get("gpus"), 1)


def written_rates(obj: Mapping[str, Any]) -> Rates | None:
    """The rates an EmbeddingService's status states from its ``ledgerTime`` on.

    A service the ledger never checkpointed (no ``ledgerTime``, no totals) states the
    rates of a new service: nothing held, the spec's baseline from its creation. A
    checkpoint without the rate fields (written before they existed) states none: the
    loop writes a checkpoint to say them.
    """
    status = _section(obj, "status")
    if status.get("ledgerTime") is None and not (
        _number(status.get("gpuSeconds")) or _number(status.get("baselineGpuSeconds"))
    ):
        return Rates(0.0, spec_baseline_gpus(obj))
    if not all(_is_number(status.get(k)) for k in ("gpusHeld", "baselineGpus")):
        return None
    return Rates(_number(status.get("gpusHeld")), _number(status.get("baselineGpus")))


@dataclass(frozen=True)
class Totals:
    """The ledger's totals at one instant, as a reader of status computes them."""

    gpu_seconds: float
    baseline_gpu_seconds: float

    @property
    def saved_gpu_seconds(self) -> float:
        return self.baseline_gpu_seconds - self.gpu_seconds

    @property
    def saved_percent(self) -> float:
        return saved_percent(self.gpu_seconds, self.baseline_gpu_seconds)


def totals_at(obj: Mapping[str, Any], t: float) -> Totals:
    """GPU-seconds used and the baseline's at time ``t``, from an EmbeddingService object.

    Status holds the totals up to ``ledgerTime`` and the rates they grow at from then on
    (``gpusHeld``, ``baselineGpus``); the operator writes a new checkpoint whenever
    either rate changes, so for ``t`` after ``ledgerTime`` (and while an operator runs)
    the totals are ``status + rate x (t - ledgerTime)`` exactly. A service never
    checkpointed counts its baseline from ``metadata.creationTimestamp``. Before
    ``ledgerTime`` the checkpoint's own totals are returned (status cannot say more).
    Raises ValueError when status states no rates (a checkpoint from an operator older
    than the rate fields, until the current one rewrites it).
    """
    status = _section(obj, "status")
    rates = written_rates(obj)
    if rates is None:
        raise ValueError("status has a ledger checkpoint without gpusHeld/baselineGpus")
    since = timefmt.parse_time(status.get("ledgerTime"))
    if since is None:
        meta = _section(obj, "metadata")
        since = timefmt.parse_time(meta.get("creationTimestamp"))
        if since is None:
            raise ValueError("neither status.ledgerTime nor metadata.creationTimestamp")
    elapsed = max(0.0, t - since)
    return Totals(
        _number(status.get("gpuSeconds")) + rates.gpus * elapsed,
        _number(status.get("baselineGpuSeconds")) + rates.baseline_gpus * elapsed,
    )


def integrate(
    intervals: Iterable[tuple[float, float, int]], start: float, end: float, baseline: float
) -> tuple[float, float]:
    """GPU-seconds held and baseline GPU-seconds over [start, end].

    ``intervals`` are (begin, end, gpus) pieces inside [start, end]; the baseline rate at
    each instant is max(GPUs held, ``baseline``).
    """
    events: list[tuple[float, int]] = []
    for begin, stop, gpus in intervals:
        if stop > begin and gpus > 0:
            events.append((begin, gpus))
            events.append((stop, -gpus))
    events.sort()
    held_total = 0.0
    base_total = 0.0
    level = 0
    t = start
    for when, change in events:
        if when > t:
            held_total += level * (when - t)
            base_total += max(level, baseline) * (when - t)
            t = when
        level += change
    if end > t:
        held_total += level * (end - t)
        base_total += max(level, baseline) * (end - t)
    return held_total, base_total


def saved_percent(used: float, baseline: float) -> float:
    """Percent of the baseline not spent, for the SAVED column (0 when no baseline yet)."""
    if baseline <= 0:
        return 0.0
    return round(100.0 * (1.0 - used / baseline), 1)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any, default: int) -> int:
    if value is None:
        return default
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return default


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and number >= 0 else 0.0


def _section(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``obj[key]`` when it is an object, else empty (a malformed object reads as unset)."""
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}
