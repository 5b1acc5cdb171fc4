"""A second synthetic trace: many services, Zipf popularity, a daily cycle, repeated queries.

Deterministic for a seed (``random.Random``), so the numbers in ``docs/cost-model.md``
can be reproduced (``make bench``). Where the seed day is one busy office service, this
is a cluster of them:

- ``SERVICES`` services; service ``k`` (1-based) gets a share of the traffic
  proportional to ``1 / k ** SERVICE_SKEW`` (Zipf): a few are busy all day, most are
  touched a few times an hour or less.
- A daily cycle (UTC): traffic follows ``0.1 + 0.9 * sin`` from 06:00 to 22:00 (peak at
  14:00) and stays at the 0.1 floor at night; arrivals are sessions (a Poisson process
  thinned by the cycle) of 1-8 requests within a few seconds.
- Each request is a search query (one input, ``QUERY_SHARE`` of requests) or a batch of
  ``DOC_BATCH`` new documents (never repeated). Query texts are drawn per service from a
  Zipf law over ``VOCABULARY`` distinct texts (rank ``floor(V ** u)``, the continuous
  form of s = 1): the top 1,000 queries are about 37 % of all queries, as in the field
  report cited by issue 14.
- Durations: log-normal around 60 ms, like the seed day.

Rows are ``(arrival_seconds, duration_seconds, input_ids)``; ids >= 0 are query texts,
ids < 0 documents (unique).
"""

from __future__ import annotations

import math
import random

DAY = 86400.0
SERVICES = 40
REQUESTS_PER_DAY = 40000
SERVICE_SKEW = 1.1
QUERY_SHARE = 0.85
DOC_BATCH = 8
VOCABULARY = 10**8
NIGHT_FLOOR = 0.1

Row = tuple[float, float, tuple[int, ...]]


def cycle(t: float) -> float:
    """Relative traffic at trace time ``t`` (1.0 at the 14:00 peak)."""
    h = (t % DAY) / 3600.0
    if 6.0 <= h <= 22.0:
        return NIGHT_FLOOR + (1.0 - NIGHT_FLOOR) * math.sin(math.pi * (h - 6.0) / 16.0)
    return NIGHT_FLOOR


def shares(n: int = SERVICES) -> list[float]:
    weights = [1.0 / k**SERVICE_SKEW for k in range(1, n + 1)]
    total = sum(weights)
    return [w / total for w in weights]


def _duration(rng: random.Random) -> float:
    if rng.random() < 0.03:
        return round(rng.uniform(0.5, 3.0), 3)
    return round(min(5.0, rng.lognormvariate(-2.8, 0.5)), 3)


def generate(seed: int = 1, days: int = 1, services: int = SERVICES) -> list[list[Row]]:
    """One sorted trace per service, ``days`` days long."""
    rng = random.Random(seed)
    mean_cycle = sum(cycle(m * 60.0) for m in range(1440)) / 1440.0
    session_mean = 4.5  # requests: randint(1, 8)
    next_doc = -1
    out: list[list[Row]] = []
    for share in shares(services):
        # Peak session rate, so that thinning by the cycle gives this service's share.
        peak = share * REQUESTS_PER_DAY / DAY / session_mean / mean_cycle
        rows: list[Row] = []
        t = rng.expovariate(peak)
        while t < days * DAY:
            if rng.random() < cycle(t):
                for _ in range(rng.randint(1, 8)):
                    at = round(t + rng.uniform(0.0, 3.0), 3)
                    if rng.random() < QUERY_SHARE:
                        inputs: tuple[int, ...] = (int(VOCABULARY ** rng.random()) - 1,)
                    else:
                        inputs = tuple(range(next_doc, next_doc - DOC_BATCH, -1))
                        next_doc -= DOC_BATCH
                    rows.append((at, _duration(rng), inputs))
            t += rng.expovariate(peak)
        rows.sort()
        out.append(rows)
    return out
