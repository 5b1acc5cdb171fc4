"""The learned idle timeout (``scaling.idleTimeout: auto``): pure, no I/O.

Keeping the last replica up for ``T`` after a service goes idle costs, for an idle gap
``g`` (last request finished -> next request), ``min(g, T)`` idle GPU-seconds, plus a
wake when ``g > T``. A wake costs the GPU time the replica holds while it starts (the
measured wake duration) and the wait callers see, priced as ``wakePenalty`` GPU-seconds.
The policy keeps a histogram of the service's own idle gaps, recency-weighted in wall
time (a gap ``HALF_LIFE`` old counts half, so busy hours and quiet nights each get their
own timeout within a day), and picks the ``T`` in ``[min, max]`` that minimises the
expected cost over that histogram:

    cost(T) = sum_b  n_b * (min(g_b, T) + (wake + penalty) * [g_b > T])

This is the keep-alive half of the hybrid histogram policy of "Serverless in the Wild"
(Shahrad et al., USENIX ATC 2020), with its fixed percentiles replaced by the cost
minimum, which is what a price per GPU-second and per wake call for. Until
``MIN_GAPS`` gaps were seen, it falls back to the deterministic ski-rental threshold
``T = wake + penalty`` (never worse than twice the offline optimum), clamped to the
bounds.

Pre-warm (the other half of the hybrid histogram policy; ``autoIdleTimeout.prewarm``,
on by default). When the gaps bunch around a typical length (a job that embeds every
10 minutes), keeping the replica for the whole gap is waste and dropping it makes every
request wait. The pre-warm plan scales to zero after ``min``, raises a replica a wake
duration before the head of the predicted next arrival (``after``, from the end of the
last request), and keeps it until the tail (``until``), then drops it again:

    cost(g) = g                                  g <= min
              min + wake + penalty               min < g <= after       (woken cold)
              min + wake + penalty * late        after < g < head       (part of a wake)
              min + (g - after)                  head <= g <= until     (warm: the aim)
              min + (until - after) + wake + penalty        g > until   (missed)

Head and tail come from the histogram's percentiles (the paper's 5th and 99th, with
10 % margins; a few neighbouring percentiles are tried too). The paper calls a
histogram predictable by the coefficient of variation of its bin counts; here the plan
is used only when its expected cost over the same histogram is at least
``PREWARM_GAIN`` below the best keep-alive's, which is the same question asked in the
unit the operator optimises (Poisson-like traffic never passes it; a periodic trickle
does). Otherwise the policy is keep-alive only.

Gaps shorter than ``min`` cannot change the choice (they cost the same for every
candidate ``T >= min``) and are not recorded, so busy traffic does not churn the state.
The state (``to_status``/``from_status``) is small: one list of rounded counts, written
to the EmbeddingService's status so that a restarted operator keeps what it learned.

Used by ``autoscaler.decide`` and therefore by the operator and the simulator alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from glowplug.api.spec import AutoIdle

# Bin upper edges: 10 s to 24 h, 8 per doubling of the gap (~9 % apart).
_LOW, _HIGH, _PER_DOUBLING = 10.0, 86400.0, 8
EDGES: tuple[float, ...] = tuple(
    _LOW * 2 ** (i / _PER_DOUBLING) for i in range(int(math.log2(_HIGH / _LOW) * _PER_DOUBLING) + 1)
)
HALF_LIFE = 3600.0  # seconds: a gap an hour old weighs half as much as one just seen
DAILY_HALF_LIFE = 7 * 86400.0  # the per-hour-of-day profile forgets over weeks
MIN_GAPS = 3
# Pre-warm: the percentiles tried for the head and tail of the next gap, the margin
# around them, and how much cheaper than keep-alive the plan must be to be used.
HEAD_PERCENTILES = (1.0, 5.0, 10.0)
TAIL_PERCENTILES = (90.0, 95.0, 99.0)
MARGIN = 0.10
PREWARM_GAIN = 0.10
PREWARM_MIN_GAPS = 5
FORGET_BELOW = 1e-3  # a decayed count this small is dropped from the state


def _bin(gap: float) -> int:
    """The index of the first edge >= gap (the last bin holds everything longer)."""
    if gap <= EDGES[0]:
        return 0
    i = math.ceil(math.log2(gap / _LOW) * _PER_DOUBLING - 1e-9)
    return min(i, len(EDGES) - 1)


def _centre(i: int) -> float:
    """A bin's representative gap: the geometric middle of its edges."""
    lower = EDGES[i - 1] if i > 0 else EDGES[0] / 2 ** (1 / _PER_DOUBLING)
    return math.sqrt(lower * EDGES[i])


