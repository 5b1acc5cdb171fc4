"""GPU-hours saved on a replayed day of traffic (``make bench``): the seed day, simulated.

Runs ``glowplug simulate`` on the generated seed day (``glowplug.operator.seedday``)
for idle timeouts of 1, 2, 5, 10 and 15 minutes, prints the table and writes
``e2e/bench/results/seed-day-<UTC time>.json``. It reports the two targets of the
autoscaler issue at 5 minutes (used <= 1.1 x the idle-timeout bound, >= 55 % saved
against always-on) but never fails on them: benchmarks report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from glowplug.api.spec import ScalingSpec
from glowplug.operator import seedday
from glowplug.operator.simulate import SimConfig, format_table, simulate

RESULTS = Path(__file__).parent / "results"
IDLE_TIMEOUTS = (60.0, 120.0, 300.0, 600.0, 900.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--wake-delay", type=float, default=30.0)
    args = parser.parse_args(argv)
    trace = seedday.generate(args.seed)
    base = SimConfig(
        scaling=ScalingSpec(max_replicas=4), wake_delay=args.wake_delay, horizon=seedday.DAY
    )
    results = [
        simulate(trace, replace(base, scaling=replace(base.scaling, idle_timeout=idle)))
        for idle in IDLE_TIMEOUTS
    ]
    print(format_table(results, base.gpu_hourly_price, base.wake_delay))
    five = next(r for r in results if r.idle_timeout == 300.0)
    print(
        f"targets at 5m: used/bound {five.vs_bound:.3f} (<= 1.1: "
        f"{'met' if five.vs_bound <= 1.1 else 'MISSED'}), saved {five.saved_percent:.1f} %"
        f" (>= 55 %: {'met' if five.saved_percent >= 55 else 'MISSED'})"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"seed-day-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(
        json.dumps(
            {
                "seed": args.seed,
                "wake_delay": args.wake_delay,
                "results": [r.as_dict(base.gpu_hourly_price) for r in results],
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
