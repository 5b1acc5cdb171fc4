"""A synthetic "seed day" of embedding traffic: busy office hours, bursty, quiet nights.

Deterministic for a given seed (``random.Random``), so the numbers in
``docs/cost-model.md`` can be reproduced with ``glowplug simulate --seed-day``.

Shape (times of day in seconds from midnight):

- Two busy blocks, 08:00-12:00 and 13:00-18:36 (9.6 h in all). Within them, sessions
  arrive as a Poisson process (mean gap 100 s, so a few dozen gaps per day exceed five
  minutes); a session is a burst of 1-20 requests spread over a few seconds. About
  once an hour an indexing job sends a few hundred requests in under a minute; when it
  meets a cold service, its held backlog asks for several replicas at once.
- The lunch hour and the night are quiet except for a handful of stray requests and a
  nightly batch job.
- Request durations: an embedding call, log-normal around 60 ms, with a tail of
  large batches up to a few seconds.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

DAY = 86400.0
BUSY_BLOCKS = ((8 * 3600.0, 12 * 3600.0), (13 * 3600.0, 18 * 3600.0 + 36 * 60.0))
SESSION_GAP_MEAN = 100.0
INDEX_JOBS_PER_HOUR = 1.0
STRAY_REQUESTS = 6  # outside the busy blocks
NIGHT_BATCH_AT = 2 * 3600.0 + 15 * 60.0


def _duration(rng: random.Random) -> float:
    if rng.random() < 0.03:
        return round(rng.uniform(0.5, 3.0), 3)  # a large batch
    return round(min(5.0, rng.lognormvariate(-2.8, 0.5)), 3)  # ~60 ms median


def generate(seed: int = 1) -> list[tuple[float, float]]:
    """The seed day as sorted (arrival, duration) pairs, in seconds."""
    rng = random.Random(seed)
    out: list[tuple[float, float]] = []
    for start, end in BUSY_BLOCKS:
        t = start + rng.uniform(0, 30)
        while t < end:
            for _ in range(rng.randint(1, 20)):  # a session: a burst over a few seconds
                at = t + rng.uniform(0, 4.0)
                if at < end:
                    out.append((round(at, 3), _duration(rng)))
            t += rng.expovariate(1.0 / SESSION_GAP_MEAN)
        hours = (end - start) / 3600.0
        for _ in range(round(hours * INDEX_JOBS_PER_HOUR)):
            job = rng.uniform(start, end - 60)
            for _ in range(rng.randint(200, 400)):
                out.append((round(job + rng.uniform(0, 45.0), 3), _duration(rng)))
    quiet = [(0.0, BUSY_BLOCKS[0][0]), (BUSY_BLOCKS[0][1], BUSY_BLOCKS[1][0])]
    quiet.append((BUSY_BLOCKS[1][1], DAY))
    for _ in range(STRAY_REQUESTS):
        lo, hi = rng.choice(quiet)
        out.append((round(rng.uniform(lo + 600, hi - 900), 3), _duration(rng)))
    for _ in range(40):  # the nightly re-embedding job: one short burst
        out.append((round(NIGHT_BATCH_AT + rng.uniform(0, 20.0), 3), _duration(rng)))
    out.sort()
    return out


def write_csv(path: Path, rows: Iterable[tuple[float, float]]) -> int:
    """Write ``arrival,duration`` rows with a header; returns the number of rows."""
    count = 0
    with path.open("w", encoding="utf-8") as f:
        f.write("arrival_seconds,duration_seconds\n")
        for arrival, duration in rows:
            f.write(f"{arrival:.3f},{duration:.3f}\n")
            count += 1
    return count


def read_csv(path: Path) -> list[tuple[float, float]]:
    """Read a trace: two numbers per line; a header, blank lines and ``#`` comments skipped."""
    rows: list[tuple[float, float]] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = [p.strip() for p in text.split(",")]
            try:
                arrival, duration = float(parts[0]), float(parts[1])
            except (ValueError, IndexError):
                if number == 1:
                    continue  # the header
                raise ValueError(
                    f"{path}:{number}: expected 'arrival,duration', got {text!r}"
                ) from None
            if duration < 0 or arrival < 0:
                raise ValueError(f"{path}:{number}: negative time in {text!r}")
            rows.append((arrival, duration))
    rows.sort()
    return rows
