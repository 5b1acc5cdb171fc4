"""GPU-seconds attributed to API keys: pure, no I/O (docs/cost-model.md, "Attribution").

The operator knows a service's GPU-seconds (the ledger, per tick); each activator knows
the inputs the engine computed for each API key (cache misses and uncached requests:
``computedInputs`` in its ``/stats``, cumulative). The split is done here, in the
operator, per tick: GPU-seconds are an operator fact written to status and checkpointed,
and /stats already brings every activator's changes to it, so the split costs one small
map per service in answers the operator reads anyway.

The rule: a **residency** is a stretch during which the service holds GPUs (from the
tick its first pod holds one after zero to the tick none does). Each tick's GPU-seconds
are split by each key's share of the inputs computed for it so far in the residency:

- the replica is up because of its callers' demand, so the idle tail after the last
  request is paid by those who used the residency, in proportion;
- GPU-seconds before the residency's first computed input (the wake the first request
  waits for) are held back and split with the first shares: the key whose request woke
  the replica pays for the wake;
- a residency that ends with no input computed at all (a pre-warm nobody used, a
  minReplicas floor without traffic) goes to ``UNATTRIBUTED``.

Every tick's split sums to that tick's GPU-seconds, so the attributed totals add up to
the ledger (except what is still held back in an open residency). Counts are deltas of
cumulative per-activator counters: an activator seen for the first time after the
first reading counts whole (a new replica); a count that went down is a restarted
activator (its count is new). The first reading of a fresh operator is a baseline only:
what was computed before it started was attributed by its predecessor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

UNATTRIBUTED = "unattributed"  # the key label of GPU time no key's input used

Reading = tuple[str, Mapping[str, int]]  # (activator, cumulative inputs per key)


def split(seconds: float, shares: Mapping[str, float]) -> dict[str, float]:
    """``seconds`` split in proportion to ``shares``; all to UNATTRIBUTED without any."""
    if seconds <= 0:
        return {}
    positive = {k: v for k, v in shares.items() if v > 0}
    total = sum(positive.values())
    if total <= 0:
        return {UNATTRIBUTED: seconds}
    return {k: seconds * v / total for k, v in positive.items()}


def _add(into: dict[str, float], more: Mapping[str, float]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0.0) + v


@dataclass
class Attribution:
    """One service's attribution state (in memory; the counters restart with the
    process, as every Prometheus counter does)."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (activator, key)
    residency: dict[str, float] = field(default_factory=dict)  # key -> inputs this residency
    pending: float = 0.0  # GPU-seconds of this residency before its first input
    held: bool = False  # GPUs were held at the previous advance
    primed: bool = False  # a first reading was taken
    active: bool = False  # an activator with API keys in use was read (else no export)

    def new_inputs(self, readings: Iterable[Reading]) -> dict[str, int]:
        """Inputs computed per key since the last reading."""
        out: dict[str, int] = {}
        for activator, per_key in readings:
            self.active = True  # that activator has API keys in use, counts or not
            for key, count in per_key.items():
                prev = self.counts.get((activator, key))
                self.counts[(activator, key)] = count
                if prev is None:
                    delta = count if self.primed else 0
                elif count < prev:
                    delta = count  # the activator restarted: all of it is new
                else:
                    delta = count - prev
                if delta > 0:
                    out[key] = out.get(key, 0) + delta
        self.primed = True
        return out

    def advance(
        self, gpu_seconds: float, readings: Iterable[Reading], held: bool
    ) -> dict[str, float]:
        """This tick's GPU-seconds (``gpu_seconds``, with ``held``: GPUs held now) and
        the activators' readings -> seconds to add per key."""
        new = self.new_inputs(readings)
        if not self.active:
            self.held = held
            return {}  # no activator has API keys in use: nothing to attribute or hold back
        out: dict[str, float] = {}
        if held and not self.held:
            _add(out, self._close())  # a new residency begins
        for key, n in new.items():
            self.residency[key] = self.residency.get(key, 0.0) + n
        seconds = max(0.0, gpu_seconds) + self.pending
        self.pending = 0.0
        if self.residency:
            _add(out, split(seconds, self.residency))
        else:
            self.pending = seconds
        if not held:
            _add(out, self._close())
        self.held = held
        return out

    def _close(self) -> dict[str, float]:
        out = {UNATTRIBUTED: self.pending} if self.pending > 0 else {}
        self.pending = 0.0
        self.residency = {}
        return out
