"""Per-service metric families written in the Prometheus text format (0.0.4) by glowplug
itself, shared by the operator and the activator.

prometheus_client's ``generate_latest`` builds a ``Sample`` and formats every label of
every child on every scrape: the operator's series for 10,000 services took 2.8 s a
scrape that way (``make bench-operator-metrics``). Here a sample's name and labels are
formatted once, when it is created, and a scrape writes ``prefix + value`` per line (the
line itself is kept while the value does not change); a histogram's lines are written
again only after it observes; and a family none of whose children changed since the last
scrape is not written at all (its last text is reused). At zero and idle only the
baseline counters move: the same 10,000 services in about 55 ms over HTTP.

A ``FamilyTable`` is written by the event loop and read by the thread that serves
/metrics: adding or removing a child takes the table's lock; setting a value is two
attribute stores (the value, then the table's ``changed`` flag), each atomic under the
GIL. A scrape clears ``changed`` before it reads the values, so a value set while it
renders is written by the next scrape at the latest.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

C = TypeVar("C")


@dataclass(frozen=True)
class Family:
    """One metric family: its name (counters with ``_total``), type, help and labels."""

    name: str
    type: str  # "counter" or "gauge"
    help: str
    labels: tuple[str, ...] = ()

    def header(self) -> bytes:
        text = self.help.replace("\\", r"\\").replace("\n", r"\n")
        return f"# HELP {self.name} {text}\n# TYPE {self.name} {self.type}\n".encode()


def value_text(v: float) -> str:
    """A sample value as the text format writes it (Go's float formatting)."""
    text = repr(float(v))
    if text[-1] not in "fn":  # the common case: not inf, -inf or nan
        return text
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return "NaN"


def escape(value: str) -> str:
    """A label value escaped for the text format."""
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def label_text(pairs: Iterable[tuple[str, str]]) -> str:
    """``{a="1",b="2"}``: labels sorted by name, as prometheus_client writes them."""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in sorted(pairs)) + "}"


class _Changes:
    """What a child tells its table: that the table's text must be written again."""

    changed = True


class Child:
    """One sample: its formatted name and labels, its value, and its last written line
    (most values do not change between two scrapes)."""

    __slots__ = ("_table", "line", "line_value", "prefix", "value")

    def __init__(self, prefix: str, table: _Changes) -> None:
        self.prefix = prefix
        self._table = table
        self.value = 0.0
        self.line_value = 0.0
        self.line = f"{prefix}0.0\n"

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        if amount:
            self.value += amount
            self._table.changed = True

    def set(self, value: float) -> None:
        if value != self.value:
            self.value = value
            self._table.changed = True


class HistogramChild:
    """One histogram: bucket counts and sum, and its lines as last written (a wake
    observes rarely; a scrape reuses them)."""

    __slots__ = ("_bounds", "_counts", "_labels", "_lock", "_name", "_sum", "_table", "_text")

    def __init__(
        self,
        name: str,
        labels: str,
        bounds: tuple[float, ...],
        lock: threading.Lock,
        table: _Changes,
    ) -> None:
        self._name, self._labels, self._bounds, self._lock = name, labels, bounds, lock
        self._table = table
        self._counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0
        self._text: str | None = None

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self._bounds, value)] += 1
            self._sum += value
            self._text = None
            self._table.changed = True

    @property
    def count(self) -> int:
        return sum(self._counts)

    def text(self) -> str:
        with self._lock:
            if self._text is None:
                name, labels, lines, total = self._name, self._labels, [], 0
                for bound, n in zip((*self._bounds, math.inf), self._counts, strict=True):
                    total += n
                    le = value_text(bound)
                    lines.append(f'{name}_bucket{{{labels},le="{le}"}} {float(total)!r}\n')
                lines.append(f"{name}_count{{{labels}}} {float(total)!r}\n")
                lines.append(f"{name}_sum{{{labels}}} {value_text(self._sum)}\n")
                self._text = "".join(lines)
            return self._text


class _Table(_Changes, Generic[C]):
    """The children of one family, by label values (in ``family.labels`` order), and the
    family's text as last written."""

    def __init__(self, family: Family) -> None:
        self.family = family
        self._children: dict[tuple[str, ...], C] = {}
        self._lock = threading.Lock()
        self._text = b""

    def _new(self, labels: str) -> C:
        raise NotImplementedError

    def labels(self, *values: str) -> C:
        """The child with these label values, created at zero on first use."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.family.labels):
                raise ValueError(f"{self.family.name}: labels {self.family.labels}, got {values}")
            new = self._new(label_text(zip(self.family.labels, values, strict=True)))
            with self._lock:
                child = self._children.setdefault(values, new)
                self.changed = True
        return child

    def remove(self, *values: str) -> None:
        with self._lock:
            if self._children.pop(values, None) is not None:
                self.changed = True

    def render(self) -> bytes:
        """The family's text: written again only where a child changed or came or went."""
        if not self.changed:
            return self._text
        with self._lock:
            self.changed = False  # before the values are read: see the module's docstring
            children = list(self._children.values())
        self._text = self.family.header() + self._lines(children) if children else b""
        return self._text

    def _lines(self, children: list[C]) -> bytes:
        raise NotImplementedError


class FamilyTable(_Table[Child]):
    """A counter or gauge family."""

    def _new(self, labels: str) -> Child:
        return Child(f"{self.family.name}{labels} ", self)

    def get(self, *values: str) -> float | None:
        """A child's value, or None where it does not exist (tests and bookkeeping)."""
        child = self._children.get(values)
        return None if child is None else child.value

    def _lines(self, children: list[Child]) -> bytes:
        lines = []
        for c in children:
            value = c.value
            if value != c.line_value:
                c.line, c.line_value = f"{c.prefix}{value_text(value)}\n", value
            lines.append(c.line)
        return "".join(lines).encode()


class HistogramTable(_Table[HistogramChild]):
    """A histogram family (``family.type`` "histogram"; ``family.name`` without the
    _bucket/_count/_sum suffixes)."""

    def __init__(self, family: Family, buckets: Iterable[float]) -> None:
        super().__init__(family)
        self.buckets = tuple(sorted(float(b) for b in buckets))

    def _new(self, labels: str) -> HistogramChild:
        return HistogramChild(self.family.name, labels[1:-1], self.buckets, self._lock, self)

    def _lines(self, children: list[HistogramChild]) -> bytes:
        return "".join([c.text() for c in children]).encode()


def render(tables: Iterable[FamilyTable | HistogramTable]) -> bytes:
    return b"".join(t.render() for t in tables)