def _decay(counts: dict[int, float], factor: float) -> None:
    for b in list(counts):
        c = counts[b] * factor
        if c < FORGET_BELOW:
            del counts[b]
        else:
            counts[b] = c


def _hour(t: float) -> int:
    return int(t // 3600) % 24


@dataclass(frozen=True)
class Plan:
    """What to do during one idle gap (seconds counted from the end of the last request).

    Keep-alive only (``after`` None): keep the last replica ``keep_alive``, then zero.
    Pre-warm: keep it ``keep_alive`` (``min``), zero, one replica again from ``after``
    until ``until``, then zero.
    """

    keep_alive: float
    after: float | None = None
    until: float | None = None

    @property
    def prewarm(self) -> bool:
        return self.after is not None

    def floor_at(self, idle_since: float, now: float) -> int:
        """The replicas the plan asks for at ``now`` in a gap that began at ``idle_since``."""
        if self.after is None or self.until is None:
            return 0
        return 1 if idle_since + self.after <= now < idle_since + self.until else 0


def keep_alive_cost(items: list[tuple[float, float]], t: float, per_wake: float) -> float:
    return sum(n * (min(g, t) + (per_wake if g > t else 0.0)) for g, n in items)


def prewarm_cost(
    items: list[tuple[float, float]],
    keep: float,
    after: float,
    until: float,
    wake: float,
    penalty: float,
) -> float:
    """The expected cost of a pre-warm plan over the histogram (see the module docstring)."""
    head = after + wake
    total = 0.0
    for g, n in items:
        if g <= keep:
            c = g
        elif g <= after:
            c = keep + wake + penalty
        elif g < head:
            c = keep + wake + penalty * (head - g) / wake
        elif g <= until:
            c = keep + (g - after)
        else:
            c = keep + (until - after) + wake + penalty
        total += n * c
    return total


def _percentile_bin(items: list[tuple[int, float]], total: float, p: float) -> int:
    """The bin holding the p-th percentile of the (bin-sorted) counts."""
    want = p / 100.0 * total
    run = 0.0
    for b, n in items:
        run += n
        if run >= want - 1e-12:
            return b
    return items[-1][0]


def choose(counts: dict[int, float], gaps: int, bounds: AutoIdle, wake_seconds: float) -> Plan:
    """The cheapest plan over the histogram ``counts`` (bin -> weight): pure."""
    wake = max(0.0, wake_seconds)
    penalty = max(0.0, bounds.wake_penalty)
    per_wake = wake + penalty
    if gaps < MIN_GAPS or not counts:
        return Plan(_clamp(per_wake, bounds))
    candidates = sorted(
        {bounds.min, bounds.max, *(e for e in EDGES if bounds.min < e < bounds.max)}
    )
    items = [(_centre(b), n) for b, n in counts.items()]
    best, best_cost = bounds.max, math.inf
    for t in candidates:
        cost = keep_alive_cost(items, t, per_wake)
        if cost < best_cost - 1e-9:
            best, best_cost = t, cost
    plan = Plan(best)
    if not bounds.prewarm or gaps < PREWARM_MIN_GAPS or wake <= 0:
        return plan
    by_bin = sorted(counts.items())
    total = sum(n for _, n in by_bin)
    keep = bounds.min
    lowest = best_cost * (1.0 - PREWARM_GAIN)
    for hp in HEAD_PERCENTILES:
        hb = _percentile_bin(by_bin, total, hp)
        head = (EDGES[hb - 1] if hb > 0 else EDGES[0] / 2 ** (1 / _PER_DOUBLING)) * (1 - MARGIN)
        after = head - wake
        if after <= keep:
            continue  # no time at zero between the keep-alive and the pre-warm
        for tp in TAIL_PERCENTILES:
            tail = EDGES[_percentile_bin(by_bin, total, tp)] * (1 + MARGIN)
            # Never hold an idle replica longer in one gap than keep-alive may.
            until = min(tail, after + bounds.max)
            if until <= after + wake:
                continue
            cost = prewarm_cost(items, keep, after, until, wake, penalty)
            if cost < lowest - 1e-9:
                lowest, plan = cost, Plan(keep, after, until)
    return plan


@dataclass
class IdlePolicy:
    """Two views of the service's idle gaps: the last hours (``recent``), and, per hour
    of the day (UTC), the days before (``daily``), so that tomorrow's 08:00 starts from
    what 08:00 looked like, not from what the night looked like."""

    recent: dict[int, float] = field(default_factory=dict)  # bin -> decayed count
    daily: dict[int, dict[int, float]] = field(default_factory=dict)  # hour -> bin -> count
    gaps: int = 0  # gaps recorded (not decayed)
    at: float = 0.0  # when the counts were last decayed (Unix seconds)
    _cached: tuple[AutoIdle, float, int, Plan] | None = field(default=None, compare=False)

    def observe(self, gap: float, now: float, bounds: AutoIdle) -> bool:
        """Record one idle gap that ended at ``now``; False when it is too short to matter."""
        if gap < bounds.min:
            return False
        if now > self.at:
            elapsed = now - self.at
            _decay(self.recent, 0.5 ** (elapsed / HALF_LIFE))
            day = 0.5 ** (elapsed / DAILY_HALF_LIFE)
            for hist in self.daily.values():
                _decay(hist, day)
            self.daily = {h: c for h, c in self.daily.items() if c}
            self.at = now
        b = _bin(gap)
        self.recent[b] = self.recent.get(b, 0.0) + 1.0
        # Filed under the hour the gap began: when the timeout for it was chosen.
        hist = self.daily.setdefault(_hour(now - gap), {})
        hist[b] = hist.get(b, 0.0) + 1.0
        self.gaps += 1
        self._cached = None
        return True

    def timeout(self, bounds: AutoIdle, wake_seconds: float, now: float) -> float:
        """The keep-alive in force at ``now``, within the bounds."""
        return self.plan(bounds, wake_seconds, now).keep_alive

    def plan(self, bounds: AutoIdle, wake_seconds: float, now: float) -> Plan:
        """The plan for an idle gap starting at ``now`` (cached per hour and state)."""
        hour = _hour(now)
        c = self._cached
        if c is not None and c[0] == bounds and c[1] == wake_seconds and c[2] == hour:
            return c[3]
        counts = dict(self.recent)
        for b, n in self.daily.get(hour, {}).items():
            counts[b] = counts.get(b, 0.0) + n
        plan = choose(counts, self.gaps, bounds, wake_seconds)
        self._cached = (bounds, wake_seconds, hour, plan)
        return plan

    # --- persistence (status.idlePolicy) ------------------------------------------------

    def to_status(self, timeout: float, plan: Plan | None = None) -> dict[str, Any]:
        prewarm = None
        if plan is not None and plan.after is not None and plan.until is not None:
            prewarm = {"afterSeconds": round(plan.after, 1), "untilSeconds": round(plan.until, 1)}
        return {
            "idleTimeoutSeconds": round(timeout, 1),
            # Derived from the histograms (not read back): what the operator does now.
            "prewarm": prewarm,
            "gaps": self.gaps,
            "at": round(self.at, 3),
            # Lists, not maps: a merge patch replaces a list whole, so bins that decayed
            # away disappear from the stored state too.
            "recent": _dump(self.recent),
            "daily": [[h, _dump(c)] for h, c in sorted(self.daily.items())],
        }

    @staticmethod
    def from_status(raw: Any) -> IdlePolicy:
        """The persisted state; anything unreadable starts afresh (it is only a hint)."""
        policy = IdlePolicy()
        if not isinstance(raw, Mapping):
            return policy
        policy.recent = _load(raw.get("recent"))
        daily = raw.get("daily")
        if isinstance(daily, list):
            for item in daily:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)):
                    continue
                if 0 <= item[0] < 24:
                    loaded = _load(item[1])
                    if loaded:
                        policy.daily[item[0]] = loaded
        gaps = raw.get("gaps")
        if isinstance(gaps, int) and gaps >= 0:
            policy.gaps = gaps
        at = raw.get("at")
        if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at):
            policy.at = float(at)
        return policy


def _dump(counts: Mapping[int, float]) -> list[list[float]]:
    """[[bin, count], ...], counts rounded (the state is a hint, not a ledger)."""
    return [[b, round(n, 4)] for b, n in sorted(counts.items())]


def _load(raw: Any) -> dict[int, float]:
    out: dict[int, float] = {}
    if not isinstance(raw, list):
        return out
    for item in raw:
        try:
            b, n = int(item[0]), float(item[1])
        except (TypeError, ValueError, IndexError, KeyError):
            continue
        if 0 <= b < len(EDGES) and n > 0 and math.isfinite(n):
            out[b] = n
    return out


def _clamp(t: float, bounds: AutoIdle) -> float:
    return max(bounds.min, min(bounds.max, t))
