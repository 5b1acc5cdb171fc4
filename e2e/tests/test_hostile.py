"""The hostile corpus (e2e/bench/hostile.py) at a smaller scale, against a real activator
process: every case gets its expected answer (a clear 4xx, 503 when the held-bytes budget
is full, 408 for slow clients, a close for idle ones), the activator serves a normal
request right after each, and its resident memory stays inside the chart's limit.
No cluster needed."""

from __future__ import annotations

from e2e.bench import hostile


def test_hostile_corpus_is_refused_and_memory_stays_bounded() -> None:
    lines: list[str] = []
    results = hostile.run(hostile.Scale.small(), lines.append)
    report = "\n".join(lines)
    assert len(results) == len(hostile.CASES), report
    assert all(r.ok for r in results), report
    # A measurement, not a timing: the budget and the caps keep memory inside the limit.
    assert max(r.rss_peak_mib for r in results) * 2**20 < hostile.MEMORY_LIMIT, report
